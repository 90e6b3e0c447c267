"""The simulator and the access-log export, through their click commands."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from api.cli_sim import simulate_command, trace_group
from cachemgr.bounds import belady, pfoo_l
from cachemgr.keys import Keys
from cachemgr.models import MODELS
from cachemgr.simulate import ProgressBar, parse_size, replay
from cachemgr.store import Store
from cachemgr.traces import Trace, read_trace, write_oracle_general
from tests.conftest import REDIS_URL

CLOUD = Path("/work/shared/traces/cloudPhysicsIO.oracleGeneral.bin")


def synthetic(n: int = 3000, objects: int = 300, seed: int = 7) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    sizes = {i: rng.randint(100, 5000) for i in range(objects)}
    weights = [1 / (i + 1) for i in range(objects)]
    ids = rng.choices(range(objects), weights=weights, k=n)
    return [(t, i, sizes[i]) for t, i in enumerate(ids)]


@pytest.fixture
def text_trace(tmp_path: Path) -> Path:
    p = tmp_path / "small.txt"
    p.write_text("".join(f"{t} {i} {s}\n" for t, i, s in synthetic()))
    return p


def run(*args: str) -> tuple[int, str]:
    """Exit code and stdout: a warning on stderr (matplotlib says when it builds its font cache
    on a cold first import) must not break the JSON the tests parse."""
    result = CliRunner().invoke(simulate_command, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_simulate_prints_every_policy_and_the_bounds(text_trace):
    code, out = run(str(text_trace), "--size", "5%", "--size", "20KiB")
    assert code == 0, out
    for name in (*MODELS, "belady", "belady-size", "pfoo-l"):
        assert f" {name} " in out
    assert "3,000 requests" in out


def test_simulate_json_and_plot(text_trace, tmp_path):
    png = tmp_path / "curves.png"
    code, out = run(
        str(text_trace),
        "--policy",
        "lru",
        "--policy",
        "s3fifo",
        "--size",
        "2%",
        "--size",
        "10%",
        "--json",
        "--plot",
        str(png),
    )
    assert code == 0, out
    data = json.loads(out)
    rows = {(r["policy"], r["size"]): r for r in data["results"]}
    assert set(p for p, _ in rows) == {"lru", "s3fifo", "belady", "belady-size", "pfoo-l"}
    for size in ("2%", "10%"):
        lower = rows[("pfoo-l", size)]
        for p in ("lru", "s3fifo", "belady"):
            assert rows[(p, size)]["object_miss_ratio"] >= lower["object_miss_ratio"] - 1e-9
            assert rows[(p, size)]["byte_miss_ratio"] >= lower["byte_miss_ratio"] - 1e-9
    assert rows[("lru", "10%")]["misses"] <= rows[("lru", "2%")]["misses"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_three_formats_give_the_same_answer(tmp_path):
    reqs = synthetic(1500)
    text = tmp_path / "t.txt"
    text.write_text("".join(f"{t} {i} {s}\n" for t, i, s in reqs))
    with (tmp_path / "t.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "path", "size", "hit"])
        w.writerows([(t, f"album/{i}", s, 0) for t, i, s in reqs])
    write_oracle_general(read_trace(text), tmp_path / "t.oracleGeneral.bin")
    answers = set()
    for name in ("t.txt", "t.csv", "t.oracleGeneral.bin"):
        code, out = run(str(tmp_path / name), "--policy", "sieve", "--size", "7%", "--json")
        assert code == 0, out
        r = json.loads(out)["results"]
        answers.add(tuple((x["policy"], x["misses"], x["miss_bytes"]) for x in r))
    assert len(answers) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["/nonexistent/trace.bin"], "no such file"),
        (["{trace}", "--size", "12 parsecs"], "bad cache size"),
        (["{trace}", "--size", "250%"], "percentage"),
        (["{trace}", "--policy", "mru"], "unknown policy"),
        (["{trace}", "--size", "-5MiB"], "bad cache size"),
        (["{trace}", "--limit", "0"], "--limit"),
        (["{bad}"], "24-byte"),
        (["{trace}", "--size", "1.5"], "bytes are whole"),
        (["{trace}", "--size", "0.0"], "must be > 0"),
        (["{trace}", "--plot", "/nonexistent/curves.png", "--json"], "no directory"),
        (["{trace}", "--plot", ""], "--plot needs a file name"),
        (["{trace}", "--plot", " "], "--plot needs a file name"),
        # Said after the whole replay, its results thrown away (minutes on a real trace).
        (["{trace}", "--plot", "{tmp}/curves.txt", "--json"], "matplotlib writes no 'txt'"),
        (["{trace}", "--plot", "/proc/curves.png"], "cannot write the plot /proc/curves.png: "),
        # A name printed raw split the message, or turned it around (U+202E).
        (["x\ny.bin"], "x\\ny.bin: no such file"),
        (["x\u202ey.bin"], "x\\u202ey.bin: no such file"),
        ([""], "no trace file named (an empty name)"),
    ],
)
def test_simulate_errors_are_one_line(text_trace, tmp_path, args, message):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"\x00" * 25)
    args = [a.format(trace=text_trace, bad=bad, tmp=tmp_path) for a in args]
    code, out = run(*args)
    assert code == 2  # the main CLI's "bad usage or path"
    assert message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_sizes_parse():
    assert parse_size("128MiB").bytes == 128 * 2**20
    assert parse_size("2GB").bytes == 2 * 10**9
    assert parse_size("10%").fraction == pytest.approx(0.1)
    assert parse_size("4096").bytes == 4096
    assert parse_size("0.05").fraction == parse_size(".05").fraction == pytest.approx(0.05)


def test_sizes_given_twice_are_replayed_once_and_fractions_match_percentages(text_trace):
    code, out = run(str(text_trace), "--policy", "lru", "--size", "5%", "--size", "5%",
                    "--size", "0.05", "--no-bounds", "--json")  # fmt: skip
    assert code == 0, out
    rows = json.loads(out)["results"]
    assert [r["size"] for r in rows] == ["5%", "0.05"]
    assert rows[0]["capacity"] == rows[1]["capacity"]


def test_csv_headers_as_spreadsheets_write_them(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,path,size\n0,a,5\n1,b,7\n2,a,5\n")
    excel = tmp_path / "excel.csv"  # a byte-order mark, capitals and spaces
    excel.write_bytes(b"\xef\xbb\xbfTimestamp, Path ,SIZE\r\n0,a,5\r\n1,b,7\r\n2,a,5\r\n")
    a, b = read_trace(plain), read_trace(excel)
    assert a.ids.tolist() == b.ids.tolist() and a.sizes.tolist() == b.sizes.tolist()
    headless = tmp_path / "headless.csv"
    headless.write_text("0,a,5\n1,b,7\n")
    code, out = run(str(headless))
    assert code == 2 and "its first line reads '0,a,5'" in out


def test_a_trace_can_come_from_standard_input(text_trace):
    data = Path(text_trace).read_text()
    result = CliRunner().invoke(
        simulate_command, ["-", "--policy", "lru", "--no-bounds", "--json"], input=data
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["requests"] == len(data.splitlines())


def test_an_export_piped_in_reads_as_csv_compressed_or_not(tmp_path):
    import lzma

    rows = "timestamp,path,size,hit\n1.0,a,5,0\n2.0,b,7,0\n3.0,a,5,1\n"
    for data in (rows.encode(), lzma.compress(rows.encode())):
        result = CliRunner().invoke(
            simulate_command, ["-", "--policy", "lru", "--no-bounds", "--json"], input=data
        )
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert (out["trace"], out["requests"], out["objects"]) == ("stdin", 3, 2)
    bad = CliRunner().invoke(simulate_command, ["-", "--no-bounds"], input="1 a\n")
    assert bad.exit_code == 2 and "stdin:1: expected `time id size`" in bad.output


def test_a_negative_size_names_its_request(tmp_path):
    p = tmp_path / "neg.txt"
    p.write_text("0 a 5\n1 b 7\n2 c -3\n")
    code, out = run(str(p))
    assert code == 2 and "negative size at request 3" in out


def test_bounds_order_on_a_synthetic_trace(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("".join(f"{t} {i} {s}\n" for t, i, s in synthetic(4000, 400)))
    trace: Trace = read_trace(p)
    cap = trace.working_set_bytes() // 10
    lru = replay("lru", trace, cap)
    opt_misses, _ = belady(trace, cap)
    obj_lb, byte_lb = pfoo_l(trace, cap)
    assert obj_lb * len(trace) <= opt_misses <= lru.misses
    assert byte_lb <= lru.byte_miss_ratio


@pytest.mark.skipif(not CLOUD.exists(), reason="shared traces not present")
def test_lru_and_fifo_give_libcachesim_miss_counts_on_cloudphysics():
    # libCacheSim's test/test_evictionAlgo.c numbers (and libcachesim 0.3.5 on PyPI).
    code, out = run(
        str(CLOUD),
        "--policy",
        "lru",
        "--size",
        "128MiB",
        "--size",
        "1GiB",
        "--no-bounds",
        "--json",
    )
    assert code == 0, out
    misses = {r["size"]: r["misses"] for r in json.loads(out)["results"]}
    assert misses == {"128MiB": 93374, "1GiB": 71704}


def test_trace_export_writes_the_access_log(redis_client, prefix, tmp_path):
    store = Store(redis_client, Keys(prefix), access_log_maxlen=1000)
    store.access("a/one", now=100.0, miss_bytes=5000)
    store.register("a/one", 5000, 3, now=101.0)
    store.access("a/one", now=102.0)
    store.access("b/two", now=103.0)  # a miss of unknown size
    out = tmp_path / "log.csv"
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [(r["path"], r["size"], r["hit"]) for r in rows] == [
        ("a/one", "5000", "0"),
        ("a/one", "5000", "1"),
        ("b/two", "0", "0"),
    ]
    assert float(rows[1]["timestamp"]) == 102.0
    # ...and the export is a trace the simulator reads.
    code, text = run(str(out), "--policy", "lru", "--size", "1MiB", "--no-bounds")
    assert code == 0, text


@pytest.mark.parametrize("cap", [200, 3000])
def test_an_export_keeps_what_it_read_while_the_cap_trims_the_log(redis_client, prefix, cap):
    """It read the stream twice, names first, then rows: what the cap trimmed in between was
    lost (all of it under a busy pipeline, then said as "no accesses recorded yet"). Nor
    does it follow a pipeline that logs faster than it reads; what the cap trims between
    its batches of 1000 is counted (it went unsaid)."""
    import io

    from cachemgr.access_log import export_rows

    store = Store(redis_client, Keys(prefix), access_log_maxlen=cap)
    for i in range(cap):
        store.access(f"old{i}", now=1.0 + i, miss_bytes=10)
    reads = []

    class Busy:  # the pipeline logs half the cap more after each of the export's reads
        def execute_command(self, *args, **kwargs):
            reply = redis_client.execute_command(*args, **kwargs)
            if args[0] == "XRANGE":
                reads.append(len(reply))
                batch = [f"new{len(reads)}-{i}" for i in range(max(200, cap // 2))]
                store.access_many(batch, now=1000.0)
            return reply

    out = io.StringIO()
    done = export_rows(Busy(), Keys(prefix), out)
    paths = [r["path"] for r in csv.DictReader(io.StringIO(out.getvalue()))]
    assert done.rows == len(paths) and done.rows + done.trimmed == cap, (done, reads)
    assert all(p.startswith("old") for p in paths)
    assert paths == sorted(paths, key=lambda p: int(p[3:]))  # oldest first, none twice
    if cap == 200:  # read in one batch: nothing to lose
        assert done.rows == 200 and done.trimmed == 0
    else:
        assert done.trimmed > 0


def test_an_empty_export_says_whether_the_access_log_is_off(redis_client, prefix):
    # A header alone, with the log off, left the user to guess why.
    args = ["export", "--redis-url", REDIS_URL, "--prefix", prefix]
    nobodys = CliRunner().invoke(trace_group, args)  # no workers publish under the prefix
    assert nobodys.exit_code == 0 and nobodys.stdout == "timestamp,path,size,hit\n"
    assert f"no node's workers keep books under key prefix {prefix!r}" in nobodys.stderr
    assert "access log is off" not in nobodys.stderr  # it was blamed
    redis_client.hset(f"{prefix}cache:config", "access_log_maxlen", "0")  # the workers' own
    off = CliRunner().invoke(trace_group, args)
    assert "the access log is off (DISK_CACHE_ACCESS_LOG_MAXLEN" in off.stderr
    redis_client.hset(f"{prefix}cache:config", "access_log_maxlen", "1000")
    on = CliRunner().invoke(trace_group, args)
    assert on.exit_code == 0 and "no accesses recorded yet" in on.stderr


def test_trace_export_reads_the_named_nodes_log(redis_client, monkeypatch):
    """DISK_CACHE_NODE=n1 alone: the log is under {n1}:, as the node's workers keep it."""
    node = f"exp{os.getpid()}"
    store = Store(redis_client, Keys(f"{{{node}}}:"), access_log_maxlen=10)
    try:
        store.access("x", now=5.0, miss_bytes=10)
        monkeypatch.setenv("DISK_CACHE_NODE", node)
        monkeypatch.delenv("DISK_CACHE_KEY_PREFIX", raising=False)
        monkeypatch.setenv("REDIS_URL", REDIS_URL)
        result = CliRunner().invoke(trace_group, ["export"])
        assert result.exit_code == 0, result.output
        assert [line.split(",")[1:] for line in result.stdout.splitlines()[1:]] == [
            ["x", "10", "0"]
        ]
    finally:
        redis_client.delete(store.keys.accesses, store.keys.stats)


def test_trace_export_into_a_missing_directory_says_so(tmp_path):
    out = tmp_path / "nope" / "log.csv"
    result = CliRunner().invoke(trace_group, ["export", "--redis-url", REDIS_URL, "-o", str(out)])
    assert result.exit_code == 2 and "no directory" in result.output
    assert ".part" not in result.output
    empty = CliRunner().invoke(trace_group, ["export", "--redis-url", REDIS_URL, "-o", ""])
    assert empty.exit_code == 2 and "-o needs a file name" in empty.output, empty.output


def test_trace_export_when_redis_is_down_keeps_the_old_file(tmp_path):
    out = tmp_path / "precious.csv"
    out.write_text("timestamp,path,size,hit\n1,a,5,0\n")
    result = CliRunner().invoke(
        trace_group,
        ["export", "--redis-url", "redis://127.0.0.1:1/0", "--prefix", "x:", "-o", str(out)],
    )
    assert result.exit_code == 4  # the main CLI's "Redis or broker unreachable"
    assert "Redis cannot be reached" in result.output and "Traceback" not in result.output
    assert out.read_text() == "timestamp,path,size,hit\n1,a,5,0\n"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    "url", ["notaurl", "redis+sentinel://host:notaport/m"]
)
def test_trace_export_with_a_bad_redis_url_says_so(url):
    result = CliRunner().invoke(trace_group, ["export", "--redis-url", url, "--prefix", "x:"])
    assert result.exit_code == 2, result.output
    assert "bad Redis URL" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "row,why", [("1,a,inf", "bad row"), ("1,a,99999999999999999999999", "out of range")]
)
def test_a_trace_with_an_impossible_size_is_refused(tmp_path, row, why):
    p = tmp_path / "t.csv"
    p.write_text(f"timestamp,path,size\n0,b,5\n{row}\n")
    code, out = run(str(p))
    assert code == 2 and why in out and "Traceback" not in out


def test_gzipped_traces_read_as_their_plain_selves(tmp_path):
    import gzip

    reqs = synthetic(800)
    text = tmp_path / "t.txt"
    text.write_text("".join(f"{t} {i} {s}\n" for t, i, s in reqs))
    write_oracle_general(read_trace(text), tmp_path / "t.oracleGeneral.bin")
    answers = set()
    for name in ("t.txt", "t.oracleGeneral.bin"):
        plain = tmp_path / name
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        for path in (plain, packed):
            code, out = run(str(path), "--policy", "lru", "--size", "5%", "--json")
            assert code == 0, out
            r = json.loads(out)["results"]
            answers.add(tuple((x["policy"], x["misses"], x["miss_bytes"]) for x in r))
    assert len(answers) == 1


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.9])
def test_pfoo_l_is_below_belady_even_when_sizes_change(fraction):
    rng = random.Random(3)
    ids = [rng.choice(range(200)) if rng.random() < 0.8 else 1000 + i for i in range(3000)]
    # An object's size changes now and then, as in the adaptsize trace.
    sizes = [100 + (k * 37) % 900 + (rng.randint(0, 50) if rng.random() < 0.1 else 0) for k in ids]
    trace = Trace("t", np.arange(3000, dtype=float), np.array(ids, dtype=np.int64), np.array(sizes))
    cap = int(trace.working_set_bytes() * fraction)
    misses, miss_bytes = belady(trace, cap)
    obj_lb, byte_lb = pfoo_l(trace, cap)
    assert obj_lb <= misses / len(trace) + 1e-12
    assert byte_lb <= miss_bytes / int(trace.sizes.sum()) + 1e-12


def test_progress_bar_draws_on_a_terminal_only(text_trace):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    trace = read_trace(text_trace)
    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        bar = ProgressBar(len(trace), "lru @ 5%", stream=stream)
        replay("lru", trace, trace.working_set_bytes() // 20, progress=bar)
    assert "100.0%" in shown.getvalue() and shown.getvalue().endswith("\n")
    assert hidden.getvalue() == ""


def test_trace_export_to_stdout_leaves_a_users_dash_part_file_alone(
    redis_client, prefix, tmp_path, monkeypatch
):
    # `-o -` once wrote `./-.part` aside and unlinked it: a user's file of that name was lost.
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "-.part"
    mine.write_text("mine")
    Store(redis_client, Keys(prefix), access_log_maxlen=10).access("a", now=1.0, miss_bytes=5)
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "timestamp,path,size,hit"
    assert mine.read_text() == "mine" and sorted(tmp_path.iterdir()) == [mine]


def test_trace_export_to_a_file_leaves_a_users_part_file_alone(redis_client, prefix, tmp_path):
    out, mine = tmp_path / "out.csv", tmp_path / "out.csv.part"
    mine.write_text("mine")
    Store(redis_client, Keys(prefix), access_log_maxlen=10).access("a", now=1.0, miss_bytes=5)
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert mine.read_text() == "mine" and out.read_text().count("\n") == 2
    assert sorted(tmp_path.iterdir()) == [out, mine]


def test_a_failed_trace_export_keeps_the_old_file_and_leaves_no_part(
    redis_client, prefix, tmp_path
):
    # The stream's key holding a string: XRANGE fails after the file aside was opened.
    redis_client.set(Keys(prefix).accesses, "not a stream")
    out = tmp_path / "out.csv"
    out.write_text("old")
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert out.read_text() == "old" and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    "size", ["9" * 400, "9" * 5000, "99999999999999999999999", "9223372036854775808", "9e18GiB"]
)
def test_a_cache_size_past_what_a_64_bit_count_holds_is_refused(text_trace, size):
    # float("9" * 400) is infinity: int() of it was an OverflowError traceback.
    code, out = run(str(text_trace), "--policy", "lru", "--no-bounds", "--size", size)
    assert code == 2 and "Traceback" not in out, out
    assert out.strip().count("\n") == 0 and len(out) < 200


def test_the_largest_cache_size_is_taken_exactly(text_trace):
    code, out = run(
        str(text_trace), "--policy", "lru", "--no-bounds", "--size", "9223372036854775807", "--json"
    )
    assert code == 0, out
    assert json.loads(out)["results"][0]["capacity"] == 2**63 - 1


def test_policy_names_in_any_case_and_sizes_in_exbibytes(text_trace):
    from cachemgr.simulate import human

    code, out = run(str(text_trace), "--policy", " LRU", "--size", "1EiB", "--no-bounds")
    assert code == 0, out
    row = out.splitlines()[-1].split()
    assert row[:3] == ["1EiB", "1.0EiB", "lru"]
    assert human(2**63 - 1) == "8.0EiB" and human(1536) == "1.5KiB"


def test_pfoo_l_counts_no_hit_for_an_object_larger_than_the_cache():
    """One 100-byte object asked four times of a 50-byte cache: every policy misses all four;
    PFOO-L said 0.5 (its intervals priced as if part of it could be held)."""
    trace = Trace("t", np.arange(4, dtype=float), np.zeros(4, dtype=np.int64), np.full(4, 100))
    assert pfoo_l(trace, 50) == (1.0, 1.0)
    assert pfoo_l(trace, 100) == (0.25, 0.25)  # held from its first request on


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pfoo_l_stays_below_every_policy_when_objects_grow(seed):
    """An object that grows past the cache after it was admitted stays a hit at its admitted
    size (libCacheSim's rule, Trace.resized): priced at its later size, PFOO-L came out above
    LRU (a 15-byte cache, `a` at 10 bytes then at 1 MB: 0.67 against LRU's 0.33)."""
    rng = random.Random(seed)
    ids = [rng.randrange(60) for _ in range(2000)]
    grown: dict[int, int] = {}
    sizes = []
    for k in ids:
        if rng.random() < 0.05:  # rescanned at another size: mostly much larger
            grown[k] = rng.choice([10, 10_000, 1_000_000])
        sizes.append(grown.get(k, 100 + k))
    trace = Trace("t", np.arange(2000, dtype=float), np.array(ids, dtype=np.int64), np.array(sizes))
    assert trace.resized() > 0
    for cap in (15, 500, trace.working_set_bytes() // 4):
        obj_lb, byte_lb = pfoo_l(trace, cap)
        for policy in MODELS:
            done = replay(policy, trace, cap)
            assert obj_lb <= done.misses / len(trace) + 1e-12, (policy, cap)
            assert byte_lb <= done.byte_miss_ratio + 1e-12, (policy, cap)


def test_simulate_says_when_requests_change_an_objects_size(tmp_path):
    p = tmp_path / "grow.txt"
    p.write_text("1 a 10\n2 a 1000000\n3 a 1000000\n4 b 5\n")
    code, out = run(str(p), "--policy", "lru", "--size", "15")
    assert code == 0, out
    assert "note: 1 request asks for an object at another size than its last request" in out
    rows = {line.split()[2]: line.split() for line in out.splitlines()[3:]}
    lru, lower = rows["lru"], rows["pfoo-l"]
    assert float(lower[3]) <= float(lru[3])  # object miss ratio: the bound is one
    code, out = run(str(p), "--policy", "lru", "--size", "15", "--json")
    assert json.loads(out)["resized_requests"] == 1


def test_a_plot_named_without_a_suffix_is_said_as_written(text_trace, tmp_path):
    curves = str(tmp_path / "curves")
    code, out = run(str(text_trace), "--policy", "lru", "--size", "5%", "--plot", curves)
    assert code == 0, out
    assert (tmp_path / "curves.png").is_file()
    assert f"plot written to {tmp_path / 'curves.png'}" in out
