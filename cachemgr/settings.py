"""Settings: every knob of the seed, read from environment variables of the same name."""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cachemgr import checks, units
from cachemgr.connection import redis_url_problem, without_password
from cachemgr.keys import Keys
from cachemgr.paths import BOOKS_MARKER

GIB = 1024**3

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Redis counts bytes in signed 64-bit integers.
MAX_BYTES = 2**63 - 1
# Long enough for any real TTL or interval, short enough that an expiry time stays a date
# Python can print and a Redis EX / PX stays in range.
MAX_DURATION = 10 * 365 * 86400
MAX_LOCK_TIMEOUT = 86400  # a lock outliving its holder by more than a day is a stuck lock
MAX_BATCH_SIZE = 100_000  # entries per round trip: more would block Redis for seconds
MAX_EVICTIONS_PER_RUN = 10_000_000
MAX_ENTRY_DEPTH = 100  # levels below the root; a path deeper than this is no download
MAX_STREAM_LEN = 10**8  # events and access log: 10^8 entries is already gigabytes of Redis


class SettingsError(ValueError):
    """A setting has a value cachemgr cannot run with; the message is one line."""


def parse_size(text: str | int, *, high: int | None = MAX_BYTES) -> int:
    """Bytes from `10737418240`, `10GiB`, `500MB` (units.SIZE_UNITS); at most `high`
    (2^63 - 1: Redis counts bytes in 64 bits)."""
    value = units.size(text)
    if high is not None and value > high:
        note = " (8 EiB)" if high == MAX_BYTES else ""
        raise ValueError(f"must be at most {high} bytes{note}")
    return value


def parse_duration(text: str | int, *, high: int | None = MAX_DURATION) -> int:
    """Whole seconds from `86400`, `90s`, `1.5m`, `24h`, `7d`; at most `high` (10 years)."""
    value = units.duration(text)
    if high is not None and value > high:
        note = " (10 years)" if high == MAX_DURATION else ""
        raise ValueError(f"must be at most {high} s{note}")
    return value


def parse_count(text: str | int) -> int:
    """A whole number written in digits: `200`, not `2e2` nor `200.5`."""
    if isinstance(text, int):
        return text
    digits = str(text).strip()
    if not re.fullmatch(r"[0-9]+", digits):
        raise ValueError(f"not a whole number: {text!r}")
    if len(digits.lstrip("0")) > units.MAX_DIGITS:
        return 10**units.MAX_DIGITS  # beyond every bound, as in units.number_with_unit
    return int(digits)


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@functools.cache
def _default_node() -> str:
    # Read once: a node whose name changed while it runs would split its books in two.
    return socket.gethostname() or "local"


@dataclass(frozen=True)
class Settings:
    """One node's configuration. Field names are the environment variables, lower-cased."""

    enable_disk_cache_management: bool = True
    disk_cache_ttl_seconds: int = 86400
    disk_cache_max_bytes: int = 10 * GIB
    disk_cache_cleanup_interval: int = 3600
    disk_cache_lru_eviction_threshold: float = 0.9
    disk_cache_lru_eviction_target: float = 0.8
    disk_cache_root: str = "./downloads"
    redis_url: str = "redis://127.0.0.1:6379/0"
    disk_cache_key_prefix: str = ""
    disk_cache_eviction_policy: str = "lru"
    disk_cache_min_age_seconds: int = 0
    disk_cache_min_free_bytes: int = 0
    disk_cache_max_evictions_per_run: int = 1000
    disk_cache_batch_size: int = 200
    disk_cache_lock_timeout_seconds: int = 300
    disk_cache_entry_depth: int = 1
    disk_cache_events_maxlen: int = 10000
    disk_cache_access_log_maxlen: int = 0  # 0: no access log; else the stream's cap
    disk_cache_node: str = ""
    disk_cache_cluster: str = "cachemgr"

    def validate(self, typed: Mapping[str, str] | None = None) -> Settings:
        """Refuse a value cachemgr cannot run with. `typed`: the environment's text of each
        field read from it, which the message quotes rather than the converted value."""

        def fail(name: str, value: Any, why: str) -> None:
            shown = _shown(typed[name]) if typed and name in typed else repr(value)
            if name == "redis_url":  # its password must not reach a log or a terminal
                shown = repr(without_password(self.redis_url))
            raise SettingsError(f"{name.upper()}={shown}: {why}")

        # (name, low, high, how high reads): a value past `high` passed start-up, then broke
        # the books half-way (SET EX, PX out of range) or a reply (64-bit JSON integers).
        bounds: tuple[tuple[str, int, int, str], ...] = (
            ("disk_cache_ttl_seconds", 1, MAX_DURATION, "s (10 years)"),
            ("disk_cache_max_bytes", 1, MAX_BYTES, "(8 EiB)"),
            ("disk_cache_cleanup_interval", 1, MAX_DURATION, "s (10 years)"),
            ("disk_cache_min_age_seconds", 0, MAX_DURATION, "s (10 years)"),
            ("disk_cache_min_free_bytes", 0, MAX_BYTES, "(8 EiB)"),
            ("disk_cache_max_evictions_per_run", 1, MAX_EVICTIONS_PER_RUN, ""),
            ("disk_cache_batch_size", 1, MAX_BATCH_SIZE, ""),
            ("disk_cache_lock_timeout_seconds", 1, MAX_LOCK_TIMEOUT, "s (a day)"),
            ("disk_cache_entry_depth", 1, MAX_ENTRY_DEPTH, ""),
            ("disk_cache_events_maxlen", 1, MAX_STREAM_LEN, ""),
            ("disk_cache_access_log_maxlen", 0, MAX_STREAM_LEN, ""),
        )
        for name, low, high, unit in bounds:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(name, value, "must be a whole number")
            if value < low:
                fail(name, value, "must be > 0" if low == 1 else f"must be >= {low}")
            if value > high:
                fail(name, value, f"must be at most {high} {unit}".rstrip())
        threshold = self.disk_cache_lru_eviction_threshold
        if not 0 < threshold <= 1:
            fail("disk_cache_lru_eviction_threshold", threshold, "must be in (0, 1]")
        target = self.disk_cache_lru_eviction_target
        if not 0 < target <= threshold:
            fail(
                "disk_cache_lru_eviction_target",
                target,
                f"must be in (0, DISK_CACHE_LRU_EVICTION_THRESHOLD={threshold}]",
            )
        from cachemgr.policies import POLICIES  # late: policies import settings' neighbours

        if self.disk_cache_eviction_policy not in POLICIES:
            fail(
                "disk_cache_eviction_policy",
                self.disk_cache_eviction_policy,
                f"unknown policy (known: {', '.join(sorted(POLICIES))})",
            )
        if not re.fullmatch(r"[A-Za-z0-9_.{}:-]*", self.disk_cache_key_prefix):
            fail("disk_cache_key_prefix", self.disk_cache_key_prefix, "use letters, digits, _.:{}-")
        said = root_problem(self.disk_cache_root)
        if said:
            fail("disk_cache_root", self.disk_cache_root, said)
        said = name_problem(self.disk_cache_cluster)
        if said:  # it names the registry's keys
            fail("disk_cache_cluster", self.disk_cache_cluster, said)
        if self.disk_cache_node and not checks.NODE_NAME.fullmatch(self.disk_cache_node):
            # As `?node=` and forget-node take it: a node they could not name is refused.
            fail("disk_cache_node", self.disk_cache_node, "1 to 100 of letters, digits, _.-")
        problem = redis_url_problem(self.redis_url)
        if problem:
            fail("redis_url", self.redis_url, problem)
        return self

    def check_root(self) -> Settings:
        """Refuse a root that does not exist: the seed's "downloads directory exists" check."""
        root = Path(self.disk_cache_root)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "directory does not exist"
            raise SettingsError(
                f"DISK_CACHE_ROOT={self.disk_cache_root!r}: {what} (a disk not mounted, or a "
                "wrong setting?)"
            )
        return self

    def check_floor(self, typed: str | None = None) -> Settings:
        """A worker's: refuse a free-space floor its disk could never give. Not before the
        root was marked as the books' (it may be the bare mount point of a disk not mounted
        yet, on a smaller one: the marker check says that); nor in the API or the CLI, which
        show the workers' floor: the workers ignore one the disk changed under, said."""
        if not (Path(self.disk_cache_root) / BOOKS_MARKER).is_file():
            return self
        disk = self.disk_under_floor()
        if disk is not None:
            typed = typed or str(self.disk_cache_min_free_bytes)
            raise SettingsError(f"DISK_CACHE_MIN_FREE_BYTES={typed}: {floor_beyond(disk)}")
        return self

    def disk_under_floor(self) -> int | None:
        """The size of the disk holding the root, when DISK_CACHE_MIN_FREE_BYTES is not less
        than it: a floor no eviction can reach (every cleanup emptied the cache, still short).
        None otherwise, or when the disk cannot be read."""
        floor = self.disk_cache_min_free_bytes
        if not floor:
            return None
        try:
            disk = shutil.disk_usage(self.disk_cache_root).total
        except OSError:
            return None
        return disk if floor >= disk else None

    @property
    def root(self) -> Path:
        return Path(self.disk_cache_root).resolve()

    @property
    def node(self) -> str:
        return self.disk_cache_node or _default_node()

    @property
    def key_prefix(self) -> str:
        """The explicit prefix, else `{node}:` for a named node (one hash tag), else ""."""
        if self.disk_cache_key_prefix:
            return self.disk_cache_key_prefix
        return Keys.node_prefix(self.disk_cache_node)

    @property
    def threshold_bytes(self) -> int:
        return int(self.disk_cache_max_bytes * self.disk_cache_lru_eviction_threshold)

    @property
    def target_bytes(self) -> int:
        return int(self.disk_cache_max_bytes * self.disk_cache_lru_eviction_target)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes).validate()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, require_root: bool = True
    ) -> Settings:
        """Read every field from its environment variable; raise SettingsError on a bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "" and f.name not in ("disk_cache_key_prefix",):
                continue
            values[f.name] = _convert(f.name, raw)
        typed = {f.name: env[f.name.upper()] for f in fields(cls) if f.name in values}
        threshold = values.get("disk_cache_lru_eviction_threshold")
        default_target = cls.disk_cache_lru_eviction_target
        if "disk_cache_lru_eviction_target" not in values and threshold is not None:
            # The spec names the threshold alone: set at or under the default target, the
            # target follows it at the seed's ratio (80/90) rather than stop start-up.
            if 0 < threshold <= default_target:
                target = threshold * 8 / 9
                values["disk_cache_lru_eviction_target"] = round(target, 6) or target
        settings = cls(**values).validate(typed)
        return settings.check_root() if require_root else settings


def floor_beyond(disk: int) -> str:
    """Why a free-space floor of at least the whole disk (`disk` bytes) is refused."""
    return (
        f"not less than the whole disk holding DISK_CACHE_ROOT ({disk} bytes): no eviction "
        "could ever free that much, and every cleanup would empty the cache trying"
    )


def parse_fraction(text: str) -> float:
    """A plain decimal number (`0.9`, `.85`, `9e-1`): float() alone took other scripts' digits
    (`١`, as 1.0) and `1_0`, which sizes and durations refuse."""
    if not re.fullmatch(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", text):
        raise ValueError("not a number (e.g. 0.9)")
    return float(text)


_PARSERS: dict[str, Any] = {
    "enable_disk_cache_management": parse_bool,
    "disk_cache_ttl_seconds": units.duration,
    "disk_cache_max_bytes": units.size,
    "disk_cache_cleanup_interval": units.duration,
    "disk_cache_lru_eviction_threshold": parse_fraction,
    "disk_cache_lru_eviction_target": parse_fraction,
    "disk_cache_min_age_seconds": units.duration,
    "disk_cache_min_free_bytes": units.size,
    "disk_cache_max_evictions_per_run": parse_count,
    "disk_cache_batch_size": parse_count,
    "disk_cache_lock_timeout_seconds": units.duration,
    "disk_cache_entry_depth": parse_count,
    "disk_cache_events_maxlen": parse_count,
    "disk_cache_access_log_maxlen": parse_count,
}


def _convert(name: str, raw: str) -> Any:
    parser = _PARSERS.get(name, str)
    text = raw.strip()
    if text.startswith("-") and parser is not str:
        raise SettingsError(f"{name.upper()}={quoted(raw)}: must not be negative")
    try:
        return parser(text)
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}={quoted(raw)}: {exc}") from None


def quoted(text: str) -> str:
    """repr(text), cut short when absurdly long: a 400-digit number is recognisable by its
    start and its length, and the message stays one readable line."""
    if len(text) > 40:
        return f"{text[:20]!r}... ({len(text)} characters)"
    return repr(text)


def env_value(value: Any) -> str:
    """A setting as one writes it in the environment (`false`, not Python's `False`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _shown(text: str) -> str:
    """The user's own text in a message: bare when it is a plain number (`=0.95`, as the
    README shows), quoted otherwise, so that spaces and empty values stay visible."""
    if len(text) <= 40 and re.fullmatch(r"[0-9][0-9.]*[A-Za-z]*", text):
        return text
    return quoted(text)


# Directories that are never a downloads directory of their own: as the root, every folder in
# them (/etc, /usr, a user's files) is a download to book, expire and evict.
SYSTEM_DIRS = frozenset(
    "/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /media /mnt /opt /proc /root /run "
    "/sbin /srv /sys /tmp /usr /usr/bin /usr/lib /usr/lib32 /usr/lib64 /usr/local /usr/sbin "
    "/usr/share /var /var/cache /var/lib /var/log /var/tmp /Users /System /Library "
    "/Applications /Volumes /private /private/etc /private/tmp /private/var".split()
)
HOMES = ("/home", "/Users")  # whose folders are users' homes


def root_problem(root: str) -> str | None:
    """Why `root` cannot be a cache root: a system directory, or a home directory itself
    (a folder of /home or /Users, or this user's), as written or as it resolves."""
    try:
        home = str(Path.home().resolve())
    except (OSError, RuntimeError):  # no HOME: the other checks stand
        home = None
    for where in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
        if where in SYSTEM_DIRS or where == home or os.path.dirname(where) in HOMES:
            system = where in SYSTEM_DIRS
            kind = "a system directory" if system else "a home directory"
            return (
                f"{kind} ({where!r}), not a downloads directory of its own: every folder in "
                "it would be a download to expire and evict; use a directory made for the "
                "downloads (e.g. /var/cache/downloads)"
            )
    return None


def name_problem(name: str) -> str | None:
    """What is wrong with a name that goes into Redis keys or a queue's name (a cluster, a
    queue), or None: one not UTF-8 (a stray byte in the environment) failed every command,
    and stopped the worker, in the codec's words."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return "not UTF-8 (a stray byte in the environment?)"
    if not 0 < len(name) <= MAX_NAME or not name.isprintable() or any(c.isspace() for c in name):
        return f"1 to {MAX_NAME} printable characters, no spaces"
    return None


MAX_NAME = 200
