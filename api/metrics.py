"""`GET /metrics`: the cache's figures for Prometheus, read from Redis at scrape time.

Every number comes from the books in Redis (the same `DiskCache.stats()` that `/cache/stats`
answers), none from process memory: under several gunicorn workers, each answering a scrape in
turn, the counters never go backwards and never split between processes. So a custom Collector,
not prometheus-client's Counter objects (those count what one process did), and a registry of
its own, without the default process/platform collectors, whose values would change with
whichever worker happened to answer.

If Redis cannot be reached the scrape still succeeds, with `cachemgr_up 0` and nothing else, so
that an alert can tell "Redis is down" from "the API is down".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from api.arguments import query
from api.errors import redis_unavailable
from api.extensions import cache
from api.schemas import NodeArgs
from cachemgr import DiskCache, history

log = logging.getLogger("cachemgr.api")

bp = Blueprint("metrics", __name__)

# (metric name without _total, stats field, help)
COUNTERS = (
    ("cachemgr_hits", "hits", "Accesses that found their directory in the cache."),
    ("cachemgr_misses", "misses", "Accesses that did not find their directory in the cache."),
    ("cachemgr_hit_bytes", "hit_bytes", "Bytes served from the cache (size of each hit)."),
    ("cachemgr_missed_bytes", "missed_bytes", "Bytes that misses had to fetch, when reported."),
    ("cachemgr_unsized_misses", "unsized_misses", "Misses reported without their size."),
    ("cachemgr_registrations", "registrations", "Directories registered (or re-registered)."),
    ("cachemgr_freed_bytes", "bytes_freed", "Bytes whose files were deleted from the disk."),
)
# The removal counters share one family, told apart by the reason the CLAIM script records.
REMOVALS = (
    ("evicted", "evictions"),
    ("expired", "expirations"),
    ("removed", "removals"),
    ("vanished", "vanished"),
)
SKIPS = (("locked", "skipped_locked"), ("pinned", "skipped_pinned"))
NODE = ["node"]
# What the last cleanup counted (cache:last_cleanup), as gauges: name, field, help.
LAST_CLEANUP_COUNTS = (
    (
        "cachemgr_untracked_directories",
        "untracked",
        "Directories at the entry depth not on the books, as beat's last cleanup found them "
        "(lost registrations: their bytes are not counted; reconcile books them).",
    ),
    (
        "cachemgr_stray_files",
        "stray_files",
        "Files at or above the entry depth outside every download directory, as beat's last "
        "cleanup found them (never counted nor deleted).",
    ),
    ("cachemgr_stray_bytes", "stray_bytes", "Bytes those stray files hold."),
    (
        "cachemgr_unlisted_directories",
        "unlisted",
        "Directories above the entry depth that beat's last cleanup could not list (the "
        "downloads inside are neither counted nor cleaned).",
    ),
    (
        "cachemgr_unnamable_directories",
        "unnamable",
        "Directories whose names are not UTF-8, which cannot be booked (beat's last).",
    ),
    (
        "cachemgr_unowned_directories",
        "unowned",
        "Directories holding a .cachemgr-books marker that names no node of the cluster "
        "(counted and cleaned by no cache; beat's last).",
    ),
    (
        "cachemgr_delete_failed_directories",
        "delete_failed",
        "Directories the last cleanup chose and could not delete (kept on the books).",
    ),
)


class CacheCollector(Collector):
    """`cluster_wide`: with every node's cachemgr_node_up (the scrape without ?node=; one
    scraped once per node would give those series once per target)."""

    def __init__(self, disk_cache: DiskCache, cluster_wide: bool = True) -> None:
        self.cache, self.cluster_wide = disk_cache, cluster_wide

    def collect(self) -> Iterator[Metric]:
        # A named node's figures carry its name, so that one API scraped once per node
        # (`?node=NAME`) gives series that do not collide; a lone unnamed node's stay as they
        # were, without a label.
        name = self.cache.settings.disk_cache_node
        node = [label_value(name)] if name else []
        up = GaugeMetricFamily(
            "cachemgr_up", "1 if Redis answered this scrape, else 0.", labels=NODE[: len(node)]
        )
        try:
            stats = self.cache.cluster_stats()  # this node's, and whether every node is up
            samples = self._history()
            interval = int(stats["cleanup_interval_seconds"])  # the workers'
        except redis.RedisError as exc:
            if not redis_unavailable(exc):
                raise
            log.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric(node, 0)
            yield up
            return
        up.add_metric(node, 1)
        yield up
        yield from self._info(stats)
        yield from self._gauges(stats, samples, interval, node)
        if self.cluster_wide:
            yield from self._nodes(stats)
        yield from self._counters(stats, node)

    def _nodes(self, stats: dict[str, Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "cachemgr_node_up",
            "1 while a worker of the node sends heartbeats, 0 when none does: every node "
            "in the registry, so that one scraped API watches them all.",
            labels=["node"],
        )
        for node in stats.get("nodes", []):
            g.add_metric([label_value(node["node"])], float(bool(node.get("up"))))
        yield g

    def _history(self) -> list[dict[str, Any]]:
        """Newest first, as over_threshold_since reads them."""
        return list(reversed(history.samples(self.cache)))

    def _info(self, stats: dict[str, Any]) -> Iterator[Metric]:
        info = InfoMetricFamily("cachemgr_cache", "The node this API serves and its policy.")
        info.add_metric(
            [],
            {
                "node": label_value(stats["node"]),
                "eviction_policy": label_value(stats["eviction_policy"]),
                "root": label_value(self.cache.root),
            },
        )
        yield info

    def _gauges(
        self, stats: dict[str, Any], samples: list[dict[str, Any]], interval: int, node: list[str]
    ) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float | None) -> Metric | None:
            if value is None:
                return None
            g = GaugeMetricFamily(name, doc, labels=NODE[: len(node)])
            g.add_metric(node, float(value))
            return g

        last = stats.get("last_cleanup") or {}
        since = history.over_threshold_since(
            samples, stats["total_bytes"], stats["threshold_bytes"]
        )
        found = [
            gauge("cachemgr_enabled", "1 if cache management is enabled.", stats["enabled"]),
            gauge(
                "cachemgr_usage_bytes", "Bytes of all tracked directories.", stats["total_bytes"]
            ),
            gauge("cachemgr_directories", "Tracked directories.", stats["directory_count"]),
            gauge("cachemgr_max_bytes", "The quota (DISK_CACHE_MAX_BYTES).", stats["max_bytes"]),
            gauge(
                "cachemgr_threshold_bytes",
                "Usage above which eviction starts (threshold x max).",
                stats["threshold_bytes"],
            ),
            gauge(
                "cachemgr_target_bytes",
                "Usage eviction brings the cache down to (target x max).",
                stats["target_bytes"],
            ),
            gauge(
                "cachemgr_usage_ratio",
                "Usage as a fraction of the quota (1 = full).",
                stats["total_bytes"] / stats["max_bytes"],
            ),
            gauge(
                "cachemgr_pinned_directories",
                "Paths with a live lease that keeps them from eviction and expiry (a pin made "
                "ahead of its download included).",
                stats["pinned_count"],
            ),
            gauge(
                "cachemgr_free_disk_bytes",
                "Free bytes on the file system of the cache root.",
                stats.get("free_disk_bytes"),
            ),
            gauge(
                "cachemgr_free_inodes",
                "Free inodes on the file system of the cache root (absent where it has no "
                "fixed number): none left, no file can be written.",
                stats.get("free_inodes"),
            ),
            gauge(
                "cachemgr_min_free_bytes",
                "DISK_CACHE_MIN_FREE_BYTES of the node's workers (0: no floor).",
                stats.get("min_free_bytes") or 0,
            ),
            gauge(
                "cachemgr_scheduler_running",
                "1 if periodic cleanups run, 0 if the scheduler switch is stopped.",
                stats["scheduler_running"],
            ),
            gauge(
                "cachemgr_initialized",
                "1 once the books match the disk; 0 after Redis lost them.",
                stats["initialized"],
            ),
            gauge(
                "cachemgr_cleanup_interval_seconds",
                "DISK_CACHE_CLEANUP_INTERVAL as the node's workers published it.",
                interval,
            ),
            gauge(
                "cachemgr_last_cleanup_timestamp_seconds",
                "When the last cleanup started (Unix time).",
                last.get("time"),
            ),
            gauge(
                "cachemgr_last_periodic_cleanup_timestamp_seconds",
                "When beat's last cleanup started (Unix time); quota passes that registrations "
                "trigger do not count.",
                last.get("periodic_time"),
            ),
            gauge(
                "cachemgr_periodic_overdue",
                "1 when beat's cleanups are late: none for two intervals since the last one, "
                "the workers' start or the scheduler's start (the stats' warning, the page).",
                stats.get("periodic_overdue"),
            ),
            gauge(
                "cachemgr_beat_up",
                "1 while a celery beat says it sends this node's periodic cleanups (within "
                "90 s), 0 when none does.",
                stats.get("beat_alive"),
            ),
            gauge(
                "cachemgr_worker_up",
                "1 while a worker of this node sends heartbeats, 0 when none does.",
                stats.get("up"),
            ),
            gauge(
                "cachemgr_last_cleanup_duration_seconds",
                "How long the last cleanup took.",
                last.get("duration_seconds"),
            ),
            gauge(
                "cachemgr_last_cleanup_success",
                "1 if the last cleanup finished, 0 if it failed.",
                None if not last else float(last.get("status") != "failed"),
            ),
            *(gauge(name, doc, last.get(field)) for name, field, doc in LAST_CLEANUP_COUNTS),
            gauge(
                "cachemgr_over_threshold_since_timestamp_seconds",
                "Usage is above the threshold now, and was at the end of every cleanup since "
                "this time (Unix time), as far back as the last 288 cleanups go (quota passes "
                "included: a few hours under steady registrations); absent while usage is at "
                "or below the threshold.",
                since,
            ),
        ]
        yield from (g for g in found if g is not None)

    def _counters(self, stats: dict[str, Any], node: list[str]) -> Iterator[Metric]:
        labels = NODE[: len(node)]
        for name, field, doc in COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(node, float(stats[field]))
            yield c
        removed = CounterMetricFamily(
            "cachemgr_directories_removed",
            "Directories taken off the books: evicted (quota), expired (TTL), removed (asked), "
            "vanished (found gone from disk: nothing freed).",
            labels=[*labels, "reason"],
        )
        for reason, field in REMOVALS:
            removed.add_metric([*node, reason], float(stats[field]))
        yield removed
        skipped = CounterMetricFamily(
            "cachemgr_skipped",
            "Directories a cleanup or removal left alone: locked by another worker, or pinned.",
            labels=[*labels, "reason"],
        )
        for reason, field in SKIPS:
            skipped.add_metric([*node, reason], float(stats[field]))
        yield skipped


def label_value(value: Any) -> str:
    """A label value that encodes as UTF-8. Python keeps an undecodable byte of a file name or
    an environment variable as a lone surrogate, which no exposition can encode (the whole
    scrape would fail); such a byte is written out as a backslash escape (`x` and two hex
    digits), so that two roots still read apart."""
    name = value if isinstance(value, str | bytes | os.PathLike) else str(value)
    try:
        raw = os.fsencode(name)  # back to the bytes the name was decoded from
    except UnicodeEncodeError:  # a surrogate that no file name decoded to
        raw = str(name).encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def registry_for(disk_cache: DiskCache, cluster_wide: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(disk_cache, cluster_wide))
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, or OpenMetrics when the scraper asks for it; `?node=NAME` for
    another node's figures, as every endpoint takes it."""
    node = query(NodeArgs)["node"]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Every node's liveness with the API's own node's figures, ?node= naming it or not: a
    # job that scrapes each node by name, its own included (as deploy/README once said),
    # still has cachemgr_node_up, and CacheWorkerDown.
    own = node is None or node == cache().settings.node
    registry = registry_for(cache().for_node(node), cluster_wide=own)
    return Response(encoder(registry), content_type=content_type)
