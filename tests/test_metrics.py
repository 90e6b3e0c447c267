"""`GET /metrics`, parsed with prometheus-client's own parsers and checked against /cache/stats."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any
from unittest import mock

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import REMOVALS
from cachemgr import DiskCache, NotOnDisk, Settings
from cachemgr.cleanup import cleanup
from cachemgr.history import over_threshold_since
from cachemgr.passes import sweep
from tests.conftest import BROKER_URL, make_tree

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Any, accept: str = "") -> tuple[Samples, Any]:
    r = client.get("/metrics", headers={"Accept": accept} if accept else {})
    assert r.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, r


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def app_without_worker(settings: Settings, redis_client: Any) -> Any:
    """An API on these settings with no worker of its own: the registry holds only what a
    test publishes there, and no heartbeat rewrites it meanwhile."""
    from api import create_app

    return create_app(
        {"TESTING": True, "CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": redis_client,
         "CELERY_BROKER_URL": BROKER_URL}
    )  # fmt: skip


def busy_cache(cache: DiskCache, root: Any) -> None:
    """Every counter above zero: hits, misses, evictions, expiries, removals, vanished
    directories and both skips."""
    for i in range(21):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    cache.access("d05")
    cache.access("d05")
    cache.access("d07")
    cache.access("never-seen", miss_bytes=12345)
    cache.pin("d00", 600)
    cache.remove("d19", remove_files=True)
    shutil.rmtree(root / "d17")  # by hand: registered again, it leaves the books as vanished
    with pytest.raises(NotOnDisk):
        cache.register("d17")
    lock = cache.lock("d18")
    assert lock.acquire()
    try:
        with mock.patch("cachemgr.registration.REGISTER_WAITS", ()):  # skipped at once, not in 3 s
            assert cache.register("d18")["reason"] == "locked"
    finally:
        lock.release()
    cleanup(cache)  # over the threshold: evicts by LRU, skipping the pinned d00
    later = DiskCache(cache.settings, cache.client, clock=lambda: cache.clock() + 10 * 86400)
    later.store.drop_lapsed_pins(later.clock())
    sweep(later)  # a TTL later: expires what is left


def test_metrics_match_cache_stats(client, cache, root):
    busy_cache(cache, root)
    samples, r = scrape(client)
    stats = client.get("/cache/stats").get_json()
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert value(samples, "cachemgr_up") == 1
    gauges = {
        "cachemgr_usage_bytes": "total_bytes",
        "cachemgr_directories": "directory_count",
        "cachemgr_max_bytes": "max_bytes",
        "cachemgr_threshold_bytes": "threshold_bytes",
        "cachemgr_target_bytes": "target_bytes",
        "cachemgr_pinned_directories": "pinned_count",
        "cachemgr_scheduler_running": "scheduler_running",
        "cachemgr_enabled": "enabled",
        "cachemgr_worker_up": "up",
    }
    for metric, field in gauges.items():
        assert value(samples, metric) == float(stats[field]), metric
    ratio = value(samples, "cachemgr_usage_ratio")
    assert round(100 * ratio, 2) == stats["usage_percent"]
    counters = {
        "cachemgr_hits_total": "hits",
        "cachemgr_misses_total": "misses",
        "cachemgr_hit_bytes_total": "hit_bytes",
        "cachemgr_missed_bytes_total": "missed_bytes",
        "cachemgr_registrations_total": "registrations",
        "cachemgr_freed_bytes_total": "bytes_freed",
    }
    for metric, field in counters.items():
        assert value(samples, metric) == stats[field] > 0, metric
    removed = "cachemgr_directories_removed_total"
    for reason, field in REMOVALS:
        assert value(samples, removed, reason=reason) == stats[field] > 0, reason
    assert {reason for reason, _ in REMOVALS} == {"evicted", "expired", "removed", "vanished"}
    for reason in ("locked", "pinned"):
        skipped = value(samples, "cachemgr_skipped_total", reason=reason)
        assert skipped == stats[f"skipped_{reason}"] > 0, reason
    info = value(samples, "cachemgr_cache_info", node=stats["node"],
                 eviction_policy=stats["eviction_policy"], root=str(cache.root))  # fmt: skip
    assert info == 1
    last = stats["last_cleanup"]
    assert value(samples, "cachemgr_last_cleanup_timestamp_seconds") == last["time"]
    duration = value(samples, "cachemgr_last_cleanup_duration_seconds")
    assert duration == last["duration_seconds"]
    assert value(samples, "cachemgr_last_cleanup_success") == 1
    assert value(samples, "cachemgr_untracked_directories") == last["untracked"]
    assert value(samples, "cachemgr_delete_failed_directories") == last["delete_failed"]
    periodic = samples.get(("cachemgr_last_periodic_cleanup_timestamp_seconds", ()))
    assert periodic == last["periodic_time"]
    interval = value(samples, "cachemgr_cleanup_interval_seconds")
    assert interval == cache.settings.disk_cache_cleanup_interval


def test_metrics_go_by_what_the_workers_enforce(settings, redis_client, cache):
    """The workers publish another quota, TTL, interval and policy than this API's environment
    has: /metrics shows theirs, as /cache/stats does (they are the ones enforced)."""
    theirs = settings.with_(
        disk_cache_max_bytes=2**20, disk_cache_ttl_seconds=7200,
        disk_cache_cleanup_interval=600, disk_cache_eviction_policy="fifo",
    )  # fmt: skip
    cache.registry.publish(theirs)
    client = app_without_worker(settings, redis_client).test_client()
    samples, _ = scrape(client)
    stats = client.get("/cache/stats").get_json()
    assert (stats["max_bytes"], stats["eviction_policy"]) == (2**20, "fifo")
    assert value(samples, "cachemgr_cleanup_interval_seconds") == 600
    assert value(samples, "cachemgr_max_bytes") == 2**20
    assert value(samples, "cachemgr_threshold_bytes") == stats["threshold_bytes"]
    assert value(samples, "cachemgr_target_bytes") == stats["target_bytes"]
    info = value(samples, "cachemgr_cache_info", node=stats["node"], eviction_policy="fifo",
                 root=str(cache.root))  # fmt: skip
    assert info == 1


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
def test_a_root_whose_name_is_not_utf8_still_scrapes(settings, redis_client, tmp_path, accept):
    odd = tmp_path / "x\udcff"  # the byte 0xff of a file name, as Python decodes it
    odd.mkdir()
    client = app_without_worker(settings.with_(disk_cache_root=str(odd)), redis_client)
    r = client.test_client().get("/metrics", headers={"Accept": accept} if accept else {})
    assert r.status_code == 200
    text = r.get_data().decode("utf-8")  # valid UTF-8 throughout
    parse = om_families if accept else text_string_to_metric_families
    roots = [s.labels["root"] for f in parse(text) for s in f.samples
             if s.name == "cachemgr_cache_info"]  # fmt: skip
    assert roots == [f"{tmp_path}/x\\xff"]  # the byte, written out: still tells roots apart


def test_counters_are_the_same_from_every_worker_process(app, client, cache, root):
    """Two apps stand for two gunicorn workers: the numbers live in Redis, so both agree."""
    from api import create_app

    other = create_app(dict(app.config)).test_client()
    make_tree(root, "a")
    cache.register("a")
    for _ in range(3):
        cache.access("a")
    first, _ = scrape(client)
    second, _ = scrape(other)
    counters = {k: v for k, v in first.items() if k[0].endswith("_total")}
    assert counters and counters == {k: v for k, v in second.items() if k in counters}
    assert value(first, "cachemgr_hits_total") == 3
    cache.access("a")
    assert value(scrape(other)[0], "cachemgr_hits_total") == 4
    assert value(scrape(client)[0], "cachemgr_hits_total") == 4


def test_over_threshold_since_the_first_cleanup_that_left_it_there(client, cache, root):
    samples, _ = scrape(client)
    assert ("cachemgr_over_threshold_since_timestamp_seconds", ()) not in samples
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
        cache.pin(f"d{i:02d}", 600)  # nothing can go: usage stays above the threshold
    cleanup(cache)
    first = json.loads(cache.client.lindex(cache.keys.history, 0))
    cleanup(cache)
    samples, _ = scrape(client)
    assert value(samples, "cachemgr_over_threshold_since_timestamp_seconds") == first["time"]
    assert value(samples, "cachemgr_usage_bytes") > value(samples, "cachemgr_threshold_bytes")


def test_over_threshold_since_reads_the_newest_run_of_samples():
    history = [  # newest first, as cleanup.py pushes them
        {"time": 300.0, "total_bytes": 95},
        {"time": 200.0, "total_bytes": 91},
        {"time": 100.0, "total_bytes": 50},
        {"time": 50.0, "total_bytes": 99},
    ]
    assert over_threshold_since(history, 96, 90) == 200.0
    assert over_threshold_since(history, 90, 90) is None  # at the threshold is not above it
    assert over_threshold_since(history[2:], 96, 90) is None  # no cleanup has seen it yet
    assert over_threshold_since([{"time": "x"}], 96, 90) is None


def test_openmetrics_when_the_scraper_asks_for_it(client, cache, root):
    make_tree(root, "a")
    cache.register("a")
    cache.access("a")
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in om_families(r.get_data(as_text=True))}
    assert families["cachemgr_hits"].type == "counter"
    assert families["cachemgr_hits"].samples[0].value == 1
    assert families["cachemgr_usage_bytes"].type == "gauge"


def test_redis_down_still_answers_with_up_0(settings):
    from api import create_app
    from cachemgr import connect

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(
        {"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": connect(f"redis://127.0.0.1:{port}/0"),
         "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    )  # fmt: skip
    samples, _ = scrape(app.test_client())
    assert samples == {("cachemgr_up", ()): 0.0}


@pytest.mark.slow
def test_under_gunicorn_every_worker_answers_the_same(settings, cache, root, tmp_path):
    """Three real gunicorn workers, a fresh connection per scrape: whichever worker answers,
    the counters are the ones in Redis (prometheus-client's own Counter would split them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DISK_CACHE_ROOT": str(root),
        "DISK_CACHE_KEY_PREFIX": settings.disk_cache_key_prefix,
        "DISK_CACHE_CLUSTER": settings.disk_cache_cluster,
        "DISK_CACHE_MAX_BYTES": str(settings.disk_cache_max_bytes),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "api.wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", "3", "--graceful-timeout", "5"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the workers to boot; not a timed assertion
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail((tmp_path / "gunicorn.log").read_text()[-3000:])
                time.sleep(0.1)
        make_tree(root, "a")
        cache.register("a")
        for expected in range(1, 16):
            cache.access("a")
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                text = r.read().decode()
            hits = {
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "cachemgr_hits_total"
            }
            assert hits == {expected}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
