"""Where the pipeline client finds the books and the broker: the servers its URLs name."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis

from cachemgr.connection import connect
from cachemgr.keys import Keys

log = logging.getLogger("cachemgr")


# How long the client's sends and result reads wait for a reply from a Redis that hangs.
HUNG_REDIS_SECONDS = 5


def server(url: str) -> tuple[str, int | str] | None:
    """The Redis server a redis://, rediss:// or unix:// URL names (any database)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return ("unix", parts.path)
    if parts.scheme in ("redis", "rediss"):
        return (parts.hostname or "localhost", parts.port or 6379)
    return None


# The books' URL found for (the candidate URLs, the cluster): looked for once a process.
_BOOKS_FOUND: dict[tuple[tuple[str, ...], str], str] = {}


def books_url(candidates: list[str | None], cluster: str) -> str | None:
    """The books' URL, of the URL given and REDIS_URL: the one where the workers published
    the node registry when they differ (a pipeline's own REDIS_URL, or the workers' books
    beside a broker URL given; either way the other had the pins and plays booked where no
    worker reads them), else the first."""
    urls = tuple(dict.fromkeys(url for url in candidates if url))
    if len(urls) < 2:
        return urls[0] if urls else None
    if (urls, cluster) in _BOOKS_FOUND:
        return _BOOKS_FOUND[urls, cluster]
    unreachable = []
    for url in urls:
        try:
            if _publishes(url, cluster):
                _BOOKS_FOUND[urls, cluster] = url
                return url
        except (redis.RedisError, ValueError, OSError):
            unreachable.append(url)
    log.warning(
        "CacheClient: no workers have published to %s%s: the books are taken to be at %s "
        "(the URL given); pass redis_url= if they are elsewhere",
        " or ".join(u for u in urls if u not in unreachable) or "either",
        f" ({', '.join(unreachable)} could not be asked)" if unreachable else "",
        urls[0],
    )
    return urls[0]


def _publishes(url: str, cluster: str) -> bool:
    """Whether the node registry is at `url` (asked within a second or so)."""
    plain = url.split("://", 1)[0] in ("redis", "rediss", "unix")
    # A Cluster's or Sentinel's URL is cachemgr's own (connection.connect).
    probe = (
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        if plain
        else connect(url, interactive=True)
    )
    try:
        return bool(probe.exists(Keys.nodes(cluster)))
    finally:
        probe.close()
