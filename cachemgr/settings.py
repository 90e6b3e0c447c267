"""Settings: every knob of the seed, read from environment variables of the same name."""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

GIB = 1024**3

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


MAX_BYTES = 2**63 - 1

class SettingsError(ValueError):
    """A setting has a value cachemgr cannot run with; the message is one line."""


def _number_with_unit(text: str, units: Mapping[str, int], what: str) -> int:
    match = _NUMBER_UNIT.match(str(text))
    if not match:
        raise ValueError(f"not a {what}: {text!r}")
    number, unit = match.groups()
    factor = units.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r}")
    return int(float(number) * factor)


def parse_size(text: str | int) -> int:
    """Bytes from `10737418240`, `10GiB`, `500MB` (SI and binary units)."""
    if isinstance(text, int):
        return text
    return _number_with_unit(text, _SIZE_UNITS, "size")


def parse_duration(text: str | int) -> int:
    """Seconds from `86400`, `90s`, `15m`, `24h`, `7d`."""
    if isinstance(text, int):
        return text
    return _number_with_unit(text, _DURATION_UNITS, "duration")


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

    def validate(self) -> Settings:
        def fail(name: str, value: Any, why: str) -> None:
            raise SettingsError(f"{name.upper()}={value!r}: {why}")

        if self.disk_cache_ttl_seconds <= 0:
            fail("disk_cache_ttl_seconds", self.disk_cache_ttl_seconds, "must be > 0")
        if self.disk_cache_max_bytes <= 0:
            fail("disk_cache_max_bytes", self.disk_cache_max_bytes, "must be > 0")
        for name in ("disk_cache_max_bytes", "disk_cache_min_free_bytes"):
            if getattr(self, name) > MAX_BYTES:  # Redis counts bytes in 64-bit integers
                fail(name, getattr(self, name), f"must be at most {MAX_BYTES} (8 EiB)")
        if self.disk_cache_cleanup_interval <= 0:
            fail("disk_cache_cleanup_interval", self.disk_cache_cleanup_interval, "must be > 0")
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
        for name in (
            "disk_cache_min_age_seconds",
            "disk_cache_min_free_bytes",
            "disk_cache_access_log_maxlen",
        ):
            if getattr(self, name) < 0:
                fail(name, getattr(self, name), "must be >= 0")
        for name in (
            "disk_cache_max_evictions_per_run",
            "disk_cache_batch_size",
            "disk_cache_lock_timeout_seconds",
            "disk_cache_entry_depth",
            "disk_cache_events_maxlen",
        ):
            if getattr(self, name) < 1:
                fail(name, getattr(self, name), "must be >= 1")
        from cachemgr.policies import POLICIES  # late: policies import settings' neighbours

        if self.disk_cache_eviction_policy not in POLICIES:
            fail(
                "disk_cache_eviction_policy",
                self.disk_cache_eviction_policy,
                f"unknown policy (known: {', '.join(sorted(POLICIES))})",
            )
        if not re.fullmatch(r"[A-Za-z0-9_.{}:-]*", self.disk_cache_key_prefix):
            fail("disk_cache_key_prefix", self.disk_cache_key_prefix, "use letters, digits, _.:{}-")
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", self.disk_cache_node):
            fail("disk_cache_node", self.disk_cache_node, "use letters, digits, _.-")
        return self

    def check_root(self) -> Settings:
        """Refuse a root that does not exist: the seed's "downloads directory exists" check."""
        if not Path(self.disk_cache_root).is_dir():
            raise SettingsError(
                f"DISK_CACHE_ROOT={self.disk_cache_root!r}: directory does not exist"
            )
        return self

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
        return f"{{{self.disk_cache_node}}}:" if self.disk_cache_node else ""

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
        settings = cls(**values).validate()
        return settings.check_root() if require_root else settings


_PARSERS: dict[str, Any] = {
    "enable_disk_cache_management": parse_bool,
    "disk_cache_ttl_seconds": parse_duration,
    "disk_cache_max_bytes": parse_size,
    "disk_cache_cleanup_interval": parse_duration,
    "disk_cache_lru_eviction_threshold": float,
    "disk_cache_lru_eviction_target": float,
    "disk_cache_min_age_seconds": parse_duration,
    "disk_cache_min_free_bytes": parse_size,
    "disk_cache_max_evictions_per_run": int,
    "disk_cache_batch_size": int,
    "disk_cache_lock_timeout_seconds": parse_duration,
    "disk_cache_entry_depth": int,
    "disk_cache_events_maxlen": int,
    "disk_cache_access_log_maxlen": int,
}


def _convert(name: str, raw: str) -> Any:
    parser = _PARSERS.get(name, str)
    text = raw.strip()
    if text.startswith("-") and parser is not str:
        raise SettingsError(f"{name.upper()}={raw!r}: must not be negative")
    try:
        return parser(text)
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}={raw!r}: {exc}") from None
