"""The access log (`cache:accesses`, a capped stream the access scripts append to) written out
as the CSV `timestamp,path,size,hit` that `cachemgr simulate` reads.

The scripts log a hit under the tracked directory it kept, but a miss under the path the
pipeline asked for: a miss of `artist/album/cd1`, then the album's registration and plays of
`cd1`, log two names for one directory. The export writes each such miss under the
directory its path later hit in, so that a simulation sees one object, not two.
"""

from __future__ import annotations

import csv
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import redis
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
    trimmed: int = 0  # logged before the export began, trimmed by the cap before it read them


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


def _folded(path: bytes, tracked: set[bytes]) -> bytes:
    """`path`, or the tracked directory above it (tracked directories never nest)."""
    i = path.find(b"/")
    while i != -1:
        if path[:i] in tracked:
            return path[:i]
        i = path.find(b"/", i + 1)
    return path


def export_rows(client: Any, keys: Keys, out: TextIO, count: int | None = None) -> Exported:
    """Write the stream as CSV `timestamp,path,size,hit`, oldest first. It is read once, into
    a spool file (a second read, for the rows, lost what the cap trimmed meanwhile: all of
    them under a busy pipeline), then written with the tracked directories' names known.
    Lines end in \\n; a path holding a \\r or \\n is quoted (with "\\n" as the line
    terminator the csv module quoted only \\n, and a \\r in a path split its row)."""
    writer = csv.writer(out, lineterminator="\n")
    carriage = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)  # rows with a \r
    writer.writerow(["timestamp", "path", "size", "hit"])
    done = Exported()
    tracked: set[bytes] = set()  # the paths hits were logged under: tracked directories
    # Its length and newest entry in one reply: what it held as the export began.
    try:
        info = client.execute_command("XINFO", "STREAM", keys.accesses, **{NEVER_DECODE: []})
    except redis.ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        return done  # no access logged yet
    if isinstance(info, list):
        info = dict(zip(info[::2], info[1::2], strict=False))
    newest, held = info.get(b"last-entry"), int(info.get(b"length") or 0)
    if not newest:
        return done
    with tempfile.TemporaryFile() as spool:
        read = 0
        # Up to the newest entry now: a pipeline that logs faster than this reads is not
        # followed for ever.
        for _ident, fields in _entries(client, keys, count, newest[0]):
            row = (fields.get(b"t"), fields.get(b"path", b""), fields.get(b"size"),
                   fields.get(b"hit"))  # fmt: skip
            if row[3] == b"1":
                tracked.add(row[1])
            pickle.dump(row, spool, protocol=pickle.HIGHEST_PROTOCOL)
            read += 1
        spool.seek(0)
        for _ in range(read):
            when, raw, size, hit = pickle.load(spool)
            if hit != b"1":
                folded = _folded(raw, tracked)
                done.folded += folded != raw
                raw = folded
            path = _text(raw, "", done)
            (carriage if "\r" in path else writer).writerow(
                [_text(when, ""), path, _text(size, "0"), _text(hit, "0")]
            )
            done.rows += 1
    # A pipeline that logs faster than this reads: the cap trimmed some before they were
    # read (batch by batch, one read could not hold them all), said, not silently gone.
    done.trimmed = max(0, min(held, count or held) - done.rows)
    return done


__all__ = ["Exported", "export_rows"]
