"""Taking a directory off the books and its files off the disk: a removal asked for by name,
and a directory a cleanup chose (expired or evicted), re-checked before its files go."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cachemgr import checks, journal, mounts, paths, trash
from cachemgr.errors import DELETE_FAILED, DeleteFailed
from cachemgr.locks import HOLDER_WAITS
from cachemgr.logs import Repeats

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache
    from cachemgr.records import Entry

log = logging.getLogger("cachemgr")
# How long a removal waits for another's lock on the directory before it is sent again.
REMOVE_WAITS = HOLDER_WAITS
# A directory that cannot be deleted is said once in this many seconds (each cleanup's record
# and the stats count every failure).
DELETE_FAILED_REPEAT_SECONDS = 600.0
_REPEATS = Repeats(DELETE_FAILED_REPEAT_SECONDS)


def remove(
    cache: DiskCache, path: str, *, remove_files: bool = False, missing_ok: bool = False
) -> dict[str, Any]:
    """DiskCache.remove: untrack a directory, delete its files when asked."""
    # A truthy "0" would delete the files of a pinned directory: pins bind only removals
    # that delete.
    checks.flag("remove_files", remove_files)
    checks.flag("missing_ok", missing_ok)
    rel = paths.normalize(path)
    if remove_files:  # not on a root that is not the books' (a mount point, unmounted)
        cache.check_root(allow_empty=True)
    location = paths.resolve(cache.root, rel) if remove_files else None
    lock = cache.lock(rel)
    # A registration holds it for a scan (under a second), a cleanup for a deletion.
    if not lock.acquire_within(REMOVE_WAITS):
        cache.store.count("skipped_locked")
        # retry_after: when the holder's lock lapses (the task is sent again by then).
        after = lock.lapses_in()
        return {"status": "skipped", "reason": "locked", "path": rel, "retry_after": after}
    try:
        on_disk = paths.kind(location) if location is not None else None
        if on_disk == "unknown":
            raise DeleteFailed(f"cannot inspect {rel!r} now (permissions, I/O): kept")
        deleting = on_disk == "dir"
        left: list[str] | None = []
        def claim() -> list[Any]:
            return cache.store.claim(
                rel,
                "removed",
                now=cache.clock(),
                honour_pins=remove_files,
                deleting_files=deleting,
                lock_token=lock.token,
            )

        outcome = claim()
        if outcome[0] == "gone" and journal.held(cache.store, rel):
            # Claimed by a deletion that was interrupted (this removal before its redelivery,
            # a Redis blip, a cleanup's crash): settled as the next cleanup would, it goes as
            # asked now; otherwise that cleanup would put it back, the removal lost. Not on
            # a root that is not the books' (an unmounted disk shows it missing: "deleted").
            cache.check_root(allow_empty=True)
            if journal.settle(cache, rel) == "restored":
                outcome = claim()
        if outcome[0] == "gone":
            if missing_ok:
                return {"status": "not_tracked", "path": rel}
            raise journal.not_tracked(cache.store, rel)
        if outcome[0] != "ok":
            return {"status": "skipped", "reason": outcome[0], "path": rel}
        if deleting:
            try:
                left = delete_files(cache, rel, walk=True)  # None: gone meanwhile
                deleting = left is not None
            except trash.Kept as kept:
                return {"status": "skipped", "reason": kept.why, "path": rel}
    finally:
        lock.release()
    size = int(outcome[1])
    log.info(
        "removed %s from the cache (%d bytes, files deleted: %s)",
        rel,
        size,
        deleting,
        extra={"event": "removed", "path": rel, "size_bytes": size, "files_deleted": deleting},
    )
    done = {"status": "removed", "path": rel, "size_bytes": size, "files_deleted": deleting}
    if on_disk == "other":  # said: files_deleted false read as "not asked" or "gone already"
        what = "a symlink" if location is not None and location.is_symlink() else "a file"
        done["warning"] = (
            f"{rel!r} is {what} now, not the directory booked: untracked, nothing deleted "
            "(what is there is left where it is; nothing behind a symlink is followed)"
        )
        log.warning("removal of %s: %s", rel, done["warning"])
    if left:  # moved into the trash, some of it not deleted yet: the next cleanup retries
        done["trash_left"] = len(left)
        # files_deleted says they left their place; what still fills the disk is said too.
        done["warning"] = (
            f"{len(left)} item(s) moved into the trash could not be deleted yet ({left[0]}): "
            "their bytes fill the disk, off the books, until a cleanup deletes them"
        )
    return done


def delete_files(cache: DiskCache, rel: str, walk: bool = False) -> list[str] | None:
    """Delete a claimed directory's files: what the trash could not delete yet, or None when
    they were gone already (removed meanwhile: counted as vanished). If it cannot be moved
    out of its place, put it back on the books; once moved into the trash it is gone from the
    cache, and what could not be deleted waits there for the next cleanup's `trash.empty`.
    Raises trash.Kept when, moved aside, it turned out no longer ours to delete (pinned since
    the claim: put back on the books; put back by another: left to them), and DeleteFailed,
    put back on the books, when it is none of the downloads' or cannot be moved. `walk`:
    look through its folders for another cache's root first (take() has walked it already)."""

    def still_ours() -> str | None:
        why = cache.store.still_ours(rel, cache.clock())
        return None if why == "ok" else why

    own = cache.not_a_download(rel, walk=walk)  # take() walked it already: not again
    if own is not None:  # booked by an older version, which registered such names
        cache.store.restore(rel, now=cache.clock())
        log.error("%s: its files are not deleted, kept on the books", own)
        raise DeleteFailed(
            f"{DELETE_FAILED} {rel!r}: {own}; kept on the books (untrack it: cachemgr rm "
            "without --files)"
        )

    try:
        if cache.before_delete is not None:
            cache.before_delete(rel)
        left = trash.discard(cache.root, rel, still_ours, cache.settings.disk_cache_entry_depth)
    except trash.Kept as kept:
        if kept.why == "pinned":
            cache.store.restore(rel, now=cache.clock())
            cache.store.count("skipped_pinned")
        log.info("%s: not deleted, %s since it was chosen", rel, kept.why)
        raise
    except OSError as exc:
        if paths.kind_at(cache.root, rel) == "missing":
            # Removed meanwhile (by hand, by the pipeline): nothing to put back, and a
            # directory registered above it since would overlap the restored entry.
            cache.store.finish_deletion(rel, now=cache.clock(), deleted=False)
            log.warning("%s was gone before its deletion: counted as vanished", rel)
            return None
        cache.store.restore(rel, now=cache.clock())
        # Every quota pass meets it first again: said once in a while, counted always.
        level = logging.ERROR if _REPEATS.due(f"delete:{rel}") else logging.DEBUG
        log.log(level, "could not delete %s, kept on the books: %s", rel, exc)
        raise DeleteFailed(f"{DELETE_FAILED} {rel!r}: {exc.strerror or exc}") from None
    if left:
        log.warning(
            "%s: moved to the trash, but %d item(s) could not be deleted yet (%s)",
            rel,
            len(left),
            left[0],
            extra={"event": "trash_left", "path": rel},
        )
    cache.store.finish_deletion(rel, now=cache.clock())
    return left


def untrack_gone(cache: DiskCache, entry: Entry) -> str:
    """Untrack a directory found gone from the disk (or a file or symlink in its place),
    counted as vanished; never deletes. Under its lock it must still be gone (not downloaded
    again meanwhile: `changed`), the root the books' (RootMissing otherwise), and the entry as
    read (`changed` otherwise)."""
    lock = cache.lock(entry.path)
    if not lock.acquire():
        return "locked"
    try:
        if paths.kind_at(cache.root, entry.path) not in ("missing", "other"):
            return "changed"  # a directory again (downloaded meanwhile), or cannot be told
        cache.check_root()  # an unmounted disk shows every directory missing
        outcome = cache.store.claim(
            entry.path,
            "vanished",
            now=cache.clock(),
            expect_registered=entry.registered,
            expect_last_access=entry.last_access,
            deleting_files=False,
            lock_token=lock.token,
        )
        if outcome[0] != "ok":
            return str(outcome[0])
        log.warning(
            "vanished: %s was gone from the disk, or is no directory now (deleted outside "
            "cachemgr?): untracked",
            entry.path,
            extra={"event": "vanished", "path": entry.path},
        )
        return "vanished"
    finally:
        lock.release()


def take(cache: DiskCache, entry: Entry, reason: str, *, min_age_seconds: int = 0) -> str:
    """Delete a directory a cleanup chose if it is still what was chosen; `ok` or why not.

    Under the directory's lock, the claim re-checks atomically that the entry has the same
    registration and last access, is not pinned and the lock is still ours; only then do
    its files go. Raises DeleteFailed (the entry stays on the books) when they cannot.
    """
    lock = cache.lock(entry.path)
    if not lock.acquire():
        cache.store.count("skipped_locked")
        return "locked"
    try:
        on_disk = paths.kind_at(cache.root, entry.path)
        if on_disk in ("unsafe", "unknown"):
            # A parent became a symlink since registration, or EACCES/EIO: not to be taken
            # for gone. Kept on the books (reconcile decides), the pass goes on, and counts
            # it among what it could not delete (a short quota pass had blamed nothing).
            why = "a parent is a symlink" if on_disk == "unsafe" else "cannot inspect it now"
            raise _kept(entry.path, reason, why)
        # Booked by an older version, which registered such names: untracked, files kept.
        own = cache.not_a_download(entry.path, walk=True) if on_disk == "dir" else None
        gone = on_disk != "dir" or own is not None  # its files went without us: nothing freed
        if on_disk == "missing":
            cache.check_root()  # an unmount since the pass began: RootMissing, nothing untracked
            if mounts.under_bare_mount(cache, [entry]):
                # What beat's audit keeps on the books (a disk under the root not mounted),
                # a pass untracked as vanished: back on the disk, it was off the books.
                raise _kept(entry.path, reason, mounts.UNDER_BARE_MOUNT)
        outcome = cache.store.claim(
            entry.path,
            "removed" if own is not None else "vanished" if gone else reason,
            now=cache.clock(),
            expect_registered=entry.registered,
            expect_last_access=entry.last_access,
            deleting_files=not gone,
            min_age_seconds=min_age_seconds,
            lock_token=lock.token,
        )
        if outcome[0] != "ok":
            return str(outcome[0])
        if not gone:
            try:
                # Gone between the look and the move (the pipeline, by hand): nothing freed.
                return "vanished" if delete_files(cache, entry.path) is None else "ok"
            except trash.Kept as kept:
                return "pinned" if kept.why == "pinned" else "changed"
        elif own is not None:
            log.warning(
                "%s: taken off the books, its files kept (it was to be %s)",
                own,
                reason,
                extra={"event": "removed", "path": entry.path},
            )
            return "vanished"
        else:
            log.warning(
                "vanished: %s was no longer a directory (%s) when it was to be %s; untracked, "
                "nothing freed",
                entry.path,
                on_disk,
                reason,
                extra={"event": "vanished", "path": entry.path},
            )
            return "vanished"
    finally:
        lock.release()


def _kept(path: str, reason: str, why: str) -> DeleteFailed:
    """A directory a pass chose and keeps on the books, not taken for gone (`why`): said (once
    in a while: every pass meets it again) and counted among what it could not delete."""
    level = logging.WARNING if _REPEATS.due(f"delete:{path}") else logging.DEBUG
    log.log(level, "%s: %s kept on the books: %s", reason, path, why)
    return DeleteFailed(f"{DELETE_FAILED} {path!r}: {why}; kept on the books")
