"""The access log (`cache:accesses`, a capped stream the access scripts append to) written out
as the CSV `timestamp,path,size,hit` that `cachemgr simulate` reads.

The scripts log a hit under the tracked directory it kept, but a miss under the path the
pipeline asked for: a miss of `artist/album/cd1`, then the album's registration and plays of
`cd1`, log two names for one directory. The export writes each such miss under the
directory its path later hit in, so that a simulation sees one object, not two.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from redis.client import NEVER_DECODE

from cachemgr.keys import Keys

BATCH = 1000


@dataclass
class Exported:
    """What an export wrote: rows, misses written under the directory they later hit in,
    and paths that were not UTF-8 (written with backslash escapes)."""

    rows: int = 0
    folded: int = 0
    escaped: int = 0


def _text(raw: bytes | None, default: str, out: Exported | None = None) -> str:
    if raw is None:
        return default
    try:
        return raw.decode()
    except UnicodeDecodeError:
        # A pipeline that is not ours may log any bytes: the path keeps one name per byte
        # string, and the file stays UTF-8, which the simulator reads.
        if out is not None:
            out.escaped += 1
        return raw.decode(errors="backslashreplace")


def _entries(client: Any, keys: Keys, count: int | None, last: bytes = b"+") -> Iterator[Any]:
    """The stream's entries, oldest first, up to `count` and to the id `last`, as raw bytes:
    one path that is not UTF-8 must not make the whole log unreadable."""
    read, start = 0, b"-"
    while count is None or read < count:
        batch = BATCH if count is None else min(BATCH, count - read)
        chunk = client.execute_command(
            "XRANGE", keys.accesses, start, last, "COUNT", batch, **{NEVER_DECODE: []}
        )
        if not chunk:
            return
        yield from chunk
        read += len(chunk)
        start = b"(" + chunk[-1][0]
        if len(chunk) < batch:
            return


def _tracked_names(client: Any, keys: Keys, count: int | None) -> tuple[set[bytes], bytes]:
    """The paths hits were logged under (tracked directories), and the last entry's id."""
    hits: set[bytes] = set()
    last = b""
    for ident, fields in _entries(client, keys, count):
        last = ident
        if fields.get(b"hit") == b"1":
            hits.add(fields.get(b"path", b""))
    return hits, last


def _folded(path: bytes, tracked: set[bytes]) -> bytes:
    """`path`, or the tracked directory above it (tracked directories never nest)."""
    i = path.find(b"/")
    while i != -1:
        if path[:i] in tracked:
            return path[:i]
        i = path.find(b"/", i + 1)
    return path


def export_rows(client: Any, keys: Keys, out: TextIO, count: int | None = None) -> Exported:
    """Write the stream as CSV `timestamp,path,size,hit`, oldest first: two reads of it, the
    first for the tracked directories' names. Lines end in \\n; a path holding a \\r or \\n
    is quoted (with "\\n" as the line terminator the csv module quoted only \\n, and a \\r in
    a path split its row)."""
    writer = csv.writer(out, lineterminator="\n")
    carriage = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)  # rows with a \r
    writer.writerow(["timestamp", "path", "size", "hit"])
    done = Exported()
    tracked, last = _tracked_names(client, keys, count)
    if not last:
        return done
    # Up to the first read's last entry: what was logged since has not been looked at.
    for _ident, fields in _entries(client, keys, count, last):
        raw = fields.get(b"path", b"")
        if fields.get(b"hit") != b"1":
            folded = _folded(raw, tracked)
            done.folded += folded != raw
            raw = folded
        path = _text(raw, "", done)
        (carriage if "\r" in path else writer).writerow(
            [_text(fields.get(b"t"), ""), path, _text(fields.get(b"size"), "0"),
             _text(fields.get(b"hit"), "0")]
        )  # fmt: skip
        done.rows += 1
    return done


__all__ = ["Exported", "export_rows"]
