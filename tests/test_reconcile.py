from __future__ import annotations

import os
import shutil
import time

import pytest

from cachemgr import scanner
from cachemgr.cleanup import cleanup
from cachemgr.journal import recover_unfinished
from cachemgr.reconcile import ReconcileBusy, reconcile
from tests.conftest import make_tree


def host_later(monkeypatch, seconds: float) -> None:
    """This host's clock `seconds` on, as reconcile reads it against file times (a ctime
    cannot be set back): with a cache clock as far on, no skew between them."""
    import types

    from cachemgr import clock as module  # where clock.on_the_books reads the host's

    real = time.time
    later = types.SimpleNamespace(
        time=lambda: real() + seconds, sleep=time.sleep, monotonic=time.monotonic
    )
    monkeypatch.setattr(module, "time", later)


def test_reconcile_registers_untracks_resizes_and_recounts(cache, root):
    make_tree(root, "tracked", files=2)
    make_tree(root, "vanishes")
    cache.register("tracked")
    cache.register("vanishes")
    make_tree(root, "new-on-disk")
    shutil.rmtree(root / "vanishes")
    (root / "tracked" / "extra").write_bytes(b"x" * 8192)
    cache.client.set(cache.keys.bytes, 1)  # drifted
    (root / ".cachemgr-trash").mkdir()
    (root / ".cachemgr-trash" / "leftover").write_text("x")

    plan = reconcile(cache, dry_run=True)
    assert plan["registered"] == ["new-on-disk"] and plan["untracked"] == ["vanishes"]
    assert [r["path"] for r in plan["resized"]] == ["tracked"]
    assert cache.store.total_bytes() == 1  # a dry run changes nothing

    report = reconcile(cache)
    assert report["registered"] == ["new-on-disk"] and report["untracked"] == ["vanishes"]
    assert report["trash_items"] == 1
    records = cache.store.all_records()
    assert set(records) == {"tracked", "new-on-disk"}
    assert cache.store.total_bytes() == sum(r[0] for r in records.values())
    assert report["bytes_after"] == cache.store.total_bytes()
    # What the books said before the run, in both: the real run reported its halfway total.
    assert plan["bytes_before"] == report["bytes_before"] == 1


def test_a_new_install_past_its_threshold_evicts_at_its_first_cleanup(settings, redis_client, root):
    from cachemgr import DiskCache

    # Quota for 3 albums; the pipeline registered 4, one more landed unregistered yet.
    unit = 5 * 4096
    tight = settings.with_(disk_cache_max_bytes=int(3 * unit / 0.9))
    cache = DiskCache(tight, redis_client)
    for i in range(4):
        make_tree(root, f"d{i}", files=4, size=4096)
        cache.register(f"d{i}")
    make_tree(root, "d4", files=4, size=4096)
    assert not cache.client.exists(cache.keys.initialized)  # never reconciled: a new install
    result = cleanup(cache)
    assert result["rebuilt"] is False and result["evict"]["count"] >= 1
    assert cache.store.total_bytes() <= cache.settings.target_bytes


def test_flushed_books_are_rebuilt_before_anything_is_evicted(cache, root):
    for i in range(3):
        make_tree(root, f"a{i}")
        cache.register(f"a{i}")
    reconcile(cache)
    before = cache.store.all_records()
    for key in cache.client.scan_iter(match=f"{cache.keys.prefix}*"):
        cache.client.delete(key)  # what FLUSHALL does to our keys
    result = cleanup(cache)
    assert result["status"] == "done"
    after = cache.store.all_records()
    assert {p: r[:2] for p, r in after.items()} == {p: r[:2] for p, r in before.items()}
    assert all((root / p).is_dir() for p in before)


@pytest.mark.parametrize("now_there", ["missing", "a file"])
def test_an_interrupted_deletion_whose_directory_is_gone_is_closed(
    cache, root, now_there, caplog
):
    make_tree(root, "a")
    cache.register("a")
    size = cache.info("a").size_bytes
    cache.store.claim("a", "evicted", deleting_files=True)  # a crash before the files went
    shutil.rmtree(root / "a")
    if now_there == "a file":  # not ours to count as freed: something else took its place
        (root / "a").write_text("someone else's")
    assert recover_unfinished(cache) == []
    said = "its files were gone" if now_there == "missing" else "counted as vanished (other)"
    assert f"deletion of a interrupted (a crash?): finished, {said}" in caplog.text
    stats = cache.stats()
    assert cache.store.unfinished_deletions() == {}
    if now_there == "missing":
        assert (stats["evictions"], stats["bytes_freed"], stats["vanished"]) == (1, size, 0)
    else:
        assert (stats["evictions"], stats["bytes_freed"], stats["vanished"]) == (0, 0, 1)
        assert (root / "a").read_text() == "someone else's"


def test_an_interrupted_deletion_is_put_back_on_the_books(cache, root, caplog):
    make_tree(root, "a")
    cache.register("a")
    entry = cache.store.victims(1)[0]
    cache.store.claim("a", "evicted", expect_registered=entry.registered)  # crash right after
    assert cache.store.count_entries() == 0
    assert cache.store.unfinished_deletions() == {"a": entry.size_bytes}
    assert recover_unfinished(cache) == ["a"]
    assert "deletion of a interrupted (a crash?): back on the books" in caplog.text
    assert cache.store.tracked(["a"]) == [True] and cache.store.unfinished_deletions() == {}


def test_a_held_eviction_gives_way_past_twice_the_quota(cache, root, redis_client, prefix):
    """Held after a rebuild, eviction waited up to an interval whatever the usage: a busy
    pipeline grew the cache to ten times its quota in a minute (a helper's chaos run)."""
    from cachemgr.quota import HOLD_CEILING
    from tests.conftest import cleanup_prefix
    from tests.test_core import UNIT, fill

    fill(cache, root, 10)
    cleanup(cache)  # the books kept and marked
    cleanup_prefix(redis_client, prefix)  # lost
    assert cleanup(cache)["rebuilt"] is True  # and eviction held
    ceiling = HOLD_CEILING * cache.settings.disk_cache_max_bytes
    for i in range(int(ceiling / UNIT) + 8):  # the pipeline goes on during the hold
        make_tree(root, f"busy{i:03d}", files=4, size=4096)
        cache.register(f"busy{i:03d}")
    assert cache.store.total_bytes() > ceiling
    done = cleanup(cache, automatic=True)
    assert done["evict_held_until"] is not None and done["evict"]["count"] > 0
    # The excess over the ceiling goes, not down to the target: below it the hold stands.
    assert ceiling - UNIT < cache.store.total_bytes() <= ceiling


def test_books_lost_then_one_registration_still_evict_nothing_at_the_rebuild(
    cache, root, redis_client, prefix
):
    from tests.conftest import cleanup_prefix
    from tests.test_core import fill

    fill(cache, root, 22)
    cleanup(cache)  # reconciled (books kept from now on), evicted down to the target
    left = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    cache.pin(left[0], 3600)  # a stream holds the oldest
    for i in range(22, 26):
        make_tree(root, f"album{i:02d}", files=4)
    cleanup_prefix(redis_client, prefix)  # FLUSHALL, the pin with it
    cache.register("album25")  # the pipeline goes on before the next cleanup
    # The stats said "ok" and warned of nothing, counting only album25.
    assert any("the books were lost" in w for w in cache.stats()["warnings"])
    result = cleanup(cache)
    # Books not empty, so the run was taken for a new install's: it evicted the directory
    # pinned before the loss, before its holder could renew the pin.
    assert result["rebuilt"] is True and result["evict"]["paths"] == []
    assert (root / left[0]).is_dir()
    # The quota pass the pipeline's next registration sends came 6 ms later and evicted the
    # streamed album all the same: eviction waits a cleanup interval for pins to be renewed.
    make_tree(root, "album26", files=4)
    cache.register("album26")
    held = cleanup(cache, automatic=True, sweep_expired=False)
    assert held["evict"]["paths"] == [] and held["evict_held_until"] > cache.clock()
    # Nor does it expire what the rebuilt books date from the disk as past its TTL (a quota
    # pass is a cleanup now, sweep first): beat's cleanup does, at the hold's end.
    outlived = cache.clock() - cache.settings.disk_cache_ttl_seconds - 60
    redis_client.zadd(cache.keys.lru, {left[0]: outlived})
    passed = cleanup(cache, automatic=True)
    assert passed["sweep"]["paths"] == [] and (root / left[0]).is_dir()
    plan = cleanup(cache, automatic=True, dry_run=True)
    assert plan["sweep"]["paths"] == [] and plan["evict"]["paths"] == []
    redis_client.zadd(cache.keys.lru, {left[0]: cache.clock()})
    # Until just before the next periodic cleanup, an interval after the rebuild started.
    ttl = redis_client.ttl(cache.keys.evict_hold)
    assert 0 < ttl < cache.settings.disk_cache_cleanup_interval
    stats = cache.stats()  # said where an operator looks
    assert stats["evict_held_until"] == held["evict_held_until"]
    assert any("eviction is held" in w for w in stats["warnings"])
    assert cleanup(cache, periodic=True)["evict"]["paths"] == []
    cache.pin(left[0], 3600)  # its holder renews the lease
    after = cleanup(cache)  # a manual cleanup is the operator's word: it is not held
    assert after["evict"]["paths"] and left[0] not in after["evict"]["paths"]
    assert after["evict_held_until"] is None and (root / left[0]).is_dir()
    assert not any("the books were lost" in w for w in cache.stats()["warnings"])


def test_reconcile_progress_reaches_its_total(cache, root):
    # The total counted tracked directories twice (books and disk): the CLI's bar stopped
    # at 50% when nothing was untracked.
    for name in ("a", "b", "c"):
        make_tree(root, name)
        cache.register(name)
    make_tree(root, "new")  # on disk, not on the books
    make_tree(root, "artist/album")
    cache.register("artist/album")  # "artist", on disk, covers it: nothing to register there
    calls: list[tuple[int, int]] = []
    reconcile(cache, progress=lambda done, total, path: calls.append((done, total)))
    assert calls[-1] == (5, 5) and all(total == 5 for _, total in calls), calls


def test_directories_found_again_rank_older_than_what_came_since_the_loss(
    cache, root, redis_client, prefix
):
    """Stamped with the rebuild's `now`, the directories found again on disk outranked the
    pipeline's downloads registered since the books were lost: LRU evicted those first."""

    from tests.conftest import cleanup_prefix

    for i, name in enumerate(("old-b", "old-a", "old-c")):
        make_tree(root, name)
        os.utime(root / name, (1_000_000 + i, 1_000_000 + i))  # downloaded in this order
    cache.register("old-b")
    cleanup(cache)  # reconciled: the books are kept from now on
    cleanup_prefix(redis_client, prefix)  # FLUSHALL
    for name in ("new-1", "new-2"):
        make_tree(root, name)
        cache.register(name)  # the pipeline goes on
    assert cleanup(cache)["rebuilt"] is True
    order = [path for path, _ in redis_client.zrange(cache.keys.lru, 0, -1, withscores=True)]
    assert order == ["old-b", "old-a", "old-c", "new-1", "new-2"]
    # None expires for having been found late: each keeps at least half a TTL.
    assert cleanup(cache, dry_run=True)["sweep"]["count"] == 0
    oldest = redis_client.zrange(cache.keys.lru, 0, 0, withscores=True)[0][1]
    assert oldest >= cache.clock() - cache.settings.disk_cache_ttl_seconds / 2 - 1


def test_a_reconcile_run_by_hand_after_a_loss_holds_eviction_too(
    cache, root, redis_client, prefix
):
    """The stats tell the operator to rebuild: a reconcile run alone set no hold, and the
    directories it found again (ranked oldest) went first at the next quota pass."""
    from tests.conftest import cleanup_prefix
    from tests.test_core import fill

    names = fill(cache, root, 22)
    cleanup(cache)
    kept = sorted(p.name for p in root.iterdir() if p.name in names)
    cache.pin(kept[0], 3600)
    cleanup_prefix(redis_client, prefix)  # FLUSHALL, the pin with it
    make_tree(root, "new-1", files=4)
    cache.register("new-1")
    assert reconcile(cache)["registered"]
    assert redis_client.ttl(cache.keys.evict_hold) > 0
    make_tree(root, "new-2", files=4)
    cache.register("new-2")
    assert cleanup(cache, automatic=True, sweep_expired=False)["evict"]["paths"] == []
    assert (root / kept[0]).is_dir()


def test_a_new_installs_reconcile_books_what_it_finds_as_written_and_holds_nothing(cache, root):
    """No marker, no lost books: a directory the pipeline is about to register was booked
    as the oldest of all, and the next quota pass deleted it before its registration."""
    import time

    make_tree(root, "a")
    cache.register("a")
    time.sleep(0.02)  # file times come from a coarse clock: a few ms behind time.time()
    make_tree(root, "b")  # on disk, its registration still on its way
    assert reconcile(cache)["registered"] == ["b"]
    assert cache.info("b").last_access > cache.info("a").last_access  # as written: just now
    assert not cache.client.exists(cache.keys.evict_hold)


def test_a_plain_reconcile_books_what_it_finds_when_it_was_written(
    cache, root, redis_client, monkeypatch
):
    """Booked as now, albums whose registrations were lost an hour earlier outranked the pipeline's
    downloads of the last hour, and the next quota pass evicted those first."""
    import time

    from cachemgr.cache import DiskCache

    for name in ("lost-1", "lost-2"):
        make_tree(root, name)
        os.utime(root / name / "track00.mp3", (1, 1))  # curl -R: the files' own dates
        time.sleep(0.02)
    written = {n: scanner.scan(root / n).changed for n in ("lost-1", "lost-2")}
    day = 3600.0  # an hour later, well within half the TTL
    later = DiskCache(cache.settings, cache.client, clock=lambda: time.time() + day)
    host_later(monkeypatch, day)  # an hour on for the host as for Redis: no skew
    for name in ("new-1", "new-2"):
        make_tree(root, name)
        later.register(name)  # the pipeline an hour later, the lost ones not registered
    assert later.settings.disk_cache_ttl_seconds > 2 * day
    assert sorted(reconcile(later)["registered"]) == ["lost-1", "lost-2"]
    order = [p for p, _ in redis_client.zrange(later.keys.lru, 0, -1, withscores=True)]
    assert order == ["lost-1", "lost-2", "new-1", "new-2"]
    assert [later.info(n).last_access for n in written] == pytest.approx(list(written.values()))
    assert not later.client.exists(later.keys.evict_hold)  # not a loss of the books


def test_a_plain_reconcile_books_what_it_finds_by_redis_clock(cache, root, redis_client):
    """A worker whose host is an hour behind Redis booked a download written a minute ago
    as an hour old: file times are this host's, the books' Redis's."""
    import time

    from cachemgr.cache import DiskCache

    make_tree(root, "lost")
    behind = DiskCache(cache.settings, cache.client, clock=lambda: time.time() + 3600)
    assert reconcile(behind)["registered"] == ["lost"]
    assert behind.info("lost").last_access == pytest.approx(time.time() + 3600, abs=5)


def test_a_plain_reconcile_books_nothing_more_than_half_a_ttl_back(cache, root, monkeypatch):
    """So that none expires at the next sweep for having been found late."""
    import time

    from cachemgr.cache import DiskCache

    ttl = cache.settings.disk_cache_ttl_seconds
    make_tree(root, "a")
    cache.register("a")
    make_tree(root, "lost")
    now = time.time() + 2 * ttl
    later = DiskCache(cache.settings, cache.client, clock=lambda: now)
    host_later(monkeypatch, 2 * ttl)
    assert reconcile(later)["registered"] == ["lost"]
    assert later.info("lost").last_access == pytest.approx(now - ttl / 2)
    assert cleanup(later, dry_run=True)["sweep"]["paths"] == ["a"]


def test_the_rebuild_keeps_what_the_pipeline_registers_meanwhile_and_what_is_new(
    cache, root, redis_client, prefix
):

    from tests.conftest import cleanup_prefix

    for name in ("old", "busy"):
        make_tree(root, name)
        os.utime(root / name, (1_000_000, 1_000_000))
    cache.register("old")
    cleanup(cache)  # the marker: books kept from now on
    cleanup_prefix(redis_client, prefix)
    make_tree(root, "first")
    cache.register("first")  # after the loss
    make_tree(root, "fresh")  # written since: a download not registered yet
    before = cache.clock()

    def pipeline_meanwhile(done: int, total: int, path: str) -> None:
        if path == "busy" and not cache.store.tracked(["busy"])[0]:
            cache.register("busy")  # the pipeline, while the rebuild walks

    reconcile(cache, progress=pipeline_meanwhile)
    order = [p for p, _ in redis_client.zrange(cache.keys.lru, 0, -1, withscores=True)]
    assert order[0] == "old"  # found again: older than anything since the loss
    assert cache.info("busy").last_access >= before  # the pipeline's own time stands
    assert cache.info("fresh").last_access >= before  # booked as now, not as found again


def test_books_lost_without_the_marker_are_held_too_and_an_upgrade_gets_the_marker(
    cache, root, redis_client, prefix
):
    from cachemgr import paths
    from tests.conftest import cleanup_prefix
    from tests.test_core import fill

    fill(cache, root, 22)
    cleanup(cache)
    marker = root / paths.BOOKS_MARKER
    marker.unlink()  # books kept since before the marker existed
    redis_client.delete(cache.keys.root_mark)  # ... and before it named its root
    cleanup(cache)  # an upgraded install's cleanup marks the root
    assert marker.is_file() and redis_client.exists(cache.keys.root_mark)
    marker.unlink()  # a root the marker could not be written to
    cleanup_prefix(redis_client, prefix)
    assert cleanup(cache, periodic=True)["rebuilt"] is True  # empty books: lost all the same
    assert redis_client.ttl(cache.keys.evict_hold) > 0
    make_tree(root, "late", files=4)
    cache.register("late")
    assert cleanup(cache, automatic=True, sweep_expired=False)["evict"]["paths"] == []


@pytest.mark.parametrize("how", ["a new directory", "another cache's"])
def test_a_root_swapped_under_the_books_is_refused_until_reconcile_force(
    cache, root, redis_client, how
):
    """An unmounted disk's mount point, written to by the pipeline meanwhile, is not empty:
    the passes over it untracked each download they could not see there, and said nothing."""
    from cachemgr import paths
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    names = fill(cache, root, 6)
    cleanup(cache)  # the books are kept, and the root's marker names them
    away = root.with_name("downloads.mounted")
    root.rename(away)  # the disk is unmounted: its mount point shows
    root.mkdir()
    if how == "another cache's":
        (root / paths.BOOKS_MARKER).write_text("books: cache:*\nroot: 0123456789abcdef\n")
    make_tree(root, "written-meanwhile", files=1)
    for run in (lambda: cleanup(cache), lambda: reconcile(cache)):
        with pytest.raises(RootMissing, match="not the directory these books were kept for"):
            run()
    assert sorted(cache.store.all_records()) == sorted(names)  # nothing untracked
    warnings = cache.stats()["warnings"]
    assert any("the last cleanup failed" in w and "is the disk mounted" in w for w in warnings)
    root.rename(root.with_name("downloads.aside"))
    away.rename(root)  # mounted again: everything goes on
    assert cleanup(cache)["status"] == "done"
    assert sorted(cache.store.all_records()) == sorted(names)


def test_reconcile_force_adopts_a_root_replaced_on_purpose(cache, root, redis_client):
    from cachemgr import paths
    from tests.test_core import fill

    fill(cache, root, 3)
    cleanup(cache)
    (root / paths.BOOKS_MARKER).unlink()  # say, restored from a backup without it
    with pytest.raises(Exception, match="marker .cachemgr-books is missing"):
        cleanup(cache)
    assert reconcile(cache, force=True)["untracked"] == []
    # The refusal is resolved at once: the stats and /readyz said "the last cleanup failed"
    # for up to an interval more.
    last = cache.stats()["last_cleanup"]
    assert last["status"] == "resolved" and last["error"] is None
    assert not any("last cleanup failed" in w for w in cache.stats()["warnings"])
    assert cleanup(cache)["status"] == "done"  # the root is marked as the books' again


def test_a_reconcile_resolves_no_failure_but_the_roots(cache, root):
    from cachemgr import history
    from tests.test_core import fill

    fill(cache, root, 2)
    history.record(cache, 1.0, {"status": "failed", "error": "ConnectionError: gone"})
    reconcile(cache)
    assert cache.stats()["last_cleanup"]["status"] == "failed"  # not the root's: stands
    history.record(cache, 2.0, {"status": "failed", "error": "x", "error_code": "root_missing"})
    reconcile(cache, dry_run=True)
    assert cache.stats()["last_cleanup"]["status"] == "failed"  # a dry run changes nothing
    reconcile(cache)
    assert cache.stats()["last_cleanup"]["status"] == "resolved"


def test_a_marker_an_older_version_rewrote_is_marked_again_not_refused(cache, root):
    """An older worker's reconcile (a rolling upgrade, a rollback) rewrites the marker
    without its token: every new cleanup then refused the root as another cache's."""
    from cachemgr import marker, paths
    from tests.test_core import fill

    fill(cache, root, 3)
    cleanup(cache)
    (root / paths.BOOKS_MARKER).write_text(f"books: {cache.keys.prefix}cache:*\n")  # the old
    assert marker.swapped(cache) is None and not marker.marked(cache)
    assert cleanup(cache)["status"] == "done"
    assert marker.marked(cache)  # marked again, with the books' own token
    assert not list(root.glob(f"{paths.BOOKS_MARKER}.*"))  # written aside, then renamed


def test_a_marker_that_cannot_be_written_leaves_nothing_in_the_root(cache, root, monkeypatch):
    """On a full disk the marker's temporary copy stayed in the root, a stray file."""
    import errno

    from cachemgr import marker, paths

    def full(fd: int) -> None:  # created and written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(marker.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        marker._write(cache, "token")
    assert [p.name for p in root.iterdir()] == []
    assert not (root / paths.BOOKS_MARKER).exists()


def test_a_forced_adoption_tells_the_root_it_replaced_apart(cache, root):
    """reconcile --force kept the token: the disk it replaced, mounted again, was taken for
    the books' own, which now described the other disk."""
    from cachemgr import marker, paths
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    fill(cache, root, 2)
    cleanup(cache)
    away = root.with_name("downloads.old-disk")
    root.rename(away)
    make_tree(root, "other/album", files=1)
    reconcile(cache, force=True)  # the new disk adopted on purpose
    assert marker.swapped(cache) is None
    root.rename(root.with_name("downloads.new-disk"))
    away.rename(root)  # the old disk comes back
    with pytest.raises(RootMissing, match="names other books"):
        cleanup(cache)
    assert (root / paths.BOOKS_MARKER).is_file()


def test_books_restored_from_before_a_loss_still_match_the_root(cache, root, prefix):
    """Redis lost its data, the next cleanup rebuilt the books and marked the root with a new
    token; Redis then restored from a copy of the old books (a backup, a replica behind)
    named the old one, and every cleanup, reconcile and registration was refused as for an
    unmounted disk. Books rebuilt after a loss take the root's own token."""
    from cachemgr import marker
    from tests.test_core import fill

    fill(cache, root, 3)
    cleanup(cache)
    token = cache.client.get(cache.keys.root_mark)
    saved = {k: cache.client.dump(k) for k in cache.client.scan_iter(f"{prefix}*")}
    cache.client.delete(*saved)  # the loss
    assert cleanup(cache)["rebuilt"] is True
    assert cache.client.get(cache.keys.root_mark) == token
    cache.client.delete(*cache.client.scan_iter(f"{prefix}*"))
    for key, value in saved.items():  # the old copy, restored
        cache.client.restore(key, 0, value)
    assert marker.swapped(cache) is None
    assert cleanup(cache)["status"] == "done"
    make_tree(root, "after", files=1)
    assert cache.register("after")["status"] == "registered"


def test_remove_with_files_is_refused_on_a_root_that_is_not_the_books(cache, root):
    from cachemgr.errors import RootMissing

    make_tree(root, "album", files=1)
    cache.register("album")
    cleanup(cache)
    root.rename(root.with_name("downloads.mounted"))
    make_tree(root, "album", files=1)  # a same-named directory on the mount point
    with pytest.raises(RootMissing):
        cache.remove("album", remove_files=True)
    assert (root / "album").is_dir() and cache.store.tracked(["album"]) == [True]


def test_an_interrupted_deletion_is_not_settled_by_a_removal_on_a_root_not_the_books(
    cache, root
):
    """A worker killed mid-eviction left `album` in the journal; the disk then unmounted. An
    untrack-only removal settled it as the recovery does, but with no look at the root: the
    empty mount point showed it missing, and it was counted deleted, its files still there."""
    from cachemgr.errors import RootMissing

    make_tree(root, "album", files=1)
    cache.register("album")
    cleanup(cache)
    cache.store.claim("album", "evicted", now=cache.clock())  # then the worker died
    root.rename(root.with_name("downloads.unmounted"))
    root.mkdir()  # the mount point
    before = cache.stats()["evictions"]
    with pytest.raises(RootMissing):
        cache.remove("album", missing_ok=True)
    assert cache.stats()["evictions"] == before and cache.store.unfinished_deletions()


def test_reconcile_clears_the_untracked_warning_it_answers(cache, root):
    import time

    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)
    make_tree(root, "lost", files=1)
    then = time.time() - 7200
    os.utime(root / "lost", (then, then))
    cleanup(cache, periodic=True)
    assert any("not on the books" in w for w in cache.stats()["warnings"])
    reconcile(cache)
    assert not any("not on the books" in w for w in cache.stats()["warnings"])


def test_a_reconcile_before_any_cleanup_makes_no_cleanup_record(cache, root):
    make_tree(root, "album", files=1)
    reconcile(cache)
    assert cache.stats()["last_cleanup"] is None


def test_a_cleanup_during_a_forced_adoption_is_skipped_not_failed(cache, root):
    """reconcile --force writes the marker, then the books' token: a cleanup that read the
    two between those failed with "names other books", which the stats then said."""
    from cachemgr import paths
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    fill(cache, root, 2)
    cleanup(cache)
    (root / paths.BOOKS_MARKER).write_text("books: x\nroot: 0123456789abcdef\n")  # the new
    cache.client.set(cache.keys.adopting, "someone", px=5000)  # the forced reconcile's
    done = cleanup(cache, periodic=True)
    assert done["status"] == "skipped" and "reconcile is adopting the root" in done["reason"]
    stats = cache.stats()
    last = stats["last_cleanup"]
    assert last["status"] == "done" and last["periodic_time"]  # the last outcome; beat ran
    # Nor do the stats call the root refused while the adoption runs (they said "cache not
    # working ... run it again" for the whole walk).
    assert not any("names other books" in w for w in stats["warnings"]), stats["warnings"]
    # Nor a plan, nor a reconcile's (they said the adoption had been cut short, and to run
    # another), nor one not forced: until its end.
    plan = cleanup(cache, dry_run=True)
    assert plan["status"] == "skipped" and "reconcile is adopting the root" in plan["reason"]
    for dry_run in (True, False):
        with pytest.raises(ReconcileBusy, match="a reconcile --force is adopting the root"):
            reconcile(cache, dry_run=dry_run)
    cache.client.delete(cache.keys.adopting)
    with pytest.raises(RootMissing, match="names other books"):
        cleanup(cache, dry_run=True)  # none running: a plan says the refusal
    assert reconcile(cache, dry_run=True, force=True)["dry_run"] is True
    with pytest.raises(RootMissing, match="names other books"):
        cleanup(cache, periodic=True)  # none running: the root is refused, as before
    assert any("names other books" in w for w in cache.stats()["warnings"])


@pytest.mark.parametrize("marker_left", [True, False])
def test_an_unmounted_root_during_a_reconcile_is_a_failure_all_the_same(
    cache, root, marker_left
):
    """Only a forced reconcile's adoption skips a refused cleanup: an empty mount point (or
    one written to, without the marker) while a plain reconcile runs was said at INFO, and
    never recorded."""
    from cachemgr import paths
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    fill(cache, root, 2)
    cleanup(cache)
    for p in root.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    if not marker_left:
        (root / paths.BOOKS_MARKER).unlink()
        make_tree(root, "written-meanwhile", files=1)
    cache.client.set(cache.keys.reconcile_lock, "someone", px=5000)
    said = "is empty while 2 directories are tracked" if marker_left else "marker .* is missing"
    with pytest.raises(RootMissing, match=said):
        cleanup(cache, periodic=True)
    assert cache.stats()["last_cleanup"]["status"] == "failed"


def test_a_root_lost_in_the_middle_of_a_cleanup_is_resolved_by_a_reconcile(
    cache, root, monkeypatch
):
    """Unmounted mid-pass (deletion.take's own check), the failure had no code, and "the last
    cleanup failed" stayed after the reconcile that found the root back."""
    from cachemgr import cleanup as cleanup_module
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    fill(cache, root, 2)
    cleanup(cache)

    def unmounted(*args, **kwargs):
        time.sleep(0.05)  # some way into the pass
        raise RootMissing("the cache root is not a directory (is the disk mounted?)")

    monkeypatch.setattr(cleanup_module, "sweep_or_nothing", unmounted)
    with pytest.raises(RootMissing):
        cleanup(cache)
    last = cache.stats()["last_cleanup"]
    assert last["status"] == "failed" and last["duration_seconds"] >= 0.05  # as long as it ran
    monkeypatch.undo()
    reconcile(cache)
    assert cache.stats()["last_cleanup"]["status"] == "resolved"


def test_reconcile_books_no_lost_found_nor_hidden_directories(cache, root):
    for name in ("lost+found", ".Trash-1000/files", "album"):
        make_tree(root, name, files=1)
    assert reconcile(cache)["registered"] == ["album"]
    assert sorted(cache.store.all_records()) == ["album"]


@pytest.mark.parametrize("new_disk", [True, False])
def test_cleanups_during_a_forced_adoption_are_not_failures(cache, root, new_disk):
    """A new disk has no marker and an emptied root is empty until reconcile --force ends:
    each of beat's cleanups during a long walk was recorded as failed, and fired the alert."""
    from tests.test_core import fill

    fill(cache, root, 2)
    cleanup(cache)
    if new_disk:
        root.rename(root.with_name("downloads.old-disk"))
        for name in ("n1", "n2", "n3"):
            make_tree(root, name, files=1)  # the new disk, no marker
    else:
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p)  # the downloads removed on purpose
    seen = []

    def beat_meanwhile(done: int, total: int, path: str) -> None:
        if not seen:
            seen.append(cleanup(cache, periodic=True)["status"])

    reconcile(cache, force=True, progress=beat_meanwhile)
    assert seen == ["skipped"]
    assert cache.stats()["last_cleanup"]["status"] == "done"  # the one before stands
    assert cleanup(cache, periodic=True)["status"] == "done"  # adopted: cleanups go on
    assert sorted(cache.store.all_records()) == (["n1", "n2", "n3"] if new_disk else [])


def test_a_forced_adoption_cut_short_leaves_the_root_refused(cache, root):
    """Adopted before its walk, a reconcile --force interrupted (the wrong disk: Ctrl-C) left
    the mount point adopted, and cleanups untracked the real disk's downloads."""
    from cachemgr.errors import RootMissing
    from tests.test_core import fill

    names = sorted(fill(cache, root, 2))
    cleanup(cache)
    real = root.with_name("downloads.real-disk")
    root.rename(real)
    for name in ("w1", "w2", "w3"):
        make_tree(root, name, files=1)  # the wrong disk
    calls = []

    def interrupted(done: int, total: int, path: str) -> None:
        calls.append(path)
        if len(calls) == 4:  # the real disk's two untracked, one of the wrong one's booked
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reconcile(cache, force=True, progress=interrupted)
    assert not cache.client.exists(cache.keys.adopting)
    with pytest.raises(RootMissing, match="was cut short"):
        cleanup(cache, periodic=True)
    # The real disk back: its books were half rewritten, so it is refused too (it was taken
    # for the books' own, and the downloads the walk had untracked stayed off them).
    root.rename(root.with_name("downloads.wrong-disk"))
    real.rename(root)
    with pytest.raises(RootMissing, match="run it again over the disk you mean"):
        cleanup(cache, periodic=True)
    with pytest.raises(RootMissing):
        reconcile(cache)
    reconcile(cache, force=True)
    assert sorted(cache.store.all_records()) == names
    assert cleanup(cache, periodic=True)["status"] == "done"


def test_the_adoption_mark_lapses_soon_after_a_crash(cache, root, monkeypatch):
    """Left behind by a killed worker, it hid every refusal (an unmounted disk too) for the
    lock's whole timeout, five minutes by default; renewed only between entries, it lapsed
    during one slow scan, and that cleanup was recorded as failed."""
    from cachemgr import reconcile as reconcile_module
    from cachemgr.reconcile import ADOPTING_SECONDS

    make_tree(root, "a", files=1)
    make_tree(root, "b", files=1)
    cache.client.set(cache.keys.adopting, "a crashed walk's", px=5000)
    monkeypatch.setattr(reconcile_module, "ADOPTING_SECONDS", 0.4)  # renewed every 0.1 s
    ttls = []

    def slow(done: int, total: int, path: str) -> None:
        time.sleep(0.6)  # one scan longer than the mark's life
        ttls.append(cache.client.pttl(cache.keys.adopting))

    reconcile(cache, force=True, progress=slow)
    assert ttls and all(0 < t <= 400 for t in ttls)  # taken over, kept alive throughout
    assert not cache.client.exists(cache.keys.adopting)  # its own, removed
    assert ADOPTING_SECONDS == 60


def test_a_refusal_read_as_the_adoption_ends_is_read_again(cache, root, monkeypatch):
    """The marker read just before a forced reconcile wrote it, the adoption mark read just
    after it was gone: the cleanup was recorded as failed over a root adopted meanwhile."""
    from cachemgr import cleanup as cleanup_module
    from cachemgr.errors import RootMissing

    make_tree(root, "a", files=1)
    cleanup(cache)
    real, calls = cleanup_module._refused, []

    def refused_once(c):
        calls.append(1)
        return RootMissing("its marker .cachemgr-books is missing") if len(calls) == 1 else real(c)

    monkeypatch.setattr(cleanup_module, "_refused", refused_once)
    assert cleanup(cache, periodic=True)["status"] == "done"
    assert len(calls) == 2


def test_beats_cleanup_skipped_for_another_cleanup_still_counts_as_run(cache, root):
    """A chain of quota passes held the cleanup lock at beat's times: beat's skipped runs
    left periodic_time behind, and the stats would have called beat overdue."""
    make_tree(root, "a", files=1)
    cleanup(cache)
    before = cache.stats()["last_cleanup"]
    cache.client.set(cache.keys.cleanup_lock, "a quota pass", px=5000)
    try:
        done = cleanup(cache, periodic=True)
    finally:
        cache.client.delete(cache.keys.cleanup_lock)
    assert done == {"status": "skipped", "reason": "another cleanup is running"}
    after = cache.stats()["last_cleanup"]
    assert after["periodic_time"] and after["periodic_time"] > (before["periodic_time"] or 0)
    assert after["status"] == before["status"] == "done"  # the last outcome stands


def test_a_resize_lost_to_a_registration_meanwhile_is_not_reported_as_made(
    cache, root, monkeypatch
):
    """The records are read before each directory's lock is taken: a registration in
    between stands (RESIZE refuses a record that changed), and the report had still listed
    the resize the books never saw."""
    make_tree(root, "album", files=2)
    cache.register("album")
    (root / "album" / "extra").write_bytes(b"x" * 8192)
    real_scan = scanner.scan

    def registered_meanwhile(location, *args, **kwargs):
        found = real_scan(location, *args, **kwargs)
        if location.name == "album":  # reconcile's rescan
            # the pipeline's registration, booked between the records read and the lock
            cache.store.register("album", 1234, 1, now=cache.clock() + 1)
        return found

    monkeypatch.setattr(scanner, "scan", registered_meanwhile)
    report = reconcile(cache)
    assert report["resized"] == []
    assert report["errors"] == [
        {"path": "album", "error": "changed by another meanwhile; left as it is now"}
    ]
    assert cache.store.all_records()["album"][:2] == (1234, 1)  # the registration stands


def test_a_directory_reconcile_cannot_book_for_a_lock_is_said(cache, root, monkeypatch):
    """A worker killed mid-registration leaves its lock: reconcile's registration of that
    download was skipped, and its report said nothing of it."""
    from cachemgr import registration

    monkeypatch.setattr(registration, "REGISTER_WAITS", ())
    make_tree(root, "huge1")
    cache.client.set(cache.keys.lock("huge1"), "a-killed-worker", px=60_000)
    report = reconcile(cache)
    assert report["registered"] == []
    assert report["errors"] == [{"path": "huge1", "error": "not booked: locked; next time"}]


def test_the_recount_leaves_redis_free_and_loses_no_booking_made_meanwhile(
    cache, root, monkeypatch
):
    """RECOUNT summed every record in one script: 1.2 s of Redis held at 10^6 entries. The
    count goes by HSCAN under WATCH now: a booking meanwhile makes it count again, and a node
    too busy for that gets the one script."""
    import redis.client

    from cachemgr import recount as rec

    for name in ("a", "b", "c"):
        make_tree(root, name, files=2)
        cache.register(name)
    total = cache.store.total_bytes()
    cache.client.set(cache.keys.bytes, 1)  # drifted
    assert rec.recount(cache, batch=1) == total and cache.store.total_bytes() == total
    real, booked = redis.client.Pipeline.hscan, []

    def booking_meanwhile(self, *args, **kwargs):
        booked.append(1)
        if len(booked) == 1:  # the first count meets a registration
            make_tree(root, "d", files=1)
            cache.register("d")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "hscan", booking_meanwhile)
    cache.client.set(cache.keys.bytes, 1)
    counted = rec.recount(cache)
    sizes = sum(r[0] for r in cache.store.all_records().values())
    assert counted == sizes == cache.store.total_bytes() and booked == [1, 1]  # counted again

    tries: list[int] = []

    def always_busy(self, *args, **kwargs):
        tries.append(1)
        cache.client.incrby(cache.keys.bytes, 0)  # every booking writes the total
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "hscan", always_busy)
    cache.client.set(cache.keys.bytes, 1)
    assert rec.recount(cache) == sizes == cache.store.total_bytes()  # by the one script
    assert len(tries) == rec.RECOUNT_TRIES


def test_the_hold_after_a_rebuild_lasts_until_beats_next_run_by_beats_interval(
    cache, root, redis_client, prefix
):
    """Beat every 120 s, the workers' interval an hour: the hold after a rebuild lasted
    almost an hour ("until just before the next periodic cleanup" was 2 min away)."""
    from tests.conftest import cleanup_prefix
    from tests.test_core import fill

    fill(cache, root, 4)
    cleanup(cache)
    cleanup_prefix(redis_client, prefix)  # the books lost
    cache.register("album00")
    redis_client.hset(cache.keys.last_cleanup, "beat_interval", "120")  # beat's cleanup said it
    assert cache.settings.disk_cache_cleanup_interval == 3600
    assert cleanup(cache, periodic=True)["rebuilt"] is True
    assert 0 < redis_client.ttl(cache.keys.evict_hold) <= 120


def test_two_markings_at_once_each_write_a_whole_marker(cache, root):
    """A cleanup's and a reconcile's threads marking the root at once wrote one aside file by
    the process's name: one renamed the other's half-written file, or found none to rename,
    and the marker could hold a token the books did not (the root refused: a CI failure)."""
    import threading

    from cachemgr import marker, paths
    from cachemgr.marker import BOOKS_LINE, ROOT_LINE, books_of

    failed: list[BaseException] = []

    def mark(token: str) -> None:
        for _ in range(150):
            try:
                marker._write(cache, token)
            except OSError as exc:
                failed.append(exc)

    threads = [threading.Thread(target=mark, args=(t,)) for t in ("a" * 16, "b" * 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    text = (root / paths.BOOKS_MARKER).read_text()
    assert text in {f"{BOOKS_LINE}{books_of(cache.keys.prefix)}\n{ROOT_LINE}{t * 16}\n"
                    for t in "ab"}  # fmt: skip
    assert not list(root.glob(f"{paths.BOOKS_MARKER}.*"))


def test_the_seeds_books_are_adopted_at_their_last_access(cache, root):
    """Switching over from the seed's implementation, on its Redis: its cache:lru (no records)
    was taken for tracked, each entry booked as new in the walk's order, and the albums played
    in the last hour were the first evicted, a download registered since with them."""
    now = time.time()
    k = cache.keys
    names = [f"a{i:02d}" for i in range(10)]
    for name in [*names, "never-booked"]:
        make_tree(root, name, files=4, size=4096)
    recent = {n: now - 60 * (i + 1) for i, n in enumerate(names[:3])}  # first in the walk
    old = {n: now - 3600 * (12 + i) for i, n in enumerate(names[3:])}
    cache.client.zadd(k.lru, {**recent, **old, "gone": now - 7200})  # gone: deleted since
    for name in names:
        cache.client.set(f"{k.prefix}dir:{name}", int(now) - 86400, ex=3600)
    cache.client.set(k.bytes, 12345)  # the seed's count, off
    make_tree(root, "new")
    assert cache.register("new")["new"] is True  # the pipeline, right after the switch
    before = cache.stats()
    assert before["unrecorded"] == 11  # said, not "the books are empty"
    assert any(w.startswith("11 directories are on cache:lru with no record") for w in
               before["warnings"]), before["warnings"]  # fmt: skip
    report = reconcile(cache)
    after = cache.stats()
    assert after["unrecorded"] == 0 and not any("cache:lru" in w for w in after["warnings"])
    assert sorted(report["registered"]) == sorted([*names, "never-booked"])
    assert cache.store.tracked(["gone"]) == [False]
    # Long unplayed first, oldest first; the hour's plays and the new download last (one
    # never registered is booked when it was written: just now, by its ctime).
    order = [e.path for e in cache.store.victims(20) if e.path != "never-booked"]
    assert order == [*sorted({**old, **recent}, key={**old, **recent}.__getitem__), "new"]
    assert cache.store.total_bytes() == sum(e.size_bytes for e in cache.store.victims(20))
    assert reconcile(cache)["registered"] == []  # adopted once: nothing left to adopt


@pytest.mark.parametrize("ttl", [86400, 4])
def test_the_seeds_long_unplayed_rank_below_every_directory_played_since(cache, ttl):
    """Booked a millisecond apart above the half-TTL bound, 5,000 long-unplayed seed entries
    outranked one played 2 s after it: LRU evicted that one first. Below it, in their order,
    and (a TTL of 4 s) none so far back that it would expire at once."""
    from cachemgr import DiskCache, registration

    adopting = DiskCache(cache.settings.with_(disk_cache_ttl_seconds=ttl), cache.client)
    now = 1_800_000_000.0
    adopting.clock = lambda: now
    floor = now - ttl / 2
    seen = {f"old{i:04d}": now - 3 * 86400 - i for i in range(5000)}
    seen["played"] = floor + 2 if ttl > 4 else floor + 0.5
    times = registration.last_accessed(adopting, seen)
    assert set(times) == set(seen)
    assert all(t < times["played"] for p, t in times.items() if p != "played")
    oldest_first = sorted((p for p in seen if p != "played"), key=seen.__getitem__)
    booked = [times[p] for p in oldest_first]
    if ttl > 4:  # a millisecond apart: the seed's order kept, no ties
        assert all(a < b for a, b in zip(booked, booked[1:], strict=False))
    assert min(booked) >= now - ttl * 3 / 4 and max(booked) < floor


def test_a_lock_the_seed_left_is_given_the_lock_timeout(cache, root):
    """A crashed seed process's `lock:dir:` (value `locked`, no TTL) kept its directory off
    the books for ever: every registration and reconcile said it would lapse, and it never did."""
    from cachemgr import migrations

    cache.client.set(cache.keys.lock("a"), "locked")
    cache.client.set(cache.keys.lock("b"), "locked:ours", px=60_000)  # cachemgr's own
    migrations.seed_books(cache.store, {}, lock_timeout=30)
    assert 0 < cache.client.ttl(cache.keys.lock("a")) <= 30
    assert 30 < cache.client.ttl(cache.keys.lock("b")) <= 60


def test_the_seeds_times_outlast_a_reconcile_cut_short_and_a_seed_lock(cache, root, monkeypatch):
    """Taken off cache:lru before the walk, the seed's times lived in the reconcile alone: one
    killed midway lost them for good (the next booked the hour's plays as written), and so
    did a directory its seed lock kept unbooked, with nothing said."""
    from cachemgr import registration

    now = time.time()
    played = {f"p{i}": now - 60 * (i + 1) for i in range(3)}
    for name in played:
        make_tree(root, name)
    cache.client.zadd(cache.keys.lru, played)
    cache.client.set(cache.keys.lock("p2"), "locked")  # a crashed seed process's
    real, calls = registration.register, []

    def killed(cache_, path, at=None):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return real(cache_, path, at)

    monkeypatch.setattr(registration, "register", killed)
    with pytest.raises(RuntimeError):
        reconcile(cache)
    monkeypatch.undo()
    assert cache.stats()["unrecorded"] == 2  # said still, and left for the next
    report = reconcile(cache)  # p2's seed lock now lapses, but has not yet
    assert report["registered"] == ["p1"] and "p2" in str(report["errors"])
    assert cache.stats()["unrecorded"] == 1
    cache.client.delete(cache.keys.lock("p2"))  # lapsed
    assert reconcile(cache)["registered"] == ["p2"]
    booked = dict(cache.client.zrange(cache.keys.lru, 0, -1, withscores=True))
    assert booked == pytest.approx(played, abs=0.01)  # the seed's own times, each
    assert cache.stats()["unrecorded"] == 0


def test_the_seeds_times_follow_its_paths_to_the_entry_depth(cache, root, monkeypatch):
    """The seed booked artist/album where cachemgr books at depth 1: its times were dropped,
    and its cache:lru members made REGISTER take `artist` for an overlap; then, taken off
    before the walk, a reconcile cut short lost them."""
    from cachemgr import registration

    now = time.time()
    for name in ("old/album", "new/album", "new/other"):
        make_tree(root, name)
    cache.client.zadd(cache.keys.lru, {"old/album": now - 7200, "new/album": now - 60,
                                       "new/other": now - 600})  # fmt: skip

    def killed(*args, **kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(registration, "register", killed)
    with pytest.raises(RuntimeError):
        reconcile(cache)
    monkeypatch.undo()
    assert cache.stats()["unrecorded"] == 3  # nothing lost, and said
    report = reconcile(cache)
    assert sorted(report["registered"]) == ["new", "old"] and not report["errors"]
    booked = dict(cache.client.zrange(cache.keys.lru, 0, -1, withscores=True))
    assert booked == pytest.approx({"old": now - 7200, "new": now - 60}, abs=0.01)


def test_a_seed_entry_reconcile_cannot_book_leaves_and_blocks_nothing(cache, root):
    """Kept on cache:lru (covered by a directory cachemgr tracks), a seed entry stayed for
    good: the stats warned at every read, and REGISTER took it for an overlap of `a`."""
    make_tree(root, "a/b")
    cache.register("a")
    cache.client.zadd(cache.keys.lru, {"a/b": time.time() - 60})  # the seed's, inside it
    assert cache.register("a")["status"] == "registered"  # no overlap with a record-less one
    reconcile(cache)
    assert cache.stats()["unrecorded"] == 0 and cache.store.tracked(["a/b"]) == [False]
