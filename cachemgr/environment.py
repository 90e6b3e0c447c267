"""The settings read from the environment outside Settings, by the processes that read one
alone (beat and its DISK_CACHE_NODES, the pipeline client, logging, the API's token), and the
names that are no setting at all."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import fields

from cachemgr.settings import Settings, SettingsError, name_problem

# Settings read outside Settings: by the API (api/extensions.py), logging, beat and the stack.
OTHER_NAMES = (
    "DISK_CACHE_API_HOSTS", "DISK_CACHE_API_READ_AUTH", "DISK_CACHE_API_TOKEN",
    "DISK_CACHE_LOG_FORMAT", "DISK_CACHE_LOG_LEVEL", "DISK_CACHE_NODES",
)  # fmt: skip


def unknown_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The environment's DISK_CACHE_* (and ENABLE_DISK_CACHE*) variables that name no
    setting, each said with the one it may have meant: a misspelt DISK_CACHE_MAX_BYTE left
    the quota at its default of 10 GiB, unsaid."""
    env = os.environ if environ is None else environ
    known = {f.name.upper() for f in fields(Settings)} | set(OTHER_NAMES)
    # Matched past the shared DISK_CACHE_, which made any name look like every other.
    tails = {n.removeprefix("DISK_CACHE_"): n for n in known}
    said = []
    for name in sorted(env):
        if name in known or not name.startswith(("DISK_CACHE_", "ENABLE_DISK_CACHE")):
            continue
        tail = name.removeprefix("DISK_CACHE_")
        close = difflib.get_close_matches(tail, tails, 1, 0.75) or sorted(
            t for t in tails if t.startswith(f"{tail}_")  # DISK_CACHE_TTL: its unit left out
        )
        meant = f" ({tails[close[0]]}?)" if close else ""
        said.append(f"{name} is no setting of cachemgr{meant}")
    return said


def log_level(environ: Mapping[str, str] | None = None, default: str = "INFO") -> str:
    """DISK_CACHE_LOG_LEVEL, checked: logging's own error names neither the setting nor the
    levels it knows."""
    env = os.environ if environ is None else environ
    raw = env.get("DISK_CACHE_LOG_LEVEL") or ""
    level = raw.strip().upper() or default
    if level not in logging.getLevelNamesMapping():
        known = "DEBUG, INFO, WARNING, ERROR, CRITICAL"
        raise SettingsError(f"DISK_CACHE_LOG_LEVEL={raw!r}: not a log level ({known})")
    return level


def queue_override(environ: Mapping[str, str] | None = None) -> str | None:
    """CACHEMGR_QUEUE (the queue a node's workers consume instead of `cachemgr.<node>`),
    checked (name_problem)."""
    return _env_name("CACHEMGR_QUEUE", environ)


def cluster_of(environ: Mapping[str, str] | None = None) -> str:
    """DISK_CACHE_CLUSTER as the workers read it (Settings), for the processes that read it
    alone: beat, the pipeline client."""
    return _env_name("DISK_CACHE_CLUSTER", environ) or Settings.disk_cache_cluster


def _env_name(variable: str, environ: Mapping[str, str] | None) -> str | None:
    """A name read from the environment, checked (name_problem); None when unset or empty."""
    raw = (os.environ if environ is None else environ).get(variable) or ""
    said = raw and name_problem(raw)
    if said:
        raise SettingsError(f"{variable}={raw!r}: {said}")
    return raw or None


def beat_nodes(environ: Mapping[str, str] | None = None) -> list[str]:
    """DISK_CACHE_NODES: the nodes one beat sends periodic cleanups to (celeryconfig)."""
    raw = (os.environ if environ is None else environ).get("DISK_CACHE_NODES", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def api_token(environ: Mapping[str, str] | None = None) -> str:
    """DISK_CACHE_API_TOKEN, refused with blanks at an end: no client sends them in a header
    (servers strip them), so a token of spaces let the API listen on every address while no
    write could ever be made."""
    token = (os.environ if environ is None else environ).get("DISK_CACHE_API_TOKEN", "")
    if token != token.strip():
        raise SettingsError(
            "DISK_CACHE_API_TOKEN has blanks at an end (or is only blanks): no client can send "
            "them; set it without"
        )
    return token
