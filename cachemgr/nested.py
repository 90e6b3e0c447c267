"""Other caches' roots inside this one's: none of its downloads.

`cachemgr up --nodes 2` puts node1's and node2's roots under the root a node named after the
host would have; booked by that node, node1 was evicted with all its cache. A root is told by
its marker (`.cachemgr-books`, marker.py) naming other books, on the disk itself: the node
registry said it only while the inner node stayed published, and only to a process whose root
path matched the one published (not a shell with the same disk mounted elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cachemgr.marker import BOOKS_LINE, books_of
from cachemgr.paths import BOOKS_MARKER


def other_books(directory: Path, prefix: str) -> str | None:
    """The books the marker at the top of `directory` names, when they are not those under
    `prefix`; None where there is no marker, or it names these books (a root moved up)."""
    try:
        text = (directory / BOOKS_MARKER).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        return "books it does not say (unreadable)"  # there: another cache's, to be safe
    lines = text.splitlines()
    books = next((ln[len(BOOKS_LINE) :] for ln in lines if ln.startswith(BOOKS_LINE)), None)
    if books == books_of(prefix):
        return None
    return books or "books it does not name (an older version's marker)"


def nested_root(
    root: Path, rel: str, prefix: str, below: Iterable[str] = (), children: bool = False
) -> str | None:
    """Why `rel` is none of this cache's downloads: it is, or lies in, another cache's root;
    or holds one in one of `below` (its subdirectories, relative to it), or with `children`
    in a directory right inside it. None otherwise."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        top = "/".join(parts[:i])
        books = other_books(root / top, prefix)
        if books:
            how = "is" if i == len(parts) else "lies in"
            return _said(rel, how, top, books)
    inside = list(below)
    if children:
        try:
            with os.scandir(root / rel) as it:
                inside += [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            pass  # gone or unreadable: the deletion that follows says so
    for sub in inside:
        books = other_books(root / rel / sub, prefix)
        if books:
            return _said(rel, "holds", f"{rel}/{sub}", books)
    return None


def _said(rel: str, how: str, top: str, books: str) -> str:
    return (
        f"{rel!r} {how} the root of another cache ({top!r}: its marker {BOOKS_MARKER} names "
        f"{books}): none of this node's downloads"
    )


__all__ = ["nested_root", "other_books"]
