"""Other caches' roots inside this one's, and this one's own seen again: none of its downloads.

`cachemgr up --nodes 2` puts node1's and node2's roots under the root a node named after the
host would have; booked by that node, node1 was evicted with all its cache. A root is told by
its marker (`.cachemgr-books`, marker.py) naming other books, on the disk itself: the node
registry said it only while the inner node stayed published, and only to a process whose root
path matched the one published (not a shell with the same disk mounted elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cachemgr.marker import books_of, read_lines
from cachemgr.paths import BOOKS_MARKER


def other_books(directory: Path | str, prefix: str) -> str | None:
    """The books the marker at the top of `directory` names, when they are not those under
    `prefix`; None where there is none, or it names these books (a root moved up), or it
    cannot be read: only a marker read is evidence (an unreadable directory is not another
    cache's; it is said as unreadable where it is met). A file of that name without a books
    line, which every version's marker has, is an album's own file, not a marker, unless it
    is empty: a marker a crash left before its data reached the disk."""
    found = read_lines(directory)
    if found is None:
        return None
    books = found[0]
    if books is None:
        return "books a marker left empty does not name" if _empty(directory) else None
    if books == books_of(prefix):
        return None
    return books or "books it does not name"


def _empty(directory: Path | str) -> bool:
    try:
        return os.stat(f"{directory}/{BOOKS_MARKER}", follow_symlinks=False).st_size == 0
    except OSError:
        return False


def nested_root(
    root: Path, rel: str, prefix: str, below: Iterable[str] = (), walk: bool = False
) -> str | None:
    """Why `rel` is none of this cache's downloads: it is, or lies in, another cache's root;
    or holds one in one of `below` (its subdirectories, relative to it, as a scan found
    them), or with `walk` anywhere inside it (its directories walked). None otherwise."""
    found = other_root(root, rel, prefix, below, walk)
    return None if found is None else _said(rel, *found)


def other_root(
    root: Path, rel: str, prefix: str, below: Iterable[str] = (), walk: bool = False
) -> tuple[str, str, str] | None:
    """As nested_root, what it found: how `rel` stands to it ("is", "lies in", "holds"), the
    other root's path, and the books its marker names."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        top = "/".join(parts[:i])
        books = other_books(root / top, prefix)
        if books:
            return ("is" if i == len(parts) else "lies in"), top, books
    for sub in _walked(root / rel) if walk else below:
        books = other_books(root / rel / sub, prefix)
        if books:
            return "holds", f"{rel}/{sub}", books
    return None


def _walked(top: Path) -> Iterator[str]:
    """The directories inside `top`, relative to it (symlinks not followed, other filesystems
    not entered: a mount inside a download, which the deletion refuses anyway, was walked
    whole at every pass; what cannot be listed passed over: the deletion says so)."""
    try:
        device = os.lstat(top).st_dev
    except OSError:
        return
    stack = [""]
    while stack:
        sub = stack.pop()
        try:
            it = os.scandir(top / sub if sub else top)
        except OSError:
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    found = f"{sub}/{entry.name}" if sub else entry.name
                    yield found
                    try:
                        if entry.stat(follow_symlinks=False).st_dev == device:
                            stack.append(found)
                    except OSError:
                        pass


def this_root(root: Path, rel: str) -> str | None:
    """Why root/rel is this cache's own root, or a folder above it, reached again through a
    mount below the root (the root's parent bind-mounted into it): booked, the whole cache
    counted as one download, and its deletion moved the root out of itself. None otherwise."""
    try:
        st = os.stat(root / rel, follow_symlinks=False)
    except OSError:
        return None
    top = Path(os.path.realpath(root))
    for above in (top, *top.parents):
        try:
            seen = os.stat(above)
        except OSError:
            continue
        if (seen.st_dev, seen.st_ino) == (st.st_dev, st.st_ino):
            what = "the cache root itself" if above == top else f"{str(above)!r}, above the root"
            return f"{rel!r} is {what}, seen again through a mount below the root: no download"
    return None


def _said(rel: str, how: str, top: str, books: str) -> str:
    return (
        f"{rel!r} {how} the root of another cache ({top!r}: its marker {BOOKS_MARKER} names "
        f"{books}): none of this node's downloads"
    )


__all__ = ["nested_root", "other_books", "other_root", "this_root"]
