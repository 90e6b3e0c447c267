"""The sweep and the quota pass: each one bounded pass, taking entries in an order until
enough is freed (run_pass, which both share).

Entries come in batches from `fetch`, each is decided
(pinned, too young, taken, gone from disk, changed since it was read), and the pass stops at
its need, its bound (DISK_CACHE_MAX_EVICTIONS_PER_RUN, a time budget: `more`) or a lost lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cachemgr.cache import DiskCache
from cachemgr.errors import DeleteFailed
from cachemgr.quota import HOLD_CEILING, ROOM_SHORT, Hold, Need, bytes_to_free, said_short
from cachemgr.records import Entry, PassResult, Removal

log = logging.getLogger("cachemgr")

LOCK_LOST = "cleanup lock lost: stopped early"
DEFAULT_TIME_BUDGET = 60.0


def run_pass(
    cache: DiskCache,
    result: PassResult,
    fetch: Callable[[int, int], list[Entry]],
    reason: str,
    *,
    bytes_needed: Need | None,
    dry_run: bool,
    min_age_seconds: int,
    time_budget: float,
    heartbeat: Callable[[], object] | None,
    usage: int | None = None,
    seen: set[str] | None = None,
) -> PassResult:
    """Take entries in the order `fetch(limit, offset)` gives until enough bytes are freed.

    `bytes_needed` None means take every entry fetch returns (the sweep). `heartbeat` runs
    before each batch and each deletion: it keeps the cleanup lock alive while the pass makes
    progress, and a False from it (the lock lapsed) stops the pass.
    """
    s = cache.settings
    now = cache.clock()
    started = time.monotonic()
    usage = result.usage_before if usage is None else usage
    # Off the books, and of those deleted here (a vanished directory frees no disk space).
    freed, deleted, offset = 0, 0, 0
    # Decided in this pass (and the rounds before it): one that comes back is passed over.
    seen = set() if seen is None else seen
    stopped = False

    def lost() -> bool:
        nonlocal stopped
        if not stopped and heartbeat is not None and heartbeat() is False:
            # The cleanup lock lapsed: another cleanup may be running; stop rather than race.
            # Said in the log too: the result alone said "done", and no line told why the
            # usage stayed above the target.
            result.errors.append(LOCK_LOST)
            log.warning(
                "%s (Redis or this worker held up past the lock's life): another cleanup may "
                "be running; the next one goes on",
                LOCK_LOST,
                extra={"event": "cleanup_lock_lost"},
            )
            stopped = True
        return stopped

    def enough() -> bool:
        return bytes_needed is not None and bytes_needed.met(freed, deleted)

    while True:
        if enough():
            break
        if len(result.removed) >= s.disk_cache_max_evictions_per_run or (
            time.monotonic() - started > time_budget
        ):
            result.more = True
            break
        if lost():
            break
        batch = fetch(s.disk_cache_batch_size, offset)
        if not batch:
            break
        for entry in batch:
            if enough():
                break
            if len(result.removed) >= s.disk_cache_max_evictions_per_run:
                break
            if not dry_run and lost():  # renewed before each deletion: a batch of slow
                break  # deletions must not outlast the lock and let a second cleanup in
            if entry.path in seen:
                offset += 1  # still in its place (below): decided once is enough
                continue
            seen.add(entry.path)
            try:
                outcome = _decide(cache, entry, reason, now, min_age_seconds, dry_run)
            except DeleteFailed as exc:  # kept on the books; the others still go
                # Put back where its policy puts a restored entry: in its place (lru), or
                # among the newest (sieve, 2q, gdsf), where the next candidate takes its
                # place. As a changed one: where it stayed, it comes back and is passed over.
                result.errors.append(str(exc))
                continue
            if outcome == "ok":
                freed += entry.size_bytes
                deleted += entry.size_bytes
                usage -= entry.size_bytes
                result.removed.append(Removal(entry.path, entry.size_bytes, reason, usage))
                if dry_run:
                    offset += 1  # nothing left the books, so the next one is further on
                continue
            if outcome == "vanished":  # off the books, but nothing was there to free
                freed += entry.size_bytes
                usage -= entry.size_bytes
                result.vanished.append(entry.path)
                continue
            if outcome == "changed":
                # Accessed, registered again or gone since the fetch: it has left this place
                # in the order, and the next candidate is here now. Where it has not (fifo
                # keeps an accessed entry in place), it comes back and is passed over then.
                result.skipped_changed.append(entry.path)
                continue
            offset += 1
            skipped = {
                "locked": result.skipped_locked,
                "pinned": result.skipped_pinned,
                "young": result.skipped_young,
            }
            skipped[outcome].append(entry.path)  # every other outcome is handled above
    result.usage_after = usage if dry_run else cache.store.total_bytes()
    return result


def _decide(
    cache: DiskCache, entry: Entry, reason: str, now: float, min_age: int, dry_run: bool
) -> str:
    if entry.pinned(now):
        if not dry_run:
            cache.store.count("skipped_pinned")
        return "pinned"
    if min_age and entry.registered_at > now - min_age:
        return "young"
    if dry_run:
        return "ok"
    outcome = cache.take(entry, reason, min_age_seconds=min_age)
    if outcome == "ok":
        log.info(
            "%s %s (%d bytes)",
            reason,
            entry.path,
            entry.size_bytes,
            extra={"event": reason, "path": entry.path, "size_bytes": entry.size_bytes},
        )
    return {"gone": "changed", "lock_lost": "locked"}.get(outcome, outcome)


def sweep(
    cache: DiskCache,
    *,
    dry_run: bool = False,
    time_budget: float = DEFAULT_TIME_BUDGET,
    heartbeat: Callable[[], object] | None = None,
) -> PassResult:
    """Delete the directories not accessed for DISK_CACHE_TTL_SECONDS, oldest first, pinned
    ones passed over, in one bounded pass (DISK_CACHE_MAX_EVICTIONS_PER_RUN, `time_budget`:
    `more` says some are left); a dry run lists them and deletes nothing."""
    cutoff = cache.clock() - cache.settings.disk_cache_ttl_seconds
    result = PassResult("sweep", usage_before=cache.store.total_bytes(), dry_run=dry_run)
    return run_pass(
        cache,
        result,
        lambda limit, offset: cache.store.expired(cutoff, limit, offset),
        "expired",
        bytes_needed=None,
        dry_run=dry_run,
        min_age_seconds=0,
        time_budget=time_budget,
        heartbeat=heartbeat,
    )


def sweeps(wanted: bool, automatic: bool, held: Hold | None) -> bool:
    """A registration's pass leaves expiry to beat's while eviction is held after a rebuild:
    the rebuilt books date each directory from the disk, and the pins went with the old
    ones; beat's own cleanup, at the hold's end, sweeps (it swept sooner, pins unrenewed).
    The scheduler stopped (a hold without end), nothing is swept: cleaning is what it stops."""
    if held is not None and held.until is None:
        return False
    return wanted and not (automatic and held is not None and not held.short)


def sweep_or_nothing(cache: DiskCache, wanted: bool, **kwargs: Any) -> PassResult:
    if wanted:
        return sweep(cache, **kwargs)
    total = cache.store.total_bytes()
    dry_run = bool(kwargs.get("dry_run", False))
    return PassResult("sweep", usage_before=total, usage_after=total, dry_run=dry_run)


def enforce_quota(
    cache: DiskCache,
    *,
    dry_run: bool = False,
    usage: int | None = None,
    time_budget: float = DEFAULT_TIME_BUDGET,
    skip: bool = False,
    resume: bool = False,
    heartbeat: Callable[[], object] | None = None,
    planned: PassResult | None = None,
    owed: int | None = None,
    held: Hold | None = None,
) -> PassResult:
    """Evict by the active policy what quota.bytes_to_free asks (usage past threshold x max
    down to target x max, the free-space floor's shortfall, or down to the target again with
    `resume`), in one bounded pass that goes round again for bytes booked meanwhile.
    `planned`: a dry run's sweep, whose directories this plan does not take again. `owed`:
    what the pass a bound interrupted still had to free (its `owed`), at most. `held`: eviction
    waits (quota.evict_held), but for the disk's shortfall of free space when it is short."""
    total = cache.store.total_bytes() if usage is None else usage
    result = PassResult("evict", usage_before=total, usage_after=total, dry_run=dry_run)
    skip = skip or (held is not None and not held.short)
    need = Need() if skip else bytes_to_free(cache, total, resume, held=held)
    if owed is not None:
        # Measured again, a free-space floor that deletions cannot lift (hard links, files
        # held open) would ask each continuation for as much again, and a chain of them
        # emptied the cache where one unbounded pass took a few.
        need = need.at_most(owed)
    if need.total <= 0:
        return result
    for_room = need.disk > 0  # short of the free-space floor: said if it stays short
    if not dry_run:
        log.info(
            "quota: %d bytes used, threshold %d%s: evicting %d bytes (%s)",
            total,
            cache.settings.threshold_bytes,
            # the free-space floor asks more than the quota (or alone): said, or the line
            # read as a quota eviction far below the threshold; held, what goes is the excess
            f", the disk {need.disk} {ROOM_SHORT}" if need.disk > need.books else (
                f", held: the bytes past {HOLD_CEILING} times the quota only"
                if held is not None else ""
            ),
            need.total,
            cache.settings.disk_cache_eviction_policy,
        )
    if not dry_run:
        # A warm-up the first eviction would settle in one long script: settle it in batches.
        # (A dry run leaves it; but one that meets a settle half done helps finish it, which
        # moves nothing off the books: Store.victims.)
        cache.store.settle(cache.settings.disk_cache_batch_size, step=heartbeat)
    started, usage = time.monotonic(), total
    seen = {r.path for r in planned.removed} if planned else set[str]()
    while True:
        done, freed = len(result.removed), result.bytes_freed
        run_pass(
            cache,
            result,
            cache.store.victims,
            "evicted",
            bytes_needed=need,
            dry_run=dry_run,
            min_age_seconds=cache.settings.disk_cache_min_age_seconds,
            time_budget=max(0.0, time_budget - (time.monotonic() - started)),
            heartbeat=heartbeat,
            usage=usage,
            seen=seen,
        )
        if result.more:
            result.owed = max(0, need.total - (result.bytes_freed - freed))
        if dry_run or result.more or len(result.removed) == done or LOCK_LOST in result.errors:
            break
        # Registrations that came while this pass ran had their own quota passes skipped
        # (this one held the lock): what they brought past the threshold goes too.
        # Past the threshold only: a free-space floor that deletions do not lift (hard links,
        # files held open, a disk filled by others) must not empty the cache round by round.
        usage = cache.store.total_bytes()
        if usage <= cache.settings.threshold_bytes or held is not None:
            break
        need = Need(usage - cache.settings.target_bytes)
    # A held pass stops at the disk's shortfall, above the threshold by design.
    short = result.usage_after > cache.settings.threshold_bytes and not result.more and not held
    if dry_run or result.more or LOCK_LOST in result.errors:  # a lost lock is said already
        return result
    # The floor is measured again: deletions that do not lift it (the disk filled by others,
    # hard links, files held open) leave eviction with nothing it can do.
    room = cache.free_space_short() if for_room else 0
    if short or room:
        said_short(cache, result, short, room)
    return result
