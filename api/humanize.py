"""Numbers for people: sizes, counts, ratios and durations, for the CLI and the status page."""

from __future__ import annotations

from cachemgr import units


def human_bytes(n: float | None) -> str:
    return "–" if n is None else units.human_bytes(n)


def human_count(n: float | None) -> str:
    return "–" if n is None else f"{int(n):,}"


def counted(n: int, noun: str) -> str:
    """`1 directory`, `2 directories`, `1,000 requests`."""
    if n == 1:
        return f"1 {noun}"
    if noun.endswith("y"):
        plural = noun[:-1] + "ies"
    else:
        plural = noun + ("es" if noun.endswith(("s", "x")) else "s")
    return f"{n:,} {plural}"


def percent(ratio: float | None, digits: int = 1) -> str:
    return "–" if ratio is None else f"{100 * ratio:.{digits}f} %"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = abs(float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    parts = []
    # The two largest units, seconds included: a TTL of 90 s showed as "1m".
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{int(s // size)}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(parts)
