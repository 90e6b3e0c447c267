"""What an operator sees in concrete situations: the stats' warnings, /readyz, /metrics, the
status page and the alert rules, each against the others and the docs (README "Troubleshooting",
deploy/README.md)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cachemgr import DiskCache, Settings
from cachemgr import events as event_log
from tests.conftest import BROKER_URL, make_tree

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-alerts.yml"


def app_for(settings: Settings, redis_client: Any) -> Any:
    from api import create_app

    return create_app(
        {"TESTING": True, "CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": redis_client,
         "CELERY_BROKER_URL": BROKER_URL}
    )  # fmt: skip


def metrics_of(client: Any, path: str = "/metrics") -> dict[str, float]:
    r = client.get(path)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    out = {}
    for fam in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in fam.samples:
            lab = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{lab}}}" if lab else s.name] = s.value
    return out


def page_warnings(client: Any) -> list[str]:
    html = client.get("/").get_data(as_text=True)
    return [
        re.sub(r"\s+", " ", w).strip()
        for w in re.findall(r"<li data-warning>(.*?)</li>", html, re.S)
    ]


def last_cleanup(
    cache: DiskCache, at: float, periodic_at: float | None, status: str = "done"
) -> None:
    mapping = {"time": f"{at:.3f}", "status": status, "duration_seconds": "0.100", "error": ""}
    if periodic_at is not None:
        mapping["periodic_time"] = f"{periodic_at:.3f}"
    cache.client.hset(cache.keys.last_cleanup, mapping=mapping)


def healthy(cache: DiskCache, settings: Settings, root: Path) -> None:
    """A node whose worker beats and whose beat ran 10 s ago, with one directory."""
    cache.registry.publish(settings)
    cache.registry.heartbeat(cache.keys)
    make_tree(root, "a")
    cache.register("a")
    now = time.time()
    last_cleanup(cache, now - 10, now - 10)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# -- (g) two named nodes, one down ------------------------------------------------------------
@pytest.fixture
def two_nodes(settings, redis_client, tmp_path, prefix):
    ra, rb = tmp_path / "ra", tmp_path / "rb"
    ra.mkdir()
    rb.mkdir()
    sa = settings.with_(
        disk_cache_node="a", disk_cache_key_prefix=f"{prefix}a:", disk_cache_root=str(ra)
    )
    sb = settings.with_(
        disk_cache_node="b", disk_cache_key_prefix=f"{prefix}b:", disk_cache_root=str(rb)
    )
    ca, cb = DiskCache(sa, redis_client), DiskCache(sb, redis_client)
    ca.registry.publish(sa)
    cb.registry.publish(sb)
    ca.registry.heartbeat(ca.keys)  # only a's worker beats: b is down
    make_tree(ra, "x")
    ca.register("x")
    make_tree(rb, "y")
    cb.register("y")
    now = time.time()
    last_cleanup(ca, now - 10, now - 10)
    last_cleanup(cb, now - 10, now - 10)
    return app_for(sa, redis_client).test_client()


def test_other_node_down_reaches_top_level_warnings_and_page(two_nodes):
    stats = two_nodes.get("/cache/stats").get_json()
    b = next(n for n in stats["nodes"] if n["node"] == "b")
    assert b["up"] is False and b["warnings"]  # only here
    # What an operator reads first (top-level warnings, the status page) says nothing of b.
    assert any("node b" in w for w in stats["warnings"]), stats["warnings"]
    assert any("node b" in w for w in page_warnings(two_nodes))


def test_metrics_show_the_down_node(two_nodes):
    """README Troubleshooting: no worker -> `cachemgr_worker_up 0`. With one web process for
    all nodes (README "Deployment"), node b's worker_up is exported nowhere."""
    m = metrics_of(two_nodes)
    assert any("node=b" in k for k in m), sorted(m)


def test_metrics_honours_node_query(two_nodes):
    """README: "Every endpoint takes ?node=NAME". /metrics?node=b silently answers node a."""
    m = metrics_of(two_nodes, "/metrics?node=b")
    info = [k for k in m if k.startswith("cachemgr_cache_info")]
    assert info and "node=b" in info[0], info
    assert m["cachemgr_worker_up{node=b}"] == 0


def test_one_api_scraped_once_per_node_gives_series_that_do_not_collide(two_nodes):
    """deploy/README: `?node=NAME` gives another node's figures. Scraped from one API for
    each node, the gauges and counters carried no node label: the two scrapes wrote the same
    series, and every alert rule read whichever came last."""
    a, b = metrics_of(two_nodes, "/metrics?node=a"), metrics_of(two_nodes, "/metrics?node=b")
    assert set(a) & set(b) == set(), set(a) & set(b)  # cachemgr_up and node_up included
    assert a["cachemgr_up{node=a}"] == b["cachemgr_up{node=b}"] == 1
    # Every node's cachemgr_node_up comes with the API's own node's figures alone (a, named
    # or not): not once per scraped node.
    every = {"cachemgr_node_up{node=a}", "cachemgr_node_up{node=b}"}
    assert every <= set(a) and set(metrics_of(two_nodes)) == set(a)
    assert not any(k.startswith("cachemgr_node_up{") for k in b)
    for node, m in (("a", a), ("b", b)):
        stats = two_nodes.get(f"/cache/stats?node={node}").get_json()
        assert m[f"cachemgr_usage_bytes{{node={node}}}"] == stats["total_bytes"]
    assert (a["cachemgr_worker_up{node=a}"], b["cachemgr_worker_up{node=b}"]) == (1, 0)
    assert "cachemgr_directories_removed_total{node=b,reason=evicted}" in b
    assert "cachemgr_hits_total{node=a}" in a


def test_another_hosts_node_shows_its_disk_as_its_workers_saw_it(
    settings, redis_client, tmp_path, prefix
):
    """The API cannot look at another host's disk: that node's stats said free space unknown
    and no floor warning, its page "Free on disk -", and `cachemgr_free_disk_bytes` was not
    exported, so CacheLowDiskSpace could never fire for it. Its workers now say at each beat."""
    far_root = tmp_path / "far"
    far_root.mkdir()
    disk, _, free = shutil.disk_usage(far_root)
    floor = min(free + 2**30, disk - 1)  # more than is free: the disk is short of its floor
    theirs = settings.with_(
        disk_cache_node="far", disk_cache_key_prefix=f"{prefix}far:",
        disk_cache_root=str(far_root), disk_cache_min_free_bytes=floor,
    )  # fmt: skip
    far = DiskCache(theirs, redis_client)
    far.registry.publish(theirs)
    far.registry.heartbeat(far.keys, worker="w1@far", settings=theirs)  # a worker's beat
    client = app_for(settings, redis_client).test_client()
    node = client.get("/cache/stats?node=far").get_json()
    assert node["free_disk_bytes"] is not None and node["disk_bytes"] == disk, node
    assert abs(node["free_disk_bytes"] - free) < 2**30  # as seen at the beat
    assert any("under DISK_CACHE_MIN_FREE_BYTES" in w for w in node["warnings"]), node
    metrics = metrics_of(client, "/metrics?node=far")
    free_disk = metrics.get("cachemgr_free_disk_bytes{node=far}")
    assert free_disk == node["free_disk_bytes"], sorted(metrics)


def test_last_cleanup_reads_back_typed(settings, redis_client, cache, root):
    """Redis keeps the outcome as strings; /cache/stats gives numbers and nulls
    for what is absent or unreadable, as its schema says."""
    from cachemgr.cleanup import cleanup
    from cachemgr.records import last_cleanup as parse

    healthy(cache, settings, root)
    cleanup(cache, periodic=True)
    last = app_for(settings, redis_client).test_client().get("/cache/stats").get_json()[
        "last_cleanup"
    ]
    assert last["status"] == "done" and last["error"] is None and last["evict_short"] is None
    assert isinstance(last["time"], float) and last["periodic_time"] == last["time"]
    assert abs(last["time"] - time.time()) < 60
    assert isinstance(last["duration_seconds"], float) and last["trash_left"] == 0
    assert parse({}) is None  # before the first cleanup
    odd = parse({"time": "soon", "trash_left": "x", "duration_seconds": "1e400", "status": ""})
    assert odd is not None
    assert (odd["time"], odd["trash_left"], odd["status"]) == (None, 0, None)
    assert odd["duration_seconds"] is None  # 1e400 is infinity: not a number JSON can hold
    nan = parse({"time": "nan", "trash_left": "inf"})
    assert nan is not None and nan["time"] is None and nan["trash_left"] == 0


# -- (d) the last cleanup failed: root is an empty mount point ---------------------------------
def test_readyz_fails_when_cleanups_refuse_an_empty_root(settings, redis_client, cache, root):
    from cachemgr.cleanup import cleanup
    from cachemgr.errors import RootMissing

    healthy(cache, settings, root)
    shutil.rmtree(root / "a")  # the disk is unmounted: an empty mount point is left
    with pytest.raises(RootMissing):
        cleanup(cache, periodic=True)
    client = app_for(settings, redis_client).test_client()
    stats = client.get("/cache/stats").get_json()
    assert stats["last_cleanup"]["status"] == "failed"
    r = client.get("/readyz")
    # README: "/readyz fails when ... the downloads directory is missing"; every cleanup and
    # reconcile refuses this root (RootMissing), yet readyz says root ok.
    assert r.status_code == 503, r.get_json()


def test_a_root_the_worker_may_not_read_fails_cleanups_by_name(
    settings, redis_client, cache, root, monkeypatch
):
    """chmod 000 on the root (a worker without root's override): every cleanup raised a bare
    PermissionError, recorded nothing (the last one stood 'done'), /readyz said root ok,
    and the only warning blamed beat."""
    import errno

    from cachemgr import marker
    from cachemgr.cleanup import cleanup
    from cachemgr.errors import RootMissing

    healthy(cache, settings, root)
    cleanup(cache)  # the books are kept: the root carries their marker

    def refused(_cache):
        raise PermissionError(errno.EACCES, "Permission denied", str(root / ".cachemgr-books"))

    monkeypatch.setattr(marker, "present", refused)  # what stat'ing in the root meets then
    with pytest.raises(RootMissing, match=r"cannot be read by this process \(Permission"):
        cleanup(cache, periodic=True)
    client = app_for(settings, redis_client).test_client()
    last = client.get("/cache/stats").get_json()["last_cleanup"]
    assert last["status"] == "failed" and "cannot be read" in last["error"]
    r = client.get("/readyz")
    assert r.status_code == 503 and "cannot be read" in str(r.get_json())
    monkeypatch.undo()
    assert cleanup(cache, periodic=True)["status"] == "done"  # readable again: it recovers


def test_readyz_fails_while_the_workers_may_not_read_a_root_the_api_reads(
    settings, redis_client, cache, root
):
    """The API and its workers run as different users: the workers' cleanups were refused
    ("cannot be read by this process") while /readyz, looking with the API's own eyes, said
    the root was ok."""
    from cachemgr import history
    from cachemgr.cleanup import cleanup

    healthy(cache, settings, root)
    client = app_for(settings, redis_client).test_client()
    assert client.get("/readyz").status_code == 200
    said = f"the cache root {str(root)!r} cannot be read by this process (Permission denied"
    history.record(cache, time.time(), {"status": "failed", "error": said,
                                        "error_code": "root_missing"})  # fmt: skip
    assert client.get("/readyz").status_code == 200  # a shell's `cleanup --now`: not theirs
    history.record(cache, time.time(), {"status": "failed", "error": said,
                                        "error_code": "root_missing"}, periodic=True)  # fmt: skip
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["root"].startswith(
        "the workers' last cleanup was refused: the cache root"
    )
    assert cleanup(cache)["status"] == "done"  # a cleanup that could read it: ready again
    assert client.get("/readyz").status_code == 200


def test_a_registration_on_a_root_it_may_not_read_is_refused_in_one_line(
    cache, root, monkeypatch
):
    """A worker that may not read the root failed every registration with a bare
    PermissionError and its traceback; register_completed_download said "no download"."""
    import errno

    from cachemgr import marker
    from cachemgr.cleanup import cleanup
    from cachemgr.errors import RootMissing

    make_tree(root, "a")
    cache.register("a")
    cleanup(cache)  # the books' marker: registrations now check the root against it
    cache.root_token = ("", 0.0)  # the books' token, read afresh (a worker rereads it in 10 s)

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(root))

    make_tree(root, "b")
    monkeypatch.setattr(marker, "present", refused)
    monkeypatch.setattr(marker.os, "scandir", refused)
    for register in (lambda: cache.register("b"), cache.register_latest):
        with pytest.raises(RootMissing, match=r"cannot be read by this process \(Permission "
                           r"denied: permissions\?\): no registration is booked"):  # fmt: skip
            register()
    monkeypatch.undo()
    assert cache.register_latest()["path"] == "b"


def test_the_newest_download_of_a_root_that_is_gone_is_a_root_missing(cache, root):
    from cachemgr.errors import RootMissing

    root.rmdir()
    with pytest.raises(RootMissing, match="is not a directory .is the disk mounted"):
        cache.register_latest()


# -- (e) no worker alive ---------------------------------------------------------------------
def test_an_alert_watches_every_nodes_workers():
    assert any("cachemgr_node_up" in r["expr"] for r in alert_rules())


# -- (f) management disabled -------------------------------------------------------------------
def test_disabled_workers_do_not_also_blame_beat(settings, redis_client, cache, root):
    cache.registry.publish(settings.with_(enable_disk_cache_management=False))
    cache.registry.heartbeat(cache.keys)
    make_tree(root, "a")
    cache.register("a")
    stats = app_for(settings, redis_client).test_client().get("/cache/stats").get_json()
    assert stats["enabled"] is False
    # A disabled worker never records a cleanup, so this one is a false lead (and the alert
    # CacheCleanupNotRunning is, rightly, gated on cachemgr_enabled == 1).
    assert not any("celery beat" in w for w in stats["warnings"]), stats["warnings"]


def test_disabled_on_the_api_only_does_not_say_nothing_is_tracked(
    settings, redis_client, cache, root
):
    """The workers run with management on and do everything (last cleanup done); only the API's
    environment says false. Surfaces say "nothing is tracked", readyz 503, cachemgr_enabled 0
    (which silences CacheCleanupNotRunning for a node whose workers do run)."""
    healthy(cache, settings, root)
    client = app_for(settings.with_(enable_disk_cache_management=False), redis_client).test_client()
    stats = client.get("/cache/stats").get_json()
    m = metrics_of(client)
    assert m["cachemgr_enabled"] == 1, (
        "the workers enforce management; the API switch changes nothing"
    )
    assert not any("nothing is tracked" in w for w in stats["warnings"]), stats["warnings"]


# -- (c) beat not running; (b) scheduler stopped ------------------------------------------------
def test_every_metric_exported_is_in_the_metrics_table(settings, redis_client, cache, root):
    """cachemgr_beat_up and cachemgr_unowned_directories were exported and described nowhere
    an operator writing alerts would look."""
    healthy(cache, settings, root)
    client = app_for(settings, redis_client).test_client()
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name for f in text_string_to_metric_families(text)}
    table = (ALERTS.parent / "README.md").read_text()
    assert len(families) > 30
    # A counter's family is named without its _total, as the table names the sample.
    assert [f for f in sorted(families) if f"`{f}" not in table] == []


def test_one_overdue_judgement_across_page_warnings_metrics_and_alert(
    settings, redis_client, cache, root
):
    """The page turned red after 1.5 intervals, the warnings after 2, the alert after 3."""
    healthy(cache, settings, root)
    client = app_for(settings, redis_client).test_client()
    for late in (1.75, 2.5):
        now = time.time()
        last_cleanup(cache, now - 60, now - late * 3600)
        html = client.get("/").get_data(as_text=True)
        stats = client.get("/cache/stats").get_json()
        warned = any("no periodic cleanup" in w for w in stats["warnings"])
        assert ("overdue" in html) == warned == stats["periodic_overdue"] == (late > 2)
        assert metrics_of(client)["cachemgr_periodic_overdue"] == float(late > 2)
    rule = next(r for r in alert_rules() if r["alert"] == "CacheCleanupNotRunning")
    assert "cachemgr_periodic_overdue" in rule["expr"]


def test_a_node_no_beat_sends_cleanups_to_is_told_so_in_minutes_not_intervals(
    settings, redis_client, cache, root
):
    """No celery beat running: `start-scheduler` answered running and the stats said nothing
    until two cleanup intervals had gone by (two hours by default)."""
    from cachemgr.nodes import beat_alive

    cache.registry.publish(settings, now=time.time() - 120)  # its workers up for 2 minutes
    cache.registry.heartbeat(cache.keys)
    make_tree(root, "a")
    cache.register("a")
    client = app_for(settings, redis_client).test_client()
    stats = client.get("/cache/stats").get_json()
    assert (stats["beat_alive"], stats["beat_missing"], stats["periodic_overdue"]) == (
        False, True, False,
    )  # fmt: skip
    [said] = [w for w in stats["warnings"] if "celery beat" in w]
    assert said.startswith("no celery beat has said in 90 s that it sends this node's"), said
    assert metrics_of(client)["cachemgr_beat_up"] == 0.0
    beat_alive(redis_client, {cache.keys.prefix: 3600}, "beat-host:1")
    stats = client.get("/cache/stats").get_json()
    assert (stats["beat_alive"], stats["beat_missing"]) == (True, False)
    assert not any("celery beat" in w for w in stats["warnings"]), stats["warnings"]
    assert metrics_of(client)["cachemgr_beat_up"] == 1.0
    assert 0 < redis_client.ttl(cache.keys.beat) <= 90
    redis_client.delete(cache.keys.beat)  # that beat stopped
    assert client.get("/cache/stats").get_json()["beat_missing"] is True
    # A beat of a version that says nothing: its cleanups come, none ever said it is alive.
    redis_client.delete(cache.keys.beat_seen)
    now = time.time()
    last_cleanup(cache, now - 600, now - 600)
    assert client.get("/cache/stats").get_json()["beat_missing"] is False
    beat_alive(redis_client, {cache.keys.prefix: 3600}, "beat-host:1")
    redis_client.delete(cache.keys.beat)  # a beat that says so ran, and stopped: said
    assert client.get("/cache/stats").get_json()["beat_missing"] is True
    cache.set_scheduler(False)  # its cleanups are not due: nothing to say
    assert client.get("/cache/stats").get_json()["beat_missing"] is False


def test_a_beat_restarted_at_another_interval_is_judged_by_its_own_word(
    settings, redis_client, cache, root
):
    """Beat and workers restarted from 60 s to an hour: until the next periodic cleanup, the
    stats judged by the last one's 60 s: `no periodic cleanup for 620 s (interval 60 s)` and
    `celery beat sends the node's cleanups every 60 s`, both false, with beat alive."""
    from cachemgr.history import beat_interval
    from cachemgr.nodes import beat_alive

    healthy(cache, settings, root)
    now = time.time()
    last_cleanup(cache, now - 620, now - 620)
    cache.client.hset(cache.keys.last_cleanup, "beat_interval", "60")
    client = app_for(settings, redis_client).test_client()
    assert client.get("/cache/stats").get_json()["periodic_overdue"] is True  # by the 60 s
    beat_alive(redis_client, {cache.keys.prefix: 3600}, "beat-host:1")
    stats = client.get("/cache/stats").get_json()
    assert stats["periodic_overdue"] is False, stats["warnings"]
    assert not any("celery beat" in w for w in stats["warnings"]), stats["warnings"]
    assert metrics_of(client)["cachemgr_periodic_overdue"] == 0.0
    assert stats["beat_interval_seconds"] == 3600
    html = client.get("/").get_data(as_text=True)  # the page's "Every" and "Next" too
    assert 'data-cleanup="interval" data-value="3600"' in html and "overdue" not in html
    assert beat_interval(cache) == 3600  # the hold after a rebuild, by the live beat's too
    beat_alive(redis_client, {cache.keys.prefix: 1234567.0}, "beat-host:1")  # in full
    assert redis_client.get(cache.keys.beat) == "beat-host:1 1234567"


def test_a_fresh_node_is_not_told_beat_is_missing_before_one_interval(
    settings, redis_client, cache, root
):
    """Workers and beat just started: beat's first run comes one interval later. The warning
    fires at once; the alert waits 3 h (its `for:`)."""
    cache.registry.publish(settings)
    cache.registry.heartbeat(cache.keys)
    make_tree(root, "a")
    cache.register("a")
    stats = app_for(settings, redis_client).test_client().get("/cache/stats").get_json()
    assert not any("no periodic cleanup" in w for w in stats["warnings"]), stats["warnings"]


def test_starting_the_scheduler_again_does_not_blame_beat(settings, redis_client, cache, root):
    """Stopped for 2.5 intervals (beat's runs were skipped, not recorded), then started: the
    warning (and, past 3 intervals, the alert) blames beat at once, before beat's next run."""
    healthy(cache, settings, root)
    now = time.time()
    last_cleanup(cache, now - 60, now - 2.5 * 3600)
    client = app_for(settings, redis_client).test_client()
    cache.set_scheduler(False)
    assert not any("celery beat" in w for w in client.get("/cache/stats").get_json()["warnings"])
    cache.set_scheduler(True)
    warnings = client.get("/cache/stats").get_json()["warnings"]
    assert not any("celery beat" in w for w in warnings), warnings


# -- (a) quota ------------------------------------------------------------------------------
def test_evicting_warning_names_the_active_policy(settings, redis_client, root):
    s = settings.with_(disk_cache_eviction_policy="fifo")
    c = DiskCache(s, redis_client)
    c.registry.publish(s)
    c.registry.heartbeat(c.keys)
    for i in range(46):  # 376832 bytes: above the threshold (368640), under the quota
        make_tree(root, f"d{i:02d}")
        c.register(f"d{i:02d}")
    stats = app_for(s, redis_client).test_client().get("/cache/stats").get_json()
    assert stats["quota_status"] == "evicting"
    assert not any("least recently used" in w for w in stats["warnings"]), stats["warnings"]


def test_evicting_warning_does_not_promise_what_the_last_pass_could_not_do(
    settings, redis_client, cache, root
):
    from cachemgr.cleanup import cleanup

    healthy(cache, settings, root)
    for i in range(46):
        make_tree(root, f"d{i:02d}")
        cache.register(f"d{i:02d}")
        cache.pin(f"d{i:02d}", 600)
    cleanup(cache)  # evicts nothing: everything pinned (event eviction_short)
    client = app_for(settings, redis_client).test_client()
    stats = client.get("/cache/stats").get_json()
    assert stats["quota_status"] == "evicting"
    assert not any("the next cleanup evicts" in w for w in stats["warnings"]), stats["warnings"]


def test_eviction_short_event_keeps_its_reasons_in_the_api(settings, redis_client, cache, root):
    from cachemgr.cleanup import cleanup

    healthy(cache, settings, root)
    for i in range(46):
        make_tree(root, f"d{i:02d}")
        cache.register(f"d{i:02d}")
        cache.pin(f"d{i:02d}", 600)
    cleanup(cache)
    raw = event_log.latest(cache.store, 1)[0]
    assert raw["event"] == "eviction_short" and "pinned" in raw  # recorded in Redis
    client = app_for(settings, redis_client).test_client()
    ev = client.get("/cache/events?limit=1").get_json()["events"][0]
    assert ev["event"] == "eviction_short"
    # cleanup.py records why (usage_after, pinned, locked, young); the API's schema drops it.
    assert "pinned" in ev, ev


# -- (i) low free disk ----------------------------------------------------------------------
def test_low_free_disk_shows_outside_the_warnings(settings, redis_client, cache, root):
    healthy(cache, settings, root)
    disk = shutil.disk_usage(root)
    floor = disk.free + (disk.total - disk.free) // 2  # short, and under the whole disk
    cache.registry.publish(settings.with_(disk_cache_min_free_bytes=floor))  # a worker setting
    client = app_for(settings, redis_client).test_client()
    stats = client.get("/cache/stats").get_json()
    assert any("DISK_CACHE_MIN_FREE_BYTES" in w and "free" in w for w in stats["warnings"])
    m = metrics_of(client)
    problems = {
        "no cachemgr_min_free_bytes metric": "cachemgr_min_free_bytes" not in m,
        "no alert on free disk": not any("free_disk" in r["expr"] for r in alert_rules()),
        f"quota_status {stats['quota_status']!r} while evicting for space": stats["quota_status"]
        == "ok",
    }
    assert not any(problems.values()), problems


# -- (h) Redis answers with an error (cluster down, ACL, busy script) --------------------------
@pytest.mark.parametrize(
    "exc",
    [redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
     redis.exceptions.ResponseError("BUSY Redis is busy running a script"),
     redis.exceptions.ResponseError(
         "Error running script (call to f_0a1b): @user_script:12: @user_script: 12: -OOM "
         "command not allowed when used memory > 'maxmemory'."
     ),
     redis.exceptions.ResponseError(
         "Command # 1 (EVALSHA 0a1b 12 cache:entries) of pipeline caused error: MISCONF "
         "Redis is configured to save RDB snapshots, but it's currently unable to persist"
     )],
)  # fmt: skip
def test_redis_error_replies_are_redis_unavailable(settings, redis_client, monkeypatch, exc):
    import cachemgr.cluster
    import cachemgr.stats

    def boom(*a: Any, **k: Any) -> Any:
        raise exc

    client = app_for(settings, redis_client).test_client()
    monkeypatch.setattr(cachemgr.stats, "run", boom)
    monkeypatch.setattr(cachemgr.cluster, "run", boom)  # /cache/stats, /metrics and / read it
    r, s, p = client.get("/metrics"), client.get("/cache/stats"), client.get("/")
    seen = {
        "/metrics": (r.status_code, "cachemgr_up 0.0" in r.get_data(as_text=True)),
        "/cache/stats": (s.status_code, (s.get_json() or {}).get("code")),
        "/": (p.status_code, p.content_type.split(";")[0]),
    }
    assert seen == {
        "/metrics": (200, True),
        "/cache/stats": (503, "redis_unavailable"),
        "/": (503, "text/html"),
    }, seen


def test_the_apis_dry_run_plans_with_the_workers_quota_and_policy(
    settings, redis_client, cache, root
):
    """An API deployed without the workers' environment planned by its own quota and said a
    policy switch was pending on every dry run; the real cleanup, theirs, did otherwise."""
    from cachemgr.cleanup import cleanup
    from tests.conftest import published_workers

    theirs = published_workers(settings, redis_client, root)
    cleanup(theirs)
    api = settings.with_(disk_cache_max_bytes=5 * 4096, disk_cache_eviction_policy="lru")
    r = app_for(api, redis_client).test_client().post("/cache/cleanup?dry_run=true")
    assert r.status_code == 200, r.get_data(as_text=True)
    plan = r.get_json()["result"]
    assert plan["evict"]["count"] == 0 and plan["policy_switch_pending"] is False
    assert redis_client.get(theirs.keys.policy_name) == "s3fifo-a"


def test_another_nodes_overdue_beat_counts_from_its_workers_start(
    two_nodes, redis_client, prefix
):
    """Just started, with no periodic cleanup yet: not overdue, in the cluster's stats as in
    its own (?node=b). Read without the registry, the cluster counted from the epoch."""
    from cachemgr.keys import Keys

    redis_client.delete(Keys(f"{prefix}b:").last_cleanup)
    cluster = next(
        n for n in two_nodes.get("/cache/stats").get_json()["nodes"] if n["node"] == "b"
    )
    own = two_nodes.get("/cache/stats?node=b").get_json()
    assert cluster["periodic_overdue"] is own["periodic_overdue"] is False
    assert not any("no periodic cleanup" in w for w in cluster["warnings"])


def test_a_disk_nearly_full_or_smaller_than_the_quota_is_said_without_a_floor(
    settings, redis_client, cache, root, monkeypatch
):
    """A 20 MiB disk under a 50 MiB quota, no DISK_CACHE_MIN_FREE_BYTES: at 100% of the disk
    the stats said ok, warned of nothing, and no alert could fire."""
    import shutil

    import cachemgr.stats

    healthy(cache, settings, root)
    disk = settings.disk_cache_max_bytes // 2
    real = shutil.disk_usage
    free = [disk // 4]

    def small(path):
        real(path)
        return shutil._ntuple_diskusage(disk, disk - free[0], free[0])

    monkeypatch.setattr(cachemgr.stats.shutil, "disk_usage", small)
    stats = cache.stats()
    assert stats["disk_bytes"] == disk
    larger = [w for w in stats["warnings"] if "larger than the filesystem" in w]
    assert len(larger) == 1 and "DISK_CACHE_MAX_BYTES" in larger[0]
    assert not any("nearly full" in w for w in stats["warnings"])  # a quarter free
    free[0] = 0
    said = [w for w in cache.stats()["warnings"] if "nearly full" in w]
    assert len(said) == 1 and "DISK_CACHE_MIN_FREE_BYTES is not set" in said[0]
    floored = DiskCache(settings.with_(disk_cache_min_free_bytes=4096), redis_client)
    floored.registry.publish(floored.settings)  # the workers run with a floor
    warnings = floored.stats()["warnings"]  # the floor's own warning says it instead
    assert not any("nearly full" in w for w in warnings)
    assert not any("larger than the filesystem" in w for w in warnings)  # advice followed
    assert any("under DISK_CACHE_MIN_FREE_BYTES" in w for w in warnings)
    client = app_for(settings, redis_client).test_client()
    assert client.get("/cache/stats").get_json()["disk_bytes"] == disk


def test_a_worker_whose_clock_is_off_is_said(
    settings, redis_client, cache, root, monkeypatch, caplog
):
    """Every time on the books is the clock of the process that wrote it: a worker an hour
    ahead expired directories early, and nothing said so."""
    import types

    from cachemgr import clock, nodes

    now = time.time()
    behind = types.SimpleNamespace(time=lambda: (int(now - 3600), 0))
    assert 3590 < clock.clock_skew(behind) < 3610  # this host an hour ahead of that Redis

    def broken():
        raise redis.ResponseError("unknown command 'TIME'")

    assert clock.clock_skew(types.SimpleNamespace(time=broken)) == 0.0  # never a failed beat
    healthy(cache, settings, root)
    cache.registry.heartbeat(cache.keys, "host-a:1", settings=cache.settings)
    assert not any("clock" in w for w in cache.stats()["warnings"])
    real = time.time
    with monkeypatch.context() as ahead:  # that worker's host an hour ahead
        for module in (clock, nodes):
            ahead.setattr(module, "time", types.SimpleNamespace(time=lambda: real() + 3600))
        cache.registry.heartbeat(cache.keys, "host-b:2", settings=cache.settings)
    # Its beat is dated by Redis's clock: alive, not an hour in the future (nor, behind,
    # an hour dead, its skew unsaid).
    beat = redis_client.zscore(cache.keys.workers, "host-b:2")
    assert abs(beat - time.time()) < 5
    said = [w for w in cache.stats()["warnings"] if "clock" in w]
    assert len(said) == 1 and "worker host-b:2 is 3600 s ahead of Redis's" in said[0]
    assert "worker host-b:2 is 3600 s ahead" in caplog.text  # the worker's log says it too
    with monkeypatch.context() as behind:
        for module in (clock, nodes):
            behind.setattr(module, "time", types.SimpleNamespace(time=lambda: real() - 3600))
        cache.registry.heartbeat(cache.keys, "host-c:3", settings=cache.settings)
    assert "host-c:3" in cache.registry.live_workers(cache.keys)
    assert any("host-c:3 is 3600 s behind" in w for w in cache.stats()["warnings"])


def test_a_stopped_workers_settings_do_not_stand_for_the_node(settings, redis_client, root):
    """A worker started with a TTL of 60 s and stopped again: its published settings stood,
    and `cleanup --now` (which acts by the workers' settings) expired by them directories the
    live worker keeps for an hour."""
    from workers import app as worker_app

    live = DiskCache(settings.with_(disk_cache_ttl_seconds=3600), redis_client)
    gone = DiskCache(settings.with_(disk_cache_ttl_seconds=60), redis_client)
    live.publish_config(worker=worker_app.WORKER)
    assert worker_app._beat_once(live, announced=True)
    gone.publish_config(worker="other-host:4242")  # started later, then stopped: no beat
    theirs, _ = live.acting()
    assert theirs.settings.disk_cache_ttl_seconds == 60  # what stood until now
    assert worker_app._beat_once(live, announced=True)  # the live worker's next beat
    assert redis_client.hget(live.keys.config, "ttl_seconds") == "3600"
    theirs, _ = live.acting()
    assert theirs.settings.disk_cache_ttl_seconds == 3600
    redis_client.hdel(live.keys.config, "worker")  # an older version's config names none
    assert worker_app._beat_once(live, announced=True)
    assert redis_client.hget(live.keys.config, "worker") == worker_app.WORKER
    live.registry.heartbeat(gone.keys, "other-host:4242", settings=gone.settings)  # alive now
    gone.publish_config(worker="other-host:4242")
    assert worker_app._beat_once(live, announced=True)
    assert redis_client.hget(live.keys.config, "ttl_seconds") == "60"  # its publisher lives


def test_a_killed_workers_entries_go_after_two_ttls(settings, redis_client, cache):
    """A worker killed with -9 never says it leaves: its entry in cache:workers and its
    settings stayed for good, a field more at every restart."""
    from cachemgr.nodes import ALIVE_TTL_SECONDS

    long_ago = time.time() - 3 * ALIVE_TTL_SECONDS
    redis_client.zadd(cache.keys.workers, {"host:999": long_ago})
    redis_client.hset(cache.keys.worker_settings, "host:999", "{}")
    cache.registry.heartbeat(cache.keys, "host:1", settings=cache.settings)
    assert redis_client.zrange(cache.keys.workers, 0, -1) == ["host:1"]
    assert redis_client.hkeys(cache.keys.worker_settings) == ["host:1"]


def test_a_redis_url_naming_a_database_the_server_lacks_is_said_in_one_line(
    settings, redis_client, tmp_path
):
    """`redis://host/99` on a server of 16 databases: the CLI printed a traceback and the
    API's stats answered 500 "internal_error"; every command of such a URL fails."""
    from cachemgr import connect
    from tests.conftest import REDIS_URL
    from tests.test_settings import _run

    databases = int(redis_client.config_get("databases")["databases"])
    url = f"{REDIS_URL.rsplit('/', 1)[0]}/{databases}"  # one past the last
    code, err = _run(
        ["-m", "api.cli", "stats"], {"REDIS_URL": url, "DISK_CACHE_ROOT": str(tmp_path)}
    )
    assert code == 5 and "Traceback" not in err, err
    assert err.splitlines() == [err] and "REDIS_URL names a database" in err
    client = connect(url)
    try:
        reply = app_for(settings, client).test_client().get("/cache/stats")
    finally:
        client.close()
    assert reply.status_code == 503
    assert reply.get_json()["code"] == "redis_unavailable"
    assert "REDIS_URL names a database" in reply.get_json()["message"]


def test_a_redis_clock_keeps_its_last_skew_while_time_cannot_be_read(caplog):
    """A failover (or an ACL without TIME) made RedisClock fall back to this host's clock
    for 10 s: on a host two hours off, a lease granted then had already run out."""
    import types

    from cachemgr.clock import RedisClock

    replies: list[Any] = [(int(time.time() - 7200), 0)]  # this host two hours ahead

    def answer() -> Any:
        reply = replies[-1]
        if isinstance(reply, Exception):
            raise reply
        return reply

    clock = RedisClock(types.SimpleNamespace(time=answer), every=0.0)
    assert abs(clock() - (time.time() - 7200)) < 2
    replies.append(redis.ConnectionError("Redis is failing over"))
    assert abs(clock() - (time.time() - 7200)) < 2  # the last skew stands
    # Unreachable, said by the call that follows (a CLI's one-line error was two lines).
    assert "Redis's clock cannot be read" not in caplog.text
    clock = RedisClock(types.SimpleNamespace(time=answer), every=0.0)
    replies.append(redis.exceptions.NoPermissionError("this user has no permissions to run"))
    clock()
    assert caplog.text.count("Redis's clock cannot be read") == 1  # refused: said
    clock()
    assert caplog.text.count("Redis's clock cannot be read") == 1  # said once


def test_a_time_reply_held_up_by_a_pause_of_redis_is_no_measure_of_the_clocks(caplog):
    """Redis paused 20 s (SIGSTOP, a fork on a big dataset): the TIME reply that came after it
    read as 8 s of skew on a host with Redis's own clock; the worker warned to set up NTP and
    dated plays, leases and the expiry's cutoff 8 s off for the next 10 s. It is read again
    (here a pause of 0.8 s, which read as 0.4 s). Not taken as no skew either: a heartbeat
    of a host an hour ahead, dated by its own clock, pruned every other live worker."""
    import types

    from cachemgr import clock as clocks
    from cachemgr.clock import RedisClock

    pauses: list[float] = []

    def redis_time(offset: float) -> types.SimpleNamespace:
        def answer() -> tuple[int, int]:
            at = time.time() - offset  # Redis's clock: this host's less `offset`
            time.sleep(pauses.pop() if pauses else 0.0)  # a reply held up that long
            return int(at), int(at % 1 * 1e6)

        return types.SimpleNamespace(time=answer)

    clock = RedisClock(redis_time(0.0), every=0.0)
    assert abs(clock() - time.time()) < 0.1  # no skew
    pauses.append(0.8)
    assert abs(clock() - time.time()) < 0.1  # the held-up reply is not taken
    pauses.append(0.8)
    assert abs(clocks.clock_skew(redis_time(0.0))) < 0.1
    pauses.append(0.8)
    assert abs(clocks.clock_skew(redis_time(3600.0)) - 3600) < 0.1  # nor taken as none
    pauses.extend([0.8, 0.8, 0.8])  # held up each time it is read: the last stands
    assert 0.3 < clocks.measured_skew(redis_time(0.0)) < 0.5
    assert "cannot be read" not in caplog.text  # TIME answered: nothing to say
    calls: list[str] = []

    def held_up_then_failing_over() -> tuple[int, int]:
        calls.append("TIME")
        if len(calls) > 1:
            raise redis.ConnectionError("failing over")
        at = time.time()
        time.sleep(0.8)
        return int(at), int(at % 1 * 1e6)

    # The held-up reading is no measure, the next failed: none (not 0.4 s taken as one).
    assert clocks.measured_skew(types.SimpleNamespace(time=held_up_then_failing_over)) is None


def test_a_rolling_restart_that_turns_management_off_is_not_off_while_a_worker_manages(
    settings, redis_client, cache, root
):
    """One worker on, one just started with ENABLE_DISK_CACHE_MANAGEMENT=false and published
    last: the stats said "nothing is registered, cleaned or evicted", /readyz answered 503,
    and the CLI's pin refused, while half the registrations went through."""
    from cachemgr.switch import disabled_where

    off = settings.with_(enable_disk_cache_management=False)
    cache.registry.heartbeat(cache.keys, "host-a:1", settings=settings)
    cache.registry.heartbeat(cache.keys, "host-b:2", settings=off)
    DiskCache(off, redis_client).registry.publish(off)  # the last to publish
    stats = cache.stats()
    assert stats["enabled"] is True
    assert not any("ENABLE_DISK_CACHE_MANAGEMENT is false" in w for w in stats["warnings"])
    assert any("live workers run different settings" in w for w in stats["warnings"])
    assert disabled_where(cache) is None
    make_tree(root, "a")
    assert cache.acting()[0].pin("a", 60)["pinned_until"] is not None
    cache.registry.mark_down(cache.keys, "host-a:1")  # the last one on stops: off now
    assert disabled_where(cache) == "on the node's workers"
    assert cache.stats()["enabled"] is False


def test_a_refusing_redis_or_broker_is_said_without_lua_internals_nor_unreachable():
    """Under OOM, `cachemgr pin` printed the script's SHA and Lua line, and a broker out of
    memory was "cannot be reached" though it answered."""
    from kombu.exceptions import OperationalError

    from api.errors import broker_said, redis_said

    oom = redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'. script: "
        + "7969fb25d52abd3fe92edd9a18c6cfb03301c405, on @user_script:63."
    )
    assert redis_said(oom) == (
        "Redis refuses it now: command not allowed when used memory > 'maxmemory'."
    )
    assert redis_said(redis.ConnectionError("Connection refused")).startswith(
        "Redis cannot be reached"
    )
    assert redis_said(redis.BusyLoadingError("loading")).startswith("Redis refuses it now")
    full = OperationalError(
        "Command # 1 (LLEN celery) of pipeline caused error: command not allowed when used "
        "memory > 'maxmemory'."
    )
    assert broker_said(full).startswith("the Celery broker refuses it now: ")
    assert broker_said(OperationalError("Error 111 connecting")).startswith(
        "the Celery broker cannot be reached"
    )


def test_a_process_whose_root_is_not_the_workers_says_so_beside_not_mounted(
    settings, redis_client, cache, root, tmp_path
):
    """`cachemgr stats` in a shell with no DISK_CACHE_ROOT warned "cache not working: the
    cache root './downloads' is not a directory (is the disk mounted?)" while the workers
    evicted on theirs, and nothing said that their root was another. (Every check is still
    made on this process's root: a container may mount the same disk elsewhere.)"""
    make_tree(root, "a")
    cache.register("a")
    cache.registry.publish(settings)  # the workers, on `root`
    shell = DiskCache(settings.with_(disk_cache_root=str(tmp_path / "cwd-downloads")), redis_client)
    warnings = shell.stats()["warnings"]
    said = [w for w in warnings if "is the disk mounted" in w]
    assert said and said[0].endswith(
        f"(or this process's DISK_CACHE_ROOT is not the workers': they use {str(root)!r})"
    ), warnings
    assert not any("DISK_CACHE_ROOT" in w for w in cache.stats()["warnings"])  # the workers'


def test_workers_of_other_books_on_this_host_are_not_taken_for_this_nodes(
    settings, redis_client, root, tmp_path
):
    """Unnamed nodes are named after the host: workers of another key prefix publish under
    that same name, and their root (and settings) were taken for this node's, which hid this
    one's missing root ("not mounted") behind "the roots differ"."""
    from cachemgr.health import readiness

    other = settings.with_(
        disk_cache_key_prefix=f"{settings.disk_cache_key_prefix}other:",
        disk_cache_root=str(tmp_path),
        disk_cache_max_bytes=10**12,
    )
    DiskCache(other, redis_client).registry.publish(other)  # the other books' workers
    missing = DiskCache(settings.with_(disk_cache_root=str(root / "gone")), redis_client)
    stats = missing.stats()
    assert any("is the disk mounted" in w for w in stats["warnings"]), stats["warnings"]
    assert not any("DISK_CACHE_ROOT" in w for w in stats["warnings"])
    assert stats["max_bytes"] == settings.disk_cache_max_bytes  # not the other books' quota
    assert "does not exist" in readiness(missing)["root"]


def test_a_root_set_alike_is_the_workers_though_it_resolves_elsewhere_unmounted(
    settings, redis_client, tmp_path
):
    """DISK_CACHE_ROOT=/mnt/disk/current, a symlink on the disk: mounted, the workers publish
    where it leads; unmounted, it resolves to itself, and "the roots differ" hid "not
    mounted"."""
    disk = tmp_path / "disk"
    (disk / "releases" / "v2").mkdir(parents=True)
    (disk / "current").symlink_to(disk / "releases" / "v2")
    alike = settings.with_(disk_cache_root=str(disk / "current"))
    DiskCache(alike, redis_client).registry.publish(alike)  # the workers, mounted
    (disk / "current").unlink()  # the disk gone, the symlink on it with it
    (disk / "releases" / "v2").rmdir()
    stats = DiskCache(alike, redis_client).stats()
    assert any("is the disk mounted" in w for w in stats["warnings"]), stats["warnings"]
    assert not any("DISK_CACHE_ROOT" in w for w in stats["warnings"])


class _InfoOnly:
    """A Redis client whose INFO memory reads as given."""

    def __init__(self, memory: dict | None = None) -> None:
        self.memory = memory

    def info(self, section: str) -> dict:
        if self.memory is None:
            raise redis.ResponseError("NOPERM this user has no permissions to run 'info'")
        return self.memory


def test_redis_memory_settings_that_put_the_books_at_risk_are_said():
    """A maxmemory-policy that evicts keys took the books' keys in silence; a Redis at its
    maxmemory under noeviction refused every registration and play, and the stats said
    nothing."""
    from cachemgr.health import redis_memory

    evicting = {"maxmemory": 10**9, "used_memory": 10**6, "maxmemory_policy": "allkeys-lru"}
    said = redis_memory(_InfoOnly(evicting))
    assert said and "maxmemory-policy allkeys-lru" in said and "noeviction" in said
    full = {"maxmemory": 10**9, "used_memory": 95 * 10**7, "maxmemory_policy": "noeviction"}
    assert "(95%): once full it refuses every write" in redis_memory(_InfoOnly(full))
    assert redis_memory(_InfoOnly({**full, "used_memory": 10**6})) is None
    over = redis_memory(_InfoOnly({**full, "used_memory": 2 * 10**9}))
    assert over and "(200%): it refuses every write" in over  # full already, not "once full"
    assert redis_memory(_InfoOnly({"maxmemory": 0, "maxmemory_policy": "allkeys-lru"})) is None
    assert redis_memory(_InfoOnly(None)) is None  # INFO refused: nothing to say


def test_the_stats_say_a_redis_that_evicts_keys(cache, monkeypatch):
    from cachemgr import health

    said = "Redis evicts keys when it reaches its maxmemory"
    monkeypatch.setattr(health, "redis_memory", lambda client: said)
    assert said in cache.stats()["warnings"]
    monkeypatch.setattr(health, "redis_memory", lambda client: None)
    assert said in cache.stats()["warnings"]  # read again only after MEMORY_SECONDS


def test_a_hold_ending_within_the_second_is_not_said_as_zero_seconds():
    """After a Redis restart the stats said "eviction is held for 0 s more"."""
    from cachemgr.health import diagnose

    stats = {"quota_status": "ok", "total_bytes": 0, "threshold_bytes": 9, "max_bytes": 10,
             "usage_percent": 0.0, "evict_held_until": 1000.4}  # fmt: skip
    said = [p for p in diagnose(stats, 3600, now=1000.0) if "eviction is held" in p]
    assert len(said) == 1 and said[0].startswith("eviction is held for 1 s more"), said
