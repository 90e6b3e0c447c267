"""Beat's recheck of the directories registered lately: a download registered while still
being written (register_completed_download takes the newest directory, which may be one)
grows after its scan, and the books count what was there then: the disk passed the quota
while the stats said ok, and its eviction freed more than it counted. Bounded: registrations
are remembered in `cache:recent` (the newest RECENT_CAP), and each beat rescans those of its
window, at most RECHECK_LIMIT, without taking their locks (a registration never waits for
it); scripts.RESIZE applies a size only if the directory was not registered again since the
scan and nobody holds its lock."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cachemgr import paths, scanner

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

RECENT_CAP = 1000
RECHECK_LIMIT = 100


def remember(cache: DiskCache, path: str, booked: float, pipeline: Any) -> None:
    """Note a registration (with the time it booked) on `pipeline`, or a client."""
    pipeline.zadd(cache.keys.recent, {path: booked})
    pipeline.zremrangebyrank(cache.keys.recent, 0, -RECENT_CAP - 1)


def window(interval: float, last_beat: float | None, now: float) -> float:
    """How far back beat rescans: two intervals, or since its last run with one to spare (a
    download registered while beat was down, grown since, stayed booked at its first size)."""
    since_last = now - last_beat + interval if last_beat is not None else 0.0
    return max(2 * interval, since_last)


def recent(cache: DiskCache, within: float, limit: int = RECHECK_LIMIT) -> dict[str, Any]:
    """Rescan the directories registered in the last `within` seconds (at most `limit`, the
    newest first) and book the size found; {"checked", "resized"}. One registered again,
    locked, or gone meanwhile is left as it is: the next beat looks again."""
    since = cache.clock() - within
    names = cache.client.zrevrangebyscore(
        cache.keys.recent, "+inf", f"({since!r}", start=0, num=limit
    )
    checked = resized = 0
    for entry in cache.store.entries([(name, None) for name in names]):
        try:
            found = scanner.scan(paths.resolve(cache.root, entry.path))
        except (OSError, paths.PathError):  # gone, swapped, unreadable: a pass sees to it
            continue
        checked += 1
        if (found.size_bytes, found.file_count) == (entry.size_bytes, entry.file_count):
            continue
        was = (entry.size_bytes, entry.file_count, entry.registered)
        delta = cache.store.resize(entry.path, found.size_bytes, found.file_count, was=was)
        if not delta:  # registered again, locked, untracked since the scan; or no change
            continue
        resized += 1
        log.warning(
            "%s changed since it was booked: %d -> %d bytes (a download still being written "
            "when it was registered?): booked anew",
            entry.path,
            entry.size_bytes,
            found.size_bytes,
            extra={"event": "resized", "path": entry.path, "size_bytes": found.size_bytes},
        )
    return {"checked": checked, "resized": resized}
