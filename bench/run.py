"""`python -m bench [--quick] [--json PATH] [--markdown PATH] [--profile DIR]`.

Starts its own redis-server, a prefork Celery worker and two gunicorn web processes, measures
every figure of issue 8 side by side with its baseline, prints the table, and stops everything
it started (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.books import Findings, run_books
from bench.core import FIGURE_KEYS, FIGURES, FULL_WALKS, Sizes, commandstats, median, table
from bench.infra import Processes, RedisServer, ensure_tools, memory_scratch
from bench.services import api_figures, celery_figures, scan_figure


def machine(redis_version: str) -> dict[str, Any]:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "memory_gib": round(mem / 2**30, 1),
        "cpu": cpu,
        "redis": redis_version,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def python_loop_ms() -> float:
    """How fast this host runs plain Python now: the best of three sums of 3·10^6 integers."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        sum(range(3_000_000))
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def host_speed(report: dict[str, Any]) -> str | None:
    """The run's own yardsticks, to compare runs by before comparing absolute figures: the
    machines are shared, and one ran 3.5 times slower on sockets than another the same day."""
    details, parts = report["details"], []
    rates = details.get("access_rates") or {}
    if rates:
        parts.append(
            f"one client's ZADD round trips {rates['zadd']:,.0f}/s, "
            f"pipelined {rates['zadd_batched']:,.0f}/s"
        )
    noop = [r["per_s"] for r in (details.get("celery") or {}).get("noop", [])]
    if noop:
        parts.append(f"Celery no-op tasks {sum(noop) / len(noop):,.0f}/s")
    bare = [r["rps"] for r in (details.get("wrk") or {}).get("bare", [])]
    if bare:  # the median, as api_vs_bare_flask's baseline (an even count: not the larger)
        parts.append(f"bare Flask {median(bare):,.0f} req/s")
    loop = report["machine"].get("python_loop_ms")
    if loop is not None:
        parts.append(f"Python summing 3·10^6 integers {loop} ms")
    if not parts:
        return None
    return "Host speed in this run (compare runs by these first): " + "; ".join(parts)


def _phase(name: str, errors: dict[str, str], fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    try:
        return fn()
    except Exception as exc:  # one failed phase must not hide the others' figures
        errors[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return None
    finally:
        print(f"bench: {name} {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def measure(sizes: Sizes, workdir: Path, profile: Path | None = None) -> dict[str, Any]:
    """Run every phase; returns figures, baselines, details, errors and the machine."""
    found = Findings()
    errors: dict[str, str] = {}
    procs = Processes()
    started = time.monotonic()
    try:
        server = RedisServer(procs, workdir)
        info = machine(server.version())
        info["python_loop_ms"] = python_loop_ms()
        admin = server.client(0)
        admin.config_resetstat()
        admin.slowlog_reset()
        with memory_scratch() as books_dir:
            _phase("books", errors, lambda: run_books(server, books_dir, sizes, found))
        _phase("scan", errors, lambda: scan_figure(workdir, sizes, found))
        root = _phase(
            "celery", errors, lambda: celery_figures(server, procs, workdir, sizes, found)
        )
        if root is not None:
            _phase(
                "api",
                errors,
                lambda: api_figures(server, procs, workdir, root, sizes, found, profile),
            )
        walks_total = commandstats(admin.info("commandstats"))
    finally:
        procs.stop_all()
    found.details["slowlog"] = found.slowlog
    found.details["keys_scan_calls_whole_run"] = {
        c: walks_total[c]["calls"] for c in FULL_WALKS if c in walks_total
    }
    return {
        "figures": {k: found.figures.get(k, float("nan")) for k in FIGURE_KEYS},
        "baselines": found.baselines,
        "details": found.details,
        "steady_state_full_walks": found.walks,
        "errors": errors,
        "machine": info,
        "sizes": sizes.__dict__,
        "seconds": round(time.monotonic() - started, 1),
    }


def _number(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured is written as null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def render(report: dict[str, Any], *, markdown: bool = False) -> str:
    walks = report["steady_state_full_walks"]
    lines = [table(report["figures"], report["baselines"], markdown=markdown), ""]
    walk_text = ", ".join(f"{k} {v}" for k, v in walks.items()) or "not measured"
    verdict = "none" if walks and not any(walks.values()) else "SOME"
    lines.append(
        f"KEYS/SCAN/HSCAN/ZSCAN calls during the steady-state phases (INFO commandstats before "
        f"and after each): {verdict} ({walk_text})."
    )
    for phase, entries in report["details"].get("slowlog", {}).items():
        worst = max(entries, key=lambda e: e["ms"]) if entries else None
        lines.append(
            f"SLOWLOG (> 10 ms) {phase}: {len(entries)}"
            + (f", worst {worst['ms']:.0f} ms `{worst['command'][:60]}`" if worst else "")
        )
    mem = report["details"].get("memory_per_entry_breakdown")
    if mem:
        lines.append("Redis bytes per entry by key family (MEMORY USAGE on samples): "
                     + "; ".join(f"{k} {v:.0f}" for k, v in mem.items()) + ".")
    speed = host_speed(report)
    if speed:
        lines.append(speed + ".")
    m = report["machine"]
    lines.append(
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, redis-server "
        f"{m['redis']}, Python {m['python']}; run took {report['seconds']} s."
    )
    for name, err in report["errors"].items():
        lines.append(f"ERROR in {name}: {err}")
    if markdown:  # the notes as a list, so that Markdown keeps them apart
        head, notes = lines[:2], lines[2:]
        return "\n".join(head + [f"- {n}" for n in notes])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="n up to 10^5, under a minute")
    parser.add_argument("--json", type=Path, help="write the figures (name -> number) here")
    parser.add_argument("--details", type=Path, help="write every measurement here (JSON)")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs of the web process")
    parser.add_argument("--no-setup", action="store_true", help="do not install missing tools")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds into measure()'s finally, which stops every child

    signal.signal(signal.SIGTERM, stop)
    if not args.no_setup:
        ensure_tools()
    sizes = Sizes.quick() if args.quick else Sizes.full()
    with tempfile.TemporaryDirectory(prefix="cachemgr-bench-") as tmp:
        report = measure(sizes, Path(tmp), args.profile)
    print(render(report))
    if args.json:
        args.json.write_text(
            json.dumps({k: _number(v) for k, v in report["figures"].items()}, indent=2) + "\n"
        )
    if args.details:
        args.details.write_text(json.dumps(report, indent=2, default=_number) + "\n")
    if args.markdown:
        args.markdown.write_text(render(report, markdown=True) + "\n")
    missed = [f.key for f in FIGURES if f.met(report["figures"].get(f.key)) is False]
    if missed:
        print(f"bench: goals missed: {', '.join(missed)} (see bench/RESULTS.md)", file=sys.stderr)
    # A missed goal is a finding, not a failure of the command; a phase that broke is.
    return 1 if report["errors"] else 0
