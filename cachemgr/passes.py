"""One bounded pass: take entries in an order until enough is freed.

The sweep and the quota pass share it: entries come in batches from `fetch`, each is decided
(pinned, too young, taken, gone from disk, changed since it was read), and the pass stops at
its need, its bound (DISK_CACHE_MAX_EVICTIONS_PER_RUN, a time budget: `more`) or a lost lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cachemgr.cache import DiskCache
from cachemgr.errors import DeleteFailed
from cachemgr.quota import Need
from cachemgr.records import Entry, PassResult, Removal

log = logging.getLogger("cachemgr")

LOCK_LOST = "cleanup lock lost: stopped early"


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
            result.errors.append(LOCK_LOST)
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
