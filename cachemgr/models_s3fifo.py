"""Reference models of the queue-and-ghost policies: S3-FIFO, its large-ghost and adaptive
variants, and 2Q. Split from models.py; they register themselves in models.MODELS.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from math import isqrt
from typing import Any

from cachemgr.models import Key, Model, register_model


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


def size_weight(size: int) -> int:
    """What one hit is worth in S3FIFOAdaptive's main order: 2^24 // size^(1/4), in integers
    (isqrt twice), so that Lua computes the same number."""
    return (1 << 24) // max(1, isqrt(isqrt(max(size, 1))))


class S3FIFOAdaptive(Model):
    """S3-FIFO with an adaptive small queue and a size-aware LFU-with-aging main queue.

    New objects wait in a small FIFO; one hit there earns a place in main when it reaches the
    head, else it is evicted. Main evicts the lowest P = L + min(freq, 15) x size_weight(size),
    ties by the oldest (re)scoring; L rises to each main victim's P (aging), and a hit in main
    scores the entry again from the current L. Small is evicted while it holds more than T
    bytes (or main is empty); T adapts like ARC's target: a returning victim of small
    (remembered in the ghost) adds its size, one of main takes 4x its size, and T stays within
    [1/20, 1/4] of the bytes held. The ghost remembers victims of both queues, up to twice the
    bytes held; a returning key enters main with frequency 1. Shares are of the bytes held, as
    for S3FIFO, and the warm-up settles the same way (T starts at a tenth); all integers.
    """

    name = "s3fifo-a"
    init_share = (1, 10)  # T at the first eviction
    lo_share = (1, 20)  # T is clamped to [lo, hi] x bytes held at each eviction step
    hi_share = (1, 4)
    ghost_share = (2, 1)
    step_main = 4  # T -= step_main x size on the return of a main victim (+size for small)
    freq_cap = 15  # frequency saturates here in the score

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.small: OrderedDict[Key, None] = OrderedDict()
        self.sb = self.mb = self.gb = 0
        # main: key -> (P, seq) of its live heap entry; older heap entries for it are stale.
        self.main: dict[Key, tuple[int, int]] = {}
        self.heap: list[tuple[int, int, Key]] = []
        self.freq: dict[Key, int] = {}
        self.ghost: OrderedDict[Key, tuple[int, bool]] = OrderedDict()  # size, evicted from small
        self.L = 0
        self.seq = 0
        self.T: int | None = None  # set by the first eviction
        self._weight: dict[int, int] = {}

    def _push_main(self, key: Key, f: int) -> None:
        size = self.sizes[key]
        w = self._weight.get(size)
        if w is None:
            w = self._weight[size] = size_weight(size)
        p = self.L + min(f, self.freq_cap) * w
        self.seq += 1
        self.main[key] = (p, self.seq)
        heap = self.heap
        heapq.heappush(heap, (p, self.seq, key))
        if len(heap) > 4 * len(self.main) + 1024:
            main = self.main
            self.heap = [e for e in heap if main.get(e[2]) == (e[0], e[1])]
            heapq.heapify(self.heap)

    def _hit(self, key: Key) -> None:
        f = self.freq[key] + 1
        self.freq[key] = f
        if key in self.main:
            self._push_main(key, f)

    def _insert(self, key: Key, size: int) -> None:
        g = self.ghost.pop(key, None)
        if g is None:
            self.freq[key] = 0
            self.small[key] = None
            self.sb += size
            return
        gsize, from_small = g
        self.gb -= gsize
        if self.T is not None:
            self.T += size if from_small else -self.step_main * size
        self.freq[key] = 1
        self.mb += size
        self._push_main(key, 1)

    def _remember(self, key: Key, size: int, from_small: bool) -> None:
        held = self.sb + self.mb
        gn, gd = self.ghost_share
        if gd * size > gn * held:
            return
        ghost = self.ghost
        while ghost and gd * (self.gb + size) > gn * held:
            self.gb -= ghost.popitem(last=False)[1][0]
        ghost[key] = (size, from_small)
        self.gb += size

    def _settle(self) -> None:
        """The first eviction ends the warm-up as S3FIFO._settle does: small keeps its oldest
        entries until they reach T, the rest move to main in order, scored by their hits."""
        n, d = self.init_share
        self.T = n * (self.sb + self.mb) // d
        acc, moved = 0, []
        for key in self.small:
            if acc >= self.T:
                moved.append(key)
            else:
                acc += self.sizes[key]
        for key in moved:
            del self.small[key]
            self._push_main(key, self.freq[key])
        self.mb += self.sb - acc
        self.sb = acc

    def _evict(self) -> Key:
        if self.T is None:
            self._settle()
        assert self.T is not None
        sizes, freq, main = self.sizes, self.freq, self.main
        ln, ld = self.lo_share
        hn, hd = self.hi_share
        while True:
            t = self.sb + self.mb
            self.T = T = max(ln * t // ld, min(self.T, hn * t // hd))
            if self.sb == 0 or (self.sb <= T and self.mb > 0):
                heap = self.heap  # _push_main may have compacted it
                while True:
                    p, s, key = heapq.heappop(heap)
                    if main.get(key) == (p, s):
                        break
                del main[key], freq[key]
                self.L = max(self.L, p)
                size = sizes[key]
                self.mb -= size
                self._remember(key, size, False)
                return key
            key = self.small.popitem(last=False)[0]
            size = sizes[key]
            self.sb -= size
            if freq[key] >= 1:
                self.mb += size
                self._push_main(key, freq[key])
                continue
            del freq[key]
            self._remember(key, size, True)
            return key


register_model(S3FIFO, S3FIFOLargeGhost, S3FIFOAdaptive, TwoQ)
