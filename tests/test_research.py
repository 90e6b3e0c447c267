"""The research models of docs/policy-search.md keep their books straight: what they hold is
what their queues hold, within the capacity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.policies import audio_trace
from bench.research_bound import bayes, true_rate
from bench.research_duel import Duel, RateCache
from tests.test_simulate import synthetic


@pytest.mark.parametrize("cls", [RateCache, Duel])
def test_research_models_hold_what_their_queues_hold(cls: type[RateCache] | type[Duel]) -> None:
    capacity = 60_000
    model = cls(capacity, admit_larger=False)
    hits = 0
    for _, key, size in synthetic(n=4000):
        hits += model.request(key, size)
        assert model.total == sum(model.sizes.values()) <= capacity
        assert model.sb + model.mb == model.total
        assert set(model.small) | set(model.main) == set(model.sizes)
        assert not set(model.small) & set(model.main)
        assert model.gb == sum(size for size, _ in model.ghost.values()) <= 2 * model.total
    assert 0 < hits < 4000
    if isinstance(model, Duel):
        assert set(model.pri) == set(model.main) == set(model.freq)


def test_popularity_leaves_the_synthetic_trace_as_it_was() -> None:
    kw: dict[str, int] = dict(requests=3000, catalogue=2500, phases=3, releases_per_phase=50)
    phases: list[tuple[int, np.ndarray, np.ndarray]] = []
    told = audio_trace(popularity=phases, **kw)  # type: ignore[arg-type]
    plain = audio_trace(**kw)  # type: ignore[arg-type]
    assert (told.ids == plain.ids).all() and (told.sizes == plain.sizes).all()
    assert [start for start, _, _ in phases] == [0, 1000, 2000]
    for _, chart, chance in phases:
        assert len(chart) == len(chance) and chance.sum() == pytest.approx(0.8)
    assert len(phases[-1][1]) == 2500 + 2 * 50  # two phases of new releases


@pytest.mark.parametrize("model", [true_rate, bayes])
def test_bound_models_miss_first_requests_only_when_all_fits(model: Any) -> None:
    phases: list[tuple[int, np.ndarray, np.ndarray]] = []
    trace = audio_trace(
        requests=3000, catalogue=2500, phases=3, releases_per_phase=50, popularity=phases
    )
    _, first = np.unique(trace.ids, return_index=True)
    everything = trace.working_set_bytes()
    assert model(trace, phases, everything) == int(trace.sizes[first].sum())
    assert model(trace, phases, int(trace.sizes.min()) - 1) == int(trace.sizes.sum())
    # Room for a tenth: it keeps some, so it misses between those two.
    assert (
        int(trace.sizes[first].sum())
        < model(trace, phases, everything // 10)
        < int(trace.sizes.sum())
    )
