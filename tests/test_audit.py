"""Downloads on disk that no registration booked are said, in the log and the stats."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import types

from cachemgr import DiskCache, scanner
from cachemgr import events as event_log
from cachemgr.audit import strays, untracked
from cachemgr.cleanup import cleanup
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree

HOUR = 3600


def unlistable(monkeypatch, name: str) -> None:
    """The scanner's walks meet `name` as a worker without the right to list it would."""
    import errno

    from cachemgr import scanner

    real = os.scandir

    def refuse(path):
        if str(path).endswith(f"/{name}"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(scanner.os, "scandir", refuse)


def host_later(monkeypatch, seconds: float = 2 * HOUR) -> None:
    """This host's clock `seconds` on, as the audit reads it against file times (the books
    go by Redis's clock, cache.clock): a file's ctime cannot be set back."""
    from cachemgr import audit

    real = time.time
    monkeypatch.setattr(audit, "time", types.SimpleNamespace(time=lambda: real() + seconds))


def aged(root, *names: str, seconds: float = 2 * HOUR) -> None:
    then = time.time() - seconds
    for name in names:
        os.utime(root / name, (then, then))


def test_only_settled_directories_the_books_do_not_cover_are_counted(cache, root):
    for name in ("booked", "lost-1", "lost-2", "writing", "artist/album"):
        make_tree(root, name, files=1)
    cache.register("booked")
    cache.register("artist/album")  # off the entry depth: its `artist` is accounted for
    aged(root, "booked", "lost-1", "lost-2", "artist")  # "writing" changed a moment ago
    found = untracked(cache, older_than=time.time() - HOUR, batch=2)
    assert found["count"] == 2 and found["examples"] == ["lost-1", "lost-2"]
    assert found["unlisted"] == {"count": 0, "example": None}


def test_beats_cleanup_says_what_is_not_on_the_books_until_reconcile(cache, root, caplog):
    """A registration lost with the broker: 200 MiB untracked at 150% of the quota, while
    the stats said ok and warned of nothing."""
    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)  # the books are kept from now on
    make_tree(root, "lost", files=1)
    aged(root, "lost")
    result = cleanup(cache, periodic=True)
    assert result["untracked"]["count"] == 1 and result["untracked"]["examples"] == ["lost"]
    assert "1 directory(ies) in the root are not on the books, e.g. 'lost'" in caplog.text
    stats = cache.stats()
    assert stats["last_cleanup"]["untracked"] == 1
    assert any("not on the books, e.g. 'lost'" in w for w in stats["warnings"])
    assert "untracked" not in cleanup(cache, automatic=True)  # only beat's look; it stands
    assert cache.stats()["last_cleanup"]["untracked_example"] == "lost"
    reconcile(cache)
    assert cleanup(cache, periodic=True)["untracked"]["count"] == 0
    assert not any("not on the books" in w for w in cache.stats()["warnings"])


def test_a_cleanup_stands_when_the_root_cannot_be_listed(settings, redis_client, root, monkeypatch):
    from cachemgr import audit

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    cache = DiskCache(settings, redis_client)
    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)  # the books are kept: no reconcile walks the root below
    make_tree(root, "lost", files=1)
    aged(root, "lost")
    assert cleanup(cache, periodic=True)["untracked"]["count"] == 1
    with monkeypatch.context() as patched:
        patched.setattr(audit.scanner, "directories_at_depth", unreadable)
        result = cleanup(cache, periodic=True)
        assert result["status"] == "done" and "Permission denied" in result["untracked"]["error"]
        last = cache.stats()["last_cleanup"]
        # The count of the look that worked stands, said to be old, not passed off as now's.
        assert last["untracked"] == 1 and "Permission denied" in last["audit_error"]
        said = [w for w in cache.stats()["warnings"] if "look for directories" in w]
        assert len(said) == 1 and "from an earlier cleanup" in said[0]
    cleanup(cache, periodic=True)
    assert cache.stats()["last_cleanup"]["audit_error"] is None
    assert not any("look for directories" in w for w in cache.stats()["warnings"])


def test_metrics_count_what_is_not_on_the_books(client, cache, root, monkeypatch):
    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)
    make_tree(root, "lost", files=1)
    aged(root, "lost")
    (root / "stray.flac").write_bytes(b"x")
    later = DiskCache(cache.settings, cache.client, clock=lambda: time.time() + 2 * HOUR)
    host_later(monkeypatch)
    cleanup(later, periodic=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert "cachemgr_untracked_directories 1.0" in text
    assert "cachemgr_stray_files 1.0" in text
    assert f"cachemgr_stray_bytes {float(os.lstat(root / 'stray.flac').st_blocks * 512)}" in text


def test_stray_files_outside_every_download_are_counted(settings, redis_client, root):
    """`root/stray.flac` and a download's files written beside its directory filled the
    disk uncounted and were never deleted, and nothing said so."""
    cache = DiskCache(dataclasses.replace(settings, disk_cache_entry_depth=2), redis_client)
    for name in ("artist/album", "loose/track", "off-depth/cd1"):
        make_tree(root, name, files=1)
    (root / "stray.flac").write_bytes(b"x" * 9000)
    (root / "artist" / "cover.jpg").write_bytes(b"x" * 100)
    (root / "loose" / "track.flac").write_bytes(b"x" * 5000)
    (root / "off-depth" / "track.flac").write_bytes(b"x")  # inside a tracked directory
    os.symlink("/etc/passwd", root / "artist" / "link")
    cache.register("artist/album")
    cache.register("off-depth")  # off the entry depth: its files are counted there
    cleanup(cache)  # the marker: the root's own, never a stray
    others: list[str] = []
    found = list(scanner.directories_at_depth(root, 2, others=others))
    assert found == ["artist/album", "loose/track", "off-depth/cd1"]
    assert sorted(others) == [
        "artist/cover.jpg", "artist/link", "loose/track.flac", "off-depth/track.flac", "stray.flac"
    ]  # fmt: skip
    assert strays(cache, others, older_than=time.time() - HOUR)["files"] == 0  # all new
    later = strays(cache, others, older_than=time.time() + 1)
    sizes = [os.lstat(root / p).st_blocks * 512 for p in ("artist/cover.jpg", "artist/link")]
    sizes += [os.lstat(root / p).st_blocks * 512 for p in ("loose/track.flac", "stray.flac")]
    assert later == {"files": 4, "bytes": sum(sizes), "example": later["example"]}
    assert later["example"] in others


def test_files_beside_a_directory_registered_below_the_entry_depth_are_strays(cache, root):
    """`dl2/sub` registered (off the entry depth): `dl2/top` was on no books and in no
    warning, and stayed once `dl2/sub` was evicted."""
    make_tree(root, "dl2/sub/inner", files=1)
    make_tree(root, "dl2/extra", files=1)
    (root / "dl2" / "top").write_bytes(b"x" * 9000)
    (root / "dl2" / "extra" / "bonus.flac").write_bytes(b"x" * 5000)
    # What a look at the root passes over, there too: cachemgr's trash (a disk mounted at
    # dl2 has its own), a file system's lost+found.
    make_tree(root, "dl2/.cachemgr-trash/item-1", files=1)
    make_tree(root, "dl2/lost+found", files=1)
    cache.register("dl2/sub")
    aged(root, "dl2")
    others: list[str] = []
    found = untracked(cache, older_than=time.time() - HOUR, others=others)
    assert found["count"] == 0  # dl2 holds a tracked directory: not a download of its own
    listed = sorted(p for p in others if p.startswith("dl2/"))
    assert listed == [
        "dl2/extra/bonus.flac", "dl2/extra/track00.mp3", "dl2/sub/inner/track00.mp3", "dl2/top"
    ]  # fmt: skip
    said = strays(cache, others, older_than=time.time() + 1)  # dl2/sub's own: not strays
    assert said["files"] == 3 and said["bytes"] >= 9000 + 5000 + 4096


def test_beats_cleanup_warns_of_stray_files_that_fill_the_quota(
    settings, redis_client, root, caplog, monkeypatch
):
    make_tree(root, "booked", files=1)
    (root / "cover.jpg").write_bytes(b"x" * 100)
    # A node of its own: the stats read the quota its workers published otherwise.
    settings = dataclasses.replace(settings, disk_cache_max_bytes=10 * 2**20, disk_cache_node="s")
    cache = DiskCache(settings, redis_client, clock=lambda: time.time() + 2 * HOUR)
    host_later(monkeypatch)
    cache.register("booked")
    cleanup(cache, periodic=True)
    last = cache.stats()["last_cleanup"]
    assert (last["stray_files"], last["stray_example"]) == (1, "cover.jpg")
    assert last["stray_bytes"] < 0.01 * settings.disk_cache_max_bytes  # a cover: counted only
    assert not any("outside every download" in w for w in cache.stats()["warnings"])
    (root / "album.zip").write_bytes(b"x" * (settings.disk_cache_max_bytes // 50))
    os.utime(root / "album.zip", (1, 1))
    cleanup(cache, periodic=True)
    assert cache.stats()["last_cleanup"]["stray_files"] == 2
    warnings = cache.stats()["warnings"]
    said = [w for w in warnings if "2 file(s) in the root" in w and "outside every download" in w]
    assert len(said) == 1 and said[0] in caplog.text  # one wording in the log and the stats


def test_names_that_are_not_utf8_are_said_not_a_failed_cleanup(
    settings, redis_client, root, caplog, client, monkeypatch
):
    """A stray `\xff-stray.flac` (a Latin-1 name) failed every periodic cleanup, after its
    deletions, with a UnicodeEncodeError: nothing was recorded, and beat looked down. Such a
    directory was then counted untracked, with advice (reconcile) that cannot book it."""
    make_tree(root, "booked", files=1)
    bad_file = os.path.join(os.fsencode(root), b"caf\xe9.flac")
    with open(bad_file, "wb") as f:
        f.write(b"x" * 100)
    bad_dir = os.path.join(os.fsencode(root), b"\xff-album")
    os.mkdir(bad_dir)
    os.utime(bad_dir, (1, 1))
    cache = DiskCache(settings, redis_client, clock=lambda: time.time() + 2 * HOUR)
    host_later(monkeypatch)
    cache.register("booked")
    result = cleanup(cache, periodic=True)
    assert result["status"] == "done"
    assert result["untracked"]["count"] == 0
    assert result["untracked"]["unnamable"] == {"count": 1, "example": "\\xff-album"}
    assert "cannot book (not UTF-8, or read as a path" in caplog.text
    assert "e.g. '\\xff-album'" in caplog.text and "rename" in caplog.text
    said = [w for w in cache.stats()["warnings"] if "not UTF-8" in w]
    assert said and "e.g. '\\xff-album'" in said[0] and "rename them" in said[0]
    assert "cachemgr_unnamable_directories 1.0" in client.get("/metrics").get_data(as_text=True)
    last = cache.stats()["last_cleanup"]
    assert (last["stray_files"], last["stray_example"]) == (1, "caf\\xe9.flac")
    # A reconcile's report names it readably, and the API can send it (a 500 before).
    report = reconcile(cache)
    assert {"path": "\\xff-album", "error": "path is not valid UTF-8"} in report["errors"]
    reply = client.post("/cache/reconcile?wait=10")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    errors = reply.get_json()["result"]["errors"]
    assert any(e["path"] == "\\xff-album" for e in errors)


def test_a_directory_above_the_entry_depth_that_cannot_be_listed_is_said(
    settings, redis_client, root, monkeypatch, caplog
):
    """`chmod 000 artist`: its albums were neither booked by reconcile nor counted by the
    audit, and nothing said so."""


    cache = DiskCache(dataclasses.replace(settings, disk_cache_entry_depth=2), redis_client)
    make_tree(root, "artist/album", files=1)
    make_tree(root, "open/album", files=1)
    unlistable(monkeypatch, "artist")
    found = untracked(cache, older_than=time.time() + 1)
    assert found["unlisted"] == {"count": 1, "example": "artist"}
    report = reconcile(cache)
    assert report["registered"] == ["open/album"]
    assert report["errors"] == [{"path": "artist", "error": (
        "cannot be listed (permissions?): the downloads inside it are not seen")}]  # fmt: skip
    cleanup(cache, periodic=True)
    assert "1 directory(ies) in the root cannot be listed, e.g. 'artist'" in caplog.text
    last = cache.stats()["last_cleanup"]
    assert (last["unlisted"], last["unlisted_example"]) == (1, "artist")
    from api.metrics import CacheCollector

    gauges = {m.name: m.samples[0].value for m in CacheCollector(cache).collect() if m.samples}
    assert gauges["cachemgr_unlisted_directories"] == 1
    assert any("cannot be listed, e.g. 'artist'" in w for w in cache.stats()["warnings"])


def test_a_name_that_is_not_utf8_inside_a_tracked_directory_is_no_warning(
    settings, redis_client, root
):
    """`artist` registered off the entry depth counts `artist/caf\\xe9`: "rename them, their
    bytes are never counted" was false."""
    cache = DiskCache(dataclasses.replace(settings, disk_cache_entry_depth=2), redis_client)
    make_tree(root, "artist", files=1)
    os.mkdir(os.path.join(os.fsencode(root), b"artist", b"caf\xe9"))
    cache.register("artist")
    assert untracked(cache, older_than=time.time() + 1)["unnamable"]["count"] == 0


def test_register_latest_says_when_the_newest_may_be_where_it_cannot_look(
    settings, redis_client, root, monkeypatch
):
    """The newest download sat in a directory the worker could not list: an older one was
    booked again, in silence."""


    cache = DiskCache(dataclasses.replace(settings, disk_cache_entry_depth=2), redis_client)
    make_tree(root, "open/album", files=1)
    make_tree(root, "Locked/album", files=1)
    unlistable(monkeypatch, "Locked")
    done = cache.register_latest()
    assert done["path"] == "open/album"
    assert "cannot be listed, e.g. 'Locked'" in done["warning"]
    monkeypatch.undo()
    time.sleep(0.02)
    os.mkdir(os.path.join(os.fsencode(root), b"new", ))
    os.mkdir(os.path.join(os.fsencode(root), b"new", b"\xff-x"))  # the newest, unbookable
    done = cache.register_latest()
    said = "the newest directory, 'new/\\xff-x', has a name that cannot be booked (not UTF-8)"
    assert said in done["warning"]


def test_register_latest_over_a_root_of_unbookable_names_says_why(cache, root):
    import pytest

    from cachemgr.errors import NotOnDisk

    os.mkdir(os.path.join(os.fsencode(root), b"\xff-only"))
    with pytest.raises(NotOnDisk, match=r"has a name that cannot be booked \(not UTF-8\)"):
        cache.register_latest()


def test_names_normalize_refuses_are_passed_over_and_said_as_unbookable(
    settings, redis_client, root, monkeypatch, caplog
):
    """A directory named '\\evil' or '%2e%2e' (legal on the disk) was the newest download,
    and register_completed_download failed on it while the real newest went unbooked; the
    audit told to reconcile them, which refuses them."""
    import logging

    cache = DiskCache(settings, redis_client, clock=lambda: time.time() + 2 * HOUR)
    make_tree(root, "dl2", files=1)
    time.sleep(0.02)
    for name in ("\\evil", "%2e%2e"):
        make_tree(root, name, files=1)
        os.utime(root / name, (1, 1))
    done = cache.register_latest()
    assert done["path"] == "dl2", done
    assert "has a name that cannot be booked (path " in done["warning"]
    host_later(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cachemgr"):
        result = cleanup(cache, periodic=True)
    assert result["untracked"]["count"] == 0
    assert result["untracked"]["unnamable"]["count"] == 2
    assert "books them" not in caplog.text and "rename them" in caplog.text


def test_a_worker_behind_redis_does_not_take_a_download_being_written_for_a_lost_one(
    settings, redis_client, root
):
    """File times are this host's clock, the books' Redis's: a worker two hours behind
    counted every download being written as untracked (a lost registration?), and its
    files as strays."""
    from cachemgr.audit import report

    make_tree(root, "writing", files=1)
    (root / "cover.jpg").write_bytes(b"x")
    behind = DiskCache(settings, redis_client, clock=lambda: time.time() + 2 * HOUR)
    found = report(behind)
    assert found["count"] == 0 and found["stray"]["files"] == 0, found


def test_beats_cleanup_untracks_what_was_deleted_by_hand(cache, root, caplog):
    """A tracked album removed with `rm -rf` stayed on the books through every cleanup, its
    bytes counted against the quota (a real download evicted in its place), until someone
    ran a reconcile."""
    import logging
    import shutil

    from cachemgr import audit
    from cachemgr import events as event_log

    # Registered three intervals ago: past what beat rescans (recheck: the latest ones).
    then = DiskCache(cache.settings, cache.client, clock=lambda: time.time() - 3 * HOUR)
    for name in ("kept", "by-hand", "artist/gone-too", "writing"):
        make_tree(root, name, files=2)
        then.register(name)
    kept = cache.store.info("kept").size_bytes
    cleanup(cache)  # the books' first: it reconciles new books with the disk
    shutil.rmtree(root / "by-hand")
    shutil.rmtree(root / "artist")
    shutil.rmtree(root / "writing")
    lock = cache.lock("writing")  # its registration under way: not this look's to judge
    assert lock.acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="cachemgr"):
            result = cleanup(cache, periodic=True)
    finally:
        lock.release()
    assert result["gone"]["count"] == 2
    assert sorted(result["gone"]["examples"]) == ["artist/gone-too", "by-hand"]
    assert cache.store.tracked(["kept", "by-hand", "artist/gone-too", "writing"]) == [
        True, False, False, True
    ]  # fmt: skip
    assert cache.stats()["vanished"] == 2
    events = {e["path"]: e["event"] for e in event_log.latest(cache.store, 20)}
    assert events["by-hand"] == events["artist/gone-too"] == "vanished"
    assert "2 tracked directory(ies) were gone from the disk" in caplog.text
    assert cleanup(cache)["status"] == "done" and "gone" not in cleanup(cache)  # beat's only
    assert audit.gone(cache) == {"count": 1, "examples": ["writing"], "kept": 0,
                                 "kept_example": None}  # its lock let go
    assert cache.store.total_bytes() == kept and (root / "kept").is_dir()


def test_a_gone_directory_downloaded_again_meanwhile_is_kept_not_deleted(cache, root, monkeypatch):
    """The look saw it missing; before its untracking the pipeline wrote it again: the
    untracking (deletion.take then) deleted the new download, counted as freed."""
    import shutil

    from cachemgr import audit

    make_tree(root, "album", files=2)
    cache.register("album")
    shutil.rmtree(root / "album")
    real = cache.store.entries

    def written_again(items, *args, **kwargs):
        make_tree(root, "album", files=3)  # the pipeline, between the look and the lock
        return real(items, *args, **kwargs)

    monkeypatch.setattr(cache.store, "entries", written_again)
    assert audit.gone(cache)["count"] == 0
    assert len(os.listdir(root / "album")) == 3 and cache.store.tracked(["album"]) == [True]
    assert cache.stats()["bytes_freed"] == 0 and cache.stats()["vanished"] == 0


def test_most_of_the_books_missing_is_taken_for_an_unmounted_disk(cache, root):
    import shutil

    from cachemgr import audit

    for i in range(30):
        make_tree(root, f"d{i:02d}")
        cache.register(f"d{i:02d}")
    for i in range(25):
        shutil.rmtree(root / f"d{i:02d}")
    found = audit.gone(cache)
    assert found["count"] == 0 and "25 of 30 tracked directories" in found["refused"]
    assert cache.store.count_entries() == 30  # reconcile decides, on purpose


def test_the_look_for_gone_directories_is_bounded_and_resumes(cache, root):
    """It walked every tracked directory in one go, after the cleanup, unbounded."""
    import shutil

    from cachemgr import audit

    for i in range(300):
        os.makedirs(root / f"d{i:03d}")
        cache.store.register(f"d{i:03d}", 4096, 0)
    for i in (3, 77, 150, 220, 299):
        shutil.rmtree(root / f"d{i:03d}")
    looks, untracked = 0, 0
    while True:
        found = audit.gone(cache, batch=50, budget=0)  # one batch a look
        looks, untracked = looks + 1, untracked + found["count"]
        if not cache.client.exists(cache.keys.gone_cursor):
            break
    assert looks > 1 and untracked == 5 and cache.store.count_entries() == 295


def test_downloads_on_a_disk_under_the_root_unmounted_are_not_untracked(cache, root):
    """root/disk2 a disk of its own, not mounted: its albums are missing, root/disk2 the bare
    empty mount point, while the root's own marker is fine."""
    import shutil

    from cachemgr import audit

    for i in range(3):
        make_tree(root, f"mine{i}")
        cache.register(f"mine{i}")
    make_tree(root / "disk2", "artist/album")
    cache.register("disk2/artist/album")
    make_tree(root, "gone-by-hand")
    cache.register("gone-by-hand")
    shutil.rmtree(root / "disk2" / "artist")  # what the bare mount point shows of it...
    bare(root / "disk2")  # ...unchanged since before the disk was mounted over it
    shutil.rmtree(root / "gone-by-hand")
    shutil.rmtree(root / "mine0")
    (root / "mine0").write_text("a file where the album was")
    found = audit.gone(cache)
    # Kept, said, for reconcile; the others go in the same look (one kept blocked them all).
    assert (found["kept"], found["kept_example"]) == (1, "disk2/artist/album")
    assert found["count"] == 2 and sorted(found["examples"]) == ["gone-by-hand", "mine0"]
    assert cache.store.tracked(["disk2/artist/album", "gone-by-hand"]) == [True, False]
    assert (root / "mine0").read_text() == "a file where the album was"  # untracked only
    (root / "disk2" / "other").mkdir()  # the disk back, or something written there: not empty
    assert audit.gone(cache)["count"] == 1


def _quota_of(cache: DiskCache, directories: int) -> DiskCache:
    """The cache with a quota that holds `directories` of the size of those registered."""
    each = cache.store.total_bytes() // cache.store.count_entries()
    return DiskCache(cache.settings.with_(disk_cache_max_bytes=directories * each), cache.client)


def test_beat_untracks_directories_gone_before_it_weighs_the_quota(cache, root):
    """Beat's cleanup evicted real downloads in the place of directories deleted by hand,
    then untracked those in the same run: the disk was under the threshold all along."""
    cache.client.set(cache.keys.initialized, "1")  # books kept all along: no rebuild first
    for i in range(5):
        make_tree(root, f"d{i}")
        cache.register(f"d{i}")
    each = cache.store.total_bytes() // 5
    cache = _quota_of(cache, 4)
    for name in ("d3", "d4"):  # by hand: three directories left, under the threshold
        shutil.rmtree(root / name)
    result = cleanup(cache, periodic=True)
    assert result["gone"]["count"] == 2 and result["evict"]["count"] == 0, result
    assert cache.store.tracked([f"d{i}" for i in range(3)]) == [True] * 3
    assert all((root / f"d{i}").is_dir() for i in range(3))
    assert cache.store.total_bytes() == 3 * each


def test_a_pass_keeps_what_is_missing_under_a_disk_not_mounted(cache, root):
    """What beat's audit keeps on the books (missing under a bare mount point), a quota or
    expiry pass untracked as vanished, counting its bytes as freed: back on the disk, the
    download was off the books."""
    cache.client.set(cache.keys.initialized, "1")
    make_tree(root / "disk2", "artist/album")
    cache.register("disk2/artist/album")  # the oldest: the first a pass takes
    for i in range(3):
        make_tree(root, f"mine{i}")
        cache.register(f"mine{i}")
    cache = _quota_of(cache, 3)
    shutil.rmtree(root / "disk2" / "artist")  # what the bare mount point shows of it
    bare(root / "disk2")
    result = cleanup(cache)
    assert cache.store.tracked(["disk2/artist/album"]) == [True]
    evict = result["evict"]
    assert len(evict["errors"]) == 1 and "disk not mounted" in evict["errors"][0], evict
    events = [e for e in event_log.latest(cache.store, 50) if e["event"] == "vanished"]
    assert events == []
    assert evict["count"] >= 1 and evict["vanished"] == []  # the pass went on to the next


def test_a_registration_keeps_what_is_missing_under_a_disk_not_mounted(cache, root):
    """A pipeline re-registering a download on a disk under the root while that disk was not
    mounted took it off the books (vanished), as beat's audit and a pass do not."""
    import pytest

    from cachemgr.errors import NotOnDisk

    make_tree(root / "disk2", "artist/album")
    cache.register("disk2/artist/album")
    shutil.rmtree(root / "disk2" / "artist")
    bare(root / "disk2")
    with pytest.raises(NotOnDisk, match="kept on the books: missing under a disk.s mount point"):
        cache.register("disk2/artist/album")
    assert cache.store.tracked(["disk2/artist/album"]) == [True]
    os.utime(root / "disk2")  # emptied just now, by hand: gone for good
    with pytest.raises(NotOnDisk, match="taken off the books"):
        cache.register("disk2/artist/album")
    assert cache.store.tracked(["disk2/artist/album"]) == [False]


def bare(directory) -> None:
    """As the mount point a disk leaves when it is not mounted: unchanged since before it."""
    then = time.time() - 3600
    os.utime(directory, (then, then))


def test_an_artists_last_album_deleted_by_hand_is_untracked_not_kept(cache, root):
    """Kept as "a disk not mounted" whenever its artist's folder was left empty: beat's audit
    kept it, then every quota pass kept it too, its bytes on the books for good, and real
    downloads were evicted in its place. The folder changed when the album went."""
    cache.client.set(cache.keys.initialized, "1")
    for name in ("artist/album", "other/album"):
        make_tree(root, name)
        cache.register(name)
    shutil.rmtree(root / "artist" / "album")  # by hand: artist/ empty, changed just now
    result = cleanup(cache, periodic=True)
    assert result["gone"]["count"] == 1 and result["gone"]["kept"] == 0
    assert cache.store.tracked(["artist/album", "other/album"]) == [False, True]
    make_tree(root, "third/album")
    cache.register("third/album")
    shutil.rmtree(root / "third" / "album")
    # The file system's coarse clock dates the change a few ms before the booking (CI met
    # it): still a change made after the album was booked, not a bare mount point's.
    booked = float(cache.store.all_records()["third/album"][2])
    os.utime(root / "third", (booked - 0.005, booked - 0.005))
    small = _quota_of(cache, 1)  # a pass must take both left: untracked, not kept
    evict = cleanup(small)["evict"]
    assert evict["errors"] == [] and evict["vanished"] == ["third/album"], evict
    assert cache.store.tracked(["third/album"]) == [False]


def test_a_look_that_finds_most_downloads_missing_is_said_in_the_stats(cache, root):
    cache.client.set(cache.keys.initialized, "1")
    for i in range(24):
        make_tree(root, f"d{i:02d}")
        cache.register(f"d{i:02d}")
    for i in range(22):  # most of them: taken for a disk not mounted, nothing untracked
        shutil.rmtree(root / f"d{i:02d}")
    assert cleanup(cache, periodic=True)["gone"]["refused"]
    said = [w for w in cache.stats()["warnings"] if "beat's look for downloads gone" in w]
    assert said and "22 of 24" in said[0]
    assert cache.store.count_entries() == 24


def test_a_failed_look_for_gone_downloads_says_its_counts_are_old(cache, root, monkeypatch):
    from cachemgr import audit

    cache.client.set(cache.keys.initialized, "1")
    make_tree(root, "a")
    cache.register("a")

    def broken(cache, **kwargs):
        raise OSError("the root cannot be listed")

    monkeypatch.setattr(audit, "gone", broken)
    assert "error" in cleanup(cache, periodic=True)["gone"]
    said = [w for w in cache.stats()["warnings"] if "gone from the disk failed" in w]
    assert said and "the root cannot be listed" in said[0]
    monkeypatch.undo()
    cleanup(cache, periodic=True)  # a look that works: the warning goes
    assert not [w for w in cache.stats()["warnings"] if "gone from the disk failed" in w]


def test_a_directory_holding_another_caches_root_is_not_called_untracked(cache, root):
    """`nodes/node1` another cache's root, the entry depth 1: beat's look said `nodes` was
    not on the books at every pass, and no reconcile could book it (each refused it)."""
    make_tree(root, "nodes/node1/album", files=1)
    (root / "nodes" / "node1" / ".cachemgr-books").write_text("books: {node1}:cache:*\n")
    make_tree(root, "lost-album", files=1)
    found = untracked(cache, older_than=time.time() + 1)
    assert found["count"] == 1 and found["examples"] == ["lost-album"]
    # No node of the cluster keeps those books (yet): nobody counts those bytes, said.
    assert found["unowned"] == {"count": 1, "example": "nodes"}
    cache.registry.publish(
        cache.settings.with_(disk_cache_node="node1", disk_cache_key_prefix="{node1}:")
    )
    assert untracked(cache, older_than=time.time() + 1)["unowned"]["count"] == 0


def test_a_marker_that_came_with_a_download_is_said_not_silently_passed_over(
    cache, root, client
):
    """An empty `.cachemgr-books` inside an album (any archive can carry one) took the album
    for another cache's root: untracked by the next pass, its files kept, then passed over by
    every look for untracked directories without a count. Its bytes filled the disk unseen."""
    make_tree(root, "album/disc1", files=2)
    (root / "album" / "disc1" / ".cachemgr-books").write_bytes(b"")
    later = time.time() + 2 * HOUR
    found = untracked(cache, older_than=later)
    assert found["count"] == 0 and found["unowned"] == {"count": 1, "example": "album"}
    # One at the album's own top (the walk passes such a directory over before the look).
    make_tree(root, "extracted", files=1)
    (root / "extracted" / ".cachemgr-books").write_bytes(b"")
    assert untracked(cache, older_than=later)["unowned"]["count"] == 2
    make_tree(root, "booked")
    cache.register("booked")
    cache.client.hset(cache.keys.last_cleanup, mapping={"unowned": "1", "unowned_example": "album"})
    stats = cache.stats()
    said = [w for w in stats["warnings"] if "naming no node of this cluster" in w]
    assert said and "e.g. 'album'" in said[0] and "remove the marker" in said[0], stats
    assert "cachemgr_unowned_directories 1.0" in client.get("/metrics").get_data(as_text=True)
