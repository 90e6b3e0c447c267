"""Reconcile the books with the disk, as nginx's cache loader rebuilds its index on start.

Walks the entry depth of the root: directories on disk but not tracked are registered, entries
whose directory is gone are untracked, sizes that drifted are corrected, `cache:bytes` is
recomputed from the records, and the trash is emptied. A dry run reports the same plan and
changes nothing. Reconcile is the only operation that marks the books as initialized.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cachemgr import (
    checks,
    history,
    marker,
    migrations,
    mounts,
    paths,
    registration,
    scanner,
    trash,
)
from cachemgr.cache import DiskCache
from cachemgr.errors import CacheError
from cachemgr.locks import Keeper, Lock
from cachemgr.recount import recount
from cachemgr.registration import Booking
from cachemgr.switch import disabled

log = logging.getLogger("cachemgr")

Progress = Callable[[int, int, str], None]  # (done, total, path)
ADOPTING_SECONDS = 60  # cache:adopting's life, renewed from a thread while a forced walk runs
MAX_WALK_SECONDS = 86400  # a forced walk that hangs longer no longer keeps cleanups skipping


class ReconcileBusy(CacheError):
    code = "busy"


def reconcile(
    cache: DiskCache,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    heartbeat: Callable[[], object] | None = None,
    force: bool = False,
    started: float | None = None,
) -> dict[str, Any]:
    """`heartbeat` (the caller's own lock, a cleanup's) is kept alive as the walk goes.
    `force`: go on over an empty root though the books track directories (they were removed
    on purpose); without it that looks like an unmounted disk and is refused. `started`: when
    the cleanup that runs this began (a rebuild's hold counts from it), else now."""
    started = cache.clock() if started is None else started
    checks.flag("dry_run", dry_run)
    checks.flag("force", force)
    if not dry_run and not cache.settings.enable_disk_cache_management:
        # a plan changes nothing: it is a read, and reads still work
        return disabled("reconcile")
    if not force and cache.client.exists(cache.keys.adopting):
        # The root is refused until the adoption ends, as if one had been cut short: that
        # said to run another.
        raise ReconcileBusy("a reconcile --force is adopting the root: try again once it ends")
    cache.check_root(force=force)
    timeout_ms = cache.settings.disk_cache_lock_timeout_seconds * 1000
    lock = Lock(cache.client, cache.keys.reconcile_lock, timeout_ms, from_dead=True)
    if not dry_run and not lock.acquire():
        raise ReconcileBusy("a reconcile is already running")

    def tick(done: int, total: int, path: str) -> None:
        if not dry_run and done % 100 == 0:
            lock.extend()  # alive while it makes progress; lapses soon after a crash
            if heartbeat is not None:
                heartbeat()
        if progress:
            progress(done, total, path)

    # The root is adopted at the end, once the walk is done (one cut short leaves it refused,
    # as before); the cleanups that beat sends meanwhile skip their refusal instead of each
    # being recorded as failed (a new disk has no marker yet, an emptied one is empty). The
    # mark is kept alive from a thread, through slow scans too: a crashed walk's lapses soon.
    adopting = Lock(cache.client, cache.keys.adopting, int(ADOPTING_SECONDS * 1000))
    keeper = None
    try:
        if force and not dry_run:
            # Taken over, not waited for: a crashed walk's mark is no one's (this holds the
            # reconcile lock), and lapses by itself anyway.
            cache.client.set(adopting.key, adopting.token, px=adopting.timeout_ms)
            keeper = Keeper(adopting, every=ADOPTING_SECONDS / 4, at_most=MAX_WALK_SECONDS)
            keeper.start()
            # Until its end, no disk is the books': a walk cut short (Ctrl-C, a crash) has
            # half rewritten them, and the disk it replaced, mounted again, was taken for theirs.
            marker.cut_short(cache)
        return _reconcile(cache, dry_run=dry_run, progress=tick, started=started, force=force)
    finally:
        try:
            if keeper is not None:
                keeper.stop()
                adopting.release()
        finally:
            if not dry_run:
                lock.release()


def _carried(seed: dict[str, float], on_disk: list[str], depth: int) -> dict[str, float]:
    """The seed's last accesses (`seed`) for the directories found at the entry depth: its
    own, else the latest of those the seed booked inside it or above it (its paths at another
    depth than the entry depth: lost, the albums played lately went first)."""
    disk = set(on_disk)
    out: dict[str, float] = {}
    shallow: dict[str, float] = {}
    for path, last in seed.items():
        parts = path.split("/")
        if len(parts) < depth:
            shallow[path] = last
            continue
        top = "/".join(parts[:depth])
        if top in disk:
            out[top] = max(out.get(top, last), last)
    for found in on_disk if shallow else ():
        for above in paths.ancestors(found):
            if above in shallow:
                out[found] = max(out.get(found, shallow[above]), shallow[above])
    return out


def _untracked(on_disk: list[str], tracked: set[str]) -> list[str]:
    """Directories at the entry depth the books do not cover: neither tracked, nor holding a
    tracked entry, nor inside one."""
    covering = {a for p in tracked for a in paths.ancestors(p)}
    return [
        d
        for d in on_disk
        if d not in tracked
        and d not in covering
        and not any(a in tracked for a in paths.ancestors(d))
    ]


def _reconcile(
    cache: DiskCache, *, dry_run: bool, progress: Progress | None, started: float, force: bool
) -> dict[str, Any]:
    store = cache.store
    if not dry_run:
        migrations.ensure_record_ids(store)
    bytes_before = store.total_bytes()  # what the books said before any fix, dry run or not
    unrecorded: dict[str, float] = {}
    records = store.all_records(unrecorded=unrecorded)
    seed = {} if dry_run else unrecorded  # the seed's books: path -> its last access there
    if not dry_run:
        migrations.seed_books(store, seed, cache.settings.disk_cache_lock_timeout_seconds)
    blocked: list[str] = []
    depth = cache.settings.disk_cache_entry_depth
    on_disk = list(
        scanner.directories_at_depth(cache.root, depth, blocked=blocked, books=cache.keys.prefix)
    )
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "registered": [],
        "untracked": [],
        "resized": [],
        "unreadable": [],
        "errors": [],
    }
    # Booked by the seed at another depth than the entry depth: their times go to the
    # directories at it; they leave cache:lru with the others, once the walk is done.
    carried = _carried(seed, on_disk, depth)
    for path in blocked:  # what is inside is not seen: neither booked nor untracked
        error = "cannot be listed (permissions?): the downloads inside it are not seen"
        _said(report, "errors", path, error=error)
    # Until the vanished are known: counting the tracked twice (on the books and on disk) left
    # the CLI's bar at 50% when nothing was untracked.
    untracked = _untracked(on_disk, set(records))
    total = len(records) + len(untracked)

    # Books lost (books_were_lost: the root's marker, or books empty) being rebuilt from the
    # disk. A new install's reconcile, whose pipeline has been filling the books, is none:
    # what it finds is booked when it was written (registration.as_written) and nothing is held.
    rebuilding = (
        not dry_run
        and not cache.client.exists(cache.keys.initialized)
        and marker.books_were_lost(cache)
    )
    report["rebuilt"] = False
    times: dict[str, float] = {}
    as_written = registration.as_written(cache)
    seed_times = registration.last_accessed(cache, carried)

    def one(done: int, path: str) -> None:
        if progress:
            progress(done, total, path)
        # The seed's books are not lost: what they name is booked at its last access there,
        # the rest when it was written.
        at: Booking = seed_times.get(path)
        if at is None:
            at = times.get(path) if rebuilding and not seed else as_written
        try:
            _reconcile_one(cache, path, records.get(path), dry_run, report, at)
        except (CacheError, OSError) as exc:  # one unreadable directory stops nothing else
            _said(report, "errors", path, error=str(exc))

    for done, path in enumerate(sorted(records), 1):
        one(done, path)
    # What is untracked is worked out once the vanished entries are gone: a directory that only
    # covered a vanished entry is then registered in this same pass.
    tracked = set(records) - set(report["untracked"])
    # One tracked directory inside another (the outer registered while the inner was gone
    # from disk, which is all its scan could see): the inner's bytes counted twice. The outer
    # stays, its scan counts them once.
    for path in sorted(p for p in tracked if any(a in tracked for a in paths.ancestors(p))):
        if dry_run or _untrack_inside(cache, path, records[path]):
            report["untracked"].append(path)
            tracked.discard(path)
    if tracked != set(records):  # some vanished or were inside others: worked out again
        # Untracked and still there: none of the downloads (DiskCache.not_a_download), done.
        done_with = set(report["untracked"]) & set(on_disk)
        untracked = [p for p in _untracked(on_disk, tracked) if p not in done_with]
        total = len(records) + len(untracked)
    if rebuilding:
        times = registration.found_again(cache, untracked)
    for done, path in enumerate(untracked, len(records) + 1):
        one(done, path)
    if rebuilding and report["registered"]:
        report["rebuilt"] = True
        # Pins were lost with the books; their holders renew them within a lease: eviction
        # waits until just before the next periodic cleanup (beat's, an interval after the
        # one that began this), the quota passes that registrations send meanwhile too.
        interval = history.beat_interval(cache)
        until = started + interval - max(1, min(60, interval // 10))
        now = cache.clock()
        hold = max(1, int(until - now))
        report["held_until"] = now + hold
        cache.client.set(cache.keys.evict_hold, f"{report['held_until']:.3f}", ex=hold)
        log.warning("books rebuilt from the disk: eviction waits %d s for pins to be renewed", hold)
    if seed and not dry_run:
        # Booked now, or never to be (gone, covered by a tracked directory, refused): off
        # cache:lru. One its lock kept from being booked ("next time") stays for the next.
        later = {e["path"] for e in report["errors"] if str(e["error"]).endswith("next time")}
        migrations.drop_unrecorded(store, [p for p in seed if paths.shown(p) not in later])
    report["bytes_before"] = bytes_before
    in_flight = cache.settings.disk_cache_lock_timeout_seconds  # a deletion's slot, its lock's
    if dry_run:
        report["trash_items"] = trash.pending(cache.root, in_flight, depth)
    else:
        report["trash_items"] = trash.empty(cache.root, in_flight, depth)
        mounts.note_mounts(cache, anew=True)  # it decided what is gone: those mounted now
        report["bytes_after"] = recount(cache)
        # What it booked may pass the threshold, as a registration may: the caller sends the
        # quota pass (quota.quota_pass_due), or the disk stayed over it until beat's next run.
        report["over_threshold"] = report["bytes_after"] > cache.settings.threshold_bytes
        report["low_disk"] = cache.free_space_short() > 0
        cache.client.set(cache.keys.initialized, "1")
        marker.remember(cache, anew=force)
        if history.root_mended(cache):
            log.info("reconcile: the last cleanup's refusal (the cache root) is resolved")
        history.reconciled(cache)  # what beat's last cleanup asked a reconcile for is done
        log.info(
            "reconcile: %d registered, %d untracked, %d resized, cache:bytes %d -> %d",
            len(report["registered"]),
            len(report["untracked"]),
            len(report["resized"]),
            report["bytes_before"],
            report["bytes_after"],
        )
    if report["unreadable"]:
        first = report["unreadable"][0]
        log.warning(
            "reconcile: %d tracked directories hold subdirectories the worker cannot read, "
            "e.g. %r in %r (permissions?): their sizes count only what it can",
            len(report["unreadable"]),
            first["example"],
            first["path"],
            extra={"event": "unreadable"},
        )
    if report["errors"]:  # said in the log too, not only in a task's result nobody reads
        first = report["errors"][0]
        log.warning(
            "reconcile: %d directories left as they were, e.g. %r: %s",
            len(report["errors"]),
            first["path"],
            first["error"],
            extra={"event": "reconcile_errors"},
        )
    return report


def _said(report: dict[str, Any], part: str, path: str, **what: str) -> None:
    """One item of the report's `errors` or `unreadable`: names read off the disk that are not
    UTF-8 shown with backslash escapes (raw, no JSON encoder took the reply: the API's 500)."""
    shown = {key: paths.shown(value) for key, value in what.items()}
    report[part].append({"path": paths.shown(path), **shown})


def _untrack_inside(cache: DiskCache, path: str, record: tuple[int, int, str, int]) -> bool:
    lock = cache.lock(path)
    if not lock.acquire():
        return False
    try:
        done = cache.store.claim(path, "vanished", honour_pins=False, deleting_files=False,
                                 expect_registered=record[2], lock_token=lock.token)  # fmt: skip
    finally:
        lock.release()
    if done[0] != "ok":  # registered again or removed meanwhile: not this pass's to say
        return False
    log.warning("reconcile: %s untracked: it is inside a tracked directory", path)
    return True


def _reconcile_one(
    cache: DiskCache,
    path: str,
    record: tuple[int, int, str, int] | None,
    dry_run: bool,
    report: dict[str, Any],
    at: Booking = None,
) -> None:
    try:
        location: Any = paths.resolve(cache.root, path)
        on_disk = paths.kind(location)
        if on_disk == "unknown":
            _said(report, "errors", path, error="cannot inspect it now; kept")
            return
        exists = on_disk == "dir"
    except paths.PathError:
        if record is None:
            raise
        # a parent became a symlink: the directory is gone from under the root, as take() says
        location, exists = None, False
    if record is None:
        if dry_run:
            try:  # the real run's scan opens it first: a plan must not book what it cannot
                scanner.check_readable(location)
            except OSError as exc:
                _said(report, "errors", path, error=scanner.cannot_read(path, exc))
                return
            held = cache.not_a_download(path, walk=True)  # the real run's registration's
            if held is not None:
                _said(report, "errors", path, error=held)
                return
            report["registered"].append(path)
        else:
            done = cache.register(path, at=at)
            # Not new: the pipeline's own registration got there first (on a new install the
            # two race): it was on the books already.
            if done.get("status") == "registered" and done.get("new"):
                report["registered"].append(path)
            elif done.get("status") == "skipped":  # a lock (a worker killed mid-scan?): said
                _said(report, "errors", path, error=f"not booked: {done['reason']}; next time")
            if done.get("unreadable"):
                _said(report, "unreadable", path, example=done["unreadable"][0])
        return
    if dry_run:
        _report(report, path, record, _compare(cache, path, location, exists, record, report))
        return
    lock = cache.lock(path)  # a registration or deletion of this path waits, and vice versa
    if not lock.acquire():
        _said(report, "errors", path, error="locked by another worker; next time")
        return
    try:
        change = _compare(cache, path, location, exists, record, report)
        if change == "vanished" or isinstance(change, NotADownload):
            done = cache.store.claim(
                path, "vanished" if change == "vanished" else "removed", honour_pins=False,
                deleting_files=False, expect_registered=record[2], lock_token=lock.token,
            )  # fmt: skip
            applied = done[0] == "ok"
            if applied and isinstance(change, NotADownload):
                # Booked before it could be told: counted, it had real downloads evicted.
                log.warning("%s: untracked, its files kept", change,
                            extra={"event": "removed", "path": path})  # fmt: skip
        elif isinstance(change, tuple):
            delta = cache.store.resize(path, *change, was=record[:3], lock_token=lock.token)
            applied = delta is not None
        else:
            return
    finally:
        lock.release()
    if applied:  # else changed by another meanwhile (registered again, removed): theirs stands
        _report(report, path, record, change)
    else:
        _said(report, "errors", path, error="changed by another meanwhile; left as it is now")


def _report(
    report: dict[str, Any], path: str, record: tuple[int, int, str, int], change: Change
) -> None:
    """A change made (or, in a plan, to be made) in the report."""
    if change == "vanished" or isinstance(change, NotADownload):
        report["untracked"].append(path)
    elif isinstance(change, tuple):
        report["resized"].append({"path": path, "old_bytes": record[0], "new_bytes": change[0]})


class NotADownload(str):
    """Why a booked directory is none of this cache's downloads (DiskCache.not_a_download)."""


# What differs between a record and its directory: gone from disk, none of the downloads, a
# new size, or nothing.
Change = str | tuple[int, int] | None


def _compare(
    cache: DiskCache,
    path: str,
    location: Any,
    exists: bool,
    record: tuple[int, int, str, int],
    report: dict[str, Any],
) -> Change:
    """What differs between a record and its directory: `vanished`, NotADownload, (size,
    files) or None."""
    if not exists:
        return "vanished"
    found = scanner.scan(location, collect_subdirs=True)
    own = cache.not_a_download(path, below=found.subdirs)
    if own is not None:
        return NotADownload(own)
    if found.unreadable:  # its size counts only what the worker can read: said, each time
        _said(report, "unreadable", path, example=found.unreadable[0])
    if (found.size_bytes, found.file_count) == (record[0], record[1]):
        return None
    return found.size_bytes, found.file_count
