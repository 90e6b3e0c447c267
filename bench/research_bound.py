"""Research, not a policy of cachemgr: how far an online policy could get on the synthetic audio
trace if it were told what the trace's generator knows (docs/policy-search.md).

    python -m bench.research_bound

Both models below see requests one at a time, as a cache does, and keep the directories of
highest score that fit: a missed directory is admitted only if every directory it displaces
scores lower. They differ in what the score knows.

- `true rate`: each album's real chance per request in the current phase (its chart rank). No
  online policy can know it; it is the ceiling of what popularity estimates could ever give.
- `bayes`: the posterior mean of that chance given the album's request count since its release,
  with the generator's own distribution of chances as the prior, and told when each album was
  released (catalogue albums at the start). No online policy is told release times or the
  prior; it shows what estimating popularity from requests alone could reach at best.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from bench.policies import audio_trace
from cachemgr.simulate import replay
from cachemgr.traces import Trace

Phase = tuple[int, np.ndarray, np.ndarray]  # first request number, chart, chance per rank
FRACTIONS = (0.01, 0.02, 0.05, 0.10)
BINS = 2048  # the prior's chances, grouped by log-chance (the posterior barely moves)
MAX_COUNT = 400


def greedy(
    trace: Trace, capacity: int, score: Callable[[int, int, int], float], rescore_every: int
) -> int:
    """Missed bytes of a cache that keeps the highest scores.

    score(album, request number, the album's requests so far, this one included).

    Scores of held albums are recomputed every `rescore_every` requests (and on each hit):
    between those, an album's score is the one it had when last looked at.
    """
    held: dict[int, int] = {}  # album -> size
    current: dict[int, float] = {}
    heap: list[tuple[float, int]] = []  # lazy: entries whose score is stale are skipped
    counts: dict[int, int] = {}
    used = missed = 0
    for k, (x, size) in enumerate(zip(trace.ids.tolist(), trace.sizes.tolist(), strict=True)):
        counts[x] = counts.get(x, 0) + 1
        if k % rescore_every == 0:
            current = {y: score(y, k, counts[y]) for y in held}
            heap = [(q, y) for y, q in current.items()]
            heapq.heapify(heap)
        s = score(x, k, counts[x])
        if x in held:
            if current[x] != s:
                current[x] = s
                heapq.heappush(heap, (s, x))
            continue
        missed += size
        if size > capacity or s <= 0:
            continue
        victims: list[tuple[float, int]] = []
        free = capacity - used
        while free < size and heap:
            q, y = heap[0]
            if y not in held or current[y] != q:
                heapq.heappop(heap)
                continue
            if q >= s:
                break
            victims.append(heapq.heappop(heap))
            free += held[y]
        if free < size:  # not worth it: put the candidates back
            for v in victims:
                heapq.heappush(heap, v)
            continue
        for _, y in victims:
            used -= held.pop(y)
            del current[y]
        held[x] = size
        used += size
        current[x] = s
        heapq.heappush(heap, (s, x))
    return missed


def chance_by_phase(phases: list[Phase], ids: int) -> tuple[np.ndarray, np.ndarray]:
    """Each request number's phase, and a (phase, album) table of true chances."""
    table = np.zeros((len(phases), ids))
    for i, (_, chart, chance) in enumerate(phases):
        table[i, chart] = chance
    return np.array([start for start, _, _ in phases]), table


def true_rate(trace: Trace, phases: list[Phase], capacity: int) -> int:
    starts, table = chance_by_phase(phases, int(trace.ids.max()) + 1)
    phase_of = np.searchsorted(starts, np.arange(len(trace)), side="right") - 1
    # Rescoring at every phase start is exact: chances change only there.
    period = int(np.gcd.reduce(starts[1:])) if len(starts) > 1 else len(trace)
    return greedy(trace, capacity, lambda x, k, _n: table[phase_of[k], x], period)


class Posterior:
    """E[chance | n requests in t requests since release], the prior being the generator's."""

    def __init__(self, chances: np.ndarray, horizon: int) -> None:
        logs = np.log(chances[chances > 0])
        weight, edges = np.histogram(logs, bins=BINS)
        keep = weight > 0
        p = np.exp((edges[:-1] + edges[1:]) / 2)[keep]
        log_w = np.log(weight[keep])
        self.t_grid = np.unique(np.geomspace(1, horizon, 400).astype(np.int64))
        n = np.arange(MAX_COUNT + 1)[:, None]
        self.mean = np.empty((MAX_COUNT + 1, len(self.t_grid)))
        for j, t in enumerate(self.t_grid.tolist()):
            ll = log_w + n * np.log(p) - p * t
            w = np.exp(ll - ll.max(axis=1, keepdims=True))
            self.mean[:, j] = (w * p).sum(axis=1) / w.sum(axis=1)

    def __call__(self, n: int, t: int) -> float:
        j = min(int(np.searchsorted(self.t_grid, max(t, 1))), len(self.t_grid) - 1)
        return float(self.mean[min(n, MAX_COUNT), j])


def bayes(trace: Trace, phases: list[Phase], capacity: int, rescore_every: int = 2000) -> int:
    released: dict[int, int] = {}
    for start, chart, _ in phases:
        for x in chart.tolist():
            released.setdefault(x, start)
    posterior = Posterior(phases[0][2], len(trace))

    def score(x: int, k: int, n: int) -> float:
        # A one-hit wonder is not on the chart: judged as a catalogue album, which it looks like.
        return posterior(n, k - released.get(x, 0) + 1)

    return greedy(trace, capacity, score, rescore_every)


def main() -> None:
    phases: list[Phase] = []
    trace = audio_trace(popularity=phases)
    wss = trace.working_set_bytes()
    print("missed bytes against LRU on the synthetic audio trace")
    print(f"{'cache':>6} {'s3fifo-a':>9} {'bayes':>7} {'true rate':>10}")
    for fraction in FRACTIONS:
        capacity = int(wss * fraction)
        lru = replay("lru", trace, capacity).miss_bytes
        row = [
            replay("s3fifo-a", trace, capacity).miss_bytes,
            bayes(trace, phases, capacity),
            true_rate(trace, phases, capacity),
        ]
        cells = [f"{m / lru - 1:+.1%}" for m in row]
        print(f"{fraction:>6.0%} {cells[0]:>9} {cells[1]:>7} {cells[2]:>10}", flush=True)


if __name__ == "__main__":
    main()
