"""The status page at `/`: through Flask's client, and in a real headless Chromium.

The browser tests serve the app with werkzeug on 127.0.0.1 and let Debian's chromium load it,
dump the DOM after the page's script ran, and take screenshots (desktop and phone). They are
skipped only when chromium is absent; scripts/ensure-debian.sh installs it.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from api.status import chart, human_bytes, human_count, percent
from cachemgr import DiskCache, Settings
from cachemgr.cleanup import cleanup
from cachemgr.history import interval_ratios
from cachemgr.records import iso
from tests.conftest import BROKER_URL, make_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: run scripts/ensure-debian.sh chromium chromium",
)
FLOWER = "http://flower.example.invalid:5555/"


class Page(HTMLParser):
    """What the tests read off the page: data-stat values and texts, links, assets, rows."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stats: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.links: list[str] = []
        self.assets: list[str] = []
        self.classes: list[str] = []
        self.times: list[tuple[str, str]] = []  # (datetime, title) of each <time>
        self.cleanup: dict[str, str] = {}  # data-cleanup -> data-value (the Scheduler card)
        self.warnings: list[str] = []  # the text of each element marked data-warning
        # (tag, data-stat, index in self.warnings or -1) of open elements
        self._open: list[tuple[str, str, int]] = []
        self.text = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-stat" in a:
            self.stats[a["data-stat"]] = a.get("data-value", "")
            self.texts[a["data-stat"]] = ""
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("script", "img", "iframe") and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("href"):
            self.assets.append(a["href"])
        self.classes.extend(a.get("class", "").split())
        if tag == "time":
            self.times.append((a.get("datetime", ""), a.get("title", "")))
        if "data-cleanup" in a:
            self.cleanup[a["data-cleanup"]] = a.get("data-value", "")
        warning = -1
        if "data-warning" in a:
            warning = len(self.warnings)
            self.warnings.append("")
        self._open.append((tag, a.get("data-stat", ""), warning))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text += data
        for _, stat, warning in self._open:
            if stat:
                self.texts[stat] += data
            if warning >= 0:
                self.warnings[warning] += data


def busy(cache: DiskCache, root: Path, rounds: int = 12) -> None:
    """History with a changing hit ratio, evictions, an expiry, a removal and a pin."""
    for i in range(20):
        make_tree(root, f"artist{i % 4}/album{i:02d}", files=1 + i % 5)
        cache.register(f"artist{i % 4}/album{i:02d}")
    cache.pin("artist0/album00", 3600)
    for r in range(rounds):
        for _ in range(3 + (r * 7) % 9):
            cache.access("artist1/album01")
        for j in range(1 + (r * 5) % 6):
            cache.access(f"gone/{r}-{j}", miss_bytes=4096)
        cleanup(cache)
    for i in range(20, 24):
        make_tree(root, f"big/album{i:02d}", files=8)
        cache.register(f"big/album{i:02d}")
    cleanup(cache)  # over the threshold now: evictions
    cache.remove("artist3/album19", remove_files=True)


def stats_of(client: Any) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/cache/stats").get_json()
    return data


def check_numbers(page: Page, stats: dict[str, Any]) -> None:
    """Every figure on the page is the one /cache/stats gives, exactly and as written."""
    exact = ("total_bytes", "max_bytes", "threshold_bytes", "target_bytes", "directory_count",
             "pinned_count", "hits", "misses", "evictions", "expirations", "removals",
             "bytes_freed", "hit_bytes", "missed_bytes", "skipped_locked", "skipped_pinned",
             "usage_percent", "hit_ratio", "byte_hit_ratio")  # fmt: skip
    for field in exact:
        assert field in page.stats, field
        assert float(page.stats[field]) == stats[field], field
    assert page.stats["quota_status"] == stats["quota_status"]
    assert page.stats["scheduler_running"] == str(stats["scheduler_running"]).lower()
    assert page.stats["node"] == stats["node"]
    for field in ("total_bytes", "max_bytes", "threshold_bytes", "target_bytes", "bytes_freed"):
        assert page.texts[field].strip() == human_bytes(stats[field]), field
    for field in ("directory_count", "hits", "misses", "evictions", "expirations", "removals"):
        assert page.texts[field].strip() == human_count(stats[field]), field
    assert page.texts["hit_ratio"].strip() == percent(stats["hit_ratio"])
    assert page.texts["usage_percent"].strip() == f"{stats['usage_percent']} %"


# -- through Flask's client -----------------------------------------------------------------
def test_page_shows_what_cache_stats_shows(app, client, cache, root):
    app.config["FLOWER_URL"] = FLOWER
    busy(cache, root)
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = Page(r.get_data(as_text=True))
    stats = stats_of(client)
    check_numbers(page, stats)
    assert stats["evictions"] > 0 and stats["removals"] > 0
    assert FLOWER in page.links and "/docs" in page.links and "/metrics" in page.links
    assert "Largest directories" in page.text and "big/album23" in page.text
    assert "artist3/album19" in page.text  # the removal, in the events list
    assert "ev-evicted" in page.classes and "line" in page.classes  # events and a chart
    for asset in page.assets:  # nothing from another host: no CDN
        if asset.startswith("data:"):
            continue  # inline, fetched from nowhere
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert client.get(asset).status_code == 200, asset


def test_names_off_the_disk_are_shown_escaped_on_the_page(client, cache, root):
    """A name with <script>, a newline or a bidirectional override (U+202E showed
    "song\u202egnp.exe" as "songexe.png") is shown as text, its controls as escapes."""
    for name in ("<script>alert(1)</script>", "new\nline", "song\u202egnp.exe"):
        make_tree(root, name)
        cache.register(name)
    html = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "new\\nline" in html and "new\nline" not in html
    assert "song\\u202egnp.exe" in html and "\u202e" not in html
    assert "<bdi>" in html
    # In a warning that names one too (a directory it could not delete).
    cache.client.hset(cache.keys.last_cleanup, mapping={
        "delete_failed": 1, "delete_failed_example": "song\u202egnp.exe"})  # fmt: skip
    html = client.get("/").get_data(as_text=True)
    assert "could not delete" in html and "\u202e" not in html


def test_an_empty_cache_renders_with_empty_states(client):
    r = client.get("/")
    assert r.status_code == 200
    page = Page(r.get_data(as_text=True))
    assert page.stats["total_bytes"] == "0" and page.stats["hit_ratio"] == ""
    assert "Nothing tracked yet." in page.text and "No samples yet" in page.text
    assert page.texts["hit_ratio"].strip() == "–"


def test_a_failed_cleanup_and_a_stopped_scheduler_show(client, cache):
    cache.set_scheduler(False)
    cache.client.hset(
        cache.keys.last_cleanup,
        mapping={"time": "1800000000.000", "status": "failed", "duration_seconds": "0.250",
                 "error": "OSError: disk gone"},
    )  # fmt: skip
    page = Page(client.get("/").get_data(as_text=True))
    assert page.stats["scheduler_running"] == "false"
    assert "Stopped" in page.text and "OSError: disk gone" in page.text
    assert "not while stopped" in page.text and "st-failed" in page.classes
    # Past the threshold, nothing evicts by itself while stopped: the badge does not say so.
    cache.client.set(cache.keys.bytes, cache.settings.threshold_bytes + 1)
    page = Page(client.get("/").get_data(as_text=True))
    assert page.stats["quota_status"] == "evicting"  # the API's word, as /cache/stats says
    assert "Over threshold" in page.text and "Evicting" not in page.text


def app_without_worker(settings: Settings, redis_client: Any) -> Any:
    """An API with no worker of its own: the node is down unless a test says otherwise, and
    the registry holds only what a test publishes there."""
    from api import create_app

    return create_app(
        {"TESTING": True, "CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": redis_client,
         "CELERY_BROKER_URL": BROKER_URL}
    )  # fmt: skip


def last_cleanup(cache: DiskCache, at: float, periodic_at: float | None) -> None:
    """What cleanup.py records: `time` of any cleanup, `periodic_time` of beat's last one."""
    mapping = {"time": f"{at:.3f}", "status": "done", "duration_seconds": "0.100"}
    if periodic_at is not None:
        mapping["periodic_time"] = f"{periodic_at:.3f}"
    cache.client.hset(cache.keys.last_cleanup, mapping=mapping)


def test_page_goes_by_the_interval_and_ttl_the_workers_enforce(settings, redis_client, cache, root):
    """This API's environment says 1 h and 1 d; the node's workers run every 10 min with a 2 h
    TTL: the page shows theirs, as /cache/stats does."""
    assert (settings.disk_cache_cleanup_interval, settings.disk_cache_ttl_seconds) == (3600, 86400)
    cache.registry.publish(
        settings.with_(disk_cache_cleanup_interval=600, disk_cache_ttl_seconds=7200)
    )
    make_tree(root, "a")
    cache.register("a")
    now = time.time()
    last_cleanup(cache, now - 60, now - 60)
    client = app_without_worker(settings, redis_client).test_client()
    page = Page(client.get("/").get_data(as_text=True))
    assert stats_of(client)["ttl_seconds"] == 7200
    assert page.cleanup["interval"] == "600"
    assert float(page.cleanup["next"]) == round(now - 60, 3) + 600
    assert "TTL 2h" in page.text and "Every10m" in page.text.replace(" ", "")
    last_access = cache.store.expired(math.inf, 1)[0].last_access
    expires = iso(last_access + 7200)
    assert (expires, expires) in page.times  # the stalest table's "Expires" column


def test_next_cleanup_follows_beats_periodic_run_not_the_last_automatic_pass(
    settings, redis_client, cache
):
    """Beat's last run 2.5 h ago, a quota pass a registration triggered 1 min ago: with a 1 h
    interval the periodic cleanup is overdue (two intervals: the stats' own judgement), not
    due in 59 min."""
    make_tree(cache.root, "a")
    cache.register("a")
    now = time.time()
    last_cleanup(cache, now - 60, now - 9000)
    page = Page(app_without_worker(settings, redis_client).test_client().get("/").text)
    assert float(page.cleanup["next"]) == round(now - 9000, 3) + 3600
    assert float(page.cleanup["periodic"]) == round(now - 9000, 3)
    assert "late" in page.classes and "overdue" in page.text
    assert "in 58m" not in page.text and "in 59m" not in page.text


def test_page_shows_the_node_down_and_every_warning(
    settings, redis_client, cache, root, roomy_disk
):
    make_tree(root, "a")
    cache.register("a")
    client = app_without_worker(settings, redis_client).test_client()
    stats = stats_of(client)
    assert stats["up"] is False and len(stats["warnings"]) >= 2  # no worker, no periodic run
    page = Page(client.get("/").get_data(as_text=True))
    assert page.stats["up"] == "false" and "down" in page.texts["up"].lower()
    assert [w.strip() for w in page.warnings] == stats["warnings"]
    # A worker beats and beat has run: the node is up and nothing is listed.
    cache.registry.heartbeat(cache.keys)
    now = time.time()
    last_cleanup(cache, now - 60, now - 60)
    stats = stats_of(client)
    assert stats["up"] is True and stats["warnings"] == []
    page = Page(client.get("/").get_data(as_text=True))
    assert page.stats["up"] == "true" and "down" not in page.texts["up"].lower()
    assert page.warnings == []


def test_hit_ratio_per_interval_skips_resets_and_idle_intervals():
    samples = [
        {"hits": 0, "misses": 0},
        {"hits": 9, "misses": 1},  # 0.9
        {"hits": 9, "misses": 1},  # idle: no point
        {"hits": 10, "misses": 4},  # 0.25
        {"hits": 2, "misses": 0},  # counters went back (Redis lost them): no point
    ]
    assert interval_ratios(samples) == [0.9, None, 0.25, None]
    c = chart([1.0, 2.0, 3.0, 4.0], [0.9, None, 0.25, None], lo=0, hi=1, label=percent)
    assert len(c.segments) == 2 and len(c.points) == 2  # a gap, not a line through nothing
    assert c.points[0]["y"] < c.points[1]["y"]  # SVG y grows downwards: 90 % is higher


# -- in a real browser ----------------------------------------------------------------------
@pytest.fixture
def server(app) -> Iterator[str]:
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
        # Anything but the test server fails to resolve: the page must need no outside host.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@needs_chromium
def test_page_in_chromium_shows_the_stats_and_is_screenshotted(
    app, server, client, cache, root, tmp_path
):
    app.config["FLOWER_URL"] = FLOWER
    busy(cache, root)
    stats = stats_of(client)
    dom = chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", f"{server}/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    check_numbers(page, stats)
    assert FLOWER in page.links and "/docs" in page.links
    # status.js ran: the server titles each <time> with its ISO form, the script with the
    # browser's local form.
    assert page.times and all(title and title != stamp for stamp, title in page.times)

    shots = {"desktop": (1280, 1400), "phone": (390, 1800)}
    for name, (w, h) in shots.items():
        shot = tmp_path / f"status-{name}.png"
        done = chromium(tmp_path, f"--screenshot={shot}", f"--window-size={w},{h}", f"{server}/")
        assert done.returncode == 0, done.stderr[-2000:]
        assert png_size(shot) == (w, h)
        assert shot.stat().st_size > 10_000  # a drawn page, not an empty canvas


def test_redis_down_is_a_503_page_that_says_so(settings):
    from api import create_app
    from cachemgr import connect

    app = create_app(
        {"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": connect("redis://127.0.0.1:1/0"),
         "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    )  # fmt: skip
    r = app.test_client().get("/")
    assert r.status_code == 503 and r.mimetype == "text/html"
    assert "Redis unreachable" in r.get_data(as_text=True)


def test_durations_on_the_page_keep_their_seconds():
    from api.humanize import human_duration

    assert human_duration(90) == "1m 30s"  # a 90 s TTL showed as "1m"
    assert human_duration(3600) == "1h" and human_duration(86400 + 3661) == "1d 1h"
    assert human_duration(12.5) == "12.5 s" and human_duration(0.25) == "250 ms"


def test_the_page_shows_the_node_the_query_names(client, settings, redis_client, cache, root):
    """Every endpoint takes `?node=`; the page ignored it and showed its own node."""
    from cachemgr.nodes import NodeRegistry

    far = settings.with_(disk_cache_node="far", disk_cache_root=str(root))
    NodeRegistry(redis_client, settings.disk_cache_cluster).publish(far, queue="far-queue")
    page = client.get("/?node=far")
    assert page.status_code == 200, page.data[:300]
    assert 'data-stat="node" data-value="far"' in page.get_data(as_text=True)
    # Its links to the figures name it too: they opened this API's own node's.
    html = page.get_data(as_text=True)
    assert 'href="/cache/stats?node=far"' in html and 'href="/metrics?node=far"' in html
    assert 'href="/cache/stats"' in client.get("/").get_data(as_text=True)
    missing = client.get("/?node=nosuch")
    assert missing.status_code == 404 and "nosuch" in missing.get_json()["message"]
    bad = client.get("/?node=a b")
    assert bad.status_code == 400 and bad.get_json()["code"] == "bad_parameter"
    assert client.get("/?nod=far").status_code == 400  # a misspelt argument is no default


def test_the_probes_and_metrics_take_node_and_refuse_what_they_do_not_take(
    client, settings, redis_client, cache
):
    """/readyz answered for the API's own node whatever `?node=` said (200 for a node nobody
    published, 200 for one whose cleanups were refused), and /healthz, /readyz and /metrics
    took any argument, where README says an unknown one is a 400 that names it."""
    from cachemgr import DiskCache, history
    from cachemgr.nodes import NodeRegistry

    far = settings.with_(
        disk_cache_node="far",
        disk_cache_root="/nonexistent/far",
        disk_cache_key_prefix=f"{settings.disk_cache_key_prefix}far:",  # books of its own
    )
    NodeRegistry(redis_client, settings.disk_cache_cluster).publish(far, queue="far-queue")
    ready = client.get("/readyz?node=far")  # its root is on its own host: not looked at here
    assert ready.status_code == 200 and ready.get_json()["checks"]["root"] == "ok", ready.data
    at = cache.clock()
    refused = {"status": "failed", "error": "RootMissing: x", "error_code": "root_missing"}
    history.record(DiskCache(far, redis_client), at, refused, periodic=True)
    ready = client.get("/readyz?node=far")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["root"].startswith("the workers' last cleanup was refused")
    own = client.get("/readyz")
    assert own.status_code == 200, own.get_json()  # the API's own node is fine
    assert client.get("/readyz?node=nosuch").status_code == 404
    for url in ("/healthz?foo=1", "/readyz?foo=1", "/metrics?foo=1", "/metrics?node=a b"):
        r = client.get(url)
        assert r.status_code == 400 and r.get_json()["code"] == "bad_parameter", url
    assert "foo" in client.get("/healthz?foo=1").get_json()["message"]


def test_routes_outside_the_blueprint_parse_their_arguments_with_one_schema_each(client):
    """A schema made per request kept its defaults under its id; freed, it gave that id to
    the next (`KeyError: 'node'`, a 500 now and then from /readyz and /metrics), and the
    cache grew by one each request."""
    from api.arguments import CacheBlueprint

    cached = CacheBlueprint.ARGUMENTS_PARSER._defaults
    before = len(cached)
    codes = {client.get(url).status_code for _ in range(100) for url in ("/healthz", "/metrics")}
    assert codes == {200} and len(cached) <= before + 2


def test_next_cleanup_goes_by_beats_own_interval(settings, redis_client, cache, root):
    """Beat at 600 s, the workers at 3600: the next periodic run is beat's, as the stats'
    overdue check now judges it (the page had shown it an hour after the last)."""
    make_tree(root, "a")
    cache.register("a")
    now = time.time()
    last_cleanup(cache, now - 60, now - 60)
    cache.client.hset(cache.keys.last_cleanup, "beat_interval", "600")
    page = Page(app_without_worker(settings, redis_client).test_client().get("/").text)
    assert page.cleanup["interval"] == "600"
    assert float(page.cleanup["next"]) == round(now - 60, 3) + 600
