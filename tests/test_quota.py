"""How much a quota pass frees: the quota, the free-space floor, and the hold after a rebuild."""

from __future__ import annotations

import logging
import shutil
import time
from collections import namedtuple

import pytest

from cachemgr import DiskCache, quota
from cachemgr.cleanup import cleanup
from cachemgr.continuation import continuation
from cachemgr.logs import Repeats
from cachemgr.passes import enforce_quota
from cachemgr.policies import POLICIES
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree
from tests.test_core import UNIT, Clock, fill

DiskUsage = namedtuple("DiskUsage", "total used free")


def fixed_disk(monkeypatch: pytest.MonkeyPatch, total: int, free: int) -> None:
    """A disk whose free space deletions do not lift (hard links to a library elsewhere,
    files held open, a disk filled by others), and that other processes' writes do not move."""
    monkeypatch.setattr(shutil, "disk_usage", lambda _: DiskUsage(total, total - free, free))


def held_books(cache: DiskCache, root, n: int) -> list[str]:
    """n albums on kept books, oldest first, with eviction held as after a rebuild."""
    reconcile(cache)  # books kept from now on: a cleanup does not rebuild them
    cache.clock = Clock()
    names = fill(cache, root, n, cache.clock)
    cache.client.set(cache.keys.evict_hold, f"{time.time() + 600:.3f}", ex=600)
    return names


def test_a_free_space_floor_deletions_cannot_lift_does_not_empty_the_cache(
    settings, redis_client, root, monkeypatch, caplog
):
    fixed_disk(monkeypatch, 10**12, 10**6)
    clock = Clock()
    sized = DiskCache(settings, redis_client, clock=clock)
    for i in range(10):
        make_tree(root, f"album{i:02d}", files=1)
        sized.register(f"album{i:02d}")
        clock.t += 1
    size = sized.info("album00").size_bytes
    floor = 10**6 + 3 * size
    low = settings.with_(disk_cache_min_free_bytes=floor, disk_cache_max_bytes=100 * size)
    with caplog.at_level("INFO", logger="cachemgr"):
        result = enforce_quota(DiskCache(low, redis_client, clock=clock))
    # Far below the threshold: the line says what asks for the eviction (it read as the quota).
    assert f"the disk {3 * size} bytes short of its free-space floor: evicting" in caplog.text
    # One round sized by the floor (3 albums), not round after round until nothing is left.
    assert [r.path for r in result.removed] == ["album00", "album01", "album02"]
    assert sized.store.count_entries() == 7
    # Still short: said, not left to a warning that promises the next cleanup makes room.
    assert result.short.startswith(f"the disk still {3 * size} bytes short of its free-space")
    warnings = DiskCache(low, redis_client, clock=clock).stats()["warnings"]
    assert any("the next cleanup evicts to make room" in w for w in warnings)  # no cleanup yet
    cleanup(DiskCache(low, redis_client, clock=clock), sweep_expired=False)
    warnings = DiskCache(low, redis_client, clock=clock).stats()["warnings"]
    assert any("the last cleanup could not make room (the disk still" in w for w in warnings)


def test_a_floor_the_pins_keep_unmet_blames_the_pins(
    settings, redis_client, root, monkeypatch, caplog
):
    """The disk short of its floor with every download pinned: the warning blamed
    "something other than the cache", which the pins were not."""
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(settings, redis_client)
    for i in range(3):
        make_tree(root, f"album{i}", files=1)
        cache.register(f"album{i}")
        cache.pin(f"album{i}", 3600)
    low = settings.with_(disk_cache_min_free_bytes=10**6 + 10_000)  # the pins hold more
    result = enforce_quota(DiskCache(low, redis_client))
    assert result.removed == [] and result.skipped_pinned
    assert result.short.startswith("the disk still 10000 bytes short of its free-space floor")
    assert "skipped: pinned 3" in result.short
    assert "the directories skipped hold the rest" in caplog.text
    assert "something else fills that disk" not in caplog.text
    caplog.clear()  # short by more than the whole cache holds: not the pins' doing
    enforce_quota(DiskCache(settings.with_(disk_cache_min_free_bytes=2 * 10**6), redis_client))
    assert "something else fills that disk" in caplog.text


def test_a_floor_deletions_cannot_lift_takes_as_few_through_bounded_continuations(
    settings, redis_client, root, monkeypatch
):
    fixed_disk(monkeypatch, 10**12, 10**6)
    taken = {}
    for bound in (1000, 1):
        cache = DiskCache(settings, redis_client)
        for i in range(10):
            make_tree(root, f"album{i:02d}", files=1)
            cache.register(f"album{i:02d}")
        size = cache.info("album00").size_bytes
        low = DiskCache(
            settings.with_(
                disk_cache_min_free_bytes=10**6 + 3 * size, disk_cache_max_evictions_per_run=bound
            ),
            redis_client,
        )
        # As the worker chains its tasks (workers.tasks._cleanup): each bounded run hands
        # what it still owed to the next; measured again, the floor asked for it all again.
        went: list[str] = []
        rest: dict | None = {}
        while rest is not None and len(went) < 20:
            result = cleanup(low, **rest)
            went += result["evict"]["paths"]
            rest = continuation(result)
        taken[bound] = went
    assert taken[1000] == ["album00", "album01", "album02"]
    assert len(taken[1]) == 3  # it took all ten, one task after another


def test_a_directory_gone_from_disk_frees_nothing_towards_the_floor(
    settings, redis_client, root, monkeypatch
):
    """A tracked directory deleted by hand leaves the books but frees no disk space: counted
    towards the floor's shortfall, it left the disk short after the pass."""
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(
        settings.with_(disk_cache_min_free_bytes=10**6 + UNIT + UNIT // 2), redis_client
    )
    cache.clock = Clock()
    fill(cache, root, 5, cache.clock)
    shutil.rmtree(root / "album00")
    result = enforce_quota(cache)
    assert result.vanished == ["album00"]
    assert [r.path for r in result.removed] == ["album01", "album02"]
    assert not (root / "album02").exists() and (root / "album03").is_dir()


def test_a_held_pass_on_a_disk_short_of_its_floor_frees_the_shortfall_only(
    settings, redis_client, root, monkeypatch
):
    """The disk's shortfall lifts the hold after a rebuild; the pass went on down to the
    quota's target, taking albums whose pins had gone with the old books."""
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=10**6 + UNIT + 1), redis_client)
    names = held_books(cache, root, 22)  # past the threshold: the quota would take six
    result = cleanup(cache, automatic=True, sweep_expired=False)
    assert result["evict"]["paths"] == names[:2]
    assert result["evict_held_until"] > time.time()
    assert result["more"] is False and continuation(result) is None
    monkeypatch.undo()
    held = cleanup(cache, periodic=True, sweep_expired=False)  # room again: held
    assert held["evict"]["paths"] == [] and held["evict_held_until"] > time.time()
    assert cleanup(cache, sweep_expired=False)["evict"]["count"] == 20 - 16  # manual: target


def test_a_hold_that_gives_way_says_so_once_in_a_while(
    settings, redis_client, root, monkeypatch, caplog
):
    """Each registration's quota pass said it: a WARNING line per download while held."""
    monkeypatch.setattr(quota, "_REPEATS", Repeats(600))
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=10**6 + UNIT + 1), redis_client)
    held_books(cache, root, 22)
    with caplog.at_level(logging.DEBUG, logger="cachemgr"):
        for _ in range(3):
            assert cleanup(cache, automatic=True, sweep_expired=False)["evict"]["count"] == 2
    said = [r.levelname for r in caplog.records if "after a rebuild, but" in r.getMessage()]
    assert said == ["WARNING", "DEBUG", "DEBUG"]


def test_a_held_pass_with_no_floor_set_frees_up_to_five_percent(cache, root, monkeypatch):
    total = 10**9
    fixed_disk(monkeypatch, total, total // 20 - UNIT - UNIT // 2)  # 1.5 albums short of 5%
    names = held_books(cache, root, 22)
    result = cleanup(cache, periodic=True, sweep_expired=False)
    assert result["evict"]["paths"] == names[:2]
    fixed_disk(monkeypatch, total, total // 20)
    assert cleanup(cache, periodic=True, sweep_expired=False)["evict"]["paths"] == []


def test_a_cleanup_that_rebuilt_the_books_on_a_short_disk_frees_the_shortfall_only(
    settings, redis_client, root, prefix, monkeypatch
):
    """Held for having rebuilt the books, even when the hold's key (a second, when the
    rebuild took nearly an interval) lapsed before the pass read it: it evicted to the target."""
    from cachemgr import migrations
    from tests.conftest import cleanup_prefix

    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=10**6 + UNIT + 1), redis_client)
    reconcile(cache)  # the books are kept: the root's marker says so
    cleanup_prefix(redis_client, prefix)  # FLUSHALL
    for i in range(22):
        make_tree(root, f"album{i:02d}", files=4, size=4096)
    ensure_policy = migrations.ensure_policy

    def lapse(store, now=None):  # the hold's key lapses between the rebuild and the quota pass
        redis_client.delete(cache.keys.evict_hold)
        return ensure_policy(store, now)

    monkeypatch.setattr(migrations, "ensure_policy", lapse)
    fixed_disk(monkeypatch, 10**12, 10**6)
    result = cleanup(cache, sweep_expired=False)  # manual, but it rebuilt the books itself
    assert result["rebuilt"] is True and result["evict"]["count"] == 2
    assert result["evict_held_until"] > time.time()
    # Stopped at the shortfall above the threshold by design: not a quota pass that fell
    # short. The disk stays short (deletions do not lift it here), and that is said.
    short = result["evict"]["short"]
    assert short.startswith("the disk still 20481 bytes short of its free-space floor"), short
    warnings = cache.stats()["warnings"]
    assert not any("could not bring it down" in w for w in warnings)
    assert any("the last cleanup could not make room" in w for w in warnings), warnings


def test_a_stopped_scheduler_still_frees_a_disk_short_of_its_floor(
    settings, redis_client, root, monkeypatch, caplog
):
    """Stopped, the scheduler let no automatic pass evict anything, the disk's shortfall
    included: a chaos run filled the cache to 11 times its quota in 73 s."""
    monkeypatch.setattr(quota, "_REPEATS", Repeats(600))  # said by none before this test
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=10**6 + UNIT + 1), redis_client)
    reconcile(cache)
    cache.clock = Clock()
    names = fill(cache, root, 22, cache.clock)  # past the threshold: the quota would take six
    cache.client.zadd(cache.keys.lru, {names[5]: 1.0})  # its TTL ran out long ago
    cache.set_scheduler(False)
    with caplog.at_level(logging.WARNING, logger="cachemgr"):
        plan = cleanup(cache, automatic=True, dry_run=True)  # says nothing in the log
        assert plan["evict"]["paths"] == [names[5], names[0]]
        # A sweep alone (enforce=False) has nothing to do for the disk: skipped, as before.
        assert cleanup(cache, periodic=True, enforce=False)["reason"] == "scheduler stopped"
        result = cleanup(cache, automatic=True)
        assert cleanup(cache, automatic=True)["evict"]["count"] == 2  # still short: again
    assert result["status"] == "done" and result["sweep"]["count"] == 0  # expiry waits
    assert result["evict"]["paths"] == [names[5], names[0]]  # the shortfall, by the policy
    assert result["evict_held_until"] is None and continuation(result, scheduled=True) is None
    said = [r.getMessage() for r in caplog.records if r.__dict__.get("event") == "stopped_evicting"]
    assert said == [
        "the scheduler is stopped, but the disk is short of free space: evicting the shortfall "
        "only (`cachemgr scheduler start` for the rest)"
    ]  # once in a while, not at every pass
    # Started, and stopped again within 10 minutes: the new stop says so too (it did not).
    cache.set_scheduler(True)
    cleanup(cache, automatic=True, dry_run=True)  # a scheduled pass sees it running
    cache.set_scheduler(False)
    with caplog.at_level(logging.WARNING, logger="cachemgr"):
        assert cleanup(cache, automatic=True)["evict"]["count"] == 2
    said = [r for r in caplog.records if r.__dict__.get("event") == "stopped_evicting"]
    assert len(said) == 2
    monkeypatch.undo()  # room again: nothing goes
    assert cleanup(cache, periodic=True)["reason"] == "scheduler stopped"
    assert cache.store.count_entries() == 16


def test_a_stopped_scheduler_keeps_to_the_floor_set_as_a_running_one_does(
    cache, root, monkeypatch
):
    """With no floor set, a stopped scheduler evicted for 5% free, which a running one never
    does: on a disk filled by others, pass after pass, the whole cache went."""
    total = 10**9
    fixed_disk(monkeypatch, total, total // 50)  # 2% free: others' data
    reconcile(cache)
    fill(cache, root, 19, Clock())  # past the threshold, under twice the quota
    assert cleanup(cache, automatic=True, dry_run=True)["evict"]["count"] == 3  # running
    cache.set_scheduler(False)
    assert cleanup(cache, periodic=True)["reason"] == "scheduler stopped"
    assert cleanup(cache, automatic=True)["reason"] == "scheduler stopped"
    assert cache.store.count_entries() == 19


def test_a_stopped_scheduler_still_evicts_past_twice_the_quota(cache, root, caplog):
    from cachemgr.quota import HOLD_CEILING

    reconcile(cache)
    cache.clock = Clock()
    ceiling = HOLD_CEILING * cache.settings.disk_cache_max_bytes
    names = fill(cache, root, ceiling // UNIT + 4, cache.clock)
    cache.set_scheduler(False)
    with caplog.at_level(logging.INFO, logger="cachemgr"):
        result = cleanup(cache, periodic=True)  # beat's, as a registration's: no audits
    # Said as what it is, not as an eviction down to the target.
    assert "held: the bytes past 2 times the quota only" in caplog.text
    assert result["evict"]["paths"] == names[:4] and "untracked" not in result
    assert cache.store.total_bytes() == ceiling - ceiling % UNIT
    assert cache.stats()["last_cleanup"].get("periodic_time") is None  # not beat's run
    assert cleanup(cache, automatic=True)["reason"] == "scheduler stopped"  # below: held
    cache.set_scheduler(True)
    assert cleanup(cache, automatic=True)["evict"]["count"] > 0  # down to the target


def test_a_held_pass_cut_short_goes_on_held(settings, redis_client, root, monkeypatch):
    """The continuation of a manual cleanup held for its own rebuild ran as manual: not held,
    it went on towards the target after the disk had room again."""
    fixed_disk(monkeypatch, 10**12, 10**6)
    cache = DiskCache(
        settings.with_(
            disk_cache_min_free_bytes=10**6 + 2 * UNIT + 1, disk_cache_max_evictions_per_run=1
        ),
        redis_client,
    )
    names = held_books(cache, root, 22)
    first = cleanup(cache, automatic=True, sweep_expired=False)
    assert first["evict"]["paths"] == names[:1]
    rest = continuation(first)
    assert rest is not None and rest["automatic"] is True and rest["resume"] is True
    monkeypatch.undo()  # room again: the hold stands
    assert cleanup(cache, sweep_expired=False, **rest)["evict"]["paths"] == []


def test_a_download_larger_than_the_eviction_target_is_said_when_registered(cache, root, caplog):
    """A 3 MB download under a 2 MiB quota registered as any other and was evicted two
    seconds later, with INFO lines only: the quota too small for the downloads, unsaid."""
    target = cache.settings.target_bytes
    make_tree(root, "huge", files=target // 4096 + 2)
    make_tree(root, "small", files=1)
    done = cache.register("huge")
    assert done["status"] == "registered"
    assert "more than the eviction target" in done["warning"]
    assert "raise the quota" in done["warning"]
    assert "more than the eviction target" in caplog.text
    assert "warning" not in cache.register("small")


def test_beats_cleanup_books_a_download_that_grew_after_its_registration(
    settings, redis_client, root, caplog
):
    """register_completed_download took an album still being written: the books kept its
    first 100 KB while 3 MB filled the disk, past the quota with the stats saying ok. Picked
    by registration, not by play: a hundred plays of other albums hid it."""
    cache = DiskCache(settings.with_(disk_cache_max_bytes=10**9), redis_client)
    make_tree(root, "done", files=1)
    cache.register("done")
    # Registered before the window (two cleanup intervals), within the TTL.
    idle = 3 * cache.settings.disk_cache_cleanup_interval
    cache.client.zadd(cache.keys.recent, {"done": time.time() - idle})
    for i in range(120):
        make_tree(root, f"p{i:03d}", files=1)
        cache.register(f"p{i:03d}")
    make_tree(root, "writing", files=1)
    cache.register("writing")
    cleanup(cache)  # the books are kept from now on (no reconcile walks the disk below)
    for i in range(120):  # plays of the others, each after the download's registration
        cache.access(f"p{i:03d}")
    first = {name: cache.info(name).size_bytes for name in ("writing", "done")}
    make_tree(root / "writing", "disc2", files=5)  # the rest of the download arrives
    make_tree(root / "done", "extra", files=2)  # changed too, but booked long ago
    done = cleanup(cache, periodic=True)
    assert done["rechecked"] == {"checked": 100, "resized": 1}
    assert cache.info("writing").size_bytes >= first["writing"] + 5 * 4096
    assert cache.info("done").size_bytes == first["done"]  # outside the window: reconcile's
    booked = [r[0] for r in cache.store.all_records().values()]
    assert cache.store.total_bytes() == sum(booked)
    assert "writing changed since it was booked" in caplog.text
    assert cleanup(cache)["rechecked"] is None  # a manual cleanup does not rescan


def test_a_rescan_never_overwrites_a_newer_registration_nor_a_locked_directory(cache, root):
    """A scan that outlived its moment: the directory removed and registered anew meanwhile
    (the books took the stale size), or being registered or deleted by another worker now."""
    make_tree(root, "a", files=1)
    cache.register("a")
    entry = cache.info("a")
    stale = (entry.size_bytes, entry.file_count, entry.registered)
    make_tree(root, "a/more", files=2)
    cache.register("a")  # registered again since the scan began, at another size
    assert cache.store.resize("a", 10**6, 9, was=stale) is None
    assert cache.info("a").size_bytes > entry.size_bytes  # the newer registration's
    lock = cache.lock("a")
    assert lock.acquire()  # a registration or deletion holds it
    try:
        now = cache.info("a")
        fresh = (now.size_bytes, now.file_count, now.registered)
        assert cache.store.resize("a", 10**6, 9, was=fresh) is None
        assert cache.store.resize("a", 10**6, 9, was=fresh, lock_token=lock.token)
    finally:
        lock.release()
    assert cache.info("a").size_bytes == 10**6


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_failed_deletion_does_not_pass_over_the_next_candidate(
    settings, redis_client, root, policy
):
    """Put back among the newest (sieve, 2q, gdsf), the failed one left its place to the next
    candidate, which the pass stepped over: with one entry per batch, d1 stayed and d4 went."""
    tight = settings.with_(
        disk_cache_eviction_policy=policy, disk_cache_max_bytes=163840, disk_cache_batch_size=1
    )
    cache = DiskCache(tight, redis_client)
    for name in ("d0", "d1", "d2", "d3", "d4"):
        make_tree(root, name, files=10)
        cache.register(name)

    def refused(path: str) -> None:
        if path == "d0":
            raise PermissionError(13, "Permission denied")

    cache.before_delete = refused
    result = enforce_quota(cache)
    assert [r.path for r in result.removed] == ["d1", "d2", "d3"]
    assert result.errors == ["could not delete 'd0': Permission denied"]
    assert cache.store.tracked(["d0", "d4"]) == [True, True]


def test_a_quota_pass_that_finds_a_cleanup_running_is_sent_again_once(cache, root):
    """Dropped, the passes of the registrations booked during a cleanup (or while a killed
    worker's cleanup lock stood) left usage over the quota until beat's next cleanup."""
    from cachemgr.cleanup import CLEANUP_BUSY
    from cachemgr.locks import Lock

    held = Lock(cache.client, cache.keys.cleanup_lock, 5000)
    assert held.acquire()
    try:
        first = cleanup(cache, automatic=True, sweep_expired=False)
        second = cleanup(cache, automatic=True, sweep_expired=False)
        manual = cleanup(cache, sweep_expired=False)
        # The first's, sent again, finds the key it set still there (held for two
        # countdowns, a worker's clock early or not): it goes on waiting, the others not.
        rest = continuation(first, scheduled=True)
        assert rest == {"resume": False, "automatic": True, "again": True}
        chained = cleanup(cache, sweep_expired=False, **rest)
        third = cleanup(cache, automatic=True, sweep_expired=False)
    finally:
        held.release()
    assert first == {"status": "skipped", "reason": CLEANUP_BUSY, "again": True}
    assert second["again"] is False and "again" not in manual
    assert chained["again"] is True and third["again"] is False
    assert continuation(second, scheduled=True) is None and continuation(manual) is None
    # Another pass that runs leaves the chain its slot: one chain waits at a time (freed by
    # every cleanup, each started a chain of its own: hundreds polling a busy lock at once).
    assert cleanup(cache, automatic=True, sweep_expired=False)["status"] == "done"
    assert cache.client.exists(cache.keys.quota_again)
    # The chain's own run frees it: the next that waits starts anew.
    assert cleanup(cache, sweep_expired=False, **rest)["status"] == "done"
    assert not cache.client.exists(cache.keys.quota_again)


def test_a_quota_pass_behind_a_killed_workers_cleanup_lock_runs_once_it_lapses(
    worker, pipeline, settings, redis_client, root
):
    from workers import tasks

    cache = DiskCache(settings, redis_client)
    tasks.configure(cache)
    fill(cache, root, 30)  # past the threshold
    assert cache.store.total_bytes() > cache.settings.threshold_bytes
    cache.client.set(cache.keys.cleanup_lock, "a-killed-worker", px=3000)
    first = pipeline.send("enforce_quota", automatic=True).get(timeout=20)
    assert first["status"] == "skipped" and first["continued"], first
    deadline = time.monotonic() + 20
    while cache.store.total_bytes() > cache.settings.target_bytes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.store.total_bytes() <= cache.settings.target_bytes


def test_a_directory_that_cannot_be_deleted_is_said_once_in_a_while_and_counted_always(
    cache, root, monkeypatch, caplog
):
    """A download with a mount point inside logged an ERROR at every quota pass, which each
    met it first again: 479 lines a minute."""
    import logging

    from cachemgr import deletion
    from cachemgr.logs import Repeats

    monkeypatch.setattr(deletion, "_REPEATS", Repeats(deletion.DELETE_FAILED_REPEAT_SECONDS))
    fill(cache, root, 30)

    def busy(path: str) -> None:
        if path == "album00":
            raise OSError(16, "Device or resource busy")

    cache.before_delete = busy
    caplog.set_level(logging.INFO, logger="cachemgr")
    for _ in range(3):
        result = enforce_quota(cache)
        assert result.errors == ["could not delete 'album00': Device or resource busy"]
        fill(cache, root, 30)  # over the quota again
    said = [r for r in caplog.records if r.getMessage().startswith("could not delete album00")]
    assert [r.levelname for r in said] == ["ERROR"]


def test_a_quota_pass_short_with_nothing_skipped_names_the_cause(cache, caplog):
    """It said "(skipped: pinned 0, locked 0, young 0, could not delete 0)" and no cause: the
    usage had grown with downloads booked while it ran, or its choices had been played."""
    import logging

    from cachemgr.quota import said_short
    from cachemgr.records import PassResult

    caplog.set_level(logging.WARNING, logger="cachemgr")
    said_short(cache, PassResult("evict", usage_after=10**9), True, 0)
    said_short(cache, PassResult("evict", usage_after=10**9, skipped_changed=["a", "b"]), True, 0)
    said_short(cache, PassResult("evict", usage_after=10**9, skipped_pinned=["p"]), True, 0)
    lines = [r.getMessage() for r in caplog.records if "could not free enough" in r.getMessage()]
    assert lines[0].endswith(
        "could not delete 0); nothing was kept back: downloads booked while it ran (a quota "
        "pass follows), or books that count more than they hold (`cachemgr reconcile`)"
    )
    assert lines[1].endswith("; 2 it chose were played or booked again meanwhile")
    assert lines[2].endswith("(skipped: pinned 1, locked 0, young 0, could not delete 0)")


def test_a_free_space_floor_of_the_whole_disk_is_refused_and_else_ignored(
    settings, redis_client, root, monkeypatch, caplog
):
    """DISK_CACHE_MIN_FREE_BYTES=1PB on a 270 GB disk was taken: every cleanup evicted every
    download, each new one right after its registration, blaming "something else fills that
    disk"."""
    from cachemgr.paths import BOOKS_MARKER
    from cachemgr.settings import Settings, SettingsError

    fixed_disk(monkeypatch, 10**9, 10**8)
    env = {"DISK_CACHE_ROOT": str(root), "DISK_CACHE_MIN_FREE_BYTES": "1GB"}
    # Not before the root is marked: it may be the bare mount point of a disk not mounted.
    assert Settings.from_env(env).check_floor("1GB")
    (root / BOOKS_MARKER).write_text("books: cache:*\n")
    with pytest.raises(SettingsError, match=r"^DISK_CACHE_MIN_FREE_BYTES=1GB: not less than "
                       r"the whole disk holding DISK_CACHE_ROOT \(1000000000 bytes\)"):  # fmt: skip
        Settings.from_env(env).check_floor("1GB")  # a worker's start
    assert Settings.from_env(env)  # the API's and the CLI's: they show the workers' floor
    assert Settings.from_env({**env, "DISK_CACHE_MIN_FREE_BYTES": "999MB"}).check_floor()
    (root / BOOKS_MARKER).unlink()
    # A worker running since a smaller disk was mounted: the floor is ignored, said.
    for i in range(3):
        make_tree(root, f"album{i}")
        DiskCache(settings, redis_client).register(f"album{i}")
    whole = DiskCache(settings.with_(disk_cache_min_free_bytes=10**9), redis_client)
    with caplog.at_level("ERROR", logger="cachemgr"):
        result = cleanup(whole)
    assert result["evict"]["count"] == 0 and whole.store.count_entries() == 3
    assert "DISK_CACHE_MIN_FREE_BYTES=1000000000 is ignored: not less than" in caplog.text
    stats = whole.stats()
    assert stats["quota_status"] == "ok"
    assert any("DISK_CACHE_MIN_FREE_BYTES (1000000000) is ignored" in w for w in stats["warnings"])


def test_beat_back_from_an_outage_rechecks_what_was_registered_while_it_was_down(
    settings, redis_client, root
):
    """Its window was two intervals back from now: a download registered while beat was down
    (longer than that), grown since, stayed booked at its first size until a reconcile."""
    cache = DiskCache(settings.with_(disk_cache_max_bytes=10**9), redis_client)
    interval = cache.settings.disk_cache_cleanup_interval
    make_tree(root, "written-while-down", files=1)
    cache.register("written-while-down")
    cleanup(cache)  # the books are kept from now on
    now = time.time()
    cache.client.zadd(cache.keys.recent, {"written-while-down": now - 3 * interval})
    cache.client.hset(cache.keys.last_cleanup, "periodic_time", f"{now - 5 * interval:.3f}")
    first = cache.info("written-while-down").size_bytes
    make_tree(root / "written-while-down", "disc2", files=3)
    assert cleanup(cache, periodic=True)["rechecked"]["resized"] == 1
    assert cache.info("written-while-down").size_bytes >= first + 3 * 4096


def test_a_burst_of_registrations_past_the_threshold_sends_one_quota_pass(cache, caplog):
    """Each registration past the threshold sent a quota pass: a burst of a thousand queued a
    thousand, each taking the lock in turn to find nothing to do. One waits to weigh the
    usage; the registrations booked before it does are counted by it."""
    from cachemgr.quota import send_quota_pass

    due, sent = {"over_threshold": True}, []

    def send() -> None:
        sent.append(1)

    assert send_quota_pass(cache, {"over_threshold": False}, send) is False and not sent
    assert [send_quota_pass(cache, due, send) for _ in range(5)] == [True] + [False] * 4
    assert len(sent) == 1
    # The pass takes the lock and weighs the usage: the next registration past sends again.
    assert cleanup(cache, automatic=True, sweep_expired=False)["status"] == "done"
    assert send_quota_pass(cache, {"low_disk": True}, send) is True and len(sent) == 2
    # Skipped (the scheduler stopped, a worker switched off, the root being adopted...), it
    # weighed nothing: the next one is sent (the reconcile's that adopted, among them).
    cache.set_scheduler(False)
    with caplog.at_level(logging.INFO, logger="cachemgr"):
        assert cleanup(cache, automatic=True, sweep_expired=False)["reason"] == "scheduler stopped"
        assert cleanup(cache, periodic=True)["reason"] == "scheduler stopped"
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "cleanup_skipped"]
    why = "skipped: the scheduler is stopped (`cachemgr scheduler start`)"
    # Celery's trace line alone said it
    assert said == [f"a registration's quota pass {why}", f"periodic cleanup {why}"]
    cache.set_scheduler(True)
    assert send_quota_pass(cache, due, send) is True and len(sent) == 3
    off = DiskCache(cache.settings.with_(enable_disk_cache_management=False), cache.client)
    assert cleanup(off, automatic=True, sweep_expired=False)["status"] == "disabled"
    assert send_quota_pass(cache, due, send) is True and len(sent) == 4
    # Behind a long cleanup, the passes that find it running leave the key: the chain's
    # retry weighs later, and the registrations meanwhile send nothing more.
    from cachemgr.cleanup import CLEANUP_BUSY
    from cachemgr.locks import Lock

    held = Lock(cache.client, cache.keys.cleanup_lock, 5000)
    assert held.acquire()
    try:
        busy = [cleanup(cache, automatic=True, sweep_expired=False) for _ in range(3)]
        assert {b["reason"] for b in busy} == {CLEANUP_BUSY}
        assert [send_quota_pass(cache, due, send) for _ in range(3)] == [False] * 3
    finally:
        held.release()
    assert len(sent) == 4
    # A send that failed (the broker away) stands for nothing.
    cleanup(cache, automatic=True, sweep_expired=False)

    def fails() -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        send_quota_pass(cache, due, fails)
    assert send_quota_pass(cache, due, send) is True and len(sent) == 5
    # One lost with its broker stands for QUOTA_SENT_SECONDS, no longer.
    assert 0 < cache.client.pttl(cache.keys.quota_sent) <= 10_000


def test_a_pass_sent_while_a_cleanup_ran_does_not_hold_back_the_next_one(cache, monkeypatch):
    """A registration's pass that found a cleanup running waited 2 s, and cache:quota_sent
    kept every registration meanwhile from sending one: the cleanup ended a moment later and
    usage ran to twice the quota before anything weighed it (a helper's chaos run: 1.95x).
    The end of a cleanup clears it; the rest of a bounded pass goes on at once."""
    from cachemgr import cleanup as cleanups
    from cachemgr.continuation import delay
    from cachemgr.quota import send_quota_pass

    due, sent = {"over_threshold": True}, []
    real = cleanups.enforce_quota

    def registered_meanwhile(*args, **kwargs):  # a registration's pass sent mid-cleanup
        assert send_quota_pass(cache, due, lambda: sent.append(1)) is True
        return real(*args, **kwargs)

    monkeypatch.setattr(cleanups, "enforce_quota", registered_meanwhile)
    done = cleanup(cache, automatic=True, sweep_expired=False)
    assert done["status"] == "done" and len(sent) == 1
    assert send_quota_pass(cache, due, lambda: sent.append(1)) is True  # at once, not in 10 s
    assert delay(done) == 0.0 and delay({**done, "more": True}) == 0.0
    assert delay({"status": "skipped", "reason": cleanups.CLEANUP_BUSY}) == cleanups.AGAIN_SECONDS
