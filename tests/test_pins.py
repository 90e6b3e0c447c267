"""Pins held by named holders: each renews, shortens and ends its own lease, never another's."""

from __future__ import annotations

from datetime import datetime

import pytest

from cachemgr import DiskCache
from cachemgr.errors import BadArgument, PathError
from cachemgr.passes import enforce_quota
from cachemgr.records import iso
from tests.conftest import make_tree
from tests.test_core import Clock, fill


@pytest.fixture
def clocked(cache: DiskCache) -> DiskCache:
    cache.clock = Clock()
    return cache


def test_an_unpin_ends_its_holders_lease_only(clocked, root):
    """Three streams pinned one album; the first to finish unpinned it, which ended every
    lease, and a quota pass took the album 2 s later while another still streamed it."""
    cache = clocked
    names = fill(cache, root, 22, cache.clock)  # past the threshold: the oldest go first
    now = cache.clock.t
    assert cache.pin(names[0], 600, "stream-1")["pinned_until"] == iso(now + 600)
    assert cache.pin(names[0], 60, "stream-2")["pinned_until"] == iso(now + 600)
    done = cache.unpin(names[0], "stream-1")
    assert done == {"path": names[0], "unpinned": True, "pinned_until": iso(now + 60)}
    result = enforce_quota(cache)
    assert names[0] in result.skipped_pinned and (root / names[0]).is_dir()
    assert cache.unpin(names[0], "stream-1")["unpinned"] is False  # ended already
    assert cache.unpin(names[0], "stream-2") == {
        "path": names[0],
        "unpinned": True,
        "pinned_until": None,
    }
    assert cache.info(names[0]).pinned_until is None
    assert not cache.client.exists(cache.keys.pin_holders(names[0]))


def test_a_holder_shortens_its_own_lease_and_anyones_keeps_the_later(clocked, root):
    cache, now = clocked, clocked.clock.t
    make_tree(root, "a")
    cache.register("a")
    cache.pin("a", 600, "stream-1")
    assert cache.pin("a", 30, "stream-1")["pinned_until"] == iso(now + 30)  # its own: as said
    cache.pin("a", 600)  # anyone's (no holder named): of two, the later stands
    assert cache.pin("a", 60)["pinned_until"] == iso(now + 600)
    assert cache.client.ttl(cache.keys.pin_holders("a")) > 0  # it goes with its last lease
    cache.clock.t += 100  # stream-1's lease lapsed: forgotten at the next change
    cache.pin("a", 600, "stream-2")
    assert set(cache.client.hkeys(cache.keys.pin_holders("a"))) == {"", "stream-2"}
    # Anyone's end (no holder named) ends every lease, as it did before holders.
    assert cache.unpin("a") == {"path": "a", "unpinned": True, "pinned_until": None}
    assert cache.info("a").pinned_until is None


def test_a_lease_from_before_holders_is_anyones(clocked, root):
    cache, now = clocked, clocked.clock.t
    make_tree(root, "a")
    cache.register("a")
    cache.client.zadd(cache.keys.pins, {"a": now + 900})  # written by an older version
    cache.client.zadd(cache.keys.pin_paths, {"a": 0})
    cache.pin("a", 60, "stream-1")
    assert cache.unpin("a", "stream-1")["pinned_until"] == iso(now + 900)  # the old one stands


@pytest.mark.parametrize("bad", ["x" * 201, "tab\there", 42, "", "  "])
def test_a_bad_holder_is_refused(clocked, root, bad):
    """An empty one (an unset $STREAM_ID) read as no holder named: its unpin ended every
    stream's lease."""
    make_tree(root, "a")
    clocked.register("a")
    clocked.pin("a", 60, "stream-1")
    for act in (lambda: clocked.pin("a", 60, bad), lambda: clocked.unpin("a", bad)):
        with pytest.raises(BadArgument, match="holder must be a name"):
            act()
    assert clocked.info("a").pinned_until == clocked.clock.t + 60


def test_holders_through_the_api_the_tasks_and_the_client(client, cache, root, pipeline):
    make_tree(root, "a")
    cache.register("a")
    url = "/cache/directories/a/pin?wait=10"
    for who in ("s1", "s2"):
        assert client.post(f"{url}&ttl_seconds=600&holder={who}").status_code == 200
    ended = client.delete(f"{url}&holder=s1").get_json()["result"]
    assert ended["unpinned"] is True and ended["pinned_until"] is not None  # s2's stands
    bad = client.post(f"{url}&holder=%01")
    assert bad.status_code == 400 and "holder" in bad.get_data(as_text=True)
    pipeline.pin_now("a", 600, holder="s3")
    pipeline.unpin_now("a", holder="s2")
    assert cache.info("a").pinned_until is not None  # s3's
    assert pipeline.unpin("a", holder="s3").get(timeout=10)["pinned_until"] is None
    assert cache.info("a").pinned_until is None


def test_holders_through_the_cli(runner, cache, root):
    make_tree(root, "a")
    cache.register("a")
    for who in ("s1", "s2"):
        assert runner.invoke(args=["pin", "a", "--ttl", "10m", "--holder", who]).exit_code == 0
    ended = runner.invoke(args=["unpin", "a", "--holder", "s1", "--json"])
    assert ended.exit_code == 0 and '"unpinned": true' in ended.output
    assert cache.info("a").pinned_until is not None


def test_a_lease_an_older_client_wrote_beside_the_holders_stands(clocked, root):
    """An older client's pin_now writes cache:pins alone: a holder's unpin rebuilt the lease
    from the holders it knew and dropped the older client's hour."""
    cache, now = clocked, clocked.clock.t
    make_tree(root, "a")
    cache.register("a")
    cache.pin("a", 60, "stream-1")
    cache.client.zadd(cache.keys.pins, {"a": now + 3600}, gt=True)  # the older client's
    assert cache.unpin("a", "stream-1")["pinned_until"] == iso(now + 3600)
    cache.pin("a", 30, "stream-2")
    assert cache.info("a").pinned_until == now + 3600


def test_a_refused_pin_leaves_no_holders_behind(clocked, root):
    from cachemgr.errors import BeingDeleted

    cache = clocked
    make_tree(root, "a")
    cache.register("a")
    cache.client.zadd(cache.keys.pins, {"a": cache.clock.t + 60})  # an older client's lease
    cache.store.claim("a", "evicted", honour_pins=False)  # being deleted
    with pytest.raises(BeingDeleted):
        cache.pin("a", 60, "stream-1")
    assert not cache.client.exists(cache.keys.pin_holders("a"))


def test_a_holder_ends_through_a_path_inside_what_it_pinned_through_it(clocked, root):
    cache, now = clocked, clocked.clock.t
    make_tree(root, "album/disc1")
    cache.register("album")
    assert cache.pin("album/disc1", 600, "stream-1")["path"] == "album"
    cache.pin("album", 60, "stream-2")
    done = cache.unpin("album/disc1", "stream-1")
    assert done == {"path": "album", "unpinned": True, "pinned_until": iso(now + 60)}


def test_a_holder_ends_its_lease_taken_inside_before_the_registration(clocked, root):
    """Pinned on a disc's folder before the album was registered: the holder's unpin of the
    album answered "unpinned": false, and the album stayed pinned."""
    cache, now = clocked, clocked.clock.t
    cache.pin("q/alb/disc1", 600, "early")
    cache.pin("q/alb/disc2", 900, "other")
    make_tree(root, "q/alb/disc1")
    cache.register("q/alb")
    done = cache.unpin("q/alb", "early")
    assert done == {"path": "q/alb", "unpinned": True, "pinned_until": iso(now + 900)}
    assert [lease.holder for lease in cache.info("q/alb").holders] == ["other"]
    assert cache.unpin("q/alb", "other")["pinned_until"] is None
    assert cache.info("q/alb").pinned_until is None


def test_the_holders_last_as_long_as_their_leases_by_the_callers_clock(cache, root):
    """Kept until the last lease by Redis's clock: a caller 2 minutes behind lost its
    holders at once, and its own unpin then ended nothing."""
    import time

    cache.clock = Clock(time.time() - 120)
    make_tree(root, "a")
    cache.register("a")
    cache.pin("a", 60, "stream-1")
    assert 59 <= cache.client.ttl(cache.keys.pin_holders("a")) <= 61
    assert cache.unpin("a", "stream-1")["unpinned"] is True


def test_a_holder_ends_a_lease_it_took_before_the_download_was_registered(clocked, root):
    """Pinned before the download existed, then registered above it: the holder's unpin
    went to the album and ended nothing, and the lease held it for its whole length."""
    cache = clocked
    cache.pin("artist/new/disc1", 300, "stream-1")  # a pin may precede its directory
    make_tree(root, "artist/new/disc1", files=1)
    cache.register("artist/new")
    assert cache.info("artist/new").pinned_until is not None
    done = cache.unpin("artist/new/disc1", "stream-1")
    assert done["unpinned"] is True and done["path"] == "artist/new"  # the directory
    assert cache.info("artist/new").pinned_until is None


def test_an_empty_holder_is_refused_by_the_client_the_api_and_the_cli(
    client, cache, root, pipeline, runner
):
    make_tree(root, "a")
    cache.register("a")
    cache.pin("a", 600, "stream-1")
    for holder in ("", "  "):
        with pytest.raises(BadArgument):
            pipeline.unpin("a", holder=holder)
        with pytest.raises(BadArgument):
            pipeline.unpin_now("a", holder=holder)
        answer = client.delete(f"/cache/directories/a/pin?wait=10&holder={holder}")
        assert answer.status_code == 400 and "holder" in answer.get_data(as_text=True)
        said = runner.invoke(args=["unpin", "a", "--holder", holder])
        assert said.exit_code == 2 and "holder must be a name" in said.output
    assert cache.info("a").pinned_until is not None  # stream-1's lease stands


def test_a_holders_unpin_ends_its_leases_on_the_path_and_on_the_album(clocked, root, pipeline):
    """pin_now before the download (on the path), a renewal after its registration (on the
    album): the unpin ended the first and said null while the album stayed pinned."""
    cache = clocked
    cache.pin("artist/new/disc1", 3600, "s1")
    make_tree(root, "artist/new/disc1", files=1)
    cache.register("artist/new")
    assert cache.pin("artist/new/disc1", 3000, "s1")["path"] == "artist/new"  # the renewal
    done = cache.unpin("artist/new/disc1", "s1")
    assert done["unpinned"] is True and done["pinned_until"] is None
    assert cache.info("artist/new").pinned_until is None
    pinned = pipeline.pin_now("artist/new/disc1", 600, holder="s2")  # on the album
    assert pinned["path"] == "artist/new" and pinned["pinned_until"] is not None
    assert pipeline.unpin_now("artist/new/disc1", holder="s2") == {
        "path": "artist/new", "unpinned": True, "pinned_until": None
    }  # fmt: skip
    assert cache.info("artist/new").pinned_until is None


def test_removing_the_last_download_with_its_files_is_not_taken_for_an_unmount(cache, root):
    import shutil

    make_tree(root, "only", files=1)
    cache.register("only")
    shutil.rmtree(root / "only")  # by hand: the root is empty now
    assert cache.remove("only", remove_files=True)["path"] == "only"
    assert cache.store.tracked(["only"]) == [False]


def test_a_directorys_read_lists_its_holders(clocked, root, client, runner):
    """Who holds an album was nowhere to be seen: an operator could not tell which stream
    kept it, nor whether an older client's lease did."""
    from cachemgr.records import Lease

    cache, now = clocked, clocked.clock.t
    make_tree(root, "a")
    cache.register("a")
    assert cache.info("a").holders == []
    cache.pin("a", 600, "stream-1")
    cache.pin("a", 60, "stream-2")
    cache.client.zadd(cache.keys.pins, {"a": now + 3600}, gt=True)  # an older client's
    assert cache.info("a").holders == [
        Lease("", now + 3600, "a"),
        Lease("stream-1", now + 600, "a"),
        Lease("stream-2", now + 60, "a"),
    ]
    cache.clock.t += 100  # stream-2's lapsed: not in force, not listed
    assert cache.info("a").to_dict()["holders"] == [
        {"holder": None, "until": iso(now + 3600), "path": "a"},
        {"holder": "stream-1", "until": iso(now + 600), "path": "a"},
    ]
    assert "holders" not in cache.store.info("a").to_dict()  # listings do not read them
    cache.unpin("a")
    assert cache.info("a").holders == []


def test_a_directorys_holders_include_leases_inside_and_above_it(clocked, root):
    """A stream pinned a track's folder before its album was registered: the album read
    pinned_until, and its holders were empty."""
    from cachemgr.records import Lease

    cache, now = clocked, clocked.clock.t
    cache.pin("artist/album/cd1", 600, "stream-9")  # before the download: a lease waiting
    cache.pin("artist", 300, "stream-8")
    make_tree(root, "artist/album/cd1")
    cache.register("artist/album")
    entry = cache.info("artist/album")
    assert entry.pinned_until == now + 600
    assert entry.holders == [
        Lease("stream-9", now + 600, "artist/album/cd1"), Lease("stream-8", now + 300, "artist")
    ]  # fmt: skip


def test_holders_through_the_api_and_the_cli(cache, root, client, runner, monkeypatch):
    import api.cli

    monkeypatch.setattr(api.cli, "_json_wanted", lambda as_json: bool(as_json))  # a terminal
    make_tree(root, "a")
    cache.register("a")
    cache.pin("a", 600, "stream-1")
    reply = client.get("/cache/directories/a").get_json()
    assert [h["holder"] for h in reply["holders"]] == ["stream-1"]
    shown = runner.invoke(args=["info", "a"])
    assert shown.exit_code == 0
    assert "holders        stream-1 until " in shown.output
    cache.pin("a", 60, "stream-2")
    import time

    # Taken inside before the registration (a pin now lands on the album): its path is said.
    cache.store.pin("a/disc1", time.time() + 30, "stream-3", now=time.time())
    two = runner.invoke(args=["info", "a"]).output.splitlines()
    at = next(i for i, line in enumerate(two) if line.startswith("holders"))
    assert two[at + 1].startswith(" " * 15 + "stream-2 until ")  # one lease a line
    assert two[at + 2].startswith(" " * 15 + "stream-3 until ")
    assert two[at + 2].endswith(" on a/disc1")
    from cachemgr import pins

    pins.end_lease(cache.store, "a/disc1", "", time.time())
    cache.unpin("a", "stream-2")
    cache.unpin("a", "stream-1")
    assert "holders        none" in runner.invoke(args=["info", "a"]).output


def test_an_unpin_answers_the_lease_that_still_protects_the_directory(clocked, root):
    """A lease above it still held the album while the unpin answered pinned_until null."""
    cache, now = clocked, clocked.clock.t
    make_tree(root, "artD/alb1")
    cache.register("artD/alb1")
    cache.pin("artD", 600, "above1")
    cache.pin("artD/alb1", 60)
    done = cache.unpin("artD/alb1")
    assert done == {"path": "artD/alb1", "unpinned": True, "pinned_until": iso(now + 600)}
    assert cache.info("artD/alb1").pinned_until == now + 600


def test_a_holders_unpin_of_an_untracked_parent_leaves_the_downloads_inside_it(clocked, root):
    """`unpin artist --holder H` ended H's leases on every album under the artist."""
    cache, now = clocked, clocked.clock.t
    for name in ("artist/a1", "artist/a2"):
        make_tree(root, name)
        cache.register(name)
        cache.pin(name, 600, "H")
    cache.pin("artist", 60, "H")
    assert cache.unpin("artist", "H")["unpinned"] is True
    assert cache.info("artist/a1").pinned_until == now + 600
    assert cache.info("artist/a2").pinned_until == now + 600


def test_an_unpin_after_redis_lost_some_scripts_says_what_it_ended(clocked, root, monkeypatch):
    """PIN loaded, the lease read not (a restart, then a pin): the batch's ends ran, the read
    failed with NOSCRIPT, the whole batch ran again, and the unpin said it ended nothing.
    (A script Redis has not seen stands for a lost one: SCRIPT FLUSH would reach every other
    client of the server, a test run's worker threads too.)"""
    import uuid

    from cachemgr import pins
    from cachemgr.reads import Lua

    def unseen(script: str) -> str:
        return f"{script}\n-- {uuid.uuid4()}"

    cache = clocked
    make_tree(root, "album")
    cache.register("album")
    cache.pin("album", 600, "H")
    monkeypatch.setattr(pins, "LEASE_NOW", Lua(unseen(pins.LEASE_NOW.script)))
    assert cache.unpin("album", "H") == {"path": "album", "unpinned": True, "pinned_until": None}
    # The other way round: the read after the failed end read the lease it was to end.
    cache.pin("album", 600, "H")
    monkeypatch.setattr(cache.store, "pin_script", cache.client.register_script(unseen(pins.PIN)))
    assert cache.unpin("album", "H") == {"path": "album", "unpinned": True, "pinned_until": None}


def test_a_pipeline_host_whose_clock_is_behind_pins_by_redis_time(cache, root, monkeypatch):
    """pin_now from a host an hour behind granted a lease that had run out an hour before
    and answered success: the album streamed unprotected."""
    import time
    import types

    from tests.conftest import REDIS_URL
    from workers import client as client_module
    from workers.client import CacheClient

    make_tree(root, "album")
    cache.register("album")
    real = time.time
    behind = types.SimpleNamespace(time=lambda: real() - 3600, monotonic=time.monotonic)
    monkeypatch.setattr(client_module, "time", behind)  # this pipeline host's clock
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, key_prefix=cache.keys.prefix)
    try:
        client.pin_now("album", 600, holder="stream-9")
        holders = cache.info("album").holders
        assert [h.holder for h in holders] == ["stream-9"]
        # by Redis's clock, not an hour ago (the skew is measured to within a round trip)
        assert 500 < holders[0].until - real() < 601
        booked = cache.client.zscore(cache.keys.lru, "album")
        assert client.access("album") is True
        assert cache.client.zscore(cache.keys.lru, "album") >= booked  # never back
        assert abs(cache.client.zscore(cache.keys.lru, "album") - real()) < 5
    finally:
        client.close()


def test_a_worker_whose_clock_is_behind_books_leases_plays_and_registrations_by_redis_time(
    settings, redis_client, root, monkeypatch
):
    """A worker two hours behind granted a pin that had already run out (the next pass
    evicted the album through it), booked its plays two hours back, and a new download as
    two hours old. Its cache's clock is Redis's (nodes.RedisClock), as the client's is."""
    import time
    import types

    from cachemgr import clock
    from cachemgr.clock import RedisClock

    real = time.time
    behind = types.SimpleNamespace(time=lambda: real() - 7200, monotonic=time.monotonic)
    monkeypatch.setattr(clock, "time", behind)  # this worker host's clock
    worker = DiskCache(settings, redis_client, clock=RedisClock(redis_client))
    make_tree(root, "album")
    worker.register("album")
    assert abs(redis_client.zscore(worker.keys.lru, "album") - real()) < 5
    until = worker.pin("album", 600, holder="stream-1")["pinned_until"]
    assert 590 < datetime.fromisoformat(until).timestamp() - real() < 601
    redis_client.zadd(worker.keys.lru, {"album": real() - 60})  # played a minute ago
    worker.access("album")
    assert abs(redis_client.zscore(worker.keys.lru, "album") - real()) < 5


def test_an_unpin_of_the_path_pinned_through_says_why_the_album_stays_pinned(clocked, root):
    """pin("alb/cd1") puts the lease on the album; unpin("alb/cd1") naming no holder ended
    nothing and said nothing: the album stayed pinned until the lease lapsed (up to a week)."""
    cache, now = clocked, clocked.clock.t
    make_tree(root, "alb/cd1")
    cache.register("alb")
    assert cache.pin("alb/cd1", 600)["path"] == "alb"
    done = cache.unpin("alb/cd1")
    assert done["unpinned"] is False and done["pinned_until"] == iso(now + 600)
    assert done["warning"].startswith("nothing ended on 'alb/cd1', which lies in the tracked "
                                      "directory 'alb'") and "unpin 'alb'" in done["warning"]
    assert cache.unpin("alb") == {"path": "alb", "unpinned": True, "pinned_until": None}
    assert "warning" not in cache.unpin("alb/cd1")  # nothing stands: nothing to explain
    # A named holder's lease there (a stream's), or one above the album, is none to end.
    cache.pin("alb", 600, "stream-7")
    assert "warning" not in cache.unpin("alb/cd1")
    cache.unpin("alb", "stream-7")
    make_tree(root, "Artist/alb2/cd1")
    cache.register("Artist/alb2")
    cache.pin("Artist", 600)
    done = cache.unpin("Artist/alb2/cd1")
    assert done["pinned_until"] is not None and "warning" not in done


def test_a_pin_of_a_file_or_a_symlink_says_which_as_a_registration_does(cache, root, tmp_path):
    # A registration said "a symlink, not a directory", a pin of the same "not a directory".
    from cachemgr.paths import PathError

    make_tree(root, "album")
    (root / "single.flac").write_bytes(b"x")
    (root / "link").symlink_to(root / "album")
    for name, what in (("single.flac", "a file"), ("link", "a symlink")):
        for act in (lambda n: cache.pin(n, 60), cache.register):
            with pytest.raises(PathError, match=f"path is {what}, not a directory: '{name}'"):
                act(name)
    cache.register("album")
    assert cache.pin("album/track00.mp3", 60)["path"] == "album"  # a track pins its album


def test_a_lease_too_short_for_the_pin_scripts_clock_is_refused_in_one_line(
    cache, root, pipeline
):
    """A ttl under the microsecond the script keeps read as lapsed at once: pin, pin_now and
    the task raised a TypeError instead of naming the argument."""
    make_tree(root, "a")
    cache.register("a")
    for pin in (cache.pin, pipeline.pin_now):
        for ttl in (1e-7, 0.0005):
            with pytest.raises(BadArgument, match="ttl_seconds must be a number of seconds from"):
                pin("a", ttl)
    assert cache.info("a").pinned_until is None
    assert cache.pin("a", 0.001)["pinned_until"] is not None  # the shortest taken


def test_a_lapsed_lease_reads_as_none_though_the_books_keep_it_until_a_cleanup(
    cache, root, client
):
    """A lease that ended was shown as `pinned_until` (in the past, beside `holders: []`) in
    the API, `cachemgr info` and `ls --json`, until a cleanup pruned it."""
    import time

    make_tree(root, "a")
    cache.register("a")
    assert cache.pin("a", 0.5, "stream-1")["pinned_until"] is not None
    listed = client.get("/cache/directories").get_json()["directories"]
    assert listed[0]["pinned_until"] is not None  # in force: shown
    time.sleep(0.7)
    assert cache.store.info("a").pinned_until is not None  # still on the books
    one = client.get("/cache/directories/a").get_json()
    listed = client.get("/cache/directories").get_json()["directories"]
    assert one["pinned_until"] is None and one["holders"] == [], one
    assert listed[0]["path"] == "a" and listed[0]["pinned_until"] is None, listed


def test_a_lease_on_a_path_neither_tracked_nor_on_disk_says_so(cache, root, runner):
    """`cachemgr pin nonexistent` (a typo) exited 0 with a lease that protects nothing, then
    counted among the pinned and listed nowhere, unsaid."""
    typo = cache.pin("albmu", 600)
    assert typo["path"] == "albmu" and "neither tracked nor on the disk" in typo["warning"]
    make_tree(root, "coming")  # being written: a lease before its registration, as meant
    assert "warning" not in cache.pin("coming", 600)
    cache.register("coming")
    assert "warning" not in cache.pin("coming/track00.mp3", 600)  # the album's
    said = runner.invoke(args=["pin", "other-typo", "--ttl", "10m"])
    assert said.exit_code == 0 and "neither tracked nor on the disk" in said.output, said.output


@pytest.mark.parametrize("name", ["lost+found", ".cachemgr-books", ".Trash-1000"])
def test_the_roots_own_folders_are_never_pinned_whatever_the_way(cache, pipeline, name):
    """The API refused `lost+found` (the root's own); the CLI, the task and pin_now granted a
    lease, saying it "keeps a download of that name once it is registered", which no
    registration of it ever is."""
    with pytest.raises(PathError, match="the cache root's own"):
        cache.pin(name, 60)
    with pytest.raises(PathError, match="the cache root's own"):
        pipeline.pin_now(name, 60)
    with pytest.raises(Exception, match="the cache root's own"):
        pipeline.pin(name, 60).get(timeout=10)
    assert cache.stats()["pinned_count"] == 0
