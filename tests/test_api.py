"""Every endpoint and every error, through Flask's test client, a real Redis and worker."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.conftest import make_tree

UNIT = 5 * 4096


def registered(cache, root, *names, files=4):
    for name in names:
        make_tree(root, name, files=files)
        cache.register(name)


def test_stats_fields(client, cache, root):
    registered(cache, root, "a")
    data = client.get("/cache/stats").get_json()
    for field in (
        "total_bytes", "directory_count", "max_bytes", "usage_percent", "quota_status", "hits",
        "misses", "evictions", "expirations", "bytes_freed", "scheduler_running",
    ):  # fmt: skip
        assert field in data, field
    assert data["total_bytes"] == UNIT and data["quota_status"] == "ok"


def test_quota_status_evicting_and_over_quota(client, cache):
    cache.client.set(cache.keys.bytes, cache.settings.threshold_bytes + 1)
    assert client.get("/cache/stats").get_json()["quota_status"] == "evicting"
    cache.client.set(cache.keys.bytes, cache.settings.disk_cache_max_bytes + 1)
    assert client.get("/cache/stats").get_json()["quota_status"] == "over_quota"


def test_list_pages_with_a_cursor_newest_first(client, cache, root):
    registered(cache, root, "a", "b", "c")
    cache.access("a")
    first = client.get("/cache/directories?limit=2").get_json()
    assert [d["path"] for d in first["directories"]] == ["a", "c"]
    second = client.get(f"/cache/directories?limit=2&cursor={first['next_cursor']}").get_json()
    assert [d["path"] for d in second["directories"]] == ["b"]
    assert second["next_cursor"] is None
    # README's first page, `?cursor=` with nothing: the start (it was a 400 "invalid cursor").
    assert client.get("/cache/directories?limit=2&cursor=").get_json() == first
    entry = first["directories"][0]
    assert set(entry) >= {"path", "size_bytes", "file_count", "registered_at", "last_access",
                          "expires_at"}
    assert entry["registered_at"].endswith("+00:00")


def test_directory_info_with_slashes(client, cache, root):
    registered(cache, root, "artist/album")
    data = client.get("/cache/directories/artist/album").get_json()
    assert data["path"] == "artist/album" and data["size_bytes"] == UNIT


def test_register_enqueues_and_wait_returns_the_result(client, cache, root):
    make_tree(root, "artist/album", files=4)
    r = client.post("/cache/register/artist/album")
    assert r.status_code == 202
    body = r.get_json()
    assert body["task_id"] and body["status_url"] == f"/cache/tasks/{body['task_id']}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = client.get(body["status_url"]).get_json()
        if status["state"] == "SUCCESS":
            break
        time.sleep(0.05)
    assert status["result"]["size_bytes"] == UNIT
    make_tree(root, "other")
    r = client.post("/cache/register/other?wait=10")
    assert r.status_code == 200 and r.get_json()["result"]["status"] == "registered"


def test_a_failed_tasks_reply_is_the_documented_error(client, cache, root):
    """It carried task_id and state, which the error schema (no other fields) did not name."""
    from api.schemas import ApiErrorSchema

    registered(cache, root, "deep")
    make_tree(root, "deep/sub")
    r = client.post("/cache/register/deep/sub?wait=10")
    said = r.get_json()
    assert r.status_code == 409 and said["code"] == "task_failed", said
    assert said["state"] == "FAILURE" and said["task_id"]
    assert ApiErrorSchema().validate(said) == {}
    documented = client.get("/openapi.json").get_json()["components"]["schemas"]["ApiError"]
    assert {"task_id", "state"} <= set(documented["properties"])


def test_names_are_checked_whole_and_documented_as_checked(client):
    """?node=vm%0A passed the pattern (marshmallow's Regexp matches with `$`, which takes a
    final newline): a 404 for an unknown node. The holder's length and a node path's name
    were checked but not documented: requests the document allows got a 400."""
    r = client.get("/cache/stats?node=vm%0A")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_parameter", r.get_json()
    assert client.delete("/cache/nodes/vm%0A").status_code == 400
    spec = client.get("/openapi.json").get_json()["paths"]
    pin = spec["/cache/directories/{path}/pin"]["post"]["parameters"]
    params = {p["name"]: p["schema"] for p in pin}
    assert params["holder"]["minLength"] == 1 and params["holder"]["maxLength"] == 200
    assert params["node"]["pattern"] == "^[A-Za-z0-9_.-]{1,100}$"
    forget = spec["/cache/nodes/{name}"]
    assert forget["parameters"][0]["schema"]["pattern"] == params["node"]["pattern"]
    assert "400" in forget["delete"]["responses"]


def test_delete_untracks_and_removes_files_when_asked(client, cache, root):
    registered(cache, root, "keep", "gone")
    r = client.delete("/cache/directories/keep?wait=10")
    assert r.status_code == 200 and (root / "keep").is_dir()
    r = client.delete("/cache/directories/gone?remove_files=true&wait=10")
    assert r.get_json()["result"]["files_deleted"] is True and not (root / "gone").exists()
    assert client.delete("/cache/directories/gone").status_code == 404


def test_a_removal_sent_again_after_a_crash_is_taken_not_refused(client, runner, cache, root):
    """A removal interrupted after its claim left the directory in the journal: the API and
    the CLI refused a second removal as "not tracked" where the task now finishes it."""
    from cachemgr.cleanup import cleanup

    registered(cache, root, "api-one", "cli-one")
    cleanup(cache)  # books not new
    for path in ("api-one", "cli-one"):
        cache.store.claim(path, "removed", now=cache.clock())  # then the worker died
    r = client.delete("/cache/directories/api-one?remove_files=true&wait=10")
    assert r.status_code == 200 and r.get_json()["result"]["files_deleted"] is True, r.get_json()
    done = runner.invoke(args=["rm", "cli-one", "--files", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["files_deleted"] is True, done.output
    assert not (root / "api-one").exists() and not (root / "cli-one").exists()
    assert cache.store.unfinished_deletions() == {}


def test_cleanup_and_dry_run(client, cache, root):
    registered(cache, root, *(f"d{i:02d}" for i in range(20)))
    plan = client.post("/cache/cleanup?dry_run=true").get_json()["result"]
    assert plan["evict"]["paths"] == ["d00", "d01", "d02", "d03"]
    assert cache.store.count_entries() == 20
    done = client.post("/cache/cleanup?wait=20").get_json()["result"]
    assert done["evict"]["plan"] == plan["evict"]["plan"]


def test_scheduler_switch(client, cache):
    assert client.post("/cache/stop-scheduler").get_json() == {"scheduler_running": False}
    assert client.get("/cache/stats").get_json()["scheduler_running"] is False
    # Past the threshold while stopped: no cleanup will come of itself, and that is said.
    cache.client.set(cache.keys.bytes, cache.settings.threshold_bytes + 1)
    said = [w for w in client.get("/cache/stats").get_json()["warnings"] if "threshold" in w]
    assert said and "only a manual cleanup" in said[0], said
    assert "evicts on its own only past 2 times the quota" in said[0]  # the disk's guard
    stopped = [w for w in client.get("/cache/stats").get_json()["warnings"] if "stopped" in w]
    assert any("only usage past 2 times the quota and the disk's free-space shortfall" in w
               for w in stopped), stopped  # fmt: skip
    assert client.post("/cache/start-scheduler").get_json() == {"scheduler_running": True}
    said = [w for w in client.get("/cache/stats").get_json()["warnings"] if "threshold" in w]
    assert "the next cleanup evicts" in said[0], said


def test_pin_and_unpin(client, cache, root):
    registered(cache, root, "a")
    assert client.post("/cache/directories/a/pin?ttl_seconds=60&wait=10").status_code == 200
    assert client.get("/cache/directories/a").get_json()["pinned_until"] is not None
    assert client.delete("/cache/directories/a/pin?wait=10").status_code == 200
    assert client.get("/cache/directories/a").get_json()["pinned_until"] is None


def test_reconcile_endpoint(client, cache, root):
    make_tree(root, "untracked")
    r = client.post("/cache/reconcile?dry_run=true&wait=10").get_json()
    assert r["result"]["registered"] == ["untracked"] and cache.store.count_entries() == 0
    r = client.post("/cache/reconcile?wait=10").get_json()
    assert r["result"]["registered"] == ["untracked"] and cache.store.count_entries() == 1


def test_events_list(client, cache, root):
    registered(cache, root, "a")
    size = cache.info("a").size_bytes
    cache.remove("a", remove_files=True)
    events = client.get("/cache/events?limit=5").get_json()["events"]
    assert events[0]["event"] == "removed" and events[0]["path"] == "a"
    # Numbers and flags as every other answer gives them ("size": "2101248" before).
    assert events[0]["size"] == size and isinstance(events[0]["size"], int)
    assert events[0]["files_deleted"] is True and isinstance(events[0]["time"], float)
    from cachemgr import events as event_log

    odd = event_log.typed("1-0", {"size": "1e+17", "time": "nan", "files_deleted": "yes"})
    assert odd == {"id": "1-0", "size": "1e+17", "time": "nan", "files_deleted": "yes"}


BAD_PATHS = [
    "/cache/register/%2e%2e/etc",
    "/cache/register/a/%2e%2e%2f%2e%2e%2fetc",
    "/cache/register/%252e%252e%252fetc",
    "/cache/register/a%00b",
    "/cache/register/escape",
    "/cache/directories/%2e%2e/x",
]


@pytest.mark.parametrize("url", BAD_PATHS)
def test_bad_paths_are_400_json(client, root, canary, url):
    import os

    os.symlink(canary, root / "escape")
    r = client.post(url) if "register" in url else client.get(url)
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["code"] == "bad_path" and body["message"]


@pytest.mark.parametrize(
    "url", ["/cache/directories?limit=-1", "/cache/directories?limit=abc",
            "/cache/register/a?wait=10000", "/cache/directories?cursor=%%%"],
)  # fmt: skip
def test_bad_parameters_are_400_json(client, root, url):
    make_tree(root, "a")
    r = client.post(url) if "register" in url else client.get(url)
    assert r.status_code == 400
    assert r.get_json()["code"] == "bad_parameter" and r.get_json()["message"]


def test_not_tracked_and_not_on_disk_are_404(client):
    assert client.get("/cache/directories/nope").get_json()["code"] == "not_tracked"
    r = client.post("/cache/register/nope")
    assert r.status_code == 404 and r.get_json()["code"] == "not_on_disk"


def test_writes_need_the_token_when_one_is_set(app, client, root):
    app.config["DISK_CACHE_API_TOKEN"] = "s3cret"
    make_tree(root, "a")
    assert client.post("/cache/register/a").status_code == 401
    wrong = client.post("/cache/register/a", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/cache/register/a?wait=10", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/cache/stats").status_code == 200  # reads stay open
    app.config["DISK_CACHE_API_READ_AUTH"] = True
    denied = client.get("/cache/stats")
    assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
    assert client.get("/healthz").status_code == 200
    import base64

    browser = {"Authorization": "Basic " + base64.b64encode(b"me:s3cret").decode()}
    assert client.get("/", headers=browser).status_code == 200  # the status page in a browser
    wrong = {"Authorization": "Basic " + base64.b64encode(b"me:nope").decode()}
    assert client.get("/", headers=wrong).status_code == 401


def test_another_sites_page_cannot_steer_the_cache(app, client):
    """A form POST or a no-cors fetch from another site needs no preflight: a loopback API
    without a token stopped the scheduler for it (the disk then fills), and with a token a
    browser sent its cached Basic password along. Another name resolving to 127.0.0.1 (DNS
    rebinding) made that site same-origin with a loopback API."""
    import base64

    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    refused = client.post("/cache/stop-scheduler", headers=evil)
    assert refused.status_code == 403 and refused.get_json()["code"] == "cross_origin"
    assert app.extensions["cachemgr"].cache.scheduler_running()
    old_browser = client.post("/cache/stats/reset", headers={"Origin": "http://evil.example"})
    assert old_browser.status_code == 403  # no Sec-Fetch-Site: the Origin says it
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}  # its own pages
    assert client.post("/cache/stats/reset", headers=own).status_code == 200
    assert client.post("/cache/stats/reset").status_code == 200  # curl, a script: no Origin
    assert client.get("/cache/stats", headers=evil).status_code == 200  # reads: CORS keeps them
    # DNS rebinding: a Host that is not loopback, on an API without a token.
    rebound = client.get("/cache/stats", headers={"Host": "attacker.example:8080"})
    assert rebound.status_code == 403 and rebound.get_json()["code"] == "host_not_allowed"
    assert client.get("/healthz", headers={"Host": "attacker.example"}).status_code == 200
    # One werkzeug cannot parse was refused as "Host ''": the header as sent is named.
    for host in ("[::1", "localhost:abc", "evil@localhost", "localhost/x", "[::1]x"):
        bad = client.get("/cache/stats", headers={"Host": host})
        assert bad.status_code == 400 and bad.get_json()["message"] == (
            f"Host {host!r} is no host name and port"), bad.get_json()  # fmt: skip
    underscore = client.get("/cache/stats", headers={"Host": "cache_api:8080"})  # Compose's
    assert underscore.status_code == 403 and "Host 'cache_api:8080'" in underscore.get_json()[
        "message"]  # fmt: skip
    for host in ("127.0.0.1:8080", "[::1]:8080", "LOCALHOST", "localhost.", "127.0.0.2"):
        assert client.get("/cache/stats", headers={"Host": host}).status_code == 200, host
    # A name is not an address: 127.x.attacker.example rebinds as well as any.
    rebound = client.get("/cache/stats", headers={"Host": "127.0.0.1.attacker.example"})
    assert rebound.status_code == 403
    app.config["DISK_CACHE_API_HOSTS"] = ["cache.internal"]  # a proxy's name, allowed
    assert client.get("/cache/stats", headers={"Host": "cache.internal"}).status_code == 200
    # An older browser (no Sec-Fetch-Site) through a proxy that rewrites the Host, and one
    # that names the default port: the API's own pages, not another site's.
    proxied = {"Host": "127.0.0.1:8080", "Origin": "http://cache.internal"}
    assert client.post("/cache/stats/reset", headers=proxied).status_code == 200
    port = {"Host": "cache.internal", "Origin": "http://cache.internal:80"}
    assert client.post("/cache/stats/reset", headers=port).status_code == 200
    bad = {"Host": "cache.internal", "Origin": "http://elsewhere:port"}
    assert client.post("/cache/stats/reset", headers=bad).status_code == 403  # not a 500
    unclosed = {"Host": "cache.internal", "Origin": "http://[::1"}  # urlsplit's ValueError
    assert client.post("/cache/stats/reset", headers=unclosed).status_code == 403
    malformed = client.get("/cache/stats", headers={"Host": "[::1"})
    assert malformed.status_code == 400  # named, see above
    # With a token the API listens beyond loopback (any Host), and Basic is no way around it.
    app.config["DISK_CACHE_API_TOKEN"] = "s3cret"
    assert client.get("/cache/stats", headers={"Host": "cache.example"}).status_code == 200
    assert client.get("/cache/stats", headers={"Host": "cache_api"}).status_code == 200
    # Its own page's write (a browser sends Origin, no Sec-Fetch-Site, to plain http): the
    # Origin was compared with werkzeug's '' and refused.
    bearer = {"Authorization": "Bearer s3cret"}
    own_page = {"Host": "cache_api:8080", "Origin": "http://cache_api:8080", **bearer}
    assert client.post("/cache/stats/reset", headers=own_page).status_code == 200
    elsewhere = {"Host": "cache_api:8080", "Origin": "http://evil.example", **bearer}
    assert client.post("/cache/stats/reset", headers=elsewhere).status_code == 403
    for url in ("/", "/cache/stats", "/docs"):  # nor framed by its page, nor sniffed
        headers = client.get(url, headers={"Authorization": "Bearer s3cret"}).headers
        assert headers["X-Frame-Options"] == "DENY", url
        assert headers["X-Content-Type-Options"] == "nosniff", url
    basic = {"Authorization": "Basic " + base64.b64encode(b":s3cret").decode()}
    refused = client.post("/cache/stop-scheduler", headers={**evil, **basic})
    assert refused.status_code == 403 and app.extensions["cachemgr"].cache.scheduler_running()


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ok" and ready["checks"]["redis"] == "ok"


def test_stats_and_readiness_go_by_what_the_workers_enforce(client, cache, settings):
    from cachemgr.nodes import NodeRegistry

    # The node's workers run with another quota and TTL, and with management off.
    theirs = settings.with_(
        disk_cache_max_bytes=2**20,
        disk_cache_ttl_seconds=3600,
        disk_cache_min_free_bytes=12345,
        enable_disk_cache_management=False,
    )
    registry = NodeRegistry(cache.client, settings.disk_cache_cluster)
    as_published = cache.client.hget(registry.nodes_key, settings.node)  # the test worker's
    registry.publish(theirs)
    stats = client.get("/cache/stats").get_json()
    assert (stats["max_bytes"], stats["ttl_seconds"], stats["enabled"]) == (2**20, 3600, False)
    assert stats["threshold_bytes"] == int(2**20 * settings.disk_cache_lru_eviction_threshold)
    assert stats["min_free_bytes"] == 12345  # the floor they keep
    said = [w for w in stats["warnings"] if "but the node's workers run with" in w]
    assert len(said) == 4 and any("DISK_CACHE_MIN_FREE_BYTES" in w for w in said)
    # Spelled as one writes it in the environment, not as Python prints a bool.
    assert any("ENABLE_DISK_CACHE_MANAGEMENT=true but the node's workers run with false" in w
               for w in said), said  # fmt: skip
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "false on the node's workers" in ready.get_json()["checks"]["enabled"]
    cache.client.hset(registry.nodes_key, settings.node, as_published)
    assert client.get("/readyz").status_code == 200
    assert not [w for w in client.get("/cache/stats").get_json()["warnings"] if "workers run" in w]


def test_an_unnamed_nodes_workers_on_another_host_are_found_by_key_prefix(client, cache, settings):
    from cachemgr.nodes import NodeRegistry

    registry = NodeRegistry(cache.client, settings.disk_cache_cluster)
    as_published = cache.client.hget(registry.nodes_key, settings.node)
    cache.client.hdel(registry.nodes_key, settings.node)
    # Same books (key prefix), published under the workers' own host name.
    theirs = settings.with_(
        disk_cache_node="", disk_cache_ttl_seconds=60, enable_disk_cache_management=False
    )
    entry = {**json.loads(as_published), "node": "worker-host", "ttl_seconds": 60,
             "enabled": False, "key_prefix": theirs.key_prefix}  # fmt: skip
    cache.client.hset(registry.nodes_key, "worker-host", json.dumps(entry))
    try:
        stats = client.get("/cache/stats").get_json()
        assert stats["ttl_seconds"] == 60 and stats["enabled"] is False
        assert client.get("/readyz").status_code == 503
    finally:
        cache.client.hdel(registry.nodes_key, "worker-host")
        cache.client.hset(registry.nodes_key, settings.node, as_published)


def test_redis_down_is_503_json_and_recovers(settings):
    from api import create_app
    from cachemgr import connect

    app = create_app(
        {"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": connect("redis://127.0.0.1:1/0"),
         "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    )  # fmt: skip
    c = app.test_client()
    r = c.get("/cache/stats")
    assert r.status_code == 503 and r.get_json()["code"] == "redis_unavailable"
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200


def test_openapi_and_docs_are_served_locally(client):
    spec = client.get("/openapi.json").get_json()
    assert "/cache/directories/{path}" in spec["paths"]
    stats_ok = spec["paths"]["/cache/stats"]["get"]["responses"]["200"]["content"]
    assert stats_ok["application/json"]["schema"]["$ref"].endswith("/Stats")
    assert "Stats" in spec["components"]["schemas"]
    page = client.get("/docs").get_data(as_text=True)
    assert "/swagger-ui/swagger-ui-bundle.js" in page and "https://" not in page
    assert client.get("/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_stats_reset_endpoint_and_cli(client, runner, cache, root):
    registered(cache, root, "a")
    cache.access("a")
    assert client.post("/cache/stats/reset").get_json()["hits"] == 0
    assert client.get("/cache/stats").get_json()["hits"] == 1
    cache.access("a")
    assert client.get("/cache/stats").get_json()["since_reset"]["hits"] == 1
    assert runner.invoke(args=["stats", "--reset", "--json"]).exit_code == 0
    assert client.get("/cache/stats").get_json()["since_reset"]["hits"] == 0


def test_query_parser_defaults_are_fresh_and_required_arguments_still_fail():
    from flask import Flask
    from flask.views import MethodView
    from flask_smorest import Api
    from marshmallow import Schema, fields

    from api.arguments import CacheBlueprint

    class Optional(Schema):
        limit = fields.Integer(load_default=10)
        tags = fields.List(fields.String(), load_default=list)

    class Needed(Schema):
        name = fields.String(required=True)

    app = Flask("t")
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    api = Api(app)
    blp = CacheBlueprint("t", "t", url_prefix="/t")

    @blp.route("/optional")
    class Opt(MethodView):
        @blp.arguments(Optional(), location="query")
        def get(self, args):
            args["tags"].append("seen")  # must not leak into the next request's defaults
            return args

    @blp.route("/needed")
    class Need(MethodView):
        @blp.arguments(Needed(), location="query", error_status_code=400)
        def get(self, args):
            return args

    api.register_blueprint(blp)
    c = app.test_client()
    assert c.get("/t/optional").get_json() == {"limit": 10, "tags": ["seen"]}
    assert c.get("/t/optional").get_json() == {"limit": 10, "tags": ["seen"]}
    assert c.get("/t/optional?limit=3").get_json() == {"limit": 3, "tags": ["seen"]}
    assert c.get("/t/optional?limit=x").status_code == 422
    for _ in range(2):
        assert c.get("/t/needed").status_code == 400
    assert c.get("/t/needed?name=a").get_json() == {"name": "a"}


def test_a_runtime_error_of_the_result_backend_is_503_and_others_are_500(app):
    scope: dict = {"__name__": "celery.backends.asynchronous"}
    exec("def give_up():\n    raise RuntimeError('Retry limit exceeded')", scope)

    @app.get("/test-backend-down")
    def backend_down():
        scope["give_up"]()

    @app.get("/test-other-runtime-error")
    def other():
        raise RuntimeError("Celery says something else")  # same words, raised elsewhere

    c = app.test_client()
    r = c.get("/test-backend-down")
    assert r.status_code == 503 and r.get_json()["code"] == "backend_unavailable"
    r = c.get("/test-other-runtime-error")
    assert r.status_code == 500 and r.get_json()["code"] == "internal_error"


@pytest.mark.parametrize(
    "method,url",
    [("post", "/cache/cleanup?dryRun=true&wait=10"), ("get", "/cache/stats?bogus=1"),
     ("delete", "/cache/directories/old?remove-files=true")],
)  # fmt: skip
def test_an_unknown_query_argument_is_refused_and_nothing_runs(client, cache, root, method, url):
    # A misspelt dry_run must not run a real cleanup.
    make_tree(root, "old")
    cache.register("old")
    r = getattr(client, method)(url)
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["code"] == "bad_parameter"
    name = url.split("?")[1].split("=")[0]
    assert name in body["message"] or name in json.dumps(body["errors"])
    assert (root / "old").is_dir() and cache.store.info("old") is not None


@pytest.mark.parametrize(
    ("url", "body", "said"),
    [("/cache/cleanup?wait=10", {"data": {"dry_run": "true"}}, "'dry_run'"),  # curl -d
     ("/cache/cleanup", {"json": {"dry_run": True}}, "'dry_run'"),
     ("/cache/directories/old/pin", {"data": {"ttl_seconds": "60"}}, "'ttl_seconds'"),
     ("/cache/cleanup", {"data": "dry_run", "content_type": "text/plain"}, "a body"),
     ("/cache/cleanup", {"data": "{", "content_type": "application/json"}, "not JSON"),
     ("/cache/cleanup", {"json": [1]}, "a JSON body that is no object"),
     # A RecursionError in the body's reading answered 500, from every endpoint.
     ("/cache/cleanup", {"data": "[" * 3000, "content_type": "application/json"}, "too deep"),
     ("/cache/stats/reset", {"data": '{"a":' * 3000, "content_type": "application/json"},
      "too deep")],
)  # fmt: skip
def test_arguments_sent_in_the_body_are_refused_and_nothing_runs(client, cache, root, url, body,
                                                                  said):
    # `curl -X POST -d dry_run=true /cache/cleanup` ran a real cleanup: the body was not read.
    make_tree(root, "old")
    cache.register("old")
    cache.store.register("old", 10**12, 1, now=1.0)  # far over the quota: a real run evicts
    r = client.post(url, **body)
    assert r.status_code == 400, r.get_data(as_text=True)
    reply = r.get_json()
    assert reply["code"] == "bad_parameter" and "read from the query string only" in reply[
        "message"] and said in reply["message"], reply  # fmt: skip
    assert (root / "old").is_dir() and cache.store.info("old") is not None


@pytest.mark.parametrize("body", [
    {}, {"json": {}}, {"data": b"", "content_type": "text/plain"},
    {"data": "{}", "content_type": "application/x-www-form-urlencoded"},  # curl -d '{}'
    {"data": "{}", "content_type": "text/plain"},  # fetch(body: JSON.stringify({}))
    {"data": "null", "content_type": "application/json"},  # .NET, Go: a nil sent as JSON
    {"data": " \n", "content_type": "application/json"}, {"json": []},
])  # fmt: skip
def test_an_empty_body_is_no_argument(client, cache, body):
    # Some clients send `{}` (or an empty body, or null) with every POST, whatever its type.
    r = client.post("/cache/cleanup?dry_run=true&wait=10", **body)
    assert r.status_code == 200 and r.get_json()["result"]["status"] == "planned", r.get_json()


@pytest.mark.parametrize("url", ["/cache/directories//etc", "/cache/directories/%2Fetc"])
def test_an_absolute_path_is_refused_not_redirected_into_the_root(client, cache, root, url):
    # Merging the slashes answered a 308 to /cache/directories/etc: a client following it
    # would have deleted <root>/etc.
    make_tree(root, "etc")
    cache.register("etc")
    r = client.delete(url + "?remove_files=true")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_path", r.get_data(as_text=True)
    assert (root / "etc").is_dir() and cache.store.info("etc") is not None


def test_a_nan_cursor_is_a_bad_parameter(client):
    import base64

    cursor = base64.urlsafe_b64encode(b"nan\nx").decode()
    r = client.get(f"/cache/directories?cursor={cursor}")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_parameter"


def test_a_pin_beyond_the_limit_is_refused_and_an_old_one_still_reads(client, cache, root):
    make_tree(root, "a")
    cache.register("a")
    r = client.post("/cache/directories/a/pin?ttl_seconds=100000000")
    assert r.status_code == 400 and r.get_json()["code"] == "bad_parameter"
    with pytest.raises(ValueError, match="from 0.001 to 604800"):
        cache.pin("a", 10**9)
    assert cache.client.zscore(cache.keys.pins, "a") is None
    # A pin stored before pins had a limit, beyond what a datetime holds, still reads.
    cache.client.zadd(cache.keys.pins, {"a": 6.07e11})
    for url in ("/cache/directories", "/cache/directories/a", "/"):
        assert client.get(url).status_code == 200, url
    info = client.get("/cache/directories/a").get_json()
    assert info["pinned_until"].startswith("9999-12-31")


def test_a_wait_that_runs_out_answers_202_with_the_task(app, client, root, monkeypatch):
    # Celery's result.get raises celery.exceptions.TimeoutError, not the builtin one.
    import uuid

    tasks = app.extensions["cachemgr"].tasks
    never = tasks.app.AsyncResult(f"never-{uuid.uuid4()}")
    monkeypatch.setattr(tasks, "send_to", lambda *a, **k: never)
    make_tree(root, "slow")
    r = client.post("/cache/register/slow?wait=0.3")
    assert r.status_code == 202, r.get_data(as_text=True)
    assert r.get_json()["task_id"] == never.id and r.get_json()["state"] == "PENDING"


@pytest.mark.parametrize(
    "method,url,name",
    [
        ("post", "/cache/cleanup?dry_run=false&dry_run=true&wait=10", "dry_run"),
        ("get", "/cache/directories?limit=5&limit=abc", "limit"),
        ("get", "/cache/stats?node=a&node=a", "node"),
        ("delete", "/cache/directories/d00?remove_files=false&remove_files=true&wait=10",
         "remove_files"),
    ],
)  # fmt: skip
def test_a_repeated_query_argument_is_refused_and_nothing_runs(client, cache, root, method, url,
                                                                name):  # fmt: skip
    # webargs took the first of them: `dry_run=false&dry_run=true` ran a real cleanup.
    registered(cache, root, *[f"d{i:02d}" for i in range(20)])  # past the threshold
    r = getattr(client, method)(url)
    assert r.status_code == 400, r.get_data(as_text=True)
    body = r.get_json()
    assert body["code"] == "bad_parameter" and name in body["message"]
    assert "more than once" in body["message"]
    assert cache.store.count_entries() == 20 and (root / "d00").is_dir()


@pytest.mark.parametrize(
    "method,url", [("post", "/cache/register/"), ("delete", "/cache/directories/"),
                   ("post", "/cache/register"),
                   ("delete", "/cache/directories")]  # an HTML 308, Location from the Host
)  # fmt: skip
def test_an_empty_path_is_a_bad_path_not_a_404(client, method, url):
    r = getattr(client, method)(url)
    assert r.status_code == 400 and r.get_json()["code"] == "bad_path", r.get_data(as_text=True)
    assert "empty path" in r.get_json()["message"]


def test_the_listing_with_a_trailing_slash_is_the_listing(client, cache, root):
    """`GET /cache/directories/` (a shell's completion) answered 400 "empty path"."""
    for name in ("a", "b", "c"):
        make_tree(root, name)
        cache.register(name)
    plain = client.get("/cache/directories?limit=2").get_json()
    slash = client.get("/cache/directories/?limit=2")
    assert slash.status_code == 200 and slash.get_json() == plain and len(plain["directories"]) == 2
    assert client.get("/cache/directories/?limit=x").get_json()["code"] == "bad_parameter"


def test_the_openapi_document_names_the_token_so_its_ui_sends_it(client):
    # Swagger UI's Authorize did nothing: no operation named a security scheme.
    doc = client.get("/openapi.json").get_json()
    assert {"bearer": []} in doc["security"] and {} in doc["security"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_method_a_route_does_not_take_is_a_json_405_with_allow(client):
    # RFC 9110: a 405 names the methods the resource takes; the JSON body had dropped it.
    r = client.put("/cache/stats")
    assert r.status_code == 405 and r.get_json()["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "HEAD"}
    assert r.content_type == "application/json"


@pytest.mark.parametrize(
    "method,url",
    [("get", "/cache/directories/%ff"), ("post", "/cache/register/a%ffb"),
     ("delete", "/cache/directories/x/%c3%28?remove_files=true")],
)  # fmt: skip
def test_a_path_that_is_not_utf8_is_refused(client, cache, root, method, url):
    # werkzeug made `%ff` into U+FFFD: silently another path than the one named.
    make_tree(root, "\ufffd")
    cache.register("\ufffd")
    r = getattr(client, method)(url)
    assert r.status_code == 400 and r.get_json()["code"] == "bad_path", r.get_data(as_text=True)
    assert "UTF-8" in r.get_json()["message"]
    assert cache.store.info("\ufffd") is not None


def test_a_utf8_path_still_reads(client, cache, root):
    registered(cache, root, "café")
    r = client.get("/cache/directories/caf%C3%A9")
    assert r.status_code == 200 and r.get_json()["path"] == "café"


@pytest.mark.parametrize(
    "env,name",
    [
        ({"DISK_CACHE_TTL_SECONDS": str(10**30)}, "DISK_CACHE_TTL_SECONDS"),
        ({"DISK_CACHE_MAX_BYTES": "9" * 400}, "DISK_CACHE_MAX_BYTES"),
        ({"DISK_CACHE_API_READ_AUTH": "maybe"}, "DISK_CACHE_API_READ_AUTH"),
        ({"DISK_CACHE_API_READ_AUTH": "true"}, "DISK_CACHE_API_READ_AUTH='true' needs"),
        ({"DISK_CACHE_LOG_LEVEL": "BOGUS"}, "DISK_CACHE_LOG_LEVEL"),
    ],
)
def test_create_app_refuses_bad_settings_with_a_settings_error(monkeypatch, root, env, name):
    # A TTL of 10^30 started, then made GET /cache/stats a 500; 400 digits an OverflowError.
    from api import create_app
    from cachemgr import SettingsError

    monkeypatch.setenv("DISK_CACHE_ROOT", str(root))
    monkeypatch.delenv("DISK_CACHE_API_TOKEN", raising=False)  # READ_AUTH alone: silently off
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=f"^{re.escape(name)}"):
        create_app()


def test_plain_views_are_recognised_once_and_coroutines_still_wrapped(app):
    calls = []

    def view():
        return "ok"

    async def coroutine():
        return "ok"

    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    app.async_to_sync = lambda func: calls.append(func) or func  # asgiref is not installed
    app.ensure_sync(coroutine)
    app.ensure_sync(coroutine)
    assert calls == [coroutine, coroutine]  # a coroutine is wrapped every time


def test_replies_encode_str_keys_fast_and_other_keys_as_flask_does(tmp_path) -> None:
    """The API's JSON provider: orjson without its non-str-key option unless a reply needs it."""
    import datetime
    import decimal

    import orjson
    from flask import Flask

    from api.extensions import FastJSONProvider

    provider = FastJSONProvider(Flask(__name__))
    assert orjson.loads(provider._encode({"a": 1, "b": [None, 2.5]})) == {"a": 1, "b": [None, 2.5]}
    assert orjson.loads(provider._encode({1: "x", "n": {2: 3}})) == {"1": "x", "n": {"2": 3}}
    when = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
    assert orjson.loads(provider._encode({"t": when, "d": decimal.Decimal("1.5")})) == {
        "t": "2026-11-26T00:00:00+00:00",
        "d": "1.5",
    }
    with pytest.raises(TypeError):
        provider._encode({"x": object()})


def test_lean_views_run_under_one_wrapper_with_their_doc_and_arguments(client, cache, root):
    # The two hottest reads skip webargs' and flask-smorest's stack of wrappers: their OpenAPI
    # doc, their query arguments and their bad-argument 400 must be what the stack gave.
    from api.routes import Directory, Stats

    for view in (Stats.get, Directory.get):
        assert not hasattr(view.__wrapped__, "__wrapped__")  # one wrapper, then the view
    spec = client.get("/openapi.json").get_json()["paths"]
    for path in ("/cache/stats", "/cache/directories/{path}"):
        op = spec[path]["get"]
        assert "node" in [p["name"] for p in op["parameters"] if p["in"] == "query"], op
        assert {"200", "400"} <= set(op["responses"]), op["responses"]
    assert "Stats" in json.dumps(spec["/cache/stats"]["get"]["responses"]["200"])
    make_tree(root, "a")
    cache.register("a")
    own = cache.settings.node
    assert client.get(f"/cache/stats?node={own}").get_json()["node"] == own
    assert client.get(f"/cache/directories/a?node={own}").get_json()["path"] == "a"
    # A task's state took any argument and ignored it (a typo of `wait` said nothing).
    for url in ("/cache/directories/a?nod=x", "/cache/stats?node=a&node=b", "/cache/tasks/x?w=1"):
        r = client.get(url)
        assert r.status_code == 400 and r.get_json()["code"] == "bad_parameter", url


def test_lean_refuses_what_it_would_skip():
    # Everything under lean() is skipped at run time: an ETag, another status, a schema dump
    # or an async view would vanish silently while the doc still promised them.
    import marshmallow as ma
    from flask import Flask

    from api.arguments import CacheBlueprint
    from api.routes import ARGS
    from api.schemas import NodeArgs

    class Out(ma.Schema):
        n = ma.fields.Int()

    bp = CacheBlueprint("scratch", __name__)

    def view(self, args):
        return {"n": 1}

    async def coroutine(self, args):
        return {"n": 1}

    with pytest.raises(TypeError, match="etag"):
        bp.lean(bp.etag(bp.arguments(NodeArgs(), **ARGS)(bp.response(200, Out)(view))))
    with pytest.raises(TypeError, match="status other than 200"):
        bp.lean(bp.arguments(NodeArgs(), **ARGS)(bp.response(201, Out)(view)))
    with pytest.raises(TypeError, match="async"):
        bp.lean(bp.arguments(NodeArgs(), **ARGS)(bp.response(200, Out)(coroutine)))
    wrapped = bp.lean(bp.arguments(NodeArgs(), **ARGS)(bp.response(200, Out)(view)))
    with Flask(__name__).test_request_context("/"):
        with pytest.raises(TypeError, match="must return a Response"):
            wrapped(None)


def test_celerys_must_be_restarted_line_is_not_shown_for_a_backend_that_comes_back(app, caplog):
    # The request that met the lost backend answers 503 and the next reconnects: Celery's
    # CRITICAL "The Celery application must be restarted" told the user something untrue.
    import logging

    from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED

    backend_log = logging.getLogger("celery.backends.asynchronous")
    with caplog.at_level(logging.INFO):
        backend_log.critical(E_RETRY_LIMIT_EXCEEDED)
        backend_log.critical("something else the backend says")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else the backend says"]


def test_an_empty_node_says_what_a_node_name_is(client):
    r = client.get("/cache/stats?node=")
    assert r.status_code == 400 and "1 to 100 of letters, digits" in r.get_json()["message"]


def test_readyz_fails_on_a_root_that_is_not_the_books_own(client, cache, root):
    """The mount point an unmounted disk leaves, written to meanwhile: /readyz said ok."""
    from cachemgr.cleanup import cleanup
    from tests.conftest import make_tree

    make_tree(root, "album", files=1)
    cache.register("album")
    cleanup(cache)  # the books are kept, the root's marker names them
    assert client.get("/readyz").status_code == 200
    root.rename(root.with_name("downloads.mounted"))
    make_tree(root, "written-meanwhile", files=1)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "not the directory these books were kept for" in ready.get_json()["checks"]["root"]


def test_a_reply_holding_a_name_that_is_not_utf8_is_sent_not_a_500(app):
    """orjson refuses lone surrogates (a name off the disk): a task's result with one was a
    500 for good. Escaped as the stdlib writes them instead."""
    import json

    with app.app_context():
        body = app.json.response({"path": "\udcff-album", "n": 1}).get_data()
    assert json.loads(body) == {"path": "\udcff-album", "n": 1}


def test_a_directory_named_with_a_newline_is_reached_by_every_route(client, cache, root):
    """Werkzeug's `path` stops at a newline: `/cache/directories/a%0Ab` answered Flask's own
    404 for a tracked `a\\nb`, which could then be neither read, pinned nor removed."""
    registered(cache, root, "a\nb")
    assert client.get("/cache/directories/a%0Ab").get_json()["path"] == "a\nb"
    assert client.post("/cache/directories/a%0Ab/pin?ttl_seconds=60&wait=10").status_code == 200
    assert client.get("/cache/directories/a%0Ab").get_json()["pinned_until"] is not None
    assert client.delete("/cache/directories/a%0Ab/pin?wait=10").status_code == 200
    assert client.delete("/cache/directories/a%0Ab?wait=10").status_code == 200
    assert client.get("/cache/directories/a%0Ab").get_json()["code"] == "not_tracked"


def test_a_registration_behind_another_lock_answers_202_retry_at_once(client, cache, root):
    """?wait=10 waited its ten seconds, then answered 202 "PENDING" for a task the workers
    had already set to run again once the lock lapses."""
    make_tree(root, "held")
    cache.client.set(cache.keys.lock("held"), "a-killed-worker", px=6000)
    started = time.monotonic()
    r = client.post("/cache/register/held?wait=10")
    assert r.status_code == 202 and r.get_json()["state"] == "RETRY", r.get_json()
    assert time.monotonic() - started < 8
    deadline = time.monotonic() + 30  # booked once the lock lapses
    while not cache.store.tracked(["held"])[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cache.store.tracked(["held"]) == [True]


def test_only_a_retry_behind_a_lock_stops_the_wait():
    """Every task retries a lost Redis too (LOADING after a restart is a ConnectionError):
    that RETRY was taken for a registration behind a lock, and the CLI gave up on a cleanup
    that finished a second later."""
    import types

    import redis

    from api.extensions import behind_lock
    from cachemgr.errors import StillLocked

    def result(state, info):
        return types.SimpleNamespace(state=state, info=info)

    assert behind_lock(result("RETRY", StillLocked("locked")))
    assert not behind_lock(result("RETRY", redis.BusyLoadingError("LOADING")))
    assert not behind_lock(result("PENDING", None))


def test_an_entry_under_a_parent_turned_symlink_can_still_be_untracked(
    client, settings, cache, root, tmp_path
):
    """Untracking looks at no disk, yet the API resolved the path first and answered 400, so
    an entry every cleanup fails to delete (its parent now a symlink) stayed on the books."""
    from cachemgr import DiskCache

    deep = DiskCache(settings.with_(disk_cache_entry_depth=2), cache.client)
    make_tree(root, "x/a")
    deep.register("x/a")
    deep.pin("x/a", 600, holder="player")
    (root / "x").rename(tmp_path / "elsewhere")
    (root / "x").symlink_to(tmp_path / "elsewhere")
    r = client.delete("/cache/directories/x/a?remove_files=true")
    assert r.status_code == 400 and "symlink" in r.get_json()["message"]  # files: refused
    assert client.delete("/cache/directories/x/a/pin?holder=player&wait=10").status_code == 200
    assert client.delete("/cache/directories/x/a?wait=10").status_code == 200
    assert not cache.store.tracked(["x/a"])[0]
    assert (tmp_path / "elsewhere" / "a").is_dir()  # nothing deleted through the link


def test_a_plan_for_a_node_whose_disk_is_elsewhere_is_made_by_its_workers(
    app, client, settings, redis_client, monkeypatch
):
    """The plan was made in the API process, which checked that node's root on this host's
    disk: a 503 "is the disk mounted?" for every node but the API's own."""
    from cachemgr.nodes import NodeRegistry

    far = settings.with_(disk_cache_node="far", disk_cache_root="/nonexistent/far")
    NodeRegistry(redis_client, settings.disk_cache_cluster).publish(far, queue="far-queue")
    tasks = app.extensions["cachemgr"].tasks
    sent: list[tuple] = []

    class Sent:
        id = "t-far"

    def send_to(queue, name, *args, **kwargs):
        sent.append((queue, name, args, kwargs))
        return Sent()

    monkeypatch.setattr(tasks, "send_to", send_to)
    r = client.post("/cache/cleanup?dry_run=true&node=far")
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["task_id"] == "t-far"
    assert sent == [("far-queue", "cleanup", (), {"dry_run": True})]
    assert client.post("/cache/cleanup?dry_run=true").status_code == 200  # its own: at once


@pytest.mark.parametrize(
    "method,url",
    [("post", "/cache/cleanup?wait=5"), ("post", "/cache/register/a?wait=5"),
     ("delete", "/cache/directories/a?wait=5"), ("post", "/cache/reconcile?wait=5")],
)  # fmt: skip
def test_a_write_with_no_worker_alive_is_queued_answered_at_once_and_said(
    app, client, cache, root, method, url, monkeypatch
):
    """The spec's `curl -X POST /cache/cleanup` waited the whole ?wait, then answered 202
    PENDING as if a worker had it. Refused, a fire-and-forget registration sent while a worker
    restarted was lost: it is queued, answered at once, and the reply says why."""
    registered(cache, root, "a")
    cache.client.delete(cache.keys.alive)
    tasks = app.extensions["cachemgr"].tasks
    never = tasks.app.AsyncResult("never-sent")
    sent: list[str] = []
    monkeypatch.setattr(tasks, "send_to", lambda queue, name, *a, **k: sent.append(name) or never)
    started = time.monotonic()
    r = getattr(client, method)(url)
    assert time.monotonic() - started < 2
    assert r.status_code == 202 and r.get_json()["state"] == "PENDING", r.get_json()
    assert r.get_json()["warning"] == (
        f"no worker of node {cache.settings.node} is alive (no heartbeat): the task waits in "
        "the queue and runs when one starts (celery -A workers.app worker)"
    )
    assert len(sent) == 1


def test_readyz_does_not_ask_the_books_redis_again_as_the_broker(settings, monkeypatch):
    """The broker on the books' server: a hung one cost a probe 3 s more (8 s), and one that
    refused writes (full) answered "broker": "ok" while it refused every task."""
    from api import create_app
    from cachemgr import connect

    down = "redis://127.0.0.1:1/0"
    monkeypatch.setenv("CELERY_BROKER_URL", down)  # it overrides the app's config
    app = create_app(
        {"CACHEMGR_SETTINGS": settings.with_(redis_url=down), "REDIS_CLIENT": connect(down),
         "CELERY_BROKER_URL": down, "CELERY_RESULT_BACKEND": down}
    )  # fmt: skip
    asked: list[str] = []
    import api as api_module

    real = api_module._broker_answers
    api_module._broker_answers = lambda celery_app: asked.append("broker") or real(celery_app)
    try:
        checks = app.test_client().get("/readyz").get_json()["checks"]
    finally:
        api_module._broker_answers = real
    assert checks["redis"].startswith("unreachable")
    assert checks["broker"] == f"the books' Redis server: {checks['redis']}" and asked == []


def test_a_registration_the_api_may_not_inspect_is_the_workers_to_judge(
    app, client, root, monkeypatch
):
    """A root of the workers' user that the API may not search: a 400 `bad_path` ("cannot
    inspect 'h2': Permission denied") blamed the path; the workers, who may, book it."""
    import errno

    make_tree(root, "h2")
    real = os.lstat

    def refused(path, *a, **k):
        if str(path) == str(root / "h2"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    tasks = app.extensions["cachemgr"].tasks
    sent: list[tuple] = []
    result = tasks.app.AsyncResult("x")
    monkeypatch.setattr(tasks, "send_to", lambda q, n, *a, **k: sent.append((n, *a)) or result)
    monkeypatch.setattr(os, "lstat", refused)
    r = client.post("/cache/register/h2")
    assert r.status_code == 202, r.get_json()
    assert sent == [("register_directory", "h2")]


def test_a_write_while_the_books_are_away_but_the_broker_is_not_is_queued(
    settings, root, monkeypatch
):
    """README: "an API write is a task: while the broker is up it is queued (202) and runs
    once Redis answers". The look for a live worker must not turn that into a 503."""
    from api import create_app
    from cachemgr import connect

    make_tree(root, "a")
    app = create_app({"CACHEMGR_SETTINGS": settings.with_(redis_url="redis://127.0.0.1:1/0"),
                      "REDIS_CLIENT": connect("redis://127.0.0.1:1/0")})  # fmt: skip
    tasks = app.extensions["cachemgr"].tasks
    assert not tasks.shares_books_server  # the broker is this suite's, on another server
    sent: list[str] = []
    result = tasks.app.AsyncResult("x")
    monkeypatch.setattr(tasks, "send_to", lambda q, name, *a, **k: sent.append(name) or result)
    r = app.test_client().post("/cache/register/a")
    assert r.status_code == 202 and "warning" not in r.get_json(), r.get_json()
    assert sent == ["register_directory"]
    # A removal too: its look at the books (tracked?) made it the one write answered 503.
    for url in ("/cache/directories/a", "/cache/directories/a?remove_files=true"):
        r = app.test_client().delete(url)
        assert r.status_code == 202, r.get_json()
    assert sent == ["register_directory", "remove_directory", "remove_directory"]


def test_a_registration_for_another_node_is_not_checked_on_this_hosts_disk(
    app, client, cache, settings, monkeypatch
):
    """Hosts that mount their caches at the same path: `?node=far` looked for the directory
    on the API's own disk, answered 404 not_on_disk, and sent nothing to far's worker."""
    from cachemgr.nodes import NodeRegistry

    far = settings.with_(disk_cache_node="far", disk_cache_key_prefix="far:")
    registry = NodeRegistry(cache.client, settings.disk_cache_cluster)
    registry.publish(far)  # the same root path as this API's, on another host
    tasks = app.extensions["cachemgr"].tasks
    sent: list[str] = []
    result = tasks.app.AsyncResult("x")
    monkeypatch.setattr(tasks, "send_to", lambda q, name, *a, **k: sent.append(a[0]) or result)
    try:
        r = client.post("/cache/register/only-on-far?node=far")
        assert r.status_code == 202, r.get_json()
        assert sent == ["only-on-far"]
    finally:
        cache.client.hdel(registry.nodes_key, "far")


def test_a_body_is_read_no_further_than_a_limit(client, cache):
    # The check read any body whole: 1 GB sent to /cache/stats held 1 GB of the web process
    # (or of /tmp, as an upload) before the 400.
    import io

    from api import BODY_LIMIT

    big = b"x" * (BODY_LIMIT + 1)
    for method, url in (("get", "/cache/stats"), ("post", "/cache/cleanup")):
        send = getattr(client, method)
        r = send(url, data=big, content_type="application/octet-stream")
        assert r.status_code == 413 and r.get_json()["code"] == "request_entity_too_large", r
        upload = {"f": (io.BytesIO(big), "big.bin")}
        r = send(url, data=upload, content_type="multipart/form-data")
        assert r.status_code == 413, r.get_data(as_text=True)


def test_an_api_whose_root_is_not_the_workers_leaves_the_path_to_them(
    app, settings, cache, root, tmp_path
):
    """An API started with another DISK_CACHE_ROOT than its workers' (a container mounting
    the disk elsewhere, a typo) answered 404 "directory not found under the cache root" for
    a download the workers had: the path was judged on the wrong tree."""
    from api import create_app

    make_tree(root, "g1")
    cache.registry.publish(settings)  # the workers, on `root`
    elsewhere = tmp_path / "api-root"
    elsewhere.mkdir()
    config = {**app.config, "CACHEMGR_SETTINGS": settings.with_(disk_cache_root=str(elsewhere))}
    apart = create_app(config).test_client()
    r = apart.post("/cache/register/g1?wait=30")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["result"]["status"] == "registered"
    assert cache.store.tracked(["g1"]) == [True]
    # Nor is one missing here refused: the workers' root is not this process's to judge.
    assert apart.post("/cache/register/nope").status_code == 202
    # Where the roots agree, a missing one is still a 404 at once.
    assert app.test_client().post("/cache/register/nope").status_code == 404


def test_a_directory_named_pin_is_not_taken_for_an_unpin_of_its_parent(client, cache, root):
    """DELETE /cache/directories/Artist/pin, meant to remove the album `pin`, ended every
    lease on `Artist` and answered 200; with ?remove_files it was an unknown argument."""
    make_tree(root, "Artist/pin")
    cache.register("Artist/pin")
    cache.pin("Artist", 600, "stream-1")
    r = client.delete("/cache/directories/Artist/pin?wait=10")
    assert r.status_code == 400 and r.get_json()["message"].startswith(
        "ambiguous: 'Artist/pin' is a tracked directory"), r.get_json()  # fmt: skip
    assert "/cache/directories/Artist/pin/ (a trailing slash)" in r.get_json()["message"]
    assert cache.info("Artist/pin").pinned_until is not None  # the stream's lease stands
    # A holder named: an unpin (the removal takes none), that holder's lease alone.
    r = client.delete("/cache/directories/Artist/pin?holder=stream-1&wait=10")
    assert r.status_code == 200 and r.get_json()["result"]["unpinned"] is True, r.get_json()
    r = client.delete("/cache/directories/Artist/pin/?wait=10")  # as the message says
    assert r.status_code == 200 and r.get_json()["result"]["status"] == "removed"
    assert cache.store.tracked(["Artist/pin"]) == [False]


def test_a_body_the_form_parser_leaves_or_the_limit_cuts_is_still_refused(client, cache):
    # multipart/form-data without a boundary parsed as no fields: its arguments were ignored,
    # a 200; a chunked body is cut at the limit, not refused, and what lay past it went unread.
    import io

    from api import BODY_LIMIT

    r = client.post("/cache/cleanup?dry_run=true", data="dry_run=false",
                    content_type="multipart/form-data")  # fmt: skip
    assert r.status_code == 400 and "a body" in r.get_json()["message"], r.get_json()
    wrong = b'--ABC\r\nContent-Disposition: form-data; name="dry_run"\r\n\r\nfalse\r\n--ABC--\r\n'
    r = client.post("/cache/cleanup?dry_run=true", data=wrong,
                    content_type="multipart/form-data; boundary=XYZ")  # a wrong boundary
    assert r.status_code == 400 and "a body" in r.get_json()["message"], r.get_json()
    right = wrong.replace(b"ABC", b"XYZ")  # parsed: its fields named
    r = client.post("/cache/cleanup?dry_run=true", data=right,
                    content_type="multipart/form-data; boundary=XYZ")
    assert r.status_code == 400 and "'dry_run'" in r.get_json()["message"], r.get_json()
    padded = b" " * (BODY_LIMIT + 10) + b'{"dry_run": false}'
    r = client.post("/cache/cleanup?dry_run=true", input_stream=io.BytesIO(padded),
                    headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})  # fmt: skip
    assert r.status_code in (400, 413) and r.get_json()["code"] != "ok", r.get_json()
    assert "result" not in r.get_json()
