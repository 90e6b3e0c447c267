"""Connecting to Redis: one server, a Redis Cluster or a Sentinel-watched master."""

from __future__ import annotations

import time
from typing import Any

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
    `redis+sentinel://host:port[,host:port]/master_name[/db]` asks Sentinel for the master.
    """
    wait = INTERACTIVE_SECONDS if interactive else PATIENT_SECONDS
    if url.startswith("redis+sentinel://"):
        from redis.sentinel import Sentinel

        hosts, _, rest = url.removeprefix("redis+sentinel://").partition("/")
        master, _, db = rest.partition("/")
        sentinels = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
        return Sentinel(sentinels, socket_timeout=5).master_for(
            master or "mymaster", db=int(db or 0), decode_responses=True, socket_timeout=wait
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
