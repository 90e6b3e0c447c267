"""Waiting for a task's answer: Celery's Redis result backend giving up, said in our words."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED
from celery.backends.redis import E_LOST, RedisBackend, SentinelBackend
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ResultUnavailable(ConnectionError):
    """Celery's result backend (Redis) gave up reconnecting while a task's answer was awaited.
    Celery says "The Celery application must be restarted", which it need not be (the next
    call reconnects). The task was sent and may have run: every cachemgr task but
    touch_directory is idempotent, so send it again (an access sent again counts twice)."""


class BackendUnavailable(ResultUnavailable, OperationalError):
    """A send that Celery's result backend stopped before the message went out (one that
    subscribes as a task is sent: not the Redis one here, see subscribe_when_awaited): the
    task was not sent. An OperationalError, as a send with the broker away raises (what a
    pipeline catches), and said as the backend's, not the broker's."""


def raised_in(exc: BaseException, module_prefix: str) -> bool:
    """Whether the innermost frame of the exception's traceback is in that module tree."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith(module_prefix)


def backend_gave_up(exc: BaseException) -> bool:
    """Celery's Redis result backend gave up reconnecting (a bare RuntimeError, told by where
    it was raised, not by its wording), or ours for it; or redis-py's own refusal or timeout
    on the way (a backend refused or hung before the wait), not a task's error re-raised."""
    if isinstance(exc, ResultUnavailable):
        return True
    if isinstance(exc, RuntimeError):
        return raised_in(exc, "celery.backends.")
    return isinstance(exc, RedisConnectionError | RedisTimeoutError) and raised_in(exc, "redis.")


class BackendRestartNoise(logging.Filter):
    """Drops Celery's CRITICAL "The Celery application must be restarted" when its Redis result
    backend gives up reconnecting: the call that met it says so in our words (the API answers
    503, the CLI exits 4, the pipeline's get() raises ResultUnavailable), and the next one
    reconnects; no restart is needed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not E_RETRY_LIMIT_EXCEEDED


class BackendRetryNoise(logging.Filter):
    """Drops Celery's "Connection to Redis lost: Retry (0/2) now." for a one-shot command,
    whose own one-line error says the result backend cannot be reached."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != E_LOST.strip()


BACKEND_NOISE = BackendRestartNoise()
RETRY_NOISE = BackendRetryNoise()


def quiet_backend_noise(retries: bool = False) -> None:
    """Celery's result backend's restart advice dropped; with `retries`, its retries too."""
    for name, noise, wanted in (
        ("celery.backends.asynchronous", BACKEND_NOISE, True),
        ("celery.backends.redis", RETRY_NOISE, retries),
    ):
        logger = logging.getLogger(name)
        if wanted and noise not in logger.filters:
            logger.addFilter(noise)


RECHECK_SECONDS = 1.0


class TaskResult(AsyncResult):
    """Celery's AsyncResult, whose get() and state raise ResultUnavailable, not Celery's
    RuntimeError nor redis-py's errors, when the result backend cannot be reached (a Redis
    restarted, refused or hung)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # A TaskResult again (of the current app, as Celery's own are): the client's class,
        # bound to its app, is not importable.
        return TaskResult, self.__reduce_args__()

    def get(self, timeout: float | None = None, *args: Any, **kwargs: Any) -> Any:
        """As Celery's, reading the stored result again every RECHECK_SECONDS: a get()
        subscribes to the answer, then reads it (subscribe_when_awaited), and redis-py does
        not wait for the subscription to take: one that came after the answer waited for it
        for ever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._backend_said():
            while True:
                left = RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
                try:
                    return super().get(max(0.0, min(RECHECK_SECONDS, left)), *args, **kwargs)
                except CeleryTimeout:
                    if self._cache or deadline is not None and time.monotonic() >= deadline:
                        raise  # the task's own TimeoutError, or the caller's time is up

    @property
    def state(self) -> str:
        """As Celery's; ResultUnavailable when the backend cannot be read (ready() too)."""
        with self._backend_said():
            return str(super().state)

    status = state

    @contextlib.contextmanager
    def _backend_said(self) -> Iterator[None]:
        """The result backend unreachable (backend_gave_up), said as ResultUnavailable."""
        try:
            yield
        except (RuntimeError, RedisConnectionError, RedisTimeoutError) as exc:
            if not backend_gave_up(exc):
                raise
            raise ResultUnavailable(
                f"Celery's result backend (Redis) cannot be reached: task {self.id} was sent "
                "and may have run; send it again (every cachemgr task but touch_directory is "
                "idempotent: an access sent again counts twice)"
            ) from None


class _SubscribeWhenAwaited:
    """Celery's Redis result backend subscribed to every task's result channel as it was
    sent; a sender that never waits (the pipeline's fire-and-forget touches and pins, beat's
    cleanups, the API's queued writes) never read what came on it: 169 bytes per send piled
    up in the socket and in redis-py's channel sets, 28 MB after 180,000 sends, until a 5 s
    stall reconnected (celery#6963). This one subscribes when an answer is awaited: get()
    subscribes, then reads the stored result (TaskResult.get again every second, as the
    API's waits do), so none is missed."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


class AwaitedRedisBackend(_SubscribeWhenAwaited, RedisBackend):
    pass


class AwaitedSentinelBackend(_SubscribeWhenAwaited, SentinelBackend):
    pass


def subscribe_when_awaited(app: Celery) -> None:
    """Make `app`'s Redis result backend the one above (its URL and settings unchanged)."""
    awaited = f"{__name__}:AwaitedRedisBackend"
    app.loader.override_backends = {
        "redis": awaited, "rediss": awaited, "sentinel": f"{__name__}:AwaitedSentinelBackend",
    }  # fmt: skip
