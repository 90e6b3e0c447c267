"""Deletion through a trash folder inside the root, without following any symlink.

A directory is first renamed into the trash (atomic, same filesystem), then deleted: a reader
never sees a half-deleted tracked directory, and a crash leaves only trash, which the next
cleanup empties. Every step works on directory descriptors opened with O_NOFOLLOW from the
root down, so a parent swapped for a symlink between a check and the rename makes the rename
fail instead of moving something outside the root; `shutil.rmtree` does not follow symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from cachemgr.paths import TRASH_DIR

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotADirectory(OSError):
    """The path no longer names a directory (a file or a symlink took its place)."""


def trash_dir(root: Path) -> Path:
    return root / TRASH_DIR


@contextlib.contextmanager
def _opened(path: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _trash_fd(root_fd: int) -> Iterator[int]:
    with contextlib.suppress(FileExistsError):
        os.mkdir(TRASH_DIR, dir_fd=root_fd)
    with _opened(TRASH_DIR, dir_fd=root_fd) as fd:  # a symlinked trash fails here (ELOOP)
        yield fd


def _remove(name: str, dir_fd: int) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def discard(root: Path, rel: str) -> None:
    """Rename `root/rel` into the trash, then delete it; raises OSError when it cannot.

    Raises NotADirectory, leaving everything in place, when `rel` is no longer a directory.
    """
    parts = rel.split("/")
    with contextlib.ExitStack() as stack:
        root_fd = stack.enter_context(_opened(root))
        parent_fd = root_fd
        for part in parts[:-1]:
            parent_fd = stack.enter_context(_opened(part, dir_fd=parent_fd))
        st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectory(f"{rel!r} is no longer a directory")
        trash_fd = stack.enter_context(_trash_fd(root_fd))
        name = uuid.uuid4().hex
        os.rename(parts[-1], name, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)
        moved = os.stat(name, dir_fd=trash_fd, follow_symlinks=False)
        if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
            # Swapped between the check and the rename: put it back, delete nothing.
            os.rename(name, parts[-1], src_dir_fd=trash_fd, dst_dir_fd=parent_fd)
            raise NotADirectory(f"{rel!r} changed while it was being deleted")
        shutil.rmtree(name, dir_fd=trash_fd)


def empty(root: Path) -> int:
    """Delete whatever a crash left in the trash; returns how many items went."""
    try:
        with _opened(root) as root_fd, _opened(TRASH_DIR, dir_fd=root_fd) as trash_fd:
            names = os.listdir(trash_fd)
            for name in names:
                _remove(name, trash_fd)
            return len(names)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except OSError as exc:  # a symlinked trash (ELOOP) is never followed
        if exc.errno == errno.ELOOP:
            return 0
        raise


def pending(root: Path) -> int:
    target = trash_dir(root)
    if not target.is_dir() or target.is_symlink():
        return 0
    return sum(1 for _ in target.iterdir())
