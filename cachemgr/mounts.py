"""The disks mounted below the root, above the entry depth: remembered as cleanups see them
mounted, so that a tracked directory missing under the bare mount point of one not mounted
now is kept on the books (its files are on that disk), not taken for gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from cachemgr import trash
from cachemgr.clock import on_the_books
from cachemgr.paths import ancestors

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache
    from cachemgr.records import Entry

# At most this many mount points below the root are remembered (note_mounts).
MOUNTS_KEPT = 1000


def note_mounts(cache: DiskCache, anew: bool = False) -> None:
    """Remember the mount points below the root above the entry depth, as mounted now: one
    found empty later is the bare mount point of a disk not mounted (under_bare_mount).
    `anew`: a reconcile, which decides what is gone, forgets those no longer mounted."""
    top = os.path.realpath(cache.root)
    points = trash.mounts_above(cache.root, cache.settings.disk_cache_entry_depth)
    found = [os.path.relpath(point, top) for point in points]
    pipe = cache.client.pipeline(transaction=True)
    if anew:
        pipe.delete(cache.keys.mounts)
    if found:
        pipe.sadd(cache.keys.mounts, *found[:MOUNTS_KEPT])
    pipe.execute()


# Why one of them is kept on the books, wherever it is said.
UNDER_BARE_MOUNT = (
    "missing under a disk's mount point that is not mounted now, or under an empty directory "
    "unchanged since it was booked (a disk not mounted?)"
)


def under_bare_mount(cache: DiskCache, lost: list[Entry]) -> set[str]:
    """Those of the tracked directories missing from the disk that lie under a mount point
    cleanups saw mounted (note_mounts) and not mounted now, or whose nearest existing
    directory below the root is empty and unchanged since the download was booked: the bare
    mount point a disk under the root leaves when it is not mounted. Under a remembered one,
    even when something was written there since (a pipeline's next download: the disk's
    downloads left the books for one stray file). A directory emptied by hand (an artist's
    last album deleted) changed then, and a mount point in use is mounted: theirs went for
    good."""
    if not lost:
        return set()
    root = os.path.realpath(cache.root)
    seen = set(cache.client.smembers(cache.keys.mounts))
    mounted = set(trash.mount_points())
    books = on_the_books(cache)  # a directory's time as the books date theirs
    doubtful = set()
    for entry in lost:
        if _unmounted(entry.path, seen, root, mounted) is not None:
            doubtful.add(entry.path)
            continue
        above = os.path.dirname(os.path.join(root, entry.path))
        while above != root and not os.path.isdir(above):
            above = os.path.dirname(above)
        if above == root or above in mounted or not _empty(above):
            continue  # a disk mounted there now: what is missing from it went for good
        if _unchanged(above, entry.registered_at, books):
            doubtful.add(entry.path)
    return doubtful


def not_mounted_above(cache: DiskCache, rel: str) -> str | None:
    """The mount point above `rel` that cleanups saw mounted and that is not mounted now,
    else None: what is written there goes on the bare mount point, hidden once the disk is
    mounted again (booked, it then looked gone, and its bytes counted for nothing meanwhile).
    One Redis read, and only for a path below the first level (none is remembered above)."""
    if "/" not in rel:
        return None
    seen = cache.client.smembers(cache.keys.mounts)
    if not seen.intersection(ancestors(rel)):
        return None  # the mount table is read only for a path under a remembered disk
    return _unmounted(rel, seen, os.path.realpath(cache.root), set(trash.mount_points()))


def _unmounted(rel: str, seen: set[str], root: str, mounted: set[str]) -> str | None:
    """The first directory above `rel` among those cleanups saw mounted (`seen`) that is not
    among the mount points now (`mounted`, under the real `root`)."""
    return next(
        (a for a in ancestors(rel) if a in seen and os.path.join(root, a) not in mounted), None
    )


def _empty(directory: str) -> bool:
    try:
        with os.scandir(directory) as it:
            return next(it, None) is None
    except OSError:
        return True  # cannot be told: not taken for gone


# A file system dates a change by a coarse clock (a tick of some milliseconds behind the
# time): a folder emptied right after its album was booked read as unchanged since.
MTIME_SLACK_SECONDS = 1.0


def _unchanged(directory: str, booked: float, books: Callable[[float], float]) -> bool:
    try:
        return books(os.stat(directory).st_mtime) < booked - MTIME_SLACK_SECONDS
    except OSError:
        return True  # cannot be told: not taken for gone
