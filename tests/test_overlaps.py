"""No two tracked directories overlap, also when a tracked one vanishes from disk and comes back:
sequences the stress test (tests/test_stress.py) found, each made deterministic (a worker paused
between the claim and the move into the trash through DiskCache.before_delete)."""

from __future__ import annotations

import shutil

from cachemgr import DiskCache
from cachemgr.cleanup import cleanup
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree


def _overlaps(records) -> list[tuple[str, str]]:
    ps = sorted(records)
    return [(p, q) for p in ps for q in ps if p != q and q.startswith(p + "/")]


def test_restore_of_a_vanished_child_overlaps_its_registered_parent(settings, redis_client, root):
    """I4 (and double counting): worker 1 deletes a/b; between its claim and the move into the
    trash a/b disappears (the pipeline or an operator removes it), and worker 2 registers `a`
    (its scan sees no b, and REGISTER only looks in the journal for what the scan saw). The
    move fails with ENOENT, and deletion.delete_files puts a/b back on the books (RESTORE checks no
    overlap): a and a/b are both tracked. Once a/b is downloaded again, reconcile keeps both
    and counts b's bytes twice."""
    w1 = DiskCache(settings, redis_client)
    w2 = DiskCache(settings, redis_client)
    make_tree(root, "a/b", files=2)
    make_tree(root, "other", files=1)  # the root is not empty
    assert w1.register("a/b")["status"] == "registered"

    def meanwhile(path: str) -> None:
        shutil.rmtree(root / "a" / "b")
        assert w2.register("a")["status"] == "registered"

    w1.before_delete = meanwhile
    out = w1.remove("a/b", remove_files=True)
    assert out["status"] == "removed" and out["files_deleted"] is False  # gone before the move
    assert w1.stats()["vanished"] == 1
    w1.before_delete = None
    records = w1.store.all_records()
    assert _overlaps(records) == [], f"I4 right after: {_overlaps(records)}"
    assert set(records) == {"a"} and w1.store.total_bytes() == records["a"][0]


def test_restore_overlap_survives_cleanup_and_reconcile(settings, redis_client, root):
    """The same, then a/b is downloaded again: after a cleanup and a reconcile both a and a/b
    are still tracked, b's bytes counted in both."""
    w1 = DiskCache(settings, redis_client)
    w2 = DiskCache(settings, redis_client)
    make_tree(root, "a/b", files=2)
    assert w1.register("a/b")["status"] == "registered"

    def meanwhile(path: str) -> None:
        shutil.rmtree(root / "a" / "b")
        w2.register("a")

    w1.before_delete = meanwhile
    assert w1.remove("a/b", remove_files=True)["status"] == "removed"
    w1.before_delete = None
    make_tree(root, "a/b", files=2)  # downloaded again
    cleanup(w1)
    reconcile(w1)
    records = w1.store.all_records()
    assert _overlaps(records) == [], f"I4 after cleanup+reconcile: {_overlaps(records)}"
    # a/b's bytes counted once: in a's record, which the reconcile resized
    assert set(records) == {"a"} and w1.store.total_bytes() == records["a"][0] == 4 * 4096


def test_parent_registered_over_a_tracked_child_that_vanished(cache, root):
    """I4 without any concurrency (found by the stress test): a tracked b/x is
    removed from disk (by hand, or renamed away), `b` is registered (its scan sees no x, and
    REGISTER looks for tracked descendants only among the subdirectories the scan saw), then
    b/x comes back (downloaded again, renamed back). A cleanup and a reconcile later both b
    and b/x are tracked, and b/x's bytes are counted twice (in b's record and in its own)."""
    make_tree(root, "b/x", files=2)
    assert cache.register("b/x")["status"] == "registered"
    shutil.rmtree(root / "b" / "x")
    # The scan of b cannot see the vanished b/x, nor REGISTER find it (no index of the tracked
    # paths by prefix): b/x stays on the books, off the disk, until the cleanup below.
    assert cache.register("b")["size_bytes"] == 4096
    make_tree(root, "b/x", files=2)
    cleanup(cache)
    reconcile(cache)
    records = cache.store.all_records()
    assert _overlaps(records) == [], f"I4 after cleanup+reconcile: {_overlaps(records)}"
    assert cache.store.total_bytes() == sum(r[0] for r in records.values())  # counted once
    assert (root / "b" / "x").is_dir()
