"""Logging for every cachemgr process: one JSON object a line, or plain text for a terminal.

`DISK_CACHE_LOG_FORMAT=json` makes each record one line with `time`, `level`, `logger`,
`message` and whatever the caller passed as `extra=`, so that a log shipper can index an
eviction's path and size without a regular expression. Anything else gives plain text, with
the same extra fields appended as `key=value`. `DISK_CACHE_LOG_LEVEL` sets the level (INFO).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; whatever else a record carries came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12 adds it to every record; it is no extra field
}


class Repeats:
    """When each of a process's repeated warnings was last said, so that one is said once in
    `every` seconds (a directory that cannot be deleted is met by every quota pass: 479 ERROR
    lines a minute); the stats and each cleanup's record say it always."""

    def __init__(self, every: float, limit: int = 10_000) -> None:
        self.every, self.limit = every, limit
        self._at: dict[str, float] = {}

    def due(self, what: str, now: float | None = None) -> bool:
        """True (and remembered) when `what` was not said in the last `every` seconds."""
        now = time.monotonic() if now is None else now
        if now - self._at.get(what, float("-inf")) < self.every:
            return False
        if len(self._at) >= self.limit:  # bounded: a flood of different ones is said again
            self._at.clear()
        self._at[what] = now
        return True

    def forget(self, prefix: str) -> None:
        """Say those whose names begin with `prefix` again at once, when next due."""
        for what in [w for w in self._at if w.startswith(prefix)]:
            del self._at[what]


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    data = extras.get("data")
    if record.levelno < logging.WARNING and isinstance(data, dict) and "traceback" in data:
        # Celery's "raised expected" line (a refusal, said in one line of ours already)
        # carried the whole traceback: 2 KB a refused task, 6 MB in 40 minutes.
        extras["data"] = {k: v for k, v in data.items() if k != "traceback"}
    return extras


class JsonFormatter(logging.Formatter):
    """One JSON object per record and per line: a traceback is a field, never extra lines."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            # An extra never overwrites the four fields a reader relies on being there.
            out[key if key not in out else f"extra_{key}"] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: a Path or a datetime in `extra` must not cost the whole line.
        return json.dumps(out, default=str, ensure_ascii=False)


# Control characters (C0 but the tab, DEL, C1) as escapes: a name read off the disk must not
# drive a terminal (colours, cursor moves) or split a line into a forged second one.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r"}
# And the bidirectional controls: U+202E in a name shows "...exe.txt" as "...txt.exe".
_BIDI = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES |= {c: f"\\u{c:04x}" for c in _BIDI}


def printable(text: str) -> str:
    """`text` with its control characters as backslash escapes."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The usual one-line text, with extra fields appended so text loses nothing JSON has."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a directory named with a newline split "evicted new\nline"
        # into two lines, the second a forged entry. A traceback still follows on its own.
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        first, newline, rest = line.partition("\n")
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        return f"{first} {pairs}{newline}{rest}"


def _text_value(value: Any) -> str:
    text = str(value)
    quoted = not text or any(c.isspace() or c in '"=' or not c.isprintable() for c in text)
    return json.dumps(text) if quoted else text


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (a second call replaces it, by this class).

    Without an explicit stream it writes to whatever sys.stderr is at the time of each record,
    not the one at set-up: pytest and gunicorn swap sys.stderr, and a handler holding the old,
    closed one would fail on every line.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._follow = stream is None
        super().__init__(stream)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr if self._follow else self._stream

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        self._stream = value


# The bad DISK_CACHE_LOG_FORMAT values already warned of in this process.
_SAID: set[str] = set()


def log_format(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    value = env.get("DISK_CACHE_LOG_FORMAT", "").strip().lower()
    return "json" if value == "json" else "text"


def configure_logging(
    *,
    fmt: str | None = None,
    level: str | int | None = None,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Install one handler on the root logger (replacing the one an earlier call installed).

    Safe to call from every entry point (app factory, worker start-up, CLI): the root logger
    ends up with exactly one cachemgr handler, whichever ran first. Handlers that others put on
    the root logger (pytest's, gunicorn's) are left alone.
    """
    env = os.environ if environ is None else environ
    asked = env.get("DISK_CACHE_LOG_FORMAT", "").strip().lower()
    chosen = (fmt or log_format(env)).lower()
    if chosen not in FORMATS:
        raise ValueError(f"unknown log format {chosen!r} (known: {', '.join(FORMATS)})")
    if level is None:
        level = env.get("DISK_CACHE_LOG_LEVEL", "").strip().upper() or "INFO"
    elif isinstance(level, str):
        level = level.upper()
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if not fmt and asked and asked not in FORMATS and asked not in _SAID:
        _SAID.add(asked)  # once a process: every entry point configures logging again
        logging.getLogger("cachemgr").warning(
            "DISK_CACHE_LOG_FORMAT=%r is not a log format (%s): logging as text",
            asked,
            " or ".join(FORMATS),
        )
    return handler
