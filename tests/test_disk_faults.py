"""Disk faults a cleanup or reconcile meets: deletions that fail half way, mount points, a
missing root, unreadable or odd directories. Real Redis, real directories."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cachemgr import DiskCache, RootMissing, audit, journal, mounts, slots, trash
from cachemgr import events as event_log
from cachemgr.cleanup import cleanup
from cachemgr.errors import DeleteFailed, PathError
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree, trash_items


def _fail_rmtree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trash's removal reports one file it could not delete (as an immutable file would)
    and deletes nothing: the tree stays where it is."""

    def rmtree(name: str, dir_fd: int) -> list[str]:
        return [f"{name}/track00.mp3: [Errno 1] Operation not permitted"]

    monkeypatch.setattr(trash, "_rmtree", rmtree)


def test_a_deletion_failing_after_the_rename_untracks_and_the_trash_retries(
    cache, root, monkeypatch
):
    make_tree(root, "a", files=2)
    make_tree(root, "b")
    cache.register("a")
    cache.register("b")
    _fail_rmtree(monkeypatch)
    done = cache.remove("a", remove_files=True)
    # Said in the answer too: it reported files_deleted alone, and the trash only later.
    assert done["status"] == "removed" and done["trash_left"] == 1
    assert "could not be deleted yet" in done["warning"]  # their bytes fill the disk
    assert "trash_left" not in cache.remove("b", remove_files=False)
    # Gone from its place and from the books (not put back at a path where it no longer is).
    assert not (root / "a").exists() and cache.store.info("a") is None
    assert cache.store.unfinished_deletions() == {} and trash.pending(root) == 1
    # A stuck trash item stops no cleanup, is shown (its bytes fill the disk, uncounted),
    # and goes once it can.
    assert trash.empty(root) == 0
    assert cleanup(cache)["trash_left"] == 1
    assert any("1 item(s) in the trash" in w for w in cache.stats()["warnings"])
    monkeypatch.undo()
    assert cleanup(cache)["trash_emptied"] == 1 and trash.pending(root) == 0
    assert not any("in the trash" in w for w in cache.stats()["warnings"])
    assert cache.store.total_bytes() == cache.info("b").size_bytes


@pytest.fixture
def bind_mount(tmp_path: Path):
    """Mount `outside` at a point inside the root; skipped where mounting is not allowed."""
    def mount(source: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")

    yield mount
    # wherever they ended up (a rename moves a mount point along)
    for target in sorted(mounts.mount_points_under(tmp_path), reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


@pytest.fixture
def later(monkeypatch):
    """Move the clock the trash judges a slot's age by forward (a slot's change time cannot
    be set back: it is what the age goes by)."""
    import types

    def move(seconds: float) -> None:
        ahead = types.SimpleNamespace(time=lambda: time.time() + seconds)
        monkeypatch.setattr(slots, "time", ahead)

    return move


@pytest.fixture
def tmpfs():
    """Mount a tmpfs at a directory (made if need be), unmounted after the test; skipped
    where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(target: Path, options: str = "size=1m") -> Path:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_directory_holding_a_mount_point_is_not_deleted(cache, root, tmp_path, bind_mount):
    outside = tmp_path / "mounted-source"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"x" * 100)
    make_tree(root, "a")
    bind_mount(outside, root / "a" / "mnt")
    cache.register("a")
    with pytest.raises(Exception, match="mount point"):
        cache.remove("a", remove_files=True)
    assert (outside / "keep.bin").read_bytes() == b"x" * 100
    assert cache.store.info("a") is not None and (root / "a").is_dir()
    # ...nor a trash item that holds one (moved there by hand, or by an older cachemgr).
    (root / trash.TRASH_DIR).mkdir(exist_ok=True)
    subprocess.run(["umount", str(root / "a" / "mnt")], check=True)
    make_tree(root, "b")
    (root / "b").rename(root / trash.TRASH_DIR / "b")
    bind_mount(outside, root / trash.TRASH_DIR / "b" / "mnt")
    assert trash.empty(root) == 0
    assert (outside / "keep.bin").exists()


def test_a_missing_root_stops_every_pass_and_untracks_nothing(cache, root):
    for name in ("a", "b"):
        make_tree(root, name)
        cache.register(name)
    cache.client.set(cache.keys.initialized, "1")
    away = root.with_name("unmounted")
    root.rename(away)
    try:
        for run in (lambda: cleanup(cache), lambda: reconcile(cache)):
            with pytest.raises(RootMissing, match="mounted"):
                run()
        assert cache.store.count_entries() == 2
        assert cache.client.hget(cache.keys.last_cleanup, "status") == "failed"
    finally:
        away.rename(root)
    assert cleanup(cache)["status"] == "done" and cache.store.count_entries() == 2


def test_a_registration_on_a_root_that_is_not_the_books_is_refused(settings, redis_client, root):
    """The disk unmounted and its mount point written to: a registration there was booked,
    and stayed on the books, a download that does not exist, once the disk was back."""
    worker = DiskCache(settings, redis_client)
    make_tree(root, "a")
    worker.register("a")
    cleanup(worker)  # the books are kept: the root carries their marker
    away = root.with_name("unmounted")
    root.rename(away)
    root.mkdir()  # the empty mount point, where a download is then written
    make_tree(root, "newalbum")
    try:
        later = DiskCache(settings, redis_client)  # a worker that read no token yet
        token = redis_client.get(worker.keys.root_mark)
        worker.root_token = (token, float("inf"))  # one that read it a moment ago
        for cache in (later, worker):
            with pytest.raises(RootMissing, match="not the directory these books were kept"):
                cache.register("newalbum")
        assert sorted(worker.store.all_records()) == ["a"]  # nothing booked
        # The stats say it at once: they had said nothing until the next cleanup failed.
        worker.client.set(worker.keys.bytes, settings.disk_cache_max_bytes + 1)  # over quota
        warnings = worker.stats()["warnings"]
        assert warnings[0].startswith("cache not working: ")
        assert "marker .cachemgr-books is missing" in warnings[0]
        # Not "run a manual cleanup": it would be refused as well.
        over = [w for w in warnings if w.startswith("over quota:")]
        assert over and "no cleanup runs until the root is back" in over[0], over
        shutil.rmtree(root)  # no mount point at all: said so, not "its marker is missing"
        with pytest.raises(RootMissing, match="is not a directory .*no registration is booked"):
            later.register("newalbum")
    finally:
        if root.exists():
            shutil.rmtree(root)
        away.rename(root)
    make_tree(root, "b")
    assert worker.register("b")["status"] == "registered"  # its own disk back: booked


def test_reconcile_goes_on_past_an_unreadable_directory(cache, root, monkeypatch):
    from cachemgr import scanner

    for name in ("a", "b", "c"):
        make_tree(root, name)
        cache.register(name)
        make_tree(root, name, files=2)  # grown since: a resize for reconcile to make
    real = scanner.scan

    def scan(location, **kw):
        if Path(location).name == "b":
            raise PermissionError(13, "Permission denied", str(location))
        return real(location, **kw)

    monkeypatch.setattr(scanner, "scan", scan)
    report = reconcile(cache)
    assert [e["path"] for e in report["errors"]] == ["b"]
    assert sorted(r["path"] for r in report["resized"]) == ["a", "c"]
    assert cache.client.exists(cache.keys.initialized)


def test_an_entry_whose_parent_became_a_symlink_is_untracked(settings, redis_client, root,
                                                               tmp_path, canary):  # fmt: skip
    from cachemgr import DiskCache

    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    make_tree(root, "x/y")
    cache.register("x/y")
    outside = tmp_path / "elsewhere"
    make_tree(outside, "y")
    shutil.rmtree(root / "x")
    (root / "x").symlink_to(outside)
    report = reconcile(cache)
    assert report["untracked"] == ["x/y"] and report["errors"] == []
    assert cache.store.count_entries() == 0 and (outside / "y").is_dir() and canary.exists()


def test_one_reconcile_registers_what_only_covered_a_vanished_entry(cache, root):
    # Entry depth 1, but x/y was registered on its own; x/y is renamed to x/z.
    make_tree(root, "x/y")
    cache.register("x/y")
    (root / "x" / "y").rename(root / "x" / "z")
    report = reconcile(cache)
    assert report["untracked"] == ["x/y"] and report["registered"] == ["x"]
    assert cache.info("x").size_bytes > 0


def test_a_cleanup_waits_while_a_reconcile_rebuilds_the_books(cache, root):
    from cachemgr.locks import Lock

    make_tree(root, "a")
    busy = Lock(cache.client, cache.keys.reconcile_lock, 10_000)
    assert busy.acquire()
    try:
        result = cleanup(cache)
    finally:
        busy.release()
    assert result == {"status": "skipped", "reason": "a reconcile is rebuilding the books"}


def test_a_subdirectory_named_in_no_utf8_does_not_stop_a_registration(cache, root):
    make_tree(root, "a")
    os.mkdir(os.path.join(os.fsencode(root / "a"), b"\xff\xfe"))
    assert cache.register("a")["status"] == "registered"


def test_a_pass_renews_its_lock_before_each_deletion_and_stops_when_it_is_lost(
    cache, root, caplog
):
    # A batch of slow deletions must not outlast the cleanup lock: a second cleanup could then
    # start and evict too much. The heartbeat runs before each deletion; False stops the pass.
    from cachemgr.passes import enforce_quota

    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    beats: list[int] = []

    def heartbeat() -> bool:
        beats.append(cache.store.count_entries())
        return len(beats) < 3  # the lock lapses at the third renewal

    with caplog.at_level("WARNING", logger="cachemgr"):
        result = enforce_quota(cache, heartbeat=heartbeat)
    assert result.errors == ["cleanup lock lost: stopped early"]
    said = [r for r in caplog.records if getattr(r, "event", None) == "cleanup_lock_lost"]
    assert len(said) == 1 and said[0].levelname == "WARNING"  # the result alone said "done"
    # one renewal before the batch, one before the first deletion, lost before the second
    assert len(result.removed) == 1 and beats == [20, 20, 19]
    assert cache.store.count_entries() == 19


def test_a_directory_in_the_deletion_journal_blocks_its_parent(cache, root):
    # A crash in the middle of deleting a/b leaves it in the journal; registering `a` then
    # would count a/b twice once recovery puts it back.
    from cachemgr import Overlap
    from cachemgr.journal import recover_unfinished

    make_tree(root, "a/b", files=2)
    cache.register("a/b")
    assert cache.store.claim("a/b", "evicted", deleting_files=True)[0] == "ok"  # then a crash
    with pytest.raises(Overlap, match="a/b"):
        cache.register("a")
    assert recover_unfinished(cache) == ["a/b"]
    assert cache.store.total_bytes() == cache.info("a/b").size_bytes
    with pytest.raises(Overlap):
        cache.register("a")


def test_a_pin_inside_a_tracked_directory_protects_that_directory(settings, redis_client, root):
    from cachemgr import DiskCache
    from cachemgr.passes import sweep

    now = [1_800_000_000.0]
    cache = DiskCache(settings.with_(disk_cache_ttl_seconds=1), redis_client, clock=lambda: now[0])
    make_tree(root, "album/disc1")
    cache.register("album")
    assert cache.pin("album/disc1", 3600)["path"] == "album"
    now[0] += 100  # long expired, still pinned
    assert sweep(cache).skipped_pinned == ["album"] and (root / "album").is_dir()
    # Another holder's longer lease on the same directory is neither cut short nor ended.
    assert cache.pin("album", 7200)["path"] == "album"
    assert cache.pin("album/disc1", 60)["path"] == "album"
    assert cache.client.zscore(cache.keys.pins, "album") == now[0] + 7200
    from cachemgr.records import iso

    # Nothing on the path itself: the album's lease above it still protects it, and says so.
    held = {"unpinned": False, "pinned_until": iso(now[0] + 7200)}
    done = cache.unpin("album/disc1")
    assert done.pop("warning").startswith("nothing ended on 'album/disc1'")
    assert done == {"path": "album/disc1", **held}
    assert cache.unpin("album") == {"path": "album", "unpinned": True, "pinned_until": None}


def test_an_empty_mount_point_is_taken_for_an_unmounted_disk_unless_forced(cache, root, runner):
    # The root is the mount point: unmounted, it is an empty directory, not a missing one.
    for name in ("a", "b"):
        make_tree(root, name)
        cache.register(name)
    cache.client.set(cache.keys.initialized, "1")
    for name in ("a", "b"):
        shutil.rmtree(root / name)
    for run in (lambda: cleanup(cache), lambda: reconcile(cache)):
        with pytest.raises(RootMissing, match="empty while 2 directories are tracked"):
            run()
    assert cache.store.count_entries() == 2
    refused = runner.invoke(args=["reconcile", "--now"])
    assert refused.exit_code == 1 and "reconcile --force" in refused.output
    forced = runner.invoke(args=["reconcile", "--now", "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert cache.store.count_entries() == 0 and cache.store.total_bytes() == 0


def test_a_directory_swapped_in_while_another_cleanup_empties_the_trash_is_kept(
    root, monkeypatch, later
):
    """The swap guard holds even when a concurrent `empty` runs right after the rename."""
    make_tree(root, "x", files=2)
    real_rename, calls = os.rename, []

    def swap_rename_then_empty(src, dst, **kwargs):
        if not calls:  # discard's rename: a new download takes x's place just before it
            calls.append(src)
            real_rename(root / "x", root / "x-old")
            make_tree(root, "x", files=3)
            real_rename(src, dst, **kwargs)
            trash.empty(root)  # another worker's cleanup
            return None
        return real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", swap_rename_then_empty)
    with pytest.raises(trash.NotADirectory, match="changed while it was being deleted"):
        trash.discard(root, "x")
    monkeypatch.undo()
    assert len(list((root / "x").iterdir())) == 3  # the new download, put back whole
    assert trash.pending(root) == 0
    # A crash's leftover slot is left alone while new, emptied once old.
    slot = trash.trash_dir(root) / f"{trash.IN_FLIGHT}leftover"
    make_tree(root, f"{trash.TRASH_DIR}/{slot.name}/d")
    assert trash.empty(root) == 0 and slot.exists()
    later(slots.IN_FLIGHT_AGE + 1)
    assert trash.empty(root) == 1 and not slot.exists()


def test_refused_cleanups_keep_the_events_stream_within_its_small_cap(settings, redis_client, root):
    from cachemgr import DiskCache

    cache = DiskCache(settings.with_(disk_cache_events_maxlen=3), redis_client)
    make_tree(root, "a")
    cache.register("a")
    shutil.rmtree(root / "a")  # an empty root while tracked: each cleanup is refused, logged
    for _ in range(20):
        with pytest.raises(RootMissing):
            cleanup(cache)
    assert cache.client.xlen(cache.keys.events) == 3
    assert event_log.latest(cache.store, 1)[0]["event"] == "cleanup_failed"


def test_a_directory_reconcile_cannot_book_is_said_in_the_log(cache, root, caplog):
    """A download named in no UTF-8 can never be on the books: the reconcile's result said
    so, its log line counted '0 registered' and nothing else."""
    from cachemgr.reconcile import reconcile

    os.mkdir(os.path.join(os.fsencode(root), b"alb\xff"))
    with caplog.at_level("WARNING", logger="cachemgr"):
        report = reconcile(cache)
    assert report["errors"] and "UTF-8" in report["errors"][0]["error"]
    warned = [r for r in caplog.records if getattr(r, "event", "") == "reconcile_errors"]
    assert len(warned) == 1 and "UTF-8" in warned[0].getMessage()


def test_a_plan_does_not_book_a_new_directory_the_worker_cannot_read(cache, root, monkeypatch):
    """The dry run listed a mode-000 album as registered; the real run refused it."""
    import errno

    make_tree(root, "open")
    make_tree(root, "locked")
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).endswith("/locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    plan = reconcile(cache, dry_run=True)
    assert plan["registered"] == ["open"]
    assert [e["path"] for e in plan["errors"]] == ["locked"]
    assert "cannot be read by the worker" in plan["errors"][0]["error"]


def test_after_a_forced_adoption_cut_short_registrations_are_refused_as_cleanups_are(
    settings, redis_client, root
):
    """The books' token read `cut-short:` (a reconcile --force stopped midway): cleanups were
    refused, but a registration on any disk was booked."""
    worker = DiskCache(settings, redis_client)
    make_tree(root, "a")
    worker.register("a")
    cleanup(worker)  # the root carries the books' marker
    token = redis_client.get(worker.keys.root_mark)
    redis_client.set(worker.keys.root_mark, f"cut-short:{token}")
    make_tree(root, "b")
    with pytest.raises(RootMissing, match="cut short"):
        DiskCache(settings, redis_client).register("b")
    redis_client.set(worker.keys.adopting, "someone", ex=60)  # an adoption walks it now
    try:
        assert DiskCache(settings, redis_client).register("b")["status"] == "registered"
    finally:
        redis_client.delete(worker.keys.adopting)



def test_a_deletion_slot_is_left_alone_while_its_deleter_may_hold_the_lock(cache, root, later):
    """A minute, whatever the lock timeout: a worker held up longer between moving a directory
    into the trash and checking it was still to go had its slot emptied by another cleanup
    (counted vanished, not evicted; one it was to put back, gone)."""
    slot = trash.trash_dir(root) / f"{trash.IN_FLIGHT}held-up"
    make_tree(root, f"{trash.TRASH_DIR}/{slot.name}/d")
    aged = later
    assert cache.settings.disk_cache_lock_timeout_seconds == 300
    aged(slots.IN_FLIGHT_AGE + 60)
    done = cleanup(cache)
    assert done["trash_emptied"] == 0 and done["trash_left"] == 0 and slot.exists()
    assert reconcile(cache)["trash_items"] == 0 and slot.exists()
    aged(301)  # its lock lapsed: a crash's leftover
    assert cleanup(cache)["trash_emptied"] == 1 and not slot.exists()


def test_a_mount_made_during_a_deletion_is_not_entered(cache, root, tmp_path, bind_mount):
    """The mount points were looked for before the rename into the trash; a bind mount made
    after (of the same filesystem: the same st_dev) had what lives outside the root deleted."""
    outside = tmp_path / "outside-bait"
    outside.mkdir()
    for i in range(5):
        (outside / f"b{i}").write_bytes(b"keep")
    make_tree(root, "big", files=3)
    (root / "big" / "e00").mkdir()
    (root / "big" / "e00" / "own.bin").write_bytes(b"x")

    def mount_meanwhile() -> None:
        [moved] = (root / trash.TRASH_DIR).glob(f"{trash.IN_FLIGHT}*/d")
        bind_mount(outside, moved / "e00")
        return None

    left = trash.discard(root, "big", still_ours=mount_meanwhile)
    assert any("mount point" in problem for problem in left), left
    assert sorted(p.name for p in outside.iterdir()) == [f"b{i}" for i in range(5)]
    assert trash.empty(root) == 0 and len(list(outside.iterdir())) == 5  # nor by a later one


@pytest.mark.parametrize("moved", ["a", "a/b"])
def test_a_folder_above_moved_out_of_the_root_mid_deletion_takes_nothing_from_outside(
    root, tmp_path, monkeypatch, moved
):
    """The folders above were opened on the way down; one moved out of the root before the
    rename had the directory taken from its new place outside the root, and deleted."""
    import uuid

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    make_tree(root / "a" / "b", "album", files=3)
    real = uuid.uuid4

    def move_out_first() -> uuid.UUID:  # called between the walk down and the rename
        (root / moved).rename(outside / Path(moved).name)
        return real()

    monkeypatch.setattr(uuid, "uuid4", move_out_first)
    with pytest.raises(trash.NotADirectory, match="a folder above 'a/b/album' moved"):
        trash.discard(root, "a/b/album")
    monkeypatch.undo()
    album = outside / ("a/b/album" if moved == "a" else "b/album")
    assert sorted(p.name for p in album.iterdir()) == [f"track{i:02d}.mp3" for i in range(3)]
    assert not trash_items(root)  # its slot went too


@pytest.mark.parametrize("then", ["removed", "taken"])
def test_a_called_off_deletion_that_cannot_be_put_back_is_kept_whole(
    root, tmp_path, monkeypatch, caplog, then
):
    """Its folder moved out of the root, then removed there (or its name taken by a new empty
    folder, which the rename back replaced): the put-back failed, the directory stayed in an
    in-flight slot, and the next emptying of the trash deleted what had lain outside."""
    import logging
    import shutil
    import uuid

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    make_tree(root / "a", "album", files=3)
    real_uuid, real_check = uuid.uuid4, trash._still_in_place

    def move_out_first() -> uuid.UUID:
        (root / "a").rename(outside / "a")
        return real_uuid()

    def then_its_place_goes(*args: object) -> bool:
        if then == "removed":
            shutil.rmtree(outside / "a")
        else:
            (outside / "a" / "album").mkdir()
        return real_check(*args)

    monkeypatch.setattr(uuid, "uuid4", move_out_first)
    monkeypatch.setattr(trash, "_still_in_place", then_its_place_goes)
    caplog.set_level(logging.ERROR, logger="cachemgr")
    with pytest.raises(trash.NotADirectory, match="moved while it was being deleted"):
        trash.discard(root, "a/album")
    monkeypatch.undo()
    [kept] = trash_items(root)
    assert kept.name.startswith(trash.KEPT) and "kept whole as" in caplog.text
    assert trash.empty(root, lock_timeout=0) == 0
    assert (trash.pending(root), trash.kept(root)) == (0, 1)  # not an item emptying retries
    assert sorted(p.name for p in (kept / "d").iterdir()) == [
        f"track{i:02d}.mp3" for i in range(3)
    ]


def test_a_mount_point_whose_name_is_not_utf8_stops_no_deletion(cache, root, tmp_path, monkeypatch):
    """A mount anywhere on the host named in another encoding: every cleanup and every
    removal of files failed with a UnicodeDecodeError (and a traceback)."""
    info = tmp_path / "mountinfo"
    info.write_bytes(
        b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        b"97 22 0:50 / /tmp/bad\xff rw - tmpfs none rw\n"
        b"98 22 0:51 / /tmp/with\\040space rw - tmpfs none rw\n"
    )
    monkeypatch.setattr(mounts, "MOUNTINFO", info)
    assert mounts.mount_points() == ["/", os.fsdecode(b"/tmp/bad\xff"), "/tmp/with space"]
    make_tree(root, "a", files=2)
    cache.register("a")
    assert cache.remove("a", remove_files=True)["files_deleted"] is True
    assert not (root / "a").exists()


def test_a_download_on_a_disk_mounted_below_the_root_can_be_deleted(
    settings, redis_client, root, tmp_path, bind_mount
):
    """root/artist a disk of its own (DISK_CACHE_ENTRY_DEPTH=2): the rename into the root's
    trash crossed filesystems (EXDEV), so its albums could never be removed or evicted, and
    usage stayed over the quota at every pass. That disk gets a trash of its own."""
    disk = tmp_path / "disk2"
    disk.mkdir()
    bind_mount(disk, root / "artist")
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    for name in ("album1", "album2"):
        make_tree(root, f"artist/{name}", files=2)
        cache.register(f"artist/{name}")
    done = cache.remove("artist/album1", remove_files=True)
    assert done["status"] == "removed" and done["files_deleted"] is True
    assert not (disk / "album1").exists() and (disk / "album2").is_dir()
    assert (disk / trash.TRASH_DIR).is_dir()  # on that disk, left empty
    assert trash_items(disk) == []
    # Its own trash is no download, and no path may name it.
    assert reconcile(cache, dry_run=True)["registered"] == []
    with pytest.raises(Exception, match="trash"):
        cache.register(f"artist/{trash.TRASH_DIR}")
    # What a crash left in it is emptied by a cleanup, as the root's is.
    make_tree(disk / trash.TRASH_DIR, "left-by-a-crash", files=2)
    assert trash.pending(root, depth=2) == 1 and trash.empty(root, depth=2) == 1
    assert trash_items(disk) == []
    # And a quota pass evicts from it.
    tiny = settings.with_(disk_cache_entry_depth=2, disk_cache_max_bytes=1)
    small = DiskCache(tiny, redis_client)
    small.client.set(small.keys.initialized, "1")
    assert cleanup(small)["evict"]["paths"] == ["artist/album2"]
    assert not (disk / "album2").exists()


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_trash_that_is_no_directory_is_named_in_the_error(cache, root, tmp_path, kind):
    """"could not delete 'tr1': Not a directory" named the download, not the trash that a
    symlink or a file had replaced; nothing is followed or deleted either way."""
    outside = tmp_path / "outside-trash"
    outside.mkdir()
    (outside / "keep").write_text("x")
    if kind == "symlink":
        (root / trash.TRASH_DIR).symlink_to(outside)
    else:
        (root / trash.TRASH_DIR).write_text("not a folder")
    make_tree(root, "tr1")
    cache.register("tr1")
    with pytest.raises(Exception, match=r"the trash \.cachemgr-trash is a symlink or a file"):
        cache.remove("tr1", remove_files=True)
    assert (root / "tr1").is_dir() and cache.store.tracked(["tr1"]) == [True]
    assert (outside / "keep").read_text() == "x" and trash.empty(root) == 0


def test_only_the_trashes_of_disks_mounted_above_the_entry_depth_are_emptied(
    settings, redis_client, root, tmp_path, bind_mount, monkeypatch
):
    """Every mount point below the root had its `.cachemgr-trash` emptied: one inside a
    download (a directory elsewhere bind-mounted there) had what lives outside deleted; and
    one that could not be read (a dead network mount) failed every cleanup."""
    import errno

    outside = tmp_path / "outside"
    (outside / trash.TRASH_DIR / "precious").mkdir(parents=True)
    make_tree(root, "artist/album")
    bind_mount(outside, root / "artist" / "album" / "sub")
    assert trash.pending(root, depth=2) == 0 and trash.empty(root, depth=2) == 0
    assert (outside / trash.TRASH_DIR / "precious").is_dir()
    disk = tmp_path / "disk2"
    (disk / trash.TRASH_DIR / "left").mkdir(parents=True)
    bind_mount(disk, root / "other")
    real = trash._empty

    def dead_mount(base, points, lock_timeout):
        if base != root:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return real(base, points, lock_timeout)

    monkeypatch.setattr(trash, "_empty", dead_mount)
    (root / trash.TRASH_DIR / "ours").mkdir(parents=True)
    assert trash.empty(root, depth=2) == 1  # the root's went; the dead disk's is skipped
    monkeypatch.undo()
    assert trash.empty(root, depth=2) == 1 and not (disk / trash.TRASH_DIR / "left").exists()


def test_a_disk_seen_mounted_below_the_root_keeps_its_downloads_while_unmounted(
    settings, redis_client, root, tmp_path, bind_mount
):
    """Kept only when the bare mount point was unchanged since the download was booked: a
    reconcile books a download by its files' time, older than a mount point made later, and
    the disk's downloads left the books once it was unmounted. Cleanups now remember the
    disks they saw mounted."""
    from cachemgr import audit

    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    disk = tmp_path / "disk3"
    make_tree(disk, "album", files=2)
    bind_mount(disk, root / "disk3")
    make_tree(root, "mine/album")
    cache.register("mine/album")
    make_tree(disk, "by-hand")
    cleanup(cache)  # rebuilds the new books from the disk, and sees disk3 mounted
    assert cache.store.tracked(["disk3/album", "disk3/by-hand"]) == [True, True]
    # Deleted by hand while the disk is mounted: gone for good, not kept.
    shutil.rmtree(root / "disk3" / "by-hand")
    shutil.rmtree(root / "disk3" / "album")
    found = audit.gone(cache)
    assert (found["count"], found["kept"]) == (2, 0), found
    make_tree(disk, "album", files=2)
    cache.register("disk3/album")
    subprocess.run(["umount", str(root / "disk3")], check=True)
    later = time.time() + 60  # the bare mount point looks changed since: its mtime says nothing
    os.utime(root / "disk3", (later, later))
    found = audit.gone(cache)
    assert (found["count"], found["kept"]) == (0, 1), found
    assert cache.store.tracked(["disk3/album"]) == [True]
    # The pipeline writes its next download into the bare mount point: a stray directory
    # there made the disk's downloads leave the books (audit: "deleted by hand?").
    make_tree(root, "disk3/next")
    assert audit.gone(cache)["kept"] == 1 and cache.store.tracked(["disk3/album"]) == [True]
    # Nor is that download booked: hidden once the disk is back, it then looked gone.
    with pytest.raises(RootMissing, match="'disk3', where cleanups saw a disk mounted"):
        cache.register("disk3/next")
    shutil.rmtree(root / "disk3" / "next")
    # Said in the stats, not in the worker's log alone.
    assert cleanup(cache, periodic=True)["gone"]["kept"] == 1
    said = [w for w in cache.stats()["warnings"] if "looks like a disk not mounted" in w]
    assert said and "disk3/album" in said[0], cache.stats()["warnings"]
    # A reconcile decides (the disk retired): it untracks them and forgets the mount point,
    # and the warning that asked for it goes.
    assert reconcile(cache)["untracked"] == ["disk3/album"]
    assert cache.client.smembers(cache.keys.mounts) == set()
    assert not [w for w in cache.stats()["warnings"] if "looks like a disk not mounted" in w]


def test_a_deletion_through_a_trash_bind_mounted_from_the_same_disk_is_refused_in_words(
    cache, root, tmp_path, bind_mount
):
    """The same filesystem bound on the trash: st_dev alike, so the rename was tried, failed
    with a bare "Invalid cross-device link", and made its slot in the bound folder first."""
    outside = root.parent / f"{root.name}-outside"  # the root's own filesystem
    outside.mkdir()
    bind_mount(outside, root / trash.TRASH_DIR)
    make_tree(root, "album")
    cache.register("album")
    with pytest.raises(Exception, match=r"the trash \.cachemgr-trash is a mount point"):
        cache.remove("album", remove_files=True)
    assert (root / "album").is_dir() and cache.store.tracked(["album"]) == [True]
    assert list(outside.iterdir()) == []  # nothing made there, not even for a moment


def test_a_trash_slot_dated_ahead_is_emptied_not_kept_for_good(root, later):
    """A slot dated far ahead (a clock set back) counted as a deletion in flight for ever:
    its bytes stayed in the trash, uncounted (trash_left 0)."""
    slot = trash.trash_dir(root) / f"{trash.IN_FLIGHT}ahead"
    make_tree(root, f"{trash.TRASH_DIR}/{slot.name}/d")
    later(-(10**6))  # this host's clock set back, far behind the disk's
    assert trash.pending(root) == 1 and trash.empty(root) == 1 and not slot.exists()
    make_tree(root, f"{trash.TRASH_DIR}/{slot.name}/d")
    later(-3600)  # a network disk's clock well ahead: still in flight
    assert trash.pending(root) == 0 and trash.empty(root) == 0 and slot.exists()


def test_the_trash_of_a_disk_mounted_below_the_root_is_named_in_the_error(
    settings, redis_client, root, tmp_path, bind_mount
):
    disk = tmp_path / "disk4"
    disk.mkdir()
    (disk / trash.TRASH_DIR).symlink_to(tmp_path)  # not followed, and named
    bind_mount(disk, root / "artist")
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    make_tree(root, "artist/album")
    cache.register("artist/album")
    with pytest.raises(Exception, match=r"the trash artist/\.cachemgr-trash is a symlink"):
        cache.remove("artist/album", remove_files=True)
    assert (disk / "album").is_dir()


def test_a_disk_mounted_below_the_root_keeps_its_lost_and_found(
    settings, redis_client, root, tmp_path, bind_mount
):
    """Depth 2 with a disk mounted at root/artist: its own lost+found (and a desktop's trash
    on it) sat at the entry depth, booked by a reconcile and evicted first."""
    disk = tmp_path / "disk3"
    for name in ("lost+found", ".Trash-1000", "album"):
        make_tree(disk, name, files=2)
    bind_mount(disk, root / "artist")
    make_tree(root, "plain/lost+found", files=1)  # not a mount point: an album like any
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    assert sorted(reconcile(cache)["registered"]) == ["artist/album", "plain/lost+found"]
    for own in ("artist/lost+found", "artist/.Trash-1000"):
        with pytest.raises(Exception, match="is the disk mounted at 'artist''s own"):
            cache.register(own)
    cache.store.register("artist/lost+found", 4096, 1, now=1.0)  # as an older version did
    assert cache.take(cache.store.victims(1)[0], "evicted") == "vanished"
    assert (disk / "lost+found").is_dir() and not cache.store.tracked(["artist/lost+found"])[0]


def test_a_disks_lost_and_found_is_told_without_the_mount_table(
    settings, redis_client, root, monkeypatch, tmpfs
):
    """/proc/self/mountinfo unreadable (a sandbox): the disk mounted at root/artist was not
    seen, and its lost+found was a download again. Its own device says it is a disk's top."""
    tmpfs(root / "artist")
    make_tree(root, "artist/lost+found", files=1)
    make_tree(root, "artist/album", files=1)
    # With the table, the device is not asked (a btrfs subvolume has one of its own).
    assert mounts.other_device(root, "artist") is False
    monkeypatch.setattr(mounts, "MOUNTINFO", root / "no-mountinfo")
    assert mounts.mounted_below(root, 2) == set()
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    assert reconcile(cache, dry_run=True)["registered"] == ["artist/album"]
    with pytest.raises(Exception, match="the disk mounted at 'artist''s own"):
        cache.register("artist/lost+found")


def test_a_cleanup_that_loses_its_lock_in_the_sweep_says_so_once_and_evicts_nothing(
    cache, root, caplog, monkeypatch
):
    """The sweep and the quota pass renew the same lock: once lost in the sweep, the quota
    pass started all the same, found it lost at its first renewal and said so again."""
    from cachemgr import locks
    from cachemgr.cleanup import cleanup

    for i in range(30):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    old = cache.clock() - cache.settings.disk_cache_ttl_seconds - 100
    cache.client.zadd(cache.keys.lru, {f"d{i:02d}": old for i in range(10)})  # expired
    renewals: list[int] = []
    real = locks.Lock.extend

    def extend(self, *args, **kwargs):
        renewals.append(1)
        return real(self, *args, **kwargs) if len(renewals) == 1 else False  # lapsed

    monkeypatch.setattr(locks.Lock, "extend", extend)
    with caplog.at_level("WARNING", logger="cachemgr"):
        result = cleanup(cache)
    said = [r for r in caplog.records if getattr(r, "event", None) == "cleanup_lock_lost"]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "cleanup lock lost: stopped early" in result["sweep"]["errors"]
    assert result["evict"]["count"] == 0 and result["evict"]["errors"] == []


def test_a_directory_kept_whole_in_the_trash_is_said_as_such(cache, root):
    """A called-off deletion's directory kept whole for the operator counted as a trash item
    that "could not be deleted" (permissions, immutable files...), which no cleanup ever
    retries, and no warning said to move it back."""
    make_tree(root / trash.TRASH_DIR / f"{trash.KEPT}0123", "d", files=2)
    done = cleanup(cache)
    assert (done["trash_left"], done["trash_kept"]) == (0, 1)
    stats = cache.stats()
    assert (stats["last_cleanup"]["trash_left"], stats["last_cleanup"]["trash_kept"]) == (0, 1)
    [said] = [w for w in stats["warnings"] if "trash" in w]
    assert said.startswith("1 directory(ies) kept whole in the trash") and "by hand" in said
    assert (root / trash.TRASH_DIR / f"{trash.KEPT}0123" / "d" / "track01.mp3").exists()


def test_an_interrupted_deletion_under_a_disk_not_mounted_now_waits_for_it(
    settings, redis_client, root, tmp_path, bind_mount
):
    """A worker killed after claiming disk1/album, then disk1 unmounted: the next cleanup's
    recovery took it for deleted (freed bytes, a `removed` event) and, the disk back, the
    album lay there untracked. A pass's victim missing there is kept (deletion.take)."""
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    disk = tmp_path / "disk1"
    make_tree(disk, "album", files=3)
    bind_mount(disk, root / "disk1")
    make_tree(root, "other/x")
    cleanup(cache)  # books the disk and sees disk1 mounted
    assert cache.store.tracked(["disk1/album"]) == [True]

    def killed(rel: str) -> None:
        raise KeyboardInterrupt("the worker killed before its rename")

    cache.before_delete = killed
    with pytest.raises(KeyboardInterrupt):
        cache.remove("disk1/album", remove_files=True)
    cache.before_delete = None
    cache.client.delete(cache.keys.lock("disk1/album"))  # as a lapsed lock is
    subprocess.run(["umount", str(root / "disk1")], check=True)
    assert cleanup(cache)["recovered"] == []
    assert journal.held(cache.store, "disk1/album")  # still claimed: nothing counted
    assert not cache.client.hget(cache.keys.stats, "bytes_freed")
    bind_mount(disk, root / "disk1")
    assert cleanup(cache)["recovered"] == ["disk1/album"]
    assert cache.store.tracked(["disk1/album"]) == [True] and (disk / "album").is_dir()


def _killed_in(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The worker killed mid-deletion: in the trash's removal (its files moved out of their
    place), or before the move."""

    def killed(*args: object) -> None:
        raise KeyboardInterrupt(f"the worker killed in {where}")

    monkeypatch.setattr(trash, where, killed)


def test_a_registration_over_an_interrupted_deletion_settles_it_first(
    cache, root, monkeypatch
):
    """A worker killed after its claim, before the move: a registration of the directory
    dropped the journal entry unsaid (REGISTER's HDEL). It is settled first now, as the next
    cleanup would: put back, then booked again; nothing was freed."""
    make_tree(root, "album", files=3)
    cache.register("album")
    _killed_in(monkeypatch, "discard")
    with pytest.raises(KeyboardInterrupt):
        cache.remove("album", remove_files=True)
    monkeypatch.undo()
    assert journal.held(cache.store, "album") and (root / "album").is_dir()
    make_tree(root, "album", files=4)  # one more file since
    done = cache.register("album")
    assert done["status"] == "registered" and done["new"] is False, done
    assert not journal.held(cache.store, "album")
    assert cache.store.total_bytes() == cache.info("album").size_bytes == done["size_bytes"]
    stats = cache.client.hgetall(cache.keys.stats)
    assert "removals" not in stats and "bytes_freed" not in stats
    assert cleanup(cache)["recovered"] == []  # nothing left to settle


def test_a_deletion_through_a_trash_no_emptying_visits_is_refused(
    cache, root, tmp_path, bind_mount
):
    """A download registered below the entry depth on a disk mounted at it: its deletion used
    that disk's trash, which no cleanup empties nor counts in trash_left (its bytes filled the
    disk, counted as freed, and a reconcile then booked the mount point as a download)."""
    disk = tmp_path / "artist-disk"
    make_tree(disk, "album", files=3)
    bind_mount(disk, root / "artist")  # at the entry depth, 1
    cache.register("artist/album")  # below it: accepted, with a warning
    with pytest.raises(DeleteFailed, match="mounted at 'artist', at or below the entry depth"):
        cache.remove("artist/album", remove_files=True)
    assert cache.store.tracked(["artist/album"]) == [True]
    assert len(list((disk / "album").iterdir())) == 3 and not (disk / trash.TRASH_DIR).exists()


def test_a_download_made_again_over_an_interrupted_deletion_is_booked_as_new(
    cache, root, monkeypatch
):
    """Killed in its trash's removal, the album then downloaded again and registered: the
    old record was put back for the new files (its hits, as `new: False`), the removal never
    counted, and "back on the books" said of a directory that had gone."""
    from cachemgr import scanner

    make_tree(root, "album", files=3)
    cache.register("album")
    size = cache.info("album").size_bytes
    cache.access("album")
    cache.access("album")
    _killed_in(monkeypatch, "_rmtree")
    with pytest.raises(KeyboardInterrupt):
        cache.remove("album", remove_files=True)
    monkeypatch.undo()
    make_tree(root, "album", files=1)
    # Made well after the old one's last access (a real download comes minutes later).
    monkeypatch.setattr(scanner, "birth_time", lambda path: time.time() + 2 * 60)
    done = cache.register("album")
    assert done["status"] == "registered" and done["new"] is True, done
    assert cache.info("album").hits == 0 and not journal.held(cache.store, "album")
    stats = cache.client.hgetall(cache.keys.stats)
    assert (stats.get("removals"), stats.get("bytes_freed")) == ("1", str(size))
    assert cache.store.total_bytes() == done["size_bytes"]


@pytest.fixture
def small_disk(tmp_path: Path, tmpfs: Any):
    """A tmpfs of 64 inodes, and a function that takes every one left (ENOSPC on mkdir)."""
    disk = tmpfs(tmp_path / "disk", "size=4m,nr_inodes=64")
    fillers: list[Path] = []

    def fill() -> None:
        with pytest.raises(OSError) as full:
            while True:
                fillers.append(disk / f"filler{len(fillers)}")
                fillers[-1].touch()
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            (disk / "probe").mkdir()

    return disk, fill


def test_a_disk_with_no_room_for_a_directory_still_evicts(settings, redis_client, small_disk):
    """Every deletion made its slot in the trash (mkdir) first: on a disk so full that no
    directory could be made (ENOSPC: no block, or no inode left) no eviction nor removal could
    free it. A slot made ahead, while there was room, is renamed instead."""
    disk, fill = small_disk
    cache = DiskCache(settings.with_(disk_cache_root=str(disk)), redis_client)
    for name in ("a1", "a2", "a3"):
        make_tree(disk, name, files=2)
        cache.register(name)
    assert cleanup(cache)["status"] == "done"  # made the trash and its spare slot
    fill()
    assert cache.remove("a1", remove_files=True)["status"] == "removed"
    assert not (disk / "a1").exists() and cache.store.info("a1") is None
    # The spare, used, is made again from the room the deletion freed: ready for the next
    # time the disk fills, before any cleanup comes.
    assert (disk / trash.TRASH_DIR / trash.SPARE).is_dir()
    fill()
    over = DiskCache(settings.with_(disk_cache_root=str(disk), disk_cache_max_bytes=4096),
                     redis_client)  # fmt: skip
    evicted = cleanup(over)["evict"]
    assert evicted["count"] == 2 and evicted["errors"] == [], evicted
    assert cache.store.total_bytes() == 0 and not (disk / "a2").exists()
    assert trash.tally(disk) == (0, 0)  # the spare is no trash item
    assert (disk / trash.TRASH_DIR / trash.SPARE).is_dir()


def test_the_spare_slot_is_new_the_moment_it_is_named_in_flight(small_disk, monkeypatch):
    """Renamed first, then dated: for two syscalls the slot bore the spare's own date (hours
    back), and an `empty` then took it for a crash's leftover and deleted what it held,
    unchecked (a download pinned since its claim among them). Its age now goes by the change
    time the rename itself sets."""
    disk, fill = small_disk
    make_tree(disk, "album", files=1)
    assert trash.empty(disk) == 0  # the trash and its spare, made ahead
    spare = disk / trash.TRASH_DIR / trash.SPARE
    os.utime(spare, (time.time() - 3600,) * 2)
    fill()
    seen: list[bool] = []
    real = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        real(src, dst, **kw)
        if src == trash.SPARE:  # what an `empty` listing the trash now would judge
            seen.append(trash.in_flight(dst, kw["dst_dir_fd"], 60.0))

    monkeypatch.setattr(trash.os, "rename", rename)
    assert trash.discard(disk, "album") == []
    assert seen == [True]


def test_a_crash_leftover_slot_gone_makes_room_for_the_spare(small_disk, later):
    """A crash just after the spare became a deletion's slot left that slot, and no spare: on
    a full disk, `empty` tried to make the spare before it took the leftover, and did not
    use the room the leftover left."""
    disk, fill = small_disk
    trash.empty(disk)
    spare = disk / trash.TRASH_DIR / trash.SPARE
    leftover = spare.rename(spare.with_name(f"{trash.IN_FLIGHT}crashed"))
    fill()
    later(3600)
    assert trash.empty(disk) == 1 and not leftover.exists()
    assert spare.is_dir()


def _no_slot_to_be_had(disk: Path, fill: Any) -> None:
    """The trash there, its spare gone (a crash's leftover slot or an undeletable file held
    it), the disk full to its last inode."""
    trash.empty(disk)
    (disk / trash.TRASH_DIR / trash.SPARE).rmdir()
    fill()


@pytest.mark.parametrize("dated", [-3600, 3 * 86400])  # a download's own time: back or ahead
def test_with_no_slot_to_be_had_the_directory_is_its_own(
    settings, redis_client, small_disk, monkeypatch, dated
):
    """Every eviction failed with ENOSPC while the spare was held, for good where an
    undeletable file held it. The directory goes into the trash as its own slot (a rename
    takes no room), dated now first so that an `empty` leaves it alone while it is checked."""
    disk, fill = small_disk
    cache = DiskCache(settings.with_(disk_cache_root=str(disk)), redis_client)
    for name in ("a1", "a2"):
        make_tree(disk, name, files=2)
        cache.register(name)
    os.utime(disk / "a1", (time.time() + dated,) * 2)  # unzip, tar x: its source's dates
    _no_slot_to_be_had(disk, fill)
    seen: list[bool] = []
    real = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        real(src, dst, **kw)
        if src == "a1":  # what an `empty` listing the trash now would judge
            seen.append(trash.in_flight(dst, kw["dst_dir_fd"], 60.0))

    monkeypatch.setattr(trash.os, "rename", rename)
    assert cache.remove("a1", remove_files=True)["status"] == "removed"
    monkeypatch.undo()
    assert seen == [True]
    assert not (disk / "a1").exists() and cache.store.info("a1") is None
    assert trash_items(disk) == [] and (disk / trash.TRASH_DIR / trash.SPARE).is_dir()
    assert (disk / "a2").is_dir()


def test_an_old_directory_swapped_in_as_its_own_slot_outlives_another_cleanup(
    small_disk, monkeypatch
):
    """The directory as its own slot was first dated now, then renamed: one swapped in between
    (a copy keeping its old times: cp -a, tar x), or dated back while in the trash, bore its
    own old time there, and another worker's `empty` deleted it unchecked."""
    disk, fill = small_disk
    make_tree(disk, "x", files=1)
    make_tree(disk, "new", files=2)
    os.utime(disk / "new", (1e9, 1e9))  # 2001: a re-download with its source's times
    _no_slot_to_be_had(disk, fill)
    real = os.rename

    def swap_then_empty(src: Any, dst: Any, **kw: Any) -> None:
        if src == "x":  # discard's move of x into the trash: `new` takes its place first
            real(disk / "x", disk / "x-old")
            real(disk / "new", disk / "x")
            real(src, dst, **kw)
            os.utime(dst, (1e9, 1e9), dir_fd=kw["dst_dir_fd"])  # dated back in the trash
            trash.empty(disk, 300.0)  # another worker's cleanup
            return
        real(src, dst, **kw)

    monkeypatch.setattr(trash.os, "rename", swap_then_empty)
    with pytest.raises(trash.NotADirectory, match="changed while it was being deleted"):
        trash.discard(disk, "x")
    monkeypatch.undo()
    assert len(list((disk / "x").iterdir())) == 2  # the new download, put back whole


def test_a_called_off_deletion_of_a_directory_its_own_slot_is_put_back_as_it_was(small_disk):
    disk, fill = small_disk
    make_tree(disk, "album", files=2)
    when = time.time() - 3600
    os.utime(disk / "album", (when, when))
    _no_slot_to_be_had(disk, fill)
    with pytest.raises(trash.Kept):
        trash.discard(disk, "album", still_ours=lambda: "pinned")
    assert len(list((disk / "album").iterdir())) == 2 and trash_items(disk) == []
    assert abs((disk / "album").stat().st_mtime - when) < 1  # its own time again
    # Its place taken meanwhile: kept whole in the trash, the directory itself.
    def taken() -> str:
        (disk / "filler0").rename(disk / "album")  # a file where it was
        return "pinned"

    with pytest.raises(trash.Kept):
        trash.discard(disk, "album", still_ours=taken)
    [kept] = trash_items(disk)
    assert kept.name.startswith(trash.KEPT) and len(list(kept.iterdir())) == 2
    assert trash.tally(disk) == (0, 1)


@pytest.mark.parametrize("refused", [1, 2])
def test_a_called_off_deletion_that_cannot_be_kept_under_its_name_says_so_and_why(
    small_disk, monkeypatch, caplog, refused
):
    """Put back refused (its name taken) and the rename to .kept- refused too (ENOSPC: the
    trash's folder had to grow): the slot kept its in-flight name, and a cleanup emptied it
    once old, the pinned directory in it; the deletion said neither, nor why it stopped."""
    disk, fill = small_disk
    make_tree(disk, "album", files=1)
    trash.empty(disk)
    fill()
    real, refusals = os.rename, [1] * refused

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        if str(dst).startswith(trash.KEPT) and refusals:
            refusals.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst, **kw)

    def taken() -> str:
        (disk / "filler0").rename(disk / "album")  # a file in its place
        return "pinned"

    monkeypatch.setattr(trash.os, "rename", rename)
    with pytest.raises(trash.Kept):  # the reason, not the rename's error
        trash.discard(disk, "album", still_ours=taken)
    [item] = trash_items(disk)
    if refused == 1:  # tried again once the spare's room was given up: kept
        assert item.name.startswith(trash.KEPT) and (item / "d").is_dir()
    else:
        assert item.name.startswith(trash.IN_FLIGHT) and "could be neither put back" in (
            caplog.text)  # fmt: skip


@pytest.mark.parametrize("whose", ["another cache's", "this root seen again"])
def test_the_trash_of_a_root_not_ours_below_ours_is_left_alone(
    root, tmp_path, tmpfs, bind_mount, later, whose
):
    """`empty` judged the in-flight slots of another cache's root mounted below ours by this
    cache's lock timeout (mid-check, if its own is longer), and made a spare there."""
    if whose == "another cache's":
        other = tmpfs(root / "artist")
        (other / ".cachemgr-books").write_text("books: other:\n")
    else:
        bind_mount(tmp_path, root / "artist")
        other = root / "artist"
    slot = other / trash.TRASH_DIR / f"{trash.IN_FLIGHT}theirs"
    make_tree(other, f"{trash.TRASH_DIR}/{slot.name}/d")
    later(120)
    assert trash.empty(root, 60.0, depth=2) == 0 and slot.exists()
    assert not (other / trash.TRASH_DIR / trash.SPARE).exists()
    assert trash.tally(root, 60.0, depth=2) == (0, 0)


def test_a_called_off_deletion_gives_the_spare_back(small_disk):
    """Called off (pinned since its claim), a deletion removed its slot: the spare it had
    taken on a full disk was gone, its room handed to whatever filled the disk."""
    disk, fill = small_disk
    make_tree(disk, "album", files=1)
    trash.empty(disk)
    fill()
    with pytest.raises(trash.Kept):
        trash.discard(disk, "album", still_ours=lambda: "pinned")
    assert (disk / "album").is_dir() and trash_items(disk) == []
    assert (disk / trash.TRASH_DIR / trash.SPARE).is_dir()


def test_a_disk_mounted_below_the_root_gets_its_spare_ahead(root, tmpfs):
    """Only the root's trash was made ahead: a disk mounted at root/artist that filled first
    could not even make its trash, and nothing on it could be evicted."""
    artist = tmpfs(root / "artist")
    trash.empty(root, depth=2)
    assert (artist / trash.TRASH_DIR / trash.SPARE).is_dir()
    assert (root / trash.TRASH_DIR / trash.SPARE).is_dir()


def test_the_root_seen_again_through_a_mount_below_it_is_no_download(
    settings, redis_client, root, tmp_path, bind_mount
):
    """The root's parent bind-mounted at root/mnt (entry depth 2): mnt/downloads is the root
    itself. Registered, the whole cache was one download counted twice; removed with its
    files, the root was renamed into the parent's trash, outside the root, until a check put
    it back (a worker killed between the two left the whole cache there)."""
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    make_tree(root, "artist/album", files=2)
    cache.register("artist/album")
    bind_mount(tmp_path, root / "mnt")
    with pytest.raises(PathError, match="is the cache root itself, seen again through a mount"):
        cache.register("mnt/downloads")
    # Nor said to be an untracked download that `reconcile` books (it never would).
    found = audit.untracked(cache, older_than=time.time() + 60)
    assert "mnt/downloads" not in found["examples"] and found["count"] == 1, found  # outside
    bind_mount(tmp_path.parent, root / "up")
    with pytest.raises(PathError, match="above the root, seen again through a mount"):
        cache.register(f"up/{tmp_path.name}")
    assert "mnt/downloads" not in reconcile(cache, dry_run=True)["registered"]
    # Booked by a version before this check: kept on the books, the root left where it is.
    cache.store.register("mnt/downloads", 8192, 2, now=cache.clock())
    with pytest.raises(DeleteFailed, match="the cache root itself"):
        cache.remove("mnt/downloads", remove_files=True)
    assert (root / "artist/album").is_dir() and cache.store.tracked(["mnt/downloads"]) == [True]
    # Nor is a trash made ahead there (a folder above the root), as on a disk below it.
    trash.empty(root, depth=2)
    assert not (tmp_path / trash.TRASH_DIR).exists()
    assert not (tmp_path.parent / trash.TRASH_DIR).exists()


def test_a_disks_own_lost_and_found_below_the_root_is_never_pinned(
    settings, redis_client, root, tmpfs
):
    """Registering root/artist/lost+found of a disk mounted at root/artist was refused; a pin
    of it was granted, and said it would keep a download that no registration ever books."""
    tmpfs(root / "artist")
    cache = DiskCache(settings.with_(disk_cache_entry_depth=2), redis_client)
    with pytest.raises(PathError, match="the disk mounted at 'artist''s own"):
        cache.pin("artist/lost+found", 60)
    assert cache.pin("artist/album", 60)["path"] == "artist/album"  # a download's: granted


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_removal_with_files_of_a_directory_now_a_symlink_says_nothing_was_deleted(
    cache, root, canary, kind
):
    """`rm --files` answered {"status": "removed", "files_deleted": false} and exit 0, unsaid
    why: read as "gone already" while a symlink (or a file) stood in the directory's place."""
    make_tree(root, "album", files=2)
    cache.register("album")
    shutil.rmtree(root / "album")
    if kind == "symlink":
        (root / "album").symlink_to(canary)  # outside the root
    else:
        (root / "album").write_bytes(b"x")
    done = cache.remove("album", remove_files=True)
    assert done["status"] == "removed" and done["files_deleted"] is False
    assert f"'album' is a {kind} now, not the directory booked" in done["warning"]
    assert (canary / "nested" / "keep.bin").exists() and os.path.lexists(root / "album")
    assert cache.store.info("album") is None


def test_a_disk_out_of_inodes_is_said(settings, redis_client, small_disk):
    """Downloads of many small files used every inode: `touch` failed in the root while the
    stats said quota ok, no warning, free bytes aplenty, and /metrics had nothing to alert on."""
    disk, fill = small_disk
    cache = DiskCache(settings.with_(disk_cache_root=str(disk)), redis_client)
    stats = cache.stats()
    assert stats["inodes"] == 64 and 0 < stats["free_inodes"] <= 64
    assert not any("inodes free" in w for w in stats["warnings"])
    fill()
    stats = cache.stats()
    assert stats["free_inodes"] == 0 and stats["free_disk_bytes"] > 2**20
    said = [w for w in stats["warnings"] if "inodes free" in w]
    assert said and said[0].startswith("the disk holding the cache has 0 of 64 inodes free")
    from api.metrics import CacheCollector

    gauges = {m.name: m.samples[0].value for m in CacheCollector(cache).collect() if m.samples}
    assert gauges["cachemgr_free_inodes"] == 0
