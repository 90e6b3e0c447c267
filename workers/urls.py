"""Where the pipeline client finds the books and the broker: the servers its URLs name."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

import redis

from cachemgr.connection import connect, without_password
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


# URL schemes redis-py reads itself: a Cluster's or Sentinel's is cachemgr's own (connect).
PLAIN = ("redis", "rediss", "unix")


def books_url(candidates: list[str | None], cluster: str) -> str | None:
    """The books' URL, of the URL given and REDIS_URL (`candidates`, in that order): the one
    where the workers published the node registry when they differ (a pipeline's own
    REDIS_URL, or the workers' books beside a broker URL given; either way the other had the
    pins and plays booked where no worker reads them), else the first, said. A URL given
    alone, REDIS_URL unset, is said too when no worker published there (a broker's database
    apart from the books' took the plays and pins unsaid), once a process."""
    urls = tuple(dict.fromkeys(url for url in candidates if url))
    if not urls:
        return None
    alone = len(urls) == 1
    if alone and (candidates[-1] or urlsplit(urls[0]).scheme not in PLAIN):
        return urls[0]  # REDIS_URL's, as the workers read it; or cachemgr's own kind of URL
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
    if alone:
        if unreachable:  # Redis away: the client's first call says so; asked again next time
            return urls[0]
        _BOOKS_FOUND[urls, cluster] = urls[0]  # said once
    log.warning(
        "CacheClient: no workers have published to %s%s: the books are taken to be at %s "
        "(the URL given); pass redis_url=%s if they are elsewhere",
        " or ".join(without_password(u) for u in urls if u not in unreachable) or "either",
        f" ({', '.join(map(without_password, unreachable))} could not be asked)"
        if unreachable
        else "",
        without_password(urls[0]),
        " (or set REDIS_URL)" if alone else "",
    )
    return urls[0]


def _publishes(url: str, cluster: str) -> bool:
    """Whether the node registry is at `url` (asked within a second or so)."""
    plain = url.split("://", 1)[0] in PLAIN
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


def celery_url_problem(broker: str, backend: str) -> str | None:
    """What is wrong with the broker's or the result backend's URL, in one line naming the
    variable it came from; None when Celery knows both kinds. A backend Celery cannot load
    (`CELERY_RESULT_BACKEND=junk`) stopped the worker, and failed each send, in a traceback."""
    from celery.app.backends import by_url

    env = os.environ
    for name, kind, url, load in (
        ("CELERY_BROKER_URL", "broker", broker, _broker_transport),
        ("CELERY_RESULT_BACKEND", "result backend", backend, by_url),
    ):
        try:
            for part in url.split(";"):
                if "://" in part:  # a port past 65535 raises here (it was "Error: Port out...")
                    urlsplit(part).port  # noqa: B018
            load(url)
        except Exception as exc:  # a transport's own (qpid: RuntimeError) too
            said = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            given = name if env.get(name) else "REDIS_URL"
            shown = without_password(url)  # not for the log
            return f"{given}={shown!r}: not a {kind} Celery can use ({said})"
    return None


def _broker_transport(url: str) -> Any:
    """kombu's transport for the URL; a bare word that names none (`junk`) is not read as
    an AMQP host name, which kombu does: the worker retried `amqp://junk:5672//` for ever."""
    from kombu import Connection
    from kombu.transport import TRANSPORT_ALIASES

    for part in url.split(";"):
        if "://" not in part and part not in TRANSPORT_ALIASES:
            raise ValueError(f"not a URL (scheme://host:port/...): {part!r}")
    return Connection(url).transport


def celery_env_urls() -> tuple[str, str]:
    """The broker's and the result backend's URLs as the workers read them (celeryconfig):
    CELERY_BROKER_URL and CELERY_RESULT_BACKEND, each defaulting to REDIS_URL."""
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return (
        os.environ.get("CELERY_BROKER_URL") or redis_url,
        os.environ.get("CELERY_RESULT_BACKEND") or redis_url,
    )


def celery_env_problem() -> str | None:
    """celery_url_problem for the URLs the workers read from the environment."""
    return celery_url_problem(*celery_env_urls())
