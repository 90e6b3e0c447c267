"""Reference models of the eviction policies, in plain Python (no Redis).

Each model replays requests with the same process as the real system: a hit updates the
policy; a miss registers the object; then, when the total passes threshold x capacity, entries
are evicted in policy order until the total is at most target x capacity. The simulator uses
threshold = target = 1.0, the classic cache. The Lua in policies.py / policy_lua*.py makes the
same decisions (tests/test_policies.py replays random traces through both).

Keys may be any hashable that orders consistently; ties in priority orders are broken by the
key, as a Redis sorted set breaks them by member (GDSF and s3fifo-a's main break them by update
order, as the Lua does with a sequence prefix on the member and as libCacheSim does).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

Key = Any  # str in the parity test (Redis members), int in the simulator


class Model:
    """One cache: `request(key, size)` returns True for a hit."""

    name = "base"

    def __init__(
        self,
        capacity: int,
        *,
        threshold: float = 1.0,
        target: float = 1.0,
        record_evictions: bool = False,
        admit_larger: bool = True,
    ) -> None:
        self.capacity = capacity
        # The real cache must track whatever was downloaded; a simulated one, like libCacheSim,
        # lets an object bigger than the whole cache pass without flushing the cache for it.
        self.admit_larger = admit_larger
        self.high = int(capacity * threshold)
        self.low = int(capacity * target)
        self.sizes: dict[Key, int] = {}
        self.total = 0
        self.clock: float = 0
        self.evicted: list[Key] | None = [] if record_evictions else None

    # -- the process shared by every policy -----------------------------------------------
    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        # As Redis gets a time (now_str: to the microsecond); a numpy int32 would overflow.
        self.clock = self.clock + 1 if now is None else float(f"{float(now):.6f}")
        if key in self.sizes:
            self._hit(key)
            return True
        if size > self.capacity and not self.admit_larger:
            return False
        self.sizes[key] = size
        self._insert(key, size)
        self.total += size
        if self.total > self.high:
            self.evict_down_to(self.low)
        return False

    def evict_down_to(self, low: int) -> None:
        sizes, evicted = self.sizes, self.evicted
        while self.total > low and sizes:
            victim = self._evict()
            self.total -= sizes.pop(victim)
            if evicted is not None:
                evicted.append(victim)

    # -- what a policy defines -------------------------------------------------------------
    def _hit(self, key: Key) -> None:
        raise NotImplementedError

    def _insert(self, key: Key, size: int) -> None:
        raise NotImplementedError

    def _evict(self) -> Key:
        """Take the next victim off the policy's structures and return it."""
        raise NotImplementedError


class LRU(Model):
    name = "lru"

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.order: OrderedDict[Key, None] = OrderedDict()

    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        # Inlined: LRU is the baseline every trace replays, so it is the hot path.
        order = self.order
        if key in order:
            order.move_to_end(key)
            return True
        if size > self.capacity and not self.admit_larger:
            return False
        order[key] = None
        self.sizes[key] = size
        self.total += size
        if self.total > self.high:
            self.evict_down_to(self.low)
        return False

    def _hit(self, key: Key) -> None:
        self.order.move_to_end(key)

    def _insert(self, key: Key, size: int) -> None:
        self.order[key] = None

    def _evict(self) -> Key:
        return self.order.popitem(last=False)[0]


class FIFO(LRU):
    name = "fifo"

    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        if key in self.order:
            return True
        if size > self.capacity and not self.admit_larger:
            return False
        self.order[key] = None
        self.sizes[key] = size
        self.total += size
        if self.total > self.high:
            self.evict_down_to(self.low)
        return False

    def _hit(self, key: Key) -> None:
        pass


class _LazyHeap(Model):
    """A priority order in a heap with lazy deletion, lowest first, for policies that count
    requests. Entries are (priority, tie, key, seq), tie being the key or, where equal
    priorities go by update order, the seq. `live` maps a key to the seq of its one live
    entry; older entries for it are stale: a hit pushes anew rather than reorder the heap.
    Inlined rather than split into _hit/_insert/_evict: the simulator replays millions."""

    first_count = 0  # a key's count at its first request
    ties_by_update = False

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.counts: dict[Key, int] = {}
        self.heap: list[tuple[Any, ...]] = []
        self.live: dict[Key, int] = {}
        self.seq = 0
        self.L = 0.0  # the priority of the last victim

    def _priority(self, count: int, size: int, now: float | None) -> float:
        raise NotImplementedError

    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        counts = self.counts
        n = counts.get(key)
        if n is not None:
            counts[key] = n = n + 1
            size = self.sizes[key]
        elif size > self.capacity and not self.admit_larger:
            return False
        else:
            counts[key] = n = self.first_count
            self.sizes[key] = size
            self.total += size
        priority = self._priority(n, size, now)
        self.seq = seq = self.seq + 1
        live, heap = self.live, self.heap
        live[key] = seq
        heappush(heap, (priority, seq if self.ties_by_update else key, key, seq))
        if len(heap) > 4 * len(live) + 1024:
            self.heap = [e for e in heap if live.get(e[2]) == e[3]]
            heapq.heapify(self.heap)
        if n > self.first_count:
            return True
        if self.total > self.high:
            self.evict_down_to(self.low)
        return False

    def evict_down_to(self, low: int) -> None:
        heap, live, counts, sizes = self.heap, self.live, self.counts, self.sizes
        evicted = self.evicted
        total, L = self.total, self.L
        while total > low and sizes:
            priority, _, key, seq = heappop(heap)
            if live.get(key) != seq:
                continue
            del live[key], counts[key]
            if priority > L:
                L = priority
            total -= sizes.pop(key)
            if evicted is not None:
                evicted.append(key)
        self.total, self.L = total, L


class LFU(_LazyHeap):
    """Fewest hits first, ties by least recent access, then by key: one score, hits x 2^32 +
    the time, as the Redis sorted set keeps it (a double)."""

    name = "lfu"

    def _priority(self, count: int, size: int, now: float | None) -> float:
        self.clock = self.clock + 1 if now is None else float(f"{float(now):.6f}")
        return float(count * 4294967296 + self.clock)


class GDSF(_LazyHeap):
    """Greedy-Dual-Size-Frequency: priority L + frequency x cost / size, lowest first, equal
    priorities by update order.

    L is the priority of the last victim, so entries that stop being used age out. With cost 1
    (scaled by 1e6, as libCacheSim does) small objects are favoured: good for the object miss
    ratio. With cost = size the priority is L + frequency: LFU with aging, for the byte ratio.
    """

    name = "gdsf"
    first_count = 1
    ties_by_update = True
    cost_is_size = False

    def _priority(self, count: int, size: int, now: float | None) -> float:
        if self.cost_is_size:
            return self.L + count
        return self.L + count * 1.0e6 / (size if size > 0 else 1)


class GDSFBytes(GDSF):
    name = "gdsf-bytes"
    cost_is_size = True


class SIEVE(Model):
    """A FIFO queue with a visited bit and a hand that walks from the oldest to the newest.

    A hit sets the bit. To evict, the hand clears set bits as it passes and takes the first
    entry whose bit is clear; it then rests on the next newer entry (or, past the newest,
    starts again from the oldest). Entries never move.
    """

    name = "sieve"

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.newer: dict[Key, Key | None] = {}
        self.older: dict[Key, Key | None] = {}
        self.visited: dict[Key, bool] = {}
        self.head: Key | None = None  # newest
        self.tail: Key | None = None  # oldest
        self.hand: Key | None = None

    def _hit(self, key: Key) -> None:
        self.visited[key] = True

    def _insert(self, key: Key, size: int) -> None:
        self.visited[key] = False
        self.older[key] = self.head
        self.newer[key] = None
        if self.head is not None:
            self.newer[self.head] = key
        else:
            self.tail = key
        self.head = key

    def _evict(self) -> Key:
        visited, newer = self.visited, self.newer
        h = self.hand if self.hand is not None else self.tail
        while visited[h]:
            visited[h] = False
            h = newer[h]
            if h is None:
                h = self.tail
        self.hand = newer[h]
        self._unlink(h)
        return h

    def _unlink(self, key: Key) -> None:
        o, n = self.older.pop(key), self.newer.pop(key)
        del self.visited[key]
        if o is not None:
            self.newer[o] = n
        else:
            self.tail = n
        if n is not None:
            self.older[n] = o
        else:
            self.head = o


MODELS: dict[str, Callable[..., Model]] = {}


def register_model(*models: type[Model]) -> None:
    """Add models to the registry, in order (models_s3fifo.py adds its own)."""
    for m in models:
        MODELS[m.name] = m


register_model(LRU, FIFO, LFU, SIEVE)
# The queue-and-ghost family (S3-FIFO, its variants, 2Q) subclasses Model, so it lives in
# models_s3fifo.py and registers itself: here, when this module is imported first; at its own
# end, when it is (this import is then a no-op and the family comes after gdsf).
import cachemgr.models_s3fifo  # noqa: E402, F401

register_model(GDSF, GDSFBytes)


def make_model(name: str, capacity: int, **kw: Any) -> Model:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"no model of policy {name!r} (known: {', '.join(MODELS)})") from None
    return factory(capacity, **kw)


__all__ = ["MODELS", "Model", "make_model", "register_model"]
