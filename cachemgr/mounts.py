"""Mount points: the mount table as this process sees it, the disks mounted below the root
above the entry depth (each with its own trash and its own lost+found), and what a cleanup
remembers of them, so that a tracked directory missing under the bare mount point of a disk
not mounted now is kept on the books (its files are on that disk), not taken for gone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cachemgr.clock import on_the_books
from cachemgr.paths import TRASH_DIR, ancestors, not_a_download
from cachemgr.paths import root_own as paths_root_own

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
    points = mounts_above(cache.root, cache.settings.disk_cache_entry_depth)
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
    mounted = set(mount_points())
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
    return _unmounted(rel, seen, os.path.realpath(cache.root), set(mount_points()))


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


MOUNTINFO = Path("/proc/self/mountinfo")


def mount_points() -> list[str]:
    """Every mount point of this process (/proc/self/mountinfo; none where it is missing),
    named as os.path.realpath names them: a mount point anywhere on the host whose name is not
    UTF-8 made every deletion fail with a UnicodeDecodeError."""
    try:
        lines = MOUNTINFO.read_bytes().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            points.append(os.fsdecode(point))
    return points


def mount_id(fd: int) -> int | None:
    """The mount a descriptor is on (Linux's fdinfo; None where it cannot be read)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mount_points_under(path: Path, points: list[str] | None = None) -> list[str]:
    """Mount points at or below `path`. `rmtree` would go down into a bind mount and delete
    what it shows, which lives outside the root; st_dev cannot tell a bind mount of the same
    filesystem. `points`: mount_points(), when the caller checks many paths."""
    top = os.path.realpath(path)
    inside = top.rstrip("/") + "/"
    return [p for p in (mount_points() if points is None else points)
            if p == top or p.startswith(inside)]  # fmt: skip


def mounts_above(root: Path, depth: int, points: list[str] | None = None) -> list[Path]:
    """The mount points below the root above the entry depth `depth` (none in a trash), as
    realpaths: the disks mounted there hold downloads, and a trash of their own (`trash._base`).
    One inside a download (a bind mount of a directory elsewhere) holds nothing of ours."""
    top = os.path.realpath(root)
    below = [Path(p) for p in mount_points_under(Path(top), points) if p != top]
    return [
        p for p in below if len(p.relative_to(top).parts) < depth and TRASH_DIR not in p.parts
    ]


def mounted_below(root: Path, depth: int) -> set[str]:
    """mounts_above, as paths relative to the root."""
    top = Path(os.path.realpath(root))
    return {str(p.relative_to(top)) for p in mounts_above(root, depth)}


def root_own(root: Path, rel: str, depth: int) -> str | None:
    """paths.root_own, with the disks mounted below the root: a disk mounted at root/disk1
    holds its own lost+found, a download at depth 2. The mounts are read only for a path
    that names such a folder below the root's top."""
    parts = rel.split("/")
    above = ["/".join(parts[:i]) for i in range(1, len(parts)) if not_a_download(parts[i])]
    if not above:
        return paths_root_own(rel)
    mounted = mounted_below(root, depth)
    return paths_root_own(rel, {p for p in above if p in mounted or other_device(root, p)})


def other_device(root: Path, rel: str) -> bool:
    """Where the mount table cannot be read (a sandbox): whether root/rel is on another
    device than the root, the top of a disk mounted there (its own lost+found must not be a
    download again). With the table, never: a btrfs subvolume has a device of its own too."""
    if os.access(MOUNTINFO, os.R_OK):
        return False
    try:
        return os.stat(root / rel).st_dev != os.stat(root).st_dev
    except OSError:
        return False
