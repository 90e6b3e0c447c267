"""The stats: counters in `cache:stats`, the figures since a reset, and one node's stats, read
from Redis in one round trip (cluster.py: every node's)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachemgr import marker, migrations
from cachemgr.clock import CLOCK_SKEW_SECONDS, skewed
from cachemgr.connection import same_server
from cachemgr.health import beat_missing, diagnose, periodic_overdue, redis_memory_seen
from cachemgr.nodes import ALIVE_TTL_SECONDS, NodeRegistry
from cachemgr.published import (
    ENFORCED,
    differing,
    disk_of,
    enforced,
    own_entry,
    root_elsewhere,
    split,
)
from cachemgr.reads import Batch, Lua, Reader, call, pairs, run
from cachemgr.records import beat_said, iso, last_cleanup
from cachemgr.settings import env_value
from cachemgr.switch import some_worker_on

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache
    from cachemgr.settings import Settings
    from cachemgr.store import Store

log = logging.getLogger("cachemgr")

# Every counter, named once: the Lua scripts count under these names, the API's schema lists
# them from here.
COUNTERS = (
    "hits",
    "misses",
    "hit_bytes",
    "missed_bytes",
    # Misses reported without the bytes they had to fetch: while there are any, the byte hit
    # ratio is unknown (a pipeline that never says the size read 100 % of bytes served).
    "unsized_misses",
    "registrations",
    "evictions",
    "expirations",
    "removals",
    "bytes_freed",
    "skipped_locked",
    "skipped_pinned",
    "vanished",
)

# Everything the stats show, in one call (a pipeline of eight reads costs the client more:
# three more GETs beside it cost the API a third of its stats rate).
# The eight strings are read by one MGET: each redis.call costs Redis about 1.5 µs.
# KEYS[1] cache:bytes  KEYS[2] cache:entries  KEYS[3] cache:stats  KEYS[4] cache:stats:baseline
# KEYS[5] cache:last_cleanup  KEYS[6] cache:initialized  KEYS[7] cache:scheduler
# KEYS[8] cache:pins  KEYS[9] cache:alive  KEYS[10] cache:evict_hold  KEYS[11] cache:workers
# KEYS[12] cache:worker_settings  KEYS[13] cache:policy_name  KEYS[14] cache:root_mark
# KEYS[15] cache:adopting  KEYS[16] cache:lru (counted: records missing, the seed's books)
# KEYS[17] cache:beat  KEYS[18] cache:beat_seen  KEYS[19] (optional) the node registry, read
# here too when it lives on the same server
# ARGV[1] how old a live worker's beat may be, in seconds. Now is Redis's clock (TIME), not
# this host's: beats are dated by it (nodes.heartbeat), and pins in force are those ending later.
SNAPSHOT = Lua("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local oldest = now - tonumber(ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[11], oldest, '+inf')
local own = {}
if #live > 0 then own = redis.call('HMGET', KEYS[12], unpack(live)) end
for i = 1, #live do own[i] = own[i] or '' end
local s = redis.call('MGET', KEYS[1], KEYS[6], KEYS[7], KEYS[9], KEYS[10], KEYS[13], KEYS[14],
  KEYS[15], KEYS[17], KEYS[18])
return {
  s[1] or '0',
  redis.call('HLEN', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  s[2] and 1 or 0,
  s[3] or '',
  redis.call('ZCOUNT', KEYS[8], '(' .. now, '+inf'),
  s[4] and 1 or 0,
  s[5] or '',
  KEYS[19] and redis.call('HGETALL', KEYS[19]) or {},
  live,
  own,
  s[6] or '',
  s[7] or '',
  s[8] and 1 or 0,
  redis.call('ZCARD', KEYS[16]),
  s[9] or '',
  s[10] and 1 or 0,
}
""")

# Reset the "since reset" counters: keep a copy of the counters as they are now.
# KEYS[1] cache:stats  KEYS[2] cache:stats:baseline  ARGV[1] now
RESET = Lua("""
local now = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[2])
if #now > 0 then redis.call('HSET', KEYS[2], unpack(now)) end
redis.call('HSET', KEYS[2], 'reset_at', ARGV[1])
return 1
""")


def since_reset(
    overall: dict[str, str], base: dict[str, str]
) -> tuple[dict[str, int], dict[str, Any]]:
    """Counters overall, and since the reset (the difference from its baseline)."""
    total = dict.fromkeys(COUNTERS, 0)
    for name, value in overall.items():  # the counters ever counted (a reset leaves them)
        if name in total:
            total[name] = int(value)
    recent: dict[str, Any] = (
        # Never below 0: counters set back by hand (or restored from an older dump) would
        # otherwise show -10 hits and a ratio past 1.
        {c: max(0, total[c] - int(base.get(c, 0))) for c in COUNTERS} if base else dict(total)
    )
    recent["reset_at"] = float(base["reset_at"]) if "reset_at" in base else None
    return total, recent


def counters(store: Store) -> tuple[dict[str, int], dict[str, Any]]:
    """The counters overall and since the reset."""
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(store.keys.stats)
    pipe.hgetall(store.keys.stats_baseline)
    return since_reset(*pipe.execute())


def reset(store: Store, now: float) -> None:
    call(store.client, RESET, [store.keys.stats, store.keys.stats_baseline], [f"{now:.6f}"])


def queue_snapshot(
    store: Store, batch: Batch, registry: str | None = None
) -> Reader[dict[str, Any]]:
    """Everything a node's stats show. `registry`: the node registry's key, to read it in the
    same call (same server only); its entries come back as `registry`."""
    k = store.keys
    keys = [k.bytes, k.entries, k.stats, k.stats_baseline, k.last_cleanup, k.initialized]
    keys += [k.scheduler, k.pins, k.alive, k.evict_hold, k.workers, k.worker_settings]
    keys += [k.policy_name, k.root_mark, k.adopting, k.lru, k.beat, k.beat_seen]
    keys += [registry] if registry else []
    batch.script(SNAPSHOT, keys, [ALIVE_TTL_SECONDS], writes=False)

    def read(replies: Iterator[Any]) -> dict[str, Any]:
        total, count, overall, base, last, initialized, scheduler, pinned, up, hold = (
            reply := next(replies)
        )[:10]
        nodes, live, own, named, root_mark, adopting, listed, beat, seen = reply[10:]
        built = migrations.built(named or None)
        counts, recent = since_reset(pairs(overall), pairs(base))
        return {
            "total_bytes": int(total),
            "directory_count": int(count),
            "counters": counts,
            "since_reset": recent,
            "last_cleanup": last_cleanup(pairs(last)),
            "initialized": bool(initialized),
            "scheduler_running": scheduler != "stopped",
            "scheduler_started": _started(scheduler),
            "pinned_count": int(pinned),
            "up": bool(up),
            "evict_held_until": float(hold) if hold else None,
            "registry": NodeRegistry.parse(pairs(nodes)),
            "workers": (workers := NodeRegistry.parse_workers(live, own)),
            # While the live workers disagree, cleanups act by the policy in force.
            "policy_held": migrations.held(built, workers),
            "root_mark": root_mark,  # the books' root token (marker.py)
            "adopting": bool(adopting),  # a reconcile --force walks the root now
            # On cache:lru with no record: the seed's books (migrations.seed_books).
            "unrecorded": max(0, int(listed) - int(count)),
            "beat_alive": bool(beat),  # a celery beat sends its periodic cleanups
            "beat_every": beat_said(beat),  # at this interval, as it says
            "beat_seen": bool(seen),  # one that says so has run for the node
        }

    return read


def inodes_of(root: Path) -> tuple[int | None, int | None]:
    """(inodes, free ones) of the filesystem holding the root; (None, None) for one that has
    no fixed number (btrfs, ZFS say 0): a disk out of inodes takes no new file, whatever its
    free bytes."""
    st = os.statvfs(root)
    return (st.f_files, st.f_favail) if st.f_files else (None, None)


def node_stats(cache: DiskCache, snap: dict[str, Any] | None = None) -> dict[str, Any]:
    """One node's stats; `snap` is its snapshot when the caller already read it."""
    if snap is None:
        registry = cache.registry.nodes_key if same_server(cache.client) else None
        snap = run(cache.client, lambda batch: queue_snapshot(cache.store, batch, registry))
        if registry is None:  # a Redis Cluster keeps the registry on another shard
            snap["registry"] = cache.registry.entries()
    # The workers' own settings, as they published them: theirs are the ones they enforce.
    entry = own_entry(snap.get("registry", {}), cache.settings)
    s = enforced(cache.settings, entry)
    total, counts, recent = snap["total_bytes"], snap["counters"], snap["since_reset"]
    free = disk = inodes = free_inodes = None
    try:
        if cache.local:
            disk, _, free = shutil.disk_usage(cache.root)
            inodes, free_inodes = inodes_of(cache.root)
        else:  # another host's disk: as its workers saw it at their last beat
            disk, free = disk_of(snap.get("workers") or {})
    except OSError:
        pass  # no root: refused below
    floor = s.disk_cache_min_free_bytes
    if disk is not None and floor >= disk:
        floor = 0  # ignored by the workers (quota.free_space_short); the health says why
    status = "ok"
    if total > s.disk_cache_max_bytes:
        status = "over_quota"
    elif total > s.threshold_bytes or (floor and free is not None and free < floor):
        status = "evicting"  # past the threshold, or short of the free-space floor
    stats = {
        "node": s.node,
        # The workers' switch, when published; on while a live worker of it still manages.
        "enabled": s.enable_disk_cache_management or some_worker_on(snap.get("workers") or {}),
        "total_bytes": total,
        "directory_count": snap["directory_count"],
        "max_bytes": s.disk_cache_max_bytes,
        "threshold_bytes": s.threshold_bytes,
        "target_bytes": s.target_bytes,
        "usage_percent": round(100.0 * total / s.disk_cache_max_bytes, 2),
        "quota_status": status,
        **counts,
        "hit_ratio": ratio(counts["hits"], counts["misses"]),
        "byte_hit_ratio": byte_ratio(counts),
        "since_reset": {
            **recent,
            "reset_at": iso(recent["reset_at"]),
            "hit_ratio": ratio(recent["hits"], recent["misses"]),
            "byte_hit_ratio": byte_ratio(recent),
        },
        "pinned_count": snap["pinned_count"],
        "scheduler_running": snap["scheduler_running"],
        "eviction_policy": snap.get("policy_held") or s.disk_cache_eviction_policy,
        "ttl_seconds": s.disk_cache_ttl_seconds,
        "cleanup_interval_seconds": s.disk_cache_cleanup_interval,
        "free_disk_bytes": free,
        "disk_bytes": disk,
        "free_inodes": free_inodes,
        "inodes": inodes,
        "min_free_bytes": s.disk_cache_min_free_bytes,
        "initialized": snap["initialized"],
        "unrecorded": snap.get("unrecorded", 0),
        "last_cleanup": snap["last_cleanup"],
        "up": snap["up"],
        "evict_held_until": snap["evict_held_until"],
    }
    # Beat's own interval where it said it (its cleanups carry it): a beat set to 600 s was
    # called stopped by workers set to 20 s.
    # The live beat's word first: restarted at another interval, the last cleanup's was
    # stale for a whole new interval (an overdue beat, a mismatch, both false).
    beat_every = snap.get("beat_every") or (snap["last_cleanup"] or {}).get("beat_interval")
    interval, now = beat_every or s.disk_cache_cleanup_interval, cache.clock()
    stats["beat_interval_seconds"] = beat_every  # the one the overdue judgement goes by
    workers_since = float(entry.get("published_at") or 0) or None
    stats["periodic_overdue"] = periodic_overdue(
        stats,
        interval,
        now,
        workers_since=workers_since,
        scheduler_since=snap.get("scheduler_started"),
    )
    stats["beat_alive"] = snap.get("beat_alive", False)
    stats["beat_missing"] = beat_missing(
        stats, now, workers_since=workers_since, seen=snap.get("beat_seen", False)
    )
    # The seed's "check downloads directory exists", on the host that reads it: said at once,
    # as cleanups would refuse it (an unmounted disk's empty mount point, another disk).
    # Not while a reconcile --force adopts the root: its books are half rewritten on purpose.
    refused = cache.local and not snap.get("adopting") and marker.refusal_seen(
        cache, snap.get("root_mark", ""), stats["directory_count"]
    )
    wait = (  # "run a manual cleanup" would be refused too
        "no cleanup runs until the root is back (above)"
        if refused
        else "a reconcile --force is adopting the root: cleanups wait for it"
        if snap.get("adopting")
        else None
    )
    stats["warnings"] = diagnose(stats, interval, now, cleanups_wait=wait)
    if refused:
        # A shell with no DISK_CACHE_ROOT looks at ./downloads while the workers evict on
        # theirs: the warning names their root, so that is told from an unmounted disk.
        elsewhere = root_elsewhere(cache.settings, entry)
        hint = (
            f" (or this process's DISK_CACHE_ROOT is not the workers': they use {elsewhere!r})"
            if elsewhere
            else ""
        )
        if marker.ANOTHER_NODE in refused and not snap["up"]:
            hint = (
                " (or this process's DISK_CACHE_NODE or DISK_CACHE_KEY_PREFIX is not its "
                "workers': no worker of this node is alive)"
            )
        stats["warnings"].insert(0, f"cache not working: {refused}{hint}")
    memory = redis_memory_seen(cache)
    if memory:
        stats["warnings"].append(memory)
    if not snap["initialized"] and stats["directory_count"] and cache.local:
        # Books kept before (the root says so) and gone since: what was registered after the
        # loss is all they count until the next cleanup rebuilds them from the disk.
        if marker.kept_before(cache, snap.get("root_mark") or ""):
            stats["warnings"].append(
                "the books were lost (Redis lost its data?) and hold only what was registered "
                "since: usage is undercounted until the next cleanup rebuilds them from the "
                "disk (`cachemgr cleanup` or reconcile now)"
            )
    workers = snap.get("workers") or {}
    apart = split(workers)
    # Where the live workers disagree, "the node's workers run with" one value was false:
    # the warning below names each worker's.
    disputed = {ENFORCED[key][0].upper(): set(values) for key, values in apart.items()}
    stats["warnings"] += _differences(cache.settings, s, disputed)
    stats["warnings"] += _workers_apart(apart)
    if beat_every and beat_every != s.disk_cache_cleanup_interval:
        stats["warnings"].append(
            f"celery beat sends the node's cleanups every {beat_every} s, its workers' "
            f"DISK_CACHE_CLEANUP_INTERVAL is {s.disk_cache_cleanup_interval} s: give beat and "
            "the workers the same setting"
        )
    stats["warnings"] += [
        skewed(f"worker {name}", float(own["clock_skew"]))
        for name, own in sorted(workers.items())
        if abs(float(own.get("clock_skew") or 0)) > CLOCK_SKEW_SECONDS
    ]
    return stats


def _workers_apart(apart: dict[str, dict[Any, list[str]]]) -> list[str]:
    """Live workers of this node that enforce different settings (a rolling restart, or
    one started with another environment; `apart`: published.split): one line for them all."""
    if not apart:
        return []
    said = "; ".join(
        f"{ENFORCED[key][0].upper()}: "
        + ", ".join(f"{env_value(value)} ({', '.join(names)})" for value, names in values.items())
        for key, values in apart.items()
    )
    return [
        f"the node's live workers run different settings ({said}): each enforces its own; "
        "cleanups keep the eviction policy in force while a worker of it is alive (the "
        "stats show that one), and the stats show the other values as published last; give "
        "them one environment (or finish the rolling restart)"
    ]


def _started(scheduler: str) -> float | None:
    """When the scheduler was last started (`running <time>`), if it says."""
    _, _, at = scheduler.partition(" ")
    try:
        return float(at) if at else None
    except ValueError:
        return None


def _differences(here: Settings, workers: Settings, disputed: dict[str, set[Any]]) -> list[str]:
    """A process whose environment disagrees with the workers' says so: the stats show the
    workers' values, and a cleanup sent from here runs with theirs. Not where the live
    workers disagree among themselves (`disputed`: setting -> their values) and one of them
    runs this process's value: _workers_apart says that. Where they disagree and none runs
    it, each of their values is named (the last to publish was named alone, against the
    stats' own figure: the policy in force is the older workers')."""
    return [
        f"this process has {name}={env_value(mine)} but the node's workers run with "
        + (
            " or ".join(sorted(map(env_value, disputed[name])))
            if name in disputed
            else env_value(theirs)
        )
        + ": the stats show the workers' (they enforce it); give every process the same "
        "environment"
        for name, mine, theirs in differing(here, workers, ENFORCED)
        if mine not in disputed.get(name, ())
    ]


def reset_stats(cache: DiskCache) -> dict[str, Any]:
    """Start the "since reset" hit/miss figures afresh; the overall ones go on."""
    reset(cache.store, cache.clock())
    log.info("statistics reset")
    return node_stats(cache)["since_reset"]


def ratio(good: int, bad: int) -> float | None:
    return round(good / (good + bad), 6) if good + bad else None


def byte_ratio(counts: dict[str, Any]) -> float | None:
    """The byte hit ratio; None while a miss came without its size (unsized_misses)."""
    if counts.get("unsized_misses"):
        return None
    return ratio(counts["hit_bytes"], counts["missed_bytes"])
