"""Deletion under races and hostile trees: a pin, a paused worker, a deep tree, a trash that is
a mount point, a parent swapped for a symlink (each a promise of README's guarantees)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest

from cachemgr import DiskCache, trash
from cachemgr.cleanup import cleanup
from cachemgr.errors import BeingDeleted, DeleteFailed, NotTracked
from cachemgr.journal import recover_unfinished
from cachemgr.passes import enforce_quota
from tests.conftest import make_tree


@pytest.fixture(autouse=True)
def _rm_deep(tmp_path):
    """pytest's own clean-up (shutil.rmtree) cannot remove a deep tree on 3.11: rm can."""
    yield
    import subprocess

    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def _deep_tree(root, rel: str, depth: int) -> None:
    top = root / rel
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    fds = [fd]
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fds[-1]), "wb") as f:
            f.write(b"x" * 4096)
    finally:
        for d in fds[1:]:
            os.close(d)
        os.close(fd)


def _books_exact(cache: DiskCache) -> None:
    records = cache.store.all_records()
    assert cache.store.total_bytes() == sum(r[0] for r in records.values())
    for path in records:
        assert (cache.root / path).is_dir(), f"{path} tracked but not on disk"


# --- 1. a deep tree: shutil.rmtree (recursive in 3.11) raises RecursionError, not OSError ----

def test_deep_tree_removal_fails_cleanly(cache, root):
    """A registered deep tree (past Python's recursion limit, where shutil.rmtree raised
    RecursionError on 3.11) is deleted by trash's own walk, and the books follow."""
    _deep_tree(root, "deep", 1200)
    assert cache.register("deep")["status"] == "registered"
    assert cache.remove("deep", remove_files=True)["status"] == "removed"
    assert not (root / "deep").exists() and cache.store.tracked(["deep"]) == [False]
    assert cache.store.unfinished_deletions() == {}  # no half-done removal left in the journal
    _books_exact(cache)


def test_deep_tree_in_trash_does_not_stop_every_cleanup(cache, root):
    """README: 'what could not be deleted there is ... retried by each cleanup's trash.empty,
    one stuck item never stopping a pass'."""
    make_tree(root, "old", files=2)
    cache.register("old")
    (root / trash.TRASH_DIR).mkdir()
    _deep_tree(root / trash.TRASH_DIR, "leftover", 1200)
    # make "old" expired
    late = DiskCache(cache.settings, cache.client,
                     clock=lambda: time.time() + cache.settings.disk_cache_ttl_seconds + 10)
    result = cleanup(late)  # must not raise: the stuck item is logged and left
    assert result["status"] == "done"
    assert result["sweep"]["paths"] == ["old"] and not (root / "old").exists()


# --- 2. a pin asked for between the claim and the rename ------------------------------------

@pytest.mark.parametrize("asked", ["artist/album", "artist/album/new-rip", "artist"])
def test_a_pin_asked_for_during_a_deletion_is_refused(cache, root, asked):
    """The claim checked the leases; a pin granted after it answered pinned_until, and the
    directory went all the same. Now it is refused while the deletion is in flight."""
    make_tree(root, "artist/album", files=3)
    cache.register("artist/album")
    refused: list[BaseException] = []

    def pipeline_pins(rel: str) -> None:  # the pipeline, from another thread, in the window
        def pin() -> None:
            try:
                cache.pin(asked, 600)
            except BeingDeleted as exc:
                refused.append(exc)

        t = threading.Thread(target=pin)
        t.start()
        t.join()

    cache.before_delete = pipeline_pins
    assert cache.take(cache.store.victims(1)[0], "evicted") == "ok"
    assert len(refused) == 1 and "is being deleted" in str(refused[0])
    assert not (root / "artist" / "album").exists()
    assert cache.pin(asked, 600)["path"] == asked  # once it is gone, a pin is taken again


def test_a_lease_that_appears_during_a_deletion_keeps_the_directory(cache, root):
    """A lease written past the claim (an older client's pin, which does not look at the
    deletions in flight) is seen once the directory is moved aside: it goes back, whole."""
    make_tree(root, "album", files=3)
    cache.register("album")
    before = cache.info("album")

    def old_client_pins(rel: str) -> None:
        cache.client.zadd(cache.keys.pins, {"album": time.time() + 600})
        cache.client.zadd(cache.keys.pin_paths, {"album": 0})

    cache.before_delete = old_client_pins
    assert cache.take(cache.store.victims(1)[0], "evicted") == "pinned"
    assert (root / "album" / "track00.mp3").exists()
    assert cache.info("album").size_bytes == before.size_bytes
    _books_exact(cache)
    assert cache.store.unfinished_deletions() == {}


# --- 3. a paused (not crashed) worker whose directory lock lapsed ---------------------------

def test_recovery_racing_a_paused_worker_leaves_books_exact(settings, redis_client, root):
    """recover_unfinished restores a claimed entry whose lock lapsed while the claiming worker
    was only paused; the worker then deletes the files: a tracked path with no directory."""
    s = dataclasses.replace(settings, disk_cache_lock_timeout_seconds=1)
    cache = DiskCache(s, redis_client)
    other = DiskCache(s, redis_client)  # another worker's cleanup
    make_tree(root, "album", files=3)
    cache.register("album")
    recovered = []

    def paused(rel: str) -> None:
        time.sleep(1.3)  # a GC pause / SIGSTOP / VM freeze longer than the lock timeout
        recovered.extend(recover_unfinished(other))

    cache.before_delete = paused
    entry = cache.store.victims(1)[0]
    cache.take(entry, "evicted")
    assert recovered == ["album"]  # the other worker put it back on the books...
    _books_exact(cache)  # ...and the paused worker then deleted its files


def test_deep_tree_evicted_then_every_cleanup_fails(cache, root):
    """A deep download, once expired, makes the cleanup raise RecursionError, and every later
    cleanup too (trash.empty catches only OSError): nothing else expires any more."""
    _deep_tree(root, "deep", 1200)
    cache.register("deep")
    make_tree(root, "old", files=2)
    cache.register("old")
    late = DiskCache(cache.settings, cache.client,
                     clock=lambda: time.time() + cache.settings.disk_cache_ttl_seconds + 10)
    errors = []
    for _ in range(2):
        try:
            cleanup(late)
        except RecursionError as exc:
            errors.append(exc)
    assert not errors, f"{len(errors)} of 2 cleanups raised RecursionError"
    assert not (root / "old").exists()


# --- 4. the trash itself a mount point ------------------------------------------------------

def _can_mount() -> bool:
    return os.geteuid() == 0 and os.path.exists("/proc/self/mountinfo")


@pytest.mark.skipif(not _can_mount(), reason="needs root for a bind mount")
def test_trash_that_is_a_mount_point_is_not_emptied(root, tmp_path):
    """README: 'A directory with a mount point inside ... is not deleted ... and the trash is
    emptied the same way'. A bind mount on the trash folder itself is not looked for."""
    import subprocess

    victim = tmp_path / "victim"  # under /tmp, outside the root
    (victim / "precious").mkdir(parents=True)
    (victim / "precious" / "data.txt").write_text("outside the root")
    (root / trash.TRASH_DIR).mkdir()
    subprocess.run(["mount", "--bind", str(victim), str(root / trash.TRASH_DIR)], check=True)
    try:
        trash.empty(root)
    finally:
        subprocess.run(["umount", str(root / trash.TRASH_DIR)], check=True)
    assert (victim / "precious" / "data.txt").exists(), "outside data deleted through the trash"


# --- 5. a parent swapped for a symlink before take()'s check --------------------------------

def test_parent_swapped_before_the_check_keeps_the_books(cache, root, tmp_path):
    """README: 'if it cannot be moved out of its place (permissions, a mount point inside, a
    parent swapped for a symlink) it is put back on the books exactly as it was'. Swapped
    between the check and the rename it is (test_review_fixes); swapped just before the
    check, the entry is dropped from the books while its files stay on disk, uncounted."""
    make_tree(root, "a/x", files=2)
    cache.register("a/x")
    entry = cache.store.victims(1)[0]
    os.rename(root / "a", root / "a.real")  # e.g. the library being reorganised
    os.symlink(root / "a.real", root / "a")
    with pytest.raises(DeleteFailed, match="a parent is a symlink"):
        cache.take(entry, "evicted")
    assert (root / "a.real" / "x" / "track00.mp3").exists()  # nothing deleted, as promised
    assert cache.store.tracked(["a/x"]) == [True], "dropped from the books, files kept"


# --- 6. a directory that cannot be inspected now (EACCES, EIO) ------------------------------


def test_a_directory_that_cannot_be_inspected_now_is_never_taken_for_gone(
    cache, root, monkeypatch
):
    from cachemgr import paths as paths_module
    from cachemgr.reconcile import reconcile

    make_tree(root, "album", files=3)
    cache.register("album")
    before = cache.info("album")
    real_lstat = os.lstat

    def refused(path, *args, **kwargs):  # a permission or I/O error on this one directory
        if str(path).endswith("/album"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(paths_module.os, "lstat", refused)
    # It was untracked as "no longer a directory": off the books, its files left uncounted.
    with pytest.raises(DeleteFailed, match="cannot inspect it now"):
        cache.take(cache.store.victims(1)[0], "evicted")
    # A quota pass counts it among what it could not delete: kept, and said.
    cache.client.set(cache.keys.bytes, cache.settings.disk_cache_max_bytes + 1)
    short = enforce_quota(cache)
    assert short.removed == [] and short.errors and "could not delete 1" in short.short
    with pytest.raises(DeleteFailed):
        cache.remove("album", remove_files=True)
    report = reconcile(cache)
    assert report["untracked"] == [] and report["errors"][0]["path"] == "album"
    cache.store.claim("album", "evicted", deleting_files=True)  # a crash mid-deletion
    assert recover_unfinished(cache) == [] and "album" in cache.store.unfinished_deletions()
    monkeypatch.undo()
    assert recover_unfinished(cache) == ["album"]
    assert cache.info("album").size_bytes == before.size_bytes
    _books_exact(cache)


class _Killed(BaseException):
    """A worker's SIGKILL at that point (BaseException: nothing on the way catches it)."""


def test_a_removal_interrupted_then_redelivered_still_deletes(cache, root):
    """Killed between its claim and the files' deletion, a remove_directory is redelivered
    (acks_late): the entry waits in the journal, off the books. The redelivery deletes the
    files; it had answered `not_tracked`, and the next cleanup put the directory back."""
    make_tree(root, "album", files=3)
    size = cache.register("album")["size_bytes"]

    def killed(path: str) -> None:
        raise _Killed

    cache.before_delete = killed
    with pytest.raises(_Killed):
        cache.remove("album", remove_files=True)
    cache.before_delete = None
    assert cache.store.unfinished_deletions() == {"album": size}
    # Off the books meanwhile, said as such: `cachemgr info` said only "not tracked".
    with pytest.raises(NotTracked, match=r"not tracked: 'album' \(it is being deleted; one"):
        cache.info("album")

    again = cache.remove("album", remove_files=True, missing_ok=True)
    removed = {"status": "removed", "path": "album", "size_bytes": size, "files_deleted": True}
    assert again == removed
    assert not (root / "album").exists()
    assert cache.store.unfinished_deletions() == {}
    cleanup(cache)
    assert cache.store.tracked(["album"]) == [False]
    assert cache.stats()["total_bytes"] == 0


def test_a_removal_whose_check_met_a_redis_blip_is_retried_to_the_end(cache, root, monkeypatch):
    """A Redis blip at the check after the move aside (Celery retries on ConnectionError):
    the retry deletes the files, and an untrack-only removal meeting the journal untracks."""
    import redis

    make_tree(root, "album", files=2)
    make_tree(root, "single", files=1)
    for path in ("album", "single"):
        cache.register(path)
    cleanup(cache)  # books not new: no rebuild from the disk at the last cleanup
    real = cache.store.still_ours
    blips = iter([True])

    def flaky(path: str, now: float) -> str:
        if next(blips, False):
            raise redis.ConnectionError("blip")
        return real(path, now)

    monkeypatch.setattr(cache.store, "still_ours", flaky)
    with pytest.raises(redis.ConnectionError):
        cache.remove("album", remove_files=True, missing_ok=True)
    assert cache.remove("album", remove_files=True, missing_ok=True)["status"] == "removed"
    assert not (root / "album").exists()

    # A cleanup's eviction of `single` crashed after its claim: asked to untrack it only.
    cache.store.claim("single", "evicted", now=cache.clock())
    assert cache.remove("single")["status"] == "removed"
    assert (root / "single").is_dir() and cache.store.unfinished_deletions() == {}
    cleanup(cache)
    assert cache.store.tracked(["album", "single"]) == [False, False]


def test_a_removal_waits_out_a_scan_rather_than_be_sent_again_minutes_later(cache, root):
    """A removal meeting a registration's lock (a scan: under a second) answered "locked" at
    once, and its task was sent again when that lock would lapse: 5 minutes later."""
    make_tree(root, "album", files=2)
    cache.register("album")
    key = cache.keys.lock("album")
    cache.client.set(key, "locked:a-scan", px=300_000)
    done = threading.Timer(0.3, lambda: cache.client.delete(key))
    done.start()
    try:
        removed = cache.remove("album", remove_files=True)
    finally:
        done.join()
    assert removed["status"] == "removed" and not (root / "album").exists()
