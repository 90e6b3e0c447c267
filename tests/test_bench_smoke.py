"""The bench's code runs: its pure helpers, and the books and scan figures on tiny sizes.

Nothing here is a timed assertion; the numbers are only checked to be numbers.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from bench import core
from bench.books import Findings, run_books
from bench.core import FIGURE_KEYS, Sizes
from bench.infra import Processes, RedisServer
from bench.run import _number, render
from bench.services import baseline_argv, scan_figure

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8080/cache/stats
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.01ms    5.10ms  60.00ms   80.00%
  Latency Distribution
     50%   19.50ms
     75%   22.00ms
     90%   26.00ms
     99%    1.20s
  2000 requests in 2.00s, 1.00MB read
Requests/sec:   1000.50
Transfer/sec:    500.00KB
"""


def test_pure_helpers() -> None:
    p = core.path40("f", 123456)
    assert len(p) == core.PATH_LENGTH and p.count("/") == 1
    def send(client, path, size, files, now):  # what Store.register does with a client
        return client.evalsha("0" * 40, 2, "k1", f"dir:{path}", path, size, files, now, 60)

    payload = core.evalsha_payload(send, [(p, 1, 2, 3.0)])
    # EVALSHA, the SHA, the key count, 2 keys, 5 arguments.
    assert payload.startswith(b"*10\r\n$7\r\nEVALSHA\r\n") and p.encode() in payload
    parsed = core.parse_wrk(WRK_OUTPUT)
    assert parsed == {"rps": 1000.5, "p50_ms": 19.5, "p99_ms": 1200.0, "errors": 0.0}
    runs = core.side_by_side({"a": lambda: 1.0, "b": lambda: 2.0}, 3)
    assert runs == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert core.rate(lambda: 10, 0.01) > 0
    figures = {k: 1.0 for k in FIGURE_KEYS}
    assert core.check_json(figures) == []
    assert core.check_json({"access_flatness": "x"})  # missing keys and a string
    text = core.table(figures, {}, markdown=True)
    assert all(f"`{k}`" in text for k in FIGURE_KEYS)
    by_key = {f.key: f for f in core.FIGURES}
    assert by_key["access_flatness"].met(1.2) and not by_key["access_flatness"].met(1.4)
    assert by_key["access_pipelined_per_s"].met(60000)
    assert by_key["api_stats_rps"].met(1.0) is None
    served = ["python", "-m", "gunicorn", "api.wsgi:app", "--bind", "127.0.0.1:8080", "-w", "4"]
    assert baseline_argv(served, 8080, 9001) == [
        "python", "-m", "gunicorn", "bench.bare_app:app", "--bind", "127.0.0.1:9001", "-w", "4"
    ]  # fmt: skip
    before = {"keys": {"calls": 1.0, "usec": 5.0}}
    after = {"keys": {"calls": 3.0, "usec": 9.0}, "get": {"calls": 2.0, "usec": 1.0}}
    assert core.full_walk_calls(core.commandstats_delta(before, after)) == 2


@pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="the bench starts a redis-server of its own",
)
def test_books_and_scan_figures_on_tiny_sizes(tmp_path: Path) -> None:
    sizes = Sizes.tiny()
    found = Findings()
    procs = Processes()
    try:
        server = RedisServer(procs, tmp_path)
        run_books(server, tmp_path / "books", sizes, found)
    finally:
        procs.stop_all()
    scan_figure(tmp_path, sizes, found)
    measured = (
        "access_flatness",
        "sweep_flatness",
        "evict_flatness",
        "seed_scan_vs_ours",
        "access_vs_raw_zadd",
        "access_pipelined_per_s",
        "redis_bytes_per_entry",
        "scan_vs_du",
    )
    written = json.loads(
        json.dumps({k: _number(found.figures.get(k, float("nan"))) for k in FIGURE_KEYS})
    )
    assert set(written) == set(FIGURE_KEYS)
    for key in measured:
        assert isinstance(written[key], int | float) and math.isfinite(written[key]), key
    assert found.details["scan"]["bytes_identical"] == 1
    assert found.walks == {"access": 0, "sweep+evict": 0}
    report = {
        "figures": {k: found.figures.get(k, float("nan")) for k in FIGURE_KEYS},
        "baselines": found.baselines,
        "details": found.details,
        "steady_state_full_walks": found.walks,
        "errors": {},
        "machine": {"cores": 2, "cpu": "", "memory_gib": 1, "redis": "7", "python": "3"},
        "seconds": 1.0,
    }
    text = render(report)
    assert "access_flatness" in text
    # The run's own yardsticks, measured in this run: how fast the host was.
    zadd = found.details["access_rates"]["zadd"]
    assert f"one client's ZADD round trips {zadd:,.0f}/s" in text


def test_bench_policies_without_the_traces_says_where_in_one_line(tmp_path, capsys):
    """It ended in a traceback (a TraceError) when the shared traces were not there."""
    from bench.policies import main

    assert main(["--traces", str(tmp_path / "none"), "--docs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such file" in err and "--traces DIR" in err, err
    assert not (tmp_path / "policies.md").exists()
