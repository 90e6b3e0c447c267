"""Deletion through a trash folder inside the root.

A directory is first renamed into the trash (atomic, same filesystem), then deleted: a reader
never sees a half-deleted tracked directory, and a crash leaves only trash, which the next
cleanup empties. `shutil.rmtree` does not follow symlinks, so nothing outside the root goes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from cachemgr.paths import TRASH_DIR


def trash_dir(root: Path) -> Path:
    return root / TRASH_DIR


def move_to_trash(root: Path, location: Path) -> Path:
    target = trash_dir(root)
    target.mkdir(exist_ok=True)
    dest = target / uuid.uuid4().hex
    os.rename(location, dest)
    return dest


def _delete(item: Path) -> None:
    if item.is_dir() and not item.is_symlink():
        shutil.rmtree(item, ignore_errors=True)
    else:
        item.unlink(missing_ok=True)


def discard(root: Path, location: Path) -> None:
    """Rename into the trash, then delete."""
    _delete(move_to_trash(root, location))


def empty(root: Path) -> int:
    """Delete whatever a crash left in the trash; returns how many items went."""
    target = trash_dir(root)
    if not target.is_dir() or target.is_symlink():
        return 0
    items = list(target.iterdir())
    for item in items:
        _delete(item)
    return len(items)


def pending(root: Path) -> int:
    target = trash_dir(root)
    if not target.is_dir() or target.is_symlink():
        return 0
    return sum(1 for _ in target.iterdir())
