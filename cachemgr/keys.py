"""Every Redis key cachemgr uses, in one place.

With an empty prefix the names are exactly the seed's (`dir:{path}`, `cache:lru`, `cache:bytes`,
`lock:dir:{path}`). A named node gets the prefix `{node}:`, one hash tag, so that all of a node's
keys live on one Redis Cluster shard and every multi-key script stays legal there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Keys:
    """A node's key names. Each fixed name is worked out once per instance (cached_property):
    the hot reads name nine of them on every call."""

    prefix: str = ""

    def dir(self, path: str) -> str:
        """String, value = registration time (whole epoch seconds); Redis TTL = the cache TTL."""
        return f"{self.prefix}dir:{path}"

    def lock(self, path: str) -> str:
        """String, the lock of one directory while it is scanned, evicted or removed."""
        return f"{self.prefix}lock:dir:{path}"

    @cached_property
    def lru(self) -> str:
        """ZSET path -> last access time. With one TTL for all, also the index by expiry."""
        return f"{self.prefix}cache:lru"

    @cached_property
    def bytes(self) -> str:
        """String, total bytes of all tracked directories."""
        return f"{self.prefix}cache:bytes"

    @cached_property
    def entries(self) -> str:
        """HASH record id (records.record_id(path): 12 characters) -> packed record
        `size files registered hits` (see records.py)."""
        return f"{self.prefix}cache:entries"

    @cached_property
    def stats(self) -> str:
        """HASH of counters since the cache was created: hits, misses, evictions..."""
        return f"{self.prefix}cache:stats"

    @cached_property
    def stats_baseline(self) -> str:
        """HASH: the counters as they were at the last reset, plus `reset_at`.

        "Since the reset" is the difference, so an access bumps one hash, not two.
        """
        return f"{self.prefix}cache:stats:baseline"

    @cached_property
    def pins(self) -> str:
        """ZSET path -> lease expiry time; a pinned directory is never evicted or expired."""
        return f"{self.prefix}cache:pins"

    @cached_property
    def pin_paths(self) -> str:
        """ZSET of the pinned paths, all scored 0: ordered by name, so that the pins inside a
        directory are one range (ZRANGEBYLEX), whatever their leases."""
        return f"{self.prefix}cache:pins:paths"

    @cached_property
    def deleting(self) -> str:
        """HASH path -> `size files registered hits last reason` (the claim's journal; older
        books: the size alone): untracked, its files not yet gone (a crash finishes them)."""
        return f"{self.prefix}cache:deleting"

    @cached_property
    def policy(self) -> str:
        """ZSET used by the active eviction policy (unused by lru, which orders by cache:lru)."""
        return f"{self.prefix}cache:policy"

    def policy_aux(self, policy: str, name: str) -> str:
        """Extra structures a policy needs (queues, hands, ghosts): `name` of `policy`'s."""
        return f"{self.prefix}cache:policy:{policy}:{name}"

    @cached_property
    def policy_name(self) -> str:
        """String, the policy whose structures are built (to notice a switch)."""
        return f"{self.prefix}cache:policy_name"

    @cached_property
    def scheduler(self) -> str:
        """String `running` or `stopped`: the switch that periodic cleanups honour."""
        return f"{self.prefix}cache:scheduler"

    @cached_property
    def config(self) -> str:
        """HASH: the node's TTL, policy, root, node, access-log cap and publishing worker,
        published by its workers for pipeline clients."""
        return f"{self.prefix}cache:config"

    @cached_property
    def cleanup_lock(self) -> str:
        """String, held while a cleanup runs so that only one runs at a time."""
        return f"{self.prefix}lock:cache:cleanup"

    @cached_property
    def quota_again(self) -> str:
        """String, PX: a quota pass that found another cleanup running is sent again; the
        first of them sets it, its retries renew it, and the others are not sent again (a
        burst of registrations sends one each); a cleanup that takes the lock deletes it."""
        return f"{self.prefix}cache:quota_again"

    @cached_property
    def quota_sent(self) -> str:
        """String, PX: a registration's quota pass is queued and has not yet weighed the usage;
        the registrations booked meanwhile send none (a burst past the threshold sent one each).
        A cleanup deletes it once it holds the lock, or as it stops before (off, the scheduler
        stopped, the root refused or adopted); one behind another cleanup leaves it."""
        return f"{self.prefix}cache:quota_sent"

    @cached_property
    def reconcile_lock(self) -> str:
        """String, held while a reconcile runs."""
        return f"{self.prefix}lock:cache:reconcile"

    @cached_property
    def root_claim(self) -> str:
        """String, PX 60 s: the token a root's first marking writes, proposed by the first of
        the processes marking it at once, so that all of them write that one."""
        return f"{self.prefix}cache:root_claim"

    @cached_property
    def adopting(self) -> str:
        """String, a lock kept alive while a `reconcile --force` walks the root it adopts:
        cleanups meanwhile skip their root check's refusal instead of failing."""
        return f"{self.prefix}cache:adopting"

    @cached_property
    def last_cleanup(self) -> str:
        """HASH: time, duration and outcome of the last cleanup."""
        return f"{self.prefix}cache:last_cleanup"

    @cached_property
    def initialized(self) -> str:
        """String, set once the books match the disk; missing after a FLUSHALL."""
        return f"{self.prefix}cache:initialized"

    def pin_holders(self, path: str) -> str:
        """HASH holder -> lease expiry, of the leases on one directory (pins.PIN); '' is a
        lease no holder named. cache:pins keeps the latest of them."""
        return f"{self.prefix}pin:{path}"

    @cached_property
    def root_mark(self) -> str:
        """String: the token the root's marker file holds, naming the directory these books
        were kept for (marker.py)."""
        return f"{self.prefix}cache:root_mark"

    @cached_property
    def evict_hold(self) -> str:
        """String with a TTL: the books were rebuilt from the disk, and periodic and automatic
        eviction waits until it lapses (the pins were lost with the books; their holders renew
        them meanwhile)."""
        return f"{self.prefix}cache:evict_hold"

    @cached_property
    def events(self) -> str:
        """STREAM (capped) of evictions, expiries, removals and failures."""
        return f"{self.prefix}cache:events"

    @cached_property
    def accesses(self) -> str:
        """STREAM (capped, opt-in) of accesses, for trace export."""
        return f"{self.prefix}cache:accesses"

    @cached_property
    def history(self) -> str:
        """LIST (capped) of counter samples taken by each cleanup, for the status page."""
        return f"{self.prefix}cache:history"

    @cached_property
    def format(self) -> str:
        """String: the layout of the books (records.RECORD_FORMAT), to notice old books."""
        return f"{self.prefix}cache:format"

    @cached_property
    def gone_cursor(self) -> str:
        """String: where beat's look for tracked directories gone from the disk goes on."""
        return f"{self.prefix}cache:gone_cursor"

    @cached_property
    def mounts(self) -> str:
        """SET of the mount points below the root, above the entry depth, that cleanups have
        seen mounted (relative paths): one found empty later is a disk not mounted (marker)."""
        return f"{self.prefix}cache:mounts"

    @cached_property
    def ttl_applied(self) -> str:
        """String: the TTL (seconds) the dir: keys were last stamped with, to notice a change."""
        return f"{self.prefix}cache:ttl_applied"

    @cached_property
    def probe(self) -> str:
        """String written for a second by /readyz: a Redis that answers PING may still refuse
        writes (out of memory, a read-only replica after a failover)."""
        return f"{self.prefix}cache:probe"

    @cached_property
    def alive(self) -> str:
        """String with a short TTL that the node's workers renew: the node is up while it exists.
        Among the node's own keys, so that the stats script reads it in the same call."""
        return f"{self.prefix}cache:alive"

    @cached_property
    def beat(self) -> str:
        """String with a short TTL that a celery beat sending the node's periodic cleanups
        renews (nodes.beat_alive): beat is up while it exists. Its value names the beat."""
        return f"{self.prefix}cache:beat"

    @cached_property
    def beat_seen(self) -> str:
        """String with a day's TTL at least (nodes.beat_alive): a beat that says it is alive
        (cache:beat) ran for the node lately. Without it, one of a version that says nothing
        may send the cleanups."""
        return f"{self.prefix}cache:beat_seen"

    @cached_property
    def workers(self) -> str:
        """ZSET worker (host:pid) -> its last heartbeat: the last of them to stop takes the
        node down at once; one of several stopping does not."""
        return f"{self.prefix}cache:workers"

    @cached_property
    def recent(self) -> str:
        """ZSET path -> the time a registration booked it, the newest RECENT_CAP (recheck.py):
        beat rescans those of the last two intervals (a download still being written)."""
        return f"{self.prefix}cache:recent"

    @cached_property
    def worker_settings(self) -> str:
        """HASH worker (host:pid) -> the settings it enforces (JSON, published.ENFORCED), renewed
        with its heartbeat: workers of one node that disagree are said, and a cleanup does not
        switch the policy away from one a live worker runs."""
        return f"{self.prefix}cache:worker_settings"

    @staticmethod
    def node_prefix(node: str) -> str:
        """A named node's keys: `{node}:` (one hash tag: one Redis Cluster shard); an unnamed
        single node's have none, the seed's names exactly."""
        return f"{{{node}}}:" if node else ""

    @staticmethod
    def nodes(cluster: str) -> str:
        """HASH node -> JSON of what its workers published; shared by the cluster's nodes
        (DISK_CACHE_CLUSTER), so never prefixed."""
        return f"{cluster}:nodes"
