"""What goes on after a bounded cleanup: the arguments of the one that continues where it
stopped, and a manual cleanup run here pass after pass to its end (`cleanup --now`)."""

from __future__ import annotations

from typing import Any

from cachemgr.cache import DiskCache
from cachemgr.cleanup import AGAIN_SECONDS, CLEANUP_BUSY, cleanup


def continuation(
    result: dict[str, Any],
    *,
    resume: bool = False,
    owed: int | None = None,
    scheduled: bool = False,
) -> dict[str, Any] | None:
    """The arguments of the cleanup that goes on where a bounded one stopped (None: done).
    Only an eviction cut short resumes, down to the target without passing the threshold
    again, and for no more than it still owed. A resumed one (`resume`, `owed`: its own
    arguments) that found another cleanup running tries again: that one starts only past the
    threshold, and what was owed below it would never be freed; a registration's quota pass
    that found one running and waits for it (`again`: the first, then its retries) too.
    The rest of a `scheduled` one (beat's, or a registration's quota pass) honours the
    scheduler switch as an automatic one; none is beat's own: each would walk the root for
    the audits again, at every pass of a long eviction, and keep a beat that stopped looking
    alive."""
    scheduled_too = {"automatic": True} if scheduled else {}
    busy = result.get("status") == "skipped" and result.get("reason") == CLEANUP_BUSY
    if busy and resume:
        return {"resume": True, **({"owed": owed} if owed is not None else {}), **scheduled_too}
    if busy and result.get("again"):  # a registration's quota pass: once that one is done
        return {"resume": False, "automatic": True, "again": True}
    if not result.get("more"):
        return None
    evict = result.get("evict", {})
    # Held (after a rebuild), the rest waits as well: as a quota pass, even if a manual
    # cleanup was held for having rebuilt the books itself.
    held = {"automatic": True} if result.get("evict_held_until") is not None else scheduled_too
    if not evict.get("more"):
        return {"resume": False, **held}
    return {"resume": True, "owed": int(evict.get("owed", 0)), **held}


def delay(result: dict[str, Any]) -> float:
    """How long the cleanup that goes on waits: one that found another running waits for it
    (AGAIN_SECONDS); the rest of a bounded one goes on at once (it waited 2 s a pass: a chain
    of 3 evictions a pass evicted 3 directories every 2 s while downloads came faster)."""
    return AGAIN_SECONDS if result.get("status") == "skipped" else 0.0


def cleanup_through(cache: DiskCache, *, dry_run: bool = False) -> dict[str, Any]:
    """A manual cleanup run here to its end (`cachemgr cleanup --now`): the passes a worker
    hands to fresh tasks (continuation) run one after another, each bounded as ever, the
    sweep's and the eviction's counts and paths summed into one result (`passes`). Run
    once, it stopped at DISK_CACHE_MAX_EVICTIONS_PER_RUN with usage far above the quota,
    and nothing went on."""
    result = cleanup(cache, dry_run=dry_run)
    rest = None if dry_run else continuation(result)
    passes = 1
    while rest is not None:
        if result.get("status") == "skipped" or rest.get("automatic"):
            break  # another cleanup runs, or eviction is held: theirs to go on with
        more = cleanup(cache, resume=rest["resume"], owed=rest.get("owed"))
        passes += 1
        for part in ("sweep", "evict"):
            done, new = result.get(part), more.get(part)
            if not done or not new:
                continue
            for key in ("count", "bytes_freed"):
                done[key] += new[key]
            for key in ("paths", "plan", "skipped_locked", "skipped_pinned", "skipped_changed",
                        "skipped_young", "vanished", "errors"):  # fmt: skip
                done[key] += new[key]
            done.update({k: new[k] for k in ("usage_after", "more", "owed", "short")})
        if more.get("status") == "skipped":  # another took the lock meanwhile: said, left
            result["more"] = True
            break
        result["more"] = more.get("more", False)
        took = sum(
            (more.get(part) or {}).get("count", 0) + len((more.get(part) or {}).get("vanished", []))
            for part in ("sweep", "evict")
        )
        if not took:  # a pass that took nothing would be met again at once: said, left
            break
        rest = continuation(more, resume=rest["resume"], owed=rest.get("owed"))
    if "evict" in result:  # a run (not one disabled or skipped, which answer as ever)
        result["passes"] = passes
    return result
