"""Offline bounds on a trace's miss ratios, for `cachemgr simulate` to show beside the policies.

- Belady: evict the object requested furthest in the future (bypass allowed); the optimum for
  equal sizes, a strong reference for variable ones.
- BeladySize: evict the object with the largest size x time-to-next-request, chosen among a
  seeded sample of 64 as libCacheSim does.
- PFOO-L (Berger, Beckmann, Harchol-Balter, SIGMETRICS'18): a lower bound on the miss ratio of
  any policy. Each request followed by another for the same object is an interval costing
  size x distance; the cheapest intervals whose summed cost fits in capacity x trace length are
  hits (none of an object larger than the cache). For the byte miss ratio the intervals are
  taken shortest first.
"""

from __future__ import annotations

import heapq
import random

import numpy as np

from cachemgr.traces import Trace, next_access


def belady(trace: Trace, capacity: int, nxt: np.ndarray | None = None) -> tuple[int, int]:
    """Misses and missed bytes of furthest-next-request-first, with bypass."""
    nxt = next_access(trace.ids) if nxt is None else nxt
    never = len(trace) + 1
    in_cache: dict[int, int] = {}  # key -> its next request
    sizes_of: dict[int, int] = {}
    heap: list[tuple[int, int]] = []  # (-next request, key), lazily invalidated
    total = misses = miss_bytes = 0
    for i, (k, s, n) in enumerate(
        zip(trace.ids.tolist(), trace.sizes.tolist(), nxt.tolist(), strict=True)
    ):
        n = never if n < 0 else n
        if k in in_cache:
            in_cache[k] = n
            heapq.heappush(heap, (-n, k))
            continue
        misses += 1
        miss_bytes += s
        if s > capacity or n == never:
            continue  # never useful to keep
        in_cache[k] = n
        sizes_of[k] = s
        heapq.heappush(heap, (-n, k))
        total += s
        while total > capacity:
            negn, v = heapq.heappop(heap)
            if in_cache.get(v) != -negn:
                continue
            del in_cache[v]
            total -= sizes_of.pop(v)
        del i
    return misses, miss_bytes


def belady_size(
    trace: Trace, capacity: int, nxt: np.ndarray | None = None, *, sample: int = 64, seed: int = 1
) -> tuple[int, int]:
    """Misses and missed bytes evicting the largest size x distance among a random sample."""
    nxt = next_access(trace.ids) if nxt is None else nxt
    rng = random.Random(seed)
    never = float(len(trace) + 1) * 4
    keys: list[int] = []
    pos: dict[int, int] = {}
    next_of: dict[int, float] = {}
    sizes_of: dict[int, int] = {}
    total = misses = miss_bytes = 0
    for i, (k, s, n) in enumerate(
        zip(trace.ids.tolist(), trace.sizes.tolist(), nxt.tolist(), strict=True)
    ):
        nn = never if n < 0 else float(n)
        if k in pos:
            next_of[k] = nn
            continue
        misses += 1
        miss_bytes += s
        if s > capacity or n < 0:
            continue
        pos[k] = len(keys)
        keys.append(k)
        next_of[k] = nn
        sizes_of[k] = s
        total += s
        while total > capacity:
            picks = keys if len(keys) <= sample else rng.sample(keys, sample)
            v = max(picks, key=lambda x: sizes_of[x] * (next_of[x] - i))
            j = pos.pop(v)
            last = keys.pop()
            if last != v:
                keys[j] = last
                pos[last] = j
            total -= sizes_of.pop(v)
            del next_of[v]
    return misses, miss_bytes


def pfoo_l(trace: Trace, capacity: int, nxt: np.ndarray | None = None) -> tuple[float, float]:
    """(object, byte) miss-ratio lower bounds."""
    nxt = next_access(trace.ids) if nxt is None else nxt
    n = len(trace)
    # Each object priced at its smallest size: a cached copy keeps the size it was admitted
    # at (Trace.resized), so with sizes that change the bound must not price it higher than
    # any policy's copy, or it is no bound (it came out above LRU).
    _, obj = np.unique(trace.ids, return_inverse=True)
    smallest = np.full(int(obj.max()) + 1, np.inf)
    np.minimum.at(smallest, obj, trace.sizes.astype(np.float64))
    # An object larger than the cache at its smallest is never held: its requests are misses
    # for every policy (counted as hits in part, the bound was loose: 0.5 where all miss).
    has = (nxt >= 0) & (smallest[obj] <= capacity)
    idx = np.nonzero(has)[0]
    dist = (nxt[has] - idx).astype(np.float64)
    size = smallest[obj[has]]
    budget = float(capacity) * n
    cost = size * dist

    # A fractional knapsack: the intervals that fit whole, plus the share of the next one that
    # the budget left covers (without it the greedy answer is not a bound).
    def take(order: np.ndarray, value: np.ndarray) -> float:
        spent = np.cumsum(cost[order])
        whole = int(np.searchsorted(spent, budget, side="right"))
        got = float(value[order[:whole]].sum())
        if whole < len(order):
            left = budget - (float(spent[whole - 1]) if whole else 0.0)
            nxt_cost = float(cost[order[whole]])
            if nxt_cost > 0:
                got += float(value[order[whole]]) * left / nxt_cost
        return got

    obj_hits = take(np.argsort(cost, kind="stable"), np.ones_like(cost))
    # A hit saves the bytes of the request it serves; the best bytes per unit of budget come
    # first (by distance alone while sizes stay put: served / cost is then 1 / distance).
    served = trace.sizes[nxt[has]].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        price = np.where(served > 0, cost / served, np.inf)
    byte_hits = take(np.argsort(price, kind="stable"), served)

    total_bytes = float(trace.sizes.sum())
    return 1 - obj_hits / n, (1 - byte_hits / total_bytes) if total_bytes else 0.0
