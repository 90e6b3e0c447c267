"""The per-directory record and the shapes that operations return."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 in UTC, e.g. `2026-11-25T19:07:05.123000+00:00`."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        # Beyond what a datetime holds (a pin from before pins had a limit): the last one.
        return datetime.max.replace(tzinfo=UTC).isoformat()


# cache:format once records are filed under record_id; books without it may hold them by path.
RECORD_FORMAT = "records-by-id"


def record_id(path: str) -> str:
    """The field a path's record has in cache:entries: 12 base64 characters of its SHA-1
    (72 bits). The Lua `rid` in scripts.py computes the same; a collision is refused at
    registration, never silently merged."""
    return base64.b64encode(hashlib.sha1(path.encode()).digest()[:9]).decode()


def unpack(raw: str) -> tuple[int, int, str, int]:
    """One hash field per directory keeps Redis memory low: `size files registered hits`,
    written by the Lua scripts."""
    size, files, registered, hits = raw.split(" ")
    return int(size), int(files), registered, int(hits)


class Lease(NamedTuple):
    holder: str  # '': none named
    until: float
    path: str  # the directory's own, or a path above or inside it


@dataclass
class Entry:
    path: str
    size_bytes: int
    file_count: int
    registered: str  # as stored: the identity compare-before-delete checks
    last_access: float
    hits: int
    ttl_seconds: int
    pinned_until: float | None = None
    # The leases in force on it, above it and inside it, where read (listing.directory).
    holders: list[Lease] | None = None

    @property
    def registered_at(self) -> float:
        return float(self.registered)

    @property
    def expires_at(self) -> float:
        return self.last_access + self.ttl_seconds

    def pinned(self, now: float) -> bool:
        return self.pinned_until is not None and self.pinned_until > now

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """`now`: a lease ended by then is shown as none (the books keep it until a cleanup
        prunes it: a lapsed one read as a pin in force)."""
        lapsed = now is not None and not self.pinned(now)
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "file_count": self.file_count,
            "registered_at": iso(self.registered_at),
            "last_access": iso(self.last_access),
            "expires_at": iso(self.expires_at),
            "hits": self.hits,
            "pinned_until": None if lapsed else iso(self.pinned_until),
            **({} if self.holders is None else {"holders": self._holders()}),
        }

    def _holders(self) -> list[dict[str, Any]]:
        """A lease no holder named has `holder` null; `path` is where the lease is."""
        return [
            {"holder": lease.holder or None, "until": iso(lease.until), "path": lease.path}
            for lease in self.holders or []
        ]


@dataclass
class Removal:
    """One directory a sweep or an eviction took (or, in a plan, would take)."""

    path: str
    size_bytes: int
    reason: str
    usage_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PassResult:
    """What a sweep or an eviction did: counts, bytes and the paths, in order."""

    kind: str
    removed: list[Removal] = field(default_factory=list)
    skipped_locked: list[str] = field(default_factory=list)
    skipped_pinned: list[str] = field(default_factory=list)
    skipped_changed: list[str] = field(default_factory=list)
    skipped_young: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)  # gone from disk already: untracked
    errors: list[str] = field(default_factory=list)
    usage_before: int = 0
    usage_after: int = 0
    more: bool = False  # stopped by a bound (batch, time) with work left
    owed: int = 0  # with `more`: the bytes it still had to free
    short: str = ""  # an eviction that could not get below the threshold: what it skipped
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(r.size_bytes for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dry_run": self.dry_run,
            "count": len(self.removed),
            "bytes_freed": self.bytes_freed,
            "paths": [r.path for r in self.removed],
            "plan": [r.to_dict() for r in self.removed],
            "skipped_locked": self.skipped_locked,
            "skipped_pinned": self.skipped_pinned,
            "skipped_changed": self.skipped_changed,
            "skipped_young": self.skipped_young,
            "vanished": self.vanished,
            "errors": self.errors,
            "usage_before": self.usage_before,
            "usage_after": self.usage_after,
            "more": self.more,
            "owed": self.owed,
            "short": self.short,
        }


# The longest interval a beat's header is believed for (another sender's `inf` failed every
# cleanup that read it).
MAX_BEAT_INTERVAL = 366 * 86400


def believed_interval(value: Any) -> int | None:
    """Beat's interval as a header or the books say it, in whole seconds; None where it is
    none, or not to be believed (below a second, past MAX_BEAT_INTERVAL, not a number). The
    one reading of it: the worker's, the stats', the status page's and the hold's."""
    seconds = number(value)
    if seconds is None or not 1 <= seconds <= MAX_BEAT_INTERVAL:
        return None
    return round(seconds)


def beat_said(value: Any) -> int | None:
    """The interval a live beat says it sends the node's cleanups at (cache:beat: `<beat>
    <seconds>`, nodes.beat_alive), as believed_interval reads it."""
    return believed_interval(str(value).rpartition(" ")[2]) if value else None


def number(value: Any) -> float | None:
    """A number read back from Redis (where it is a string), or None when absent, unreadable,
    NaN or infinite (not JSON: `cachemgr stats --json | jq` would refuse the output)."""
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return found if found - found == 0 else None  # NaN - NaN and inf - inf are NaN


def last_cleanup(raw: dict[str, str]) -> dict[str, Any] | None:
    """The last cleanup's outcome (`cache:last_cleanup`, written by history.record) with its
    numbers typed: Redis hands every field back as a string. None before the first cleanup."""
    if not raw:
        return None
    return {
        "time": number(raw.get("time")),
        "status": raw.get("status") or None,
        "duration_seconds": number(raw.get("duration_seconds")),
        "error": raw.get("error") or None,
        "trash_left": int(number(raw.get("trash_left")) or 0),
        "trash_kept": int(number(raw.get("trash_kept")) or 0),
        "delete_failed": int(number(raw.get("delete_failed")) or 0),
        "delete_failed_example": raw.get("delete_failed_example") or None,
        "untracked": int(number(raw.get("untracked")) or 0),
        "untracked_example": raw.get("untracked_example") or None,
        "stray_files": int(number(raw.get("stray_files")) or 0),
        "stray_bytes": int(number(raw.get("stray_bytes")) or 0),
        "stray_example": raw.get("stray_example") or None,
        "unlisted": int(number(raw.get("unlisted")) or 0),
        "unlisted_example": raw.get("unlisted_example") or None,
        "unnamable": int(number(raw.get("unnamable")) or 0),
        "unnamable_example": raw.get("unnamable_example") or None,
        "unowned": int(number(raw.get("unowned")) or 0),
        "unowned_example": raw.get("unowned_example") or None,
        "gone_kept": int(number(raw.get("gone_kept")) or 0),
        "gone_kept_example": raw.get("gone_kept_example") or None,
        "gone_refused": raw.get("gone_refused") or None,
        "gone_error": raw.get("gone_error") or None,
        "audit_error": raw.get("audit_error") or None,
        "evict_short": raw.get("evict_short") or None,
        "periodic_time": number(raw.get("periodic_time")),
        "beat_interval": believed_interval(raw.get("beat_interval")),
    }
