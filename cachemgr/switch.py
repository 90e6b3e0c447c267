"""ENABLE_DISK_CACHE_MANAGEMENT: off, every operation that would change the books or the disk
does nothing and says so, whoever asks (a task, the CLI's --now, a cleanup)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

# What such an operation answers.
DISABLED: dict[str, str] = {"status": "disabled"}

Operation = TypeVar("Operation", bound=Callable[..., dict[str, Any]])


def disabled(operation: str) -> dict[str, str]:
    """What an operation answers when off, said in the log: Celery logs the task's answer at
    INFO, and an operator reading the log saw only success."""
    log.warning(
        "%s did nothing: ENABLE_DISK_CACHE_MANAGEMENT is false",
        operation,
        extra={"event": "disabled"},
    )
    return dict(DISABLED)


def switched(operation: Operation) -> Operation:
    """Off (ENABLE_DISK_CACHE_MANAGEMENT false): the operation does nothing and says so."""

    @functools.wraps(operation)
    def run(cache: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not cache.settings.enable_disk_cache_management:
            return disabled(operation.__name__)
        return operation(cache, *args, **kwargs)

    return run  # type: ignore[return-value]


def disabled_where(cache: DiskCache) -> str | None:
    """Where ENABLE_DISK_CACHE_MANAGEMENT is false, if it is: on the node's workers (whose
    switch the tasks obey, once they published it), else in this process; None when on."""
    entry = cache.published_entry()
    if "enabled" in entry:  # theirs decides: the API's own switch changes nothing they do
        on = entry["enabled"] or some_worker_on(cache.registry.live_workers(cache.keys))
        return None if on else "on the node's workers"
    return None if cache.settings.enable_disk_cache_management else "in this process"


def some_worker_on(live: dict[str, dict[str, Any]]) -> bool:
    """Whether a live worker (NodeRegistry.live_workers) manages the cache, whatever the one
    that published last said: in a rolling restart that turns it off, the node is not off
    while one still manages it (its tasks are done), and "nothing is registered" was false."""
    return any(entry.get("enabled") for entry in live.values())
