"""Replay a trace through the policy models at several cache sizes, beside offline bounds.

The models use classic cache semantics (threshold = target = 1.0; an object larger than the
whole cache passes without being cached), so the figures compare with libCacheSim's. The
bounds are computed in bounds.py.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np

from cachemgr import units
from cachemgr.bounds import belady, belady_size, pfoo_l
from cachemgr.models import MODELS, make_model
from cachemgr.settings import MAX_BYTES, quoted
from cachemgr.traces import Trace, next_access

CHUNK = 1 << 16


@dataclass(frozen=True)
class CacheSize:
    """A size as the user wrote it: absolute bytes, or a fraction of the working set."""

    text: str
    bytes: int | None = None
    fraction: float | None = None

    def resolve(self, working_set: int) -> int:
        if self.bytes is not None:
            return self.bytes
        assert self.fraction is not None
        return max(1, int(working_set * self.fraction))


TOO_LARGE = f"must be at most {MAX_BYTES} bytes (8 EiB)"


def parse_size(text: str) -> CacheSize:
    """`10%` or `0.1` (of the working set), `128MiB`, `1.5GB`, `4096` (bytes)."""
    raw = text.strip()
    if re.fullmatch(r"0?\.[0-9]+", raw):  # a fraction, as 5% is
        fraction = float(raw)
        if fraction <= 0:
            raise ValueError(f"cache size {text!r}: a fraction of the working set must be > 0")
        return CacheSize(raw, fraction=fraction)
    if re.fullmatch(r"[0-9]*\.[0-9]+", raw):
        raise ValueError(
            f"cache size {text!r}: bytes are whole; for a share of the working set write a "
            "fraction under 1 (0.05) or a percentage (5%), else give a unit (1.5GB)"
        )
    if raw.endswith("%"):
        try:
            pct = float(raw[:-1])
        except ValueError:
            raise ValueError(f"bad cache size {text!r}") from None
        if not 0 < pct <= 100:
            raise ValueError(f"cache size {text!r}: a percentage must be in (0, 100]")
        return CacheSize(raw, fraction=pct / 100)
    try:  # the settings' own units: `2G` is the same size in a quota and here
        n = units.size(raw)
    except ValueError:
        example = "use e.g. 1%, 10%, 128MiB, 2GB, 4096"
        raise ValueError(f"bad cache size {text!r} ({example})") from None
    if n <= 0:
        raise ValueError(f"cache size {text!r} must be > 0")
    if n > MAX_BYTES:
        raise ValueError(f"cache size {quoted(text)}: {TOO_LARGE}")
    return CacheSize(raw, bytes=n)


@dataclass
class Result:
    policy: str
    size: str
    capacity: int
    requests: int
    misses: int
    miss_bytes: int
    total_bytes: int
    seconds: float

    @property
    def object_miss_ratio(self) -> float:
        return self.misses / self.requests if self.requests else 0.0

    @property
    def byte_miss_ratio(self) -> float:
        """NaN when the trace's sizes are all 0: no byte was asked for, none missed or hit."""
        return self.miss_bytes / self.total_bytes if self.total_bytes else math.nan

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            object_miss_ratio=round(self.object_miss_ratio, 6),
            byte_miss_ratio=round(self.byte_miss_ratio, 6) if self.total_bytes else None,
            requests_per_second=round(self.requests_per_second),
        )
        return d


Progress = Callable[[int], None]


class ProgressBar:
    """A one-line bar on stderr for long replays; silent when stderr is not a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        self.stream.write(f"\r{self.label:<24} [{bar:<30}] {frac:6.1%} {rate:,.0f} req/s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def replay(
    policy: str,
    trace: Trace,
    capacity: int,
    *,
    size_label: str = "",
    progress: Progress | None = None,
    threshold: float = 1.0,
    target: float = 1.0,
) -> Result:
    """One policy at one size through the whole trace.

    threshold/target below 1.0 replay cachemgr's own hysteresis (evict once usage passes
    threshold x size, down to target x size) as DISK_CACHE_LRU_EVICTION_THRESHOLD/_TARGET set it.
    """
    model = make_model(policy, capacity, admit_larger=False, threshold=threshold, target=target)
    request = model.request
    ids, sizes = trace.ids, trace.sizes
    misses = miss_bytes = 0
    started = time.perf_counter()
    for lo in range(0, len(ids), CHUNK):
        sz = sizes[lo : lo + CHUNK]
        hits = np.fromiter(map(request, ids[lo : lo + CHUNK].tolist(), sz.tolist()), dtype=bool)
        missed = ~hits
        misses += int(missed.sum())
        miss_bytes += int(sz[missed].sum())
        if progress:
            progress(len(sz))
    return Result(
        policy,
        size_label or str(capacity),
        capacity,
        len(ids),
        misses,
        miss_bytes,
        int(sizes.sum()),
        time.perf_counter() - started,
    )


# -- offline bounds ---------------------------------------------------------------------------


def _pfoo_l_counts(trace: Trace, capacity: int, nxt: np.ndarray) -> tuple[int, int]:
    objects, byte_ratio = pfoo_l(trace, capacity, nxt)
    return round(objects * len(trace)), round(byte_ratio * int(trace.sizes.sum()))


# A bound's name -> its misses and missed bytes (trace, capacity, next_access).
BOUND_RUNS: dict[str, Callable[[Trace, int, np.ndarray], tuple[int, int]]] = {
    "belady": belady,
    "belady-size": belady_size,
    "pfoo-l": _pfoo_l_counts,
}
BOUNDS = tuple(BOUND_RUNS)


def bounds(
    trace: Trace, capacity: int, size_label: str = "", which: Iterable[str] = BOUNDS
) -> list[Result]:
    nxt = next_access(trace.ids)
    out = []
    total = int(trace.sizes.sum())
    for name in which:
        started = time.perf_counter()
        if name not in BOUND_RUNS:
            raise ValueError(f"unknown bound {name!r} (known: {', '.join(BOUNDS)})")
        m, b = BOUND_RUNS[name](trace, capacity, nxt)
        out.append(
            Result(
                name,
                size_label or str(capacity),
                capacity,
                len(trace),
                m,
                b,
                total,
                time.perf_counter() - started,
            )
        )
    return out


def simulate(
    trace: Trace,
    policies: Sequence[str],
    sizes: Sequence[CacheSize],
    *,
    with_bounds: Iterable[str] = BOUNDS,
    progress: bool = False,
    threshold: float = 1.0,
    target: float = 1.0,
) -> list[Result]:
    """Every policy and bound at every size, in that order."""
    if not 0 < target <= threshold <= 1:
        raise ValueError("need 0 < target <= threshold <= 1")
    unknown = [p for p in policies if p not in MODELS]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r} (known: {', '.join(MODELS)})")
    wss = trace.working_set_bytes()
    which = list(with_bounds)
    show = progress and len(trace) * len(policies) >= 500_000
    results: list[Result] = []
    for cs in sizes:
        cap = cs.resolve(wss)
        for p in policies:
            bar = ProgressBar(len(trace), f"{p} @ {cs.text}") if show else None
            results.append(
                replay(
                    p,
                    trace,
                    cap,
                    size_label=cs.text,
                    progress=bar,
                    threshold=threshold,
                    target=target,
                )
            )
        results.extend(bounds(trace, cap, cs.text, which))
    return results


def format_table(results: Sequence[Result], baseline: str = "lru") -> str:
    """Object and byte miss ratios per size, with the byte ratio's change against LRU."""
    base = {(r.size, r.policy): r for r in results}
    w = max([9, *(len(r.size) for r in results)])  # a size typed as 19 digits
    lines = [
        f"{'size':>{w}} {'capacity':>12} {'policy':<12} {'obj miss':>8} {'byte miss':>9} "
        f"{'bytes vs lru':>12} {'req/s':>10}"
    ]
    for r in results:
        ref = base.get((r.size, baseline))
        delta = ""
        if ref and ref.miss_bytes:
            delta = f"{(r.miss_bytes - ref.miss_bytes) / ref.miss_bytes:+.1%}"
        rate = "" if r.policy in BOUNDS else f"{r.requests_per_second:,.0f}"
        byte = f"{r.byte_miss_ratio:9.4f}" if r.total_bytes else f"{'n/a':>9}"
        lines.append(
            f"{r.size:>{w}} {human(r.capacity):>12} {r.policy:<12} {r.object_miss_ratio:8.4f} "
            f"{byte} {delta:>12} {rate:>10}"
        )
    return "\n".join(lines)


def human(n: float) -> str:
    """`1.5KiB`: a table's column, without the space."""
    return units.human_bytes(n, sep="")


def _tick(value: float, _pos: int) -> str:
    """19.4, 198, 1,984: three figures, never an exponent."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot(results: Sequence[Result], path: str, title: str = "") -> None:
    """Miss ratio against cache size, one line per policy; the area between the PFOO-L lower
    bound and the best offline policy is shaded (the optimum lies there)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = sorted({r.capacity for r in results})
    by = {(r.policy, r.capacity): r for r in results}
    policies = list(dict.fromkeys(r.policy for r in results if r.policy not in BOUNDS))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharex=True)
    unit, scale = ("GiB", 2**30) if caps and caps[-1] >= 10 * 2**30 else ("MiB", 2**20)
    x = [c / scale for c in caps]
    for ax, attr, label in (
        (axes[0], "object_miss_ratio", "object miss ratio"),
        (axes[1], "byte_miss_ratio", "byte miss ratio"),
    ):
        lower = [getattr(by[("pfoo-l", c)], attr) if ("pfoo-l", c) in by else None for c in caps]
        offline = [
            min(getattr(by[(b, c)], attr) for b in ("belady", "belady-size") if (b, c) in by)
            if any((b, c) in by for b in ("belady", "belady-size"))
            else None
            for c in caps
        ]
        if all(v is not None for v in lower + offline):
            ax.fill_between(
                x, lower, offline, color="grey", alpha=0.25, label="PFOO-L .. best offline"
            )
            ax.plot(x, lower, color="grey", linestyle=":", linewidth=1)
        for p in policies:
            pts = [(c / scale, getattr(by[(p, c)], attr)) for c in caps if (p, c) in by]
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", markersize=3, label=p)
        ax.set_xscale("log" if len(caps) > 1 and caps[-1] / caps[0] > 20 else "linear")
        # Ticks at the sizes replayed, in plain numbers: a log axis's own minor labels
        # (3x10^1, 4x10^1...) ran into each other.
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"cache size ({unit})")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the lines
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
