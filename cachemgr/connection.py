"""Connecting to Redis: one server, a Redis Cluster or a Sentinel-watched master."""

from __future__ import annotations

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
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=wait,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=not interactive,
        **({"retry": once} if interactive else {}),
    )
