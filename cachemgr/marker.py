"""The root's marker, `.cachemgr-books`: the directory the books in Redis were kept for.

Books not initialized beside a marker were lost (Redis lost its data), not new; a root whose
marker is gone, or names other books, is not the directory they were kept for (the mount point
an unmounted disk leaves, written to meanwhile): passes over it would untrack what they could
not see there.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cachemgr import paths
from cachemgr.errors import RootMissing, root_missing
from cachemgr.keys import Keys

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

ROOT_LINE, BOOKS_LINE = "root: ", "books: "
# The books' token after a forced adoption was cut short: no marker holds it, so neither the
# disk being adopted nor the one it replaced is taken for the books', which the walk had
# half rewritten (the old disk's downloads untracked, the new one's partly booked).
CUT_SHORT = "cut-short:"


def cut_short(cache: DiskCache) -> None:
    """Set as a forced adoption begins; its end writes the new token over it."""
    token = cache.client.get(cache.keys.root_mark) or ""
    if not token.startswith(CUT_SHORT):
        cache.client.set(cache.keys.root_mark, f"{CUT_SHORT}{token}")


def remember(cache: DiskCache, anew: bool = False) -> None:
    """Mark the root as the one these books are kept for (the token kept, if there is one:
    the books', else the marker's, so that books rebuilt after a loss take the root's own
    and a copy of the books from before the loss, restored, still matches it; `anew`: a root
    adopted on purpose gets its own, so that the one it replaced, should it come back, is
    told apart)."""
    books, marked_token = _lines(cache)
    if books is not None and books != books_of(cache.keys.prefix):
        log.warning(
            "the cache root %r was kept by other books (%s; DISK_CACHE_NODE or "
            "DISK_CACHE_KEY_PREFIX changed?), whose workers are gone: these (%s) take it "
            "over; `cachemgr forget-node` drops the old node's",
            str(cache.root),
            books,
            books_of(cache.keys.prefix),
            extra={"event": "root_taken_over"},
        )
    token = None if anew else cache.client.get(cache.keys.root_mark) or marked_token
    if not token and not anew:
        # Marked at once by several processes (a new install's first registrations): each
        # wrote a token of its own over the others', and one that read the marker between a
        # write and its correction refused the root ("names other books"). They take one.
        proposed = secrets.token_hex(8)
        cache.client.set(cache.keys.root_claim, proposed, nx=True, px=CLAIM_MS)
        token = cache.client.get(cache.keys.root_claim)
    token = token or secrets.token_hex(8)
    try:
        if (books, marked_token) != (books_of(cache.keys.prefix), token):
            _write(cache, token)
    except OSError as exc:  # a read-only root: told apart by what the books hold instead
        log.debug("cannot mark the root as having books: %s", exc)
        if anew:  # adopted on purpose, and cannot say so: not refused for the old token
            cache.client.delete(cache.keys.root_mark)
        return
    # Only once the file holds it: a token the root cannot show would refuse every pass.
    # Two first markings at once (a cleanup and a reconcile: other locks) agree on one.
    if not cache.client.set(cache.keys.root_mark, token, nx=not anew):
        won = cache.client.get(cache.keys.root_mark)
        if won and won != token:
            _write(cache, won)


# How long the token proposed for a first marking stands (remember): a marking takes a file
# write and two commands.
CLAIM_MS = 60_000


def _write(cache: DiskCache, token: str) -> None:
    """Whole or not at all (a rename): a check reading it meanwhile sees the old or the new."""
    marker = cache.root / paths.BOOKS_MARKER
    # One of its own per call: two first markings at once (a cleanup's and a reconcile's
    # threads) wrote one file by the process's name, and the marker could end up with the
    # token the books do not hold (the root refused), more often once the write was fsynced.
    aside = marker.with_name(f"{paths.BOOKS_MARKER}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(aside, "w") as out:
            out.write(f"{BOOKS_LINE}{books_of(cache.keys.prefix)}\n{ROOT_LINE}{token}\n")
            out.flush()
            # On the disk before the rename: a crash between them left the marker empty on
            # some filesystems, an album's file to the node whose root holds this one.
            os.fsync(out.fileno())
        os.replace(aside, marker)
    except OSError:  # a full disk: not left behind in the root (an untracked stray file)
        aside.unlink(missing_ok=True)
        raise


def books_of(prefix: str) -> str:
    return f"{prefix}cache:*"


MARKER_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def read_lines(directory: Path | str) -> tuple[str | None, str | None] | None:
    """The books a marker at the top of `directory` names and the token it holds (None each
    where it holds none: an older version's), or None where there is no marker to read.
    Plain os calls (cheap: one per directory every walk of the root makes), and regular
    files only: a named pipe of that name, which anyone who writes in the root can make,
    held the worker for good on a blocking open."""
    path = f"{directory}/{paths.BOOKS_MARKER}"
    if not os.access(path, os.F_OK):  # the usual answer, no exception raised: a tenth
        return None
    try:
        fd = os.open(path, MARKER_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = data.decode(errors="replace").splitlines()
    books = next((ln[len(BOOKS_LINE) :] for ln in lines if ln.startswith(BOOKS_LINE)), None)
    token = next((ln[len(ROOT_LINE) :] for ln in lines if ln.startswith(ROOT_LINE)), None)
    return books, token


def _lines(cache: DiskCache) -> tuple[str | None, str | None]:
    """The books the root's marker names and the token it holds; None each where there is
    none (absent, unreadable, written by a version from before tokens)."""
    return read_lines(cache.root) or (None, None)


def _token_line(cache: DiskCache) -> str | None:
    return _lines(cache)[1]


ANOTHER_NODE = "names the books of another node"


def _kept_by_another(cache: DiskCache, books: str | None) -> str | None:
    """Why the root is not these books' to keep: its marker names the books of another node
    (another DISK_CACHE_NODE or DISK_CACHE_KEY_PREFIX) whose workers are alive. Two nodes on
    one root each booked the same downloads and evicted by their own books (a node renamed
    while its old workers still ran, or two set alike by mistake)."""
    if books is None or books == books_of(cache.keys.prefix) or not books.endswith("cache:*"):
        return None
    if not cache.registry.alive(Keys(books.removesuffix("cache:*"))):
        return None  # a node renamed, its old workers stopped: these books take it over
    return (
        f"its marker {paths.BOOKS_MARKER} {ANOTHER_NODE} ({books}), whose "
        "workers are alive: two nodes on one root would each evict what the other booked; "
        "give each node its own DISK_CACHE_ROOT, or stop the other's workers"
    )


def marked(cache: DiskCache) -> bool:
    """The root's marker holds the token the books keep (books kept since before tokens, or
    a marker rewritten by an older version, do not: the next cleanup marks it again)."""
    token = cache.client.get(cache.keys.root_mark)
    return token is not None and _token_line(cache) == token


def present(cache: DiskCache) -> bool:
    return (cache.root / paths.BOOKS_MARKER).is_file()


def books_were_lost(cache: DiskCache) -> bool:
    """Books not initialized that were kept before: the root's marker says so, or they are
    empty."""
    return kept_before(cache) or cache.store.count_entries() == 0


def kept_before(cache: DiskCache, token: str | None = None) -> bool:
    """The root's marker holds a token the books do not (`token`: theirs, when the caller
    read it): books were kept for it before these. A new install's first registration
    marks its root with the books' own (the marker written, the books' token not yet: the
    token claimed for it, `cache:root_claim`, tells that apart)."""
    if not present(cache):
        return False
    token = cache.client.get(cache.keys.root_mark) if token is None else token
    found = _token_line(cache)
    if not token:
        return found is None or found != cache.client.get(cache.keys.root_claim)
    return found != token


def swapped(cache: DiskCache, token: str | None = None) -> str | None:
    """Why the root is not the directory these books were kept for (None: it is, or that
    cannot be told: no token, an unreadable marker). `token`: the books' own, when the
    caller read it already."""
    token = cache.client.get(cache.keys.root_mark) if token is None else token
    books, found = _lines(cache)
    other = _kept_by_another(cache, books)
    if other or not token:
        return other
    if token.startswith(CUT_SHORT):
        return (
            "a reconcile --force was cut short and left the books half rewritten (no disk "
            "matches them now); run it again over the disk you mean"
        )
    if not present(cache):
        return f"its marker {paths.BOOKS_MARKER} is missing"
    if found is None or found == token:  # an older version's marker: cannot tell
        return None
    return (
        f"its marker {paths.BOOKS_MARKER} names other books (or Redis holds an older copy of "
        "the books than the one the root was marked with: a backup restored after they were "
        "rebuilt)"
    )


# How long a worker trusts the books' token it read (a registration checks the root against
# it): a mismatch is read again before anything is refused.
TOKEN_SECONDS = 10.0


def check_registering(cache: DiskCache) -> None:
    """Raise RootMissing when a registration would book a directory of a root that is not the
    books' (the mount point an unmounted disk left, written to meanwhile): booked, it stayed on
    the books once the disk was back, a download that does not exist there. One file read a
    registration; Redis only every TOKEN_SECONDS, or on a mismatch. Not while a forced
    adoption runs (its own registrations book the disk it adopts)."""
    refused = "no registration is booked"
    token, due = cache.root_token
    fresh = time.monotonic() >= due
    try:
        token = _read_token(cache) if fresh else token
        other = _refusal(cache, token)
        if other and not fresh:  # an adoption may have ended since the token was read
            token = _read_token(cache)
            other = _refusal(cache, token)
    except PermissionError as exc:  # the marker cannot be looked at: a traceback, unsaid
        raise RootMissing(unreadable(cache, exc, refused)) from None
    if other:
        if not cache.root.is_dir():  # no marker, for there is no root at all: said so
            raise RootMissing(root_missing(cache.root, refused))
        raise RootMissing(_not_theirs(cache, other, refused))
    if fresh and not token and cache.root.is_dir() and not present(cache):
        # A new install's books are marked by their first registration, not only by the
        # node's first cleanup: until then a shell with another DISK_CACHE_ROOT was taken for
        # the books' root, and its `rm --now --files` deleted there. (A marker with no token
        # in the books: they were lost, and the cleanup rebuilds them before it marks.)
        remember(cache)
        _read_token(cache)


def _read_token(cache: DiskCache) -> str:
    token = cache.client.get(cache.keys.root_mark) or ""
    cache.root_token = (token, time.monotonic() + TOKEN_SECONDS)
    return token


def _refusal(cache: DiskCache, token: str) -> str | None:
    """Why a registration is refused under the books' `token` (swapped), if it is: never
    with no token, nor while a forced adoption walks the root now (its own registrations
    book the disk it adopts); one cut short refuses them, as cleanups are refused."""
    adopting = token.startswith(CUT_SHORT) and bool(cache.client.exists(cache.keys.adopting))
    return None if adopting else swapped(cache, token)


# How a root refusal ends: the advice to adopt the root as it is.
FORCE_ADVICE = "run `cachemgr reconcile --force`"


def without_advice(why: str) -> str:
    """A root refusal's reason without its closing advice (for a process whose root is not
    the workers': adopting it would make the wrong directory the books')."""
    return why.rpartition("; if ")[0] if why.endswith(FORCE_ADVICE) else why


def _not_theirs(cache: DiskCache, why: str, refused: str) -> str:
    if ANOTHER_NODE in why:  # mounted, and not to be adopted by force: another's
        return f"the cache root {str(cache.root)!r} is not these books' to keep: {why}: {refused}"
    return (
        f"the cache root {str(cache.root)!r} is not the directory these books were kept "
        f"for: {why} (is the disk mounted?): {refused}; if it was replaced on purpose, "
        f"{FORCE_ADVICE}"
    )


def check_root(cache: DiskCache, *, allow_empty: bool = False, force: bool = False) -> None:
    """Raise RootMissing unless the root is a directory that holds something while the
    books track directories: a pass over a missing root (an unmounted disk), or over the
    empty mount point left behind, would find every directory gone and untrack them all.
    Nor a root that is not the directory the books were kept for (no marker of theirs): the
    mount point written to meanwhile. `allow_empty`: an empty root is no sign (a removal of the
    last download); `force` (reconcile --force) takes the root as it is. A root the worker
    may not read is refused too, by name (a PermissionError had failed every cleanup unsaid)."""
    why = refusal(cache, allow_empty=allow_empty, force=force)
    if why:
        raise RootMissing(why)


def refusal(
    cache: DiskCache,
    *,
    allow_empty: bool = False,
    force: bool = False,
    token: str | None = None,
    tracked: int | None = None,
) -> str | None:
    """Why check_root refuses the root (None: it does not). `token` and `tracked`: the books'
    root token and directory count, when the caller read them already (the stats, which say
    it at once rather than after the next cleanup failed)."""
    try:
        return _refusal_of(cache, allow_empty, force, token, tracked)
    except PermissionError as exc:
        return unreadable(cache, exc)


def unreadable(
    cache: DiskCache, exc: OSError, refused: str = "no cleanup or reconcile runs"
) -> str:
    """What a root this process may not read means, said the same by a pass and a
    registration."""
    return (
        f"the cache root {str(cache.root)!r} cannot be read by this process "
        f"({exc.strerror}: permissions?): {refused} until it can"
    )


def check_readable(cache: DiskCache, refused: str) -> None:
    """Raise RootMissing when the root is not a directory this process may list: what a
    search of it would otherwise take for "no download there"."""
    try:
        with os.scandir(cache.root):
            pass
    except (FileNotFoundError, NotADirectoryError):
        raise RootMissing(root_missing(cache.root, refused)) from None
    except PermissionError as exc:
        raise RootMissing(unreadable(cache, exc, refused)) from None


# How long the stats trust their last look at the root (two stats, the marker's read, the
# root's first entry): the API answers them by the thousand a second.
SEEN_SECONDS = 1.0


def refusal_seen(cache: DiskCache, token: str, tracked: int) -> str | None:
    """`refusal` as the stats read it: looked at again at most every SEEN_SECONDS, and at
    once when the books' token, or whether they track anything, changed."""
    due, key, said = cache.root_seen
    now = time.monotonic()
    if key == (token, bool(tracked)) and now < due:
        return said
    said = refusal(cache, token=token, tracked=tracked)
    cache.root_seen = (now + SEEN_SECONDS, (token, bool(tracked)), said)
    return said


def _refusal_of(
    cache: DiskCache, allow_empty: bool, force: bool, token: str | None, tracked: int | None
) -> str | None:
    if not cache.root.is_dir():
        return root_missing(cache.root)
    # Forced, a root is adopted whatever its marker says; never one another node's live
    # workers keep (it would be taken back and forth).
    other = _kept_by_another(cache, _lines(cache)[0]) if force else swapped(cache, token)
    if other:
        return _not_theirs(cache, other, "no cleanup or reconcile runs")
    if allow_empty or force:
        return None
    tracked = cache.store.count_entries() if tracked is None else tracked
    if not tracked:
        return None
    with os.scandir(cache.root) as it:
        if any(e.name not in (paths.TRASH_DIR, paths.BOOKS_MARKER) for e in it):
            return None
    return (
        f"the cache root {str(cache.root)!r} is empty while {tracked} "
        "directories are tracked (is the disk mounted?): no cleanup or reconcile runs; if "
        f"the downloads were removed on purpose, {FORCE_ADVICE}"
    )
