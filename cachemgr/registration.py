"""Registration: a download's directory scanned and put on the books, the seed's
register_completed_download (the newest directory under the root), and the times a reconcile
books for the directories it finds (as written, or older than what came since a loss)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from cachemgr import journal, marker, mounts, paths, quota, recheck, scanner
from cachemgr.clock import on_the_books
from cachemgr.errors import NotOnDisk, Overlap, RecordCollision, RootMissing
from cachemgr.locks import HOLDER_WAITS
from cachemgr.records import record_id

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

# The time a registration books: now (None), a given time, or one read off the scan.
Booking = float | Callable[[scanner.ScanResult], float] | None
# How long a registration waits, in steps, for its directory, or one above it, to be
# registered or deleted.
REGISTER_WAITS = HOLDER_WAITS


def register(cache: DiskCache, path: str, at: Booking = None) -> dict[str, Any]:
    """DiskCache.register: scan, book under the directory's lock, and say what is amiss."""
    rel = paths.normalize(path)
    own = cache.not_a_download(rel)
    if own is not None:
        raise paths.PathError(own)
    lock = cache.lock(rel)
    # Held by a reconcile booking it, or a twin registration: theirs may be a scan of a
    # download still being written, so this one scans again once they are done.
    if not lock.acquire_within(REGISTER_WAITS):
        cache.store.count("skipped_locked")
        return _later(cache, rel, "locked", rel)
    try:
        if at is not None and cache.store.info(rel) is not None:
            # Registered meanwhile (the pipeline, during a rebuild): now it is. By its record:
            # the seed's books list it on cache:lru with none (migrations.seed_books).
            at = None
        for pause in (*REGISTER_WAITS, None):
            # Scanned again after each wait: a deletion above may have taken it meanwhile.
            try:
                found, outcome = _scan_and_book(cache, rel, lock.token, at)
                if outcome[0] == "claimed":
                    # A deletion of it interrupted (its worker killed, its lock lapsed):
                    # settled as the next cleanup would, under this lock, then booked.
                    journal.settle(cache, rel, registering=True)
                    found, outcome = _scan_and_book(cache, rel, lock.token, at)
            except NotOnDisk as exc:
                raise NotOnDisk(f"{exc}{_vanished(cache, rel, lock.token)}") from None
            if outcome[0] != "busy" or pause is None:
                break
            # The lock above held by a process known dead: let go, not waited out for the
            # lock timeout; its holder's work is done again or recovered, as at a lapse.
            cache.lock(outcome[1]).clear_if_dead()
            time.sleep(pause)  # a directory above is being registered or deleted
    finally:
        lock.release()
    if outcome[0] == "lock_lost":
        # The scan outlived the lock and another worker may have acted meanwhile: a scan as
        # long again would lose it again, so it is not tried again of itself.
        timeout = cache.settings.disk_cache_lock_timeout_seconds
        log.warning(
            "registration of %s: its scan outlived the directory's lock "
            "(DISK_CACHE_LOCK_TIMEOUT_SECONDS=%d): not booked; raise it and register it again",
            rel,
            timeout,
            extra={"event": "lock_lost", "path": rel},
        )
        return {"status": "skipped", "reason": "lock lost during the scan", "path": rel}
    if outcome[0] == "claimed":  # not settled: the disk cannot be looked at now (EACCES, EIO)
        reason = "a deletion of it was interrupted; the next cleanup settles it"
        return {"status": "skipped", "reason": reason, "path": rel}
    if outcome[0] == "busy":
        cache.store.count("skipped_locked")
        reason = f"{outcome[1]!r} above it is still being registered or deleted"
        return _later(cache, rel, reason, outcome[1])
    if outcome[0] == "overlap":
        raise Overlap(f"{rel!r} overlaps {outcome[1]!r}, which is tracked on its own")
    if outcome[0] == "collision":
        raise RecordCollision(
            f"{rel!r} cannot be tracked: its record id {record_id(rel)} is another tracked "
            "directory's (a 72-bit SHA-1 prefix collision); rename one of them"
        )
    total = int(outcome[3])  # the script's own INCRBY: no extra round trip
    log.info(
        "registered %s: %d bytes, %d files (cache total %d bytes)",
        rel,
        found.size_bytes,
        found.file_count,
        total,
        extra={"event": "registered", "path": rel, "size_bytes": found.size_bytes},
    )
    reply = {
        "status": "registered",
        "path": rel,
        "new": bool(int(outcome[1])),
        "size_bytes": found.size_bytes,
        "file_count": found.file_count,
        "delta_bytes": int(outcome[2]),
        "total_bytes": total,
        "over_threshold": total > cache.settings.threshold_bytes,
        "low_disk": quota.free_space_short(cache.settings) > 0,
    }
    notes = _notes(cache, rel, found)
    for event, note in notes:
        log.warning("registration of %s: %s", rel, note, extra={"event": event, "path": rel})
    if notes:
        reply["warning"] = "; ".join(note for _, note in notes)
    if found.unreadable:
        reply["unreadable"] = [paths.shown(name) for name in found.unreadable[:10]]
    return reply


def _later(cache: DiskCache, rel: str, reason: str, holder: str) -> dict[str, Any]:
    """A registration skipped for `holder`'s lock (the directory's own, or one above it), with
    `retry_after`: the seconds until that lock lapses (its holder may be a worker killed
    mid-scan), when a registration sent again finds it free."""
    after = cache.lock(holder).lapses_in()
    return {"status": "skipped", "reason": reason, "path": rel, "retry_after": after}


def _notes(cache: DiskCache, rel: str, found: scanner.ScanResult) -> list[tuple[str, str]]:
    """What a registration booked all the same but the operator must hear: (event, note)."""
    notes = []
    depth = cache.settings.disk_cache_entry_depth
    if rel.count("/") + 1 != depth:
        # Booked all the same (the pipeline decides what a download is), but reconcile
        # walks the entry depth only: after a loss of the books, its siblings go uncounted.
        notes.append((
            "depth_mismatch",
            f"{rel!r} is {rel.count('/') + 1} level(s) deep, DISK_CACHE_ENTRY_DEPTH is "
            f"{depth}: reconcile only finds directories at that depth; set it to match",
        ))  # fmt: skip
    target = cache.settings.target_bytes
    if found.size_bytes > target:
        # The quota too small for the downloads: the next pass evicts it at once.
        notes.append((
            "larger_than_quota",
            f"{rel!r} holds {found.size_bytes} bytes, more than the eviction target "
            f"({target} bytes of DISK_CACHE_MAX_BYTES {cache.settings.disk_cache_max_bytes}): "
            "no quota pass can bring usage under the target while it stays, and the next "
            "evicts the other directories, then it (unless pinned or young); raise the quota",
        ))  # fmt: skip
    if found.unreadable:
        notes.append((
            "unreadable",
            f"{len(found.unreadable)} subdirectory(ies) of {rel!r} could not be read (e.g. "
            f"{paths.shown(found.unreadable[0])!r}: permissions?): its size counts only what "
            "could be; make them readable to the workers and register it again",
        ))  # fmt: skip
    return notes

def _vanished(cache: DiskCache, rel: str, token: str) -> str:
    """A registration of a tracked directory gone from disk: the books counted it still
    (a hit for every access, bytes never there): off them now, as reconcile would, once
    the root is known to be mounted (RootMissing otherwise: nothing is untracked), and not
    under the bare mount point of a disk below the root not mounted (kept, as beat's audit
    and a pass keep it: re-registered then, its books went while its files were there)."""
    marker.check_root(cache)
    if paths.kind_at(cache.root, rel) != "missing":  # back already (a download replaced)
        return ""
    entry = cache.store.info(rel)
    if entry is not None and mounts.under_bare_mount(cache, [entry]):
        return f"; it is tracked and kept on the books: {mounts.UNDER_BARE_MOUNT}"
    taken = cache.store.claim(
        rel, "vanished", now=cache.clock(), honour_pins=False, deleting_files=False,
        lock_token=token,
    )  # fmt: skip
    if taken[0] != "ok":
        return ""
    log.warning("%s was tracked but is gone from disk: counted as vanished", rel)
    return "; it was tracked: taken off the books (counted as vanished)"

def _scan_and_book(
    cache: DiskCache, rel: str, token: str, at: Booking = None
) -> tuple[scanner.ScanResult, Any]:
    marker.check_registering(cache)
    away = mounts.not_mounted_above(cache, rel)
    if away is not None:
        raise RootMissing(
            f"{rel!r} is under {away!r}, where cleanups saw a disk mounted that is not mounted "
            "now: not booked (what is written there is hidden once the disk is back); mount it, "
            "then register again"
        )
    location = paths.existing_directory(cache.root, rel)
    try:
        found = scanner.scan(location, collect_subdirs=True)
    except scanner.TooDeep as exc:
        raise paths.PathError(f"{rel!r} cannot be sized: {exc.strerror}") from None
    except PermissionError as exc:
        raise paths.PathError(scanner.cannot_read(rel, exc)) from None
    except OSError as exc:  # replaced by a symlink or removed since the check
        raise paths.PathError(f"{rel!r} changed while it was scanned: {exc}") from None
    held = cache.not_a_download(rel, below=found.subdirs)  # another cache's root inside it
    if held is not None:
        raise paths.PathError(held)
    # A subdirectory whose name is not UTF-8 can never be tracked (no Redis key names it):
    # it cannot overlap, and sending it would fail the registration.
    subdirs = [s for s in found.subdirs if paths.encodable(s)]
    others = paths.ancestors(rel) + [f"{rel}/{sub}" for sub in subdirs]
    booked = cache.clock() if at is None else at(found) if callable(at) else at
    book = functools.partial(
        cache.store.register,
        rel,
        found.size_bytes,
        found.file_count,
        now=booked,
        must_not_be_tracked=others,
        lock_token=token,
    )
    pipe = cache.client.pipeline(transaction=False)  # one round trip for both
    book(queued=pipe)
    recheck.remember(cache, rel, booked, pipe)
    try:
        return found, cache.store.named_if_first(pipe.execute()[0])
    except redis.exceptions.NoScriptError:
        # The script not loaded yet (a new or restarted Redis): the registration did not
        # run; alone, the call loads it.
        outcome = book()
        recheck.remember(cache, rel, booked, cache.client)
        return found, outcome

def register_latest(cache: DiskCache) -> dict[str, Any]:
    """The seed's DownloadService.register_completed_download(): the newest directory."""
    # A root gone or unreadable holds no directory to find: said as such, not as "no download".
    marker.check_readable(cache, "no registration is booked")
    blocked: list[str] = []
    passed: list[str] = []
    depth = cache.settings.disk_cache_entry_depth
    newest = scanner.newest_directory(
        cache.root, depth, blocked=blocked, passed_over=passed, books=cache.keys.prefix
    )
    notes = []
    if passed:  # an older one is booked again (as just played): said, not in silence
        why = paths.unbookable(passed[0])
        notes.append(
            f"the newest directory, '{paths.shown(passed[0])}', has a name that cannot be "
            f"booked ({why}): rename it"
        )
    if blocked:  # the newest may be in there
        notes.append(
            f"{len(blocked)} directory(ies) above the entry depth cannot be listed, e.g. "
            f"'{paths.shown(blocked[0])}': the newest download may be inside; register it "
            "by its path"
        )
    for note in notes:
        log.warning("register_completed_download: %s", note, extra={"event": "latest"})
    if newest is None:
        said = "".join(f"; {note}" for note in notes)
        raise NotOnDisk(f"no download directory under the cache root {str(cache.root)!r}{said}")
    done = register(cache, newest)
    if notes:
        done["warning"] = "; ".join([*filter(None, [done.get("warning")]), *notes])
    return done


def found_again(cache: DiskCache, found: list[str]) -> dict[str, float]:
    """The access times to book for directories a rebuild finds on disk: older than anything
    registered or played since the books were lost (stamped `now`, they outranked those, and
    LRU evicted the pipeline's newest downloads first), oldest download (mtime) first, and no
    more than half a TTL back, so that none expires at once for having been found late (that
    bound wins where the two meet). Left out: those written since the first booking (a
    download not registered yet), which the caller books as now."""
    now, books = cache.clock(), on_the_books(cache)
    floor = now - cache.settings.disk_cache_ttl_seconds / 2
    oldest = cache.client.zrange(cache.keys.lru, 0, 0, withscores=True)
    since = min(oldest[0][1], now) if oldest else now  # the first booked since the loss
    start = max(since, floor)

    def mtime(path: str) -> float:
        try:
            return books((cache.root / path).stat().st_mtime)
        except OSError:
            return 0.0

    written = {path: mtime(path) for path in found}  # one stat each
    # One written since (a download not registered yet) is booked as now; a second's slack
    # for file systems whose clocks are coarse.
    ordered = sorted((p for p in found if written[p] < since - 1), key=written.__getitem__)
    n = len(ordered)
    return {path: max(floor, start - 0.001 * (n - i)) for i, path in enumerate(ordered)}


def last_accessed(cache: DiskCache, seen: dict[str, float]) -> dict[str, float]:
    """The access times to book for directories the seed's books name (`seen`: their last
    access there): those, but no more than half a TTL back, as found_again bounds them; the
    older ones kept in their order (not tied, in the walk's) just below that bound, so that
    every one played since ranks newer: above it, 5,000 of them outranked a directory
    played 5 s after it. A millisecond apart, and never past three quarters of a TTL back
    (none expires at once)."""
    ttl = cache.settings.disk_cache_ttl_seconds
    now = cache.clock()
    floor, lowest = now - ttl / 2, now - ttl * 3 / 4
    times = {path: min(now, last) for path, last in seen.items() if last >= floor}
    older = sorted((p for p, last in seen.items() if last < floor), key=seen.__getitem__)
    n = len(older)
    times.update((path, max(lowest, floor - 0.001 * (n - i))) for i, path in enumerate(older))
    return times


def as_written(cache: DiskCache) -> Callable[[scanner.ScanResult], float]:
    """The access time to book for a directory that a plain reconcile finds (its registration
    lost, or never sent): when its tree was last written. Booked as now, an album downloaded
    weeks ago outranked the pipeline's newest downloads, which LRU then evicted first. No more
    than half a TTL back, so that none expires at once for having been found late."""

    books = on_the_books(cache)

    def at(found: scanner.ScanResult) -> float:
        now = cache.clock()
        changed = books(found.changed)
        return min(now, max(changed, now - cache.settings.disk_cache_ttl_seconds / 2))

    return at
