"""The pipeline client: what a download pipeline imports to talk to cachemgr.

It sends tasks by name (it imports neither the worker code nor its settings), and records
accesses - the hot path, every play of a track - either as a task or directly in Redis in one
round trip, with the same atomic script the workers use, or batched in one round trip.

    from workers.client import CacheClient
    cache = CacheClient("redis://127.0.0.1:6379/0")
    cache.register("artist/album")          # a finished download (a task)
    cache.access("artist/album")            # a play: True for a hit (direct, one round trip)
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from cachemgr import checks, pins
from cachemgr.clock import CLOCK_SKEW_SECONDS, skew_of, skewed
from cachemgr.connection import connect
from cachemgr.environment import cluster_of, queue_override
from cachemgr.keys import Keys
from cachemgr.migrations import to_feed
from cachemgr.nodes import NodeRegistry, route_of
from cachemgr.paths import normalize
from cachemgr.scripts import STALE_HIT
from cachemgr.settings import SettingsError
from cachemgr.store import Store
from workers.client_checks import ClientChecks
from workers.results import (
    BackendUnavailable,
    TaskResult,
    backend_gave_up,
    quiet_backend_noise,
    subscribe_when_awaited,
)
from workers.results import ResultUnavailable as ResultUnavailable  # the pipeline's to catch
from workers.urls import HUNG_REDIS_SECONDS, books_url, celery_url_problem, server

log = logging.getLogger("cachemgr")

# How long a client that found no published config (no worker started yet) keeps the defaults
# before it looks again: not on every access, the hot path.
CONFIG_RETRY_SECONDS = 5.0
# How long a read of the node registry serves the client's route and checks.
REGISTRY_READ_SECONDS = 1.0
# How long it keeps what the workers published (TTL, policy, access log) before it reads it
# again: a worker restarted with another TTL or access-log cap is followed within this, by one
# HGETALL, with no restart of the pipeline.
CONFIG_REFRESH_SECONDS = 10.0


# The clients of this process, for the child of a fork (_after_fork_in_child).
_CLIENTS: weakref.WeakSet[CacheClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A client used before os.fork() shared its broker and result-backend connections with
    the parent: parent and children read each other's answers, and their get() timed out
    though every task ran. Celery resets them only in multiprocessing's children; the books'
    client (redis-py) resets its own pool."""
    for client in list(_CLIENTS):
        client.app._after_fork()  # the broker's connection and producer pools
        consumer = getattr(client.app.backend, "result_consumer", None)
        if consumer is not None:
            consumer._after_fork()  # the result backend's subscription and pool


os.register_at_fork(after_in_child=_after_fork_in_child)


def holder_kwargs(holder: str | None) -> dict[str, str]:
    """A task's `holder` argument, sent only when named: a worker from before holders takes
    a task that names none (one that names a holder it fails: upgrade the workers first).
    An empty name is refused here (sent as none, its unpin would end every lease)."""
    return {} if holder is None else {"holder": checks.holder(holder)}


class CacheClient(ClientChecks):
    def __init__(
        self,
        broker_url: str | None = None,
        *,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        node: str | None = None,
        queue: str | None = None,
        backend: str | None = None,
        cluster: str | None = None,
        redis: Any = None,
    ) -> None:
        """`broker_url` defaults to CELERY_BROKER_URL, then REDIS_URL; `redis_url` (the
        books) to the one, of the `broker_url` given (a Redis one) and REDIS_URL, where the
        workers published their node registry (the URL given when neither or both: said in a
        WARNING), then the broker's URL: a pipeline's own REDIS_URL had the pins and plays
        of a client given one URL booked in another Redis, protecting nothing, and so had a
        broker URL given beside the workers' REDIS_URL. A `node` routes disk tasks to the
        queue its workers published and uses its keys (read from the registry on first use;
        `cachemgr.<node>` and `{node}:` before any worker of it has started); `queue` and
        `key_prefix` override them. With no `node` given, `node`, `queue` and `key_prefix`
        not given are read from the environment the workers read them from (DISK_CACHE_NODE,
        CACHEMGR_QUEUE, DISK_CACHE_KEY_PREFIX), and `cluster` from DISK_CACHE_CLUSTER: a
        pipeline run with the workers' environment sends where they listen. Note Celery's
        own rule: a CELERY_BROKER_URL (or CELERY_RESULT_BACKEND) in the environment wins
        over arguments (said in a WARNING; `broker_url` is then the environment's).
        `redis`: a client for the books to use instead of one of its own
        (the API's, which fails fast when Redis hangs); its owner closes it."""
        env = os.environ
        if node is None:  # a node given routes by what it published, never by this shell's
            node = env.get("DISK_CACHE_NODE") or None
            if queue is None:
                queue = queue_override(env)
            if key_prefix is None:
                key_prefix = env.get("DISK_CACHE_KEY_PREFIX") or None
        node = node or None
        cluster = cluster or cluster_of(env)
        default_redis = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.broker_url = broker_url or env.get("CELERY_BROKER_URL") or default_redis
        given = broker_url if broker_url and server(broker_url) else None
        self.redis_url = redis_url or books_url(
            [given, env.get("REDIS_URL")], cluster
        ) or (self.broker_url if server(self.broker_url) else default_redis)
        self.node = node
        self.cluster = cluster
        self.backend = backend
        self._queue, self._prefix = queue, key_prefix
        self._route: tuple[str | None, Keys] | None = None
        backend_url = backend or env.get("CELERY_RESULT_BACKEND") or self.redis_url
        if problem := celery_url_problem(self.broker_url, backend_url):
            raise SettingsError(problem)
        self.app = Celery("cachemgr-client", broker=self.broker_url, backend=backend_url)
        subscribe_when_awaited(self.app)
        self._say_env_wins("CELERY_BROKER_URL", broker_url, str(self.app.conf.broker_url))
        self._say_env_wins("CELERY_RESULT_BACKEND", backend, str(self.app.conf.result_backend))
        self.broker_url = str(self.app.conf.broker_url)  # the one tasks go to
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            # Fail fast when the broker is down: the API answers 503 rather than hang.
            broker_connection_timeout=3,
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 1,
            },
            result_backend_transport_options={
                "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
            },
            redis_socket_connect_timeout=3,
            # And when it hangs (stopped, still accepting connections): Celery's own reads of
            # a Redis broker and result backend waited 120 s, or for ever.
            redis_socket_timeout=HUNG_REDIS_SECONDS,
            broker_transport_options={
                "socket_timeout": HUNG_REDIS_SECONDS,
                "socket_connect_timeout": 3,
            },
        )
        books = server(self.redis_url)
        # Celery's broker or result backend on the books' server: see `shares_books_server`.
        self.broker_on_books_server = books is not None and books == server(
            str(self.app.conf.broker_url or self.broker_url)  # Celery's rule
        )
        self.shares_books_server = self.broker_on_books_server or (
            books is not None and books == server(str(self.app.conf.result_backend or ""))
        )
        self._result_cls = self.app.subclass_with_self(TaskResult, keep_reduce=True)
        quiet_backend_noise()
        self._redis: Any = redis
        self._owns_redis = redis is None
        self._store: Store | None = None
        self._config: dict[str, str] | None = None
        self._config_due = float("-inf")
        self._policy_read_at = float("-inf")
        # This host's clock less Redis's, measured at each read of the config: the times this
        # client books (plays, leases) go by Redis's clock, as the workers' beats do.
        self._skew = 0.0
        self._skew_said = False
        self._unknown_said = False
        self._unread_due = 0.0
        self._broker_told = self._keys_told = False
        self._alive_due = 0.0
        self._registry_read: tuple[float, dict[str, dict[str, Any]]] | None = None
        _CLIENTS.add(self)

    # -- routing --------------------------------------------------------------------------
    def _registry(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """The node registry; for the checks, a read of the last second will do: the route
        and the checks at a first send share one read (each read it again). The route's own
        (`fresh`) is always read anew: a node published a moment ago is followed at once."""
        now = time.monotonic()
        read = self._registry_read
        if fresh or read is None or now - read[0] >= REGISTRY_READ_SECONDS:
            read = self._registry_read = (now, NodeRegistry(self._books(), self.cluster).entries())
        return read[1]

    def _routing(self) -> tuple[str | None, Keys]:
        if self._route is None:
            queue, prefix = self._queue, self._prefix
            found = unpublished = True
            entries = None  # the registry, once read
            if self.node and (queue is None or prefix is None):
                try:
                    entries = self._registry(fresh=True)
                except Exception:  # books away (a Cluster raises its own): the defaults
                    entries, unpublished = {}, False
                # Not published yet (its workers have not started): asked again next time.
                published = route_of(self.node, entries)
                found = published.published
                queue = queue or published.queue
                prefix = published.key_prefix if prefix is None else prefix
            chosen = (queue, Keys(prefix or ""))
            if self._queue is not None and found:
                self._say_unread_queue(self._queue, entries)
            if not found:
                if unpublished and not self._unknown_said:
                    # A misspelt node's tasks filled a queue nobody reads, unsaid.
                    self._unknown_said = True
                    log.warning(
                        "node %s has not been published by any worker (not started yet, or a "
                        "misspelt name?): its tasks wait in queue %s until one reads it, and "
                        "its pins and plays go to keys %s that no worker reads",
                        self.node,
                        queue,
                        prefix or "(none)",
                    )
                return chosen  # asked again next time, once Redis answers
            self._route = chosen
        return self._route

    @property
    def queue(self) -> str | None:
        """Where this client's tasks go: the node's published queue, or Celery's default."""
        return self._routing()[0]

    @property
    def keys(self) -> Keys:
        return self._routing()[1]

    # -- tasks ----------------------------------------------------------------------------
    def send(self, name: str, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send `cachemgr.<name>` with these arguments; returns Celery's AsyncResult."""
        return self.send_to(self.queue, name, *args, **kwargs)

    def send_to(self, queue: str | None, name: str, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send to a given queue (another node's): `cachemgr.<node>`."""
        options = {"queue": queue} if queue else {}
        self._say_unread()
        if self._alive_check_due() and queue == self.queue:  # not another node's
            self._say_no_worker(queue)
        try:
            return self.app.send_task(
                f"cachemgr.{name}", args=args, kwargs=kwargs, result_cls=self._result_cls,
                **options,
            )  # fmt: skip
        except RuntimeError as exc:
            if not backend_gave_up(exc):
                raise
            # Celery's "must be restarted" (it need not be): subscribing to the reply failed
            # before the message went out, as a broker away is said.
            raise BackendUnavailable(
                f"Celery's result backend (Redis) cannot be reached: cachemgr.{name} was not "
                "sent; send it again once Redis answers"
            ) from None

    def register(self, path: str) -> AsyncResult:
        return self.send("register_directory", normalize(path))

    def register_completed_download(self) -> AsyncResult:
        return self.send("register_completed_download")

    def touch(self, path: str, miss_bytes: int = 0) -> AsyncResult:
        return self.send("touch_directory", normalize(path), miss_bytes)

    def remove(self, path: str, remove_files: bool = False) -> AsyncResult:
        return self.send("remove_directory", normalize(path), remove_files)

    def pin(self, path: str, ttl_seconds: int = 3600, holder: str | None = None) -> AsyncResult:
        """A lease while a download is written or a file streamed; renew it before it lapses.
        A `holder` (a stream's id) ends its own lease with unpin, not another holder's."""
        return self.send("pin_directory", normalize(path), ttl_seconds, **holder_kwargs(holder))

    def unpin(self, path: str, holder: str | None = None) -> AsyncResult:
        """End `holder`'s lease; with none named, every lease on the directory."""
        return self.send("unpin_directory", normalize(path), **holder_kwargs(holder))

    def cleanup(self) -> AsyncResult:
        return self.send("cleanup")

    # -- the direct path ------------------------------------------------------------------
    def _books(self) -> Any:
        if self._redis is None:
            # As the API's and the CLI's: a hung Redis held each play 20 s (5 s, tried again).
            self._redis = connect(self.redis_url, interactive=True)
        return self._redis

    @property
    def store(self) -> Store:
        """A Store with the node's TTL and access-log cap as its workers published them, and
        the policy in force (migrations.to_feed), read again every CONFIG_REFRESH_SECONDS (the
        defaults until they publish, read again every CONFIG_RETRY_SECONDS: on every access
        while a named node's route is not settled); rebuilt only when what it read changed.
        Once found, a config gone (a FLUSHDB, a forgotten node) leaves the last one in force."""
        now = time.monotonic()
        if self._store is not None and now < self._config_due:
            return self._store
        keys = self.keys
        pipe = self._books().pipeline(transaction=False)
        pipe.hgetall(keys.config)
        pipe.get(keys.policy_name)
        pipe.time()  # the clock's skew, in the same round trip
        before = time.time()
        published, named, clock = pipe.execute(raise_on_error=False)
        after = time.time()
        for reply in (published, named):
            if isinstance(reply, Exception):
                raise reply
        self._config_due = now + (CONFIG_REFRESH_SECONDS if published else CONFIG_RETRY_SECONDS)
        # Gone (a FLUSHDB, a forgotten node): the last one stays. A copy: the one kept is
        # what the next read compares with.
        config = dict(published or self._config or {})
        config["policy"] = to_feed(config.get("policy"), named)
        # A proxy without TIME: no skew is said; a reply held up: the last skew stands.
        measured = None if isinstance(clock, Exception) else skew_of(before, after, clock)
        if measured is not None:
            self._skew = measured
        if abs(self._skew) > CLOCK_SKEW_SECONDS and not self._skew_said:
            self._skew_said = True  # said once; the times it books are corrected all along
            log.warning("%s", skewed("this pipeline host", self._skew))
        same = config == self._config
        if self._store is not None and same and self._store.keys == keys:
            return self._store
        store = Store(
            self._books(),
            keys,
            policy=config.get("policy", "lru"),
            ttl_seconds=int(config.get("ttl_seconds", 86400)),
            access_log_maxlen=int(config.get("access_log_maxlen", 0)),
        )
        self._config = config
        self._say_unread()
        if self._route is not None:  # kept once the route is settled: until the node's
            self._store = store  # workers publish it, its keys may not be the ones to use
        return store

    def for_path(self, absolute_path: str) -> tuple[CacheClient, str]:
        """Learn the node from a path's root: a client for that node, and the relative path."""
        registry = NodeRegistry(self._books(), self.cluster)
        entries = registry.entries()
        node, relative = registry.holder(absolute_path, entries)
        found = route_of(node, entries)
        client = CacheClient(
            self.broker_url,
            redis_url=self.redis_url,
            key_prefix=found.key_prefix,
            queue=found.queue,
            backend=self.backend,
            cluster=self.cluster,
        )
        client.node = node
        return client, relative

    def refresh(self) -> None:
        """Re-read what the node's workers published: TTL, policy, queue and keys."""
        self._store = None
        self._route = None
        self._config_due = float("-inf")

    def access(self, path: str, miss_bytes: int = 0) -> bool:
        """Record an access in one round trip; True for a hit."""
        store = self.store
        hit = store.access(normalize(path), miss_bytes=miss_bytes, now=self._now())
        self._policy_check([hit])
        return bool(hit)

    def access_many(self, paths: Iterable[str]) -> list[bool]:
        """Record a batch of accesses in one round trip."""
        batch = [normalize(p) for p in checks.many("paths", paths)]
        hits = self.store.access_many(batch, now=self._now())
        self._policy_check(hits)
        return [bool(hit) for hit in hits]

    def _now(self) -> float:
        """Now by Redis's clock (this host's, less the skew last measured)."""
        return time.time() - self._skew

    def _policy_check(self, hits: list[int]) -> None:
        """The books run another policy than this client's store (the workers switched it):
        read what they published again, at most every few seconds. (A store of the new
        policy hears the same until the next cleanup builds its structures, and keeps it.)"""
        now = time.monotonic()
        if STALE_HIT in hits and now - self._policy_read_at >= CONFIG_RETRY_SECONDS:
            self._policy_read_at = now
            self._config_due = now  # read again on the next access; the route stays

    def pin_now(
        self, path: str, ttl_seconds: int = 3600, holder: str | None = None
    ) -> dict[str, Any]:
        """Pin directly in Redis (no worker needed), e.g. before a download starts writing;
        the reply is the pin task's."""
        # By Redis's clock: a host an hour behind granted a lease already run out.
        return pins.grant(self.store, path, ttl_seconds, holder, self._now())

    def unpin_now(self, path: str, holder: str | None = None) -> dict[str, Any]:
        """The unpin task's work and reply, directly in Redis."""
        return pins.end(self.store, path, holder, self._now())

    def close(self) -> None:
        if self._redis is not None and self._owns_redis:
            self._redis.close()
        self.app.close()
