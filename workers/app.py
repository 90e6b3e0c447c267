"""The Celery app of the workers and beat: `celery -A workers.app worker|beat`."""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    task_failure,
    worker_ready,
    worker_shutting_down,
)
from celery.worker import state

from cachemgr import presence
from cachemgr.connection import broker_id
from cachemgr.environment import log_level, unknown_names
from cachemgr.errors import LOGGED, BadArgument
from cachemgr.logs import configure_logging
from cachemgr.records import believed_interval
from cachemgr.settings import Settings, SettingsError
from workers.results import subscribe_when_awaited

# The retries a task has made behind another's lock, counted in a header of their own: Celery's
# one counter also counts the retries after a lost Redis, and behind a lock of over an hour a
# Redis blip after the 20th lock retry found the Redis budget spent and failed the task.
LOCK_RETRIES = "cachemgr_lock_retries"


# The interval beat sends a node's cleanups at (its DISK_CACHE_CLEANUP_INTERVAL, which may not
# be the workers'), in each periodic cleanup's headers (celeryconfig.beat_schedule).
BEAT_INTERVAL = "cachemgr_beat_interval"


def beat_interval(task: Task) -> int | None:
    """The interval the beat that sent this task runs at; None when it did not say (or said
    what is not to be believed: records.believed_interval)."""
    return believed_interval((task.request.headers or {}).get(BEAT_INTERVAL))


def lock_retries(task: Task, headers: dict[str, Any] | None = None) -> int:
    """How many times this task has been sent again for another's lock."""
    try:
        return max(0, int((headers or task.request.headers or {}).get(LOCK_RETRIES) or 0))
    except (TypeError, ValueError):  # another sender's header of that name
        return 0


class CacheTask(Task):
    """A task sent arguments its function does not take (a pipeline's typo, a task of another
    version) fails as a bad argument, said in one line: as a TypeError, Celery logged it
    with a traceback, as a bug of ours."""

    _signature: inspect.Signature | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._signature is None:
            self._signature = inspect.signature(self.run)
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            # A misspelt required one (`pth`) was said as `path` missing alone.
            unknown = [repr(k) for k in kwargs if k not in self._signature.parameters]
            extra = "" if not unknown or "unexpected" in str(exc) else (
                f"; unexpected keyword argument(s): {', '.join(unknown)}"
            )  # fmt: skip
            raise BadArgument(f"{self.name}: {exc}{extra}") from None
        return super().__call__(*args, **kwargs)

    def retry(self, *args: Any, max_retries: int | None = None, **kwargs: Any) -> Any:
        """A retry that cannot be sent (the broker is the Redis that just went away) made
        Celery drop the task (Reject, requeue=False): a registration running when Redis
        restarted was lost. A task acknowledged late is put back instead, or, the broker
        still away, handed out again after its visibility timeout.

        The task's max_retries are for a lost Redis: they come on top of the retries behind
        a lock (LOCK_RETRIES, from the headers this retry sends, else the request's)."""
        if max_retries is None and self.max_retries is not None:
            max_retries = self.max_retries + lock_retries(self, kwargs.get("headers"))
        try:
            return super().retry(*args, max_retries=max_retries, **kwargs)
        except Reject as exc:
            if not self.acks_late or exc.requeue:
                raise
            log.warning("%s: its retry could not be sent (%s): put back", self.name, exc.reason)
            raise Reject(exc.reason, requeue=True) from None
        finally:
            # Celery keeps a max_retries given to retry() on the task object, shared by every
            # later request, as `override_max_retries`, and its autoretry uses that instead
            # of the request's own budget.
            self.__dict__.pop("override_max_retries", None)


app = Celery("cachemgr", include=["workers.tasks"], task_cls=CacheTask)
app.config_from_object("celeryconfig")
subscribe_when_awaited(app)

log = logging.getLogger("cachemgr.workers")
HEARTBEAT_SECONDS = 10
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # the main process: it runs the heartbeat
EXIT_BAD_SETTINGS = 5
_stop = threading.Event()
_bad_settings: list[SettingsError] = []  # found while logging was set up
_beating = threading.Lock()


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging to us: plain text, or JSON with DISK_CACHE_LOG_FORMAT=json."""
    # DISK_CACHE_LOG_LEVEL, when set, wins over Celery's -l (the Procfile's INFO).
    try:
        # Celery gives -l as a number (20) or a name.
        given = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
        level = log_level(default=str(given or "INFO"))
    except SettingsError as exc:  # logging is needed to say so: the worker stops when ready
        _bad_settings.append(exc)
        level = "INFO"
    configure_logging(level=level)


def _announce(cache: Any, flushed: bool = False) -> bool:
    queue = app.conf.task_default_queue
    return presence.announce(cache, WORKER, queue, published_broker(), flushed)


def published_broker() -> str:
    """The broker this worker reads, as it publishes it (connection.broker_id)."""
    return broker_id(str(app.conf.broker_url or ""))


def _beat_forever(cache: Any, announced: bool) -> None:
    """`cache` None: it could not be built yet (a Redis Cluster that does not answer at start):
    built, then announced, at the next beats."""
    from workers.tasks import get_cache

    while not _stop.wait(HEARTBEAT_SECONDS):
        if cache is None:
            try:
                cache = get_cache()
            except Exception as exc:
                log.warning("worker cannot serve a node yet: %s", exc)
                continue
        with _beating:  # a shutdown marks the node down after this beat, never before it
            if _stop.is_set():
                break
            announced = _beat_once(cache, announced)


def _beat_once(cache: Any, announced: bool) -> bool:
    queue = app.conf.task_default_queue
    return presence.beat(cache, WORKER, queue, announced, published_broker())


@task_failure.connect
def _refused(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """A failed task is an error condition the operator must see: Celery logs the refusals it
    expects (a bad path, not tracked...) at INFO only, under its own logger."""
    if getattr(exception, LOGGED, False):  # said already, in its own line
        return
    name = getattr(sender, "name", "?")
    log.warning(
        "task %s failed: %s: %s",
        name,
        type(exception).__name__,
        exception,
        extra={"event": "task_failed", "task": name},
    )


@celeryd_after_setup.connect
def _settings_or_stop(**_: Any) -> None:
    """A worker with a bad setting stops before its banner and its "ready" line, in one line
    and with exit code 5 (Celery's worker program; the test workers do not send this)."""
    try:
        if _bad_settings:
            raise _bad_settings[0]
        Settings.from_env().check_floor(os.environ.get("DISK_CACHE_MIN_FREE_BYTES"))
    except SettingsError as exc:
        log.critical("worker stopping: %s", exc)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    for said in unknown_names():
        log.warning("%s: ignored", said, extra={"event": "unknown_setting"})


def _not_shared(cache: Any) -> None:
    """Refuse to serve a node whose queue another live node's workers read."""
    try:
        shared = cache.registry.shared_with(cache.settings, app.conf.task_default_queue)
    except Exception:  # Redis away: announced once it is back, unchecked
        return
    if shared:
        raise SettingsError(f"node {cache.settings.node!r}: {shared}")


@worker_ready.connect
def announce(**_: Any) -> None:
    """Say which node this worker serves, and keep saying it is alive. A worker whose settings
    are wrong stops at once, in one line, rather than fail every task it is sent."""
    from workers.tasks import get_cache

    try:
        if _bad_settings:
            raise _bad_settings[0]
        cache = get_cache()
        _not_shared(cache)
    except SettingsError as exc:
        log.critical("worker stopping: %s", exc)
        state.should_stop = EXIT_BAD_SETTINGS  # the worker's exit code, as the CLI's
        return
    except Exception as exc:  # the cache is built lazily: tasks and the heartbeat try again
        log.error("worker cannot serve a node yet: %s", exc)
        cache = None
    _stop.clear()
    threading.Thread(
        target=_beat_forever,
        args=(cache, cache is not None and _announce(cache)),
        name="cachemgr-heartbeat",
        daemon=True,
    ).start()


@worker_shutting_down.connect
def goodbye(**_: Any) -> None:
    from workers.tasks import current_cache

    _stop.set()
    cache = current_cache()
    if cache is not None:
        with _beating:  # a beat in flight lands first: it must not bring the node back up
            presence.leave(cache, WORKER)
