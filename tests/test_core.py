"""The core operations against the real Redis and real directory trees."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from cachemgr import DiskCache, NotOnDisk, NotTracked, Overlap, connect, listing
from cachemgr import events as event_log
from cachemgr.cleanup import cleanup
from cachemgr.keys import Keys
from cachemgr.migrations import ensure_record_ids
from cachemgr.passes import enforce_quota, sweep
from cachemgr.paths import PathError
from cachemgr.stats import counters
from tests.conftest import REDIS_URL, make_tree, side_db, trash_items

UNIT = 5 * 4096  # four 4 KiB files and the directory's own block


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fill(cache: DiskCache, root, n: int, clock: Clock | None = None) -> list[str]:
    names = []
    for i in range(n):
        name = f"album{i:02d}"
        make_tree(root, name, files=4, size=4096)
        cache.register(name)
        if clock:
            clock.t += 1
        names.append(name)
    return names


def test_register_scans_and_tracks(cache, root):
    make_tree(root, "artist/album", files=4)
    result = cache.register("artist/album/")
    assert result["status"] == "registered" and result["new"] is True
    assert result["size_bytes"] == UNIT and result["file_count"] == 4
    info = cache.info("artist/album")
    assert info.size_bytes == UNIT and info.hits == 0
    assert cache.store.total_bytes() == UNIT


def test_registering_again_replaces_the_size_and_never_counts_twice(cache, root):
    d = make_tree(root, "a", files=4)
    cache.register("a")
    (d / "track03.mp3").unlink()
    again = cache.register("a")
    assert again["new"] is False and again["delta_bytes"] == -4096
    assert cache.store.total_bytes() == UNIT - 4096
    assert cache.store.count_entries() == 1


def test_overlapping_registrations_are_refused(cache, root):
    make_tree(root, "artist/album")
    cache.register("artist/album")
    with pytest.raises(Overlap):
        cache.register("artist")
    make_tree(root, "x/y")
    cache.register("x")
    with pytest.raises(Overlap):
        cache.register("x/y")


def test_register_of_missing_directory_is_not_on_disk(cache, root):
    # The root named: a pipeline whose own root was not the workers' saw the path alone.
    said = f"under the cache root '{root}': 'nothing-here'"
    with pytest.raises(NotOnDisk, match=re.escape(said)):
        cache.register("nothing-here")


def test_register_latest_takes_the_newest_directory(cache, root):
    make_tree(root, "first")
    time.sleep(0.02)
    make_tree(root, "second")
    assert cache.register_latest()["path"] == "second"


def test_register_latest_on_empty_root_says_so(cache):
    with pytest.raises(NotOnDisk, match="no download directory"):
        cache.register_latest()


def test_byte_counters_stop_short_of_overflowing(cache, root):
    """Past 2^63 HINCRBY failed the script after it had counted the hit or miss: every
    access after it failed, for good (a reset only moves the baseline)."""
    make_tree(root, "a")
    cache.register("a")
    near = 2**63 - 10
    cache.client.hset(cache.keys.stats, mapping={"missed_bytes": near, "hit_bytes": near})
    for i in range(3):
        assert cache.access(f"huge{i}", miss_bytes=2**53)["hit"] is False
    assert cache.access("a")["hit"] is True
    assert cache.store.access_many(["a", "a/x"], now=cache.clock()) == [1, 1]
    counts = cache.client.hgetall(cache.keys.stats)
    assert int(counts["missed_bytes"]) == 511 * 2**54 and int(counts["misses"]) == 3
    # Stopped there, then counted on (one that overflows again stops there again).
    assert 511 * 2**54 <= int(counts["hit_bytes"]) < 2**63 and int(counts["hits"]) == 3


def test_access_counts_hits_and_misses_and_renews(cache, root):
    clock = Clock()
    cache.clock = clock
    make_tree(root, "a", files=4)
    cache.register("a")
    clock.t += 100
    assert cache.access("a")["hit"] is True
    assert cache.access("missing", miss_bytes=1234)["hit"] is False
    info = cache.info("a")
    assert info.hits == 1 and info.last_access == pytest.approx(clock.t)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["hit_bytes"], stats["missed_bytes"]) == (
        1,
        1,
        UNIT,
        1234,
    )
    assert 86000 < cache.client.ttl(cache.keys.dir("a")) <= 86400


def test_a_miss_without_its_size_makes_the_byte_hit_ratio_unknown(cache, root):
    """One hit and three misses reported without their size read a byte hit ratio of 1.0
    (100 % of bytes served) beside a hit ratio of 0.25: a pipeline that never passes
    miss_bytes, as README's example did not, saw nothing but hits by bytes."""
    make_tree(root, "a")
    cache.register("a")
    cache.reset_stats()
    cache.access("a")
    cache.access("gone", miss_bytes=500)
    r = cache.stats()["since_reset"]
    size = cache.info("a").size_bytes
    assert r["byte_hit_ratio"] == round(size / (size + 500), 6) and r["unsized_misses"] == 0
    cache.access("gone")
    cache.store.access_many(["gone", "a"])  # a batch carries no sizes
    s = cache.stats()
    r = s["since_reset"]
    assert (r["misses"], r["unsized_misses"], r["missed_bytes"]) == (3, 2, 500)
    assert r["byte_hit_ratio"] is None and s["byte_hit_ratio"] is None
    assert r["hit_ratio"] == round(2 / 5, 6)
    cache.reset_stats()
    cache.access("gone", miss_bytes=100)
    assert cache.stats()["since_reset"]["byte_hit_ratio"] == 0.0  # known again


def test_remove_untracks_and_optionally_deletes(cache, root):
    make_tree(root, "keep")
    make_tree(root, "gone")
    cache.register("keep")
    cache.register("gone")
    assert cache.remove("keep")["files_deleted"] is False
    assert (root / "keep").is_dir()
    assert cache.remove("gone", remove_files=True)["files_deleted"] is True
    assert not (root / "gone").exists()
    assert cache.store.total_bytes() == 0
    with pytest.raises(NotTracked):
        cache.remove("gone")
    assert not trash_items(root)


def test_paged_list_by_last_access_newest_first(cache, root):
    clock = Clock()
    cache.clock = clock
    names = fill(cache, root, 7, clock)
    seen, cursor = [], None
    while True:
        page, cursor = listing.page(cache.store, 3, cursor)
        seen += [e.path for e in page]
        if cursor is None:
            break
    assert seen == list(reversed(names))


def test_paged_list_with_ties_loses_nothing(cache, root):
    clock = Clock()
    cache.clock = clock
    names = fill(cache, root, 5)  # all at the same instant
    seen, cursor = [], None
    while True:
        page, cursor = listing.page(cache.store, 2, cursor)
        seen += [e.path for e in page]
        if cursor is None:
            break
    assert sorted(seen) == names and len(seen) == 5


def test_a_victim_played_just_before_its_claim_gives_its_place_to_the_next(
    settings, redis_client, root
):
    # 4 albums, threshold at 3, target at 2.67: two go, fetched one per batch.
    tight = settings.with_(disk_cache_max_bytes=int(3 * UNIT / 0.9), disk_cache_batch_size=1)
    clock = Clock()
    cache = DiskCache(tight, redis_client, clock=clock)
    fill(cache, root, 4, clock)
    real = cache.store.victims

    def victims_then_play(limit: int, offset: int = 0) -> list:
        batch = real(limit, offset)
        if batch and batch[0].path == "album00":
            clock.t += 1
            cache.access("album00")  # played between the choice and the claim
        return batch

    cache.store.victims = victims_then_play  # type: ignore[method-assign]
    result = enforce_quota(cache)
    # Once album00 was played, album01 and album02 are the least recently used (an offset
    # moved past album00's old place would take album02 and album03).
    assert [r.path for r in result.removed] == ["album01", "album02"]
    assert result.skipped_changed == ["album00"]


def test_quota_90_to_80_with_exact_bytes(cache, root):
    clock = Clock()
    cache.clock = clock
    fill(cache, root, 18, clock)
    assert cache.store.total_bytes() == 18 * UNIT == cache.settings.threshold_bytes
    assert enforce_quota(cache).removed == []  # at the threshold is not past it
    make_tree(root, "album18", files=4)
    cache.register("album18")
    clock.t += 1
    cache.access("album00")  # now the most recent: survives
    result = enforce_quota(cache)
    assert [r.path for r in result.removed] == ["album01", "album02", "album03"]
    assert result.bytes_freed == 3 * UNIT
    assert cache.store.total_bytes() == 16 * UNIT == cache.settings.target_bytes
    assert (root / "album00").is_dir() and not (root / "album01").exists()
    assert cache.stats()["evictions"] == 3


def test_sweep_expires_with_a_short_ttl(settings, redis_client, root):
    cache = DiskCache(settings.with_(disk_cache_ttl_seconds=1), redis_client)
    make_tree(root, "old")
    cache.register("old")
    assert 0 < redis_client.ttl(cache.keys.dir("old")) <= 1
    time.sleep(1.2)
    make_tree(root, "fresh")
    cache.register("fresh")
    result = sweep(cache)
    assert [r.path for r in result.removed] == ["old"]
    assert not (root / "old").exists() and (root / "fresh").is_dir()
    assert cache.stats()["expirations"] == 1


def test_locked_directory_is_skipped_not_waited_on(cache, root):
    clock = Clock()
    cache.clock = clock
    fill(cache, root, 19, clock)
    held = cache.lock("album00")
    assert held.acquire()
    result = enforce_quota(cache)
    assert "album00" in result.skipped_locked
    assert (root / "album00").is_dir()
    assert result.bytes_freed >= 3 * UNIT
    held.release()


def test_a_registration_waits_for_its_directorys_lock_and_scans_after_it(cache, root):
    """A reconcile booking the directory held its lock: the pipeline's registration of the
    finished download answered "skipped: locked", and the books kept the reconcile's scan of
    a download still being written."""
    import threading

    make_tree(root, "album", files=1)
    held = cache.lock("album")
    assert held.acquire()

    def finish() -> None:
        time.sleep(0.3)
        (root / "album" / "last.flac").write_bytes(b"x" * 8192)
        held.release()

    writer = threading.Thread(target=finish)
    writer.start()
    result = cache.register("album")
    writer.join()
    assert result["status"] == "registered"
    assert result["file_count"] == 2 and cache.info("album").file_count == 2


def test_lock_has_a_timeout_and_only_its_owner_releases_it(cache):
    a = cache.lock("x")
    a.timeout_ms = 200
    assert a.acquire()
    b = cache.lock("x")
    assert not b.acquire()
    assert b.release() is False and a.held()
    time.sleep(0.3)
    assert b.acquire()
    assert a.release() is False and b.held()


def test_an_eviction_that_cannot_reach_the_target_says_so(cache, root):
    fill(cache, root, 19)
    for i in range(19):
        cache.pin(f"album{i:02d}", 60)
    result = enforce_quota(cache)
    assert result.removed == [] and len(result.skipped_pinned) == 19
    event = event_log.latest(cache.store, 1)[0]
    assert event["event"] == "eviction_short" and event["pinned"] == 19


def test_pinned_directory_is_never_evicted_or_expired(settings, redis_client, root):
    cache = DiskCache(settings.with_(disk_cache_ttl_seconds=1), redis_client)
    fill(cache, root, 19)
    cache.pin("album00", 60)
    time.sleep(1.1)
    result = sweep(cache)
    assert "album00" in result.skipped_pinned
    assert (root / "album00").is_dir()
    assert cache.info("album00").pinned(time.time())


def test_compare_before_delete_skips_an_entry_accessed_since_it_was_chosen(cache, root):
    fill(cache, root, 2)
    chosen = cache.store.victims(1)[0]
    cache.access(chosen.path)
    assert cache.take(chosen, "evicted") == "changed"
    assert (root / chosen.path).is_dir()


def test_an_expired_entry_played_between_the_sweeps_read_and_its_claim_stays(
    settings, redis_client, root
):
    from cachemgr.passes import sweep

    clock = Clock()
    cache = DiskCache(settings.with_(disk_cache_ttl_seconds=60), redis_client, clock=clock)
    fill(cache, root, 2, clock)
    clock.t += 600  # both long expired
    real, played = cache.store._read_entries, []

    def played_then_read(*args, **kwargs):
        if not played:  # a play between choosing the expired and reading their records
            played.append(cache.access("album00"))
        return real(*args, **kwargs)

    cache.store._read_entries = played_then_read
    result = sweep(cache)
    assert [r.path for r in result.removed] == ["album01"]
    assert result.skipped_changed == ["album00"] and (root / "album00").is_dir()


def test_a_directory_replaced_by_a_file_is_untracked_without_deleting_the_file(cache, root):
    import shutil

    fill(cache, root, 1)
    shutil.rmtree(root / "album00")
    (root / "album00").write_text("now a file")
    chosen = cache.store.victims(1)[0]
    assert cache.take(chosen, "evicted") == "vanished"
    assert (root / "album00").read_text() == "now a file"
    assert cache.store.total_bytes() == 0
    # Counted as what it was: gone without us, no eviction and no bytes freed.
    stats = cache.stats()
    assert (stats["vanished"], stats["evictions"], stats["bytes_freed"]) == (1, 0, 0)


def test_a_pass_that_meets_a_directory_gone_from_disk_does_not_call_it_freed(
    settings, redis_client, root
):
    import shutil

    from cachemgr import DiskCache
    from cachemgr.cleanup import cleanup
    from cachemgr.reconcile import reconcile

    cache = DiskCache(settings.with_(disk_cache_max_bytes=int(2 * UNIT / 0.9)), redis_client)
    names = fill(cache, root, 3)
    reconcile(cache)  # books initialized: the cleanup will not reconcile first
    shutil.rmtree(root / names[0])  # deleted by hand; the books still count it
    evict = cleanup(cache)["evict"]
    assert evict["vanished"] == [names[0]] and names[0] not in evict["paths"]
    stats = cache.stats()  # the pass's figures and the counters agree
    assert (stats["vanished"], stats["evictions"]) == (1, evict["count"])
    assert stats["bytes_freed"] == evict["bytes_freed"] == UNIT * evict["count"]


def test_stats_fields(cache, root):
    fill(cache, root, 2)
    s = cache.stats()
    assert s["total_bytes"] == 2 * UNIT and s["directory_count"] == 2
    assert s["max_bytes"] == 100 * 4096
    assert s["usage_percent"] == round(100 * 2 * UNIT / (100 * 4096), 2)
    assert s["quota_status"] == "ok" and s["scheduler_running"] is True


def test_stats_read_in_one_round_trip_survive_a_script_flush(cache, root, monkeypatch):
    from cachemgr import stats
    from cachemgr.reads import Lua

    fill(cache, root, 2)
    before = cache.cluster_stats()
    # A script this Redis has never seen stands for one a restart lost (SCRIPT FLUSH would
    # reach every other user of the server): the read loads its own.
    unseen = Lua(stats.SNAPSHOT.script + f"\n-- {time.time()}\n")
    assert not cache.client.script_exists(unseen.sha)[0]
    monkeypatch.setattr(stats, "SNAPSHOT", unseen)
    after = cache.cluster_stats()
    assert cache.client.script_exists(unseen.sha)[0]
    assert after["total_bytes"] == before["total_bytes"] == 2 * UNIT
    assert after["directory_count"] == 2 and after["nodes"][0]["node"] == cache.settings.node
    assert after["cluster"]["total_bytes"] == 2 * UNIT


def test_cleanup_runs_one_at_a_time(cache, root):
    fill(cache, root, 1)
    from cachemgr.locks import Lock

    other = Lock(cache.client, cache.keys.cleanup_lock, 5000)
    assert other.acquire()
    assert cleanup(cache) == {"status": "skipped", "reason": "another cleanup is running"}
    other.release()
    assert cleanup(cache)["status"] == "done"


HOLD_LOCK = """
import sys, time
from cachemgr import connect
from cachemgr.locks import Lock
lock = Lock(connect(sys.argv[1]), sys.argv[2], 60000, from_dead=True)
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_in_a_process(key: str):
    """A process on this machine that takes lock `key` (60 s) as a worker does, and waits."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, REDIS_URL, key], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_killed_workers_cleanup_lock_is_taken_over_at_once(cache, root, caplog):
    """A worker killed mid-cleanup held the lock 10 s, and every quota pass meanwhile was
    skipped (10x the quota at a high write rate): its holder is known dead on this machine."""
    import logging
    import os
    import signal

    fill(cache, root, 30)  # over the quota
    holder = hold_in_a_process(cache.keys.cleanup_lock)
    try:
        assert cleanup(cache)["reason"] == "another cleanup is running"  # alive: waited for
        holder.send_signal(signal.SIGKILL)
        # Not reaped yet: a zombie is dead too (Celery's parent reaps its child a moment later).
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        caplog.set_level(logging.WARNING, logger="cachemgr")
        result = cleanup(cache, sweep_expired=False)
    finally:
        holder.kill()
        holder.wait()
    assert result["status"] == "done" and result["evict"]["count"] > 0, result
    assert cache.store.total_bytes() <= cache.settings.target_bytes
    said = f"{cache.keys.cleanup_lock}: its holder (process {holder.pid} on this machine) is dead"
    assert said in caplog.text
    assert not cache.client.exists(cache.keys.cleanup_lock)  # released as its own


def test_a_killed_workers_directory_lock_is_taken_over_not_waited_for(cache, root):
    """A registration killed mid-scan held its directory's lock for the lock timeout (5
    minutes): the download's registration was sent again and again meanwhile."""
    make_tree(root, "album", files=2)
    holder = hold_in_a_process(cache.keys.lock("album"))
    try:
        assert cache.register("album")["reason"] == "locked"  # alive: waited for (3 s)
        holder.kill()
        holder.wait()
        assert cache.register("album")["status"] == "registered"
    finally:
        holder.kill()
        holder.wait()
    assert cache.store.count_entries() == 1 and not cache.client.exists(cache.keys.lock("album"))


def test_a_killed_workers_lock_above_is_not_waited_for(cache, root):
    """A registration killed mid-scan of `artist` held its lock: one of `artist/album` found
    a directory above being registered, and was skipped until that lock lapsed (5 minutes)."""
    make_tree(root, "artist/album", files=2)
    assert not cache.lock("artist").clear_if_dead()  # free: left alone, not taken a moment
    holder = hold_in_a_process(cache.keys.lock("artist"))
    assert not cache.lock("artist").clear_if_dead()  # alive: left alone
    holder.kill()
    holder.wait()
    assert cache.register("artist/album")["status"] == "registered"
    assert not cache.client.exists(cache.keys.lock("artist"))


def test_a_lock_is_taken_from_a_holder_known_dead_only():
    """Elsewhere (another machine, host name, PID or time namespace, user), with a token of
    old (no holder named) or a live process's: never taken; a PID used again: taken."""
    import os
    import subprocess

    from cachemgr.locks import holder_gone, holder_tag

    ours = holder_tag().split("/")
    assert len(ours) == 7 and ours[5] == str(os.getpid())
    assert holder_gone(f"locked:ab@{holder_tag()}") is None
    dead = subprocess.Popen(["true"])
    dead.wait()

    def tag(**changed: str) -> str:
        names = ["boot", "host", "pidns", "timens", "uid", "pid", "start"]
        fields = dict(zip(names, ours, strict=True))
        return "/".join({**fields, "pid": str(dead.pid), "start": "1", **changed}.values())

    assert holder_gone(f"locked:ab@{tag()}") == dead.pid
    assert holder_gone(f"locked:ab@{tag(pid=ours[5], start=str(int(ours[6]) + 1))}") == int(
        ours[5]
    )
    for elsewhere in ("boot", "host", "pidns", "timens"):
        assert holder_gone(f"locked:ab@{tag(**{elsewhere: 'other'})}") is None, elsewhere
    assert holder_gone(f"locked:ab@{tag(uid=str(int(ours[4]) + 1))}") is None
    for old in ("locked", "locked:ab", "a-killed-worker", f"locked:ab@{ours[0]}/{ours[1]}"):
        assert holder_gone(old) is None


@pytest.mark.parametrize("error", [PermissionError, OSError])
def test_a_holder_whose_process_cannot_be_looked_at_is_waited_for(monkeypatch, error):
    """/proc/<pid>/stat refused (an LSM's EACCES, this process out of descriptors): the live
    holder was taken for dead, and two workers held one directory's lock."""
    import subprocess

    from cachemgr import locks

    alive = subprocess.Popen(["sleep", "30"])
    try:
        tag = locks.holder_tag().split("/")
        theirs = "/".join([*tag[:5], str(alive.pid), locks._started(alive.pid) or "?"])
        assert locks.holder_gone(f"locked:ab@{theirs}") is None  # alive, and seen to be
        def refused(path: str, *args: Any, **kwargs: Any) -> Any:
            if path == f"/proc/{alive.pid}/stat":
                raise error(24, "refused")
            return open(path, *args, **kwargs)

        monkeypatch.setattr(locks, "open", refused, raising=False)
        assert locks.holder_gone(f"locked:ab@{theirs}") is None
    finally:
        alive.kill()
        alive.wait()


def test_no_lock_is_taken_over_where_proc_hides_processes(monkeypatch):
    """Under hidepid (or subset=pid) another user's live process is missing from /proc: no
    holder is judged dead there, and this process's locks name none."""
    from cachemgr import locks

    real = locks._read
    line = "25 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw,{}"
    for options, hides in (("hidepid=invisible", True), ("subset=pid", True),
                           ("hidepid=0", False), ("gid=5", False)):  # fmt: skip
        mounted = line.format(options)
        monkeypatch.setattr(
            locks, "_read", lambda p, m=mounted: m if p == "/proc/self/mountinfo" else real(p)
        )
        monkeypatch.setattr(locks, "_machine", None)
        assert locks._proc_hides() is hides, options
        assert (locks.holder_tag() == "") is hides, options


def test_dry_run_plan_equals_the_act(cache, root):
    clock = Clock()
    cache.clock = clock
    fill(cache, root, 22, clock)
    plan = cleanup(cache, dry_run=True)
    act = cleanup(cache)
    assert plan["evict"]["plan"] == act["evict"]["plan"]
    assert plan["evict"]["usage_after"] == act["evict"]["usage_after"]


def test_seed_key_names_with_an_empty_prefix(settings, root):
    client = connect(side_db(14))
    client.flushdb()
    try:
        cache = DiskCache(settings.with_(disk_cache_key_prefix="", disk_cache_node=""), client)
        make_tree(root, "artist/album")
        cache.register("artist/album")
        keys = set(client.keys("*"))
        assert {"dir:artist/album", "cache:lru", "cache:bytes"} <= keys
        assert client.type("cache:lru") == "zset" and client.ttl("dir:artist/album") > 0
        assert float(client.get("dir:artist/album")) == pytest.approx(time.time(), abs=5)
        assert int(client.get("cache:bytes")) == cache.info("artist/album").size_bytes
        assert Keys().lock("a") == "lock:dir:a"
    finally:
        client.flushdb()
        client.close()


def test_common_issues_show_up_as_clear_messages(settings, redis_client, root, roomy_disk):
    from cachemgr.cleanup import cleanup

    off = DiskCache(settings.with_(enable_disk_cache_management=False), redis_client)
    assert any("ENABLE_DISK_CACHE_MANAGEMENT is false" in w for w in off.stats()["warnings"])
    cache = DiskCache(settings, redis_client)
    # The workers of this node run with management off (their tasks do nothing): the API,
    # whose own switch is on, says so too.
    off.registry.publish(off.settings)
    stats = cache.stats()
    assert stats["enabled"] is False
    assert any("ENABLE_DISK_CACHE_MANAGEMENT is false" in w for w in stats["warnings"])
    cache.registry.publish(cache.settings)
    assert cache.stats()["enabled"] is True
    fill(cache, root, 1)
    # Workers just started: beat's first run is an interval away, nothing is missed yet.
    assert not any("periodic cleanup" in w for w in cache.stats()["warnings"])
    interval = cache.settings.disk_cache_cleanup_interval
    cache.registry.publish(cache.settings, now=time.time() - 3 * interval)  # long since
    warnings = cache.stats()["warnings"]
    assert any("no periodic cleanup has run yet" in w for w in warnings)
    assert any("no worker of node" in w and "is alive" in w for w in warnings)
    cache.registry.heartbeat(cache.keys)  # a worker is up
    cleanup(cache)  # a manual (or quota) pass does not show that beat runs
    assert any("no periodic cleanup has run yet" in w for w in cache.stats()["warnings"])
    cleanup(cache, periodic=True)
    assert cache.stats()["warnings"] == []
    cache.registry.heartbeat(cache.keys, "host:1")  # two workers of the node beat
    cache.registry.heartbeat(cache.keys, "host:2")
    cache.registry.mark_down(cache.keys, "host:1")  # one stops: the node is still up
    assert not any("no worker of node" in w for w in cache.stats()["warnings"])
    cache.registry.mark_down(cache.keys, "host:2")  # the last one stops: down at once
    assert any("no worker of node" in w for w in cache.stats()["warnings"])
    cache.registry.heartbeat(cache.keys)
    cache.set_scheduler(False)
    assert any("scheduler is stopped" in w for w in cache.stats()["warnings"])
    cache.set_scheduler(True)
    # Started again just now: beat's runs were skipped while stopped, none is missed yet.
    assert not any("periodic cleanup" in w for w in cache.stats()["warnings"])
    cache.client.set(cache.keys.scheduler, f"running {time.time() - 3 * interval:.3f}")
    cache.client.set(cache.keys.bytes, cache.settings.disk_cache_max_bytes + 1)
    over = [w for w in cache.stats()["warnings"] if w.startswith("over quota")]
    # A grace period that holds every directory back was not among the causes it named.
    assert len(over) == 1 and "ones still within their minimum age" in over[0]
    # beat stopped long ago; a recent manual pass does not hide it
    recent = f"{time.time():.3f}"
    cache.client.hset(
        cache.keys.last_cleanup, mapping={"periodic_time": "1", "time": recent, "status": "done"}
    )
    assert any("no periodic cleanup for" in w for w in cache.stats()["warnings"])
    low = DiskCache(settings.with_(disk_cache_min_free_bytes=2**62), redis_client)
    assert any("DISK_CACHE_MIN_FREE_BYTES" in w for w in low.stats()["warnings"])


def test_a_lease_that_is_not_renewed_lapses(cache, root):
    clock = Clock(time.time())
    cache.clock = clock
    fill(cache, root, 19)
    cache.pin("album00", 5)
    assert "album00" in enforce_quota(cache).skipped_pinned
    clock.t += 6  # the holder did not renew
    for i in range(4):
        make_tree(root, f"extra{i}", files=4)
        cache.register(f"extra{i}")
    result = enforce_quota(cache)
    assert "album00" in [r.path for r in result.removed]


def test_statistics_overall_and_since_a_reset(cache, root):
    fill(cache, root, 1)
    cache.access("album00")
    cache.access("nope", miss_bytes=100)
    since = cache.reset_stats()
    assert since["hits"] == 0 and since["reset_at"] is not None
    cache.access("album00")
    cache.access("album00")
    cache.access("nope", miss_bytes=50)
    s = cache.stats()
    assert (s["hits"], s["misses"], s["missed_bytes"]) == (3, 2, 150)
    r = s["since_reset"]
    assert (r["hits"], r["misses"], r["hit_bytes"], r["missed_bytes"]) == (2, 1, 2 * UNIT, 50)
    assert r["hit_ratio"] == round(2 / 3, 6) and r["byte_hit_ratio"] == round(
        2 * UNIT / (2 * UNIT + 50), 6
    )


def test_record_ids_match_between_python_and_lua(cache):
    from cachemgr.records import record_id
    from cachemgr.scripts import PRELUDE

    paths = ["a", "album/cd1", "Björk – Homogenic (1997) [FLAC]", "x" * 300, "日本/歌"]
    lua = cache.client.register_script(
        PRELUDE + "local out = {} for i = 1, #ARGV do out[i] = rid(ARGV[i]) end return out"
    )
    assert lua(keys=cache.store.script_keys(""), args=paths) == [record_id(p) for p in paths]
    assert all(len(record_id(p)) == 12 for p in paths)


def test_records_are_filed_under_short_ids_and_a_colliding_id_is_refused(cache, root):
    from cachemgr.errors import RecordCollision
    from cachemgr.records import record_id

    make_tree(root, "kept")
    make_tree(root, "newcomer")
    cache.register("kept")
    keys = cache.keys
    assert cache.client.hkeys(keys.entries) == [record_id("kept")]
    # Pretend "newcomer" shares its id with a tracked directory: put a record there that is
    # not newcomer's (newcomer is not in cache:lru).
    foreign = "4096 1 1700000000.000000 7"
    cache.client.hset(keys.entries, record_id("newcomer"), foreign)
    with pytest.raises(RecordCollision, match="newcomer"):
        cache.register("newcomer")
    assert cache.store.access("newcomer") == 0  # a miss: the other's record is not read
    assert cache.store.claim("newcomer", "removed", deleting_files=False)[0] == "gone"
    with pytest.raises(NotTracked):
        cache.remove("newcomer")
    assert cache.client.hget(keys.entries, record_id("newcomer")) == foreign  # untouched
    assert cache.store.tracked(["kept", "newcomer"]) == [True, False]
    assert set(cache.store.all_records()) == {"kept"}


def test_books_of_an_older_version_are_refiled_by_id_once(cache, root):
    from cachemgr.records import RECORD_FORMAT, record_id

    make_tree(root, "old/album")
    make_tree(root, "new")
    cache.register("new")
    keys = cache.keys
    # What an older cachemgr left: the record under the path itself, no format mark.
    cache.client.delete(keys.format)
    cache.client.hset(keys.entries, "old/album", f"{UNIT} 4 1700000000.000000 3")
    cache.client.zadd(keys.lru, {"old/album": 1700000000.0})
    cache.client.incrby(keys.bytes, UNIT)
    assert ensure_record_ids(cache.store) == 1
    assert cache.client.hget(keys.entries, record_id("old/album")) is not None
    assert not cache.client.hexists(keys.entries, "old/album")
    entry = cache.store.info("old/album")
    assert entry is not None and entry.hits == 3 and entry.size_bytes == UNIT
    assert cache.store.info("new") is not None  # records already by id stay where they are
    assert cache.client.get(keys.format) == RECORD_FORMAT
    assert ensure_record_ids(cache.store) == 0  # once
    assert cache.store.total_bytes() == cache.store.info("new").size_bytes + UNIT


def test_journal_entries_of_the_first_format_finish_and_restore_without_loss(cache, root):
    # The journal once held `path -> bytes` alone: finishing counts the bytes freed; restoring
    # leaves the directory, still on disk, to reconcile (too little to rebuild its record).
    for name in ("done", "back"):
        make_tree(root, name)
        cache.client.hset(cache.keys.deleting, name, "4096")
    before = counters(cache.store)[0]
    assert cache.store.finish_deletion("done") is True
    after = counters(cache.store)[0]
    assert after["bytes_freed"] == before["bytes_freed"] + 4096
    assert after["removals"] == before["removals"] + 1
    assert cache.store.restore("back") is False
    assert cache.store.unfinished_deletions() == {}
    assert cache.store.info("back") is None and (root / "back").is_dir()


def test_a_registration_time_before_1970_is_written_whole(cache, root):
    make_tree(root, "old")
    assert cache.store.register("old", 4096, 1, now=-5.5)[0] == "ok"
    assert cache.store.total_bytes() == 4096
    assert cache.client.get(cache.keys.dir("old")) == "-5"


def test_an_unnamed_node_published_under_other_host_names_is_counted_once(cache, root):
    # Web and worker in different containers (or a recreated worker container): the unnamed
    # node's workers published their own host names, for the same books.
    fill(cache, root, 2)
    cache.registry.publish(cache.settings)
    raw = cache.client.hget(cache.registry.nodes_key, cache.settings.node)
    for host in ("worker-container-1", "worker-container-2"):
        cache.client.hset(cache.registry.nodes_key, host, raw)
    cache.access("album00")
    cache.access("never-seen", miss_bytes=3 * 4096)
    stats = cache.cluster_stats()
    assert [n["node"] for n in stats["nodes"]] == [cache.settings.node]
    assert stats["cluster"]["total_bytes"] == stats["total_bytes"] == cache.store.total_bytes()
    # the cluster's totals carry both ratios, as each node's stats do
    for ratio in ("hit_ratio", "byte_hit_ratio"):
        assert stats["cluster"][ratio] == stats[ratio] is not None, ratio


def test_another_nodes_free_space_is_not_taken_from_this_host(cache, root):
    # Its root is a path on another host: this host's free space says nothing of it.
    other = cache.settings.with_(
        disk_cache_node="elsewhere", disk_cache_key_prefix=cache.keys.prefix + "x:"
    )
    cache.registry.publish(other.with_(disk_cache_root=str(root)))
    remote = cache.for_node("elsewhere")
    assert remote.stats()["free_disk_bytes"] is None
    assert cache.stats()["free_disk_bytes"] > 0


def test_a_play_below_a_tracked_directory_keeps_that_directory(cache, root):
    clock = Clock()
    cache.clock = clock
    make_tree(root, "artist/disc1", files=2)
    cache.register("artist")
    registered = cache.info("artist").last_access
    clock.t += 10
    assert cache.access("artist/disc1") == {"path": "artist/disc1", "hit": True}
    entry = cache.info("artist")
    assert entry.hits == 1 and entry.last_access == registered + 10
    assert cache.client.ttl(cache.keys.dir("artist")) > 0
    assert not cache.client.exists(cache.keys.dir("artist/disc1"))  # no key of its own
    clock.t += 10
    hits = cache.store.access_many(["artist/disc1/track", "artistic", "artist"], now=clock.t)
    assert [bool(h) for h in hits] == [True, False, True]
    assert cache.info("artist").hits == 3 and cache.store.tracked(["artist/disc1"]) == [False]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (3, 1)


def test_registrations_during_a_quota_pass_are_evicted_by_that_pass(settings, redis_client, root):
    # 10 albums of quota; 12 registered; while the pass evicts, 3 more arrive (their own quota
    # passes would find the lock taken): the pass goes on until usage is back under threshold.
    tight = settings.with_(disk_cache_max_bytes=10 * UNIT, disk_cache_batch_size=1)
    clock = Clock()
    cache = DiskCache(tight, redis_client, clock=clock)
    fill(cache, root, 12, clock)
    real, arrived = cache.store.victims, []

    def victims_while_downloads_land(limit: int, offset: int = 0) -> list:
        if len(arrived) < 3:
            name = f"late{len(arrived)}"
            make_tree(root, name, files=4, size=4096)
            clock.t += 1
            cache.register(name)
            arrived.append(name)
        return real(limit, offset)

    cache.store.victims = victims_while_downloads_land  # type: ignore[method-assign]
    result = enforce_quota(cache)
    assert len(arrived) == 3 and not result.more
    assert cache.store.total_bytes() <= cache.settings.target_bytes
    assert [r.path for r in result.removed][:4] == ["album00", "album01", "album02", "album03"]


def test_a_registration_on_a_disk_short_of_free_space_asks_for_a_quota_pass(cache, root):
    import shutil

    disk = shutil.disk_usage(root)
    free = disk.free + (disk.total - disk.free) // 2  # short, and under the whole disk
    make_tree(root, "a")
    assert cache.register("a")["low_disk"] is False
    short = DiskCache(cache.settings.with_(disk_cache_min_free_bytes=free), cache.client)
    result = short.register("a")
    assert result["low_disk"] is True and result["over_threshold"] is False


def test_a_dry_run_right_after_a_policy_switch_changes_nothing_and_says_so(
    settings, redis_client, root
):
    from cachemgr.cleanup import cleanup

    clock = Clock()
    before = DiskCache(settings.with_(disk_cache_eviction_policy="2q"), redis_client, clock=clock)
    fill(before, root, 12, clock)
    cleanup(before)  # the 2q structures are the ones built
    tight = settings.with_(disk_cache_eviction_policy="fifo", disk_cache_max_bytes=10 * UNIT)
    after = DiskCache(tight, redis_client, clock=clock)
    assert redis_client.keys(before.keys.policy_aux("2q", "*"))  # 2q's own, to be dropped
    plan = cleanup(after, dry_run=True)
    assert plan["policy_switch_pending"] is True
    assert redis_client.get(after.keys.policy_name) == "2q"  # the plan rebuilt nothing
    done = cleanup(after)
    assert done["evict"]["count"] >= 1 and done["policy_rebuilt"] is True
    assert cleanup(after, dry_run=True)["policy_switch_pending"] is False
    # The switch is said (an event beside the log line) and 2q's own structures are gone.
    switch = [e for e in event_log.latest(after.store, 100) if e["event"] == "policy_switched"]
    assert [(e["previous"], e["policy"], e["carried"]) for e in switch] == [("2q", "fifo", 12)]
    assert not redis_client.keys(after.keys.policy_aux("2q", "*"))
    assert cleanup(after)["policy_rebuilt"] is False


def test_a_switch_before_any_cleanup_rebuilds_what_the_registrations_built(
    settings, redis_client, root
):
    """fifo's registrations fill cache:policy with registration times; an lfu that adopted
    them as hit counts evicted the one directory that had hits."""
    from cachemgr.cleanup import cleanup

    clock = Clock()
    fifo = DiskCache(settings.with_(disk_cache_eviction_policy="fifo"), redis_client, clock=clock)
    names = fill(fifo, root, 5, clock)
    for _ in range(3):
        fifo.access(names[0])
    tight = settings.with_(disk_cache_eviction_policy="lfu", disk_cache_max_bytes=4 * UNIT)
    lfu = DiskCache(tight, redis_client, clock=clock)
    assert cleanup(lfu, dry_run=True)["policy_switch_pending"] is True
    evicted = cleanup(lfu)["evict"]["paths"]
    assert evicted and names[0] not in evicted
    assert evicted == names[1 : 1 + len(evicted)]  # no hits: the oldest access goes first


def test_books_flushed_under_a_running_store_are_named_again(settings, redis_client, root):
    """A long-lived worker named the books once; after they are lost (a Redis restart without
    persistence) its first registration into the empty books names them again."""
    lfu = DiskCache(settings.with_(disk_cache_eviction_policy="lfu"), redis_client)
    fill(lfu, root, 2)
    assert redis_client.get(lfu.keys.policy_name) == "lfu"
    redis_client.delete(*redis_client.keys(f"{lfu.keys.prefix}*"))
    lfu.register("album00")
    assert redis_client.get(lfu.keys.policy_name) == "lfu"
    lfu.register("album01")  # books not empty: nothing to name, the name stays
    redis_client.set(lfu.keys.policy_name, "fifo")
    lfu.register("album01")
    assert redis_client.get(lfu.keys.policy_name) == "fifo"


def test_a_dry_run_does_not_plan_an_expired_directory_twice(cache, root):
    clock = Clock()
    cache.clock = clock
    names = fill(cache, root, 22, clock)
    clock.t += cache.settings.disk_cache_ttl_seconds + 10
    for name in names[2:]:  # all but the two oldest are played again: those two expire
        cache.access(name)
    plan = cleanup(cache, dry_run=True)
    assert plan["sweep"]["paths"] == names[:2]
    # The plan's quota pass took them again (still on the books in a dry run): it counted
    # their bytes twice and named other victims than the real run.
    assert not set(plan["sweep"]["paths"]) & set(plan["evict"]["paths"])
    act = cleanup(cache)
    assert [plan[k]["paths"] for k in ("sweep", "evict")] == [
        act[k]["paths"] for k in ("sweep", "evict")
    ]
    assert plan["evict"]["usage_after"] == act["evict"]["usage_after"]


def test_a_resumed_eviction_that_meets_another_cleanup_tries_again(cache, root):
    from cachemgr.cleanup import CLEANUP_BUSY
    from cachemgr.continuation import continuation
    from cachemgr.locks import Lock

    held = Lock(cache.client, cache.keys.cleanup_lock, 5000)
    assert held.acquire()
    try:
        result = cleanup(cache, resume=True, owed=4096)
    finally:
        held.release()
    assert result == {"status": "skipped", "reason": CLEANUP_BUSY}
    # Dropped, what it owed below the threshold was never freed: the next cleanups start
    # only past the threshold.
    assert continuation(result, resume=True, owed=4096) == {"resume": True, "owed": 4096}
    assert continuation(result) is None  # beat's or a registration's: the holder does it
    # The rest of beat's or a registration's pass stops with the scheduler, as they do.
    rest = continuation(result, resume=True, owed=4096, scheduled=True)
    assert rest == {"resume": True, "owed": 4096, "automatic": True}


def test_one_deletion_longer_than_the_cleanup_lock_keeps_others_out(
    settings, redis_client, root
):
    short = DiskCache(settings.with_(disk_cache_lock_timeout_seconds=1), redis_client)
    fill(short, root, 22)
    other: list[dict] = []

    def slow_deletion(rel: str) -> None:  # a big directory on a slow disk: 1.6 s > the lock
        if not other:
            time.sleep(1.6)
            other.append(cleanup(DiskCache(short.settings, redis_client)))

    short.before_delete = slow_deletion
    result = cleanup(short)
    assert other[0] == {"status": "skipped", "reason": "another cleanup is running"}
    assert "cleanup lock lost: stopped early" not in result["evict"]["errors"]
    assert result["evict"]["count"] >= 1


def test_a_victim_removed_by_hand_mid_eviction_is_vanished_not_freed(cache, root):
    """Gone between the pass's look and the move into the trash: the pass listed it among
    what it evicted and counted its bytes freed, while the stats counted it vanished."""
    import shutil

    clock = Clock()
    cache.clock = clock
    fill(cache, root, 20, clock)  # 20 units, threshold 18: the four oldest go down to 16
    gone: list[str] = []

    def by_hand(rel: str) -> None:
        if not gone:
            shutil.rmtree(root / rel)
            gone.append(rel)

    cache.before_delete = by_hand
    result = enforce_quota(cache)
    assert gone == ["album00"] and result.vanished == ["album00"]
    assert "album00" not in [e.path for e in result.removed]
    assert result.bytes_freed == sum(e.size_bytes for e in result.removed)
    assert cache.stats()["vanished"] == 1
    assert cache.store.total_bytes() <= cache.settings.target_bytes


def test_cluster_totals_add_every_nodes_figures_and_keep_the_worst_status() -> None:
    from cachemgr.cluster import SUMMED, aggregate
    from cachemgr.stats import COUNTERS, since_reset

    def node(k: int, status: str) -> dict:
        return {**{name: k * (i + 1) for i, name in enumerate(SUMMED)}, "quota_status": status}

    total = aggregate([node(1, "ok"), node(2, "over_quota"), node(3, "evicting")])
    assert {k: total[k] for k in SUMMED} == {name: 6 * (i + 1) for i, name in enumerate(SUMMED)}
    assert total["quota_status"] == "over_quota"
    assert total["usage_percent"] == round(100.0 * total["total_bytes"] / total["max_bytes"], 2)
    counts, recent = since_reset({"hits": "5", "misses": "2", "unknown": "9"}, {})
    assert counts == {**dict.fromkeys(COUNTERS, 0), "hits": 5, "misses": 2}
    assert recent == {**counts, "reset_at": None}
    counts, recent = since_reset({"hits": "5"}, {"hits": "3", "reset_at": "10.5"})
    assert recent["hits"] == 2 and recent["misses"] == 0 and recent["reset_at"] == 10.5


def test_one_nodes_cluster_totals_are_its_own_figures(cache, root) -> None:
    # The single-node shortcut must give exactly what summing over one node gives.
    from cachemgr.cluster import aggregate, summed
    from cachemgr.stats import node_stats

    make_tree(root, "a", files=3)
    cache.register("a")
    cache.access("a")
    cache.access("nope", miss_bytes=500)
    mine = node_stats(cache)
    assert aggregate([mine]) == summed([mine])
    assert aggregate([mine])["hit_ratio"] == 0.5 and aggregate([mine])["total_bytes"] > 0


def test_a_registration_off_the_entry_depth_is_booked_and_warned_of(settings, redis_client, root):
    from cachemgr import DiskCache

    make_tree(root, "art/alb1")
    shallow = DiskCache(settings.with_(disk_cache_entry_depth=1), redis_client)
    done = shallow.register("art/alb1")
    assert done["status"] == "registered" and "DISK_CACHE_ENTRY_DEPTH is 1" in done["warning"]
    deep = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    assert "warning" not in deep.register("art/alb1")


def test_a_pin_answers_the_lease_in_force_and_a_track_pins_its_album(cache, root):
    make_tree(root, "album", files=2)
    cache.register("album")
    long = cache.pin("album", 600)
    short = cache.pin("album", 2)  # another holder's shorter lease: the longer one stands
    assert short["pinned_until"] == long["pinned_until"] == cache.info("album").to_dict()[
        "pinned_until"
    ]
    track = next(p.name for p in (root / "album").iterdir() if p.is_file())
    assert cache.pin(f"album/{track}", 900)["path"] == "album"  # as the client's pin_now
    (root / "loose.flac").write_text("x")
    with pytest.raises(PathError):
        cache.pin("loose.flac", 60)  # a file of its own is no directory to pin


def test_registering_a_tracked_directory_gone_from_disk_takes_it_off_the_books(cache, root):
    import shutil

    from cachemgr.errors import RootMissing

    for name in ("kept", "gone"):
        make_tree(root, name)
        cache.register(name)
    shutil.rmtree(root / "gone")
    with pytest.raises(NotOnDisk, match="taken off the books"):
        cache.register("gone")
    assert cache.store.tracked(["gone", "kept"]) == [False, True]
    kept = cache.info("kept").size_bytes
    assert cache.stats()["vanished"] == 1 and cache.store.total_bytes() == kept
    with pytest.raises(NotOnDisk) as never:  # never tracked: nothing to take off
        cache.register("never")
    assert "books" not in str(never.value)
    # An unmounted disk (an empty mount point) untracks nothing: it is said instead.
    shutil.rmtree(root / "kept")
    with pytest.raises(RootMissing):
        cache.register("kept")
    assert cache.store.tracked(["kept"]) == [True]


def test_a_subdirectory_that_cannot_be_read_is_warned_of(cache, root, monkeypatch, caplog):
    """Sized without it, in silence: an INFO line gave the smaller size as the album's."""
    import errno
    import os

    from cachemgr import scanner

    make_tree(root, "album/disc2", files=2)
    (root / "album" / "cover.jpg").write_bytes(b"x" * 4096)
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):  # what EACCES does for a worker not root
        if path == "disc2":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(scanner.os, "open", refuse)
    done = cache.register("album")
    assert done["status"] == "registered" and done["file_count"] == 1
    assert "1 subdirectory(ies) of 'album' could not be read (e.g. 'disc2'" in done["warning"]
    assert any(
        r.levelname == "WARNING" and "could not be read" in r.message for r in caplog.records
    )
    # After the registration's warning the undercount went on in silence: a reconcile says it.
    from cachemgr.reconcile import reconcile

    for dry_run in (True, False):
        found = reconcile(cache, dry_run=dry_run)
        assert found["unreadable"] == [{"path": "album", "example": "disc2"}]
        assert found["resized"] == []
    # One the reconcile books itself is named too (it was only in the registration's log).
    make_tree(root, "other/disc2", files=1)
    found = reconcile(cache)
    assert found["registered"] == ["other"]
    assert {"path": "other", "example": "disc2"} in found["unreadable"]
    assert "hold subdirectories the worker cannot read, e.g. 'disc2' in 'album'" in caplog.text
    monkeypatch.undo()
    assert "warning" not in cache.register("album")  # readable again: no warning, every file
    assert cache.info("album").file_count == 3


def test_a_subdirectory_opened_but_not_listable_is_warned_of_too(cache, root, monkeypatch):
    """Read but no execute permission (chmod -R 644): it opened, its entries could not be
    stat'ed, and the registration failed as 'changed while it was scanned'."""
    import errno
    import os

    from cachemgr import scanner

    make_tree(root, "album/disc2", files=2)
    real = scanner.scan_dir

    def refuse(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/disc2"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(fd)

    monkeypatch.setattr(scanner, "scan_dir", refuse)
    done = cache.register("album")
    assert done["status"] == "registered" and "'disc2'" in done["warning"]


def test_the_lock_keeper_rides_out_a_moment_without_redis():
    from cachemgr.locks import Keeper

    class Flaky:
        timeout_ms = 1000

        def __init__(self) -> None:
            self.calls = 0

        def extend(self) -> bool:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("failover")
            return True

    lock = Flaky()
    keeper = Keeper(lock, every=0.05, at_most=5).start()  # type: ignore[arg-type]
    time.sleep(0.5)
    keeper.stop()
    assert lock.calls > 3  # it stopped at the first error: a second cleanup came in


def test_a_directory_the_worker_cannot_read_is_said_so(cache, root, monkeypatch):
    """It was 'changed while it was scanned: Permission denied'."""
    import errno

    from cachemgr import scanner

    def refuse(location, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(location))

    make_tree(root, "locked", files=1)
    monkeypatch.setattr(scanner, "scan", refuse)
    with pytest.raises(PathError, match="'locked' cannot be read by the worker"):
        cache.register("locked")


def test_a_play_from_a_host_whose_clock_is_behind_does_not_age_the_directory(cache, root):
    """A pipeline host an hour behind booked a play as an hour ago: the album's last access
    went back past its registration and the next sweep expired the album just played."""
    make_tree(root, "album")
    cache.register("album")
    booked = cache.client.zscore(cache.keys.lru, "album")
    assert cache.store.access("album", now=booked - 3600) == 1  # a hit all the same
    assert cache.client.zscore(cache.keys.lru, "album") == booked
    assert cache.store.access_many(["album", "nope"], now=booked - 3600) == [1, 0]
    assert cache.client.zscore(cache.keys.lru, "album") == booked
    assert cache.info("album").hits == 2
    assert cache.store.access("album", now=booked + 10) == 1  # a later play moves it on
    assert cache.client.zscore(cache.keys.lru, "album") == booked + 10


def test_a_registration_again_from_a_worker_whose_clock_is_behind_does_not_age_it(
    settings, redis_client, root
):
    """A worker an hour behind registered an album again (registration is idempotent): its
    last access went an hour back and the next sweep expired it."""
    make_tree(root, "album")
    DiskCache(settings, redis_client).register("album")
    keys = DiskCache(settings, redis_client).keys
    booked = redis_client.zscore(keys.lru, "album")
    behind = DiskCache(settings, redis_client, clock=lambda: booked - 3600)
    assert behind.register("album")["status"] == "registered"
    assert redis_client.zscore(keys.lru, "album") == booked


def test_a_registration_is_one_round_trip_and_survives_a_script_not_loaded(cache, root):
    """Booking and noting it for the recheck go in one pipeline: handed the script object,
    redis-py's pipeline first sent SCRIPT EXISTS (a round trip more on every registration);
    a Redis that lost its scripts makes the pipeline fail before the booking runs, and the
    registration is then sent alone, once."""

    def script_exists_calls() -> int:
        stats = cache.client.info("commandstats")
        return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))

    make_tree(root, "a")
    make_tree(root, "b")
    cache.register("a")  # the scripts are loaded
    before = script_exists_calls()
    cache.register("a")
    assert script_exists_calls() == before
    registrations = cache.stats()["registrations"]
    cache.store._register.sha = "0" * 40  # as if Redis had lost it (a restart)
    done = cache.register("b")
    assert done["status"] == "registered" and done["new"] is True
    assert cache.stats()["registrations"] == registrations + 1  # booked once, not twice
    assert cache.client.zscore(cache.keys.recent, "b") is not None


def test_a_cleanup_dates_its_record_and_a_switch_by_the_caches_clock(
    settings, redis_client, root
):
    """The cleanup's record, beat's run and a policy switch's event were dated by the host's
    clock while the stats judge them by the cache's: a cache given another clock (a test's,
    a replay's) saw its own cleanup as run hours ago or not yet."""
    from cachemgr import events as event_log
    from cachemgr.cleanup import cleanup

    later = time.time() + 7200
    make_tree(root, "album")
    DiskCache(settings, redis_client).register("album")
    cleanup(DiskCache(settings, redis_client))  # lru's structures built
    fifo = DiskCache(
        settings.with_(disk_cache_eviction_policy="fifo"), redis_client, clock=lambda: later
    )
    result = cleanup(fifo)
    assert result["policy_rebuilt"] is True and result["duration_seconds"] < 60
    last = fifo.stats()["last_cleanup"]
    assert last["time"] == pytest.approx(later, abs=0.01)
    assert 0 <= last["duration_seconds"] < 60
    switched = [e for e in event_log.latest(fifo.store, 10) if e["event"] == "policy_switched"]
    assert float(switched[0]["time"]) == pytest.approx(later, abs=0.01)


def test_a_new_ttl_restamps_the_seeds_dir_keys(settings, redis_client, root):
    """Workers restarted with a longer TTL: the seed's dir:{path} keys kept the TTL they were
    written with and vanished within seconds, the directories still tracked."""
    from cachemgr import migrations
    from cachemgr.cleanup import cleanup

    short = DiskCache(settings.with_(disk_cache_ttl_seconds=20), redis_client)
    for name in ("a", "b", "c"):
        make_tree(root, name)
        short.register(name)
    cleanup(short)
    assert 0 < redis_client.ttl(short.keys.dir("a")) <= 20
    long = DiskCache(settings.with_(disk_cache_ttl_seconds=600), redis_client)
    cleanup(long)
    for name in ("a", "b", "c"):
        assert 590 < redis_client.ttl(long.keys.dir(name)) <= 600, name
        assert redis_client.get(long.keys.dir(name)) == long.store.info(name).registered.split(
            "."
        )[0]  # the value stays the registration time
    assert migrations.ensure_ttl(long.store, time.time()) == 0  # once a change
    # While the live workers disagree on the TTL (a rolling restart), nothing is stamped.
    apart = {"w1": {"ttl_seconds": 600}, "w2": {"ttl_seconds": 60}}
    sixty = DiskCache(settings.with_(disk_cache_ttl_seconds=60), redis_client)
    assert migrations.ensure_ttl(sixty.store, time.time(), apart) == 0
    assert redis_client.ttl(long.keys.dir("a")) > 60
    # Plays between batches reorder the books: none is skipped (ZSCAN, not ranks).
    real = migrations.call

    def playing(*args, **kwargs):
        long.access("c")
        return real(*args, **kwargs)

    migrations.call = playing
    try:
        assert migrations.ensure_ttl(sixty.store, time.time(), batch=1) == 3
    finally:
        migrations.call = real
    assert all(0 < redis_client.ttl(long.keys.dir(n)) <= 60 for n in ("a", "b", "c"))
    # A shorter TTL than an entry's age: its key goes at once (the sweep expires it).
    later = DiskCache(settings.with_(disk_cache_ttl_seconds=1), redis_client)
    assert migrations.ensure_ttl(later.store, time.time() + 5, batch=2) == 0
    assert redis_client.exists(later.keys.dir("a")) == 0


def test_a_size_past_what_lua_counts_exactly_is_refused_before_any_write(cache, root):
    """10^17 bytes reached REGISTER's INCRBY as "1e+17", which Redis refused after the record,
    the cache:lru entry and the dir: key were written: tracked with its bytes uncounted."""
    from cachemgr.errors import BadArgument

    with pytest.raises(BadArgument, match=r"the size of 'big' must be a whole number"):
        cache.store.register("big", 10**17, 1, now=cache.clock())
    assert cache.store.tracked(["big"]) == [False] and cache.store.total_bytes() == 0
    cache.store.register("big", 2**53, 1, now=cache.clock())  # the largest exact one
    assert cache.store.total_bytes() == 2**53
    with pytest.raises(BadArgument, match="the size of 'big'"):
        cache.store.resize("big", 2**53 + 1, 1)
    assert cache.store.total_bytes() == 2**53
