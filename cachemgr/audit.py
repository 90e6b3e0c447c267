"""The periodic look for downloads the books do not know: directories at the entry depth that
no registration booked (a task lost with its broker, a registration that failed), whose bytes
fill the disk uncounted. Said, not booked: `cachemgr reconcile` books them (adopting them here
could take a download still being written). Files met on the way, outside every download
directory, are counted too: no pass deletes them. And the other way round: directories on the
books that are gone from the disk (deleted by hand) are untracked, counted as vanished."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from cachemgr import deletion, mounts, nested, paths, scanner
from cachemgr.marker import books_of
from cachemgr.nodes import route_of

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

EXAMPLES = 3
# Stray files are warned of once they hold this share of the quota: below it (an artist's
# cover art beside its albums) they are only counted.
STRAY_SHARE = 0.01
# How far below an untracked directory to look for tracked ones (a registration off the
# entry depth books `artist/album` under an untracked `artist`: that one is accounted for).
INSIDE_DEPTH = 3

# At most this many gone directories are untracked by one look, in at most GONE_SECONDS;
# the rest by the next. From GONE_SHARE_FLOOR missing, more than half of a look missing is
# taken for a disk under the root not mounted, not for downloads deleted by hand.
GONE_AT_MOST, GONE_SECONDS, GONE_SHARE_FLOOR = 1000, 10.0, 20

# What the look found, in one wording for the worker's log and the stats' warnings (health.py).
# Examples are quoted, not repr'd: an escaped name's backslashes stay single.
SAID = {
    "untracked": "{count} directory(ies) in the root are not on the books, e.g. '{example}' "
    "(lost registrations?): their bytes fill the disk but are not counted against the quota; "
    "`cachemgr reconcile` books them",
    "stray_files": "{count} file(s) in the root ({bytes} bytes) are outside every download "
    "directory, e.g. '{example}': no cleanup counts or deletes them; move them into a download "
    "or remove them",
    "unlisted": "{count} directory(ies) in the root cannot be listed, e.g. '{example}' "
    "(permissions?): the downloads inside them are neither counted nor cleaned; make them "
    "readable to the workers",
    "unnamable": "{count} directory(ies) in the root have names cachemgr cannot book (not "
    "UTF-8, or read as a path: a leading backslash, a percent-encoded '..'), e.g. "
    "'{example}': their bytes are never counted nor cleaned; rename them",
    "unowned": "{count} directory(ies) in the root hold a .cachemgr-books marker naming no "
    "node of this cluster, e.g. '{example}': taken for another cache's root, no cache counts "
    "or cleans their bytes; remove the marker if it came with a download, or start that "
    "cache's workers",
}


def said(kind: str, count: int, example: str | None, size: int = 0) -> str:
    """SAID[kind] for `count` of them (`size`: their bytes, for stray files)."""
    return SAID[kind].format(count=count, example=example, bytes=size)


def findings(
    found: dict[str, tuple[int, str | None]], stray_bytes: int, max_bytes: int
) -> list[tuple[str, str, bool]]:
    """(kind, what SAID says, loud) for each kind found (`found`: kind -> count, example):
    stray files under their share of the quota are counted, not warned of (cover art beside
    the albums)."""
    out = []
    for kind in SAID:
        count, example = found.get(kind, (0, None))
        if count:
            loud = kind != "stray_files" or strays_matter(stray_bytes, max_bytes)
            out.append((kind, said(kind, count, example, stray_bytes), loud))
    return out


def untracked(
    cache: DiskCache, *, older_than: float, batch: int = 1000, others: list[str] | None = None
) -> dict[str, Any]:
    """Directories at the entry depth, untouched since `older_than` (mtime: not being
    written), that are not tracked, nor inside or around a tracked one: {count, examples}.
    `others` gets the files met on the way (scanner.directories_at_depth); `unlisted`, the
    directories above the entry depth that could not be listed, `unnamable`, those whose
    names no reconcile can book (paths.unbookable), each with one example."""
    depth = cache.settings.disk_cache_entry_depth
    found: list[str] = []
    count = 0
    chunk: list[str] = []
    unnamable: list[str] = []
    unowned: list[str] = []
    kept: list[set[str]] = []

    def owned() -> set[str]:
        """The books the cluster's nodes keep, read once a look (only if a marker is met)."""
        if not kept:
            entries = cache.registry.entries()
            kept.append({books_of(route_of(name, entries).key_prefix) for name in entries})
        return kept[0]

    def check() -> None:
        nonlocal count
        covered = _covered(cache, chunk)  # inside one registered off the entry depth
        for path, tracked in zip(chunk, _tracked(cache, chunk), strict=True):
            if tracked or path in covered:
                continue
            if paths.unbookable(path):
                unnamable.append(paths.shown(path))
                continue
            if not _settled(cache, path, older_than):
                continue
            if _holds_tracked(cache, path):  # one registered below the entry depth
                if others is not None:
                    others.extend(_beside_tracked(cache, path))
                continue
            # Holds another cache's root: no reconcile books it (its real runs say so among
            # their errors). One no node of the cluster keeps (an empty marker, one that came
            # with a download) is counted: its bytes were nobody's, unsaid.
            own = mounts.root_own(cache.root, path, depth) or nested.this_root(cache.root, path)
            other = None
            if not own:  # the walk last: it reads a marker in every folder
                other = nested.other_root(cache.root, path, cache.keys.prefix, walk=True)
            if other is not None or own:
                if other is not None and other[2] not in owned():
                    unowned.append(paths.shown(path))
                continue
            count += 1
            if len(found) < EXAMPLES:
                found.append(paths.shown(path))
        chunk.clear()

    blocked: list[str] = []
    roots: list[tuple[str, str]] = []  # other caches' roots at or above the entry depth
    for path in scanner.directories_at_depth(
        cache.root, depth, others=others, blocked=blocked, books=cache.keys.prefix, roots=roots
    ):
        chunk.append(path)
        if len(chunk) >= batch:
            check()
    check()
    unowned += [paths.shown(rel) for rel, theirs in roots if theirs not in owned()]
    unlisted = {"count": len(blocked), "example": paths.shown(blocked[0]) if blocked else None}
    misnamed = {"count": len(unnamable), "example": unnamable[0] if unnamable else None}
    nobody = {"count": len(unowned), "example": unowned[0] if unowned else None}
    return {"count": count, "examples": found, "unlisted": unlisted, "unnamable": misnamed,
            "unowned": nobody}  # fmt: skip


def strays(cache: DiskCache, found: list[str], *, older_than: float) -> dict[str, Any]:
    """Files and symlinks at or above the entry depth (`root/stray.flac`, a download's files
    written beside its directory) or beside a directory registered below it (`untracked`'s
    `others`), outside every tracked directory and untouched since
    `older_than` (ctime too: a file being written): no pass counts or deletes them.
    {files, bytes (allocated), example}."""
    files = size = 0
    example = None
    for i in range(0, len(found), 1000):
        chunk = found[i : i + 1000]
        covered = _covered(cache, chunk)  # inside one registered off the entry depth
        for path in chunk:
            if path in covered:
                continue
            try:
                st = os.lstat(cache.root / path)
            except OSError:  # gone meanwhile
                continue
            if max(st.st_mtime, st.st_ctime) >= older_than:
                continue
            files += 1
            size += st.st_blocks * 512
            example = example or paths.shown(path)
    return {"files": files, "bytes": size, "example": example}


def strays_matter(stray_bytes: int, max_bytes: int) -> bool:
    return stray_bytes >= STRAY_SHARE * max_bytes


def report(cache: DiskCache) -> dict[str, Any]:
    """`untracked`, for directories untouched for an interval (at least an hour: a long
    download writes into files, which leaves its directory's time as it was), and `strays`
    (as `stray`), the files met on the way. A look that failed is `{"error": why}`: the
    counts before it stand, said to be old."""
    # By this host's clock, as the file times it is compared with (the books' is Redis's).
    since = time.time() - max(cache.settings.disk_cache_cleanup_interval, 3600)
    others: list[str] = []
    try:
        found = untracked(cache, older_than=since, others=others)
        found["stray"] = strays(cache, others, older_than=since)
    except OSError as exc:  # the root unreadable now: said in the log, the cleanup stands
        log.warning("could not look for untracked directories: %s", exc)
        return {"error": str(exc)}
    except Exception as exc:  # a look, after the cleanup's work: it must not fail the cleanup
        log.exception("could not look for untracked directories")
        return {"error": f"{type(exc).__name__}: {exc}"}
    stray = found["stray"]
    counts = {
        "untracked": (found["count"], (found["examples"] or [None])[0]),
        "stray_files": (stray["files"], stray["example"]),
        "unlisted": (found["unlisted"]["count"], found["unlisted"]["example"]),
        "unnamable": (found["unnamable"]["count"], found["unnamable"]["example"]),
        "unowned": (found["unowned"]["count"], found["unowned"]["example"]),
    }
    max_bytes = cache.settings.disk_cache_max_bytes
    for kind, message, loud in findings(counts, stray["bytes"], max_bytes):
        log.log(logging.WARNING if loud else logging.INFO, "%s", message, extra={"event": kind})
    return found


def _tracked(cache: DiskCache, names: list[str]) -> list[bool]:
    """store.tracked, for names off the disk: one that is not UTF-8 cannot be tracked (no
    Redis key names it), and sending it failed every periodic cleanup."""
    ok = [name for name in names if paths.encodable(name)]
    hits = dict(zip(ok, cache.store.tracked(ok), strict=True))
    return [hits.get(name, False) for name in names]


def _covered(cache: DiskCache, names: list[str]) -> set[str]:
    """The names inside a tracked directory (one registered off the entry depth): counted
    there. One read for them all."""
    above = sorted({a for name in names for a in paths.ancestors(name)})
    tracked = {a for a, hit in zip(above, _tracked(cache, above), strict=True) if hit}
    return {name for name in names if any(a in tracked for a in paths.ancestors(name))}


def _settled(cache: DiskCache, path: str, older_than: float) -> bool:
    try:
        return os.lstat(cache.root / path).st_mtime < older_than
    except OSError:  # gone meanwhile, or unreadable: not said
        return False


def _holds_tracked(cache: DiskCache, path: str) -> bool:
    for depth in range(1, INSIDE_DEPTH + 1):
        below = scanner.directories_at_depth(cache.root / path, depth, disk_tops=False)
        inside = [f"{path}/{sub}" for sub in below]
        if not inside:
            return False
        if any(_tracked(cache, inside)):
            return True
    return False


def _beside_tracked(cache: DiskCache, path: str) -> list[str]:
    """The files in `path` (at the entry depth, holding a directory registered below it),
    INSIDE_DEPTH levels down, passing over what a look at the root passes over (the trash, a
    disk's own folders, another cache's root): the download's own files beside the part
    registered were on no books and in no warning. Those inside a tracked directory are
    among them, for `strays` to pass over (_covered), as it does the root's."""
    found: list[str] = []
    for _ in scanner.directories_at_depth(
        cache.root / path, INSIDE_DEPTH, others=found, books=cache.keys.prefix
    ):
        pass
    return [f"{path}/{rel}" for rel in found]


def gone(
    cache: DiskCache, *, batch: int = 1000, budget: float = GONE_SECONDS
) -> dict[str, Any]:
    """Tracked directories no longer on the disk (deleted by hand, or a file or symlink put in
    their place): untracked as vanished (deletion.untrack_gone: never deleting; still gone
    under the lock, the root the books'), so that their bytes stop counting against the quota:
    each had a real download evicted in its place. Bounded: `budget` seconds a look, resumed
    where it stopped (cache:gone_cursor), at most GONE_AT_MOST untracked. Refused, said, when
    most of a look is missing (a disk not mounted); one missing under the bare mount point a
    disk under the root leaves, not mounted (mounts.under_bare_mount), is kept, said, for
    reconcile to decide.
    {count, examples, kept, kept_example} (and `refused`)."""
    client, key = cache.client, cache.keys.gone_cursor
    cursor = int(client.get(key) or 0)
    deadline = time.monotonic() + budget
    taken: list[str] = []
    kept: list[str] = []
    seen = missing = 0
    while True:
        cursor, items = client.zscan(cache.keys.lru, cursor, count=batch)
        seen += len(items)
        found = {p: paths.kind_at(cache.root, p) for p, _ in items}
        lost = [p for p, kind in found.items() if kind in ("missing", "other")]
        missing += len(lost)
        if missing >= GONE_SHARE_FLOOR and missing * 2 > seen:
            refused = (
                f"{missing} of {seen} tracked directories looked at are missing from the disk: "
                "taken for a disk not mounted, not untracked; if they were removed on purpose, "
                "`cachemgr reconcile` untracks them"
            )
            log.warning("%s", refused, extra={"event": "gone_refused"})
            client.delete(key)
            return _gone_found(taken, kept, refused)
        entries = cache.store.entries([(p, None) for p in lost])
        absent = [e for e in entries if found[e.path] == "missing"]
        doubtful = mounts.under_bare_mount(cache, absent)
        kept += [paths.shown(p) for p in lost if p in doubtful]
        for entry in entries:
            if entry.path in doubtful:
                continue
            if deletion.untrack_gone(cache, entry) == "vanished":  # looked at again, locked
                taken.append(paths.shown(entry.path))
        if cursor == 0 or len(taken) >= GONE_AT_MOST or time.monotonic() >= deadline:
            break
    if cursor:
        client.set(key, cursor)
    else:
        client.delete(key)
    if taken:
        log.warning(
            "%d tracked directory(ies) were gone from the disk, e.g. '%s' (deleted by hand?): "
            "untracked, counted as vanished",
            len(taken),
            taken[0],
            extra={"event": "gone"},
        )
    if kept:
        log.warning(
            "%d tracked directory(ies) are missing in a directory that is empty and "
            "unchanged since they were booked, e.g. '%s' (a disk under the root not "
            "mounted?): kept on the books; `cachemgr reconcile` untracks them if they were "
            "removed on purpose",
            len(kept),
            kept[0],
            extra={"event": "gone_kept"},
        )
    return _gone_found(taken, kept)


def _gone_found(taken: list[str], kept: list[str], refused: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {"count": len(taken), "examples": taken[:EXAMPLES]}
    found |= {"kept": len(kept), "kept_example": kept[0] if kept else None}
    return found | ({"refused": refused} if refused else {})
