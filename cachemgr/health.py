"""Diagnosis: the seed's "common issues", each turned into a clear message.

`diagnose(stats)` reads a stats dict (DiskCache.stats) and says, in plain words, what an
operator should look at: the cache switched off, usage over the quota, the scheduler stopped,
cleanups that stopped coming (beat down) or failing.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import redis

from cachemgr import audit, marker, trash
from cachemgr.connection import same_server
from cachemgr.errors import RootMissing
from cachemgr.nodes import BEAT_ALIVE_SECONDS, no_worker
from cachemgr.quota import HOLD_CEILING, ROOM_ONLY, ROOM_SHORT
from cachemgr.settings import floor_beyond
from cachemgr.switch import disabled_where

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

# After how many cleanup intervals without a periodic cleanup the stats, the status page and
# the alert say beat or the workers are not running (one late run is no problem).
OVERDUE_INTERVALS = 2


# With no free-space floor set, a disk with less than this share free is said to be nearly full.
NEARLY_FULL_SHARE = 0.02
# Where an operator finds the directories a pass had to leave.
WHICH = "`cachemgr ls --sort size` marks the pinned ones; `cachemgr info PATH` says its age"


def diagnose(
    stats: dict[str, Any],
    cleanup_interval: int,
    now: float | None = None,
    cleanups_wait: str | None = None,
) -> list[str]:
    """What an operator should look at; `stats["periodic_overdue"]` (stats.node_stats, by
    `periodic_overdue` below) says whether beat's cleanups are late. `cleanups_wait`: why no
    cleanup can run now (the root refused, or being adopted), which then stands in for the
    advice to run one."""
    now = time.time() if now is None else now
    problems: list[str] = []
    if not stats.get("enabled", True):
        problems.append(
            "cache not working: ENABLE_DISK_CACHE_MANAGEMENT is false (the node's workers', or "
            "this process's until they publish theirs): nothing is registered, cleaned or evicted"
        )
    if stats["quota_status"] == "over_quota":
        advice = cleanups_wait or (
            "run a manual cleanup, lower DISK_CACHE_TTL_SECONDS, or check for pinned directories "
            "and for ones still within their minimum age, which a manual cleanup passes over "
            f"too ({WHICH})"
        )
        problems.append(
            f"over quota: {stats['total_bytes']} of {stats['max_bytes']} bytes used; {advice}"
        )
    short = (stats.get("last_cleanup") or {}).get("evict_short")
    above = stats["total_bytes"] > stats["threshold_bytes"]
    if above and short and not short.startswith(ROOM_ONLY):  # the quota's, not the floor's
        problems.append(
            f"usage {stats['usage_percent']}% is above the eviction threshold and the last "
            f"quota pass could not bring it down (skipped: {short}): eviction cannot free more "
            f"while those stay ({WHICH})"
        )
    elif above and stats["quota_status"] == "evicting":
        # Stopped, the scheduler skips beat's cleanups and the registrations' quota passes,
        # but for what would fill the disk (quota.stopped_hold).
        who = "the next cleanup" if stats.get("scheduler_running", True) else (
            "only a manual cleanup (`cachemgr cleanup`: the scheduler is stopped, and "
            f"evicts on its own only past {HOLD_CEILING} times the quota or to keep the disk "
            "from filling)"
        )
        problems.append(
            f"usage {stats['usage_percent']}% is above the eviction threshold: {who} "
            f"evicts by the {stats.get('eviction_policy', 'lru')} policy"
        )
    floor = stats.get("min_free_bytes") or 0
    free, disk = stats.get("free_disk_bytes"), stats.get("disk_bytes")
    if floor and disk and floor >= disk:
        problems.append(f"DISK_CACHE_MIN_FREE_BYTES ({floor}) is ignored: {floor_beyond(disk)}")
    elif floor and free is not None and free < floor:
        problems.append(
            f"the disk holding the cache has {free} bytes free, under DISK_CACHE_MIN_FREE_BYTES "
            f"({floor}): "
            + (
                f"the last cleanup could not make room ({short}): free space on that disk, "
                "or lower DISK_CACHE_MIN_FREE_BYTES"
                if short and ROOM_SHORT in short
                else "the next cleanup evicts to make room"
            )
        )
    elif not floor and free is not None and disk and free < NEARLY_FULL_SHARE * disk:
        problems.append(
            f"the disk holding the cache is nearly full ({free} of {disk} bytes free) and "
            "DISK_CACHE_MIN_FREE_BYTES is not set: cleanups evict by the quota alone; set it "
            "(e.g. to 5% of the disk) so that they make room"
        )
    inodes, free_inodes = stats.get("inodes"), stats.get("free_inodes")
    if inodes and free_inodes is not None and free_inodes < NEARLY_FULL_SHARE * inodes:
        problems.append(
            f"the disk holding the cache has {free_inodes} of {inodes} inodes free: with none "
            "left no file can be written there, whatever its free bytes, and cleanups evict "
            "by bytes alone: lower DISK_CACHE_MAX_BYTES (many small files use them up), or "
            "give that filesystem more inodes"
        )
    if disk and stats["max_bytes"] > disk and not floor:  # with a floor, cleanups make room
        problems.append(
            f"DISK_CACHE_MAX_BYTES ({stats['max_bytes']}) is larger than the filesystem holding "
            f"the cache ({disk} bytes): the disk fills before the quota is reached; set it "
            "below the disk's size, or set DISK_CACHE_MIN_FREE_BYTES"
        )
    if not stats.get("scheduler_running", True):
        problems.append(
            "directories are not being cleaned: the scheduler is stopped "
            "(`cachemgr scheduler start`, or POST /cache/start-scheduler); only usage past "
            f"{HOLD_CEILING} times the quota and the disk's free-space shortfall are evicted"
        )
    last = stats.get("last_cleanup") or {}
    stuck = last.get("trash_left") or 0
    if stuck:
        problems.append(
            f"{stuck} item(s) in the trash (.cachemgr-trash in the root, or in a disk mounted "
            "below it) could not be deleted: their bytes still fill the disk but are no longer "
            "counted; the worker log names them (`trash: ... left in place`: permissions, "
            "immutable files, mount points)"
        )
    if kept := last.get("trash_kept") or 0:
        problems.append(
            f"{kept} directory(ies) kept whole in the trash (.cachemgr-trash/{trash.KEPT}*): a "
            "deletion called off could not put them back where they were; move each one's `d` "
            "back by hand (the worker log says where it was: `kept whole as`)"
        )
    if last.get("gone_error"):
        problems.append(
            f"the last look for tracked directories gone from the disk failed "
            f"({last['gone_error']}): what it kept or refused is from an earlier cleanup; see "
            "the worker log"
        )
    if last.get("gone_refused"):
        problems.append(f"beat's look for downloads gone from the disk: {last['gone_refused']}")
    if last.get("gone_kept"):
        problems.append(
            f"{last['gone_kept']} tracked directory(ies) are missing under a directory below "
            f"the root that looks like a disk not mounted (e.g. {last.get('gone_kept_example')}"
            "): kept on the books; mount it, or run `cachemgr reconcile` if they were removed "
            "on purpose"
        )
    if last.get("audit_error"):
        problems.append(
            "the last look for directories not on the books failed "
            f"({last['audit_error']}): the counts of untracked directories and stray files are "
            "from an earlier cleanup; see the worker log"
        )
    found = {
        kind: (last.get(kind) or 0, last.get(f"{kind.removesuffix('_files')}_example"))
        for kind in audit.SAID
    }
    findings = audit.findings(found, last.get("stray_bytes") or 0, stats["max_bytes"])
    problems += [message for _, message, loud in findings if loud]
    undeleted = last.get("delete_failed") or 0
    if undeleted:
        problems.append(
            f"the last cleanup could not delete {undeleted} directory(ies) it chose "
            f"({last.get('delete_failed_example')}): they stay on the books and on the disk, "
            "and it tries again each time; see the worker log (permissions, immutable files, a "
            "disk under the root not mounted)"
        )
    if last.get("status") == "failed":
        problems.append(f"the last cleanup failed: {last.get('error') or 'see the worker log'}")
    if stats.get("up") is False:
        problems.append(
            f"cache not working: {no_worker(stats.get('node') or '')}: start one (celery -A "
            "workers.app worker); registrations and cleanups sent wait in the queue"
        )
    # Beat's own runs: quota passes that registrations trigger must not hide a stopped beat.
    last_time = last.get("periodic_time")
    if stats.get("periodic_overdue"):
        if last_time is None:
            problems.append(
                "no periodic cleanup has run yet: check that celery beat and a worker are up"
            )
        else:
            problems.append(
                f"no periodic cleanup for {int(now - last_time)} s (interval {cleanup_interval} "
                "s): directories are not being cleaned; check that celery beat and a worker "
                "are running"
            )
    if stats.get("beat_missing"):
        problems.append(
            f"no celery beat has said in {BEAT_ALIVE_SECONDS} s that it sends this node's "
            "periodic cleanups: expiry and the quota wait for registrations' passes and manual "
            "cleanups; start one (celery -A workers.app beat; `cachemgr up` runs one)"
        )
    held = stats.get("evict_held_until")
    if held and held > now:
        problems.append(
            f"eviction is held for {math.ceil(held - now)} s more: the books were rebuilt from the "
            "disk and pins lost with them are being renewed; periodic and automatic passes "
            "wait, a manual `cachemgr cleanup` evicts now"
        )
    unrecorded = stats.get("unrecorded") or 0
    if unrecorded:
        problems.append(
            f"{unrecorded} directories are on cache:lru with no record (the seed's books, or a "
            "seed process writing beside cachemgr): not counted, expired nor evicted until a "
            "reconcile books them at their last access (the next cleanup's, on new books; "
            "else `cachemgr reconcile`)"
        )
    elif not stats.get("initialized", True) and stats.get("directory_count") == 0:
        problems.append(
            "the books are empty: if the downloads directory holds data, run reconcile "
            "(the next cleanup does it first)"
        )
    return problems


def beat_missing(
    stats: dict[str, Any], now: float, workers_since: float | None, seen: bool = True
) -> bool:
    """No celery beat says it sends the node's periodic cleanups (nodes.beat_alive) while they
    are due: management on, the scheduler running, something tracked, and the node's workers
    up for over BEAT_ALIVE_SECONDS (time for a beat started with them to say so). Said before
    periodic_overdue can be: that takes two cleanup intervals, two hours by default.
    `seen`: a beat that says so ran for the node lately (cache:beat_seen). Periodic cleanups
    that came with none seen are a beat's of a version that says nothing: periodic_overdue
    judges it."""
    if stats.get("beat_alive") or stats.get("periodic_overdue"):
        return False
    ran = (stats.get("last_cleanup") or {}).get("periodic_time")
    if ran is not None and (not seen or now - ran < BEAT_ALIVE_SECONDS):
        return False
    if not (stats.get("enabled", True) and stats.get("scheduler_running", True)):
        return False
    if not stats.get("directory_count") or workers_since is None:
        return False
    return now - workers_since > BEAT_ALIVE_SECONDS


def periodic_overdue(
    stats: dict[str, Any],
    interval: int,
    now: float,
    workers_since: float | None = None,
    scheduler_since: float | None = None,
) -> bool:
    """Beat's cleanups are late: none for OVERDUE_INTERVALS intervals since the last one (or,
    before any, since the node's workers started) and since the scheduler was last started
    (runs are skipped while it is stopped), while management is on, the scheduler runs and
    something is tracked. One judgement for the stats' warning, the status page and the
    alert (`cachemgr_periodic_overdue`)."""
    if not (stats.get("enabled", True) and stats.get("scheduler_running", True)):
        return False
    if not stats.get("directory_count"):
        return False
    last = (stats.get("last_cleanup") or {}).get("periodic_time")
    due_from = max(last if last is not None else (workers_since or 0.0), scheduler_since or 0.0)
    return now - due_from > OVERDUE_INTERVALS * interval


def _workers_refused(cache: DiskCache) -> str | None:
    """The root as the workers saw it: one this process reads fine may be refused to them
    (another user, another mount namespace); their last cleanup says so until one succeeds
    or a reconcile checks the root again (history.root_mended)."""
    status, code, error, at, beat_at = cache.client.hmget(
        cache.keys.last_cleanup, "status", "error_code", "error", "time", "periodic_time"
    )
    # Beat's own: a `cleanup --now` of a shell that may not read the root says nothing of them.
    if status == "failed" and code == RootMissing.code and at == beat_at:
        return f"the workers' last cleanup was refused: {error}"
    return None


def readiness(cache: DiskCache) -> dict[str, str]:
    """/readyz's checks of the books: Redis answers, the root is the books' and mounted (every
    cleanup refuses it otherwise), management is on; each "ok" or what is wrong."""
    checks: dict[str, str] = {}
    try:
        cache.client.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure here is a "not ready", said plainly
        checks["redis"] = f"unreachable: {exc}"
    else:
        try:  # answering is not serving: every registration and play is a write
            cache.client.set(cache.keys.probe, "1", px=1000)
        except Exception as exc:
            checks["redis"] = f"refuses writes: {exc}"
    # Reads still served by one that refuses writes (out of memory, a read-only replica);
    # one unreachable would be waited for again by each check below.
    answers = not checks["redis"].startswith("unreachable")
    if not cache.local:  # another host's root (?node=): as its workers' cleanups found it
        checks["root"] = (_workers_refused(cache) if answers else None) or "ok"
    elif not cache.root.is_dir():
        checks["root"] = f"downloads directory {cache.root} does not exist"
    elif not answers:
        checks["root"] = "ok"
    else:
        try:  # the empty mount point an unmounted disk leaves: every cleanup refuses it
            why = marker.refusal(cache)
            if why and marker.ANOTHER_NODE in why and not cache.registry.alive(cache.keys):
                # This process names a node with no workers (a setting of its own that is
                # not theirs): not the root's fault; the stats say so.
                why = None
            checks["root"] = why or _workers_refused(cache) or "ok"
        except Exception:  # Redis away: said by the redis check already
            checks["root"] = "ok"
    if not answers:
        checks["enabled"] = "unknown: Redis does not answer"
        return checks
    try:
        off = disabled_where(cache)
        checks["enabled"] = (
            f"ENABLE_DISK_CACHE_MANAGEMENT is false {off}: the cache manages nothing"
            if off
            else "ok"
        )
    except Exception as exc:  # Redis away: said by the redis check already
        checks["enabled"] = f"unknown: {exc}"
    return checks


# Redis's memory settings are read again at most this often (an INFO call: not per request).
MEMORY_SECONDS = 60.0
NEAR_MAXMEMORY = 0.9


def redis_memory_seen(cache: DiskCache) -> str | None:
    """`redis_memory`, looked at again at most every MEMORY_SECONDS."""
    due, said = cache.memory_seen
    now = time.monotonic()
    if now < due:
        return said
    said = redis_memory(cache.client)
    cache.memory_seen = (now + MEMORY_SECONDS, said)
    return said


def redis_memory(client: Any) -> str | None:
    """What Redis's memory settings put at risk: a maxmemory-policy that evicts keys (the
    books' among them, in silence: tracked directories gone from the books, pins lost), or a
    Redis near its maxmemory under noeviction (at it, every registration and play fails)."""
    if not same_server(client):  # a Cluster's shards each have their own
        return None
    try:
        info = client.info("memory")
    except redis.RedisError:  # INFO refused (an ACL), or Redis away: said elsewhere
        return None
    limit, used = int(info.get("maxmemory") or 0), int(info.get("used_memory") or 0)
    policy = str(info.get("maxmemory_policy") or "noeviction")
    if not limit:
        return None
    if policy != "noeviction":
        return (
            f"Redis evicts keys when it reaches its maxmemory ({limit} bytes; maxmemory-policy "
            f"{policy}), the books' among them: tracked directories would leave the books "
            "unsaid; set maxmemory-policy noeviction (and a maxmemory the books fit in)"
        )
    if used >= NEAR_MAXMEMORY * limit:
        when = "it refuses" if used >= limit else "once full it refuses"
        return (
            f"Redis uses {used} of its maxmemory of {limit} bytes "
            f"({100 * used // limit}%): {when} every write (registrations, plays, cleanups); "
            "raise maxmemory"
        )
    return None
