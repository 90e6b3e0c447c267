"""Reference models of the eviction policies, in plain Python (no Redis).

Each model replays requests with the same process as the real system: a hit updates the
policy; a miss registers the object; then, when the total passes threshold x capacity, entries
are evicted in policy order until the total is at most target x capacity. The simulator uses
threshold = target = 1.0, the classic cache. The Lua in policies.py / policy_lua.py makes the
same decisions (tests/test_policies.py replays random traces through both).

Keys may be any hashable that orders consistently; ties in priority orders are broken by the
key, as a Redis sorted set breaks them by member (GDSF breaks them by update order, as the Lua
does with a sequence prefix on the member and as libCacheSim does).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
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
        self.clock = 0
        self.evicted: list[Key] | None = [] if record_evictions else None

    # -- the process shared by every policy -----------------------------------------------
    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        self.clock = self.clock + 1 if now is None else int(now)
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


class _Heap(Model):
    """A priority order with lazy deletion: (priority..., key, version) tuples."""

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.heap: list[tuple[Any, ...]] = []
        self.version: dict[Key, int] = {}

    def _push(self, key: Key, *priority: Any) -> None:
        v = self.version.get(key, 0) + 1
        self.version[key] = v
        heap = self.heap
        heapq.heappush(heap, (*priority, key, v))
        if len(heap) > 4 * len(self.version) + 1024:
            # Stale entries outnumber live ones: drop them, so pops stay cheap.
            version = self.version
            self.heap = [item for item in heap if version.get(item[-2]) == item[-1]]
            heapq.heapify(self.heap)

    def _pop(self) -> tuple[Any, ...]:
        heap, version = self.heap, self.version
        while True:
            item = heapq.heappop(heap)
            if version.get(item[-2]) == item[-1]:
                del version[item[-2]]
                return item


class LFU(_Heap):
    """Fewest hits first, ties by least recent access (whole seconds), then by key."""

    name = "lfu"

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.hits: dict[Key, int] = {}

    def _hit(self, key: Key) -> None:
        h = self.hits[key] + 1
        self.hits[key] = h
        self._push(key, h, math.floor(self.clock))

    def _insert(self, key: Key, size: int) -> None:
        self.hits[key] = 0
        self._push(key, 0, math.floor(self.clock))

    def _evict(self) -> Key:
        key = self._pop()[-2]
        del self.hits[key]
        return key


class GDSF(_Heap):
    """Greedy-Dual-Size-Frequency: priority L + frequency x cost / size, lowest first.

    L is the priority of the last victim, so entries that stop being used age out. With cost 1
    (scaled by 1e6, as libCacheSim does) small objects are favoured: good for the object miss
    ratio. With cost = size the priority is L + frequency: LFU with aging, for the byte ratio.
    """

    name = "gdsf"
    cost_is_size = False

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.freq: dict[Key, int] = {}
        self.pri: dict[Key, float] = {}
        self.L = 0.0
        self.seq = 0  # equal priorities: oldest update first

    def _push_priority(self, key: Key, p: float) -> None:
        self.seq += 1
        self.pri[key] = p
        self._push(key, p, self.seq)

    def _priority(self, freq: int, size: int) -> float:
        size = max(size, 1)
        cost = float(size) if self.cost_is_size else 1.0e6
        return self.L + freq * cost / size

    def _hit(self, key: Key) -> None:
        f = self.freq[key] + 1
        self.freq[key] = f
        self._push_priority(key, self._priority(f, self.sizes[key]))

    def _insert(self, key: Key, size: int) -> None:
        self.freq[key] = 1
        self._push_priority(key, self._priority(1, size))

    def _evict(self) -> Key:
        p, _, key, _ = self._pop()
        self.L = max(self.L, p)
        del self.freq[key], self.pri[key]
        return key


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


class _Ghost(Model):
    """A byte-bounded FIFO of evicted keys, shared by S3-FIFO and 2Q."""

    ghost_share = (1, 2)  # the ghost keeps at most this share of the bytes held

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.ghost: OrderedDict[Key, int] = OrderedDict()
        self.gb = 0

    def _recalled(self, key: Key) -> bool:
        """True (and forgotten) when the key was evicted not long ago."""
        gsize = self.ghost.pop(key, None)
        if gsize is None:
            return False
        self.gb -= gsize
        return True

    def _remember(self, key: Key, size: int, held: int) -> None:
        gn, gd = self.ghost_share
        if gd * size > gn * held:
            return
        ghost = self.ghost
        while ghost and gd * (self.gb + size) > gn * held:
            self.gb -= ghost.popitem(last=False)[1]
        ghost[key] = size
        self.gb += size


class S3FIFO(_Ghost):
    """S3-FIFO (SOSP'23): a small FIFO (10%), a main FIFO with a 2-bit clock, and a ghost.

    New objects enter the small queue, or the main one when their key is in the ghost. The small
    queue's head moves to main if it was hit at least twice, else it is evicted and remembered in
    the ghost (90% of the cache, in bytes). Main's head is reinserted with its counter decreased
    while the counter is positive. The shares are of the bytes the cache holds at the time,
    since the books in Redis know no capacity (_settle explains the warm-up); comparisons stay
    in integers so that Lua and Python decide alike.
    """

    name = "s3fifo"
    # Shares as (numerator, denominator), so both languages compare integers.
    small_share = (1, 10)
    ghost_share = (9, 10)
    promote_at = 2  # hits in the small queue that earn a place in main
    freq_cap = 3  # main's clock counter saturates here (2 bits)

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.small: OrderedDict[Key, None] = OrderedDict()
        self.main: OrderedDict[Key, None] = OrderedDict()
        self.freq: dict[Key, int] = {}
        self.sb = self.mb = 0
        self.has_evicted = False

    def _hit(self, key: Key) -> None:
        self.freq[key] += 1

    def _insert(self, key: Key, size: int) -> None:
        self.freq[key] = 0
        if self._recalled(key):
            self.main[key] = None
            self.mb += size
        else:
            self.small[key] = None
            self.sb += size

    def _settle(self) -> None:
        """The first eviction ends the warm-up, in which every new entry waited in the small
        queue: as if the small queue had filled first, its oldest entries up to its share of
        the bytes stay and the rest move to main in order (libCacheSim's S3-FIFO sends new
        objects to main once the small queue is full, before its first eviction)."""
        self.has_evicted = True
        sn, sd = self.small_share
        t = self.sb + self.mb
        acc, moved = 0, []
        for key in self.small:
            if sd * acc >= sn * t:
                moved.append(key)
            else:
                acc += self.sizes[key]
        for key in moved:
            del self.small[key]
            self.main[key] = None
        self.mb += self.sb - acc
        self.sb = acc

    def _evict(self) -> Key:
        if not self.has_evicted:
            self._settle()
        small, main, freq, sizes = self.small, self.main, self.freq, self.sizes
        sn, sd = self.small_share
        cap = self.freq_cap
        while True:
            t = self.sb + self.mb
            if self.sb == 0 or sd * self.sb < sn * t:
                while True:
                    key = next(iter(main))
                    f = freq[key]
                    if f >= 1:
                        main.move_to_end(key)
                        freq[key] = min(f, cap) - 1
                        continue
                    del main[key], freq[key]
                    self.mb -= sizes[key]
                    return key
            while self.sb > 0:
                key = next(iter(small))
                s = sizes[key]
                del small[key]
                self.sb -= s
                if freq[key] >= self.promote_at:
                    main[key] = None
                    freq[key] = 0
                    self.mb += s
                    continue
                del freq[key]
                self._remember(key, s, self.sb + self.mb)
                return key



class S3FIFOLargeGhost(S3FIFO):
    """S3-FIFO whose ghost remembers twice the bytes held (policies.S3FIFO_LG)."""

    name = "s3fifo-lg"
    ghost_share = (2, 1)


class TwoQ(_Ghost):
    """2Q (VLDB'94, as libCacheSim has it): new entries wait in a FIFO (Ain); one evicted from
    there is remembered in a ghost (Aout), and on its return goes to an LRU (Am). Ain is evicted
    while it holds more than a quarter of the bytes, else Am; the ghost keeps the newest half.
    Shares are of the bytes held, as for S3-FIFO."""

    name = "2q"

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.ain: OrderedDict[Key, None] = OrderedDict()
        self.am: OrderedDict[Key, None] = OrderedDict()
        self.ab = self.mb = 0

    def _hit(self, key: Key) -> None:
        if key in self.am:
            self.am.move_to_end(key)

    def _insert(self, key: Key, size: int) -> None:
        if self._recalled(key):
            self.am[key] = None
            self.mb += size
        else:
            self.ain[key] = None
            self.ab += size

    def _evict(self) -> Key:
        size = self.sizes
        if 4 * self.ab > self.ab + self.mb:
            key = self.ain.popitem(last=False)[0]
            self.ab -= size[key]
            self._remember(key, size[key], self.ab + self.mb)
            return key
        key = self.am.popitem(last=False)[0]
        self.mb -= size[key]
        return key


MODELS: dict[str, Callable[..., Model]] = {
    m.name: m for m in (LRU, FIFO, LFU, SIEVE, S3FIFO, S3FIFOLargeGhost, TwoQ, GDSF, GDSFBytes)
}


def make_model(name: str, capacity: int, **kw: Any) -> Model:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"no model of policy {name!r} (known: {', '.join(MODELS)})") from None
    return factory(capacity, **kw)


__all__ = ["MODELS", "Model", "make_model"]
