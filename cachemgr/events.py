"""The events stream (`cache:events`): evictions, expiries, removals, failed cleanups. The
scripts append theirs in Lua (journal._EVENT); these are Python's, and the readers."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from cachemgr.store import Store


def add(store: Store, fields: dict[str, Any], pipeline: Any = None) -> Any:
    """One event, capped as the scripts cap theirs (exactly under 1000)."""
    cap = store.events_maxlen
    client = pipeline or store.client
    return client.xadd(store.keys.events, fields, maxlen=cap, approximate=cap >= 1000)


# The fields events carry as numbers and flags (a stream holds strings), typed on the way out:
# the API gave "size": "2101248" where every other answer gives numbers.
_COUNTS = frozenset(
    ("size", "usage_after", "pinned", "locked", "young", "undeletable", "disk_short", "carried")
)


def typed(ident: str, fields: dict[str, str]) -> dict[str, Any]:
    """One event with its stream id, its counts as ints, `time` (epoch seconds) a float and
    `files_deleted` a bool; a value that does not parse is kept as written."""
    event: dict[str, Any] = {"id": ident, **fields}
    for name, value in fields.items():
        if name in _COUNTS and value.lstrip("-").isdigit():
            event[name] = int(value)
        elif name == "time":
            with contextlib.suppress(ValueError):
                at = float(value)
                event[name] = at if math.isfinite(at) else value
        elif name == "files_deleted" and value in ("0", "1"):
            event[name] = value == "1"
    return event


def latest(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` events, newest first, each with its stream id."""
    items = store.client.xrevrange(store.keys.events, count=limit)
    return [typed(ident, fields) for ident, fields in items]


def follow(
    store: Store,
    after: str = "$",
    block_ms: int = 2000,
    away: Callable[[BaseException | None], None] | None = None,
    retry_seconds: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """Events appended after the id `after` ('$': from now on), as they come; never ends.
    Each wait is shorter than an interactive client's reply timeout (connection.py: 5 s).
    Redis away (a restart) is waited out, from the last event seen: `away(exc)` is told when
    it goes, `away(None)` when it answers again (it ended the follow, at the first blip)."""
    gone = False
    while True:
        try:
            found = store.client.xread({store.keys.events: after}, block=block_ms) or []
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not gone and away is not None:
                away(exc)
            gone = True
            time.sleep(retry_seconds)
            continue
        if gone and away is not None:
            away(None)
        gone = False
        for _, items in found:
            for ident, fields in items:
                after = ident
                yield typed(ident, fields)
