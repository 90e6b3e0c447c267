"""Hostile input through the tasks and the CLI, and the protections of issue 5: grace period,
free-space floor, bounded passes that continue themselves."""

from __future__ import annotations

import os
import re
import time
import unicodedata

import pytest

from cachemgr import DiskCache
from cachemgr.passes import enforce_quota
from tests.conftest import make_tree

HOSTILE = [
    "../etc",
    "/etc/passwd",
    "%2e%2e%2fetc",
    "%252e%252e%252fetc",
    "a\x00b",
    "escape",
    "escape/nested",
    "loop/inner",
    "n" * 4096,
]


@pytest.fixture
def hostile_root(root, canary):
    os.symlink(canary, root / "escape")
    os.symlink(root / "loop", root / "loop")
    return root


@pytest.mark.parametrize("path", HOSTILE)
def test_tasks_refuse_hostile_paths(pipeline, hostile_root, cache, path):
    for name, args in [
        ("register_directory", (path,)),
        ("remove_directory", (path, True)),
        ("pin_directory", (path, 60)),
    ]:
        result = pipeline.send(name, *args)
        try:
            answer = result.get(timeout=20)
        except Exception as err:
            assert type(err).__name__ in ("PathError", "NotOnDisk", "NotTracked"), err
            assert str(err)
        else:  # a removal is idempotent: a name that is not tracked is a no-op, said so
            assert name == "remove_directory" and answer["status"] == "not_tracked", answer
    assert cache.store.count_entries() == 0


@pytest.mark.parametrize("path", HOSTILE)
def test_cli_refuses_hostile_paths_in_one_line(runner, hostile_root, path):
    for args in (["register", path, "--now"], ["rm", path, "--files", "--now"], ["info", path]):
        result = runner.invoke(args=args)
        assert result.exit_code in (2, 3), (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_unicode_forms_and_a_directory_swapped_for_a_file(cache, root):
    nfc, nfd = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    make_tree(root, nfc)
    make_tree(root, nfd)
    cache.register(nfc)
    cache.register(nfd)
    assert cache.store.count_entries() == 2
    import shutil

    shutil.rmtree(root / nfd)
    (root / nfd).write_text("a file now")
    victim = next(e for e in cache.store.victims(10) if e.path == nfd)
    assert cache.take(victim, "evicted") == "vanished"
    assert (root / nfd).read_text() == "a file now" and (root / nfc).is_dir()


def test_grace_period_spares_new_directories(settings, redis_client, root):
    cache = DiskCache(settings.with_(disk_cache_min_age_seconds=3600), redis_client)
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    result = enforce_quota(cache)
    assert result.removed == [] and len(result.skipped_young) == 20


def test_free_space_floor_starts_eviction_below_the_quota(settings, redis_client, root):
    import shutil

    # More than is free, less than the whole disk (a floor not below that is ignored).
    floor = shutil.disk_usage(root).free + 10**6
    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=floor), redis_client)
    make_tree(root, "a", files=4)
    cache.register("a")
    assert cache.store.total_bytes() < cache.settings.threshold_bytes
    result = enforce_quota(cache)
    assert [r.path for r in result.removed] == ["a"]


def test_a_bounded_pass_continues_in_a_new_task(worker, pipeline, settings, redis_client, root):
    from workers import tasks

    cache = DiskCache(settings.with_(disk_cache_max_evictions_per_run=2), redis_client)
    tasks.configure(cache)
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    first = pipeline.cleanup().get(timeout=20)
    assert first["evict"]["count"] == 2 and first["more"] and first["continued"]
    deadline = time.monotonic() + 20
    while cache.store.total_bytes() > cache.settings.target_bytes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.store.total_bytes() == cache.settings.target_bytes  # 4 evicted in two passes


def test_the_rest_of_beats_cleanup_is_not_beats_own(
    worker, pipeline, settings, redis_client, root, monkeypatch
):
    """Each continuation of beat's cleanup ran as beat's: the audits walked the root again
    every 2 s of a long eviction, and `periodic_time` moved on as if beat were still there."""
    from cachemgr import audit
    from workers import tasks

    cache = DiskCache(settings.with_(disk_cache_max_evictions_per_run=2), redis_client)
    tasks.configure(cache)
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    looks: list[str] = []
    real = audit.report
    monkeypatch.setattr(audit, "report", lambda c: looks.append("look") or real(c))
    first = pipeline.app.send_task(
        "cachemgr.cleanup", kwargs={"periodic": True}, queue=pipeline.queue,
        headers={"cachemgr_beat_interval": 3600.0},  # beat's, as celeryconfig sends it
    ).get(timeout=20)  # fmt: skip
    assert first["continued"] and "untracked" in first
    beat_at = cache.client.hget(cache.keys.last_cleanup, "periodic_time")

    def rest_recorded() -> bool:  # its evictions done and its outcome recorded, after them
        at = cache.client.hget(cache.keys.last_cleanup, "time")
        return cache.store.total_bytes() <= cache.settings.target_bytes and at != beat_at

    deadline = time.monotonic() + 20
    while not rest_recorded() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rest_recorded() and cache.store.total_bytes() == cache.settings.target_bytes
    last = cache.client.hgetall(cache.keys.last_cleanup)
    assert looks == ["look"] and last["periodic_time"] == beat_at
    assert float(last["time"]) > float(beat_at)


def _evict_all(settings, redis_client) -> DiskCache:
    """A cache whose quota (1 byte) makes every tracked directory a victim."""
    tight = settings.with_(disk_cache_max_bytes=1)
    cache = DiskCache(tight, redis_client)
    enforce_quota(cache)
    return cache


def test_a_pin_made_before_its_parent_was_registered_protects_the_parent(
    settings, redis_client, root
):
    cache = DiskCache(settings, redis_client)
    assert cache.pin("artist/album", 3600)["path"] == "artist/album"  # not written yet
    make_tree(root, "artist/album")
    cache.register("artist")  # tracked above the pin, as a reconcile at depth 1 would
    cache = _evict_all(settings, redis_client)
    assert (root / "artist/album").is_dir() and cache.store.tracked(["artist"]) == [True]
    assert cache.stats()["skipped_pinned"] >= 1
    cache.unpin("artist/album")
    cache = _evict_all(settings, redis_client)
    assert not (root / "artist").exists() and cache.store.count_entries() == 0


def test_a_pin_on_a_directory_above_tracked_ones_protects_them(settings, redis_client, root):
    cache = DiskCache(settings, redis_client)
    for name in ("artist/one", "artist/two", "artistic"):
        make_tree(root, name)
        cache.register(name)
    assert cache.pin("artist", 3600)["path"] == "artist"
    skipped = {"status": "skipped", "reason": "pinned", "path": "artist/one"}
    assert cache.remove("artist/one", remove_files=True) == skipped
    cache = _evict_all(settings, redis_client)
    # `artistic` only shares a prefix of its name with the pinned directory.
    assert cache.store.tracked(["artist/one", "artist/two", "artistic"]) == [True, True, False]
    assert (root / "artist/one").is_dir() and not (root / "artistic").exists()


def test_the_pin_index_follows_pins_unpins_and_lapses(settings, redis_client, root):
    from cachemgr.migrations import ensure_pin_index

    now = [1_800_000_000.0]
    cache = DiskCache(settings, redis_client, clock=lambda: now[0])
    k = cache.keys
    cache.pin("a", 60)
    cache.pin("b/c", 3600)
    assert cache.client.zrange(k.pin_paths, 0, -1) == ["a", "b/c"]
    cache.unpin("b/c")
    assert cache.client.zrange(k.pin_paths, 0, -1) == ["a"]
    assert cache.store.drop_lapsed_pins(now[0] + 61, batch=1) == 1
    assert cache.client.exists(k.pins, k.pin_paths) == 0
    # Pins of an older client (only in cache:pins), beside an indexed one and a stray entry:
    # the index is rebuilt to name exactly the pinned paths.
    cache.pin("new", 600)
    cache.client.zadd(k.pins, {"x/y": now[0] + 600, "z": now[0] + 600})
    cache.client.zadd(k.pin_paths, {"stray": 0})
    assert ensure_pin_index(cache.store) == 3
    assert cache.client.zrange(k.pin_paths, 0, -1) == ["new", "x/y", "z"]
    assert cache.store.claim("x", "evicted")[0] == "gone"  # untracked: nothing to claim
    make_tree(root, "x/y")
    cache.register("x")
    assert cache.store.claim("x", "evicted", honour_pins=True)[0] == "pinned"


def test_a_directory_registered_during_its_parents_scan_is_not_tracked_twice(
    settings, redis_client, root, monkeypatch
):
    import threading

    from cachemgr import Overlap
    from cachemgr import registration as cache_module

    cache = DiskCache(settings, redis_client)
    make_tree(root, "a")
    real_scan, outcome = cache_module.scanner.scan, {}

    def child_registered(child: DiskCache) -> None:
        try:
            outcome["child"] = child.register("a/b")
        except Overlap as exc:
            outcome["child"] = exc

    def scan_then_a_child_arrives(location, **kwargs):
        found = real_scan(location, **kwargs)
        if location.name == "a":  # the parent's scan is done; a download lands inside it
            make_tree(root, "a/b")
            worker = threading.Thread(
                target=child_registered, args=(DiskCache(settings, redis_client),)
            )
            worker.start()
            worker.join(0.3)
            outcome["waited"] = worker.is_alive()
            outcome["thread"] = worker
        return found

    monkeypatch.setattr(cache_module.scanner, "scan", scan_then_a_child_arrives)
    assert cache.register("a")["status"] == "registered"
    outcome["thread"].join(10)
    assert outcome["waited"] is True  # it waited for the parent's registration
    assert isinstance(outcome["child"], Overlap)  # then found the parent tracked
    assert cache.store.tracked(["a", "a/b"]) == [True, False]


def test_a_registration_waits_only_so_long_for_a_directory_above(cache, root, monkeypatch):
    from cachemgr import registration as cache_module

    monkeypatch.setattr(cache_module, "REGISTER_WAITS", (0.01, 0.01))
    make_tree(root, "x/y")
    cache.client.set(cache.keys.lock("x"), "someone else", px=10_000)
    result = cache.register("x/y")
    assert result["status"] == "skipped" and "'x' above it" in result["reason"]
    assert cache.store.tracked(["x/y"]) == [False]
    cache.client.delete(cache.keys.lock("x"))
    assert cache.register("x/y")["status"] == "registered"


def test_a_registration_that_waited_on_a_deletion_above_does_not_track_a_deleted_directory(
    cache, root
):
    import threading

    from cachemgr import NotOnDisk, Overlap

    make_tree(root, "a/b")
    cache.register("a")
    cache.before_delete = lambda path: time.sleep(0.3)  # the deletion of `a` takes a while
    remover = threading.Thread(target=cache.remove, args=("a",), kwargs={"remove_files": True})
    remover.start()
    time.sleep(0.05)
    with pytest.raises((NotOnDisk, Overlap)):  # waited, then found a/b gone (or a journaled)
        cache.register("a/b")
    remover.join()
    assert not (root / "a").exists() and cache.store.count_entries() == 0
    assert cache.store.total_bytes() == 0


def test_an_entry_that_comes_back_in_the_same_pass_is_decided_once(settings, redis_client, root):
    from cachemgr.passes import enforce_quota

    tight = settings.with_(
        disk_cache_max_bytes=10 * 5 * 4096,
        disk_cache_eviction_policy="fifo",
        disk_cache_batch_size=2,
        disk_cache_lru_eviction_threshold=0.3,
        disk_cache_lru_eviction_target=0.2,
    )
    cache = DiskCache(tight, redis_client)
    for name in "ABCDE":
        make_tree(root, name, files=4, size=4096)
        cache.register(name)
        time.sleep(0.002)
    cache.pin("B", 3600)
    real, played = cache.store.victims, []

    def victims_then_play_the_first(limit: int, offset: int = 0) -> list:
        batch = real(limit, offset)
        if not played:
            played.append(cache.access("A"))  # fifo keeps A in its place
        return batch

    cache.store.victims = victims_then_play_the_first  # type: ignore[method-assign]
    result = enforce_quota(cache)
    assert result.skipped_pinned == ["B"] and result.skipped_changed == ["A"]
    assert [r.path for r in result.removed] == ["C", "D", "E"]
    assert cache.stats()["skipped_pinned"] == 1


def test_a_dry_run_and_the_listing_see_the_pins_around_a_directory(settings, redis_client, root):
    from cachemgr.cleanup import cleanup

    tight = settings.with_(disk_cache_max_bytes=1)
    cache = DiskCache(tight, redis_client)
    cache.pin("a/x", 3600)  # before its parent was registered
    for name in ("a/x", "b"):
        make_tree(root, name)
    cache.register("a")
    cache.register("b")
    lease = cache.client.zscore(cache.keys.pins, "a/x")
    assert cache.info("a").pinned_until == lease and cache.info("b").pinned_until is None
    planned = cleanup(cache, dry_run=True)["evict"]
    done = cleanup(cache)["evict"]
    assert planned["paths"] == done["paths"] == ["b"]
    assert planned["skipped_pinned"] == done["skipped_pinned"] == ["a"]


def test_two_nodes_on_one_root_are_refused_and_a_renamed_node_takes_it_over(
    settings, redis_client, root, caplog
):
    """Another DISK_CACHE_NODE (or key prefix) on the same root rebuilt books of its own in
    silence: with the old node's workers still alive, both booked the same downloads and each
    evicted by its own books."""
    from cachemgr import RootMissing, health, marker
    from cachemgr.cleanup import cleanup
    from cachemgr.reconcile import reconcile

    old = DiskCache(settings, redis_client)
    make_tree(root, "album")
    old.register("album")
    cleanup(old)  # marks the root as the old books'
    old.registry.heartbeat(old.keys, ttl=60)  # its workers are alive
    # Under the old prefix: this test's keys, cleaned up with them.
    renamed = DiskCache(settings.with_(disk_cache_key_prefix=old.keys.prefix + "new:"),
                        redis_client)  # fmt: skip
    with pytest.raises(RootMissing, match=r"names the books of another node .* alive"):
        renamed.register("album")
    with pytest.raises(RootMissing, match="names the books of another node") as refused:
        cleanup(renamed)
    assert "reconcile --force" not in str(refused.value)  # mounted, and another's: not to adopt
    assert renamed.store.count_entries() == 0 and old.store.tracked(["album"]) == [True]
    with pytest.raises(RootMissing, match="names the books of another node"):
        reconcile(renamed, force=True)  # not even forced: it would be taken back and forth
    # A process of that name with no workers of its own (an API set apart by mistake): its
    # stats say which setting to look at, and its /readyz does not blame the root.
    warned = [w for w in renamed.stats()["warnings"] if "another node" in w]
    assert warned and "this process's DISK_CACHE_NODE or DISK_CACHE_KEY_PREFIX" in warned[0]
    assert health.readiness(renamed)["root"] == "ok"
    # Its old workers stopped: a rename, said; the new books take the root over.
    redis_client.delete(old.keys.alive)
    with caplog.at_level("WARNING", logger="cachemgr"):
        assert cleanup(renamed)["status"] == "done"
    assert "was kept by other books" in caplog.text and "take it over" in caplog.text
    assert renamed.store.tracked(["album"]) == [True] and marker.marked(renamed)
    # ...and the old node, started again, is refused in its turn while the new one runs.
    renamed.registry.heartbeat(renamed.keys, ttl=60)
    with pytest.raises(RootMissing, match=r"another node \(" + re.escape(renamed.keys.prefix)):
        old.register("album")


def test_a_cleanup_run_here_goes_on_to_its_end(settings, redis_client, root):
    """`cachemgr cleanup --now` stopped after DISK_CACHE_MAX_EVICTIONS_PER_RUN ("done", usage
    far above the quota) and nothing went on, where the workers continue in new tasks."""
    from cachemgr.continuation import cleanup_through

    cache = DiskCache(settings.with_(disk_cache_max_evictions_per_run=2), redis_client)
    cache.client.set(cache.keys.initialized, "1")
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    result = cleanup_through(cache)
    assert result["passes"] >= 2 and result["more"] is False
    assert result["evict"]["count"] == len(result["evict"]["paths"]) == 4
    assert cache.store.total_bytes() == cache.settings.target_bytes
    assert cleanup_through(cache, dry_run=True)["passes"] == 1


def test_a_new_installs_first_registration_marks_its_root(settings, redis_client, root, tmp_path):
    """Before the node's first cleanup the books held no mark of their root: a shell with
    another DISK_CACHE_ROOT (no worker had published one) was taken for the books', and its
    `rm --now --files` deleted a directory there, never booked, while the real one left the
    books; its `cleanup --now` booked that root's directories and wrote its marker there."""
    from cachemgr import RootMissing, paths
    from cachemgr.cleanup import cleanup

    cache = DiskCache(settings, redis_client)
    for name in ("album1", "album2"):
        make_tree(root, name)
        cache.register(name)
    assert (root / paths.BOOKS_MARKER).is_file()
    other = tmp_path / "other"
    make_tree(other, "album1")
    make_tree(other, "stray")
    shell = DiskCache(settings.with_(disk_cache_root=str(other)), redis_client)
    with pytest.raises(RootMissing, match="not the directory these books were kept for"):
        shell.remove("album1", remove_files=True)
    with pytest.raises(RootMissing):
        cleanup(shell)
    assert (other / "album1").is_dir() and not (other / paths.BOOKS_MARKER).exists()
    assert cache.store.tracked(["album1", "album2", "stray"]) == [True, True, False]
    # The books are the new install's, not lost ones: its first cleanup rebuilds nothing.
    assert cleanup(cache)["rebuilt"] is False


def _register_at_once(settings, name, barrier, said):  # a process of the test below
    from cachemgr import connect

    cache = DiskCache(settings, connect(settings.redis_url))
    barrier.wait()
    try:
        cache.register(name)
        said.put("ok")
    except Exception as exc:
        said.put(f"{type(exc).__name__}: {exc}")


def test_a_new_installs_first_registrations_at_once_agree_on_one_mark(settings, tmp_path):
    """Each marked the root with a token of its own, written over the others' and then
    corrected: one that read the marker in between refused the root ("names other books"),
    and its download was lost (a third of the trials of eight processes)."""
    import multiprocessing
    import uuid

    from cachemgr import connect

    fork = multiprocessing.get_context("fork")
    client = connect(settings.redis_url)
    for trial in range(10):
        root = tmp_path / f"t{trial}"
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        mine = settings.with_(disk_cache_root=str(root), disk_cache_key_prefix=prefix)
        for i in range(6):
            make_tree(root, f"a{i}", files=1)
        barrier, said = fork.Barrier(6), fork.Queue()
        procs = [
            fork.Process(target=_register_at_once, args=(mine, f"a{i}", barrier, said))
            for i in range(6)
        ]
        try:
            for p in procs:
                p.start()
            answers = [said.get(timeout=30) for _ in procs]
            for p in procs:
                p.join(10)
            assert answers == ["ok"] * 6, answers
            token = (root / ".cachemgr-books").read_text().split()[-1]
            assert client.get(f"{prefix}cache:root_mark") == token
        finally:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
