"""The periodic look for downloads the books do not know: directories at the entry depth that
no registration booked (a task lost with its broker, a registration that failed), whose bytes
fill the disk uncounted. Said, not booked: `cachemgr reconcile` books them (adopting them here
could take a download still being written)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from cachemgr import scanner

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

EXAMPLES = 3
# How far below an untracked directory to look for tracked ones (a registration off the
# entry depth books `artist/album` under an untracked `artist`: that one is accounted for).
INSIDE_DEPTH = 3


def untracked(cache: DiskCache, *, older_than: float, batch: int = 1000) -> dict[str, Any]:
    """Directories at the entry depth, untouched since `older_than` (mtime: not being
    written), that are not tracked, nor inside or around a tracked one: {count, examples}."""
    found: list[str] = []
    count = 0
    chunk: list[str] = []

    def check() -> None:
        nonlocal count
        for path, tracked in zip(chunk, cache.store.tracked(chunk), strict=True):
            if tracked or not _settled(cache, path, older_than):
                continue
            if cache.store.covering(path) != path or _holds_tracked(cache, path):
                continue
            count += 1
            if len(found) < EXAMPLES:
                found.append(path)
        chunk.clear()

    for path in scanner.directories_at_depth(cache.root, cache.settings.disk_cache_entry_depth):
        chunk.append(path)
        if len(chunk) >= batch:
            check()
    check()
    return {"count": count, "examples": found}


def report(cache: DiskCache) -> dict[str, Any] | None:
    """`untracked`, for directories untouched for an interval (at least an hour: a long
    download writes into files, which leaves its directory's time as it was)."""
    quiet = max(cache.settings.disk_cache_cleanup_interval, 3600)
    try:
        found = untracked(cache, older_than=time.time() - quiet)
    except OSError as exc:  # the root unreadable now: said in the log, the cleanup stands
        log.warning("could not look for untracked directories: %s", exc)
        return None
    if found["count"]:
        log.warning(
            "%d directories in the root are not on the books, e.g. %r: their bytes are not "
            "counted against the quota; `cachemgr reconcile` books them",
            found["count"],
            found["examples"][0],
            extra={"event": "untracked"},
        )
    return found


def _settled(cache: DiskCache, path: str, older_than: float) -> bool:
    try:
        return os.lstat(cache.root / path).st_mtime < older_than
    except OSError:  # gone meanwhile, or unreadable: not said
        return False


def _holds_tracked(cache: DiskCache, path: str) -> bool:
    for depth in range(1, INSIDE_DEPTH + 1):
        inside = [f"{path}/{sub}" for sub in scanner.directories_at_depth(cache.root / path, depth)]
        if not inside:
            return False
        if any(cache.store.tracked(inside)):
            return True
    return False
