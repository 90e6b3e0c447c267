"""How much a quota pass must free, whether one is due, and whether eviction may run now."""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")


def bytes_to_free(cache: DiskCache, total: int, resume: bool = False) -> int:
    """Above the threshold: down to the target. Below the free-space floor: up to the floor.

    `resume` continues an eviction that a bound interrupted: down to the target even when
    usage is already back under the threshold.
    """
    s = cache.settings
    started = total > s.threshold_bytes or (resume and total > s.target_bytes)
    need = total - s.target_bytes if started else 0
    return max(need, cache.free_space_short(), 0)


def quota_pass_due(registered: dict[str, Any]) -> bool:
    """A registration past the threshold, or on a disk short of its free-space floor, wants a
    quota pass (the workers run it: a task, or the CLI's `register --now`, sends it)."""
    return bool(registered.get("over_threshold") or registered.get("low_disk"))


def evict_held(cache: DiskCache, scheduled: bool) -> float | None:
    """Until when periodic and automatic (`scheduled`) eviction wait after the books were
    rebuilt from the disk (None: they do not). Not on a disk short of its free-space floor,
    or, with none set, under 5% free (the disk must not fill), whatever the quota says (a
    budget: one interval over it costs no data, a streamed album taken would); a manual
    cleanup is not held, and says so."""
    until = cache.client.get(cache.keys.evict_hold)
    if until is not None and not scheduled:
        log.warning("manual cleanup: not held, though eviction is held after a rebuild")
        return None
    if until is None or cache.free_space_short() > 0 or _nearly_full(cache):
        return None
    log.info("eviction held until %s: the books were rebuilt from the disk", until)
    return float(until)


# With no DISK_CACHE_MIN_FREE_BYTES set, the hold still gives way when the disk is this full.
NEARLY_FULL = 0.05


def _nearly_full(cache: DiskCache) -> bool:
    """Under 5% of the disk free and no free-space floor set to say otherwise."""
    if cache.settings.disk_cache_min_free_bytes or not cache.local:
        return False
    try:
        usage = shutil.disk_usage(cache.root)
    except OSError:
        return False
    return usage.free < NEARLY_FULL * usage.total
