"""The counters in `cache:stats`, and the figures "since reset" made from its baseline copy."""

from __future__ import annotations

from typing import Any

# Every counter, named once: the Lua scripts count under these names, the API's schema lists
# them from here.
COUNTERS = (
    "hits",
    "misses",
    "hit_bytes",
    "missed_bytes",
    "registrations",
    "evictions",
    "expirations",
    "removals",
    "bytes_freed",
    "skipped_locked",
    "skipped_pinned",
    "vanished",
)


def pairs(flat: list[str]) -> dict[str, str]:
    """A hash as HGETALL inside Lua returns it (a flat list), as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def since_reset(
    overall: dict[str, str], base: dict[str, str]
) -> tuple[dict[str, int], dict[str, Any]]:
    """Counters overall, and since the reset (the difference from its baseline)."""
    total = {c: int(overall.get(c, 0)) for c in COUNTERS}
    recent: dict[str, Any] = {c: total[c] - int(base.get(c, 0)) for c in COUNTERS}
    recent["reset_at"] = float(base["reset_at"]) if "reset_at" in base else None
    return total, recent
