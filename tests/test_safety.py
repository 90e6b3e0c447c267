"""Hostile input through the tasks and the CLI, and the protections of issue 5: grace period,
free-space floor, bounded passes that continue themselves."""

from __future__ import annotations

import os
import time
import unicodedata

import pytest

from cachemgr import DiskCache
from cachemgr.cleanup import enforce_quota
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
    assert cache.take(victim, "evicted") == "ok"
    assert (root / nfd).read_text() == "a file now" and (root / nfc).is_dir()


def test_grace_period_spares_new_directories(settings, redis_client, root):
    cache = DiskCache(settings.with_(disk_cache_min_age_seconds=3600), redis_client)
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    result = enforce_quota(cache)
    assert result.removed == [] and len(result.skipped_young) == 20


def test_free_space_floor_starts_eviction_below_the_quota(settings, redis_client, root):
    cache = DiskCache(settings.with_(disk_cache_min_free_bytes=2**62), redis_client)
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
