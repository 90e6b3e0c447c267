"""The record of cleanups: the last one's outcome (`cache:last_cleanup`, which the stats, the
status page and the alerts read) and a capped history of counter samples (`cache:history`, the
page's charts), and what the samples tell: the hit ratio of each interval, and since when usage
has stood above the threshold (a metric)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cachemgr import events, stats
from cachemgr.errors import DELETE_FAILED, RootMissing
from cachemgr.reads import Lua, call
from cachemgr.records import beat_said, believed_interval

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

# One sample per cleanup, the quota passes that registrations trigger included.
HISTORY_SAMPLES = 288

# Mark the last cleanup's failure resolved, if it is still the one named (a cleanup recorded
# since, refused again or not, stands).
# KEYS[1] cache:last_cleanup  ARGV[1] the failure's code. Returns 1 if marked, else 0.
RESOLVE = Lua("""
if redis.call('HGET', KEYS[1], 'status') == 'failed'
    and redis.call('HGET', KEYS[1], 'error_code') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', 'resolved', 'error', '', 'error_code', '')
  return 1
end
return 0
""")


def record(
    cache: DiskCache, started: float, result: dict[str, Any], periodic: bool = False
) -> None:
    """Keep the last outcome and a capped history of counter samples (the status page's).
    `periodic` (beat's cleanup) also sets `periodic_time`, the last one beat started: quota
    passes that registrations trigger must not hide a beat that stopped."""
    counters, _ = stats.counters(cache.store)
    undeleted = [
        error
        for part in ("sweep", "evict")
        for error in (result.get(part) or {}).get("errors", [])
        if error.startswith(DELETE_FAILED)
    ]
    sample = {"time": started, "total_bytes": cache.store.total_bytes(), **counters}
    pipe = cache.client.pipeline(transaction=False)
    pipe.hset(
        cache.keys.last_cleanup,
        mapping={
            "time": f"{started:.3f}",
            "status": str(result.get("status")),
            "duration_seconds": f"{float(result.get('duration_seconds') or 0):.3f}",
            "error": str(result.get("error", "")),
            "error_code": str(result.get("error_code", "")),
            "trash_left": str(result.get("trash_left", 0)),
            "trash_kept": str(result.get("trash_kept", 0)),
            "delete_failed": str(len(undeleted)),
            "delete_failed_example": undeleted[0] if undeleted else "",
            "evict_short": str((result.get("evict") or {}).get("short", "")),
            **({"periodic_time": f"{started:.3f}"} if periodic else {}),
            # Looked for by beat's cleanups only: the others leave the last count as it was.
            **_untracked(result.get("untracked")),
            **_gone(result.get("gone")),
        },
    )
    pipe.lpush(cache.keys.history, json.dumps(sample))
    pipe.ltrim(cache.keys.history, 0, HISTORY_SAMPLES - 1)
    if result.get("status") == "failed":
        failure = {"event": "cleanup_failed", "error": str(result.get("error"))}
        events.add(cache.store, {**failure, "time": f"{started:.3f}"}, pipeline=pipe)
    pipe.execute()


def beat_ran(cache: DiskCache, started: float) -> None:
    """Beat's cleanup ran and was skipped (a root being adopted, another cleanup running): it
    is not overdue, and the last real cleanup's outcome (its errors, what it could not
    delete) stands."""
    cache.client.hset(cache.keys.last_cleanup, "periodic_time", f"{started:.3f}")


def beat_every(cache: DiskCache, seconds: float) -> None:
    """The interval beat sends the node's cleanups at (its own DISK_CACHE_CLEANUP_INTERVAL):
    the overdue check follows it, and a beat set apart from the workers is said."""
    cache.client.hset(cache.keys.last_cleanup, "beat_interval", str(round(seconds)))


def beat_interval(cache: DiskCache) -> int:
    """The interval beat sends the node's cleanups at, as a live beat says it (cache:beat) or
    else its cleanups did; else the workers' DISK_CACHE_CLEANUP_INTERVAL."""
    pipe = cache.client.pipeline(transaction=False)
    pipe.get(cache.keys.beat)
    pipe.hget(cache.keys.last_cleanup, "beat_interval")
    live, said = pipe.execute()
    return (
        beat_said(live) or believed_interval(said) or cache.settings.disk_cache_cleanup_interval
    )


def last_beat(cache: DiskCache) -> float | None:
    """When beat's last cleanup started (`periodic_time`), None before its first."""
    try:
        return float(cache.client.hget(cache.keys.last_cleanup, "periodic_time") or "")
    except ValueError:
        return None


def root_mended(cache: DiskCache) -> bool:
    """A reconcile has checked (or adopted) the root: a last cleanup refused for the root no
    longer reads as failed, which the stats and /readyz said for up to an interval more."""
    return bool(call(cache.client, RESOLVE, [cache.keys.last_cleanup], [RootMissing.code]))


def reconciled(cache: DiskCache) -> None:
    """A reconcile booked what beat's last cleanup found untracked, and decided what it
    kept or refused to untrack as gone: their warnings go (a record only where there is one:
    none before the first cleanup)."""
    if not cache.client.exists(cache.keys.last_cleanup):
        return
    decided = {"gone_kept": "0", "gone_kept_example": "", "gone_refused": "", "gone_error": ""}
    if cache.client.hget(cache.keys.last_cleanup, "untracked") not in (None, "0"):
        decided["untracked"] = "0"
    cache.client.hset(cache.keys.last_cleanup, mapping=decided)


def _gone(found: dict[str, Any] | None) -> dict[str, str]:
    """Beat's look for tracked directories gone from the disk: those it kept (under a disk
    not mounted) and its refusal (most missing), for the stats to say, not the log alone."""
    if not found:
        return {}
    if "error" in found:  # the last look's counts stand, said to be old
        return {"gone_error": str(found["error"])}
    return {
        "gone_error": "",
        "gone_kept": str(found.get("kept", 0)),
        "gone_kept_example": str(found.get("kept_example") or ""),
        "gone_refused": str(found.get("refused") or ""),
    }


def _untracked(found: dict[str, Any] | None) -> dict[str, str]:
    if not found:
        return {}
    if "error" in found:  # the counts of the last look that worked stand, said to be old
        return {"audit_error": found["error"]}
    example = found["examples"][0] if found["examples"] else ""
    stray = found.get("stray") or {"files": 0, "bytes": 0, "example": None}
    none: dict[str, Any] = {"count": 0, "example": None}
    unlisted, unnamable = found.get("unlisted") or none, found.get("unnamable") or none
    unowned = found.get("unowned") or none
    return {
        "audit_error": "",
        "untracked": str(found["count"]),
        "untracked_example": example,
        "stray_files": str(stray["files"]),
        "stray_bytes": str(stray["bytes"]),
        "stray_example": stray["example"] or "",
        "unlisted": str(unlisted["count"]),
        "unlisted_example": str(unlisted["example"] or ""),
        "unnamable": str(unnamable["count"]),
        "unnamable_example": str(unnamable["example"] or ""),
        "unowned": str(unowned["count"]),
        "unowned_example": str(unowned["example"] or ""),
    }


def samples(cache: DiskCache) -> list[dict[str, Any]]:
    """The counter samples, oldest first; one that does not parse is left out (it must not
    cost a scrape or the page)."""
    raw = cache.client.lrange(cache.keys.history, 0, HISTORY_SAMPLES - 1)
    found = []
    for item in reversed(raw):
        try:
            sample = json.loads(item)
            float(sample["time"])
        except (ValueError, KeyError, TypeError):
            continue
        found.append(sample)
    return found


def interval_ratios(samples: list[dict[str, Any]]) -> list[float | None]:
    """The hit ratio between consecutive samples: what changed in each interval, not the mean
    since the cache began, which hides a fall. None where nothing was accessed, or where the
    counters went back (Redis lost them), as Prometheus' rate() treats a reset."""
    out: list[float | None] = []
    for before, after in zip(samples, samples[1:], strict=False):
        hits = int(after.get("hits", 0)) - int(before.get("hits", 0))
        misses = int(after.get("misses", 0)) - int(before.get("misses", 0))
        out.append(hits / (hits + misses) if hits >= 0 and misses >= 0 and hits + misses else None)
    return out


def over_threshold_since(
    history: list[dict[str, Any]], total_bytes: int, threshold_bytes: int
) -> float | None:
    """The start of the run of newest history samples (newest first) above the threshold.

    With no sample above it yet, the run starts now: None here. The history is capped, and
    every quota pass a registration triggers pushes a sample, so a run as old as the history
    reads as the oldest sample's time: a lower bound that slides forward, which is why the
    alerts go by Prometheus' own record of usage (min_over_time), not by this gauge.
    """
    if total_bytes <= threshold_bytes:
        return None
    since = None
    for sample in history:
        try:
            over = int(sample["total_bytes"]) > threshold_bytes
            at = float(sample["time"])
        except (KeyError, TypeError, ValueError):
            break
        if not over:
            break
        since = at
    return since
