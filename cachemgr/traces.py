"""Request traces for the simulator: libCacheSim oracleGeneral, `time id size` text, CSV.

A trace is three parallel sequences (times, integer object ids, sizes in bytes). Paths in a
CSV trace (cachemgr's own export) are mapped to integer ids in order of first appearance.
"""

from __future__ import annotations

import csv
import gzip
import io
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from cachemgr.logs import printable

ORACLE_GENERAL = np.dtype(
    [("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")]
)  # 24-byte little-endian records, as libCacheSim writes them

FORMATS = ("oracle", "text", "csv")


class TraceError(ValueError):
    """A trace that cannot be read: the message names the file and the reason."""


@dataclass
class Trace:
    name: str
    times: np.ndarray  # float64 seconds (or the trace's own clock)
    ids: np.ndarray  # int64
    sizes: np.ndarray  # int64 bytes

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def objects(self) -> int:
        return len(np.unique(self.ids))

    def working_set_bytes(self) -> int:
        """Bytes of all distinct objects, each at the size of its first request."""
        _, first = np.unique(self.ids, return_index=True)
        return int(self.sizes[first].sum())

    def resized(self) -> int:
        """Requests whose size differs from their object's previous request's. As in
        libCacheSim, a hit on one counts the request's bytes while the cached copy keeps the
        size it was admitted at (a rescanned directory, a new version of a web object)."""
        order = np.lexsort((np.arange(len(self)), self.ids))  # by object, then by time
        ids, sizes = self.ids[order], self.sizes[order]
        return int(((ids[1:] == ids[:-1]) & (sizes[1:] != sizes[:-1])).sum())

    def unsized(self) -> int:
        """Requests of size 0: in an exported access log, misses whose size the pipeline did
        not send, of a path never seen with one. Byte ratios count them as free."""
        return int((self.sizes == 0).sum())

    def head(self, n: int) -> Trace:
        return Trace(self.name, self.times[:n], self.ids[:n], self.sizes[:n])


# What a trace's objects may add up to: the replay sums sizes in 64-bit integers.
MAX_TOTAL_BYTES = 2**63 - 1


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in (".xz", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".bin") or "oraclegeneral" in name:
        return "oracle"
    return "text"


# The first bytes of a compressed stream -> the suffix _open_binary knows it by.
MAGIC = {b"\xfd7zXZ\x00": ".xz", b"\x1f\x8b": ".gz"}


def compression_suffix(head: bytes) -> str:
    """`.xz` or `.gz` when these first bytes start such a stream, else ""."""
    return next((suffix for magic, suffix in MAGIC.items() if head.startswith(magic)), "")


def sniff_format(path: str | Path) -> str:
    """For a trace whose name says nothing (standard input, a file `accesses`): `oracle` when
    its first records read as oracleGeneral ones (it was read as text, "can't decode byte
    0xff"), `csv` when the first line names the CSV columns (cachemgr trace export), else
    `text`."""
    try:
        with _open_binary(Path(path)) as fh:
            head = fh.read(ORACLE_GENERAL.itemsize * 64)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return "text"  # read_trace then says what is wrong with it
    if _oracle_records(head):
        return "oracle"
    first = head.split(b"\n", 1)[0].lower()
    return "csv" if b"," in first and b"timestamp" in first else "text"


def _oracle_records(head: bytes) -> bool:
    """Whether these first bytes are oracleGeneral records: a NUL (no text trace in UTF-8
    has one), and each record's next access is -1 or a later request, within 2^40 (UTF-16
    text, which has NULs too, reads as next accesses of 10^15 and more)."""
    n = len(head) // ORACLE_GENERAL.itemsize
    if b"\x00" not in head or n == 0:
        return False
    nxt = np.frombuffer(head[: n * ORACLE_GENERAL.itemsize], dtype=ORACLE_GENERAL)["next"]
    index = np.arange(n)
    never = (nxt == -1) | (nxt == np.iinfo(np.int64).max)  # libCacheSim's "no next access"
    return bool(np.all(never | ((nxt > index) & (nxt < 2**40))))


def _open_binary(path: Path) -> IO[bytes]:
    """The file, decompressed when its name ends in .xz or .gz, or its first bytes say it is
    (as standard input's: a compressed trace named otherwise failed as not UTF-8)."""
    suffix = path.suffix.lower()  # as detect_format: T.BIN.XZ is compressed too
    if suffix not in MAGIC.values() and path.is_file():  # a pipe's first bytes are not kept
        with path.open("rb") as fh:
            suffix = compression_suffix(fh.read(8))
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _open_text(path: Path) -> IO[str]:
    # newline="": the csv module reads a quoted \r or \r\n inside a path as it is (paths
    # that differ only there were merged into one object). utf-8-sig: the byte-order mark
    # spreadsheets write before the header is not part of its first name.
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", newline="")


def read_oracle_general(path: str | Path) -> Trace:
    p = Path(path)
    with _open_binary(p) as fh:
        raw = fh.read()
    if len(raw) % ORACLE_GENERAL.itemsize:
        raise TraceError(
            f"{_named(p)}: {len(raw)} bytes is not a whole number of 24-byte oracleGeneral records"
        )
    rec = np.frombuffer(raw, dtype=ORACLE_GENERAL)
    return Trace(
        p.name,
        rec["time"].astype(np.float64),
        rec["id"].astype(np.int64),
        rec["size"].astype(np.int64),
    )


def read_text(path: str | Path) -> Trace:
    """One request a line: `time id size` (whitespace separated; ids may be any token)."""
    p = Path(path)
    times: list[float] = []
    keys: list[str] = []
    sizes: list[int] = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) < 3:
                raise TraceError(
                    f"{_named(p)}:{lineno}: expected `time id size`, got {line.strip()!r}"
                )
            try:
                times.append(float(parts[0]))
                sizes.append(int(parts[2]))
            except ValueError:
                raise TraceError(f"{_named(p)}:{lineno}: bad number in {line.strip()!r}") from None
            keys.append(parts[1])
    return _from_keys(p.name, times, keys, sizes)


def read_csv(path: str | Path) -> Trace:
    """CSV with a header naming `timestamp`, `path` and `size` (cachemgr trace export)."""
    p = Path(path)
    times: list[float] = []
    keys: list[str] = []
    sizes: list[int] = []
    with _open_text(p) as fh:
        reader = csv.DictReader(fh)
        try:
            # The header is read here: a stray quote on it reads as one huge field.
            found = list(reader.fieldnames or ())
            if not found:  # an empty file, as an empty text or binary one: no requests
                raise TraceError(f"{_named(p)}: no requests")
            reader.fieldnames = [name.strip().lower() for name in found]  # `Timestamp, Path`
            missing = {"timestamp", "path", "size"} - set(reader.fieldnames)
            if missing:
                first = ",".join(found)
                quote = "\n" in first  # an unclosed quote read the lines below into it
                first = first.split("\n", 1)[0][:80]
                raise TraceError(
                    f"{_named(p)}: the CSV header lacks {', '.join(sorted(missing))} (its first "
                    "line "
                    f"reads {first!r}"
                    + (" and opens a quote it does not close" if quote else "")
                    + "; it must name timestamp,path,size)"
                )
            for row in reader:
                try:
                    if not row["path"]:  # a row cut short, or a column shifted: no object
                        raise ValueError("no path")
                    times.append(float(row["timestamp"]))
                    sizes.append(int(row["size"]))  # whole bytes, as in the text format
                except (TypeError, ValueError):
                    raise TraceError(f"{_named(p)}:{reader.line_num}: bad row {row!r}") from None
                keys.append(row["path"])
        except csv.Error as exc:  # a field past the csv module's limit, a stray quote...
            raise TraceError(f"{_named(p)}:{reader.line_num + 1}: {exc}") from None
    # The access log writes 0 for a miss whose size the pipeline did not know: take the
    # path's largest known size instead, so the miss costs what fetching it really costs.
    known: dict[str, int] = {}
    for k, s in zip(keys, sizes, strict=True):
        if s > known.get(k, 0):
            known[k] = s
    sizes = [s or known.get(k, 0) for k, s in zip(keys, sizes, strict=True)]
    return _from_keys(p.name, times, keys, sizes)


def _from_keys(name: str, times: list[float], keys: list[str], sizes: list[int]) -> Trace:
    ids: dict[str, int] = {}
    out = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))
    return Trace(name, np.asarray(times, dtype=np.float64), out, np.asarray(sizes, dtype=np.int64))


def _named(p: Path) -> str:
    """A file's name in a one-line message: a newline or a bidi control in it escaped."""
    return printable(str(p))


def read_trace(path: str | Path, fmt: str | None = None) -> Trace:
    if not str(path):
        raise TraceError("no trace file named (an empty name)")
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{_named(p)}: no such file")
    if p.is_dir():
        raise TraceError(f"{_named(p)}: is a directory, not a trace file")
    if fmt is None:
        fmt = detect_format(p)
        if fmt == "text":  # a name that says nothing (an export saved as `accesses`)
            fmt = sniff_format(p)
    readers: dict[str, Any] = {"oracle": read_oracle_general, "text": read_text, "csv": read_csv}
    if fmt not in readers:
        raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    try:
        trace: Trace = readers[fmt](p)
    except UnicodeDecodeError as exc:  # read as text: binary, or another encoding
        raise TraceError(
            f"{_named(p)}: not UTF-8 text ({exc.reason} at byte {exc.start}): if it is "
            "libCacheSim's oracleGeneral binary, give --format oracle"
        ) from None
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise TraceError(f"{_named(p)}: {exc}") from None
    except OverflowError:
        raise TraceError(
            f"{_named(p)}: a size or time out of range (sizes must fit in 63 bits)"
        ) from None
    if len(trace) == 0:
        raise TraceError(f"{_named(p)}: no requests")
    negative = np.flatnonzero(trace.sizes < 0)
    if len(negative):
        raise TraceError(f"{_named(p)}: negative size at request {int(negative[0]) + 1}")
    # Every request's size summed (in doubles: a guard, fast): past 63 bits the replay's
    # int64 sums would wrap silently into a wrong table.
    if float(trace.sizes.sum(dtype=np.float64)) > MAX_TOTAL_BYTES:
        raise TraceError(f"{_named(p)}: the requests' sizes add up past 2^63 - 1 bytes")
    return trace


def next_access(ids: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request for the same object (-1: none)."""
    n = len(ids)
    order = np.lexsort((np.arange(n), ids))  # by object, then by time
    nxt = np.full(n, -1, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def write_oracle_general(trace: Trace, path: str | Path) -> None:
    """The trace as libCacheSim's oracleGeneral binary (next access in virtual time)."""
    rec = np.zeros(len(trace), dtype=ORACLE_GENERAL)
    rec["time"] = trace.times.astype(np.uint32)
    rec["id"] = trace.ids.astype(np.uint64)
    rec["size"] = trace.sizes.astype(np.uint32)
    rec["next"] = next_access(trace.ids)
    Path(path).write_bytes(rec.tobytes())
