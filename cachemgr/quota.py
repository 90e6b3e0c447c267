"""How much a quota pass must free, whether one is due, and whether eviction may run now."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachemgr import events
from cachemgr.errors import DELETE_FAILED
from cachemgr.logs import Repeats
from cachemgr.settings import floor_beyond

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache
    from cachemgr.records import PassResult
    from cachemgr.settings import Settings

log = logging.getLogger("cachemgr")
# A floor ignored, a hold giving way: said once in 10 minutes, not at every pass.
_REPEATS = Repeats(600)


@dataclass(frozen=True)
class Need:
    """What a quota pass must free: booked bytes, and bytes the disk lacks. A directory found
    gone from disk (vanished) leaves the books but frees nothing on the disk."""

    books: int = 0
    disk: int = 0

    @property
    def total(self) -> int:
        return max(self.books, self.disk, 0)

    def met(self, booked: int, deleted: int) -> bool:
        """`booked`: bytes taken off the books; `deleted`: of those, bytes deleted here."""
        return booked >= self.books and deleted >= self.disk

    def at_most(self, owed: int) -> Need:
        return Need(min(self.books, owed), min(self.disk, owed))


def bytes_to_free(
    cache: DiskCache, total: int, resume: bool = False, held: Hold | None = None
) -> Need:
    """Above the threshold: down to the target. Below the free-space floor: up to the floor.

    `resume` continues an eviction that a bound interrupted: down to the target even when
    usage is already back under the threshold. `held`: eviction is held, but the disk is
    short, or usage past HOLD_CEILING times the quota (evict_held, stopped_hold): only the
    disk's shortfall and the excess go.
    """
    s = cache.settings
    short = cache.free_space_short()
    if held is not None:
        nearly = _nearly_full_short(cache) if held.until is not None else 0
        return Need(_over_ceiling(cache, total), max(short, nearly))
    started = total > s.threshold_bytes or (resume and total > s.target_bytes)
    return Need(total - s.target_bytes if started else 0, short)


def quota_pass_due(registered: dict[str, Any]) -> bool:
    """A registration past the threshold, or on a disk short of its free-space floor, wants a
    quota pass (the workers run it: a task, or the CLI's `register --now`, sends it)."""
    return bool(registered.get("over_threshold") or registered.get("low_disk"))


# How long a sent quota pass stands for the registrations after it when it never runs (lost
# with its broker, or with a worker killed holding it): then one is sent again.
QUOTA_SENT_SECONDS = 10


def send_quota_pass(
    cache: DiskCache, registered: dict[str, Any], send: Callable[[], object]
) -> bool:
    """Send (`send`) a worker's registration's quota pass when one is due and none sent before
    is still waiting to weigh the usage, which will count this one's bytes too (a cleanup
    deletes cache:quota_sent before it weighs, and as it stops without). Whether it was sent."""
    if not quota_pass_due(registered):
        return False
    if not cache.client.set(cache.keys.quota_sent, 1, nx=True, px=QUOTA_SENT_SECONDS * 1000):
        return False
    try:
        send()
    except BaseException:
        cache.client.delete(cache.keys.quota_sent)  # not sent: the next registration sends it
        raise
    return True


@dataclass(frozen=True)
class Hold:
    """Scheduled eviction waits: after the books were rebuilt from the disk (pins went with the
    old books), `until` just before the next periodic cleanup; or, `until` None, while the
    scheduler is stopped. `short`: the disk is short of its floor, or usage past HOLD_CEILING
    times the quota, so the shortfall and the excess are evicted through the hold, no more."""

    until: float | None
    short: bool = False


def evict_held(
    cache: DiskCache, scheduled: bool, rebuilt_until: float | None = None
) -> Hold | None:
    """Whether periodic and automatic (`scheduled`) eviction waits after a rebuild (None: it
    does not). A manual cleanup is not held, and says so, unless it rebuilt the books itself
    (`rebuilt_until`: the hold it set, whose key may lapse before this reads it). The hold
    gives way (gives_way) to the disk's shortfall and the excess past the ceiling: below that
    the quota is a budget (one interval over it costs no data, a streamed album taken would)."""
    stored = cache.client.get(cache.keys.evict_hold)
    until = float(stored) if stored is not None else rebuilt_until
    if until is None:
        return None
    if not scheduled and rebuilt_until is None:
        log.warning("manual cleanup: not held, though eviction is held after a rebuild")
        return None
    why = gives_way(cache)
    if why:
        # Once in a while, as stopped_hold's: each registration's quota pass meets it.
        said = log.warning if _REPEATS.due("held " + why.split(":")[0]) else log.debug
        said("eviction held until %s after a rebuild, but %s", until, why)
        return Hold(until, short=True)
    log.info("eviction held until %s: the books were rebuilt from the disk", until)
    return Hold(until)


def stopped_hold(cache: DiskCache, say: bool = True) -> Hold | None:
    """The scheduler stopped, a scheduled pass evicts nothing (the operator's switch), but for
    what gives_way names (the disk must not fill): a Hold that lets that through, or None.
    Not the 5%-free rule a rebuild's hold adds where no floor is set: a running scheduler does
    not apply it, and a disk filled by others drained the cache pass after pass. `say`: in
    the log, once in a while (a plan says nothing)."""
    why = gives_way(cache, nearly_full=False)
    if not why:
        return None
    if say and _REPEATS.due("stopped " + why.split(":")[0]):
        log.warning(
            "the scheduler is stopped, but %s (`cachemgr scheduler start` for the rest)",
            why,
            extra={"event": "stopped_evicting"},
        )
    return Hold(None, short=True)


def scheduler_running_seen() -> None:
    """A scheduled pass found the scheduler running: the next stop's first pass says what it
    evicts again (a second stop within 10 minutes of the first said nothing)."""
    _REPEATS.forget("stopped ")


def gives_way(cache: DiskCache, nearly_full: bool = True) -> str | None:
    """What a hold lets through, said (None: nothing): the disk short of its free-space floor,
    or, with none set and `nearly_full`, under 5% free; usage past HOLD_CEILING times the
    quota."""
    if cache.free_space_short() > 0 or (nearly_full and _nearly_full_short(cache) > 0):
        return "the disk is short of free space: evicting the shortfall only"
    over = _over_ceiling(cache, cache.store.total_bytes())
    if over > 0:
        return (
            f"usage is past {HOLD_CEILING} times the quota: evicting the {over} bytes over it "
            "only"
        )
    return None


# With no DISK_CACHE_MIN_FREE_BYTES set, the hold still gives way when the disk is this full.
NEARLY_FULL = 0.05
# Held, usage may pass the quota (a budget), but not this many times it: a busy pipeline grew
# the cache to ten times its quota in a minute of a rebuild's hold, which lasts up to an
# interval, and to eleven in 73 s of a stopped scheduler.
HOLD_CEILING = 2


def _over_ceiling(cache: DiskCache, total: int) -> int:
    return max(0, total - HOLD_CEILING * cache.settings.disk_cache_max_bytes)


def _nearly_full_short(cache: DiskCache) -> int:
    """Bytes the disk lacks for 5% free, when no free-space floor is set to say otherwise."""
    if cache.settings.disk_cache_min_free_bytes or not cache.local:
        return 0
    try:
        usage = shutil.disk_usage(cache.root)
    except OSError:
        return 0
    return max(0, int(NEARLY_FULL * usage.total) - usage.free)


def free_space_short(settings: Settings) -> int:
    """Bytes the filesystem lacks to keep DISK_CACHE_MIN_FREE_BYTES free (0: no floor, room
    enough, or the free space cannot be read)."""
    floor = settings.disk_cache_min_free_bytes
    if not floor:
        return 0
    try:
        usage = shutil.disk_usage(settings.root)
    except OSError:
        return 0
    if floor >= usage.total:  # the disk changed since start-up (a smaller one mounted)
        if _REPEATS.due("floor"):
            log.error(
                "DISK_CACHE_MIN_FREE_BYTES=%d is ignored: %s", floor, floor_beyond(usage.total),
                extra={"event": "floor_ignored"},
            )
        return 0
    return max(0, floor - usage.free)


# How a pass's `short` says the disk stayed short of its floor, and how it begins when the
# quota was met and the floor alone was not (health.py reads both).
ROOM_SHORT = "bytes short of its free-space floor"
ROOM_ONLY = "the disk still"


def said_short(cache: DiskCache, result: PassResult, quota: bool, room: int) -> None:
    """Like kubelet's FreeDiskSpaceFailed: say loudly that the quota, or the free-space floor
    (`room`: the bytes the disk still lacks after the pass), could not be met, and what stood
    in the way: the directories skipped, else something the cache does not hold."""
    why = {
        "usage_after": result.usage_after,
        "pinned": len(result.skipped_pinned),
        "locked": len(result.skipped_locked),
        "young": len(result.skipped_young),
        # Chosen and not deletable (permissions, immutable files): said, not hidden behind
        # the pins, which the message had blamed alone.
        "undeletable": sum(e.startswith(DELETE_FAILED) for e in result.errors),
        "disk_short": room,
    }
    skipped = (
        f"pinned {why['pinned']}, locked {why['locked']}, young {why['young']}, "
        f"could not delete {why['undeletable']}"
    )
    kept = why["pinned"] + why["locked"] + why["young"] + why["undeletable"]
    if quota:
        blame, changed = "", len(result.skipped_changed)
        if changed:
            blame = f"; {changed} it chose were played or booked again meanwhile"
        elif not kept:  # the usage grew while it ran (its rounds stop at one evicting none)
            blame = (
                "; nothing was kept back: downloads booked while it ran (a quota pass "
                "follows), or books that count more than they hold (`cachemgr reconcile`)"
            )
        log.warning(
            "quota: could not free enough, still %d bytes used after eviction (skipped: %s)%s",
            result.usage_after,
            skipped,
            blame,
            extra={"event": "eviction_short"},
        )
    cause = ""
    if room:
        # The directories skipped are to blame only if what the cache still holds could
        # cover the shortfall; else the disk is filled by something else (or freed late).
        cause = (
            "the directories skipped hold the rest"
            if kept and result.usage_after >= room
            else "something else fills that disk (or the space freed shows late, as on ZFS "
            "or btrfs)"
        )
        log.warning(
            "free space: could not make enough room, the disk is still %d bytes short of "
            "DISK_CACHE_MIN_FREE_BYTES with %d bytes left in the cache (skipped: %s): %s",
            room,
            result.usage_after,
            skipped,
            cause,
            extra={"event": "eviction_short"},
        )
    floor = f"{ROOM_ONLY} {room} {ROOM_SHORT}: {cause}"
    if quota:
        result.short = skipped + (f"; {floor}" if room else "")
    else:  # the quota met, the floor not: said first, which the quota's warning tells apart
        result.short = f"{floor}; skipped: {skipped}"
    events.add(cache.store, {"event": "eviction_short", "time": f"{cache.clock():.3f}", **why})
