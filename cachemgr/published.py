"""What a node's workers publish of the settings they enforce and act by, and how another
process (the API, a shell, the pipeline's client) takes it: their values win over its own
environment's, and where they differ the stats say so.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from typing import Any

from cachemgr.settings import Settings

# What a node's workers publish of the settings they enforce: entry field -> Settings field.
ENFORCED = {
    "max_bytes": ("disk_cache_max_bytes", int),
    "threshold": ("disk_cache_lru_eviction_threshold", float),
    "target": ("disk_cache_lru_eviction_target", float),
    "ttl_seconds": ("disk_cache_ttl_seconds", int),
    "cleanup_interval": ("disk_cache_cleanup_interval", int),
    "policy": ("disk_cache_eviction_policy", str),
    "min_free_bytes": ("disk_cache_min_free_bytes", int),
    "enabled": ("enable_disk_cache_management", bool),
}
# How they act, published too, and taken by a write or plan made elsewhere (a shell's
# `cleanup --now` with no DISK_CACHE_MIN_AGE_SECONDS of its own evicted directories the workers
# kept as too young); not said of in the stats when another process differs (a batch size).
ACTING = {
    "min_age_seconds": ("disk_cache_min_age_seconds", int),
    "entry_depth": ("disk_cache_entry_depth", int),
    "max_evictions_per_run": ("disk_cache_max_evictions_per_run", int),
    "batch_size": ("disk_cache_batch_size", int),
    "lock_timeout_seconds": ("disk_cache_lock_timeout_seconds", int),
    "events_maxlen": ("disk_cache_events_maxlen", int),
}
PUBLISHED = {**ENFORCED, **ACTING}


def enforced_entry(settings: Settings) -> dict[str, Any]:
    """The settings a node's workers enforce and act by, as they publish them (PUBLISHED's
    names)."""
    return {key: getattr(settings, field) for key, (field, _) in PUBLISHED.items()}


def split(workers: dict[str, dict[str, Any]]) -> dict[str, dict[Any, list[str]]]:
    """Where live workers of one node disagree: setting -> value -> the workers with it."""
    out: dict[str, dict[Any, list[str]]] = {}
    if len(workers) < 2:  # every stats read asks: one worker cannot disagree
        return out
    for key in ENFORCED:
        values: dict[Any, list[str]] = {}
        for worker, entry in sorted(workers.items()):
            if key in entry:
                values.setdefault(entry[key], []).append(worker)
        if len(values) > 1:
            out[key] = values
    return out


def enforced(base: Settings, entry: dict[str, Any]) -> Settings:
    """`base` with the settings a node's workers published (PUBLISHED): what they enforce and
    how, whatever another process's environment says."""
    if all(key not in entry or entry[key] == getattr(base, f) for key, (f, _) in PUBLISHED.items()):
        return base  # the usual case, on every stats read: the values as JSON gave them
    changes = {field: kind(entry[key]) for key, (field, kind) in PUBLISHED.items() if key in entry}
    if all(getattr(base, field) == value for field, value in changes.items()):
        return base  # equal once converted (an older worker's "0.9" for 0.9)
    return replace(base, **changes)


def differing(
    here: Settings, workers: Settings, among: dict[str, tuple[str, Any]] = PUBLISHED
) -> list[tuple[str, Any, Any]]:
    """(setting's environment name, this process's value, the workers') where they differ,
    among the published settings (`among`: ENFORCED alone, for the stats)."""
    if here is workers:  # `enforced` found nothing to change
        return []
    return [
        (field.upper(), getattr(here, field), getattr(workers, field))
        for field, _ in among.values()
        if getattr(here, field) != getattr(workers, field)
    ]


def own_entry(entries: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """This node's entry: by its name if it keeps these books, else the newest with its key
    prefix (an unnamed node's workers publish under their own host name, which is not this
    process's; and workers of other books on this host publish under this one's)."""
    entry = entries.get(settings.node)
    if entry is None or entry.get("key_prefix", settings.key_prefix) != settings.key_prefix:
        entry = newest(entries, settings.key_prefix)
    return entry or {}


def root_elsewhere(settings: Settings, entry: dict[str, Any]) -> str | None:
    """The root the node's workers published, when it is not this process's (a shell with
    no DISK_CACHE_ROOT, a container mounting the disk elsewhere): the root there is not
    theirs to look at. None when it is the same, or not published."""
    theirs = entry.get("root")
    if not theirs or theirs == str(settings.root):
        return None
    if entry.get("root_as_set") == os.path.abspath(settings.disk_cache_root):
        return None  # set alike, resolved apart: a symlink in it on a disk not mounted now
    return str(theirs)


def newest(entries: dict[str, dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    """The entry published last for the books under `prefix`."""
    same = [e for e in entries.values() if e.get("key_prefix") == prefix]
    return max(same, key=lambda e: float(e.get("published_at", 0)), default=None)


def disk_seen(root: os.PathLike[str] | str) -> dict[str, int]:
    """The root's disk as a worker sees it, published with its settings at each beat: the
    API on another host cannot look at it (its stats said free space unknown, no floor
    warning, and no alert on `cachemgr_free_disk_bytes` could fire for that node)."""
    try:
        total, _, free = shutil.disk_usage(root)
    except OSError:
        return {}
    return {"disk_bytes": total, "free_disk_bytes": free}


def disk_of(workers: dict[str, dict[str, Any]]) -> tuple[int | None, int | None]:
    """(disk size, free bytes) of a node's root as its live workers saw it at their last beat
    (the least free of them), or (None, None) where none said."""
    seen = [
        (w["free_disk_bytes"], w["disk_bytes"])
        for w in workers.values()
        if isinstance(w.get("free_disk_bytes"), int) and isinstance(w.get("disk_bytes"), int)
    ]
    if not seen:
        return None, None
    free, disk = min(seen)
    return disk, free
