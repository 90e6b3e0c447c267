"""Edges a review of the deletion, switch and error changes found: a trash item gone already, a
Redis blip in the last check before a deletion, replies of a Redis that cannot serve, a plan
with management off."""

from __future__ import annotations

import os
import shutil

import pytest
import redis

from cachemgr import DiskCache, trash
from cachemgr import events as event_log
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree


def test_rmtree_of_a_name_already_gone_is_not_an_error(root):
    """Docstring: 'Gone already (another cleanup's `empty`) is not an error.'"""
    (root / trash.TRASH_DIR).mkdir()
    fd = os.open(root / trash.TRASH_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert trash._rmtree("gone-already", fd) == []
    finally:
        os.close(fd)


def test_removal_racing_a_trash_empty_is_counted_as_removed(cache, root, monkeypatch):
    """remove() holds no cleanup lock: a cleanup's trash.empty may take the renamed slot before
    discard's own _rmtree opens it. shutil.rmtree ignored that; the new _rmtree raises
    FileNotFoundError, deletion.delete_files takes it for 'gone before its deletion' -> vanished."""
    make_tree(root, "album", files=2)
    size = cache.register("album")["size_bytes"]
    real = trash._rmtree

    def raced(name: str, dir_fd: int):
        shutil.rmtree(os.path.join(root, trash.TRASH_DIR, name))  # another process's empty()
        return real(name, dir_fd)

    monkeypatch.setattr(trash, "_rmtree", raced)
    out = cache.remove("album", remove_files=True)
    counters = cache.client.hgetall(cache.keys.stats)
    events = [e["event"] for e in event_log.latest(cache.store, 10)]
    assert out["status"] == "removed"
    assert int(counters.get("bytes_freed", 0)) == size, (counters, events)
    assert "removed" in events and "vanished" not in events, events


def test_redis_blip_in_still_ours_puts_the_directory_back(cache, root, monkeypatch):
    """still_ours is the first Redis call between the move aside and the deletion: when it
    raises (Redis away), the directory is moved back from the trash, its journal entry left
    open; the next cleanup finds its files there and puts it back on the books as it was."""
    from cachemgr.cleanup import cleanup

    make_tree(root, "album", files=2)
    size = cache.register("album")["size_bytes"]

    def down(*a, **k):
        raise redis.ConnectionError("blip")

    monkeypatch.setattr(cache.store, "still_ours", down)
    with pytest.raises(redis.ConnectionError):
        cache.remove("album", remove_files=True)
    monkeypatch.undo()
    slots = os.listdir(root / trash.TRASH_DIR)
    assert (root / "album").is_dir(), f"left in the trash: {slots}"
    assert cache.store.unfinished_deletions() == {"album": size}  # claimed, not yet finished
    assert cache.store.tracked(["album"]) == [False]
    cleanup(cache)
    assert cache.store.tracked(["album"]) == [True] and cache.store.total_bytes() == size
    assert cache.store.unfinished_deletions() == {} and (root / "album").is_dir()


def test_reconcile_dry_run_with_management_off(settings, redis_client, root):
    """A dry run is a read: README says reads still work with management off; before this
    range the CLI's `reconcile --dry-run` ran inline and reported."""
    import dataclasses

    off = DiskCache(dataclasses.replace(settings, enable_disk_cache_management=False), redis_client)
    make_tree(root, "album", files=1)
    report = reconcile(off, dry_run=True)
    assert report.get("status") != "disabled" and report["registered"] == ["album"]
    assert off.store.count_entries() == 0  # a plan: nothing booked


def test_redis_unavailable_covers_readonly_and_tryagain():
    from redis._parsers.base import BaseParser

    from api.errors import redis_unavailable

    for reply in ("READONLY You can't write against a read only replica.",
                  "TRYAGAIN Multiple keys request during rehashing of slot"):
        exc = BaseParser.parse_error(reply)
        assert redis_unavailable(exc), (type(exc).__name__, str(exc))


def test_a_nodes_unreadable_entry_costs_only_a_warning(cache, root, redis_client):
    import json

    registry = cache.registry
    registry.publish(cache.settings)
    redis_client.hset(registry.nodes_key, "zz", json.dumps({"node": "zz", "max_bytes": 10}))
    try:
        stats = cache.cluster_stats()  # also what /metrics and the page read
        assert any(w.startswith("node zz: its published settings cannot be read") for w in
                   stats["warnings"])  # fmt: skip
        assert [n["node"] for n in stats["nodes"]] == [cache.settings.node]
    finally:
        redis_client.hdel(registry.nodes_key, "zz")
