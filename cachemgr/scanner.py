"""Disk scanning: how big a directory is, and which directories the root holds.

Size is allocated bytes (st_blocks x 512), what `du` reports and what fills the disk: a sparse
or compressed file costs less than its length, a 1-byte file costs a whole block. Each inode is
counted once (hard links), symlinks are never followed, and no subprocess is used. The loop
over one directory's entries is in C (_scandir.c) when the install built it, else in Python.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr import mounts, nested
from cachemgr.paths import DIR_FLAGS, TRASH_DIR, not_a_download, unbookable


class TooDeep(OSError):
    """A tree the scan cannot follow to its bottom: its size would be too small."""


@dataclass
class ScanResult:
    size_bytes: int = 0
    file_count: int = 0
    subdirs: list[str] = field(default_factory=list)
    # Subdirectories that could not be opened (permissions, I/O errors): not counted.
    unreadable: list[str] = field(default_factory=list)
    # The newest st_ctime in the tree, the directory itself included: when it was last written.
    # Not st_mtime, which a downloader may set to the file's own date (curl -R, wget -N).
    changed: float = 0.0


_IFMT = 0o170000  # stat.S_IFMT as a mask
_IFDIR = stat.S_IFDIR
_IFREG = stat.S_IFREG
# Every directory is opened relative to its parent's descriptor (paths.DIR_FLAGS), and its
# entries stat'ed relative to its own (fstatat), as `du` does: the kernel resolves one name per
# entry.


def cannot_read(rel: str, exc: OSError) -> str:
    """What a registration, and a reconcile's plan, say of a directory the worker cannot open."""
    return f"{rel!r} cannot be read by the worker: {exc}"


def check_readable(location: Path | str) -> None:
    """Raise the OSError a scan of `location` would meet opening it (a plan's check)."""
    os.close(os.open(location, DIR_FLAGS))


def scan(location: Path | str, *, collect_subdirs: bool = False) -> ScanResult:
    """Allocated bytes and regular-file count of a directory tree, the directory itself included.

    `subdirs` (relative to `location`) is filled when asked, so that a registration can check
    that no directory inside is tracked on its own. Raises OSError (ELOOP) when `location`
    itself is a symlink.
    """
    top = os.open(location, DIR_FLAGS)
    st = os.fstat(top)
    blocks = st.st_blocks
    changed = st.st_ctime
    files = 0
    subdirs: list[str] = []
    unreadable: list[str] = []
    seen: set[tuple[int, int]] = set()
    # One frame per directory on the current path, with the names of its subdirectories not
    # yet walked: descriptors open = depth, not breadth.
    frames: list[tuple[int, str, list[tuple[str, int]]]] = []

    def read(fd: int, rel: str) -> None:
        nonlocal blocks, files, changed
        frames.append((fd, rel, []))  # first, so that the finally below closes it
        try:
            b, f, subs, linked, newest = scan_dir(fd)  # which opens one more descriptor
        except OSError as exc:
            _refuse_if_too_deep(exc, len(frames))
            if rel and exc.errno in UNREADABLE:  # opened, but its entries cannot be read:
                unreadable.append(rel)  # its frame, left empty, is closed below
                return
            raise
        blocks += b
        files += f
        changed = max(changed, newest)
        for dev, ino, blk, regular in linked:
            if (dev, ino) not in seen:
                seen.add((dev, ino))
                blocks += blk
                files += regular
        names = frames[-1][2]
        for name, blk in subs:
            blocks += blk
            names.append((name, blk))
            if collect_subdirs:
                subdirs.append(f"{rel}/{name}" if rel else name)
        names.reverse()  # popped from the end: walked in directory order

    try:
        read(top, "")
        while frames:
            fd, rel, names = frames[-1]
            if not names:
                os.close(fd)
                frames.pop()
                continue
            name, listed = names.pop()
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                _refuse_if_too_deep(exc, len(frames))
                if exc.errno in UNREADABLE:  # said by the caller: its size is too small
                    unreadable.append(f"{rel}/{name}" if rel else name)
                continue  # vanished, unreadable or replaced: count what we can see
            if os.fstat(child).st_dev != st.st_dev:
                # Another filesystem mounted inside (as `du -x`): its bytes are not the cache
                # disk's, and a deletion would leave them (it refuses a tree holding a mount);
                # nor its root's own blocks, which its parent's listing counted.
                blocks -= listed  # as the listing counted it (not what a mount since shows)
                os.close(child)
                continue
            read(child, f"{rel}/{name}" if rel else name)
    finally:
        for fd, _, _ in frames:
            os.close(fd)
    return ScanResult(blocks * 512, files, subdirs, unreadable, changed)



# Not vanished (ENOENT) nor replaced by a symlink (ELOOP): there, but its content not seen.
UNREADABLE = (errno.EACCES, errno.EPERM, errno.EIO)

DirEntries = tuple[int, int, list[tuple[str, int]], list[tuple[int, int, int, int]], float]


def _refuse_if_too_deep(exc: OSError, depth: int) -> None:
    """Out of descriptors (one per level): skipping the rest would undercount in silence."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        raise TooDeep(
            exc.errno,
            f"the tree is deeper ({depth} levels) than the open-file limit lets a scan follow; "
            "raise it (ulimit -n) or flatten the tree",
        ) from None


def scan_dir_py(fd: int) -> DirEntries:
    """One directory's entries (see _scandir.c, which does the same without Python objects
    per entry): blocks and regular files of the entries that are neither directories nor
    hard-linked, [(name, blocks)] of the subdirectories, [(dev, ino, blocks, is_regular)] of
    the hard-linked, and the newest st_ctime of them all."""
    blocks = files = 0
    changed = 0.0
    subs: list[tuple[str, int]] = []
    linked: list[tuple[int, int, int, int]] = []
    with os.scandir(fd) as entries:  # scandir works on a duplicate of fd
        for entry in entries:
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = est.st_mode & _IFMT
            changed = max(changed, est.st_ctime)
            if kind == _IFDIR:
                subs.append((entry.name, est.st_blocks))
            elif est.st_nlink > 1:
                linked.append((est.st_dev, est.st_ino, est.st_blocks, int(kind == _IFREG)))
            else:
                blocks += est.st_blocks
                files += kind == _IFREG
    return blocks, files, subs, linked, changed


SCAN_DIR_VERSION = 2  # the shape of scan_dir's reply, as _scandir.c's VERSION says it
try:  # the C loop, when the install could build it (setup.py) from this source
    from cachemgr._scandir import VERSION, scan_dir

    if VERSION != SCAN_DIR_VERSION:  # pragma: no cover - built from an older source
        raise ImportError(f"cachemgr._scandir is version {VERSION}")
except ImportError:  # pragma: no cover - no C compiler, or not rebuilt since an update
    scan_dir = scan_dir_py


def directories_at_depth(
    root: Path,
    depth: int,
    *,
    others: list[str] | None = None,
    blocked: list[str] | None = None,
    books: str | None = None,
    disk_tops: bool = True,
    roots: list[tuple[str, str]] | None = None,
) -> Iterator[str]:
    """Relative paths of the real directories `depth` levels below the root. The root's
    own (cachemgr's trash and marker, a desktop's `.Trash-1000`, a file system's
    `lost+found`) are no downloads: reconcile booked them, and evicted them first. Other
    names starting with a dot are downloads like any ("...And Justice for All").
    `others`, when given, gets the entries on the way that are not directories (files,
    symlinks); `blocked`, the directories above the entry depth that could not be listed;
    `books`, this cache's key prefix: other caches' roots inside it (their marker names other
    books: nested.other_books) are passed over, and not looked into. `disk_tops`: pass over
    the own folders of the disks mounted below the root too (False: of the root alone; no
    mount table read). `roots`, when given, gets those passed over, with the books their
    marker names."""
    level = [""]
    # The disks mounted below the root hold their own lost+found (and a desktop's trash).
    mounted = mounts.mounted_below(root, depth) if depth > 1 and disk_tops else set()
    for _ in range(depth):
        below: list[str] = []
        for rel in level:
            top = not rel or disk_tops and (rel in mounted or mounts.other_device(root, rel))
            try:
                it = os.scandir(root / rel if rel else root)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone meanwhile
            except PermissionError:
                if blocked is not None and rel:
                    blocked.append(rel)
                continue
            with it:
                for entry in it:
                    if top and not_a_download(entry.name):
                        continue
                    if entry.name == TRASH_DIR:  # (a disk mounted below the root has one)
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        below.append(f"{rel}/{entry.name}" if rel else entry.name)
                    elif others is not None:
                        others.append(f"{rel}/{entry.name}" if rel else entry.name)
        if books is not None:
            base = str(root)  # strings, not Paths: one look per directory
            kept = []
            for rel in below:
                theirs = nested.other_books(f"{base}/{rel}", books)
                if not theirs:
                    kept.append(rel)
                elif roots is not None:
                    roots.append((rel, theirs))
            below = kept
        level = below
    yield from sorted(level)


class _Statx(ctypes.Structure):
    # struct statx up to stx_btime (linux/stat.h); the rest of its 256 bytes is padding here.
    _fields_ = [
        ("mask", ctypes.c_uint32),
        ("head", ctypes.c_uint8 * 76),
        ("btime_sec", ctypes.c_int64),
        ("btime_nsec", ctypes.c_uint32),
        ("tail", ctypes.c_uint8 * 172),
    ]


_STATX_BTIME, _AT_SYMLINK_NOFOLLOW, _AT_FDCWD = 0x800, 0x100, -100


@functools.cache
def _statx() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).statx  # type: ignore[no-any-return]
    except (AttributeError, OSError):  # a libc before glibc 2.28: no birth times
        return None


def birth_time(path: Path | str) -> float | None:
    """When `path` was created (statx's stx_btime), not following a symlink; None where the
    libc, the kernel or the filesystem does not keep it. Python 3.11's os.stat gives none."""
    call = _statx()
    if call is None:
        return None
    out = _Statx()
    if call(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, ctypes.byref(out)):
        return None
    if not out.mask & _STATX_BTIME:
        return None
    return out.btime_sec + out.btime_nsec / 1e9


def newest_directory(
    root: Path,
    depth: int = 1,
    *,
    key: Callable[[os.stat_result], float] | None = None,
    blocked: list[str] | None = None,
    passed_over: list[str] | None = None,
    books: str | None = None,
) -> str | None:
    """The most recently created directory at the entry depth: the seed's "latest download".
    A name that cannot be booked (not UTF-8, a leading backslash: paths.unbookable) is never
    it (picked, it failed every registration until something newer came); `passed_over` gets
    the newest such, if newer than the one picked. `blocked` and `books` as in directories_at_depth.

    Created: the birth time, where the filesystem keeps one for every candidate (ext4, XFS,
    btrfs, tmpfs); else the newest st_ctime, which a directory gets when it is made and when
    its entries change (a cover added to an older download later made that one the newest).
    `key`, when given, is what is compared instead. Ties (birth times are coarse on some
    filesystems: downloads begun together tie) go by st_ctime, then by the later name.
    """
    found: list[tuple[str, float, float | None]] = []
    for rel in directories_at_depth(root, depth, blocked=blocked, books=books):
        try:
            st = os.lstat(root / rel)
        except FileNotFoundError:
            continue
        if key is not None:
            found.append((rel, key(st), None))
        else:
            found.append((rel, st.st_ctime, birth_time(root / rel)))
    born = bool(found) and all(b is not None for _, _, b in found)
    # (created, changed, name): the newest is the greatest, its name last.
    best: tuple[float, float, str] | None = None
    unnamed: tuple[float, float, str] | None = None
    for rel, changed, birth in found:
        when = (birth if born and birth is not None else changed, changed, rel)
        if unbookable(rel):
            unnamed = max(unnamed or when, when)
        else:
            best = max(best or when, when)
    if passed_over is not None and unnamed and (best is None or unnamed > best):
        passed_over.append(unnamed[2])
    return best[2] if best else None
