"""The Celery app of the workers and beat: `celery -A workers.app worker|beat`."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_ready, worker_shutting_down

from cachemgr.logs import configure_logging

app = Celery("cachemgr", include=["workers.tasks"])
app.config_from_object("celeryconfig")

log = logging.getLogger("cachemgr.workers")
HEARTBEAT_SECONDS = 10
_stop = threading.Event()


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging to us: plain text, or JSON with DISK_CACHE_LOG_FORMAT=json."""
    configure_logging(level=loglevel)


def _beat_forever() -> None:
    from workers.tasks import current_cache

    while not _stop.wait(HEARTBEAT_SECONDS):
        cache = current_cache()
        if cache is not None:
            try:
                cache.registry.heartbeat(cache.keys)
            except Exception as exc:  # Redis away: the node shows down until it is back
                log.warning("node heartbeat failed: %s", exc)


@worker_ready.connect
def announce(**_: Any) -> None:
    """Say which node this worker serves, and keep saying it is alive."""
    from workers.tasks import get_cache

    try:
        cache = get_cache()
        cache.store.ensure_record_ids()  # books of an older cachemgr: before any task runs
        cache.registry.heartbeat(cache.keys)
    except Exception as exc:  # bad settings are reported by the tasks themselves, in one line
        log.error("worker cannot serve a node: %s", exc)
        return
    log.info("serving node %s (root %s)", cache.settings.node, cache.root)
    _stop.clear()
    threading.Thread(target=_beat_forever, name="cachemgr-heartbeat", daemon=True).start()


@worker_shutting_down.connect
def goodbye(**_: Any) -> None:
    from workers.tasks import current_cache

    _stop.set()
    cache = current_cache()
    if cache is not None:
        try:
            cache.registry.mark_down(cache.keys)
        except Exception as exc:
            log.warning("could not mark node down: %s", exc)
