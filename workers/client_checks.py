"""What the pipeline client tells of a pipeline set up apart from its workers: a broker, a
queue or books keys that no node's workers read, no worker of its node alive, a URL that the
environment overrides. Each said in a WARNING, once (or once in a while), never raised: the
pipeline goes on, and its tasks wait where they went."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cachemgr.connection import broker_id, without_password
from cachemgr.nodes import no_worker, published_queues, route_of, unread_broker

if TYPE_CHECKING:
    from celery import Celery

    from cachemgr.keys import Keys

log = logging.getLogger("cachemgr")

# How long a client that cannot tell yet (the books away, no worker published) waits before it
# looks again: not on every access, the hot path.
UNREAD_RETRY_SECONDS = 5.0
# How often a client looks again, at a send, whether a worker of its node is alive.
ALIVE_CHECK_SECONDS = 60.0


class ClientChecks:
    """CacheClient's warnings; the state they keep is the client's."""

    app: Celery
    node: str | None
    broker_url: str
    _unread_due: float
    _broker_told: bool
    _keys_told: bool
    _alive_due: float

    if TYPE_CHECKING:  # the client's own

        def _registry(self, fresh: bool = False) -> dict[str, dict[str, Any]]: ...

        def _books(self) -> Any: ...

        @property
        def keys(self) -> Keys: ...

    @staticmethod
    def _say_env_wins(name: str, given: str | None, used: str) -> None:
        """Celery's rule: the variable in the environment wins over the URL given. A pipeline
        given one URL sent its tasks to the environment's broker, unsaid."""
        if given and used != given:
            log.warning(
                "%s in the environment (%s) wins over the URL given (%s), by Celery's rule: "
                "it is the one used",
                name,
                without_password(used),
                without_password(given),
                extra={"event": "env_wins"},
            )

    def _say_unread_queue(self, queue: str, entries: dict[str, Any] | None) -> None:
        """A queue given (an argument, CACHEMGR_QUEUE) that no node's workers published: a
        typo's tasks waited there for ever, unsaid (a misspelt node was said). `entries`:
        the registry, when the route read it already."""
        try:
            if entries is None:
                entries = self._registry()
        except Exception:  # books away: nothing to tell it by
            return
        read = published_queues(entries)
        if read and queue not in read:
            log.warning(
                "no worker has published queue %s (the nodes' workers read %s): its tasks "
                "wait there until one reads it (a misspelt queue?)",
                queue,
                ", ".join(read),
                extra={"event": "unread_queue"},
            )

    def _say_unread(self) -> None:
        """Once a client, at its first send or direct use: a broker no node's workers read
        (another CELERY_BROKER_URL than theirs, a default) kept its tasks for ever, unsaid;
        books keys no node's workers use (another DISK_CACHE_KEY_PREFIX) made its pins
        protect nothing and its plays count nowhere, unsaid. Asked again once in a while, not
        at each call, while it cannot be told (the books away, no worker published yet)."""
        now = time.monotonic()
        if (self._broker_told and self._keys_told) or now < self._unread_due:
            return
        self._unread_due = now + UNREAD_RETRY_SECONDS
        try:
            entries = self._registry()
            keys = self.keys
        except Exception:  # books away: nothing to tell it by
            return
        # Each told once it can be: the broker once a worker published its own (an older
        # one does not), the keys once the client's node (if named) is published.
        unpublished = self.node is not None and self.node not in entries  # said by _routing
        broker_told = not self._broker_told and any(e.get("broker") for e in entries.values())
        keys_told = not self._keys_told and bool(entries) and not unpublished
        self._broker_told |= broker_told
        self._keys_told |= keys_told
        theirs = unread_broker(entries, self.broker_url) if broker_told else []
        if theirs:
            log.warning(
                "tasks go to broker %s, which no node's workers read (they read %s): they "
                "wait there until one does (the broker URL given, or CELERY_BROKER_URL, is not "
                "the workers'?)",
                broker_id(self.broker_url),
                ", ".join(theirs),
                extra={"event": "unread_broker"},
            )
        used = sorted({route_of(name, entries).key_prefix for name in entries})
        if keys_told and keys.prefix not in used:
            log.warning(
                "this client's books keys (prefix %s) are no node's (their workers use %s): "
                "its pins protect nothing and its plays count nowhere "
                "(DISK_CACHE_KEY_PREFIX, or key_prefix given, is not the workers'?)",
                repr(keys.prefix),
                ", ".join(repr(u) for u in used),
                extra={"event": "unread_keys"},
            )

    def _alive_check_due(self) -> bool:
        return time.monotonic() >= self._alive_due

    def _say_no_worker(self, queue: str | None) -> None:
        """At a send, once in ALIVE_CHECK_SECONDS: no worker of the node alive, its tasks
        wait, and a result's get() timed out in Celery's bare words. Only of a node the
        registry names by this client's keys and queue (a queue given without its node's
        prefix is some node's this client cannot tell)."""
        self._alive_due = time.monotonic() + ALIVE_CHECK_SECONDS
        sent_to = queue or self.app.conf.task_default_queue
        try:
            books = self._books()
            entries = self._registry()
            keys = self.keys
            routes = [route_of(name, entries) for name in entries]
            ours = any(r.key_prefix == keys.prefix and r.queue == sent_to for r in routes)
            alive = not ours or books.exists(keys.alive)
        except Exception:  # books away: said where they are used
            return
        if not alive:
            log.warning(
                "%s: tasks sent to queue %s wait until one starts (a result's get() times "
                "out meanwhile)",
                no_worker(self.node or ""),
                sent_to,
                extra={"event": "no_worker"},
            )
