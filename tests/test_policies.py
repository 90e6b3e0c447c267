"""Every policy's Lua against its reference model, request by request, on the real Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemgr import DiskCache
from cachemgr.keys import Keys
from cachemgr.migrations import ensure_policy
from cachemgr.models import MODELS, make_model
from cachemgr.passes import enforce_quota
from cachemgr.policies import POLICIES
from cachemgr.scripts import COMMON_KEYS, STALE_HIT
from cachemgr.stats import counters
from cachemgr.store import Store
from tests.conftest import cleanup_prefix, make_tree

T0 = 1_800_000_000
NAMES = sorted(POLICIES)


def replay_store(
    store: Store,
    trace: list[tuple[str, int]],
    capacity: int,
    batch: int,
    start: int = 0,
    target: float = 1.0,
    settle_batch: int = 0,
) -> list[tuple[bool, list[str]]]:
    """The cleanup's loop in miniature: victims in batches, claimed in the order given; past
    the capacity, evict down to target x capacity (with `settle_batch`, settling the warm-up
    in steps of that many first, as enforce_quota does)."""
    low = int(capacity * target)
    out = []
    for i, (key, size) in enumerate(trace, start):
        now = T0 + i
        hit = bool(store.access(key, now=now))
        evicted: list[str] = []
        if not hit:
            assert store.register(key, size, 1, now=now)[0] == "ok"
            total = store.total_bytes()
            low_now = low if total > capacity else total
            if settle_batch and total > low_now:
                store.settle(settle_batch)
            while total > low_now:
                victims = store.victims(batch, 0)
                assert victims, "bytes above capacity but the policy names no victim"
                for entry in victims:
                    if total <= low_now:
                        break
                    taken = store.claim(
                        entry.path,
                        "evicted",
                        now=now,
                        expect_registered=entry.registered,
                        deleting_files=False,
                    )
                    assert taken[0] == "ok", taken
                    total -= entry.size_bytes
                    evicted.append(entry.path)
        out.append((hit, evicted))
    return out


def replay_model(
    name: str, trace: list[tuple[str, int]], capacity: int, start: int = 0, target: float = 1.0
) -> list[tuple[bool, list[str]]]:
    model = make_model(name, capacity, record_evictions=True, target=target)
    assert model.evicted is not None
    out = []
    for i, (key, size) in enumerate(trace, start):
        before = len(model.evicted)
        hit = model.request(key, size, now=T0 + i)
        out.append((hit, model.evicted[before:]))
    return out


traces = st.lists(
    st.tuples(st.sampled_from([f"k{i:02d}" for i in range(14)]), st.integers(1, 40)),
    min_size=1,
    max_size=70,
)


def test_every_policy_has_a_model():
    assert set(POLICIES) <= set(MODELS)


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    trace=traces,
    capacity=st.integers(40, 160),
    batch=st.integers(1, 4),
    # Below 1.0, cachemgr's hysteresis: several victims per pass, SIEVE's hand laps.
    target=st.sampled_from([1.0, 1.0, 0.8, 0.5]),
    # The warm-up settled by the first claim itself (0) or beforehand in steps of 1 or 3.
    settle_batch=st.sampled_from([0, 0, 1, 3]),
)
def test_redis_matches_the_model(redis_client, name, trace, capacity, batch, target, settle_batch):
    # The same key must always have the same size, as a directory does between requests.
    sizes: dict[str, int] = {}
    trace = [(k, sizes.setdefault(k, s)) for k, s in trace]
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    try:
        store = Store(redis_client, Keys(prefix), policy=name)
        got = replay_store(store, trace, capacity, batch, target=target, settle_batch=settle_batch)
        want = replay_model(name, trace, capacity, target=target)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"request {i} {trace[i]}: redis {g} model {w}"
        assert store.total_bytes() == sum(
            s for k, s in dict(trace).items() if store.info(k) is not None
        )
    finally:
        cleanup_prefix(redis_client, prefix)


def _tracked(store: Store) -> set[str]:
    return set(store.all_records())


def test_a_switch_carries_over_entries_that_are_accessed_while_it_runs(
    redis_client, prefix, monkeypatch
):
    from cachemgr import migrations

    before = Store(redis_client, Keys(prefix), policy="lru")
    for i in range(30):
        assert before.register(f"d{i:02d}", 10, 1, now=T0 + i)[0] == "ok"
    after = Store(redis_client, Keys(prefix), policy="fifo")
    real_call, accesses = migrations.call, iter(range(1000))

    def call_then_access(*args: Any) -> Any:
        out = real_call(*args)
        # Between two batches the pipeline plays the oldest entries (they move to the end).
        for path in ("d00", "d01", "d02"):
            after.access(path, now=T0 + 100 + next(accesses))
        return out

    monkeypatch.setattr(migrations, "call", call_then_access)
    assert migrations.rebuild_policy(after, batch=4) >= 30
    victims = [e.path for e in after.victims(100)]
    # Every entry is in fifo's queue, by registration time: none was skipped by the accesses.
    assert victims == [f"d{i:02d}" for i in range(30)]


# Every policy is switched to once and from once (each from its neighbour in the list).
@pytest.mark.parametrize("old,new", [(NAMES[i - 1], NAMES[i]) for i in range(len(NAMES))])
def test_switching_policy_on_a_running_cache(redis_client, prefix, old, new):
    # A hot set of three among a cycle of twenty: hits for every policy, and evictions.
    keys = [f"k{(i * 7) % 23:02d}" if i % 2 else f"k{i % 3:02d}" for i in range(120)]
    trace = [(k, 5 + int(k[1:]) % 17) for k in keys]
    first, second = trace[:60], trace[60:]
    before = Store(redis_client, Keys(prefix), policy=old)
    ensure_policy(before)
    replay_store(before, first, 100, 2)
    tracked = _tracked(before)
    total = before.total_bytes()

    after = Store(redis_client, Keys(prefix), policy=new)
    assert ensure_policy(after) is True
    assert ensure_policy(after) is False  # built once
    # Every tracked entry was carried over, nothing else, and the books did not move.
    assert {e.path for e in after.victims(1000)} == tracked
    assert after.total_bytes() == total and _tracked(after) == tracked

    # The running cache keeps working under the new policy: hits stay hits, the quota holds.
    results = replay_store(after, second, 100, 3, start=60)
    assert after.total_bytes() <= 100
    assert {e.path for e in after.victims(1000)} == _tracked(after)
    assert any(hit for hit, _ in results) and any(ev for _, ev in results)


@pytest.mark.parametrize("name", NAMES)
def test_victims_offset_and_dry_reads_change_nothing(redis_client, prefix, name):
    store = Store(redis_client, Keys(prefix), policy=name)
    trace = [(f"k{(i * 5) % 11:02d}", 3 + i % 7) for i in range(40)]
    replay_store(store, trace, 40, 2)
    order = [e.path for e in store.victims(100)]
    assert order == [e.path for e in store.victims(100)]  # reading twice: same answer
    assert [e.path for e in store.victims(3, 2)] == order[2:5]


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("lru",)])
def test_quota_enforcement_follows_the_policy_and_spares_pins(settings, redis_client, root, name):
    # The cleanup's own loop, one victim per batch, so that skipped entries move the offset.
    cache = DiskCache(
        settings.with_(disk_cache_eviction_policy=name, disk_cache_batch_size=1), redis_client
    )
    for i in range(19):
        make_tree(root, f"album{i:02d}", files=4, size=4096)
        cache.register(f"album{i:02d}")
        if i % 3 == 0:
            cache.access(f"album{i // 2:02d}")
    order = [e.path for e in cache.store.victims(100)]
    assert sorted(order) == [f"album{i:02d}" for i in range(19)]
    cache.pin(order[0], 60)
    result = enforce_quota(cache)
    removed = [r.path for r in result.removed]
    assert order[0] in result.skipped_pinned and (root / order[0]).is_dir()
    assert removed == order[1 : 1 + len(removed)]
    assert cache.store.total_bytes() <= cache.settings.target_bytes
    assert all(not (root / p).exists() for p in removed)


def test_sieve_hand_laps_when_every_entry_was_visited(redis_client, prefix):
    # With insert-then-evict the newest entry is always unvisited; a lap over visited entries
    # only happens when eviction starts without one (a lowered quota, a rebuilt cache).
    store = Store(redis_client, Keys(prefix), policy="sieve")
    model = make_model("sieve", 1000, record_evictions=True)
    for i, key in enumerate(["a", "b", "c", "d"]):
        store.register(key, 10, 1, now=T0 + i)
        model.request(key, 10)
    for i, key in enumerate(["a", "b", "c", "d"]):
        assert store.access(key, now=T0 + 10 + i) == 1 and model.request(key, 10)
    assert [e.path for e in store.victims(10)] == ["a", "b", "c", "d"]
    for low in (30, 20):
        model.evict_down_to(low)
        victim = store.victims(1)[0]
        assert store.claim(victim.path, "evicted", deleting_files=False)[0] == "ok"
        assert model.evicted is not None and victim.path == model.evicted[-1]
    # The lap cleared every bit: a hit marks c again, so d goes next, as in the model.
    assert store.access("c", now=T0 + 20) == 1 and model.request("c", 10)
    model.evict_down_to(10)
    assert [e.path for e in store.victims(10)] == [model.evicted[-1], "c"]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_batch_of_accesses_does_what_single_accesses_do(redis_client, name):
    one, many = (Store(redis_client, Keys(f"b{uuid.uuid4().hex[:8]}:"), policy=name)
                 for _ in range(2))  # fmt: skip
    try:
        for store in (one, many):
            for i in range(6):
                store.register(f"d{i}", 1000 * (i + 1), 1, now=100.0 + i)
        trace = ["d1", "d3", "x", "d1", "d5", "d0", "y", "d3"]
        singles = [int(one.access(p, now=200.0)) for p in trace]
        assert many.access_many(trace, now=200.0) == singles
        assert counters(one)[0] == counters(many)[0]
        assert one.all_records() == many.all_records()
        assert [e.path for e in one.victims(6)] == [e.path for e in many.victims(6)]
    finally:
        cleanup_prefix(redis_client, one.keys.prefix)
        cleanup_prefix(redis_client, many.keys.prefix)


# -- the S3-FIFO family's warm-up settle ---------------------------------------------------------
SETTLED = [n for n in NAMES if POLICIES[n].settle]


def _queues(redis_client, store: Store) -> tuple[list[str], list[str], dict[str, str]]:
    aux = store.keys.policy_aux
    name = store.policy.name
    main = redis_client.zrange(aux(name, "main"), 0, -1)
    if name == "s3fifo-a":  # a member of main is its 16-digit sequence, then the path
        main = [m[16:] for m in main]
    meta = redis_client.hgetall(aux(name, "meta"))
    return redis_client.zrange(aux(name, "small"), 0, -1), main, meta


def _warm(redis_client, prefix: str, name: str, n: int = 60) -> Store:
    store = Store(redis_client, Keys(prefix), policy=name)
    for i in range(n):
        store.register(f"d{i:03d}", 3 + (i * 7) % 11, 1, now=T0 + i)
        if i % 4 == 0:
            store.access(f"d{i // 2:03d}", now=T0 + i)
    return store


def test_the_family_is_what_has_a_settle():
    assert SETTLED == ["s3fifo", "s3fifo-a", "s3fifo-lg"]


@pytest.mark.parametrize("name", SETTLED)
def test_warm_up_settles_in_bounded_steps_as_one_claim_would(redis_client, name):
    stepped, inline = f"t{uuid.uuid4().hex[:10]}:", f"t{uuid.uuid4().hex[:10]}:"
    try:
        a, b = _warm(redis_client, stepped, name), _warm(redis_client, inline, name)
        small_before = len(_queues(redis_client, a)[0])
        sizes: list[int] = []
        calls = a.settle(4, step=lambda: sizes.append(len(_queues(redis_client, a)[0])))
        sizes.append(len(_queues(redis_client, a)[0]))  # the step runs between calls
        # a walk over the kept ones, then the moves: never more than 4 entries a call
        moved = [x - y for x, y in zip([small_before, *sizes], sizes, strict=False)]
        assert calls == len(sizes) >= 1 + (small_before - sizes[-1]) // 4
        assert max(moved) <= 4 and sizes[-1] < small_before
        assert a.settle(4) == 0  # settled once
        # The same queues, counts and victims as the first claim settling it all at once.
        first = b.victims(1)[0].path
        assert b.claim(first, "evicted", deleting_files=False)[0] == "ok"
        assert a.victims(1)[0].path == first
        assert a.claim(first, "evicted", deleting_files=False)[0] == "ok"
        qa, qb = _queues(redis_client, a), _queues(redis_client, b)
        assert qa[:2] == qb[:2]
        assert {k: v for k, v in qa[2].items() if k != "seq"} == {
            k: v for k, v in qb[2].items() if k != "seq"
        }
        assert not any(k.startswith("st_") for k in qa[2])
        assert [e.path for e in a.victims(100)] == [e.path for e in b.victims(100)]
    finally:
        cleanup_prefix(redis_client, stepped)
        cleanup_prefix(redis_client, inline)


@pytest.mark.parametrize("name", SETTLED)
def test_a_half_done_settle_keeps_the_books_and_is_finished_by_who_reads(
    redis_client, prefix, name
):
    store = _warm(redis_client, prefix, name)
    script_keys = store.script_keys()
    assert store._settle(keys=script_keys, args=[5]) == 1  # begun, not done
    assert store._settle(keys=script_keys, args=[5]) == 1
    # Traffic meanwhile: a registration after the settle began stays in the small queue,
    # a hit counts, a removal leaves the books exact.
    assert store.register("late", 9, 1, now=T0 + 100)[0] == "ok"
    assert store.access("d001", now=T0 + 101) == 1
    assert store.claim("d002", "removed", deleting_files=False)[0] == "ok"
    victims = [e.path for e in store.victims(100)]  # SETTLING: helps finish, then reads
    small, main, meta = _queues(redis_client, store)
    assert "evicted" in meta and not any(k.startswith("st_") for k in meta)
    assert "late" in small and "late" not in main
    assert sorted(small + main) == sorted(_tracked(store)) == sorted(victims)
    assert int(meta["sb"]) + int(meta["mb"]) == store.total_bytes()
    assert int(meta["sb"]) == sum(int(store.info(p).size_bytes) for p in small)


@pytest.mark.parametrize("name", SETTLED)
def test_settle_steps_are_capped_and_stop_when_the_lock_is_lost(redis_client, prefix, name):
    store = _warm(redis_client, prefix, name, n=2100)
    small_before = len(_queues(redis_client, store)[0])
    # A batch bigger than Lua's unpack allows is cut to 1000 a call; a lost lock stops it.
    assert store.settle(10**6, step=lambda: False) == 1
    small, _, meta = _queues(redis_client, store)
    assert "st_to" in meta and small_before - len(small) <= 1000
    assert store.settle(10**6) >= 2 and "evicted" in _queues(redis_client, store)[2]
    # Victims come 1000 at most a call: read on by offset.
    chosen = [e.path for off in range(0, 3000, 1000) for e in store.victims(3000, off)]
    assert sorted(chosen) == sorted(_tracked(store))


@pytest.mark.parametrize("name", SETTLED)
def test_a_stale_settle_state_beside_a_settled_one_is_dropped(redis_client, prefix, name):
    # An older cachemgr settling in one script sets `evicted` and knows nothing of st_*.
    store = _warm(redis_client, prefix, name)
    assert store.settle(3, step=lambda: False) == 1
    meta_key = store.keys.policy_aux(name, "meta")
    redis_client.hset(meta_key, "evicted", 1)
    assert store.victims(1)  # not SETTLING
    assert store.settle(3) == 0
    assert not any(k.startswith("st_") for k in redis_client.hkeys(meta_key))


@pytest.mark.parametrize("name", NAMES)
def test_empty_directories_are_evicted_and_removed(redis_client, prefix, name):
    # 0 bytes (an empty directory on tmpfs): -0 must not reach HINCRBY as '-0'.
    store = Store(redis_client, Keys(prefix), policy=name)
    sizes = {"e0": 0, "e1": 0, "e2": 0, "e3": 5, "e4": 0, "e5": 7}
    for i, (path, size) in enumerate(sizes.items()):
        assert store.register(path, size, 0, now=T0 + i)[0] == "ok"
    store.settle(2)
    first = store.victims(1)[0].path
    assert store.claim(first, "evicted", deleting_files=False)[0] == "ok"
    empty = next(p for p in sorted(_tracked(store)) if sizes[p] == 0)
    assert store.claim(empty, "removed", deleting_files=False)[0] == "ok"
    assert store.register(first, sizes[first], 0, now=T0 + 10)[0] == "ok"  # back (the ghost)
    tracked = _tracked(store)
    assert store.total_bytes() == sum(sizes[p] for p in tracked)
    # Every entry with bytes can still be chosen (with only 0 bytes left to free, a policy
    # that counts bytes may stop naming the empty ones: evicting them would free nothing).
    named = {e.path for e in store.victims(10)}
    assert {p for p in tracked if sizes[p]} <= named <= tracked


@pytest.mark.parametrize("name", NAMES)
def test_a_resize_reaches_the_policy_books(redis_client, prefix, name):
    # Reconcile's rescan corrects sizes: the policy's own byte counts must follow, or the
    # bytes it cannot see can never be evicted.
    store = Store(redis_client, Keys(prefix), policy=name)
    sizes = {"a": 0, "b": 0, "c": 10, "d": 7}
    for i, (path, size) in enumerate(sizes.items()):
        store.register(path, size, 1, now=T0 + i)
    store.access("c", now=T0 + 10)
    for path, size in (("a", 10**9), ("b", 10**9), ("c", 3)):
        assert store.resize(path, size, 2) == size - sizes[path]
        sizes[path] = size
    assert store.resize("nope", 5, 1) is None
    assert store.total_bytes() == sum(sizes.values())
    meta = redis_client.hgetall(store.keys.policy_aux(name, "meta"))
    held = [int(meta[f]) for f in ("sb", "ab", "mb") if f in meta]
    if held:
        assert sum(held) == store.total_bytes()
    assert {e.path for e in store.victims(10)} == set(sizes)
    while store.total_bytes() > 0:  # everything can be evicted, down to nothing
        store.settle()
        victim = store.victims(1)[0]
        assert store.claim(victim.path, "evicted", deleting_files=False)[0] == "ok"
    assert store.count_entries() == 0


GHOSTED = {"2q": ("aout", "meta"), "s3fifo": ("ghost", "meta"), "s3fifo-lg": ("ghost", "meta"),
           "s3fifo-a": ("ghost", "meta")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GHOSTED))
def test_a_restored_victim_is_not_taken_for_a_return_from_the_ghost(redis_client, prefix, name):
    # The eviction's deletion failed: the victim is put back as it was, a newcomer again, not
    # promoted past probation as a directory asked for again would be (nor, for s3fifo-a,
    # teaching T that the small queue is too short).
    store = Store(redis_client, Keys(prefix), policy=name)
    for i in range(12):
        store.register(f"d{i:02d}", 10 + i, 1, now=T0 + i)
    store.settle()
    victim = store.victims(1)[0]
    assert store.claim(victim.path, "evicted", deleting_files=True)[0] == "ok"
    ghost_key, meta_key = (store.keys.policy_aux(name, k) for k in GHOSTED[name])
    assert redis_client.zscore(ghost_key, victim.path) is not None  # remembered as evicted
    meta_before = redis_client.hgetall(meta_key)
    assert store.restore(victim.path) is True
    meta = redis_client.hgetall(meta_key)
    assert redis_client.zscore(ghost_key, victim.path) is None
    assert int(meta.get("gb", 0)) == int(meta_before.get("gb", 0)) - victim.size_bytes
    assert meta.get("T") == meta_before.get("T")
    small = "ain" if name == "2q" else "small"
    assert redis_client.zscore(store.keys.policy_aux(name, small), victim.path) is not None
    assert store.total_bytes() == sum(10 + i for i in range(12))
    assert {e.path for e in store.victims(20)} == _tracked(store)


@pytest.mark.parametrize("name", ["lru", "fifo", "lfu"])
def test_a_restored_victim_keeps_its_place_in_the_order(redis_client, prefix, name):
    # LFU's hook scored the put-back directory by the restore's time: a directory whose
    # deletion failed came back as the most recent of its frequency.
    store = Store(redis_client, Keys(prefix), policy=name)
    for i in range(6):
        store.register(f"d{i}", 10, 1, now=T0 + i)
    store.access("d0", now=T0 + 10)
    order = [e.path for e in store.victims(6)]
    scores = redis_client.zrange(store.keys.policy, 0, -1, withscores=True)
    victim = order[0]
    assert store.claim(victim, "evicted", deleting_files=True, now=T0 + 20)[0] == "ok"
    assert store.restore(victim, now=T0 + 3600) is True
    assert [e.path for e in store.victims(6)] == order
    assert redis_client.zrange(store.keys.policy, 0, -1, withscores=True) == scores


def test_enforce_quota_settles_the_warm_up_in_batches(settings, redis_client, root):
    cache = DiskCache(
        settings.with_(disk_cache_eviction_policy="s3fifo", disk_cache_batch_size=3), redis_client
    )
    for i in range(30):
        make_tree(root, f"album{i:02d}", files=4, size=4096)
        cache.register(f"album{i:02d}")
    settle_calls: list[int] = []
    real = cache.store.settle

    def spy(batch: int = 1000, step: Any = None) -> int:
        settle_calls.append(batch)
        return real(batch, step)

    cache.store.settle = spy  # type: ignore[method-assign]
    assert enforce_quota(cache, dry_run=True).removed
    assert settle_calls == [] and "evicted" not in _queues(redis_client, cache.store)[2]
    result = enforce_quota(cache)
    assert settle_calls == [3] and result.removed
    assert "evicted" in _queues(redis_client, cache.store)[2]


# -- s3fifo-a's own mechanics ------------------------------------------------------------------
def _s3a_meta(redis_client, store: Store) -> dict[str, str]:
    return redis_client.hgetall(store.keys.policy_aux("s3fifo-a", "meta"))


def test_s3fifo_a_small_queue_target_follows_the_ghost(redis_client, prefix):
    # The first eviction sets T to a tenth of the bytes held (115 -> 11): small (a, b: 25 bytes)
    # is over it, so a goes. a's return grows T by its size (21): small (b, 15) is now under it,
    # so main gives the next victim (c), where a fixed T would take b. c's return shrinks T by
    # 4 x 10, clamped to a twentieth of the bytes held (5): small gives the next one (b).
    sizes = {"a": 10, "b": 15, **{k: 10 for k in "cdefghijk"}}
    trace = [(k, sizes[k]) for k in "abcdefghijkac"]
    store = Store(redis_client, Keys(prefix), policy="s3fifo-a")
    model = make_model("s3fifo-a", 105, record_evictions=True)
    assert model.evicted is not None
    steps = [(0, 10, [], None), (10, 11, ["a"], 11), (11, 12, ["c"], 21), (12, 13, ["b"], 5)]
    for start, end, evicted, t in steps:
        got = replay_store(store, trace[start:end], 105, 1, start=start)
        before = len(model.evicted)
        for key, size in trace[start:end]:
            model.request(key, size)
        assert got[-1] == (False, evicted) and model.evicted[before:] == evicted
        meta = _s3a_meta(redis_client, store)
        assert model.T == t and (int(meta["T"]) if "T" in meta else None) == t


def test_s3fifo_a_main_is_ordered_by_hits_and_size(redis_client, prefix):
    # Main's score is L + hits x 2^24 // isqrt(isqrt(size)): 16 B weigh 2^23 a hit, 10 kB 2^24/10.
    # So x (10 kB, 3 hits) goes before y (16 B, 1 hit), and w (10 kB, 1 hit) before both: FIFO
    # would give z x y w, LFU z y w x. f stays in small when the warm-up settles.
    store = Store(redis_client, Keys(prefix), policy="s3fifo-a")
    model = make_model("s3fifo-a", 10**6, record_evictions=True)
    assert model.evicted is not None
    requests = [("f", 3000), ("z", 16), ("x", 10000), ("y", 16), ("w", 10000)]
    requests += [(k, 0) for k in "xxxyw"]
    for i, (key, size) in enumerate(requests):
        if not store.access(key, now=T0 + i):
            store.register(key, size, 1, now=T0 + i)
        model.request(key, size)

    def evict_one(expect: str) -> None:
        assert store.victims(1)[0].path == expect
        assert store.claim(expect, "evicted", deleting_files=False)[0] == "ok"
        model.evict_down_to(model.total - 1)
        assert model.evicted is not None and model.evicted[-1] == expect

    assert [e.path for e in store.victims(10)] == ["f", "z", "w", "x", "y"]
    for key in ("f", "z", "w"):
        evict_one(key)
    main = redis_client.zrange(store.keys.policy_aux("s3fifo-a", "main"), 0, -1, withscores=True)
    assert [(m[16:], int(p)) for m, p in main] == [("x", 3 * 1677721), ("y", 8388608)]
    # L is now w's score: a hit scores x again from there, 4 hits (8388605) stay under y, 5 not.
    assert int(_s3a_meta(redis_client, store)["L"]) == model.L == 1677721
    for i, order in enumerate((["x", "y"], ["y", "x"])):
        assert store.access("x", now=T0 + 20 + i) and model.request("x", 10000)
        assert [e.path for e in store.victims(10)] == order
    evict_one("y")


def test_s3fifo_a_removal_that_is_not_an_eviction(redis_client, prefix):
    # Expiry or removal takes an entry off its queue with none of an eviction's effects: no
    # promotions, no ghost entry (its return is new, in small), L and T unchanged.
    store = Store(redis_client, Keys(prefix), policy="s3fifo-a")
    keys = [f"k{(i * 7) % 23:02d}" if i % 2 else f"k{i % 3:02d}" for i in range(80)]
    replay_store(store, [(k, 5 + int(k[1:]) % 17) for k in keys], 100, 2)
    meta = _s3a_meta(redis_client, store)
    small = store.keys.policy_aux("s3fifo-a", "small")
    in_main = list(redis_client.hkeys(store.keys.policy_aux("s3fifo-a", "members")))
    in_small = redis_client.zrange(small, 0, -1)
    assert in_main and in_small
    for path, reason in ((in_main[0], "removed"), (in_small[-1], "expired")):
        assert store.claim(path, reason, deleting_files=False)[0] == "ok"
    after = _s3a_meta(redis_client, store)
    assert {k: after[k] for k in ("T", "L", "gb")} == {k: meta[k] for k in ("T", "L", "gb")}
    assert int(after["sb"]) + int(after["mb"]) == store.total_bytes()
    assert {e.path for e in store.victims(100)} == _tracked(store)
    store.register(in_main[0], 5, 1, now=T0 + 100)
    assert redis_client.zrange(small, -1, -1) == [in_main[0]]
    assert _s3a_meta(redis_client, store)["T"] == meta["T"]


@pytest.mark.parametrize("old,new", [("lru", "s3fifo-a"), ("s3fifo-a", "lfu"), ("lfu", "lru")])
def test_a_store_that_outlived_a_switch_feeds_no_policy_and_its_client_reads_again(
    settings, redis_client, root, old, new
):
    """A pipeline's client kept the policy it first read: after a switch its plays ran the
    old policy's hooks (lfu's set grew again under lru) and the new policy never saw them."""
    from workers.client import CacheClient

    workers = DiskCache(settings.with_(disk_cache_eviction_policy=old), redis_client)
    for i in range(6):
        make_tree(root, f"album{i}", files=1)
        workers.register(f"album{i}")
    workers.publish_config()
    client = CacheClient(
        settings.redis_url, redis_url=settings.redis_url, key_prefix=workers.keys.prefix
    )
    assert client.access("album1") and client.store.policy.name == old

    switched = DiskCache(settings.with_(disk_cache_eviction_policy=new), redis_client)
    switched.publish_config()  # the workers restarted with the new policy
    assert ensure_policy(switched.store) is True  # their next cleanup built its structures
    own = [switched.keys.policy, *workers.store.script_keys()[COMMON_KEYS:]]
    own += switched.store.script_keys()[COMMON_KEYS:]
    before = {key: redis_client.dump(key) for key in own}
    stale = Store(redis_client, workers.keys, policy=old)
    assert stale.access("album2") == STALE_HIT and stale.access_many(["album3", "nope"]) == [
        STALE_HIT,
        0,
    ]
    assert {key: redis_client.dump(key) for key in own} == before  # no policy was fed
    assert redis_client.zscore(workers.keys.lru, "album2") is not None  # the hit still counts
    assert counters(stale)[0]["hits"] == 3

    assert client.access("album1") is True  # answered 2: the client reads the policy again
    assert client.store.policy.name == new
    assert client.access("album4") is True
    if new != "lru":  # the new policy hears it (lru orders by cache:lru alone)
        assert {key: redis_client.dump(key) for key in own} != before
    client.close()


def test_no_store_feeds_the_structures_while_a_switch_rebuilds_them(
    redis_client, prefix, monkeypatch
):
    """The name changed only after the last batch: an old lfu client's hit between batches
    left its score in the rebuilt fifo queue, where it stayed last in the order for good."""
    from cachemgr import migrations

    keys = Keys(prefix)
    old = Store(redis_client, keys, policy="lfu")
    ensure_policy(old)
    replay_store(old, [(f"d{i}", 5) for i in range(6)] + [("d5", 5)] * 3, 1000, 2)
    new = Store(redis_client, keys, policy="fifo")
    real = migrations.rebuild_policy
    seen: list[Any] = []

    def between_batches(store: Store, batch: int = 1000) -> int:
        seen.append(redis_client.get(keys.policy_name))
        seen.append(old.access("d5"))  # a client of the old policy, mid-switch
        return real(store, batch)

    monkeypatch.setattr(migrations, "rebuild_policy", between_batches)
    assert ensure_policy(new) is True
    assert seen == ["lfu>fifo", STALE_HIT]
    assert redis_client.get(keys.policy_name) == "fifo"


def test_a_switch_a_crash_cut_short_is_done_again(redis_client, prefix):
    keys = Keys(prefix)
    old = Store(redis_client, keys, policy="lfu")
    ensure_policy(old)
    replay_store(old, [(f"d{i}", 5) for i in range(4)], 1000, 2)
    redis_client.set(keys.policy_name, "lfu>fifo")  # the rebuild died before its end
    assert ensure_policy(Store(redis_client, keys, policy="fifo")) is True
    assert redis_client.get(keys.policy_name) == "fifo"
    assert old.access("d1") == STALE_HIT


def test_workers_of_two_policies_hold_the_one_in_force_rather_than_switch_back_and_forth(
    settings, redis_client, root, caplog, monkeypatch
):
    """A rolling restart (lfu workers, then sieve ones), both alive for a while: each cleanup
    switched the policy to its worker's own, back and forth, rebuilding the structures each
    time and losing their history, and nothing said the workers disagreed."""
    from cachemgr import cleanup as cleanups
    from cachemgr import events as event_log
    from cachemgr.cleanup import cleanup
    from cachemgr.logs import Repeats
    from workers.client import CacheClient

    monkeypatch.setattr(cleanups, "_POLICY_HELD", Repeats(cleanups.POLICY_HELD_REPEAT_SECONDS))

    lfu = DiskCache(settings.with_(disk_cache_eviction_policy="lfu"), redis_client)
    sieve = DiskCache(settings.with_(disk_cache_eviction_policy="sieve"), redis_client)
    for i in range(20):
        make_tree(root, f"old{i:02d}", files=4)
        lfu.register(f"old{i:02d}")
    cleanup(lfu)  # lfu's structures built (books new: no switch)
    registry = lfu.registry
    registry.heartbeat(lfu.keys, "host-a:1", settings=lfu.settings)
    registry.heartbeat(sieve.keys, "host-b:2", settings=sieve.settings)
    sieve.publish_config()  # the newest workers published theirs
    for i in range(15):  # the new worker's registrations feed sieve's hooks, not lfu's
        make_tree(root, f"new{i:02d}", files=4)
        sieve.register(f"new{i:02d}")
    assert sieve.store.total_bytes() > settings.disk_cache_max_bytes
    plan = cleanup(sieve, dry_run=True)
    assert plan["policy_held"] == "lfu" and plan["policy_switch_pending"] is False
    # The in-force worker's cleanup first: it must see the other's registrations too.
    assert cleanup(lfu)["policy_held"] == "lfu"
    assert lfu.store.total_bytes() <= settings.disk_cache_max_bytes
    # Every tracked directory is in lfu's structures: none is out of eviction's reach.
    assert {e.path for e in lfu.store.victims(1000)} == _tracked(lfu.store)
    for _ in range(2):
        assert cleanup(sieve)["status"] == "done"
        assert redis_client.get(lfu.keys.policy_name) == "lfu"
    assert not [e for e in event_log.latest(lfu.store, 100) if e["event"] == "policy_switched"]
    assert "cleanups act by the one in force, lfu" in caplog.text
    # Said once in a while by a process, not by every pass (136 lines in four minutes).
    said_held = [
        r.getMessage() for r in caplog.records
        if r.levelname == "WARNING" and "(this one sieve" in r.getMessage()
    ]  # fmt: skip
    assert len(said_held) == 1, said_held
    # A pipeline client follows the structures in force, not the newest publisher's policy.
    client = CacheClient(
        settings.redis_url, redis_url=settings.redis_url, key_prefix=lfu.keys.prefix
    )
    try:
        assert client.store.policy.name == "lfu"
    finally:
        client.close()
    warnings = lfu.stats()["warnings"]
    said = [w for w in warnings if "live workers run different settings" in w]
    assert len(said) == 1
    # Not "the node's workers run with sieve": one of them runs lfu, as this process does.
    assert not any("this process has DISK_CACHE_EVICTION_POLICY" in w for w in warnings)
    neither = DiskCache(settings.with_(disk_cache_eviction_policy="lru"), redis_client)
    # ... and where it runs none of theirs, both are named, not the last publisher's alone.
    assert any("this process has DISK_CACHE_EVICTION_POLICY=lru but the node's workers run "
               "with lfu or sieve:" in w for w in neither.stats()["warnings"])  # fmt: skip
    assert "DISK_CACHE_EVICTION_POLICY: lfu (host-a:1), sieve (host-b:2)" in said[0]
    # It said the stats show the values published last, which the policy's is not.
    assert "policy in force while a worker of it is alive (the stats show that one)" in said[0]
    # The stats name the policy cleanups act by, not the one published last.
    assert sieve.stats()["eviction_policy"] == "lfu"
    # A rebuild cut short (lfu>lfu) still holds: it is not taken for a switch under way.
    redis_client.set(lfu.keys.policy_name, "lfu>lfu")
    cleanup(sieve)
    assert redis_client.get(lfu.keys.policy_name) == "lfu"
    registry.mark_down(lfu.keys, "host-a:1")  # the last lfu worker stops: the switch goes on
    cleanup(sieve)
    assert redis_client.get(lfu.keys.policy_name) == "sieve"
    assert [e["event"] for e in event_log.latest(lfu.store, 100)].count("policy_switched") == 1
    after = sieve.stats()
    assert not any("different settings" in w for w in after["warnings"])
    assert after["eviction_policy"] == "sieve"


def test_a_plan_right_after_a_switch_goes_by_the_policy_in_force(settings, redis_client, root):
    """The new policy's structures are built by the real run: the plan found no victims in
    them and planned nothing while the disk was over its quota."""
    from cachemgr.cleanup import cleanup

    lfu = DiskCache(settings.with_(disk_cache_eviction_policy="lfu"), redis_client)
    for i in range(30):
        make_tree(root, f"d{i:02d}", files=4)
        lfu.register(f"d{i:02d}")
    migrations_ensure = ensure_policy(lfu.store)
    assert migrations_ensure is False  # new books: built, not switched
    fifo = DiskCache(settings.with_(disk_cache_eviction_policy="fifo"), redis_client)
    plan = cleanup(fifo, dry_run=True)
    assert plan["policy_switch_pending"] is True and plan["evict"]["count"] > 0
    assert redis_client.get(lfu.keys.policy_name) == "lfu"  # a plan changed nothing


def test_the_pipeline_client_runs_the_policy_in_force_with_no_config_published(
    settings, redis_client, root
):
    """No config published (or gone: a FLUSHDB, a forgotten node): the client ran lru over
    books of sieve, and, once it had kept a config, never followed a switch (every hit fed
    no policy)."""
    from workers.client import CacheClient

    sieve = DiskCache(settings.with_(disk_cache_eviction_policy="sieve"), redis_client)
    make_tree(root, "album", files=1)
    sieve.register("album")
    ensure_policy(sieve.store)
    redis_client.delete(sieve.keys.config)
    client = CacheClient(
        settings.redis_url, redis_url=settings.redis_url, key_prefix=sieve.keys.prefix
    )
    try:
        assert client.store.policy.name == "sieve"
        lfu = DiskCache(settings.with_(disk_cache_eviction_policy="lfu"), redis_client)
        assert ensure_policy(lfu.store) is True  # switched while no config is published
        assert client.access("album") is True  # a stale hit: the client reads again
        assert client.store.policy.name == "lfu"
    finally:
        client.close()


def test_lfu_breaks_ties_within_a_second_by_recency_as_its_model_does(redis_client, prefix):
    """The score kept whole seconds: two albums booked in one second tied, and Redis took the
    one whose name sorts first, the newest download when its name did."""
    store = Store(redis_client, Keys(prefix), policy="lfu")
    model = make_model("lfu", 100, record_evictions=True)
    for key, now in (("zz_old", T0 + 0.1), ("aa_new", T0 + 0.4)):
        assert store.register(key, 40, 1, now=now)[0] == "ok"
        model.request(key, 40, now=now)
    assert [v.path for v in store.victims(2, 0)] == ["zz_old", "aa_new"]
    model.request("third", 40, now=T0 + 0.9)  # past the capacity: the model evicts one
    assert model.evicted == ["zz_old"]


def test_lfu_model_takes_times_as_redis_gets_them(redis_client, prefix):
    """Times 1e-7 s apart are one microsecond to Redis (now_str), and were two to the model:
    the tie went to the name in Redis, to the time in the model."""
    import numpy as np

    store = Store(redis_client, Keys(prefix), policy="lfu")
    model = make_model("lfu", 100, record_evictions=True)
    for key, now in (("a", T0 + 0.1000004), ("b", T0 + 0.1000001)):
        assert store.register(key, 40, 1, now=now)[0] == "ok"
        model.request(key, 40, now=now)
    model.request("c", 40, now=np.int32(T0 + 1))  # a numpy time: no overflow
    assert model.evicted == [store.victims(1, 0)[0].path] == ["a"]
