"""Regressions for the holes an independent review found (each failed before its fix)."""

from __future__ import annotations

import os
import shutil

import pytest

from cachemgr import PathError
from cachemgr.journal import recover_unfinished
from cachemgr.passes import enforce_quota
from tests.conftest import make_tree


def test_a_parent_swapped_for_a_symlink_before_the_rename_deletes_nothing_outside(
    cache, root, canary
):
    make_tree(root, "a/x", files=2)
    (canary / "x").mkdir()
    (canary / "x" / "keep").write_text("outside")
    cache.register("a/x")
    entry = cache.store.victims(1)[0]

    def swap(path: str) -> None:
        shutil.rmtree(root / "a")
        os.symlink(canary, root / "a")

    cache.before_delete = swap
    with pytest.raises(Exception, match="could not delete"):
        cache.take(entry, "evicted")
    assert (canary / "x" / "keep").read_text() == "outside"
    assert cache.store.tracked(["a/x"]) == [True]  # kept on the books, not silently lost


def test_a_symlinked_parent_inside_the_root_is_refused(cache, root):
    make_tree(root, "real/x")
    os.symlink(root / "real", root / "link")
    cache.register("real/x")
    with pytest.raises(PathError, match="symlink"):
        cache.register("link/x")
    assert cache.store.total_bytes() == cache.info("real/x").size_bytes


def test_a_lock_lost_during_the_scan_does_not_put_a_deleted_directory_back(
    cache, root, monkeypatch, caplog
):
    from cachemgr import scanner

    make_tree(root, "a")
    real_scan = scanner.scan

    def slow_scan(location, **kwargs):
        found = real_scan(location, **kwargs)
        cache.client.set(cache.keys.lock("a"), "locked:someone-else")  # ours lapsed, theirs now
        return found

    monkeypatch.setattr(scanner, "scan", slow_scan)
    result = cache.register("a")
    assert result["status"] == "skipped" and "lock" in result["reason"]
    assert cache.store.tracked(["a"]) == [False]
    # Not sent again of itself (a scan as long would lose the lock again): said instead.
    assert "retry_after" not in result
    assert "raise it and register it again" in caplog.text


def undeletable(cache, root) -> None:
    """Twenty directories past the threshold, none of which can be deleted."""
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    (root / ".cachemgr-trash").write_text("not a folder")  # every rename into it fails


def test_an_undeletable_directory_keeps_its_books_and_the_cleanup_goes_on(cache, root):
    undeletable(cache, root)
    result = enforce_quota(cache)
    assert result.removed == [] and len(result.errors) >= 1
    assert "could not delete" in result.errors[0]
    assert cache.store.count_entries() == 20 and cache.store.unfinished_deletions() == {}
    records = cache.store.all_records()
    assert cache.store.total_bytes() == sum(r[0] for r in records.values())


def test_directories_a_cleanup_could_not_delete_are_warned_of(cache, root):
    """Logged as an ERROR on every pass, while the stats and the page warned of nothing."""
    from cachemgr.cleanup import cleanup

    undeletable(cache, root)
    result = cleanup(cache)
    failed = len(result["evict"]["errors"])
    assert failed >= 1 and result["evict"]["count"] == 0
    stats = cache.stats()
    assert stats["last_cleanup"]["delete_failed"] == failed
    assert stats["last_cleanup"]["delete_failed_example"].startswith("could not delete 'd00'")
    assert any(f"could not delete {failed} directory(ies)" in w for w in stats["warnings"])
    # The pass fell short because of them, not of pins (the warning had blamed pinned 0).
    short = stats["last_cleanup"]["evict_short"]
    assert short is not None and f"could not delete {failed}" in short, short
    (root / ".cachemgr-trash").unlink()
    assert cleanup(cache)["evict"]["count"] >= 1
    assert cache.stats()["last_cleanup"]["delete_failed"] == 0
    assert not any("could not delete" in w for w in cache.stats()["warnings"])


def test_recovery_waits_while_the_crashed_workers_lock_is_held(cache, root):
    make_tree(root, "a")
    cache.register("a")
    entry = cache.store.victims(1)[0]
    cache.store.claim("a", "evicted", expect_registered=entry.registered)
    held = cache.lock("a")
    assert held.acquire()
    assert recover_unfinished(cache) == []
    assert cache.store.unfinished_deletions() == {"a": entry.size_bytes}  # not dropped
    held.release()
    assert recover_unfinished(cache) == ["a"]
    restored = cache.info("a")
    assert (restored.registered, restored.last_access) == (entry.registered, entry.last_access)


def test_big_sizes_survive_lua_number_formatting(cache):
    big = 123_456_789_012_345
    cache.store.register("huge", big, 3)
    cache.store.access("huge")
    assert cache.info("huge").size_bytes == big and cache.store.total_bytes() == big


def test_victims_come_with_their_own_snapshot(cache, root):
    make_tree(root, "a")
    cache.register("a")
    entry = cache.store.victims(1)[0]
    assert entry.last_access == cache.info("a").last_access
    cache.access("a")  # played after the choice: the claim must refuse
    assert cache.take(entry, "evicted") == "changed" and (root / "a").is_dir()


@pytest.mark.parametrize("name", ["lost+found", ".Trash-1000", ".Trash", ".cachemgr-other"])
def test_the_roots_own_folders_are_never_registered(cache, root, pipeline, client, name):
    """A registration of `lost+found` was booked, and the next quota pass deleted the folder
    fsck needs with what it recovered: README counts them no downloads, as scans did."""
    (root / name).mkdir(parents=True)
    (root / name / "#12345").write_text("recovered")
    with pytest.raises(PathError, match="the cache root's own"):
        cache.register(name)
    with pytest.raises(PathError, match="the cache root's own"):
        cache.register(f"{name}/inside")
    from urllib.parse import quote

    r = client.post(f"/cache/register/{quote(name)}?wait=10")
    assert r.status_code == 400 and "the cache root's own" in r.get_json()["message"]
    r = client.delete(f"/cache/directories/{quote(name)}?remove_files=true")
    assert r.status_code == 400 and "the cache root's own" in r.get_json()["message"]
    with pytest.raises(Exception, match="the cache root's own"):
        pipeline.register(name).get(timeout=20)
    assert cache.store.count_entries() == 0
    assert (root / name / "#12345").read_text() == "recovered"


def test_a_roots_own_folder_booked_before_is_never_deleted(cache, root, caplog):
    """Books of an older version may hold one: a pass that chooses it takes it off the books
    and keeps its files (kept on the books, it stayed there for good, counted against the
    quota); a removal with --files is refused, said in the log."""
    (root / "lost+found").mkdir()
    (root / "lost+found" / "#7").write_text("recovered")
    cache.store.register("lost+found", 4096, 1, now=1.0)
    with pytest.raises(Exception, match="the cache root's own"):
        cache.remove("lost+found", remove_files=True)
    assert "'lost+found' is the cache root's own" in caplog.text
    assert cache.store.tracked(["lost+found"]) == [True]
    entry = cache.store.victims(1)[0]
    assert cache.take(entry, "evicted") == "vanished"
    assert (root / "lost+found" / "#7").read_text() == "recovered"
    assert cache.store.count_entries() == 0 and cache.store.total_bytes() == 0
    assert "taken off the books, its files kept (it was to be evicted)" in caplog.text
