"""The bench's pure helpers: names and goals of the figures, data generation, parsing, the table.

Nothing here starts a process or needs a server, so tests/test_bench_smoke.py can run it all.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PATH_LENGTH = 40


@dataclass(frozen=True)
class Figure:
    key: str
    what: str
    goal: str  # e.g. "<= 1.3", ">= 50000", "report"
    unit: str = ""

    def met(self, value: float | None) -> bool | None:
        """True/False against the goal; None for a figure that is only reported."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False if self.goal != "report" else None
        match = re.fullmatch(r"(<=|>=)\s*([0-9.]+)", self.goal.replace(",", ""))
        if not match:
            return None
        op, bound = match.group(1), float(match.group(2))
        return value <= bound if op == "<=" else value >= bound


FIGURES: tuple[Figure, ...] = (
    Figure("access_flatness", "one access at n_big ÷ at n_small (client time)", "<= 1.3"),
    Figure("sweep_flatness", "sweep of 1,000 expired among n_big ÷ among n_small", "<= 1.5"),
    Figure("evict_flatness", "eviction of 1,000 among n_big ÷ among n_small", "<= 1.5"),
    Figure("seed_scan_vs_ours", "seed's walk for expired ÷ ours (same result), n_big", "report"),
    Figure("access_vs_raw_zadd", "direct access/s ÷ plain ZADD round trips/s", ">= 0.6"),
    Figure("access_pipelined_per_s", "accesses/s batched by the pipeline client", ">= 50000"),
    Figure("redis_bytes_per_entry", "used_memory growth per entry (40-char paths)", "<= 400", "B"),
    Figure("scan_vs_du", "scanner.scan ÷ du -s -B1, same tree, warm cache", "<= 1.5"),
    Figure("celery_register_per_s", "registrations/s, prefork worker -c 2", ">= 500"),
    Figure("celery_register_vs_noop", "that rate ÷ the same worker's no-op rate", ">= 0.5"),
    Figure("api_stats_rps", "GET /cache/stats req/s, web process, 32 connections", "report"),
    Figure("api_vs_bare_flask", "that ÷ a bare Flask endpoint served the same way", ">= 0.6"),
    Figure("api_vs_one_redis_call", "that ÷ bare Flask making one Redis PING", "report"),
    Figure("api_p99_ms", "p99 of GET /cache/directories/{path}, 32 connections", "<= 25", "ms"),
)
FIGURE_KEYS: tuple[str, ...] = tuple(f.key for f in FIGURES)


@dataclass(frozen=True)
class Sizes:
    """How big each experiment is; `quick` keeps the whole run under a minute."""

    n_small: int
    n_big: int
    batch: int  # the 1,000 entries swept or evicted
    rounds: int  # side-by-side rounds (the median is kept)
    access_calls: int  # single accesses per round
    rate_seconds: float  # length of one round of a per-second rate
    scan_dirs: int
    scan_files_per_dir: int
    celery_dirs: int
    wrk_seconds: int
    wrk_rounds: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(10_000, 1_000_000, 1000, 5, 3000, 1.0, 1000, 100, 10_000, 5, 3)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(10_000, 100_000, 1000, 2, 1000, 0.5, 200, 100, 1000, 1, 2)

    @classmethod
    def tiny(cls) -> Sizes:
        """For the smoke test: proves the code runs, measures nothing worth reading."""
        return cls(300, 1200, 50, 2, 50, 0.05, 5, 4, 20, 1, 1)


def path40(tag: str, i: int) -> str:
    """A 40-character relative path, two levels like `artist/album` (the memory figure's)."""
    p = f"{tag}-{i // 1000:06d}/album-{i:012d}"
    if len(p) > PATH_LENGTH:
        raise ValueError(f"tag {tag!r} too long for a {PATH_LENGTH}-character path")
    return p.ljust(PATH_LENGTH, "x")


def resp(parts: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class Capture:
    """Stands in for a Redis client: keeps each EVALSHA a Store method sends, sends nothing.

    The bulk fill then carries exactly the keys and arguments Store.register builds today,
    whatever its signature becomes.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> None:
        self.sent.append(("EVALSHA", sha, numkeys, *args))


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def evalsha_payload(
    send: Callable[[Any, str, int, int, float], Any],
    items: Iterable[tuple[str, int, int, float]],
) -> bytes:
    """RESP of the commands `send(capture, path, size, files, now)` issues, one per item.

    Built by hand because redis-py's packer, at 10^6 commands, would time Python, not Redis.
    """
    capture = Capture()
    for path, size, files, now in items:
        send(capture, path, size, files, now)
    return b"".join(resp([_arg(a) for a in cmd]) for cmd in capture.sent)


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def side_by_side(
    runs: Mapping[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
    """Run each measurement once per round, alternating the order between rounds.

    Alternating keeps a slow spell of a shared machine from landing on one side only; the
    caller compares medians.
    """
    out: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(runs[name]())
    return out


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Operations per second: call `fn` (which returns how many it did) for `seconds`."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        done += fn()
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms), errors from `wrk --latency` output."""
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s*([0-9.]+)", text)
    out["rps"] = float(m.group(1)) if m else float("nan")
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$", text, re.M)
        out[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s*([0-9]+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    out["errors"] = float(errors)
    return out


# Commands that walk a whole keyspace or a whole big key: never on a steady-state path.
FULL_WALKS = ("keys", "scan", "hscan", "zscan", "sscan")


def commandstats(info: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec}}; redis-py parses it into dicts already."""
    out: dict[str, dict[str, float]] = {}
    for key, value in info.items():
        if not key.startswith("cmdstat_") or not isinstance(value, Mapping):
            continue
        out[key[len("cmdstat_") :]] = {
            "calls": float(value.get("calls", 0)),
            "usec": float(value.get("usec", 0)),
        }
    return out


def commandstats_delta(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    out = {}
    for cmd, now in after.items():
        was = before.get(cmd, {"calls": 0.0, "usec": 0.0})
        calls = now["calls"] - was["calls"]
        if calls:
            out[cmd] = {"calls": calls, "usec": now["usec"] - was["usec"]}
    return out


def full_walk_calls(delta: Mapping[str, Mapping[str, float]]) -> int:
    return int(sum(delta[c]["calls"] for c in FULL_WALKS if c in delta))


def fmt(value: float | None, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(
    results: Mapping[str, float], baselines: Mapping[str, str], *, markdown: bool = False
) -> str:
    """One row per figure: value, goal, met?, and the side-by-side numbers it came from."""
    rows = [("figure", "value", "goal", "met", "measured side by side")]
    for f in FIGURES:
        value = results.get(f.key)
        met = f.met(value)
        mark = "—" if met is None else ("yes" if met else "MISSED")
        unit = f" {f.unit}" if f.unit else ""
        rows.append((f.key, fmt(value) + unit, f.goal, mark, baselines.get(f.key, "")))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| `" + r[0] + "` | " + " | ".join(r[1:]) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for r in rows:
        out.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    return "\n".join(out)


def check_json(figures: Mapping[str, Any]) -> list[str]:
    """What is wrong with a figures object: a missing key, or a value that is not a number."""
    problems = []
    for key in FIGURE_KEYS:
        if key not in figures:
            problems.append(f"missing {key}")
        elif not isinstance(figures[key], int | float) or isinstance(figures[key], bool):
            problems.append(f"{key} is not a number: {figures[key]!r}")
    return problems
