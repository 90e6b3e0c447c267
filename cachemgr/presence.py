"""A worker's presence: the node it announces (its settings, the queue it reads) and the beats
that keep the node shown alive, announced again when the books were emptied under it.

The adapter (workers/app.py) runs the beats in a thread; this says what one beat does."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from cachemgr import migrations
from cachemgr.records import RECORD_FORMAT

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr.workers")


def announce(
    cache: DiskCache, worker: str, queue: str, broker: str = "", flushed: bool = False
) -> bool:
    """Publish the node (its settings, the queue it reads on `broker`: connection.broker_id),
    bring older books up to date and say it is alive; False while Redis cannot be reached.
    `flushed`: the books were emptied while this worker ran, so whatever they hold now is in
    this version's layout."""
    try:
        cache.publish_config(queue=queue, worker=worker, broker=broker)
        if flushed:  # marked, not walked: a steady-state worker never scans the books
            cache.client.set(cache.keys.format, RECORD_FORMAT, nx=True)
        else:
            migrations.ensure_record_ids(cache.store)  # older books: before any task runs
        migrations.ensure_pin_index(cache.store)
        cache.registry.heartbeat(cache.keys, worker, settings=cache.settings)
    except Exception as exc:  # Redis away: tried again at each heartbeat until it is back
        log.error("worker cannot announce node %s yet: %s", cache.settings.node, exc)
        return False
    log.info("serving node %s (root %s)", cache.settings.node, cache.root)
    if not cache.settings.enable_disk_cache_management:
        log.warning(
            "ENABLE_DISK_CACHE_MANAGEMENT is false: this worker registers, cleans and evicts "
            "nothing (every task answers 'disabled'); set it true to manage the cache"
        )
    return True


def beat(cache: DiskCache, worker: str, queue: str, announced: bool, broker: str = "") -> bool:
    """One beat: announce the node until that works, then say it is alive; whether the node
    stands announced after it."""
    if not announced:
        return announce(cache, worker, queue, broker)
    try:
        published = cache.registry.heartbeat(
            cache.keys, worker, node=cache.settings.node, settings=cache.settings
        )
        gone = published and cache.registry.publisher_gone(cache.keys, worker)
    except Exception as exc:  # Redis away: the node shows down until it is back
        log.warning("node heartbeat failed: %s", exc)
        return True
    if gone:  # the settings standing were a stopped worker's: this one's stand now
        with contextlib.suppress(Exception):  # tried again at the next beat
            cache.publish_config(queue=queue, worker=worker, broker=broker)
            log.info("node %s: published this worker's settings (the publisher stopped)",
                     cache.settings.node)  # fmt: skip
    if published:
        if not cache.settings.disk_cache_node:  # named after its host: hosts come and go
            with contextlib.suppress(Exception):  # tried again at the next beat
                for node in cache.registry.drop_departed(cache.settings, cache.keys):
                    log.info("node %s: dropped from the registry (no worker there)", node)
        return True
    # The books were flushed (FLUSHALL, a restart without persistence): the node's entry and
    # config went with them, and clients route by them.
    log.warning("node %s was no longer published: announcing it again", cache.settings.node)
    return announce(cache, worker, queue, broker, flushed=True)


def leave(cache: DiskCache, worker: str) -> None:
    """Mark the node down as this worker stops (the others of it keep it up)."""
    try:
        cache.registry.mark_down(cache.keys, worker)
    except Exception as exc:
        log.warning("could not mark node down: %s", exc)
