"""Figures on the disk scan, the Celery worker and the web process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.books import Findings
from bench.core import (
    Sizes,
    commandstats,
    commandstats_delta,
    full_walk_calls,
    median,
    parse_wrk,
    ratio,
    side_by_side,
    timed,
)
from bench.infra import REPO, Processes, RedisServer, bench_env, free_port, py_spy, wait_port
from cachemgr import scanner

DB_BOOKS = 3  # the worker's and the web process's books
DB_BROKER = 4


# -- scan_vs_du ---------------------------------------------------------------------------------
def make_tree(top: Path, dirs: int, files_per_dir: int, size: int = 100) -> None:
    data = b"x" * size
    for d in range(dirs):
        sub = top / f"d{d:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files_per_dir):
            fd = os.open(sub / f"f{f:03d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def du_bytes(top: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(top)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def scan_figure(workdir: Path, sizes: Sizes, found: Findings) -> None:
    top = workdir / "scan-tree"
    make_tree(top, sizes.scan_dirs, sizes.scan_files_per_dir)
    ours, theirs = scanner.scan(top).size_bytes, du_bytes(top)  # also warms the page cache
    runs = side_by_side(
        {
            "scan": lambda: timed(lambda: scanner.scan(top)),
            "du": lambda: timed(lambda: du_bytes(top)),
        },
        max(sizes.rounds, 5),
    )
    scan_s, du_s = median(runs["scan"]), median(runs["du"])
    value = ratio(scan_s, du_s)
    found.figures["scan_vs_du"] = value
    same = ours == theirs
    files = sizes.scan_dirs * sizes.scan_files_per_dir
    found.baselines["scan_vs_du"] = (
        f"{scan_s * 1e3:.0f} ms vs du {du_s * 1e3:.0f} ms, {files:,} files in "
        f"{sizes.scan_dirs:,} dirs; bytes {'identical' if same else 'DIFFER'} ({ours:,})"
    )
    found.details["scan"] = {
        "scan_ms": scan_s * 1e3,
        "du_ms": du_s * 1e3,
        "scan_bytes": ours,
        "du_bytes": theirs,
        "bytes_identical": int(same),
    }
    if not same:
        found.figures["scan_vs_du"] = float("nan")  # a faster wrong answer meets no goal


# -- Celery ---------------------------------------------------------------------------------------
def _done_times(backend: Any, ids: list[str]) -> tuple[list[float], int]:
    """date_done of every finished task (epoch seconds) and how many failed."""
    pipe = backend.pipeline(transaction=False)
    for i in ids:
        pipe.get(f"celery-task-meta-{i}")
    times, failed = [], 0
    for raw in pipe.execute():
        if raw is None:
            continue
        meta = json.loads(raw)
        if meta.get("status") == "SUCCESS":
            times.append(datetime.fromisoformat(meta["date_done"]).timestamp())
        elif meta.get("status") == "FAILURE":
            failed += 1
            times.append(datetime.fromisoformat(meta["date_done"]).timestamp())
    return times, failed


def _drain(app: Any, backend: Any, name: str, args: list[list[Any]], timeout: float) -> dict:
    """Queue the tasks where no worker listens, open the queue, wait; rate from date_done.

    Queueing first keeps the sender's own cost (and its CPU) out of the worker's rate.
    """
    queue = f"bench.{name.rsplit('.', 1)[-1]}.{time.monotonic_ns()}"
    ids: list[str] = []
    with app.producer_or_acquire() as producer:
        for a in args:
            ids.append(app.send_task(name, args=a, queue=queue, producer=producer).id)
    opened = time.time()
    # limit=1: one worker answers; without it a broadcast waits out the whole timeout.
    app.control.add_consumer(queue, reply=True, timeout=10, limit=1)
    deadline = time.monotonic() + timeout
    times: list[float] = []
    failed = 0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if backend.llen(queue):
            continue
        times, failed = _done_times(backend, ids)
        if len(times) == len(ids):
            break
    app.control.cancel_consumer(queue, reply=True, timeout=10, limit=1)
    if len(times) < len(ids):
        raise RuntimeError(f"{name}: {len(times)} of {len(ids)} done after {timeout} s")
    span = max(times) - min(times)
    return {
        "tasks": len(ids),
        "failed": failed,
        "per_s": (len(times) - 1) / span if span > 0 else float("nan"),
        "wall_per_s": len(ids) / (max(times) - opened),
    }


def celery_figures(
    redis_server: RedisServer, procs: Processes, workdir: Path, sizes: Sizes, found: Findings
) -> Path:
    """celery_register_per_s and celery_register_vs_noop; returns the registered root."""
    from celery import Celery

    root = workdir / "celery-root"
    for i in range(sizes.celery_dirs):
        d = root / f"c{i:06d}"
        d.mkdir(parents=True)
        for name in ("a.flac", "cover.jpg"):
            (d / name).write_bytes(b"y" * 1000)
    env = bench_env(
        os.environ,
        REDIS_URL=redis_server.url(DB_BOOKS),
        CELERY_BROKER_URL=redis_server.url(DB_BROKER),
        CELERY_RESULT_BACKEND=redis_server.url(DB_BROKER),
        DISK_CACHE_ROOT=str(root),
        DISK_CACHE_MAX_BYTES="1TB",
    )
    worker = procs.start(
        "worker",
        [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "prefork",
            "-c", "2", "-n", f"bench{redis_server.port}@%h",
        ],  # fmt: skip
        env=env,
        log=workdir / "worker.log",
    )
    app = Celery("bench", broker=redis_server.url(DB_BROKER), backend=redis_server.url(DB_BROKER))
    app.conf.update(task_serializer="json", accept_content=["json"], result_extended=True)
    backend = redis_server.client(DB_BROKER)
    books = redis_server.client(DB_BOOKS)
    try:
        warm = [app.send_task("cachemgr.noop") for _ in range(20)]
        for r in warm:
            r.get(timeout=120)
        app.send_task("cachemgr.register_directory", args=["c000000"]).get(timeout=30)
        books.flushdb()  # the warm-up registration does not count
        paths = [f"c{i:06d}" for i in range(sizes.celery_dirs)]
        half = len(paths) // 2
        # A, B, B, A: each kind gets one early and one late turn on a shared machine.
        before = commandstats(books.info("commandstats"))
        noop1 = _drain(app, backend, "cachemgr.noop", [[] for _ in range(half)], 300)
        reg1 = _drain(app, backend, "cachemgr.register_directory", [[p] for p in paths[:half]], 300)
        reg2 = _drain(app, backend, "cachemgr.register_directory", [[p] for p in paths[half:]], 300)
        noop2 = _drain(app, backend, "cachemgr.noop", [[] for _ in range(len(paths) - half)], 300)
        delta = commandstats_delta(before, commandstats(books.info("commandstats")))
        found.walks["celery"] = full_walk_calls(delta)
        found.take_slowlog("celery: worker registrations", books)
        tracked = int(books.hlen("cache:entries"))
    finally:
        app.close()
        procs.stop(worker)
    reg = (reg1["per_s"] + reg2["per_s"]) / 2
    noop = (noop1["per_s"] + noop2["per_s"]) / 2
    failed = reg1["failed"] + reg2["failed"]
    if tracked != sizes.celery_dirs or failed:
        raise RuntimeError(f"celery: {tracked} of {sizes.celery_dirs} tracked, {failed} failed")
    found.figures["celery_register_per_s"] = reg
    found.baselines["celery_register_per_s"] = (
        f"{sizes.celery_dirs:,} dirs (2 files each), ABBA halves {reg1['per_s']:,.0f} / "
        f"{reg2['per_s']:,.0f}"
    )
    found.figures["celery_register_vs_noop"] = ratio(reg, noop)
    found.baselines["celery_register_vs_noop"] = (
        f"{reg:,.0f}/s vs noop {noop:,.0f}/s ({noop1['per_s']:,.0f} / {noop2['per_s']:,.0f})"
    )
    found.details["celery"] = {"register": [reg1, reg2], "noop": [noop1, noop2]}
    return root


# -- the web process ----------------------------------------------------------------------------
def _wrk(url: str, seconds: int, script: Path | None = None, env: dict | None = None) -> dict:
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, env=env, timeout=seconds + 30
    )
    return parse_wrk(out.stdout)


def served_argv(pid: int, timeout: float = 30.0) -> list[str]:
    """The command line of a process once it runs gunicorn (`cachemgr serve` execs it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        argv = [a.decode() for a in raw.split(b"\0") if a]
        if "api.wsgi:app" in argv:
            return argv
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} never ran gunicorn with api.wsgi:app")


def baseline_argv(argv: list[str], api_port: int, bare_port: int) -> list[str]:
    """The same command for the bare app: only the app and the bound port change."""
    out = []
    for a in argv:
        if a == "api.wsgi:app":
            a = "bench.bare_app:app"
        elif a.endswith(f":{api_port}"):
            a = a[: -len(str(api_port))] + str(bare_port)
        out.append(a)
    return out


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv[:-1] else "?"


def _gunicorn_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def api_figures(
    redis_server: RedisServer,
    procs: Processes,
    workdir: Path,
    root: Path,
    sizes: Sizes,
    found: Findings,
    profile_dir: Path | None = None,
) -> None:
    """api_stats_rps, api_vs_bare_flask, api_p99_ms: wrk, 32 connections, side by side."""
    api_port, bare_port = free_port(), free_port()
    base = {
        "REDIS_URL": redis_server.url(DB_BOOKS),
        "CELERY_BROKER_URL": redis_server.url(DB_BROKER),
        "CELERY_RESULT_BACKEND": redis_server.url(DB_BROKER),
        "DISK_CACHE_ROOT": str(root),
        "DISK_CACHE_MAX_BYTES": "1TB",
    }
    api_env = bench_env(os.environ, PORT=str(api_port), **base)
    bare_env = bench_env(os.environ, PORT=str(bare_port), **base)
    cachemgr_bin = Path(sys.executable).parent / "cachemgr"
    web = procs.start("web", [str(cachemgr_bin), "serve"], env=api_env, log=workdir / "web.log")
    books = redis_server.client(DB_BOOKS)
    bare: subprocess.Popen[bytes] | None = None
    try:
        wait_port(api_port, 60, web)
        # The baseline runs the very command line `cachemgr serve` ended up executing (read
        # back from /proc: same workers, threads and flags), with the bare app on its own port.
        argv = baseline_argv(served_argv(web.pid), api_port, bare_port)
        shape = f"{_flag(argv, '--workers')} workers x {_flag(argv, '--threads')} threads"
        bare = procs.start("bare", argv, env=bare_env, log=workdir / "bare.log")
        wait_port(bare_port, 60, bare)
        stats_url = f"http://127.0.0.1:{api_port}/cache/stats"
        bare_url = f"http://127.0.0.1:{bare_port}/bare"
        ping_url = f"http://127.0.0.1:{bare_port}/bare-redis"
        paths_file = workdir / "wrk-paths.txt"
        tracked = books.zrange("cache:lru", 0, -1)
        if not tracked:
            raise RuntimeError("the web process's books are empty")
        paths_file.write_text("\n".join(tracked) + "\n")
        wrk_env = {**os.environ, "BENCH_WRK_PATHS": str(paths_file)}
        dir_url = f"http://127.0.0.1:{api_port}"
        script = REPO / "bench" / "wrk_paths.lua"
        for url in (stats_url, bare_url, ping_url):  # every gunicorn worker imports, connects
            _wrk(url, 1)
        _wrk(dir_url, 1, script, wrk_env)
        before = commandstats(books.info("commandstats"))
        runs: dict[str, list[dict]] = {"stats": [], "bare": [], "ping": [], "dir": []}

        def keep(name: str, fn: Any) -> Any:
            def run() -> float:
                res = fn()
                runs[name].append(res)
                return float(res["rps"])

            return run

        secs = sizes.wrk_seconds
        side_by_side(
            {
                "stats": keep("stats", lambda: _wrk(stats_url, secs)),
                "bare": keep("bare", lambda: _wrk(bare_url, secs)),
                "ping": keep("ping", lambda: _wrk(ping_url, secs)),
                "dir": keep("dir", lambda: _wrk(dir_url, secs, script, wrk_env)),
            },
            sizes.wrk_rounds,
        )
        delta = commandstats_delta(before, commandstats(books.info("commandstats")))
        found.walks["api"] = full_walk_calls(delta)
        found.take_slowlog("api: gunicorn under wrk", books)
        found.details["commandstats_api"] = delta
        if profile_dir is not None:
            _profile(web.pid, stats_url, dir_url, script, wrk_env, profile_dir)
    finally:
        if bare is not None:
            procs.stop(bare)
        procs.stop(web)
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    if errors:
        raise RuntimeError(f"wrk saw {errors:.0f} failed requests (see web.log)")
    stats = median(r["rps"] for r in runs["stats"])
    bare_rps = median(r["rps"] for r in runs["bare"])
    p99 = median(r["p99_ms"] for r in runs["dir"])
    found.figures["api_stats_rps"] = stats
    found.baselines["api_stats_rps"] = (
        f"gunicorn as `cachemgr serve` ({shape}), p50 "
        f"{median(r['p50_ms'] for r in runs['stats']):.1f} ms"
    )
    found.figures["api_vs_bare_flask"] = ratio(stats, bare_rps)
    found.baselines["api_vs_bare_flask"] = f"{stats:,.0f} vs bare Flask {bare_rps:,.0f} req/s"
    ping_rps = median(r["rps"] for r in runs["ping"])
    found.figures["api_vs_one_redis_call"] = ratio(stats, ping_rps)
    found.baselines["api_vs_one_redis_call"] = (
        f"{stats:,.0f} vs {ping_rps:,.0f} req/s (bare Flask + one PING: "
        f"{ratio(ping_rps, bare_rps):.2f} x bare)"
    )
    found.figures["api_p99_ms"] = p99
    bare_p99 = median(r["p99_ms"] for r in runs["bare"])
    found.baselines["api_p99_ms"] = (
        f"{median(r['rps'] for r in runs['dir']):,.0f} req/s, p50 "
        f"{median(r['p50_ms'] for r in runs['dir']):.1f} ms; bare Flask p99 {bare_p99:.1f} ms"
    )
    found.details["wrk"] = runs
    found.details["api_bare_p99_ms"] = bare_p99


def _profile(
    pid: int, stats_url: str, dir_url: str, script: Path, wrk_env: dict, out: Path
) -> None:
    """py-spy flame graphs of one gunicorn worker under each endpoint's load."""
    spy = py_spy()
    children = _gunicorn_children(pid)
    if not spy or not children:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, args in (("stats", (stats_url, 6)), ("directories", (dir_url, 6, script, wrk_env))):
        rec = subprocess.Popen(
            [spy, "record", "-p", str(children[0]), "-d", "5", "-o", str(out / f"web-{name}.svg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wrk(*args)  # type: ignore[arg-type]
        rec.wait(timeout=60)
