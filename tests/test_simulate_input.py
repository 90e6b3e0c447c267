"""The simulator, the trace readers and `trace export` with odd input: each ends in one line and
exit 2 (or does the right thing), never a traceback or a wrong table."""

from __future__ import annotations

import csv
import gzip
import lzma
import os
import random
import stat
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from api.cli_sim import simulate_command, trace_group
from cachemgr.keys import Keys
from cachemgr.store import Store
from cachemgr.traces import ORACLE_GENERAL
from tests.conftest import REDIS_URL


def sim(*args: str):
    return CliRunner().invoke(simulate_command, list(args))


def _one_line_exit_2(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_corrupt_gzip_trace_is_a_one_line_error(tmp_path: Path):
    rng = random.Random(1)
    text = "".join(f"{i} k{rng.randint(0, 50)} {rng.randint(1, 1000)}\n" for i in range(5000))
    data = bytearray(gzip.compress(text.encode()))
    for j in range(40, len(data) - 20, 97):  # damage the deflate stream, not the header
        data[j] ^= 0xA5
    p = tmp_path / "bad.txt.gz"
    p.write_bytes(bytes(data))
    result = sim(str(p), "--no-bounds", "--policy", "lru")
    # it was: zlib.error escapes read_trace (not OSError/EOFError/LZMAError) -> traceback, exit 1
    _one_line_exit_2(result)


def test_csv_with_an_overlong_field_is_a_one_line_error(tmp_path: Path):
    p = tmp_path / "big.csv"
    p.write_text("timestamp,path,size,hit\n1," + "x" * 200_000 + ",10,0\n")
    result = sim(str(p), "--no-bounds", "--policy", "lru")
    # it was: _csv.Error: field larger than field limit (131072) -> traceback, exit 1
    _one_line_exit_2(result)


def test_a_csv_row_without_a_path_is_a_one_line_error(tmp_path: Path):
    """`2,,10` was replayed as an object named '' (a row cut short, a column shifted)."""
    p = tmp_path / "no-path.csv"
    p.write_text("timestamp,path,size\n1,a,10\n2,,10\n")
    result = sim(str(p), "--no-bounds", "--policy", "lru")
    _one_line_exit_2(result)
    assert "no-path.csv:3: bad row" in result.output


def test_sizes_whose_sum_overflows_int64_are_refused_not_a_wrong_table(tmp_path: Path):
    p = tmp_path / "huge.txt"
    big = 5_000_000_000_000_000_000  # fits in int64; two of them do not
    p.write_text(f"1 a {big}\n2 b {big}\n3 a {big}\n")
    result = sim(str(p), "--no-bounds", "--policy", "lru", "--size", "50%", "--json")
    # it was: working_set_bytes is -8446744073709551616 and 50% resolves to a 1-byte cache
    _one_line_exit_2(result)


def test_uppercase_xz_suffix_is_decompressed(tmp_path: Path):
    # detect_format() lowercases the name, _open_binary() compares path.suffix to '.xz'
    # case-sensitively: an .XZ file is read as raw oracleGeneral records.
    for n in range(1, 400):
        rec = np.zeros(n, dtype=ORACLE_GENERAL)
        rec["id"] = np.arange(n) % 7
        rec["size"] = 100
        rec["time"] = np.arange(n)
        packed = lzma.compress(rec.tobytes())
        if len(packed) % 24 == 0:
            break
    else:  # pragma: no cover
        raise AssertionError("no suitable length")
    lower = tmp_path / "t.bin.xz"
    upper = tmp_path / "t.bin.XZ"
    lower.write_bytes(packed)
    upper.write_bytes(packed)
    good = sim(str(lower), "--no-bounds", "--policy", "lru", "--size", "50%", "--json")
    bad = sim(str(upper), "--no-bounds", "--policy", "lru", "--size", "50%", "--json")
    assert good.exit_code == 0 and bad.exit_code == 0, (good.output, bad.output)
    import json

    g, b = json.loads(good.stdout), json.loads(bad.stdout)
    assert g["requests"] == n and (b["requests"], b["working_set_bytes"]) == (
        g["requests"], g["working_set_bytes"]
    )


def test_a_compressed_trace_named_without_its_suffix_is_decompressed(tmp_path: Path):
    """Standard input was told by its first bytes; a file named `trace` or `t.csv` that was
    xz or gzip failed as "'utf-8' codec can't decode byte 0xfd"."""
    import json

    text = "".join(f"{t} {t % 5} 100\n" for t in range(50)).encode()
    plain = tmp_path / "plain.txt"
    plain.write_bytes(text)
    def misses(path: Path) -> list[tuple[int, int]]:
        got = sim(str(path), "--no-bounds", "--policy", "lru", "--size", "40%", "--json")
        assert got.exit_code == 0, got.output
        return [(r["misses"], r["miss_bytes"]) for r in json.loads(got.stdout)["results"]]

    want = misses(plain)
    for name, packed in (("trace", lzma.compress(text)), ("t.txt", gzip.compress(text))):
        p = tmp_path / name
        p.write_bytes(packed)
        assert misses(p) == want, name


def test_a_csv_trace_named_without_its_suffix_is_told_by_its_header(tmp_path: Path):
    """An export saved as `accesses` failed: "expected `time id size`, got 'timestamp,...'"
    (standard input was told by its first line)."""
    p = tmp_path / "accesses"
    p.write_text("timestamp,path,size,hit\n1,a,10,0\n2,a,10,1\n3,b,5,0\n")
    got = sim(str(p), "--no-bounds", "--policy", "lru", "--size", "100%", "--json")
    assert got.exit_code == 0, got.output
    import json

    assert json.loads(got.stdout)["requests"] == 3


def test_an_oracle_general_trace_named_without_its_suffix_is_told_by_its_bytes(tmp_path: Path):
    """README: formats are told by the name or the first bytes. A `.bin` file copied to
    `trace.dat`, gzipped as `t.gz`, or piped in failed as "'utf-8' codec can't decode byte
    0xff"; --format oracle read it."""
    import json

    from cachemgr.traces import Trace, write_oracle_general

    n = 60
    times = np.arange(n, dtype=np.int64)
    trace = Trace("t", times, times % 7, np.full(n, 0xFF00FF, dtype=np.int64))
    named = tmp_path / "syn.bin"
    write_oracle_general(trace, named)

    def misses(*args: str) -> list[tuple[int, int]]:
        got = sim(*args, "--no-bounds", "--policy", "lru", "--size", "40%", "--json")
        assert got.exit_code == 0, got.output
        return [(r["misses"], r["miss_bytes"]) for r in json.loads(got.stdout)["results"]]

    want = misses(str(named))
    plain, packed = tmp_path / "trace.dat", tmp_path / "t.gz"
    plain.write_bytes(named.read_bytes())
    packed.write_bytes(gzip.compress(named.read_bytes()))
    assert misses(str(plain)) == want and misses(str(packed)) == want
    assert misses(str(plain), "--format", "oracle") == want
    # Text in UTF-16 (PowerShell's `>`) has NULs too: not taken for oracleGeneral records
    # (padded to whole records, it was simulated as 225 requests of nonsense).
    wide = tmp_path / "wide"
    text = "".join(f"{t} {t % 7} 100\n" for t in range(200)).encode("utf-16")
    wide.write_bytes(text + b" \x00" * ((-len(text) % 24) // 2))
    refused = sim(str(wide), "--policy", "lru", "--size", "40%")
    _one_line_exit_2(refused)
    assert "not UTF-8 text" in refused.output and "--format oracle" in refused.output


def test_trace_export_to_a_fifo_writes_into_it_not_over_it(redis_client, prefix, tmp_path):
    store = Store(redis_client, Keys(prefix), access_log_maxlen=100)
    store.access("a/b", now=1000.0)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, as `-o >(gzip ...)` would have
    try:
        result = CliRunner().invoke(
            trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(fifo)]
        )
        assert result.exit_code == 0, result.output
        # it was: the FIFO is replaced by a regular file (mkstemp aside + rename over it)
        assert stat.S_ISFIFO(fifo.lstat().st_mode), "the named pipe was replaced by a file"
    finally:
        os.close(r)


def test_trace_export_to_a_symlink_keeps_the_link(redis_client, prefix, tmp_path):
    store = Store(redis_client, Keys(prefix), access_log_maxlen=100)
    store.access("a/b", now=1000.0)
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(link)]
    )
    assert result.exit_code == 0, result.output
    # it was: the symlink is replaced by a regular file; real.csv keeps "old"
    assert link.is_symlink(), "the symlink was replaced"
    assert "a/b" in real.read_text()


def test_exported_csv_quotes_a_carriage_return(redis_client, prefix, tmp_path):
    store = Store(redis_client, Keys(prefix), access_log_maxlen=100)
    store.access("x\ry", now=1000.0, miss_bytes=10)
    out = tmp_path / "acc.csv"
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    # it was: csv.writer(lineterminator="\n") leaves '\r' unquoted, so the row splits in two and
    # `cachemgr simulate` refuses its own export ("bad row")
    res = sim(str(out), "--no-bounds", "--policy", "lru")
    assert res.exit_code == 0, res.output


def test_csv_reader_keeps_cr_and_lf_paths_apart(tmp_path):
    p = tmp_path / "t.csv"
    with p.open("w", newline="") as fh:  # csv's default writer: every odd field quoted
        w = csv.writer(fh)
        w.writerow(["timestamp", "path", "size", "hit"])
        for t, path in enumerate(["x\ry", "x\ny", "x\r\ny"]):
            w.writerow([t, path, 10, 0])
    res = sim(str(p), "--no-bounds", "--policy", "lru", "--json")
    assert res.exit_code == 0, res.output
    import json

    # it was: _open_text() has no newline='' so universal newlines turn '\r' / '\r\n' into '\n'
    assert json.loads(res.stdout)["objects"] == 3


def test_a_header_opening_a_quote_past_the_field_limit_is_one_line(tmp_path: Path):
    # it was: csv.Error read the header outside the reader's try, a traceback (exit 1)
    p = tmp_path / "q.csv"
    p.write_text('"timestamp,path,size\n' + "1,a,10\n" * 20000)
    res = sim(str(p), "--no-bounds", "--policy", "lru")
    _one_line_exit_2(res)
    assert "field larger than field limit" in res.output


def test_a_header_opening_a_quote_says_so_and_not_the_lines_it_swallowed(tmp_path: Path):
    p = tmp_path / "q.csv"
    p.write_text('"timestamp,path,size\n' + "x\n" * 500)
    res = sim(str(p), "--no-bounds", "--policy", "lru")
    _one_line_exit_2(res)
    assert "opens a quote it does not close" in res.output and "x\\nx" not in res.output


def test_trace_export_writes_a_path_that_is_not_utf8_escaped(redis_client, prefix, tmp_path):
    # A pipeline not written in Python logs any bytes: the export must not die on them.
    store = Store(redis_client, Keys(prefix), access_log_maxlen=100)
    store.access("ok/one", now=1000.0, miss_bytes=10)
    redis_client.xadd(
        Keys(prefix).accesses, {"t": "1001", "path": b"bad/\xff\xfe", "size": "7", "hit": "0"}
    )
    out = tmp_path / "acc.csv"
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "1 path not UTF-8: written with \\x escapes" in result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["path"] for r in rows] == ["ok/one", "bad/\\xff\\xfe"]
    assert sim(str(out), "--no-bounds", "--policy", "lru").exit_code == 0


def test_trace_export_names_a_folder_below_a_tracked_directory_as_that_directory(
    redis_client, prefix, tmp_path
):
    """A miss of `artist/album/cd1` is logged under that name, the album's hits under the
    album's: one directory, which the simulator must see as one object."""
    store = Store(redis_client, Keys(prefix), access_log_maxlen=100)
    store.access("artist/album/cd1", now=1000.0, miss_bytes=500)
    store.register("artist/album", 500, 2, now=1001.0)
    store.access("artist/album/cd1", now=1002.0)
    store.access("artist/album/cd2", now=1003.0)
    store.access("artist/albumx/cd1", now=1004.0, miss_bytes=9)  # a name that only starts alike
    out = tmp_path / "acc.csv"
    result = CliRunner().invoke(
        trace_group, ["export", "--redis-url", REDIS_URL, "--prefix", prefix, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "1 miss of a folder below a directory tracked later" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["path"], r["size"], r["hit"]) for r in rows] == [
        ("artist/album", "500", "0"),
        ("artist/album", "500", "1"),
        ("artist/album", "500", "1"),
        ("artist/albumx/cd1", "9", "0"),
    ]
    res = sim(str(out), "--no-bounds", "--policy", "lru", "--size", "1MiB", "--json")
    assert res.exit_code == 0, res.output
    import json

    table = json.loads(res.output)
    assert table["objects"] == 2 and table["results"][0]["misses"] == 2, table


def test_an_empty_trace_says_no_requests_whatever_its_format(tmp_path: Path):
    """An empty CSV said "the CSV header lacks path, size, timestamp (its first line reads
    '')", an empty text or binary file "no requests"."""
    for name in ("empty.csv", "empty.txt", "empty.bin"):
        p = tmp_path / name
        p.write_bytes(b"")
        got = sim(str(p), "--policy", "lru", "--size", "10%")
        _one_line_exit_2(got)
        assert got.output.strip().endswith(f"{name}: no requests"), got.output


def test_a_trace_whose_sizes_are_all_zero_has_no_byte_miss_ratio(tmp_path: Path):
    """Every size 0: no byte was asked for, yet the table said byte miss ratio 0.0000 (all hit)
    and `--json` gave 0.0."""
    import json

    p = tmp_path / "zero.txt"
    p.write_text("".join(f"{i} {i % 7} 0\n" for i in range(50)))
    table = sim(str(p), "--policy", "lru", "--size", "100B")
    assert table.exit_code == 0, table.output
    row = table.output.splitlines()[-1]
    assert row.split()[3:5] == ["0.1400", "n/a"], row  # 7 first requests of 50 miss
    got = json.loads(sim(str(p), "--policy", "lru", "--size", "100B", "--json").output)
    assert {(r["object_miss_ratio"], r["byte_miss_ratio"]) for r in got["results"]} == {
        (0.14, None)  # lru and the bounds alike
    }


def test_requests_of_size_0_beside_sized_ones_are_counted_and_said(tmp_path: Path):
    """An exported access log's misses sent without their size (a path never seen with one)
    replayed as free objects, lowering the byte miss ratio, unsaid."""
    import json

    p = tmp_path / "accesses.csv"
    rows = ["timestamp,path,size"] + [f"{i},a{i % 3},{1000 if i % 3 else 0}" for i in range(30)]
    p.write_text("\n".join(rows) + "\n")
    got = sim(str(p), "--policy", "lru", "--size", "100%")
    assert got.exit_code == 0, got.output
    assert "note: 10 requests of size 0 (in an exported access log" in got.output
    out = json.loads(sim(str(p), "--policy", "lru", "--size", "100%", "--json").output)
    assert out["unsized_requests"] == 10
