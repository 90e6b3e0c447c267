"""Reliability under real processes: concurrency, a worker killed mid-eviction, Redis flushed,
Redis down and back. Each test is bounded; all are marked slow."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cachemgr import CacheError, DiskCache, connect, scanner
from cachemgr import events as event_log
from cachemgr.reconcile import reconcile
from tests.conftest import REDIS_URL, make_tree, side_db, trash_items

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent
BROKER = side_db(12)  # a broker of their own: not the session worker's
QUEUE = f"reliability-{os.getpid()}"  # and a queue of their own, in case two runs share a machine


def queue_of(settings) -> str:
    """Each test's own queue (its key prefix is its own): a task one test left behind (a
    retry, the rest of a cleanup, sent for later) is not run by the next test's workers
    against its books (the soak's quota pass ran the next test's recovery)."""
    return f"{QUEUE}-{settings.key_prefix.rstrip(':')}"


def worker_env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    env.update(
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=BROKER,
        CELERY_RESULT_BACKEND=BROKER,
        DISK_CACHE_ROOT=settings.disk_cache_root,
        DISK_CACHE_KEY_PREFIX=settings.key_prefix,
        DISK_CACHE_CLUSTER=settings.disk_cache_cluster,  # its registry too, cleaned with it
        DISK_CACHE_MAX_BYTES=str(settings.disk_cache_max_bytes),
        CACHEMGR_QUEUE=queue_of(settings),
        **extra,
    )
    return env


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "prefork", "-c", "2",
         "-l", "WARNING", "-n", f"reliability-{time.monotonic_ns()}@%h", "--without-mingle",
         "--without-gossip"],
        env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def client_for_workers(cache):
    from workers.client import CacheClient

    old = {k: os.environ.pop(k, None) for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    client = CacheClient(
        BROKER, redis_url=REDIS_URL, key_prefix=cache.keys.prefix, backend=BROKER,
        queue=queue_of(cache.settings),
    )
    yield client
    client.close()
    for k, v in old.items():
        if v is not None:
            os.environ[k] = v


def assert_books_match_disk(cache: DiskCache, root: Path) -> None:
    records = cache.store.all_records()
    assert cache.store.total_bytes() == sum(r[0] for r in records.values())
    for path, (size, files, _, _) in records.items():
        assert (root / path).is_dir(), f"tracked {path} is gone from disk"
        found = scanner.scan(root / path)
        assert (found.size_bytes, found.file_count) == (size, files), path


def test_concurrency_soak(settings, redis_client, root, client_for_workers):
    cache = DiskCache(settings.with_(disk_cache_max_bytes=40 * 5 * 4096), redis_client)
    names = [f"album{i:02d}" for i in range(60)]
    for name in names:
        make_tree(root, name, files=4)
    cache.register("album00")
    cache.pin("album00", 600)  # held for the whole run: must never go
    proc = start_worker(worker_env(cache.settings))
    client = client_for_workers
    stop_at = time.monotonic() + 18
    registered: Counter[str] = Counter()
    errors: list[str] = []
    pending = []
    lock = threading.Lock()

    def actor(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop_at:
            name = rnd.choice(names[1:])
            op = rnd.random()
            try:
                if op < 0.35:
                    make_tree(root, name, files=4)
                    result = client.register(name)
                    with lock:
                        pending.append((name, result))
                elif op < 0.65:
                    client.access(name)
                elif op < 0.75:
                    client.pin_now(name, 2)
                elif op < 0.85:
                    with lock:
                        pending.append(("", client.remove(name, remove_files=rnd.random() < 0.5)))
                else:
                    with lock:
                        pending.append(("", client.cleanup()))
            except (CacheError, FileNotFoundError, FileExistsError):
                # Refusals, and our own make_tree racing with a deletion (pathlib's mkdir with
                # exist_ok raises EEXIST when the folder went between its mkdir and is_dir).
                pass
            except Exception as exc:  # anything else is a defect the test must show
                errors.append(repr(exc))
            time.sleep(rnd.random() * 0.02)

    threads = [threading.Thread(target=actor, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for name, result in pending:
            try:
                value = result.get(timeout=60, propagate=False)
            except Exception as exc:
                errors.append(f"task lost: {exc!r}")
                continue
            if result.failed() and not isinstance(value, CacheError):
                errors.append(f"task failed: {value!r}")  # a refusal is a CacheError
            if name and isinstance(value, dict) and value.get("status") == "registered":
                registered[name] += 1
        assert client.cleanup().get(timeout=60)["status"] in ("done", "skipped")
    finally:
        stop(proc)
    assert errors == []
    cache.store.drop_lapsed_pins()
    assert (root / "album00").is_dir() and cache.store.tracked(["album00"]) == [True]
    assert_books_match_disk(cache, root)
    deletions = Counter(
        e["path"] for e in event_log.latest(cache.store, 100000) if e.get("files_deleted") == "1"
    )
    for path, n in deletions.items():
        assert n <= registered[path] + (path == "album00"), f"{path} deleted more often than made"


@pytest.mark.parametrize("lock_timeout", [2, 300])
def test_worker_killed_mid_eviction(settings, redis_client, root, client_for_workers, lock_timeout):
    """At 300 s (the default) the killed worker's cleanup lock stood 10 s (every quota pass
    skipped meanwhile) and its directory's lock 5 minutes (the directory off the books, its
    recovery waiting): the next worker on this machine takes both over at once. At 2 s they
    lapse before it comes, as a dead worker's on another machine do."""
    cache = DiskCache(settings.with_(disk_cache_lock_timeout_seconds=lock_timeout), redis_client)
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    env = worker_env(cache.settings, DISK_CACHE_LOCK_TIMEOUT_SECONDS=str(lock_timeout))
    paused = start_worker({**env, "CACHEMGR_TEST_PAUSE_BEFORE_DELETE": "60"})
    try:
        client_for_workers.cleanup()
        deadline = time.monotonic() + 30
        while not cache.store.unfinished_deletions() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cache.store.unfinished_deletions(), "the worker never reached the deletion"
    finally:
        stop(paused, signal.SIGKILL)
    if lock_timeout < 10:
        time.sleep(lock_timeout + 0.5)  # the dead worker's locks lapse
    else:
        assert cache.client.exists(cache.keys.cleanup_lock)  # the dead worker's, standing
    fresh = start_worker(env)
    try:
        result = client_for_workers.cleanup().get(timeout=60)
    finally:
        stop(fresh)
    assert result["status"] == "done", result
    assert result["recovered"]  # the interrupted directory was put back, then judged again
    assert cache.store.unfinished_deletions() == {}
    assert not trash_items(root)
    assert cache.store.total_bytes() <= cache.settings.threshold_bytes
    assert_books_match_disk(cache, root)


def worker_on(url: str, settings, monkeypatch) -> tuple[subprocess.Popen[bytes], Any]:
    """A worker of this test's node whose broker, results and books are all at `url`, and a
    Celery app to send it tasks: its first one answered (it is ready)."""
    from celery import Celery

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):  # they would win over `url`
        monkeypatch.delenv(name, raising=False)
    env = worker_env(settings)
    env.update(REDIS_URL=url, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url)
    proc = start_worker(env)
    app = Celery(broker=url, backend=url)
    try:
        assert app.send_task("cachemgr.noop", queue=queue_of(settings)).get(timeout=60) is None
    except BaseException:
        app.close()
        stop(proc)
        raise
    return proc, app


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, without persistence, that the test may flush or stop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    state = {"proc": start(), "url": f"redis://127.0.0.1:{port}/0", "start": start}
    yield state
    state["proc"].terminate()
    state["proc"].wait()


def test_flushall_then_reconcile_restores_byte_for_byte(settings, root, own_redis):
    from api import create_app

    client = connect(own_redis["url"])
    cache = DiskCache(settings, client)
    for i in range(12):
        make_tree(root, f"d{i:02d}", files=1 + i % 4)
        cache.register(f"d{i:02d}")
    before = {p: r[:2] for p, r in cache.store.all_records().items()}
    total = cache.store.total_bytes()
    app = create_app({"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": client,
                      "CELERY_BROKER_URL": own_redis["url"]})  # fmt: skip
    web = app.test_client()
    client.flushall()
    for url in ("/cache/stats", "/cache/directories", "/cache/directories/d01", "/readyz"):
        status = web.get(url).status_code
        assert status in (200, 404, 503), (url, status)
    assert web.get("/cache/stats").get_json()["total_bytes"] == 0
    report = reconcile(cache)
    assert sorted(report["registered"]) == sorted(before)
    assert {p: r[:2] for p, r in cache.store.all_records().items()} == before
    assert cache.store.total_bytes() == total


def test_redis_down_answers_503_and_recovers(settings, root, own_redis, monkeypatch):
    from api import create_app

    # Celery lets CELERY_BROKER_URL win over the app's config: this test's broker is its own.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    client = connect(own_redis["url"])
    app = create_app({"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": client,
                      "CELERY_BROKER_URL": own_redis["url"],
                      "CELERY_RESULT_BACKEND": own_redis["url"]})  # fmt: skip
    web = app.test_client()
    make_tree(root, "a")
    assert web.get("/cache/stats").status_code == 200
    own_redis["proc"].terminate()
    own_redis["proc"].wait()
    for method, url in (("get", "/cache/stats"), ("post", "/cache/register/a"),
                        ("post", "/cache/cleanup"), ("get", "/readyz")):  # fmt: skip
        r = getattr(web, method)(url)
        assert r.status_code == 503, (url, r.status_code, r.get_data(as_text=True))
        assert r.get_json()["status"] in (503, "unavailable")
    own_redis["proc"] = own_redis["start"]()
    deadline = time.monotonic() + 10
    while web.get("/cache/stats").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert web.get("/cache/stats").status_code == 200
    assert web.post("/cache/register/a").status_code == 202


def test_a_redis_out_of_memory_for_a_while_does_not_stop_the_worker(
    settings, own_redis, monkeypatch
):
    """maxmemory reached (noeviction) for a few seconds with a task waiting for its ETA: the
    worker's consumer met OOM on the broker and Celery stopped the worker for good
    ("Unrecoverable error: OutOfMemoryError"); the node stayed down until a restart."""
    from api import create_app

    url = own_redis["url"]
    proc, app = worker_on(url, settings, monkeypatch)
    try:
        app.send_task("cachemgr.noop", queue=queue_of(settings), countdown=3)  # held by the worker
        client = connect(url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        # Meanwhile /readyz says so: PING answered, and it had said ready.
        web = create_app({"CACHEMGR_SETTINGS": settings, "REDIS_CLIENT": client,
                          "CELERY_BROKER_URL": url}).test_client()  # fmt: skip
        ready = web.get("/readyz")
        assert ready.status_code == 503
        checks = ready.get_json()["checks"]
        assert checks["redis"].startswith("refuses writes: ")
        # It still answers reads: the other checks are made, not "Redis does not answer".
        assert checks["enabled"] == "ok" and checks["root"] == "ok", checks
        warnings = web.get("/cache/stats").get_json()["warnings"]  # said there too
        assert any("of its maxmemory" in w and "refuses every write" in w for w in warnings)
        time.sleep(6)
        client.config_set("maxmemory", "0")
        assert web.get("/readyz").get_json()["checks"]["redis"] == "ok"
        time.sleep(2)
        assert proc.poll() is None, "the worker stopped"
        assert app.send_task("cachemgr.noop", queue=queue_of(settings)).get(timeout=60) is None
    finally:
        app.close()
        stop(proc)


@pytest.mark.parametrize("outage", [1, 8])
def test_a_worker_holding_a_task_outlives_a_restart_of_its_redis(
    settings, own_redis, monkeypatch, outage
):
    """Redis restarted while the worker held a task due later (a retry behind a lock, a
    quota pass's continuation) or ran one acknowledged late (every registration): celery 5.7
    closed the released connection again and the worker stopped for good, "Unrecoverable
    error: AttributeError("'NoneType' object has no attribute 'hostname'")"."""
    from celery import Celery

    url = own_redis["url"]
    proc, app = worker_on(url, settings, monkeypatch)
    try:
        app.send_task("cachemgr.noop", queue=queue_of(settings), countdown=60)  # held
        time.sleep(1)  # received: unacknowledged, in the worker's hands
        own_redis["proc"].terminate()
        own_redis["proc"].wait()
        time.sleep(outage)
        own_redis["proc"] = own_redis["start"]()
        time.sleep(3)
        assert proc.poll() is None, "the worker stopped"
        app.close()
        app = Celery(broker=url, backend=url)
        done = app.send_task("cachemgr.noop", queue=queue_of(settings))
        assert done.get(timeout=60) is None  # and it consumes again
    finally:
        app.close()
        stop(proc)


def test_a_malformed_task_message_is_refused_and_the_worker_goes_on(
    settings, own_redis, monkeypatch
):
    """A body holding only the args list (a hand-written client's) raised ValueError in
    Celery's request: "Unrecoverable error", the worker stopped, restored the message, and
    every worker started after it stopped on it again. A pickled task waited forever."""
    import uuid

    from celery.result import AsyncResult
    from kombu import Connection

    url = own_redis["url"]
    proc, app = worker_on(url, settings, monkeypatch)
    try:
        queue, sent = queue_of(settings), {}
        with Connection(url) as conn:
            producer = conn.Producer()
            for label, body in (("args alone", ["artist/album"]), ("a mapping", {"not": 1}),
                                ("kwargs a string", [["artist/album"], "x", {}])):  # fmt: skip
                task_id = sent[label] = str(uuid.uuid4())
                producer.publish(
                    body, routing_key=queue, exchange="", serializer="json",
                    headers={"lang": "py", "task": "cachemgr.register_directory", "id": task_id,
                             "root_id": task_id, "parent_id": None, "retries": 0},
                )  # fmt: skip
            # A protocol 1 body under protocol 2 headers, which Celery converts: it runs.
            hybrid = str(uuid.uuid4())
            producer.publish(
                {"task": "cachemgr.noop", "id": hybrid, "args": [], "kwargs": {}},
                routing_key=queue, exchange="", serializer="json",
                headers={"task": "cachemgr.noop", "id": hybrid},
            )  # fmt: skip
        pickled = app.send_task("cachemgr.touch_directory", ["artist/album"], queue=queue,
                                serializer="pickle")  # fmt: skip
        assert AsyncResult(hybrid, app=app).get(timeout=60) is None
        assert app.send_task("cachemgr.noop", queue=queue).get(timeout=60) is None
        assert proc.poll() is None, "the worker stopped"
        for task_id in sent.values():
            result = AsyncResult(task_id, app=app)
            with pytest.raises(Exception, match=r"must be \[args, kwargs, embed\]"):
                result.get(timeout=30)
            assert result.state == "FAILURE"
        with pytest.raises(Exception, match="pickle"):
            pickled.get(timeout=30)
        # Dropped, not restored for the next worker: the queue is empty.
        assert connect(url).llen(queue) == 0
    finally:
        app.close()
        stop(proc)


def test_a_send_while_redis_is_down_raises_what_readme_says(settings, own_redis, monkeypatch):
    """Redis away: the second send raised Celery's bare RuntimeError ("Retry limit exceeded
    ... The Celery application must be restarted"), which a pipeline catching kombu's
    OperationalError, as README says a send raises, did not catch; the client worked again
    once Redis was back."""
    from kombu.exceptions import OperationalError

    from workers.client import CacheClient

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    url = own_redis["url"]
    client = CacheClient(url, redis_url=url, backend=url, queue="nobody-reads-this")
    try:
        client.send("noop")
        own_redis["proc"].terminate()
        own_redis["proc"].wait()
        for _ in range(3):
            with pytest.raises(OperationalError):
                client.send("noop").get(timeout=5)
        own_redis["proc"] = own_redis["start"]()
        assert client.send("noop").id  # sent again: no restart needed
    finally:
        client.close()


def test_a_write_with_only_the_result_backend_away_says_the_backend(
    settings, own_redis, monkeypatch
):
    """The broker up, the result backend's Redis away: the API said the broker could not be
    reached (503 broker_unavailable), and so did the CLI. The write is queued (its answer is
    subscribed to when awaited, not as it is sent): only a wait for it meets the backend."""
    import socket as _socket

    from api import create_app

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):  # they would win
        monkeypatch.delenv(name, raising=False)
    with _socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"  # nothing listens there
    config = {"CELERY_BROKER_URL": own_redis["url"], "CELERY_RESULT_BACKEND": dead}
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": settings, **config})
    books = DiskCache(settings, connect(settings.redis_url))
    books.registry.heartbeat(books.keys, ttl=60)  # a worker alive: a write may be waited for
    queued = app.test_client().post("/cache/cleanup")
    assert queued.status_code == 202 and queued.get_json()["state"] == "PENDING"
    said = app.test_client().post("/cache/cleanup?wait=5").get_json()
    assert said["status"] == 503 and said["code"] == "backend_unavailable", said
    # The status URL too (README): it said the books' Redis could not be reached.
    said = app.test_client().get(queued.get_json()["status_url"]).get_json()
    assert said["status"] == 503 and said["code"] == "backend_unavailable", said


def test_a_hung_redis_is_a_json_503_within_seconds(settings, own_redis, monkeypatch):
    """Redis stopped (SIGSTOP: it still accepts connections, answers nothing): the API's read
    waited 10 s a try, tried again, and gunicorn killed it at 30 s with an HTML 500; the CLI
    took 40 s. An interactive client waits 5 s, once."""
    from api import create_app

    hung = settings.with_(redis_url=own_redis["url"])
    monkeypatch.setenv("CELERY_BROKER_URL", own_redis["url"])  # the environment's wins
    app = create_app({"TESTING": True, "CACHEMGR_SETTINGS": hung})
    client = app.test_client()
    assert client.get("/cache/stats").status_code == 200
    assert client.get("/readyz").status_code == 200
    own_redis["proc"].send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = client.get("/cache/stats")
        waited = time.monotonic() - started
        started = time.monotonic()
        ready = client.get("/readyz")  # Redis, and the broker on it, hung
        ready_waited = time.monotonic() - started
    finally:
        own_redis["proc"].send_signal(signal.SIGCONT)
    assert r.status_code == 503 and r.get_json()["code"] == "redis_unavailable", r.data[:200]
    assert waited < 15, waited  # not a speed figure: under gunicorn's 30 s, which killed it
    checks = ready.get_json()["checks"]
    # The broker is the books' server: not asked again (3 s more).
    assert ready.status_code == 503, checks
    assert checks["broker"] == f"the books' Redis server: {checks['redis']}", checks
    assert checks["redis"].startswith("unreachable") and ready_waited < 15, ready_waited


def test_a_hung_redis_is_waited_for_once_per_request_not_once_per_read(
    settings, own_redis, monkeypatch
):
    """The stats read makes two calls, the status page three, and each waited its 5 s: 10 s
    for /metrics, as long as Prometheus' scrape timeout, so `cachemgr_up 0` never reached it;
    15 s for the page. Once a reply did not come, the client fails at once for as long again
    (each app here has its own client: its own wait)."""
    from api import create_app
    from cachemgr.connection import INTERACTIVE_SECONDS

    hung = settings.with_(redis_url=own_redis["url"])
    monkeypatch.setenv("CELERY_BROKER_URL", own_redis["url"])  # the environment's wins
    apps = {
        url: create_app({"TESTING": True, "CACHEMGR_SETTINGS": hung}).test_client()
        for url in ("/cache/stats", "/metrics", "/")
    }
    for url, client in apps.items():
        assert client.get(url).status_code == 200, url
    own_redis["proc"].send_signal(signal.SIGSTOP)
    replies, waits = {}, {}
    try:
        for url, client in apps.items():
            started = time.monotonic()
            replies[url] = client.get(url)
            waits[url] = time.monotonic() - started
            if url == "/cache/stats":  # within the wait (its own client's): at once
                started = time.monotonic()
                again = client.get(url)
                waits["again"] = time.monotonic() - started
    finally:
        own_redis["proc"].send_signal(signal.SIGCONT)
    # One wait each, not two or three (a count of waits, told apart by seconds).
    assert all(w < 2 * INTERACTIVE_SECONDS - 1 for w in waits.values()), waits
    assert replies["/cache/stats"].status_code == 503
    assert "cachemgr_up 0" in replies["/metrics"].get_data(as_text=True)
    assert replies["/"].status_code == 503
    assert again.status_code == 503 and waits["again"] < 1, waits
    assert "did not answer within 5 s a moment ago" in again.get_json()["message"]
    time.sleep(INTERACTIVE_SECONDS)  # Redis answers again: so does the API
    assert apps["/cache/stats"].get("/cache/stats").status_code == 200


def test_an_api_write_through_a_hung_redis_is_a_json_503_within_seconds(
    settings, root, own_redis, monkeypatch
):
    """A write reads the node's route, then sends through Celery's connections to the same
    Redis: the route's read waited without end (its own client), then Celery's backend 25 s,
    and gunicorn killed the request at 30 s with an HTML 500."""
    from api import create_app

    hung = settings.with_(redis_url=own_redis["url"], disk_cache_node="hungnode")
    monkeypatch.setenv("CELERY_BROKER_URL", own_redis["url"])  # the environment's wins
    monkeypatch.setenv("CELERY_RESULT_BACKEND", own_redis["url"])
    client = create_app({"TESTING": True, "CACHEMGR_SETTINGS": hung}).test_client()
    assert client.get("/cache/stats").status_code == 200
    make_tree(root, "a")
    own_redis["proc"].send_signal(signal.SIGSTOP)
    replies, waits = [], []
    try:
        for url in ("/cache/register/a", "/cache/cleanup", "/cache/directories/a/pin"):
            started = time.monotonic()
            replies.append(client.post(url))
            waits.append(time.monotonic() - started)
    finally:
        own_redis["proc"].send_signal(signal.SIGCONT)
    for reply in replies:
        assert reply.status_code == 503 and reply.get_json()["code"] == "redis_unavailable"
    assert waits[0] < 10 and max(waits[1:]) < 2, waits  # once: under gunicorn's 30 s


def test_a_pipelines_play_through_a_hung_redis_fails_within_seconds(own_redis, monkeypatch):
    """The pipeline client's books were a worker's patient connection: each play (access) and
    each pin_now through a hung Redis waited 20 s (10 s, tried again) before failing."""
    import redis

    from cachemgr.connection import INTERACTIVE_SECONDS
    from workers.client import CacheClient

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    client = CacheClient(own_redis["url"], redis_url=own_redis["url"])
    assert client.access("album") is False
    own_redis["proc"].send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.access("album")
        waited = time.monotonic() - started
    finally:
        own_redis["proc"].send_signal(signal.SIGCONT)
        client.close()
    assert waited < INTERACTIVE_SECONDS + 2, waited


def test_events_follow_outlasts_an_interactive_clients_reply_timeout(settings, root):
    """`cachemgr events --follow` exited with "Redis cannot be reached" after 5 quiet seconds:
    its XREAD blocked 5 s, as long as the CLI's client waits for a reply."""
    from cachemgr.connection import INTERACTIVE_SECONDS

    client = connect(settings.redis_url, interactive=True)
    cache = DiskCache(settings, client)
    make_tree(root, "a")
    cache.register("a")
    later = threading.Timer(INTERACTIVE_SECONDS + 1.5, lambda: cache.remove("a"))
    later.start()
    event = next(event_log.follow(cache.store))  # quiet for longer than the reply timeout
    later.join()  # its removal done before the client goes
    assert event["event"] == "removed" and event["path"] == "a"
    client.close()


def test_events_follow_waits_out_a_redis_restart(settings, root, own_redis):
    """`cachemgr events --follow` ended at the first Redis blip ("Redis cannot be reached"):
    an operator watching lost the stream, silently. It waits, says so, and goes on."""
    client = connect(own_redis["url"], interactive=True)
    cache = DiskCache(settings.with_(redis_url=own_redis["url"]), client)
    said: list[str] = []
    make_tree(root, "a")
    cache.register("a")

    def restart_then_remove() -> None:
        own_redis["proc"].terminate()
        own_redis["proc"].wait()
        time.sleep(1.5)
        own_redis["proc"] = own_redis["start"]()
        time.sleep(6)  # past the client's fail-fast window
        cache.store.register("b", 1, 1, now=time.time())
        cache.remove("b")

    stream = event_log.follow(
        cache.store, block_ms=500, retry_seconds=0.2,
        away=lambda exc: said.append("away" if exc else "back"),
    )  # fmt: skip
    later = threading.Timer(0.5, restart_then_remove)
    later.start()
    try:
        event = next(stream)
    finally:
        later.join()  # its restart done (the fixture stops the Redis it started last)
        client.close()
    assert event["event"] == "removed" and event["path"] == "b", event
    assert said == ["away", "back"]
