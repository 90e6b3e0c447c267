"""The worker's consumer: Celery's, surviving a restart of its Redis broker and a malformed
task message.

Celery 5.7.0, on a lost broker connection, closes the connection that `collect()` has already
released (its transport's `client` set to None). A Redis channel that `collect()` left half
closed (its BRPOP read failed) then needs that client to put its unacknowledged messages back
(a task due later, or one running, acknowledged late as ours are): AttributeError, which
Celery does not take for a connection error, and the worker stopped for good at each restart
of Redis. celery 5.6 did not close it twice (and leaked a socket each time instead).

A message whose body is not `[args, kwargs, embed]` (a hand-written client's bare args list)
raised ValueError in Celery's request, which Celery takes for unrecoverable: the worker
stopped, restored the message, and every worker started after it stopped on it again. Such a
message is refused as an invalid task: one line in the log, a FAILURE result under its id
(the sender's get() hears why, rather than wait forever), and the message dropped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from celery import signals, states
from celery.exceptions import CPendingDeprecationWarning, InvalidTaskError
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed

from cachemgr.checks import shown
from cachemgr.errors import BadArgument
from cachemgr.logs import printable


# Celery warns, in seven lines at each lost broker connection, that 6.0 will cancel running
# tasks acknowledged late on a connection loss. Ours keep running as 5.x does (each is
# idempotent, or journalled, and comes back after the visibility timeout if unacknowledged):
# the warning says nothing an operator can act on.
def quiet_cancel_warning() -> None:
    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5.1 we introduced", category=CPendingDeprecationWarning
    )


quiet_cancel_warning()

log = logging.getLogger("cachemgr")


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        conn: Any = self.connection
        if conn is not None:
            transport, close = conn.transport, conn.close

            def close_with_client() -> None:
                """The transport gets its client back for that close only."""
                if transport.client is not None:
                    close()
                    return
                transport.client = conn
                try:
                    close()
                finally:
                    transport.client = None

            conn.close = close_with_client  # the connection is dropped after this call
        super().on_connection_error_after_connected(exc)

    def update_strategies(self) -> None:
        super().update_strategies()
        for name, strategy in list(self.strategies.items()):
            self.strategies[name] = _checked(strategy)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Celery's logged the whole message with a traceback, and sent no result."""
        headers = message.headers or {}
        if isinstance(body, dict):  # a protocol 1 message: its id and name are in its body
            headers = {**body, **headers}
        task_id, name = headers.get("id"), headers.get("task")
        why = printable(str(exc))[:500]
        log.error(
            "task message refused (%s, id %s): %s",
            name,
            task_id,
            why,
            extra={"event": "task_refused", "task": name},
        )
        message.reject_log_error(log, self.connection_errors)
        if task_id:
            try:
                self.app.backend.store_result(task_id, BadArgument(why), states.FAILURE)
            except Exception as failed:  # the backend away: the log says it
                log.warning("could not store the refusal of task %s: %s", task_id, failed)
        signals.task_rejected.send(sender=self, message=message, exc=exc)


def _checked(strategy: Callable[..., Any]) -> Callable[..., Any]:
    """The task's strategy, refusing a body that is not [args, kwargs, embed] (nor a
    protocol 1 body under protocol 2 headers, which Celery converts) as an invalid task
    (Celery's own refusals included: a serializer it does not accept)."""

    def checked(message: Any, body: Any, *rest: Any, **kwargs: Any) -> Any:
        if body is None and "task" in (message.headers or {}):  # protocol 2: decoded here
            try:
                payload = message.decode()
            except ContentDisallowed:
                raise
            except Exception as exc:
                raise InvalidTaskError(f"the message body cannot be decoded ({exc})") from exc
            hybrid = isinstance(payload, dict) and "args" in payload  # Celery converts it
            if not hybrid and not (
                isinstance(payload, list | tuple)
                and len(payload) == 3
                and isinstance(payload[0], list | tuple)
                and isinstance(payload[1], dict)
            ):
                raise InvalidTaskError(
                    "the message body must be [args, kwargs, embed] (a list, a mapping, a "
                    f"mapping), got {shown(payload, 80)}"
                )
        try:
            return strategy(message, body, *rest, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidTaskError(f"a malformed task message ({exc})") from exc

    return checked
