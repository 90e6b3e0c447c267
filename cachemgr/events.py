"""The events stream (`cache:events`): evictions, expiries, removals, failed cleanups. The
scripts append theirs in Lua (journal._EVENT); these are Python's, and the readers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachemgr.store import Store


def add(store: Store, fields: dict[str, Any], pipeline: Any = None) -> Any:
    """One event, capped as the scripts cap theirs (exactly under 1000)."""
    cap = store.events_maxlen
    client = pipeline or store.client
    return client.xadd(store.keys.events, fields, maxlen=cap, approximate=cap >= 1000)


def latest(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` events, newest first, each with its stream id."""
    items = store.client.xrevrange(store.keys.events, count=limit)
    return [{"id": ident, **fields} for ident, fields in items]


def follow(store: Store, after: str = "$", block_ms: int = 2000) -> Iterator[dict[str, Any]]:
    """Events appended after the id `after` ('$': from now on), as they come; never ends.
    Each wait is shorter than an interactive client's reply timeout (connection.py: 5 s)."""
    while True:
        for _, items in store.client.xread({store.keys.events: after}, block=block_ms) or []:
            for ident, fields in items:
                after = ident
                yield {"id": ident, **fields}
