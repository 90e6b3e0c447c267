"""Cleanup passes: TTL sweep, quota enforcement, and the cleanup that runs both.

Each pass works in batches and is bounded by DISK_CACHE_MAX_EVICTIONS_PER_RUN and a time
budget; it reports `more` when it stopped with work left, so the caller can continue later.
A dry run goes through the same loop and decisions, only without taking anything.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cachemgr import audit, checks, history, marker, migrations, mounts, recheck, trash
from cachemgr.cache import DiskCache
from cachemgr.errors import RootMissing, logged
from cachemgr.journal import recover_unfinished
from cachemgr.locks import Keeper, Lock
from cachemgr.logs import Repeats
from cachemgr.passes import (
    DEFAULT_TIME_BUDGET,
    LOCK_LOST,
    enforce_quota,
    sweep_or_nothing,
    sweeps,
)
from cachemgr.quota import evict_held, scheduler_running_seen, stopped_hold
from cachemgr.reconcile import ReconcileBusy, reconcile
from cachemgr.switch import disabled

log = logging.getLogger("cachemgr")

# Renewed every third of it while the cleanup runs. A worker killed mid-cleanup on another
# machine holds it this long (on this one it is taken over: locks.holder_gone), and the quota
# passes that registrations send meanwhile are skipped: the disk fills by
# the ingest rate times this (30 s let a fault soak reach 155% of the quota).
CLEANUP_LOCK_SECONDS = 10
# How long a cleanup's lock is kept for it in the background (Keeper); a cleanup hung past
# that lets the next one in, and stops at its own next renewal.
CLEANUP_MAX_HOLD_SECONDS = 600

CLEANUP_BUSY = "another cleanup is running"
POLICY_HELD_REPEAT_SECONDS = 600
_POLICY_HELD = Repeats(POLICY_HELD_REPEAT_SECONDS)
# How soon a quota pass that found another cleanup running is tried again (the workers' task
# countdown); one chain of them waits at a time (_wait_again).
AGAIN_SECONDS = 2
RECONCILE_RUNNING = "a reconcile is adopting the root: the next cleanup checks it again"


def _refused(cache: DiskCache) -> RootMissing | None:
    try:
        cache.check_root()
    except RootMissing as exc:
        return exc
    return None


def cleanup(
    cache: DiskCache,
    *,
    periodic: bool = False,
    automatic: bool = False,
    dry_run: bool = False,
    sweep_expired: bool = True,
    enforce: bool = True,
    resume: bool = False,
    owed: int | None = None,
    again: bool = False,
    time_budget: float = DEFAULT_TIME_BUDGET,
    from_beat: bool = True,
) -> dict[str, Any]:
    """Sweep, then enforce the quota (either may be left out); one at a time across workers.

    A periodic cleanup (beat's) and an automatic one (a registration that passed the
    threshold) honour the scheduler switch; a manual one does not. Before anything is
    evicted, books that Redis lost (a FLUSHALL, a restart without persistence) are rebuilt.
    `resume` and `owed` continue an eviction a bound cut short (its result's `more`, `owed`).
    `from_beat`: False for a periodic one that beat did not send (a pipeline's): it does
    beat's work, but does not count as beat's run, which would hide a beat that stopped.
    """
    flags = {"periodic": periodic, "automatic": automatic, "dry_run": dry_run}
    flags |= {"from_beat": from_beat}
    flags |= {"sweep_expired": sweep_expired, "enforce": enforce, "resume": resume, "again": again}
    for name, value in flags.items():
        checks.flag(name, value)
    as_beat = periodic and from_beat
    if owed is not None:
        checks.whole("owed", owed)
    if not cache.settings.enable_disk_cache_management:
        _weighs_nothing(cache, dry_run)
        return disabled("cleanup")
    stopped = None
    if (periodic or automatic) and cache.scheduler_running():
        scheduler_running_seen()
    elif periodic or automatic:
        # Stopped, a scheduled pass still evicts what would fill the disk, as an automatic
        # one: beat's audits and expiry wait for the scheduler with the rest of its work.
        stopped = stopped_hold(cache, say=not dry_run) if enforce else None
        if stopped is None:
            _weighs_nothing(cache, dry_run)
            log.info(
                "%s skipped: the scheduler is stopped (`cachemgr scheduler start`)",
                "periodic cleanup" if periodic else "a registration's quota pass",
                extra={"event": "cleanup_skipped"},
            )
            return {"status": "skipped", "reason": "scheduler stopped"}
        periodic, automatic, as_beat = False, True, False
    refused = _refused(cache)
    if refused is not None:
        # A reconcile --force adopting the root: until its end the root has no marker (a new
        # disk), is empty (downloads removed on purpose), or has just been marked while the
        # books' token is not yet written. One that ended meanwhile has its root read again.
        # A plan too: refused, it said the adoption had been cut short, and to run another.
        if cache.client.exists(cache.keys.adopting):
            log.info("cleanup skipped: a reconcile is adopting the root (%s)", refused)
            if as_beat and not dry_run:  # not overdue; the last cleanup's outcome stands
                history.beat_ran(cache, cache.clock())
            _weighs_nothing(cache, dry_run)  # the adopting reconcile's own pass is sent
            return {"status": "skipped", "reason": RECONCILE_RUNNING}
        refused = _refused(cache)
    if refused is not None:
        _weighs_nothing(cache, dry_run)
        if not dry_run:
            failed = {"status": "failed", "error": str(refused), "error_code": refused.code}
            history.record(cache, cache.clock(), failed, as_beat)
        log.error("cleanup refused: %s", refused, extra={"event": "cleanup_failed"})
        raise logged(refused)
    if dry_run:
        # A plan changes nothing, not even the policy's structures: right after a switch it
        # goes by the policy in force (the new one's are not built: it planned nothing), and
        # the real run, which rebuilds them first, may choose otherwise. Said, not hidden.
        raw = cache.client.get(cache.keys.policy_name)
        named = migrations.built(raw)
        kept = migrations.held(named, cache.registry.live_workers(cache.keys))
        # Pending: books named (not new) for another policy than this one, or a switch to
        # another under way; a rebuild of this one cut short (`a>a`) is none.
        pending = not kept and raw is not None and named != cache.store.policy.name
        if named and named != cache.store.policy.name:
            cache = cache.with_policy(named)
        held = stopped or evict_held(cache, scheduled=periodic or automatic)
        expired = sweep_or_nothing(cache, sweeps(sweep_expired, automatic, held), dry_run=True)
        evicted = enforce_quota(
            cache,
            dry_run=True,
            usage=expired.usage_after,
            skip=not enforce,
            held=held,
            planned=expired,
        )
        return {
            "status": "planned",
            "sweep": expired.to_dict(),
            "evict": evicted.to_dict(),
            "evict_held_until": held.until if held else None,
            "policy_switch_pending": pending,
            "policy_held": kept,
        }
    # Short timeout, renewed per batch: a crashed worker blocks the next cleanup only briefly.
    timeout = min(CLEANUP_LOCK_SECONDS, cache.settings.disk_cache_lock_timeout_seconds)
    in_flight = cache.settings.disk_cache_lock_timeout_seconds  # a deletion's trash slot
    depth = cache.settings.disk_cache_entry_depth  # the trashes of disks mounted above it
    # A worker killed mid-cleanup on this machine: its successor recovers what it left.
    lock = Lock(cache.client, cache.keys.cleanup_lock, timeout * 1000, from_dead=True)
    if not lock.acquire():
        if as_beat:  # another is cleaning (a chain of quota passes): beat is not overdue
            history.beat_ran(cache, cache.clock())
        busy: dict[str, Any] = {"status": "skipped", "reason": CLEANUP_BUSY}
        # A registration's quota pass: the running cleanup weighed the usage before the
        # bytes booked since (or its worker was killed, its lock standing until it lapses).
        # Dropped, usage stayed over the quota until beat's next cleanup once the downloads
        # stopped coming. One of them (the first to find cache:quota_again free) and its
        # own retries are sent again.
        if automatic and enforce and not resume:
            busy["again"] = _wait_again(cache, again)
        return busy
    # The usage is weighed from here on: the next registration past the threshold sends a
    # pass (cache:quota_sent). One that finds this one running leaves the key: its retry, or
    # the chain's, weighs later (deleted then, every registration during a long eviction sent
    # a pass of its own). The waiting chain's slot (cache:quota_again) is freed by the chain
    # alone, as it runs: freed by every cleanup, each started a chain of its own, and a busy
    # lock had hundreds of them polling at once.
    cache.client.delete(cache.keys.quota_sent, *([cache.keys.quota_again] if again else []))
    started, began = cache.clock(), time.monotonic()  # when, by the cache's clock; how long
    # Renewed in the background too: one deletion longer than the lock let a second cleanup in.
    keeper = Keeper(lock, every=timeout / 3, at_most=CLEANUP_MAX_HOLD_SECONDS).start()
    try:
        migrations.ensure_record_ids(cache.store)  # before anything reads a record
        recovered = recover_unfinished(cache)
        emptied = trash.empty(cache.root, in_flight, depth)
        mounts.note_mounts(cache)  # the disks mounted below the root, for when one is not
        rebuilt, rebuilt_until = False, None
        if not cache.client.exists(cache.keys.initialized):
            log.warning("cache books are empty or new: reconciling with the disk before evicting")
            # Books that were lost (FLUSHALL, a restart without persistence) lost the pins with
            # them, even when the pipeline registered a download since. Books a new install's
            # pipeline has been filling lost nothing: eviction goes ahead.
            try:
                rebuilding = reconcile(cache, heartbeat=lock.extend, started=started)
                rebuilt, rebuilt_until = rebuilding["rebuilt"], rebuilding.get("held_until")
            except ReconcileBusy:
                # someone's reconcile is rebuilding the books: evicting before it ends would
                # go by half of them
                return {"status": "skipped", "reason": "a reconcile is rebuilding the books"}
            # Rebuilt: reconcile set the hold (cache:evict_hold) that keeps eviction waiting.
        elif not marker.marked(cache):
            marker.remember(cache)  # books kept since before the marker named its root
        migrations.ensure_pin_index(cache.store)
        lapsed = cache.store.drop_lapsed_pins(cache.clock())
        live = cache.registry.live_workers(cache.keys)
        kept = migrations.held(migrations.recorded(cache.store), live)
        if kept:
            own = cache.store.policy.name
            cache = cache if own == kept else cache.with_policy(kept)
            carried = migrations.rebuild_in_force(cache.store)
            # Once in a while a process: every registration's quota pass met it (136 lines in
            # four minutes of a rolling restart); the result and the stats say it each time.
            said = log.warning if _POLICY_HELD.due(f"{own}>{kept}") else log.debug
            said(
                "the node's live workers run different eviction policies (this one %s; a "
                "rolling restart, or workers set apart?): cleanups act by the one in force, "
                "%s, rebuilding its structures from the records first (%d directories), until "
                "the last worker of %s stops; then the switch happens",
                own,
                kept,
                carried,
                kept,
                extra={"event": "policy_held"},
            )
        switched = migrations.ensure_policy(cache.store, cache.clock())
        migrations.ensure_ttl(cache.store, cache.clock(), live)
        # Beat's: the sizes of directories registered lately, before the quota is weighed.
        rechecked = None
        if periodic:
            interval = history.beat_interval(cache)
            window = recheck.window(interval, history.last_beat(cache), cache.clock())
            rechecked = recheck.recent(cache, window)
        # Beat's, once an interval, before the quota is weighed too: directories the books
        # have and the disk has not, untracked (after the passes, a real download had been
        # evicted in the place of each).
        gone = _gone(cache) if periodic else None
        # A manual one evicts, unless it rebuilt the books itself.
        held = stopped or evict_held(
            cache, scheduled=periodic or automatic, rebuilt_until=rebuilt_until
        )
        expired = sweep_or_nothing(
            cache,
            sweeps(sweep_expired, automatic, held),
            time_budget=time_budget,
            heartbeat=lock.extend,
        )
        evicted = enforce_quota(
            cache,
            time_budget=time_budget,
            # The lock lost in the sweep (said there): another cleanup may run; no pass.
            skip=not enforce or LOCK_LOST in expired.errors,
            held=held,
            resume=resume,
            owed=owed,
            heartbeat=lock.extend,
        )
        # Weighed: what is booked from here on is the next registration's to send a pass for,
        # at once. Left standing, a pass that found this one running and waits its countdown
        # kept every registration meanwhile from sending one: usage ran to twice the quota.
        cache.client.delete(cache.keys.quota_sent)
    except Exception as exc:
        # The root gone mid-pass (deletion.take) is resolved by a reconcile, as a refusal is.
        broke = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "error_code": getattr(exc, "code", ""),
            "duration_seconds": round(time.monotonic() - began, 3),
        }
        history.record(cache, started, broke, as_beat)
        log.exception("cleanup failed", extra={"event": "cleanup_failed"})
        logged(exc)
        raise
    finally:
        keeper.stop()
        lock.release()
    # Beat's, once an interval: downloads no registration booked, said.
    unbooked = {"untracked": audit.report(cache), "gone": gone} if periodic else {}
    trash_left, trash_kept = trash.tally(cache.root, in_flight, depth)
    result = {
        "status": "done",
        "sweep": expired.to_dict(),
        "evict": evicted.to_dict(),
        "recovered": recovered,
        "rebuilt": rebuilt,
        "evict_held_until": held.until if held else None,
        "policy_rebuilt": switched,  # the policy's structures, built anew from the records
        "policy_held": kept,  # the node's workers disagree: acted by the one in force
        "rechecked": rechecked,  # beat's: directories registered lately, rescanned
        "trash_emptied": emptied,
        # what could not be deleted there: its bytes fill the disk, uncounted (a warning)
        "trash_left": trash_left,
        # called-off deletions that could not be put back: the operator moves them (a warning)
        "trash_kept": trash_kept,
        "pins_lapsed": lapsed,
        "more": expired.more or evicted.more,
        "duration_seconds": round(time.monotonic() - began, 3),
        **unbooked,
    }
    history.record(cache, started, result, as_beat)
    log.info(
        "cleanup: %d expired, %d evicted, %d bytes freed, usage %d bytes",
        len(expired.removed),
        len(evicted.removed),
        expired.bytes_freed + evicted.bytes_freed,
        evicted.usage_after,
    )
    return result


def _gone(cache: DiskCache) -> dict[str, Any]:
    """audit.gone: a look that fails (the root unmounted since, Redis away) is said and does
    not fail the cleanup."""
    try:
        return audit.gone(cache)
    except Exception as exc:
        log.warning("could not look for tracked directories gone from the disk: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _weighs_nothing(cache: DiskCache, dry_run: bool) -> None:
    """A pass that stops before it weighs the usage, with no retry to weigh it (switched off,
    the scheduler stopped, the root refused or being adopted): the next registration past
    the threshold sends a quota pass of its own (cache:quota_sent), rather than none for
    QUOTA_SENT_SECONDS."""
    if not dry_run:
        cache.client.delete(cache.keys.quota_sent)


def _wait_again(cache: DiskCache, chained: bool) -> bool:
    """Whether a registration's quota pass that found another cleanup running is sent again:
    the first of them (cache:quota_again free) and, after it, each of its chain (`chained`),
    which holds the key for two countdowns (one a worker's clock ran early would not find it
    free, and the chain would end with its waiters dropped)."""
    hold = int(2 * AGAIN_SECONDS * 1000)
    return bool(cache.client.set(cache.keys.quota_again, 1, nx=not chained, px=hold))
