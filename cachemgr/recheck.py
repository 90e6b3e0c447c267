"""Beat's recheck of the directories used lately: a download registered while still being
written (register_completed_download takes the newest directory, which may be one) grows
after its scan, and the books count what was there then: the disk passed the quota while the
stats said ok, and its eviction freed more than it counted. Bounded: the most recently used
RECHECK_LIMIT directories, those used within the window, rescanned and resized."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cachemgr import paths, scanner

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

RECHECK_LIMIT = 100


def recent(cache: DiskCache, within: float, limit: int = RECHECK_LIMIT) -> dict[str, Any]:
    """Rescan the directories used in the last `within` seconds (at most `limit`, the most
    recent first) and book the size found; {"checked", "resized"}. A directory locked by a
    registration or deletion, or gone meanwhile, is passed over: the next one looks again."""
    since = cache.clock() - within
    items = cache.client.zrevrangebyscore(
        cache.keys.lru, "+inf", f"({since!r}", start=0, num=limit, withscores=True
    )
    checked = resized = 0
    for entry in cache.store.entries(items):
        lock = cache.lock(entry.path)
        if not lock.acquire():
            continue
        try:
            found = scanner.scan(paths.resolve(cache.root, entry.path))
            checked += 1
            if (found.size_bytes, found.file_count) == (entry.size_bytes, entry.file_count):
                continue
            if cache.store.resize(entry.path, found.size_bytes, found.file_count) is None:
                continue  # taken off the books meanwhile
            resized += 1
            log.warning(
                "%s changed since it was booked: %d -> %d bytes (a download still being "
                "written when it was registered?): booked anew",
                entry.path,
                entry.size_bytes,
                found.size_bytes,
                extra={"event": "resized", "path": entry.path, "size_bytes": found.size_bytes},
            )
        except (OSError, paths.PathError):  # gone, swapped, unreadable: a pass sees to it
            continue
        finally:
            lock.release()
    return {"checked": checked, "resized": resized}
