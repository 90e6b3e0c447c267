"""Connecting to Redis: one server, a Redis Cluster or a Sentinel-watched master."""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry


def same_server(client: Any) -> bool:
    """False for a Redis Cluster client, whose keys of different hash tags may live apart."""
    return not isinstance(client, RedisCluster)


# A hung Redis (stopped, not gone: it still accepts connections) answers nothing: a worker
# waits it out (10 s a try, one retry), a person or an HTTP client must hear so within seconds
# (gunicorn killed the request at 30 s with an HTML 500, the CLI took 40 s).
PATIENT_SECONDS, INTERACTIVE_SECONDS = 10, 5


def connect(url: str, *, interactive: bool = False) -> Any:
    """A client as cachemgr needs it: str replies, bounded timeouts, keep-alive.
    `interactive` (the API, the CLI): a shorter wait for a reply, not tried again.

    `redis+cluster://host:port` (or `rediss+cluster://`) connects to a Redis Cluster; every
    multi-key script then runs on one shard, since a node's keys share one hash tag.
    `redis+sentinel://[[user]:password@]host:port[,host:port]/master_name[/db]` asks Sentinel
    for the master (the password is the master's; the sentinels are asked without one).
    """
    wait = INTERACTIVE_SECONDS if interactive else PATIENT_SECONDS
    if url.startswith("redis+sentinel://"):
        from redis.sentinel import Sentinel

        found = sentinel_parts(url)
        return Sentinel(found.sentinels, socket_timeout=5).master_for(
            found.master,
            db=int(found.db or 0),
            username=found.username,
            password=found.password,
            decode_responses=True,
            socket_timeout=wait,
        )
    if "+cluster://" in url:
        try:
            return RedisCluster.from_url(
                url.replace("+cluster://", "://", 1),
                decode_responses=True,
                socket_timeout=wait,
                socket_connect_timeout=5,
            )
        except RedisClusterException as exc:
            # redis-py asks the cluster for its nodes here, and says it with an exception of
            # its own that callers of a client (CLI, worker, API) do not take for Redis down.
            raise redis.ConnectionError(str(exc)) from exc
    # Interactive: a closed connection is tried again (a Redis restarted since), a reply that
    # does not come is not (the health check's PING, then the command, waited twice).
    once = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=wait,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=not interactive,
        **({"retry": once} if interactive else {}),
    )
    if interactive:
        pool = client.connection_pool
        pool.connection_class = _failing_fast(pool.connection_class, wait)
    return client


def _failing_fast(base: type, wait: float) -> type:
    """`base` (a plain, TLS or Unix-socket connection) that, once a reply did not come within
    `wait`, fails every command for as long again at once instead of waiting for each: a stats
    read makes two calls, the status page three, and each waited (10 and 15 s, past
    Prometheus' 10 s scrape timeout, so `cachemgr_up 0` never reached it). One pool's
    connections share it: another request in that time hears at once too."""
    hung = {"until": 0.0}

    class FailingFast(base):  # type: ignore[valid-type,misc]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            left = hung["until"] - time.monotonic()
            if left > 0:
                raise redis.TimeoutError(
                    f"Redis did not answer within {wait:g} s a moment ago (not asked again "
                    f"for {left:.1f} s)"
                )
            super().send_packed_command(command, check_health)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except redis.TimeoutError:
                hung["until"] = time.monotonic() + wait
                raise

    return FailingFast


class SentinelURL(NamedTuple):
    sentinels: list[tuple[str, int]]
    master: str
    db: str
    username: str | None
    password: str | None


def sentinel_parts(url: str) -> SentinelURL:
    """`redis+sentinel://[[user]:password@]h1:p1[,h2:p2]/master[/db]`, read (a password was
    read as part of the first host's name); ValueError names what is wrong."""
    rest = url.removeprefix("redis+sentinel://")
    hosts, _, path = rest.partition("/")
    login, at, hosts = hosts.rpartition("@")
    user, _, password = login.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isascii() or not port.isdigit():
            raise ValueError(f"sentinel {host!r} needs a host and a numeric port (host:port)")
        sentinels.append((name.removeprefix("[").removesuffix("]"), int(port)))  # [::1]
    master, _, db = path.partition("/")
    return SentinelURL(
        sentinels,
        master or "mymaster",
        db,
        (unquote(user) or None) if at else None,
        unquote(password) if at and password else None,
    )


def without_password(url: str) -> str:
    # Celery's failover URLs are several, split by ';' (`sentinel://:pw@a;sentinel://:pw@b`).
    if ";" in url:
        return ";".join(without_password(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:  # no URL to parse (`redis://:pw@[zz]`): any user:password@ masked
        return re.sub(r"(://[^/:@]*):[^/?#]*@", r"\1:***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# What cachemgr.connection.connect understands (redis, rediss and unix are redis-py's own).
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster", "unix")


def redis_url_problem(url: str) -> str | None:
    """Why redis-py would misread the URL, if it would: a database that is not a number
    (`/abc`) is silently database 0 there, another node's books."""
    try:  # a bracketed host that is no address: `redis://[::1`, `redis://[zz]`
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a Redis URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        known = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
        return f"not a Redis URL: it must start with one of {known}"
    if parts.scheme == "redis+sentinel":
        try:
            db = sentinel_parts(url).db
        except ValueError as exc:
            return str(exc)
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as exc:
            return f"not a Redis URL ({exc})"
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
    dbs = [db] if db else []
    dbs += parse_qs(parts.query).get("db", [])
    for value in dbs:
        if not value.isascii() or not value.isdigit():
            return f"the database {value!r} is not a number"
        if parts.scheme.endswith("+cluster") and int(value):
            # redis-py refuses it at each connection, which said Redis could not be reached
            return f"a Redis Cluster has database 0 alone, not {value}"
    if parts.scheme != "redis+sentinel":
        try:  # an option it cannot read (`?socket_timeout=abc`) failed every connection
            redis.connection.parse_url(url.replace("+cluster://", "://", 1))
        except ValueError as exc:
            return f"not a Redis URL ({exc})"
    return None


# A broker URL's port where it names none, by scheme (kombu's defaults).
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672, "amqps": 5671}
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "::1": "127.0.0.1", "": "127.0.0.1"}


def broker_id(url: str) -> str:
    """Which broker a Celery URL reaches, to compare two by: no credentials, no options,
    loopback's names as one, default ports and databases written out (`redis://localhost`
    and `redis://127.0.0.1:6379/0` are one broker; failover URLs are several, in order)."""
    if ";" in url:
        return ";".join(broker_id(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is no number: compared as it is written
        return url
    host = (parts.hostname or "").lower()
    host = LOOPBACK_NAMES.get(host, host)
    where = parts.path.rstrip("/") or ("/0" if parts.scheme in ("redis", "rediss") else "/")
    return f"{parts.scheme}://{host}:{port}{where}"
