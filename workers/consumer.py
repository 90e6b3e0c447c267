"""The worker's consumer: Celery's, surviving a restart of its Redis broker.

Celery 5.7.0, on a lost broker connection, closes the connection that `collect()` has already
released (its transport's `client` set to None). A Redis channel that `collect()` left half
closed (its BRPOP read failed) then needs that client to put its unacknowledged messages back
(a task due later, or one running, acknowledged late as ours are): AttributeError, which
Celery does not take for a connection error, and the worker stopped for good at each restart
of Redis. celery 5.6 did not close it twice (and leaked a socket each time instead).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer


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
