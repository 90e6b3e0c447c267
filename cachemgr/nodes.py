"""Nodes: many cache roots (one per host) under one control plane.

Each node's workers publish what the node is (root, key prefix, queue, quota, TTL, policy) in
the shared hash `{cluster}:nodes`, and keep the node's own `cache:alive` key alive with a short
TTL while they run: a node whose workers are gone shows as down. `{cluster}` is
DISK_CACHE_CLUSTER (default `cachemgr`). The API and the CLI read any node's
books through a DiskCache built from its published settings.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from cachemgr import checks
from cachemgr.clock import CLOCK_SKEW_SECONDS, clock_skew, redis_now, skewed
from cachemgr.connection import broker_id
from cachemgr.errors import NodeAlive, PathError, UnknownNode
from cachemgr.keys import Keys
from cachemgr.logs import Repeats
from cachemgr.paths import normalize
from cachemgr.published import disk_seen, enforced, enforced_entry, newest
from cachemgr.reads import Batch, Lua, Reader, call, run
from cachemgr.settings import Settings

log = logging.getLogger("cachemgr")

ALIVE_TTL_SECONDS = 30
# A beat renews its key at each of its ticks, which come at least every 30 s
# (celeryconfig.beat_max_loop_interval): gone for three, it is taken for stopped.
BEAT_ALIVE_SECONDS = 90
# How long a node is known to have had such a beat (cache:beat_seen) after its last word, at
# the least: past it, an older beat (one that says nothing) is judged by its cleanups alone.
BEAT_SEEN_SECONDS = 86400
# A warning repeated at every beat is said once in this many seconds (the stats say it always).
REPEAT_SECONDS = 600.0
# An unnamed node's entry (named after its host) whose host has had no live worker of the
# books for this long since it published is dropped by a live worker of the same books:
# recreated containers, each with a host name of its own, left one entry each for good,
# read by every stats request (and two of them on one root made a path's node ambiguous).
DEPARTED_SECONDS = 600.0
_REPEATS = Repeats(REPEAT_SECONDS)


# A worker leaves its node: the node's flag goes with the last live worker.
# KEYS[1] cache:workers  KEYS[2] cache:alive  KEYS[3] cache:worker_settings
# ARGV[1] worker ('' : the node goes down)  ARGV[2] oldest heartbeat of a live worker
LEAVE = Lua("""
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
if ARGV[1] == '' or redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf') == 0 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
""")


# Workers whose last beat is older than ARGV[1] (two TTLs: killed, never said they left) go,
# with their settings (each restart had added a field for good); in one script, so that a
# paused worker beating again meanwhile keeps what it has just written.
# KEYS[1] cache:workers  KEYS[2] cache:worker_settings  ARGV[1] the cutoff. Returns how many.
# Sent whole (EVAL) in the heartbeat's pipeline: a Redis that lost its scripts still beats.
PRUNE = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
  redis.call('HDEL', KEYS[2], unpack(dead))
end
return #dead
"""


# A node's published config (TTL, policy, root: what one directory's read goes by) goes with
# its last entry, unless a worker came up meanwhile. On the node's own keys only (one hash tag:
# one Redis Cluster shard); the registry's entry is taken apart (HDEL).
# KEYS[1] the node's cache:alive  KEYS[2] the node's cache:config. Returns 1 taken, 0 alive.
DROP_CONFIG = Lua("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
return 1
""")


def no_worker(node: str) -> str:
    """What no live worker of a node is, said the same by the stats, the API and the CLI."""
    return f"no worker of node {node or '(unnamed)'} is alive (no heartbeat)"


def node_queue(node: str) -> str:
    """A named node's own queue; an unnamed single node uses Celery's default queue, so that a
    plain client that knows only a task name reaches it."""
    return f"cachemgr.{node}" if node else "celery"


def queue_for(settings: Settings) -> str:
    return node_queue(settings.disk_cache_node)


@dataclass(frozen=True)
class Route:
    """Where a node's tasks go and the prefix of its books: as its workers published them,
    the defaults of its name before any has (`published` False)."""

    queue: str
    key_prefix: str
    published: bool


def route_of(node: str, entries: dict[str, dict[str, Any]]) -> Route:
    entry = entries.get(node)
    if entry is None:
        return Route(node_queue(node), Keys.node_prefix(node), False)
    # An entry from before queues were published: the queue its name gives.
    queue = str(entry.get("queue") or node_queue(node))
    return Route(queue, str(entry.get("key_prefix", Keys.node_prefix(node))), True)


def unknown_node(node: str, entries: dict[str, dict[str, Any]]) -> UnknownNode:
    """A node none of `entries` (the registry) names, said with those it does."""
    names = ", ".join(repr(n) for n in sorted(entries)) or "none"
    return UnknownNode(
        f"unknown node {node!r}: no worker of it has started, or it was forgotten "
        f"(`cachemgr forget-node`); known nodes: {names}"
    )


def as_published(settings: Settings, entries: dict[str, dict[str, Any]]) -> Settings:
    """`settings` for the node they name as its workers published it: their key prefix (one
    set by DISK_CACHE_KEY_PREFIX there: `--node n2 ls` listed the empty books under `{n2}:`,
    and its pin leased in keys no worker reads), and unnamed where they run unnamed
    (DISK_CACHE_NODE unset there: the node goes by its host's name, its keys by the seed's
    names; a shell's `--node vm` read and wrote the empty books under `{vm}:`)."""
    entry = entries.get(settings.disk_cache_node)
    if not settings.disk_cache_node or entry is None:
        return settings
    node = settings.disk_cache_node if entry.get("named", True) else ""
    # An entry of a version that published no prefix: the node's own, not the shell's.
    prefix = str(entry.get("key_prefix", Keys.node_prefix(node)))
    return replace(settings, disk_cache_node=node, disk_cache_key_prefix=prefix)


def published_queues(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The queues the nodes' workers read."""
    return sorted({str(e["queue"]) for e in entries.values() if e.get("queue")})


def unread_broker(entries: dict[str, dict[str, Any]], url: str) -> list[str]:
    """The brokers the nodes' workers read (connection.broker_id), when none is `url`'s:
    tasks sent there wait for ever, unsaid (a CLI waited 120 s, then blamed the task). Empty
    when one is, or no worker published its broker (an older version)."""
    theirs = sorted({str(e["broker"]) for e in entries.values() if e.get("broker")})
    return [] if not theirs or broker_id(url) in theirs else theirs


class NodeRegistry:
    def __init__(self, client: Any, cluster: str = "cachemgr") -> None:
        self.client = client
        self.nodes_key = Keys.nodes(cluster)
        self.cluster = cluster

    def publish(
        self,
        settings: Settings,
        now: float | None = None,
        queue: str | None = None,
        broker: str = "",
    ) -> None:
        """`queue`: the one the node's workers consume (CACHEMGR_QUEUE may override the
        node's own), where every other process sends the node's tasks; `broker`: the broker
        they read it on (connection.broker_id)."""
        entry = {
            "node": settings.node,
            "root": str(settings.root),
            # As set, made absolute: the same setting resolves elsewhere once a symlink in it
            # is on a disk not mounted (root_elsewhere).
            "root_as_set": os.path.abspath(settings.disk_cache_root),
            "key_prefix": settings.key_prefix,
            "queue": queue or queue_for(settings),
            "broker": broker,  # connection.broker_id of the one they read
            **enforced_entry(settings),
            "named": bool(settings.disk_cache_node),
            "published_at": time.time() if now is None else now,
        }
        self.client.hset(self.nodes_key, settings.node, json.dumps(entry))

    def drop_departed(self, settings: Settings, keys: Keys, now: float | None = None) -> list[str]:
        """Drop the entries of unnamed nodes of these books (`settings.key_prefix`) whose host
        runs no live worker of them and which were published over DEPARTED_SECONDS ago: the
        hosts of replaced containers. Their books are these ones, which stay. Returns them."""
        now = time.time() if now is None else now
        hosts = {worker.rpartition(":")[0] for worker in self.live_workers(keys)}
        gone = [
            node for node, e in self.entries().items()
            if node != settings.node and not e.get("named", True) and node not in hosts
            and e.get("key_prefix") == settings.key_prefix
            and float(e.get("published_at", now)) < now - DEPARTED_SECONDS
        ]  # fmt: skip
        if gone:
            self.client.hdel(self.nodes_key, *gone)
        return gone

    def alive(self, keys: Keys) -> bool:
        """Whether a worker of the node with these keys beat within the heartbeat's TTL."""
        return bool(self.client.exists(keys.alive))

    def heartbeat(
        self,
        keys: Keys,
        worker: str = "",
        ttl: int = ALIVE_TTL_SECONDS,
        node: str = "",
        settings: Settings | None = None,
    ) -> bool:
        """Say the node is alive, and with `settings` what this worker enforces. With `node`:
        False when its entry or its config is gone (the books were flushed), for the worker to
        publish them again. A worker's beat is dated by Redis's clock (its own less the skew
        measured): one an hour behind had counted as dead, its skew unsaid. Workers gone for
        two TTLs are dropped from cache:workers (a killed one stayed for good)."""
        skew = clock_skew(self.client) if worker and settings is not None else 0.0
        now = time.time() - skew
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.alive, f"{now:.3f}", ex=ttl)
        if worker:
            pipe.zadd(keys.workers, {worker: now})
            cutoff = f"{now - 2 * ttl:.3f}"
            pipe.eval(PRUNE, 2, keys.workers, keys.worker_settings, cutoff)
            pipe.expire(keys.workers, 2 * ttl)
            if settings is not None:
                own = {
                    **enforced_entry(settings),
                    "clock_skew": round(skew, 1),
                    **disk_seen(settings.root),
                }
                pipe.hset(keys.worker_settings, worker, json.dumps(own, sort_keys=True))
                pipe.expire(keys.worker_settings, 2 * ttl)
                if abs(skew) > CLOCK_SKEW_SECONDS and _REPEATS.due(f"skew:{worker}", now):
                    log.warning("%s", skewed(f"worker {worker}", skew))
        if node:
            pipe.hexists(self.nodes_key, node)
            pipe.exists(keys.config)
        replies = pipe.execute()
        return not node or all(replies[-2:])

    def mark_down(self, keys: Keys, worker: str = "", ttl: int = ALIVE_TTL_SECONDS) -> None:
        """A worker stops: the node is down at once if it was the last of the node's workers
        still beating (a worker that died without a word lapses after `ttl`)."""
        oldest = f"{redis_now(self.client) - ttl:.3f}"
        call(self.client, LEAVE, [keys.workers, keys.alive, keys.worker_settings], [worker, oldest])

    def publisher_gone(self, keys: Keys, worker: str) -> bool:
        """Whether the node's published settings are those of a worker that stopped (not
        `worker`): a worker started with a TTL of 60 s and stopped again left them standing,
        and a `cleanup --now` expired by them what the live workers keep for an hour."""
        publisher = self.client.hget(keys.config, "worker")
        if publisher == worker:
            return False
        return not publisher or publisher not in self.live_workers(keys)

    def live_workers(self, keys: Keys, ttl: int = ALIVE_TTL_SECONDS) -> dict[str, dict[str, Any]]:
        """The node's workers that beat within `ttl`, each with the settings it enforces
        ({} for one from before they were published)."""
        oldest = redis_now(self.client) - ttl
        live = self.client.zrangebyscore(keys.workers, f"{oldest:.3f}", "+inf")
        found = self.client.hmget(keys.worker_settings, live) if live else []
        return self.parse_workers(live, found)

    @staticmethod
    def parse_workers(live: list[str], found: list[str | None]) -> dict[str, dict[str, Any]]:
        """Live workers with the settings each published ({} for one from before they were)."""
        return {w: dict(_decoded(s)) if s else {} for w, s in zip(live, found, strict=True)}

    def forget(self, node: str) -> dict[str, Any]:
        """Take a node out of the registry (one taken out of service): it leaves the stats, the
        metrics and the alerts. Its books stay in Redis, and its workers, if they ever run
        again, publish it again. Refused while the node is up; an older entry of the same
        books (an unnamed node's previous host name) can go at any time."""
        checks.node_name(node)
        unknown = UnknownNode(f"unknown node {node!r}: it is not in {self.nodes_key}")
        entries = self.entries()
        entry = entries.get(node)
        if entry is None:
            raise unknown
        prefix = str(entry.get("key_prefix", ""))
        current = newest(entries, prefix) is entry
        books = Keys(prefix)
        # A worker that beats between this check and the HDEL publishes its node again at its
        # next beat (10 s): the entry is the workers' to keep, never lost for good.
        if current and self.client.exists(books.alive):
            raise NodeAlive(
                f"node {node!r} is up (a worker beat within {ALIVE_TTL_SECONDS} s) and would "
                "publish itself again: stop its workers first"
            )
        if not self.client.hdel(self.nodes_key, node):  # forgotten meanwhile by someone else
            raise unknown
        if current:
            call(self.client, DROP_CONFIG, [books.alive, books.config], [])
        log.info(
            "node %s forgotten (its books, prefix %r, stay in Redis)",
            node,
            prefix,
            extra={"event": "node_forgotten", "node": node},
        )
        return {"node": node, "forgotten": True}

    def shared_with(self, settings: Settings, queue: str) -> str | None:
        """Why this node's workers must not start: another named node, alive, reads `queue`
        too (a task for one ran on the other's books and disk: a removal deleted the other
        node's directory). None when no live one does. Not asked of books shared: their
        liveness key is this node's own too (a node renamed keeps its books)."""
        for name, entry in self.entries().items():
            named = entry.get("named", True) and settings.disk_cache_node
            if name == settings.node or not named or entry.get("queue") != queue:
                continue  # an unnamed node's other host names are itself
            prefix = str(entry.get("key_prefix", ""))
            if prefix != settings.key_prefix and self.client.exists(Keys(prefix).alive):
                return (
                    f"node {name!r}, alive, reads queue {queue!r} too (set CACHEMGR_QUEUE "
                    "apart, or unset it): a task for one node would run on the other's books "
                    f"and disk (a node gone for good: `cachemgr forget-node {name}` once its "
                    f"workers have been gone {ALIVE_TTL_SECONDS} s)"
                )
        return None

    def entries(self) -> dict[str, dict[str, Any]]:
        return run(self.client, self.queue_entries)

    def queue_entries(self, batch: Batch) -> Reader[dict[str, dict[str, Any]]]:
        batch.command("HGETALL", self.nodes_key, writes=False)
        return lambda replies: self.parse(next(replies))

    @staticmethod
    def parse(raw: dict[str, str]) -> dict[str, dict[str, Any]]:
        # Each entry decoded once per text (it changes when a worker publishes): every stats
        # read carries the registry, and decoding it was a tenth of the read's Python.
        return {node: dict(_decoded(entry)) for node, entry in raw.items()}

    def holder(self, path: str, entries: dict[str, dict[str, Any]]) -> tuple[str, str]:
        """The node whose root holds `path` (absolute; resolved here) and its path under that
        root; PathError, naming `path` as given, when no root holds it, or several hosts
        mount theirs at that path."""
        target = os.path.realpath(path)
        holding = {
            node: entry["root"].rstrip("/")
            for node, entry in entries.items()
            if target.startswith(entry["root"].rstrip("/") + "/")
        }
        if not holding:
            raise PathError(f"no cache node's root holds {path!r}")
        root = max(holding.values(), key=len)  # nested roots: the innermost holds it
        nodes = sorted(n for n, r in holding.items() if r == root)
        if len(nodes) > 1 and len({entries[n]["key_prefix"] for n in nodes}) == 1:
            # One set of books (unnamed workers on several hosts, or a host replaced): one
            # node, routed as its newest entry says.
            nodes = [max(nodes, key=lambda n: float(entries[n].get("published_at", 0)))]
        if len(nodes) > 1:
            # A node renamed or retired stays in the registry: the one alive there is it.
            alive = [n for n in nodes if self.alive(Keys(entries[n]["key_prefix"]))]
            nodes = alive if len(alive) == 1 else nodes
        if len(nodes) > 1:
            # Hosts that mount their caches at the same path: the path cannot say which.
            raise PathError(
                f"{path!r} is under the root of nodes {', '.join(nodes)} (the same "
                "path on several hosts): use CacheClient(node=...)"
            )
        return nodes[0], normalize(target[len(root) + 1 :])

    def settings_for(
        self, node: str, base: Settings, entries: dict[str, dict[str, Any]] | None = None
    ) -> Settings | None:
        """Another node's settings as it published them (its root may not exist here)."""
        entry = (self.entries() if entries is None else entries).get(node)
        if entry is None:
            return None
        return replace(
            enforced(base, entry),
            disk_cache_node=node if entry.get("named", True) else "",
            disk_cache_root=entry["root"],
            disk_cache_key_prefix=entry["key_prefix"],
            enable_disk_cache_management=bool(entry.get("enabled", True)),
        ).validate()


@functools.lru_cache(maxsize=256)
def _decoded(entry: str) -> dict[str, Any]:
    """A published entry's JSON, decoded; callers get a copy (the values are scalars)."""
    found: dict[str, Any] = json.loads(entry)
    return found


def beat_alive(client: Any, books: dict[str, float], beat: str) -> None:
    """A celery beat says it sends the periodic cleanups of the books under each prefix of
    `books`, at its interval (cache:beat, `<beat> <seconds>`, for BEAT_ALIVE_SECONDS): with
    the default interval of an hour, a beat that never started was said only two hours later
    (health.periodic_overdue), and a beat restarted at another interval was judged by its
    last cleanup's until the next came. That such a beat ran (cache:beat_seen) is kept
    BEAT_SEEN_SECONDS, or three intervals if longer: by then a stopped beat's cleanups are
    overdue and said so anyway, and a node rolled back to an older beat is no longer judged
    by this one's key for good."""
    pipe = client.pipeline(transaction=False)
    for prefix, interval in books.items():
        keys = Keys(prefix)
        pipe.set(keys.beat, f"{beat} {round(interval)}", ex=BEAT_ALIVE_SECONDS)
        pipe.set(keys.beat_seen, beat, ex=int(max(BEAT_SEEN_SECONDS, 3 * interval)))
    pipe.execute()
