"""The research models of docs/policy-search.md keep their books straight: what they hold is
what their queues hold, within the capacity."""

from __future__ import annotations

import pytest

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
