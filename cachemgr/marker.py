"""The root's marker, `.cachemgr-books`: the directory the books in Redis were kept for.

Books not initialized beside a marker were lost (Redis lost its data), not new; a root whose
marker is gone, or names other books, is not the directory they were kept for (the mount point
an unmounted disk leaves, written to meanwhile): passes over it would untrack what they could
not see there.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from cachemgr import paths

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

ROOT_LINE = "root: "


def remember(cache: DiskCache) -> None:
    """Mark the root as the one these books are kept for (the token kept, if there is one)."""
    token = cache.client.get(cache.keys.root_mark) or secrets.token_hex(8)
    text = f"books: {cache.keys.prefix}cache:*\n{ROOT_LINE}{token}\n"
    try:
        (cache.root / paths.BOOKS_MARKER).write_text(text)
    except OSError as exc:  # a read-only root: told apart by what the books hold instead
        log.debug("cannot mark the root as having books: %s", exc)
        return
    # Only once the file holds it: a token the root cannot show would refuse every pass.
    cache.client.set(cache.keys.root_mark, token)


def marked(cache: DiskCache) -> bool:
    """The books know their root's token (books kept since before it, an upgrade, do not)."""
    return bool(cache.client.exists(cache.keys.root_mark))


def present(cache: DiskCache) -> bool:
    return (cache.root / paths.BOOKS_MARKER).is_file()


def books_were_lost(cache: DiskCache) -> bool:
    """Books not initialized that were kept before: the root says so, or they are empty."""
    return present(cache) or cache.store.count_entries() == 0


def swapped(cache: DiskCache) -> str | None:
    """Why the root is not the directory these books were kept for (None: it is, or that
    cannot be told: no token, an unreadable marker)."""
    token = cache.client.get(cache.keys.root_mark)
    if token is None:
        return None
    try:
        lines = (cache.root / paths.BOOKS_MARKER).read_text().splitlines()
    except FileNotFoundError:
        return f"its marker {paths.BOOKS_MARKER} is missing"
    except (OSError, UnicodeDecodeError):
        return None
    if f"{ROOT_LINE}{token}" not in lines:
        return f"its marker {paths.BOOKS_MARKER} names other books"
    return None
