"""Beat's scheduler: each node's periodic cleanup goes to the queue that node's workers
published (CACHEMGR_QUEUE may have made it another than `cachemgr.<node>`), read at each
send, so a node whose workers move to another queue is followed without restarting beat."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from cachemgr.connection import connect
from cachemgr.environment import cluster_of
from cachemgr.logs import Repeats
from cachemgr.nodes import NodeRegistry, beat_alive, route_of
from cachemgr.settings import Settings
from workers.results import quiet_backend_noise

log = logging.getLogger("cachemgr.workers")
celery_log = logging.getLogger("celery.beat")  # its "Sending due task" line, kept

# celeryconfig's name for a node's periodic cleanup (DISK_CACHE_NODES); the suffix is the node.
NODE_ENTRY = "cachemgr-periodic-cleanup-"
# How often beat says again that a node it schedules has no worker (its cleanups not sent).
UNKNOWN_NODE_SECONDS = 3600
# How often, at most, beat renews its key in the books it sends cleanups to (nodes.beat_alive).
ALIVE_EVERY_SECONDS = 10.0


class NodeScheduler(PersistentScheduler):
    _registry: NodeRegistry | None = None
    _said_alive = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Celery's, and beat's key renewed in the books it sends cleanups to, so that the
        stats can say at once when no beat runs (they said so two intervals late)."""
        wait = float(super().tick(*args, **kwargs))
        if time.monotonic() - self._said_alive >= ALIVE_EVERY_SECONDS:
            self._said_alive = time.monotonic()
            self.say_alive()
        return wait

    def say_alive(self) -> None:
        try:
            registry = self.registry()
            books = self.books(registry.entries())
            beat_alive(registry.client, books, f"{socket.gethostname()}:{os.getpid()}")
        except Exception as exc:  # Redis away, a bad setting: the cleanups are sent still
            log.debug("beat: cannot say it is alive (%s)", exc)

    def books(self, entries: dict[str, dict[str, Any]]) -> dict[str, float]:
        """The key prefixes of the books whose periodic cleanups this beat sends, each with
        the interval it sends them at."""
        books = {}
        for name, entry in self.schedule.items():
            if not name.startswith(NODE_ENTRY.rstrip("-")):
                continue
            every = getattr(entry.schedule, "run_every", None)
            seconds = every.total_seconds() if every is not None else 0.0
            node = self.node_of(name)
            if node is None:  # the unnamed node, or CACHEMGR_QUEUE's: this environment's
                books[Settings.from_env(require_root=False).key_prefix] = seconds
            elif (route := route_of(node, entries)).published:  # not a misspelt one's keys
                books[route.key_prefix] = seconds
        return books

    def registry(self) -> NodeRegistry:
        """The node registry, where it lives: a bad setting beat does not use (a TTL) must
        not send every node's cleanup to a queue nobody reads."""
        if self._registry is None:
            env, defaults = os.environ, Settings()
            client = connect(env.get("REDIS_URL") or defaults.redis_url)
            self._registry = NodeRegistry(client, cluster_of(env))
        return self._registry

    def setup_schedule(self) -> None:
        # Beat sends through the result backend too: after a long Redis outage Celery logged
        # "The Celery application must be restarted", false (beat reconnects by itself).
        quiet_backend_noise()
        super().setup_schedule()

    def published_queue(self, node: str) -> str | None:
        """The queue `node`'s workers read, as they published it: "" when no worker of it
        ever published the node, None when that cannot be told (Redis away)."""
        try:
            found = route_of(node, self.registry().entries())
        except Exception as exc:  # Redis away: the queue of the schedule, as configured
            log.warning("beat: cannot read node %s's queue (%s): sending as configured", node, exc)
            return None
        return found.queue if found.published else ""

    def node_of(self, name: str) -> str | None:
        """The node an entry's cleanup is for: named in it (DISK_CACHE_NODES), or this beat's
        own DISK_CACHE_NODE when no CACHEMGR_QUEUE was given here (one beat per node)."""
        if name.startswith(NODE_ENTRY):
            return name[len(NODE_ENTRY) :]
        if name == NODE_ENTRY.rstrip("-") and not os.environ.get("CACHEMGR_QUEUE"):
            return os.environ.get("DISK_CACHE_NODE") or None
        return None

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Celery's, with a node's cleanup sent to the queue its workers published, read once
        a send; a node no worker published is not sent to, nor said to be (a misspelt
        DISK_CACHE_NODES filled a queue nobody read, "Sending due task" each interval)."""
        node = self.node_of(entry.name or "")
        if node:
            queue = self.published_queue(node)
            if queue == "":
                self._say_unknown(node, entry.options.get("queue"))
                return
            if queue and queue != entry.options.get("queue"):
                log.info("beat: node %s's workers read %s: its cleanups go there", node, queue)
                entry.options["queue"] = queue
        celery_log.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:
            # Celery's own said each failed send with two tracebacks (Redis down: 30 lines
            # a tick); the next send is at the entry's next time, as before.
            log.error(
                "beat: could not send %s (%s): %s; it is sent again at its next time",
                entry.name,
                entry.task,
                exc,
                extra={"event": "beat_send_failed"},
            )

    def _say_unknown(self, node: str, queue: Any) -> None:
        said: Repeats = self.__dict__.setdefault("_unknown_said", Repeats(UNKNOWN_NODE_SECONDS))
        if said.due(node):
            log.warning(
                "beat: no worker has published node %s (a misspelt DISK_CACHE_NODES, or its "
                "workers never started?): its cleanups are not sent (to %s) until one does",
                node,
                queue,
                extra={"event": "unknown_node", "node": node},
            )
