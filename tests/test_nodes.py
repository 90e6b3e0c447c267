"""Many nodes under one control plane: routing by queue, keys under each node's hash tag, down
detection, RabbitMQ as the broker, and a Redis Cluster of three masters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest

from cachemgr import DiskCache, Settings, connect
from cachemgr.passes import enforce_quota
from tests.conftest import REDIS_URL, cleanup_prefix, make_tree, side_db

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
UNIT = 5 * 4096


def answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_answering(ports: list[int], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not all(answers(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.05)


def node_worker(node: str, root: Path, cluster: str, broker: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    env.update(
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=broker,
        CELERY_RESULT_BACKEND=side_db(12),
        DISK_CACHE_NODE=node,
        DISK_CACHE_CLUSTER=cluster,
        DISK_CACHE_ROOT=str(root),
        DISK_CACHE_MAX_BYTES=str(100 * 4096),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "prefork", "-c", "1",
         "-l", "WARNING", "-n", f"{node}@%h", "--without-mingle", "--without-gossip"],
        env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def two_nodes(tmp_path, redis_client, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    tag = uuid.uuid4().hex[:6]
    cluster = f"tc{tag}"
    nodes = {}
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        node = f"{name}{tag}"
        settings = Settings(
            disk_cache_root=str(root), redis_url=REDIS_URL, disk_cache_node=node,
            disk_cache_cluster=cluster, disk_cache_max_bytes=100 * 4096,
        ).validate()  # fmt: skip
        nodes[name] = DiskCache(settings, redis_client)
    yield nodes
    for cache in nodes.values():
        cleanup_prefix(redis_client, cache.keys.prefix)
    cleanup_prefix(redis_client, cluster)


def run_two_node_flow(nodes: dict[str, DiskCache], broker: str) -> None:
    from api import create_app

    a, b = nodes["a"], nodes["b"]
    cluster = a.settings.disk_cache_cluster
    backend = side_db(12)
    workers = {n: node_worker(c.settings.node, c.root, cluster, broker) for n, c in nodes.items()}
    try:
        app = create_app(
            {
                "CACHEMGR_SETTINGS": a.settings,
                "REDIS_CLIENT": a.client,
                "CELERY_BROKER_URL": broker,
                "CELERY_RESULT_BACKEND": backend,
            }
        )
        web = app.test_client()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = web.get("/cache/stats").get_json()
            if len(stats["nodes"]) == 2 and all(n["up"] for n in stats["nodes"]):
                break
            time.sleep(0.3)
        assert sorted(n["node"] for n in stats["nodes"]) == sorted(
            c.settings.node for c in nodes.values()
        )
        # A registration for node b goes to b's queue, is done by b's worker, lands in b's keys.
        make_tree(b.root, "album", files=4)
        r = web.post(f"/cache/register/album?node={b.settings.node}&wait=30")
        assert r.status_code == 200, r.get_json()
        assert b.store.tracked(["album"]) == [True] and a.store.tracked(["album"]) == [False]
        # Nothing of it under a's keys (the whole database's "*album*" met other runs' keys).
        assert not [k for k in a.client.scan_iter(match=f"{a.keys.prefix}*") if "album" in k]
        assert [k for k in a.client.scan_iter(match=f"{b.keys.prefix}*") if "album" in k]
        # Quota pressure on a never deletes on b.
        for i in range(20):
            make_tree(a.root, f"d{i:02d}", files=4)
            r = web.post(f"/cache/register/d{i:02d}?wait=30")
            assert r.status_code == 200, r.get_json()
        # Registrations past the threshold already enqueued an eviction; a cleanup finishes it.
        assert web.post("/cache/cleanup?wait=30").get_json()["result"]["status"] in (
            "done",
            "skipped",
        )
        deadline = time.monotonic() + 20
        while a.store.total_bytes() > a.settings.threshold_bytes and time.monotonic() < deadline:
            time.sleep(0.2)
        assert a.stats()["evictions"] > 0 and b.stats()["evictions"] == 0
        assert (b.root / "album").is_dir() and b.store.total_bytes() == UNIT
        assert a.store.total_bytes() <= a.settings.threshold_bytes
        totals = web.get("/cache/stats").get_json()["cluster"]
        assert totals["total_bytes"] == a.store.total_bytes() + b.store.total_bytes()
        # Stopping b's worker marks b down while a goes on.
        stop(workers["b"])
        down = {n["node"]: n["up"] for n in web.get("/cache/stats").get_json()["nodes"]}
        assert down == {a.settings.node: True, b.settings.node: False}
        make_tree(a.root, "after", files=1)
        assert web.post("/cache/register/after?wait=30").status_code == 200
    finally:
        for proc in workers.values():
            stop(proc)


def test_two_nodes_on_one_machine(two_nodes):
    run_two_node_flow(two_nodes, side_db(12))


def test_the_pipeline_client_learns_the_node_from_the_path(two_nodes):
    from cachemgr import PathError
    from workers.client import CacheClient

    b = two_nodes["b"]
    for cache in two_nodes.values():
        cache.publish_config()
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, cluster=b.settings.disk_cache_cluster)
    node_client, rel = client.for_path(str(b.root / "artist" / "album"))
    assert (node_client.node, rel) == (b.settings.node, "artist/album")
    assert node_client.queue == f"cachemgr.{b.settings.node}"
    assert node_client.keys.prefix == b.keys.prefix
    with pytest.raises(PathError):
        client.for_path("/somewhere/else")
    client.close()


def test_a_client_named_for_a_node_follows_what_its_workers_published(two_nodes, caplog):
    from cachemgr import PathError
    from workers.client import CacheClient

    a, b = two_nodes["a"], two_nodes["b"]
    cluster = b.settings.disk_cache_cluster
    b.registry.publish(b.settings, queue="b-own-queue")  # its workers' CACHEMGR_QUEUE
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, node=b.settings.node, cluster=cluster)
    assert client.queue == "b-own-queue" and client.keys.prefix == b.keys.prefix
    unknown = CacheClient(REDIS_URL, redis_url=REDIS_URL, node="nobody", cluster=cluster)
    assert unknown.queue == "cachemgr.nobody" and unknown.keys.prefix == "{nobody}:"
    # A misspelt node's tasks filled a queue nobody reads, unsaid: said once.
    assert caplog.text.count("node nobody has not been published by any worker") == 1
    # Its workers publish later: followed from then on, not stuck on the default.
    b.registry.publish(b.settings.with_(disk_cache_node="nobody"), queue="nobody-queue")
    assert unknown.queue == "nobody-queue"
    b.registry.publish(b.settings.with_(disk_cache_node="nobody"), queue="moved")
    unknown.refresh()
    assert unknown.queue == "moved"
    # The books on a Redis Cluster that does not answer: tasks still go, by the defaults.
    away = CacheClient(REDIS_URL, redis_url="redis+cluster://127.0.0.1:1", node="n1")
    assert away.queue == "cachemgr.n1" and away.keys.prefix == "{n1}:"
    assert "node n1 has not been published" not in caplog.text  # not known: not said
    away.close()
    # Two hosts that mount their caches at the same path: the path cannot name the node.
    a.registry.publish(a.settings.with_(disk_cache_root=str(b.root)))
    with pytest.raises(PathError, match="use CacheClient"):
        client.for_path(str(b.root / "artist" / "album"))
    # Nested roots: the innermost holds the path.
    inner = b.root / "inner"
    inner.mkdir()
    a.registry.publish(a.settings.with_(disk_cache_root=str(inner)))
    node_client, rel = client.for_path(str(inner / "x" / "y"))
    assert (node_client.node, rel) == (a.settings.node, "x/y")
    for c in (client, unknown, node_client):
        c.close()


@pytest.mark.skipif(not answers(5672), reason="RabbitMQ is not running on 127.0.0.1:5672")
def test_two_nodes_with_rabbitmq_as_the_broker(two_nodes):
    run_two_node_flow(two_nodes, RABBIT)


def create_cluster(ports: list[int], attempts: int = 3) -> None:
    """`redis-cli --cluster create`, again from clean nodes if a loaded machine made it fail."""
    out = None
    for _ in range(attempts):
        for port in ports:  # each node answers PING before we ask it to join
            for _ in range(100):
                ping = subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                      capture_output=True, text=True)  # fmt: skip
                if ping.stdout.strip() == "PONG":
                    break
                time.sleep(0.05)
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode == 0:
            return
        for port in ports:
            subprocess.run(["redis-cli", "-p", str(port), "cluster", "reset", "hard"],
                           capture_output=True)  # fmt: skip
        time.sleep(1)
    raise AssertionError(f"redis-cli --cluster create failed: {out and (out.stdout, out.stderr)}")


@pytest.fixture
def redis_cluster(tmp_path):
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server is not installed")
    ports, procs = [], []
    import random

    # The cluster bus listens on port + 10000: keep both below the ephemeral range (32768+),
    # where client sockets of other tests could hold the bus port.
    candidates = [p for p in random.sample(range(12000, 22000), 50) if not answers(p)]
    candidates = [p for p in candidates if not answers(p + 10000)]
    for i in range(3):
        port = candidates[i]
        work = tmp_path / f"n{i}"
        work.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(work / "nodes.conf"), "--save", "", "--appendonly", "no",
             "--dir", str(work)], stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        ports.append(port)
    try:
        wait_answering(ports)
        create_cluster(ports)
        for _ in range(100):
            out = subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            if "cluster_state:ok" in out:
                break
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def test_redis_cluster_across_shards(redis_cluster, tmp_path):
    client = connect(redis_cluster)
    caches = {}
    for name in ("alpha", "beta", "gamma"):
        root = tmp_path / name
        root.mkdir()
        settings = Settings(
            disk_cache_root=str(root), redis_url=redis_cluster, disk_cache_node=name,
            disk_cache_max_bytes=100 * 4096,
        ).validate()  # fmt: skip
        caches[name] = DiskCache(settings, client)
    slots = {client.keyslot(c.keys.lru) for c in caches.values()}
    assert len(slots) == 3
    shards = {client.nodes_manager.get_node_from_slot(s).name for s in slots}
    assert len(shards) >= 2  # the nodes' books live on different masters
    for cache in caches.values():
        for i in range(20):
            make_tree(cache.root, f"d{i:02d}", files=4)
            cache.register(f"d{i:02d}")
        assert cache.access("d00")["hit"] is True
        result = enforce_quota(cache)
        assert [r.path for r in result.removed] == ["d01", "d02", "d03", "d04"]
        assert cache.store.total_bytes() == 16 * UNIT
        cache.publish_config()
    stats = caches["alpha"].cluster_stats()
    assert stats["cluster"]["total_bytes"] == 3 * 16 * UNIT
    assert stats["cluster"]["evictions"] == 12


def test_redis_sentinel_url_reaches_the_master(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    master_port, sentinel_port = ports
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
    )
    procs = [
        subprocess.Popen(["redis-server", "--port", str(master_port), "--bind", "127.0.0.1",
                          "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        wait_answering(ports)
        client = connect(f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0")
        root = tmp_path / "root"
        root.mkdir()
        cache = DiskCache(Settings(disk_cache_root=str(root)).validate(), client)
        make_tree(root, "album", files=4)
        assert cache.register("album")["size_bytes"] == UNIT
        assert cache.access("album")["hit"] is True
        direct = connect(f"redis://127.0.0.1:{master_port}/0")
        assert int(direct.get("cache:bytes")) == UNIT  # the books are on the master
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def test_a_worker_announces_its_node_once_redis_answers(settings, redis_client, root):
    # A worker that started while the books' Redis was away announces itself at a later
    # heartbeat, instead of serving tasks as a node nobody can see.
    from cachemgr import DiskCache, connect
    from workers.app import _announce

    away = DiskCache(settings, connect("redis://127.0.0.1:1/0"))
    assert _announce(away) is False
    cache = DiskCache(settings, redis_client)
    assert not redis_client.exists(cache.keys.alive)
    assert _announce(cache) is True
    assert redis_client.exists(cache.keys.alive) and redis_client.exists(cache.keys.config)
    assert settings.node in cache.registry.entries()


def test_beat_sends_a_nodes_cleanup_to_the_queue_its_workers_published(
    settings, redis_client, monkeypatch, tmp_path, caplog
):
    from celery import Celery
    from celery.beat import PersistentScheduler

    from cachemgr.nodes import NodeRegistry
    from tests.conftest import REDIS_URL
    from workers.beat import NODE_ENTRY, NodeScheduler

    NodeRegistry(redis_client, settings.disk_cache_cluster).publish(
        settings.with_(disk_cache_node="far"),
        queue="far-queue",  # its workers' CACHEMGR_QUEUE
    )
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("DISK_CACHE_CLUSTER", settings.disk_cache_cluster)
    # A bad setting beat does not use: it sent every cleanup to a queue nobody read.
    monkeypatch.setenv("DISK_CACHE_TTL_SECONDS", "abc")
    sent: list[dict] = []

    def send(self, entry, producer=None, advance=True, **kwargs):
        sent.append(dict(entry.options))

    monkeypatch.setattr(PersistentScheduler, "apply_async", send)
    app = Celery("beat-test")
    scheduler = NodeScheduler(app=app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    for node in ("far", "unknown", "unknown"):
        entry = scheduler.Entry(
            name=f"{NODE_ENTRY}{node}",
            task="cachemgr.cleanup",
            schedule=60.0,
            options={"queue": f"cachemgr.{node}"},
            app=app,
        )
        scheduler.apply_entry(entry)  # as beat sends it
    # A node no worker published (a misspelt DISK_CACHE_NODES): not sent, said once an hour;
    # its queue had filled with cleanups nobody read.
    assert sent == [{"queue": "far-queue"}]
    assert "no worker has published node unknown" in caplog.text
    assert caplog.text.count("no worker has published node") == 1
    caplog.clear()  # and as beat runs it, nothing said to be sent either
    with caplog.at_level("INFO"):
        scheduler.apply_entry(entry)
    assert "Sending due task" not in caplog.text and sent == [{"queue": "far-queue"}]
    # One beat per node (DISK_CACHE_NODE, no CACHEMGR_QUEUE here): its own entry follows too.
    monkeypatch.setenv("DISK_CACHE_NODE", "far")
    monkeypatch.delenv("CACHEMGR_QUEUE", raising=False)
    own = scheduler.Entry(
        name=NODE_ENTRY.rstrip("-"), task="cachemgr.cleanup", schedule=60.0,
        options={"queue": "cachemgr.far"}, app=app,
    )  # fmt: skip
    scheduler.apply_entry(own)
    assert sent[-1] == {"queue": "far-queue"}


def test_beat_says_it_is_alive_in_the_books_of_each_node_it_sends_cleanups_to(
    settings, redis_client, monkeypatch, tmp_path
):
    from celery import Celery

    from cachemgr.keys import Keys
    from cachemgr.nodes import NodeRegistry
    from tests.conftest import REDIS_URL
    from workers.beat import NODE_ENTRY, NodeScheduler

    far = settings.with_(disk_cache_node="far", disk_cache_key_prefix="")
    NodeRegistry(redis_client, settings.disk_cache_cluster).publish(
        far.with_(disk_cache_key_prefix=f"{settings.key_prefix}far:")
    )
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("DISK_CACHE_CLUSTER", settings.disk_cache_cluster)
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", f"{settings.key_prefix}own:")
    monkeypatch.delenv("DISK_CACHE_NODE", raising=False)
    monkeypatch.setenv("CACHEMGR_QUEUE", "its-own")  # the default entry: this environment's
    app = Celery("beat-alive")
    every = {"task": "cachemgr.cleanup", "schedule": 3600.0}
    app.conf.beat_schedule = {f"{NODE_ENTRY}far": every, NODE_ENTRY.rstrip("-"): every,
                              f"{NODE_ENTRY}nosuch": every, "something-else": every}  # fmt: skip
    scheduler = NodeScheduler(app=app, schedule_filename=str(tmp_path / "schedule"))
    books = [Keys(f"{settings.key_prefix}far:"), Keys(f"{settings.key_prefix}own:")]
    keys = [k.beat for k in books] + [k.beat_seen for k in books]
    try:
        scheduler.tick()  # sends nothing yet (an hour's interval), says it is alive
        for k in books:
            assert redis_client.get(k.beat) and 0 < redis_client.ttl(k.beat) <= 90, k
            assert redis_client.get(k.beat_seen) and 86000 < redis_client.ttl(k.beat_seen), k
        assert redis_client.get(keys[0]) == f"{socket.gethostname()}:{os.getpid()} 3600"
        assert not redis_client.exists(Keys("{nosuch}:").beat_seen)  # no worker published it
    finally:
        redis_client.delete(*keys, Keys("{nosuch}:").beat, Keys("{nosuch}:").beat_seen)
        scheduler.close()


def test_beat_says_a_send_that_failed_in_one_line(tmp_path, monkeypatch, caplog):
    """Redis down: each tick's failed send was Celery's "Message Error" with two tracebacks
    (228 lines in 20 s)."""
    from celery import Celery
    from celery.beat import PersistentScheduler, SchedulingError

    from workers.beat import NodeScheduler

    def send(self, entry, producer=None, advance=True, **kwargs):
        raise SchedulingError("Couldn't apply scheduled task x: Error 111 connecting")

    monkeypatch.setattr(PersistentScheduler, "apply_async", send)
    monkeypatch.delenv("DISK_CACHE_NODE", raising=False)
    app = Celery("beat-fail")
    scheduler = NodeScheduler(app=app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    entry = scheduler.Entry(name="other", task="cachemgr.noop", schedule=60.0, app=app)
    with caplog.at_level("INFO"):
        scheduler.apply_entry(entry)
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in failed] == [
        "beat: could not send other (cachemgr.noop): Couldn't apply scheduled task x: Error 111 "
        "connecting; it is sent again at its next time"
    ]
    assert failed[0].exc_info is None and "Traceback" not in caplog.text
    assert "Sending due task other (cachemgr.noop)" in caplog.text


def test_registry_entries_are_decoded_once_per_text_and_handed_out_as_copies():
    from cachemgr.nodes import NodeRegistry

    text = json.dumps({"node": "a", "max_bytes": 10, "policy": "lru"})
    first = NodeRegistry.parse({"a": text})
    first["a"]["max_bytes"] = 99  # a caller's change stays its own
    again = NodeRegistry.parse({"a": text})
    assert again["a"]["max_bytes"] == 10 and again["a"] is not first["a"]
    republished = NodeRegistry.parse({"a": text.replace("10", "20")})
    assert republished["a"]["max_bytes"] == 20


def test_unnamed_nodes_whose_host_runs_no_worker_leave_the_registry(settings, redis_client, root):
    """Containers recreated, each with a host name of its own (no DISK_CACHE_NODE): one entry
    each stayed for good, read by every stats request, and two on one root made a path's
    node ambiguous to the pipeline's client."""
    from cachemgr import presence
    from cachemgr.nodes import DEPARTED_SECONDS

    unnamed = settings.with_(disk_cache_node="", disk_cache_key_prefix=settings.key_prefix)
    cache = DiskCache(unnamed, redis_client)
    registry, now = cache.registry, time.time()
    long_ago = now - DEPARTED_SECONDS - 60
    for name, when in (("pod-gone", long_ago), ("pod-alive", long_ago), ("pod-new", now - 60),
                       ("kept-named", long_ago)):  # fmt: skip
        registry.publish(unnamed.with_(disk_cache_node=name), now=when)
    other = unnamed.with_(disk_cache_key_prefix="other-books:", disk_cache_node="pod-other")
    registry.publish(other, now=long_ago)
    for name in ("pod-gone", "pod-alive", "pod-new", "pod-other"):  # named after their hosts
        entry = json.loads(redis_client.hget(registry.nodes_key, name))
        redis_client.hset(registry.nodes_key, name, json.dumps({**entry, "named": False}))
    try:
        cache.publish_config(queue="celery", worker=f"{unnamed.node}:7")  # this host's, unnamed
        # Before: one root, one set of books, several entries: the path's node was ambiguous.
        same_books = {n: e for n, e in registry.entries().items() if n not in ("pod-other",
                                                                              "kept-named")}
        assert registry.holder(str(root / "album"), same_books) == (unnamed.node, "album")
        registry.heartbeat(cache.keys, "pod-alive:41")  # a worker of that host beats
        assert presence.beat(cache, f"{unnamed.node}:7", "celery", announced=True)
        left = set(registry.entries())
    finally:
        redis_client.delete(registry.nodes_key)
    assert left == {unnamed.node, "pod-alive", "pod-new", "kept-named", "pod-other"}


def test_a_nodes_route_is_what_its_workers_published_else_its_names_defaults():
    from cachemgr.nodes import Route, route_of

    entries = {
        "a": {"queue": "custom", "key_prefix": "pfx:"},
        "old": {"key_prefix": "{old}:"},  # published before queues were
    }
    assert route_of("a", entries) == Route("custom", "pfx:", True)
    assert route_of("old", entries) == Route("cachemgr.old", "{old}:", True)
    assert route_of("b", entries) == Route("cachemgr.b", "{b}:", False)
    assert route_of("", {}) == Route("celery", "", False)


def test_a_client_used_before_its_node_was_published_follows_it_on_the_direct_path(
    settings, redis_client, root, prefix
):
    from cachemgr.passes import enforce_quota as evict
    from workers.client import CacheClient

    node = f"late{uuid.uuid4().hex[:8]}"
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, node=node, cluster=prefix.rstrip(":"))
    try:
        assert client.access("artist/album") is False  # a play before any worker of the node
        cache = DiskCache(settings.with_(disk_cache_node=node), redis_client)
        cache.publish_config(queue=f"cachemgr.{node}")  # its workers: their own key prefix
        make_tree(root, "artist/album", files=4)
        cache.register("artist/album")
        # The direct path kept the default keys: plays were misses, pins protected nothing.
        assert client.access("artist/album") is True and cache.info("artist/album").hits == 1
        client.pin_now("artist/album", ttl_seconds=600)
        for i in range(25):
            make_tree(root, f"other{i:02d}", files=4)
            cache.register(f"other{i:02d}")
        evict(cache)
        assert (root / "artist" / "album").is_dir(), "a pinned directory was evicted"
    finally:
        client.close()
        cleanup_prefix(redis_client, f"{{{node}}}:")


def test_a_client_that_found_no_config_looks_again_after_a_while(
    cache, root, redis_client, monkeypatch
):
    from workers import client as client_module
    from workers.client import CacheClient

    redis_client.delete(cache.keys.config)  # no worker has published it yet
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, key_prefix=cache.keys.prefix)
    try:
        assert client.store.policy.name == "lru"  # the defaults meanwhile
        monkeypatch.setattr(client_module, "CONFIG_RETRY_SECONDS", 0.0)
        client.refresh()
        assert client.store.policy.name == "lru"  # still missing: looked at again next time
        redis_client.hset(cache.keys.config, mapping={"policy": "sieve", "ttl_seconds": 60})
        assert client.store.policy.name == "sieve" and client.store.ttl_seconds == 60
        redis_client.delete(cache.keys.config)
        assert client.store.policy.name == "sieve"  # once found, kept (refresh() reads again)
    finally:
        client.close()
        cache.publish_config()


def test_for_path_takes_the_live_node_of_a_root_another_left(
    settings, redis_client, tmp_path, prefix
):
    from workers.client import CacheClient

    cluster = prefix.rstrip(":")
    live = DiskCache(
        settings.with_(
            disk_cache_node="live", disk_cache_key_prefix="{live}:", disk_cache_cluster=cluster
        ),
        redis_client,
    )
    gone = DiskCache(
        settings.with_(
            disk_cache_node="gone", disk_cache_key_prefix="{gone}:", disk_cache_cluster=cluster
        ),
        redis_client,
    )
    for node in (live, gone):  # one root: a node renamed, its old entry left behind
        node.registry.publish(node.settings)
    live.registry.heartbeat(live.keys)
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, cluster=cluster)
    try:
        target, rel = client.for_path(str(live.root / "artist" / "album"))
        assert (target.node, rel) == ("live", "artist/album")
        gone.registry.heartbeat(gone.keys)  # both alive: the path cannot say which
        with pytest.raises(Exception, match="several hosts"):
            client.for_path(str(live.root / "artist" / "album"))
    finally:
        client.close()
        cleanup_prefix(redis_client, "{live}:")
        cleanup_prefix(redis_client, "{gone}:")


def test_a_client_given_a_queue_no_worker_published_says_so(two_nodes, caplog):
    """CacheClient(queue="celeryy") sent every task to a queue nobody reads, unsaid (a
    misspelt node was said)."""
    from workers.client import CacheClient

    b = two_nodes["b"]
    cluster = b.settings.disk_cache_cluster
    b.registry.publish(b.settings, queue="b-queue")
    typo = CacheClient(REDIS_URL, redis_url=REDIS_URL, queue="b-qeue", cluster=cluster)
    right = CacheClient(REDIS_URL, redis_url=REDIS_URL, queue="b-queue", cluster=cluster)
    try:
        with caplog.at_level("WARNING", logger="cachemgr"):
            assert typo.queue == "b-qeue" and right.queue == "b-queue"
            typo.queue  # noqa: B018 - once a client: the route is kept
        said = [r.getMessage() for r in caplog.records if "has published queue" in r.getMessage()]
        assert said == [
            "no worker has published queue b-qeue (the nodes' workers read b-queue): its tasks "
            "wait there until one reads it (a misspelt queue?)"
        ]
    finally:
        typo.close()
        right.close()


def test_a_client_sending_to_a_broker_no_worker_reads_says_so(two_nodes, caplog, monkeypatch):
    """CELERY_BROKER_URL unset in a pipeline's shell (the default broker) or another's: its
    tasks waited for ever on a broker nobody read; the CLI waited 120 s, then blamed the task."""
    from cachemgr import connect
    from cachemgr.connection import broker_id
    from workers.client import CacheClient

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)  # the environment's would win
    b = two_nodes["b"]
    cluster, queue = b.settings.disk_cache_cluster, f"q-{uuid.uuid4().hex[:8]}"
    assert broker_id("redis://:pw@LOCALHOST/11?x=1") == broker_id(
        "redis://127.0.0.1:6379/11") != broker_id("redis://127.0.0.1:6379/12")  # fmt: skip
    urls = [side_db(11), side_db(12)]  # this test process's own databases
    theirs, mine = broker_id(urls[0]), broker_id(urls[1])
    b.registry.publish(b.settings, queue=queue, broker=theirs)
    clients = {
        url: CacheClient(url, redis_url=REDIS_URL, queue=queue, cluster=cluster) for url in urls
    }
    try:
        with caplog.at_level("WARNING", logger="cachemgr"):
            for client in clients.values():
                client.send("noop")
                client.send("noop")  # said once a client
        said = [
            r.getMessage() for r in caplog.records if r.__dict__.get("event") == "unread_broker"
        ]
        assert said == [
            f"tasks go to broker {mine}, which no node's workers read (they read {theirs}): "
            "they wait there until one does (the broker URL given, or CELERY_BROKER_URL, is "
            "not the workers'?)"
        ]
    finally:
        for url, client in clients.items():
            client.close()
            left = connect(url)
            left.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
            left.close()


def test_a_client_whose_keys_no_node_uses_or_whose_node_has_no_worker_says_so(
    two_nodes, prefix, caplog
):
    """A pipeline with another DISK_CACHE_KEY_PREFIX than the workers': pin_now answered a
    lease in keys no worker reads, protecting nothing, and its plays were misses, unsaid. With
    no worker of its node alive, a result's get() timed out in Celery's bare words."""
    from cachemgr import connect
    from workers.client import CacheClient

    b = two_nodes["b"]
    cluster = b.settings.disk_cache_cluster
    b.registry.publish(b.settings)  # published, not alive: no heartbeat
    wrong = CacheClient(redis_url=REDIS_URL, key_prefix=prefix, cluster=cluster)
    right = CacheClient(redis_url=REDIS_URL, node=b.settings.node, cluster=cluster)
    # A queue given without its node's keys: whose workers it reaches, this client cannot
    # tell (it warned that node b had none alive while they ran).
    by_queue = CacheClient(redis_url=REDIS_URL, queue=right.queue, cluster=cluster)
    try:
        with caplog.at_level("WARNING", logger="cachemgr"):
            for client in (wrong, right):
                assert client.access("album") is False
                client.access("album")  # said once a client
            right.send("noop")
            right.send("noop")  # once in a while, not at each send
            by_queue.send("noop")
        said = [r.getMessage() for r in caplog.records if r.__dict__.get("event") == "unread_keys"]
        assert said == [  # by_queue's keys are none of b's either: said too
            f"this client's books keys (prefix {mine!r}) are no node's (their workers use "
            f"{b.keys.prefix!r}): its pins protect nothing and its plays count nowhere "
            "(DISK_CACHE_KEY_PREFIX, or key_prefix given, is not the workers'?)"
            for mine in (prefix, "")
        ]
        idle = [r.getMessage() for r in caplog.records if r.__dict__.get("event") == "no_worker"]
        assert idle == [
            f"no worker of node {b.settings.node} is alive (no heartbeat): tasks sent to queue "
            f"{right.queue} wait until one starts (a result's get() times out meanwhile)"
        ]
    finally:
        queue = right.queue
        for client in (wrong, right, by_queue):
            client.close()
        left = connect(right.broker_url)
        left.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        left.close()


def test_a_client_given_nothing_routes_by_the_workers_environment(
    cache, root, monkeypatch, redis_client
):
    # With CACHEMGR_QUEUE and a key prefix set for the workers, a pipeline run in the same
    # environment sent its tasks to the default queue nobody consumed and counted its plays
    # under unprefixed keys, answering "miss" for every play (found by exploratory testing).
    from workers.client import CacheClient

    monkeypatch.setenv("CACHEMGR_QUEUE", "our-queue")
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", cache.keys.prefix)
    monkeypatch.setenv("DISK_CACHE_CLUSTER", cache.settings.disk_cache_cluster)
    make_tree(root, "a")
    cache.register("a")
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL)
    try:
        assert client.queue == "our-queue" and client.keys.prefix == cache.keys.prefix
        assert client.cluster == cache.settings.disk_cache_cluster
        assert client.access("a") is True and cache.info("a").hits == 1
    finally:
        client.close()
    explicit = CacheClient(REDIS_URL, redis_url=REDIS_URL, queue="theirs", key_prefix="")
    try:  # arguments still win over the environment
        assert explicit.queue == "theirs" and explicit.keys.prefix == ""
    finally:
        explicit.close()
    # A node named routes by what it published (or its defaults), never by this shell's
    # queue and prefix, which are another node's: tasks for B went to A's workers.
    monkeypatch.setenv("DISK_CACHE_NODE", "A")
    other = CacheClient(REDIS_URL, redis_url=REDIS_URL, node="B")
    try:
        assert other.queue == "cachemgr.B" and other.keys.prefix == "{B}:"
    finally:
        other.close()


def test_a_long_lived_client_follows_the_workers_ttl_and_access_log(
    cache, root, redis_client, monkeypatch
):
    """Workers restarted with another TTL or access-log cap, the same policy: a client made
    before kept the config it read first (a day's TTL, no log) until the pipeline restarted."""
    from workers import client as client_module
    from workers.client import CacheClient

    make_tree(root, "album", files=1)
    cache.register("album")
    redis_client.hset(cache.keys.config, mapping={"ttl_seconds": 86400, "access_log_maxlen": 0})
    client = CacheClient(REDIS_URL, redis_url=REDIS_URL, key_prefix=cache.keys.prefix)
    try:
        assert client.access("album") is True
        assert redis_client.xlen(cache.keys.accesses) == 0
        redis_client.hset(cache.keys.config, mapping={"ttl_seconds": 7200, "access_log_maxlen": 50})
        assert client.access("album") is True
        assert redis_client.xlen(cache.keys.accesses) == 0  # within CONFIG_REFRESH_SECONDS
        step = client_module.CONFIG_REFRESH_SECONDS + 1
        now = [time.monotonic() + step]
        clock = types.SimpleNamespace(monotonic=lambda: now[0], time=time.time)
        monkeypatch.setattr(client_module, "time", clock)  # the client's clock only
        assert client.access("album") is True
        assert redis_client.xlen(cache.keys.accesses) == 1
        assert 7100 < redis_client.ttl(cache.keys.dir("album")) <= 7200
        built = client.store
        now[0] += step
        redis_client.hset(cache.keys.config, "access_log_maxlen", 0)
        assert client.store is not built and client.store.access_log_maxlen == 0
        built = client.store
        now[0] += step
        assert client.store is built  # read again, unchanged: not rebuilt
        now[0] += step
        redis_client.delete(cache.keys.config)  # gone (a FLUSHDB): the last one stays
        assert client.store is built and client.store.ttl_seconds == 7200
    finally:
        client.close()
        redis_client.delete(cache.keys.accesses)
        cache.publish_config()


def test_beat_does_not_say_the_application_must_be_restarted(tmp_path):
    """After a long Redis outage beat logged Celery's "The Celery application must be
    restarted" (its result backend giving up), false: beat reconnects by itself."""
    import logging

    from celery import Celery

    from workers.beat import NodeScheduler
    from workers.results import BACKEND_NOISE

    backend_log = logging.getLogger("celery.backends.asynchronous")
    backend_log.removeFilter(BACKEND_NOISE)  # as in a beat process, where no client set it
    NodeScheduler(app=Celery("beat-noise"), schedule_filename=str(tmp_path / "schedule"))
    assert BACKEND_NOISE in backend_log.filters


def test_a_nodes_root_nested_in_anothers_is_none_of_its_downloads(
    settings, redis_client, cache, root
):
    """`cachemgr up --nodes 2` puts node1's and node2's roots under the root of a node named
    after the host: a cleanup there booked node1 as a download and evicted all its cache.
    Told by the inner root's marker on the disk, whatever the registry holds (lost with
    Redis, the inner node forgotten, or a shell with the disk mounted elsewhere)."""
    from cachemgr.reconcile import reconcile

    make_tree(root, "inner/album", files=2)  # the inner cache's download
    (root / "inner" / ".cachemgr-books").write_text("books: {inner}:cache:*\nroot: t\n")
    make_tree(root, "outer-album", files=2)
    make_tree(root, "holder/x/album", files=1)  # another cache's root deeper in a directory
    (root / "holder" / "x" / ".cachemgr-books").write_text("books: {x}:cache:*\n")
    plan = reconcile(cache, dry_run=True)  # as the real run's registration finds it
    assert plan["registered"] == ["outer-album"]
    assert [e["path"] for e in plan["errors"]] == ["holder"]
    assert "holds the root of another cache ('holder/x'" in plan["errors"][0]["error"]
    for path in ("inner", "inner/album"):
        with pytest.raises(Exception, match="the root of another cache"):
            cache.register(path)
    with pytest.raises(Exception, match="'holder' holds the root of another cache"):
        cache.register("holder")
    # Booked before it could be told: a reconcile untracks it, its files kept (it had the
    # outer node's real downloads evicted first), and so does a pass that chooses it.
    cache.store.register("inner", 8192, 2, now=time.time())
    assert "inner" in reconcile(cache)["untracked"]
    assert (root / "inner" / "album").is_dir() and not cache.store.tracked(["inner"])[0]
    cache.store.register("inner", 8192, 2, now=1.0)
    victim = next(e for e in cache.store.victims(10) if e.path == "inner")
    assert cache.take(victim, "evicted") == "vanished"
    assert (root / "inner" / "album").is_dir() and not cache.store.tracked(["inner"])[0]
    # A marker naming these very books (a root moved up a level) is no other cache's.
    (root / "outer-album" / ".cachemgr-books").write_text(f"books: {cache.keys.prefix}cache:*\n")
    assert cache.not_a_download("outer-album") is None
    # Nor is a file of that name with no books line (every marker has one): an album's own.
    make_tree(root, "odd/CD1", files=1)
    (root / "odd" / "CD1" / ".cachemgr-books").write_text("my notes\n")
    assert cache.register("odd")["status"] == "registered"
    # An empty one may be a marker a crash left before its data reached the disk: a root.
    make_tree(root, "crashed/album", files=1)
    (root / "crashed" / ".cachemgr-books").write_text("")
    with pytest.raises(Exception, match="the root of another cache"):
        cache.register("crashed")


def test_only_a_marker_read_tells_another_caches_root(cache, root, monkeypatch):
    """A marker that cannot be read (a directory the worker may not enter, EIO, a path past
    PATH_MAX) made the directory another cache's root: an album with one unreadable folder
    was refused, and a booked one untracked with its files left off the books."""
    import errno

    from cachemgr import nested

    make_tree(root, "album/Scans", files=1)
    # A marker there, naming other books, that cannot be read: no evidence.
    (root / "album" / "Scans" / ".cachemgr-books").write_text("books: {x}:cache:*\n")
    real = os.open

    def refused(path, *args, **kwargs):
        if str(path).endswith(".cachemgr-books") and "album" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(nested.os, "open", refused)
    assert cache.register("album")["status"] == "registered"
    assert cache.not_a_download("album", walk=True) is None


def test_a_root_nested_deeper_in_a_booked_directory_is_never_deleted(cache, root):
    """Eviction looked one level down: `holder/a/b`, another cache's root, was deleted with
    `holder` (booked by an older version); a reconcile resized it instead of untracking."""
    from cachemgr.reconcile import reconcile

    make_tree(root, "holder/a/b/album", files=2)
    (root / "holder" / "a" / "b" / ".cachemgr-books").write_text("books: {b}:cache:*\n")
    cache.store.register("holder", 4096, 1, now=1.0)
    plan = reconcile(cache, dry_run=True)
    assert plan["untracked"] == ["holder"] and plan["errors"] == []  # was listed twice
    report = reconcile(cache)
    assert report["untracked"] == ["holder"] and report["resized"] == []
    assert report["errors"] == []  # "changed by another meanwhile": met again, stale
    cache.store.register("holder", 4096, 1, now=1.0)
    assert cache.take(cache.store.victims(1)[0], "evicted") == "vanished"
    assert (root / "holder" / "a" / "b" / "album").is_dir()
    assert cache.store.count_entries() == 0


def test_a_named_pipe_called_like_a_marker_does_not_hold_the_worker(cache, root):
    """Opened blocking, a FIFO named .cachemgr-books in a download held the registration (and
    beat's look, reconcile, an eviction's walk) for good: a node of two workers stopped."""
    import threading

    make_tree(root, "album/cd1", files=1)
    os.mkfifo(root / "album" / "cd1" / ".cachemgr-books")
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(cache.register("album")), daemon=True)
    worker.start()
    worker.join(20)
    assert done and done[0]["status"] == "registered", "the registration hung on the pipe"
    assert cache.not_a_download("album", walk=True) is None


def test_a_named_pipe_as_the_roots_marker_does_not_hold_the_checks(cache, root):
    """The root's marker was read blocking too: every cleanup, registration and stats read
    checks it."""
    import threading

    from cachemgr import marker

    os.mkfifo(root / ".cachemgr-books")
    done: list[object] = []
    reader = threading.Thread(target=lambda: done.append(marker.swapped(cache)), daemon=True)
    reader.start()
    reader.join(20)
    assert done, "the root's check hung on the pipe"


def test_cli_stats_show_every_node_and_take_one_by_name(two_nodes, capsys):
    """`cachemgr stats` in a shell set for another node than the running ones (`up --nodes 2`
    and a shell without DISK_CACHE_NODE) said only "no worker of node vm is alive"; the API's
    stats had every node and their totals."""
    import json as _json

    from api import create_app

    a, b = two_nodes["a"], two_nodes["b"]
    for cache in (a, b):
        cache.registry.publish(cache.settings)
        cache.registry.heartbeat(cache.keys, ttl=60)
    make_tree(b.root, "album")
    b.register("album")
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": a.settings,
                      "REDIS_CLIENT": a.client})  # fmt: skip
    runner = app.test_cli_runner()
    both = _json.loads(runner.invoke(args=["stats", "--json"]).stdout)
    assert [n["node"] for n in both["nodes"]] == sorted([a.settings.node, b.settings.node])
    assert both["cluster"]["directory_count"] == 1 and both["directory_count"] == 0
    from api.cli_tables import stats_table

    stats_table(both, a.clock())  # at a terminal
    table = capsys.readouterr().out
    assert f"{a.settings.node} up, {b.settings.node} up" in table, table
    one = _json.loads(runner.invoke(args=["stats", "--node", b.settings.node, "--json"]).stdout)
    assert one["node"] == b.settings.node and one["directory_count"] == 1 and "nodes" not in one
    # A reset is one node's (this shell's, or --node's), whatever the output shows: said.
    reset = runner.invoke(args=["stats", "--reset", "--json"])
    assert f"the since-reset figures of node {a.settings.node} start afresh" in reset.stderr
    gone = runner.invoke(args=["stats", "--node", "nosuch"])
    assert gone.exit_code == 3 and "unknown node 'nosuch'" in gone.output
    unset = runner.invoke(args=["stats", "--node", ""])  # "$NODE" unset: not every node's
    assert unset.exit_code == 2 and "--node '': not a node's name" in unset.output, unset.output


def test_cli_acts_on_the_node_its_node_option_names(two_nodes):
    """`cachemgr --node NAME ...` is DISK_CACHE_NODE=NAME for one command: the CLI had no way
    but the environment to name a node (`up --nodes 2` printed which variable to export)."""
    a, b = two_nodes["a"], two_nodes["b"]
    b.registry.publish(b.settings)  # as its workers do
    make_tree(b.root, "album")
    b.register("album")
    env = {
        **os.environ, "REDIS_URL": REDIS_URL, "DISK_CACHE_ROOT": str(a.root),
        "DISK_CACHE_CLUSTER": a.settings.disk_cache_cluster, "DISK_CACHE_NODE": a.settings.node,
    }  # fmt: skip

    def cachemgr(*args: str) -> subprocess.CompletedProcess[str]:
        code = "import sys; from api.cli import main; sys.argv[0] = 'cachemgr'; main()"
        return subprocess.run([sys.executable, "-c", code, *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    named = cachemgr("--node", b.settings.node, "ls", "--json")
    assert named.returncode == 0 and json.loads(named.stdout)[0]["path"] == "album", named
    # This shell's root is a's: b's is the one b's workers published (`up --nodes 2`'s
    # export line names node1's; `--node node2 stats` said node2's cache was not working).
    theirs = cachemgr("--node", b.settings.node, "stats", "--json")
    said = json.loads(theirs.stdout)["warnings"]
    assert theirs.returncode == 0 and not any("cache root" in w for w in said), said
    # A write done here still needs this shell's root to be that node's: refused, nothing
    # recorded in b's books (a first fix took b's root for the shell's, and a reconcile
    # --force of an empty folder of that name here untracked b's downloads).
    (a.root / "album").write_bytes(b"x")  # a file of that name in this shell's root
    pinned = cachemgr("--node", b.settings.node, "pin", "album", "--ttl", "60")
    assert pinned.returncode == 0, pinned  # b's album: "path is a file" was of a's root
    here = cachemgr("--node", b.settings.node, "cleanup", "--now")
    assert here.returncode == 5 and "not done here" in here.stderr, here
    assert not b.client.exists(b.keys.last_cleanup)
    own = cachemgr("ls", "--json")
    assert own.returncode == 0 and json.loads(own.stdout) == [], own
    bad = cachemgr("--node", "a b", "ls")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "Error: --node 'a b': not a node's name: 1 to 100 of letters, digits, '_', '.' and '-'"
    )
    # A node no worker published: `ls` listed empty books and `pin` leased in keys no worker
    # reads, each exiting 0 (the API's ?node= answers 404). The shell's own node is its own.
    client = connect(REDIS_URL)
    try:
        export = str(b.root.parent / "accesses.csv")
        for args in (["ls"], ["pin", "album", "--ttl", "60"], ["scheduler", "stop"],
                     ["trace", "export", "-o", export]):  # fmt: skip
            misspelt = cachemgr("--node", "nosuch", *args)
            assert misspelt.returncode == 3, misspelt
            assert misspelt.stderr.startswith("Error: unknown node 'nosuch': no worker"), misspelt
            assert repr(b.settings.node) in misspelt.stderr  # the known ones, named
        assert not list(client.scan_iter(match="{nosuch}*"))
        assert a.settings.node not in a.registry.entries()  # not published (yet): its own
        own = cachemgr("--node", a.settings.node, "ls", "--json")
        assert own.returncode == 0 and json.loads(own.stdout) == [], own
        # A shell with no DISK_CACHE_NODE is the unnamed node, not one named after its host:
        # `--node <host>` leased in `{host}:` keys, which no worker reads.
        host = Settings(disk_cache_root=str(a.root)).node
        del env["DISK_CACHE_NODE"]
        hosts = cachemgr("--node", host, "pin", "album", "--ttl", "60")
        assert hosts.returncode == 3 and "unknown node" in hosts.stderr, hosts
    finally:
        client.close()


def test_a_client_asks_for_the_workers_broker_once_in_a_while_not_at_each_send(
    two_nodes, monkeypatch
):
    """Workers of a version that published no broker: every send read the registry again."""
    from workers import client as client_module
    from workers.client import CacheClient

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    b = two_nodes["b"]
    queue = f"q-{uuid.uuid4().hex[:8]}"
    b.registry.publish(b.settings, queue=queue)  # no broker named
    client = CacheClient(side_db(11), redis_url=REDIS_URL, queue=queue,
                         cluster=b.settings.disk_cache_cluster)  # fmt: skip
    reads = []
    real = client_module.NodeRegistry.entries

    def counted(self):
        reads.append(1)
        return real(self)

    monkeypatch.setattr(client_module.NodeRegistry, "entries", counted)
    try:
        for _ in range(5):
            client.send("noop")
    finally:
        client.close()
        from cachemgr import connect

        left = connect(side_db(11))
        left.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        left.close()
    assert len(reads) <= 2, reads  # the route's, and the broker's once


def test_a_worker_refuses_a_node_whose_queue_another_live_node_reads(
    two_nodes, monkeypatch
):
    """Two nodes' workers on one CACHEMGR_QUEUE: a removal sent for node2 ran on node1's
    worker and deleted node1's directory of that name."""
    from cachemgr.settings import SettingsError
    from workers import app as worker_app

    a, b = two_nodes["a"], two_nodes["b"]
    a.registry.publish(a.settings, queue="shared")
    assert b.registry.shared_with(b.settings, "shared") is None  # a's workers are not alive
    a.registry.heartbeat(a.keys)
    said = b.registry.shared_with(b.settings, "shared")
    assert said == (
        f"node {a.settings.node!r}, alive, reads queue 'shared' too (set CACHEMGR_QUEUE apart, "
        "or unset it): a task for one node would run on the other's books and disk (a node "
        f"gone for good: `cachemgr forget-node {a.settings.node}` once its workers have been "
        "gone 30 s)"
    )
    assert b.registry.shared_with(b.settings, f"cachemgr.{b.settings.node}") is None
    # A node renamed keeps its books (and its queue): their liveness is its own, not another's.
    renamed = b.settings.with_(disk_cache_key_prefix=a.keys.prefix)
    assert b.registry.shared_with(renamed, "shared") is None
    unnamed = b.settings.with_(disk_cache_node="")  # its other host names are itself
    assert b.registry.shared_with(unnamed, "shared") is None
    monkeypatch.setitem(worker_app.app.conf, "task_default_queue", "shared")
    with pytest.raises(SettingsError, match=f"node {b.settings.node!r}: node"):
        worker_app._not_shared(b)  # as it starts: it stops, exit 5
