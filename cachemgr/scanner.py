"""Disk scanning: how big a directory is, and which directories the root holds.

Size is allocated bytes (st_blocks x 512), what `du` reports and what fills the disk: a sparse
or compressed file costs less than its length, a 1-byte file costs a whole block. Each inode is
counted once (hard links), symlinks are never followed, and no subprocess is used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.paths import TRASH_DIR


@dataclass
class ScanResult:
    size_bytes: int = 0
    file_count: int = 0
    subdirs: list[str] = field(default_factory=list)


def scan(location: Path | str, *, collect_subdirs: bool = False) -> ScanResult:
    """Allocated bytes and regular-file count of a directory tree, the directory itself included.

    `subdirs` (relative to `location`) is filled when asked, so that a registration can check
    that no directory inside is tracked on its own.
    """
    result = ScanResult()
    top = os.fspath(location)
    st = os.lstat(top)
    result.size_bytes = st.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    stack = [top]
    prefix_len = len(top) + 1
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # vanished or unreadable while we walked: count what we can see
        with it:
            for entry in it:
                try:
                    est = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = est.st_mode
                if est.st_nlink > 1 and not stat.S_ISDIR(mode):
                    ident = (est.st_dev, est.st_ino)
                    if ident in seen:
                        continue
                    seen.add(ident)
                result.size_bytes += est.st_blocks * 512
                if stat.S_ISDIR(mode):
                    stack.append(entry.path)
                    if collect_subdirs:
                        result.subdirs.append(entry.path[prefix_len:])
                elif stat.S_ISREG(mode):
                    result.file_count += 1
    return result


def directories_at_depth(root: Path, depth: int) -> Iterator[str]:
    """Relative paths of the real directories `depth` levels below the root (trash excluded)."""
    level = [""]
    for _ in range(depth):
        below: list[str] = []
        for rel in level:
            try:
                it = os.scandir(root / rel if rel else root)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            with it:
                for entry in it:
                    if not rel and entry.name == TRASH_DIR:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        below.append(f"{rel}/{entry.name}" if rel else entry.name)
        level = below
    yield from sorted(level)


def newest_directory(
    root: Path, depth: int = 1, *, key: Callable[[os.stat_result], float] | None = None
) -> str | None:
    """The most recently created directory at the entry depth: the seed's "latest download".

    Linux exposes no birth time through os.stat, so "created" is the newest st_ctime, which a
    directory gets when it is made and when its entries change, as a download writes it.
    """
    pick = key or (lambda st: st.st_ctime)
    best: tuple[float, str] | None = None
    for rel in directories_at_depth(root, depth):
        try:
            when = pick(os.lstat(root / rel))
        except FileNotFoundError:
            continue
        if best is None or when > best[0]:
            best = (when, rel)
    return best[1] if best else None
