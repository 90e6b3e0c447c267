"""cachemgr: keeps a download directory from filling the disk (TTL expiry, quota eviction).

The domain library: settings, Redis keys and books, disk scanning, locks, policies. It imports
neither Flask nor Celery; `workers/` and `api/` are thin adapters over it.
"""

from __future__ import annotations

from typing import Any

from cachemgr.cache import DiskCache
from cachemgr.clock import RedisClock
from cachemgr.connection import connect
from cachemgr.errors import CacheError, NotOnDisk, NotTracked, Overlap, PathError, RootMissing
from cachemgr.settings import Settings, SettingsError

__all__ = [
    "CacheError",
    "DiskCache",
    "NotOnDisk",
    "NotTracked",
    "Overlap",
    "PathError",
    "RootMissing",
    "Settings",
    "SettingsError",
    "connect",
    "open_cache",
]


def open_cache(settings: Settings | None = None, client: Any = None) -> DiskCache:
    """A DiskCache from the environment's settings, connected to REDIS_URL unless given a client."""
    settings = settings or Settings.from_env()
    client = client if client is not None else connect(settings.redis_url)
    return DiskCache(settings, client, clock=RedisClock(client))  # the books go by Redis's
