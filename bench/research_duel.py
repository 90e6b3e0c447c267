"""Research, not a policy of cachemgr: the best online policy the issue-6 searches found for the
synthetic audio trace, kept so that its figures can be reproduced (docs/policy-search.md).

    python -m bench.research_duel

`RateCache` keeps, for every key ever seen, its request count n and the request number it was
first seen at; main evicts the smallest rate estimate (n - 1 + A0) / (age + B0 x objects held)
among K sampled members. New keys wait in a small FIFO (1/200 of the bytes); a hit there, or a
ghost hit (victims remembered up to twice the bytes held), earns a place in main.

`Duel` runs either as s3fifo-a (mode A) or as RateCache (mode B), whichever of two miniature
shadow caches (one of each, 1/R of the capacity, fed the keys whose hash falls in 1/R) has more
decayed hit bytes. Neither is offered as a policy: both keep history for keys long gone from
the cache (unbounded memory), and sampling breaks the request-by-request parity of model and
Lua that the project requires.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from typing import Any

from cachemgr.models import Key, Model, make_model
from cachemgr.models_s3fifo import S3FIFOAdaptive, size_weight
from cachemgr.traces import Trace, read_trace

A0, B0 = 0.5, 4  # the rate estimate's prior: half a request over 4x the objects held
K = 128  # main members sampled per eviction
SMALL = (1, 200)  # RateCache's small FIFO, of the bytes held


class _History(Model):
    """Request counts and first-seen request numbers of every key ever seen."""

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.t = 0
        self.n: dict[Key, int] = {}
        self.first: dict[Key, int] = {}
        self.rng = random.Random(7)

    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        self.t += 1
        if key in self.n:
            self.n[key] += 1
        else:
            self.n[key] = 1
            self.first[key] = self.t
        return super().request(key, size, now)

    def rate(self, key: Key) -> float:
        return (self.n[key] - 1 + A0) / (self.t - self.first[key] + B0 * len(self.sizes) + 1)

    def sampled_min(self, keys: list[Key]) -> Key:
        rng, count = self.rng, len(keys)
        return min((keys[rng.randrange(count)] for _ in range(min(K, count))), key=self.rate)


class _Queues(_History):
    """A small FIFO, a main set and a ghost of victims, as S3-FIFO has; the subclasses say
    when main gives the victim and which."""

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        self.small: OrderedDict[Key, int] = OrderedDict()
        self.hit_small: set[Key] = set()
        self.main: list[Key] = []
        self.pos: dict[Key, int] = {}
        self.ghost: OrderedDict[Key, tuple[int, bool]] = OrderedDict()  # size, from small
        self.sb = self.mb = self.gb = 0

    def _main_turn(self, held: int) -> bool:
        raise NotImplementedError

    def _main_victim(self) -> Key:
        raise NotImplementedError

    def _returned(self, size: int, from_small: bool) -> None:
        """A victim remembered in the ghost came back."""

    def _hit(self, key: Key) -> None:
        if key in self.small:
            self.hit_small.add(key)

    def _to_main(self, key: Key) -> None:
        self.pos[key] = len(self.main)
        self.main.append(key)
        self.mb += self.sizes[key]

    def _drop_main(self, key: Key) -> None:
        i, last = self.pos.pop(key), self.main.pop()
        if last != key:
            self.main[i] = last
            self.pos[last] = i
        self.mb -= self.sizes[key]

    def _insert(self, key: Key, size: int) -> None:
        remembered = self.ghost.pop(key, None)
        if remembered is None:
            self.small[key] = size
            self.sb += size
            return
        self.gb -= remembered[0]
        self._returned(size, remembered[1])
        self._to_main(key)

    def _remember(self, key: Key, size: int, from_small: bool) -> None:
        limit = 2 * (self.sb + self.mb)
        if size > limit:
            return
        while self.ghost and self.gb + size > limit:
            self.gb -= self.ghost.popitem(last=False)[1][0]
        self.ghost[key] = (size, from_small)
        self.gb += size

    def _evict(self) -> Key:
        while True:
            if self._main_turn(self.sb + self.mb) or self.sb == 0:
                victim = self._main_victim()
                self._drop_main(victim)
                self._remember(victim, self.sizes[victim], False)
                return victim
            key, size = self.small.popitem(last=False)
            self.sb -= size
            if key in self.hit_small:
                self.hit_small.discard(key)
                self._to_main(key)
                continue
            self._remember(key, size, True)
            return key


class RateCache(_Queues):
    name = "research-rate"

    def _main_turn(self, held: int) -> bool:
        return SMALL[1] * self.sb <= SMALL[0] * held and self.mb > 0

    def _main_victim(self) -> Key:
        return self.sampled_min(self.main)


class Duel(_Queues):
    """s3fifo-a (A) or RateCache (B), as two shadow caches of 1/R of the capacity decide."""

    name = "research-duel"
    R = 8
    DECAY = 0.9999  # per sampled request, on the shadows' hit bytes

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(capacity, **kw)
        shadow = max(1, capacity // self.R)
        self.shadow_a = S3FIFOAdaptive(shadow, admit_larger=False)
        self.shadow_b = RateCache(shadow, admit_larger=False)
        self.score_a = self.score_b = 0.0
        self.mode = "A"
        self.heap: list[tuple[int, int, Key]] = []
        self.pri: dict[Key, tuple[int, int]] = {}
        self.freq: dict[Key, int] = {}
        self.seq = self.L = 0
        self.T: int | None = None

    def request(self, key: Key, size: int, now: float | None = None) -> bool:
        if (hash(key) * 2654435761) % 4294967296 % self.R == 0:
            hit_a = self.shadow_a.request(key, size)
            hit_b = self.shadow_b.request(key, size)
            self.score_a = self.score_a * self.DECAY + (size if hit_a else 0)
            self.score_b = self.score_b * self.DECAY + (size if hit_b else 0)
            if self.score_b > self.score_a:
                self.mode = "B"
            elif self.score_a > self.score_b:
                self.mode = "A"
        return super().request(key, size, now)

    def _push(self, key: Key) -> None:
        p = self.L + min(self.freq[key], 15) * size_weight(self.sizes[key])
        self.seq += 1
        self.pri[key] = (p, self.seq)
        heapq.heappush(self.heap, (p, self.seq, key))

    def _to_main(self, key: Key) -> None:
        super()._to_main(key)
        self.freq[key] = 1
        self._push(key)

    def _hit(self, key: Key) -> None:
        super()._hit(key)
        if key in self.pos:
            self.freq[key] += 1
            self._push(key)

    def _returned(self, size: int, from_small: bool) -> None:
        if self.T is not None:  # s3fifo-a's target for the small queue, kept in both modes
            self.T += size if from_small else -4 * size

    def _main_turn(self, held: int) -> bool:
        if self.T is None:
            self.T = held // 10
        self.T = max(held // 20, min(self.T, held // 4))
        target = self.T if self.mode == "A" else SMALL[0] * held // SMALL[1]
        return self.sb <= target and self.mb > 0

    def _main_victim(self) -> Key:
        if self.mode == "B":
            return self.sampled_min(self.main)
        while True:
            p, seq, key = heapq.heappop(self.heap)
            if self.pri.get(key) == (p, seq):
                return key

    def _drop_main(self, key: Key) -> None:
        super()._drop_main(key)
        self.L = max(self.L, self.pri.pop(key)[0])
        del self.freq[key]
        if len(self.heap) > 4 * len(self.pri) + 1024:
            self.heap = [e for e in self.heap if self.pri.get(e[2]) == e[:2]]
            heapq.heapify(self.heap)


def missed(model: Model, trace: Trace) -> tuple[float, float, int]:
    """Object miss ratio, byte miss ratio and missed bytes of one replay."""
    misses = missed_bytes = 0
    for key, size in zip(trace.ids.tolist(), trace.sizes.tolist(), strict=True):
        if not model.request(key, size):
            misses += 1
            missed_bytes += size
    return misses / len(trace), missed_bytes / int(trace.sizes.sum()), missed_bytes


def main() -> None:
    from bench.policies import TRACES, audio_trace

    traces = {
        "adaptsize": read_trace(TRACES / "adaptsize_request.trace.xz"),
        "cloudPhysics": read_trace(TRACES / "cloudPhysicsIO.oracleGeneral.bin"),
        "synthetic-audio": audio_trace(),
    }
    cases = [("adaptsize", f) for f in (0.01, 0.05, 0.1)] + [("cloudPhysics", 0.01)]
    cases += [("cloudPhysics", 0.1)] + [("synthetic-audio", f) for f in (0.01, 0.02, 0.05, 0.1)]
    print("case                    policy          object  bytes   missed bytes vs LRU")
    for name, fraction in cases:
        trace = traces[name]
        cap = int(trace.working_set_bytes() * fraction)
        lru = missed(make_model("lru", cap, admit_larger=False), trace)
        for label, model in (
            ("s3fifo-a", make_model("s3fifo-a", cap, admit_larger=False)),
            ("research-rate", RateCache(cap, admit_larger=False)),
            ("research-duel", Duel(cap, admit_larger=False)),
        ):
            obj, byte, lost = missed(model, trace)
            print(
                f"{name:16s}@{fraction:>5.0%}  {label:14s}  {obj:.4f}  {byte:.4f}  "
                f"{(lost - lru[2]) / lru[2]:+.2%}  (ratio to LRU {obj / lru[0]:.4f} / "
                f"{byte / lru[1]:.4f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
