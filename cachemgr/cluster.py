"""The cluster's stats: every node's, read in two round trips at most, and their totals."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cachemgr import stats
from cachemgr.connection import same_server
from cachemgr.errors import CacheError
from cachemgr.reads import Batch, Reader, run
from cachemgr.stats import COUNTERS, ratio

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

# What the cluster's totals add up over its nodes.
SUMMED = (
    "total_bytes directory_count max_bytes threshold_bytes target_bytes "
    + " ".join(COUNTERS)
    + " pinned_count"
).split()
_summed = operator.itemgetter(*SUMMED)  # one node's, in that order, read in one call
# The cluster's totals: the sums, and what is worked out from them as a node works out its own.
TOTALS = (*SUMMED, "usage_percent", "quota_status", "hit_ratio", "byte_hit_ratio")
_totals = operator.itemgetter(*TOTALS)


def cluster_stats(cache: DiskCache) -> dict[str, Any]:
    """Every node's stats, each with up/down and the age of its last cleanup, and totals.

    A single node's are read in one call to Redis (the registry with them, unless a Redis
    Cluster keeps it on another shard); other nodes' in one more round trip."""
    registry, own = cache.registry, cache.settings.node
    registry_key = registry.nodes_key if same_server(cache.client) else None

    def own_reads(batch: Batch) -> Reader[tuple[dict[str, Any], dict[str, Any]]]:
        read_entries = None if registry_key else registry.queue_entries(batch)
        read_snap = stats.queue_snapshot(cache.store, batch, registry_key)

        def read(replies: Iterator[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            entries = read_entries(replies) if read_entries else None
            snap = read_snap(replies)
            return (snap["registry"] if entries is None else entries), snap

        return read

    entries, own_snap = run(cache.client, own_reads)
    # After the first read: a Redis that refuses it (a database it lacks) is said by that
    # read's error alone, not first by the clock's warning.
    now = cache.clock()
    own_snap["registry"] = entries
    # An entry with this node's key prefix is this node's books under another name: an
    # unnamed node's workers publish their own host name (another container's, or an
    # earlier one's), and counting it apart would double every total.
    books = cache.keys.prefix
    others = [n for n, e in entries.items() if n != own and e.get("key_prefix") != books]
    caches, unreadable = {}, []
    for name in sorted(others):
        try:
            caches[name] = cache.for_node(name, entries)
        except (CacheError, KeyError, TypeError, ValueError) as exc:
            # One node's bad or older entry must not cost every node's stats, metrics, page.
            unreadable.append(f"node {name}: its published settings cannot be read ({exc})")
    snaps = {own: own_snap}

    def other_reads(batch: Batch) -> Reader[dict[str, dict[str, Any]]]:
        queued = {name: stats.queue_snapshot(c.store, batch) for name, c in caches.items()}
        return lambda replies: {name: read(replies) for name, read in queued.items()}

    if caches:
        snaps.update(run(cache.client, other_reads))
        for name in caches:  # when their workers published: an overdue beat counts from then
            snaps[name]["registry"] = entries
    caches[own] = cache
    nodes = []
    for name in sorted(caches):
        found = stats.node_stats(caches[name], snaps[name])
        last = (found.get("last_cleanup") or {}).get("time")
        found["last_cleanup_age_seconds"] = round(now - last, 1) if last is not None else None
        nodes.append(found)
    mine = next(n for n in nodes if n["node"] == own)
    # What is wrong on another node is said here too: one API (and its page) watches them all.
    elsewhere = [f"node {n['node']}: {w}" for n in nodes if n is not mine for w in n["warnings"]]
    return {
        **mine,
        "warnings": mine["warnings"] + elsewhere + unreadable,
        "cluster": aggregate(nodes),
        "nodes": nodes,
    }


def aggregate(per_node: list[dict[str, Any]]) -> dict[str, Any]:
    """Cluster totals: sums of bytes, counts and counters; the worst quota status."""
    if len(per_node) == 1:  # one node (most deployments): its totals are its own figures
        return dict(zip(TOTALS, _totals(per_node[0]), strict=True))
    return summed(per_node)


def summed(per_node: list[dict[str, Any]]) -> dict[str, Any]:
    """`aggregate` worked out over any number of nodes."""
    columns = zip(*map(_summed, per_node), strict=True)  # every node_stats has each
    total: dict[str, Any] = dict(zip(SUMMED, map(sum, columns), strict=True))
    total["usage_percent"] = (
        round(100.0 * total["total_bytes"] / total["max_bytes"], 2) if total["max_bytes"] else 0.0
    )
    order = ["ok", "evicting", "over_quota"]
    total["quota_status"] = max((s["quota_status"] for s in per_node), key=order.index)
    total["hit_ratio"] = ratio(total["hits"], total["misses"])
    total["byte_hit_ratio"] = stats.byte_ratio(total)
    return total
