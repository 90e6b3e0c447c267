"""Downloads on disk that no registration booked are said, in the log and the stats."""

from __future__ import annotations

import os
import time

from cachemgr import DiskCache
from cachemgr.audit import untracked
from cachemgr.cleanup import cleanup
from cachemgr.reconcile import reconcile
from tests.conftest import make_tree

HOUR = 3600


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
    assert found == {"count": 2, "examples": ["lost-1", "lost-2"]}


def test_beats_cleanup_says_what_is_not_on_the_books_until_reconcile(cache, root, caplog):
    """A registration lost with the broker: 200 MiB untracked at 150% of the quota, while
    the stats said ok and warned of nothing."""
    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)  # the books are kept from now on
    make_tree(root, "lost", files=1)
    aged(root, "lost")
    result = cleanup(cache, periodic=True)
    assert result["untracked"] == {"count": 1, "examples": ["lost"]}
    assert "1 directories in the root are not on the books, e.g. 'lost'" in caplog.text
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
    monkeypatch.setattr(audit.scanner, "directories_at_depth", unreadable)
    result = cleanup(cache, periodic=True)
    assert result["status"] == "done" and result["untracked"] is None


def test_metrics_count_what_is_not_on_the_books(client, cache, root):
    make_tree(root, "booked", files=1)
    cache.register("booked")
    cleanup(cache)
    make_tree(root, "lost", files=1)
    aged(root, "lost")
    cleanup(cache, periodic=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert "cachemgr_untracked_directories 1.0" in text
