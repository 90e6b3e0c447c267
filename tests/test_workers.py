"""Every task end to end through a real worker, sent by name as the pipeline sends them."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from cachemgr import DiskCache
from cachemgr.errors import BadArgument
from cachemgr.stats import counters
from tests.conftest import REDIS_URL, make_tree, park, side_db

UNIT = 5 * 4096
WAIT = 20


def test_register_and_touch_by_name(pipeline, cache, root):
    make_tree(root, "artist/album", files=4)
    result = pipeline.register("artist/album").get(timeout=WAIT)
    assert result["status"] == "registered" and result["size_bytes"] == UNIT
    assert cache.info("artist/album").size_bytes == UNIT
    assert pipeline.touch("artist/album").get(timeout=WAIT) == {"path": "artist/album", "hit": True}
    assert pipeline.touch("nope", 99).get(timeout=WAIT)["hit"] is False
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["missed_bytes"] == 99


def test_tasks_sent_and_not_waited_for_leave_nothing_to_read(pipeline, cache, root):
    """Celery subscribed to each result's channel as the task was sent: a pipeline that
    never waited (touches, pins) had every result and unsubscription pile up unread in its
    client (28 MB after 180,000 sends, then a 5 s stall). Subscribed when awaited, none is
    missed: the answers of tasks long done are still there."""
    from workers.app import app
    from workers.results import AwaitedRedisBackend

    make_tree(root, "album")
    cache.register("album")
    sent = [pipeline.touch("album") for _ in range(20)]
    consumer = pipeline.app.backend.result_consumer
    assert not getattr(consumer, "subscribed_to", None)  # nothing subscribed, nothing to read
    assert isinstance(pipeline.app.backend, AwaitedRedisBackend)
    deadline = time.monotonic() + WAIT
    while cache.stats()["hits"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)  # every one done before anyone waits
    assert [r.get(timeout=WAIT)["hit"] for r in sent] == [True] * 20
    assert isinstance(app.backend, AwaitedRedisBackend)  # beat's and the API's sends too


def test_an_answer_whose_subscription_came_late_is_still_got(pipeline, cache, root, monkeypatch):
    """get() subscribes, then reads the stored answer, and redis-py does not wait for the
    subscription to take: one that reached Redis after the answer was published (a slow
    link) left get() waiting for ever, the answer stored."""
    make_tree(root, "album")
    cache.register("album")
    sent = pipeline.touch("album")
    backend = pipeline.app.backend
    deadline = time.monotonic() + WAIT
    while backend.get_task_meta(sent.id, cache=False)["status"] != "SUCCESS":
        assert time.monotonic() < deadline, "the touch never ran"
        time.sleep(0.05)
    monkeypatch.setattr(backend.result_consumer, "consume_from", lambda task_id: None)
    read = backend._get_task_meta_for
    reads: list[str] = []

    def first_before_the_answer(task_id: str) -> dict:
        reads.append(task_id)
        return {"status": "PENDING", "result": None} if len(reads) == 1 else read(task_id)

    monkeypatch.setattr(backend, "_get_task_meta_for", first_before_the_answer)
    assert sent.get(timeout=WAIT) == {"path": "album", "hit": True}
    assert len(reads) >= 2


def test_the_results_no_one_reads_are_not_stored(cache, root, monkeypatch):
    """Beat's cleanups and the registrations' quota passes stored a result each (5.7 KB) for
    a day, read by none: their outcome is the books'."""
    import celeryconfig
    from workers import tasks

    [entry] = celeryconfig.beat_schedule.values()
    assert entry["options"]["ignore_result"] is True
    sent: list[dict] = []
    monkeypatch.setattr(tasks.cleanup, "apply_async", lambda **options: sent.append(options))
    tasks.configure(cache)
    try:
        tasks._quota_pass_if_due({"over_threshold": True, "low_disk": False})
    finally:
        park()
    assert sent == [{"kwargs": {"automatic": True}, "ignore_result": True}]
    assert celeryconfig.result_expires == 3600


def test_register_completed_download(pipeline, cache, root):
    make_tree(root, "older")
    time.sleep(0.02)
    make_tree(root, "latest")
    assert pipeline.register_completed_download().get(timeout=WAIT)["path"] == "latest"
    assert cache.store.tracked(["latest", "older"]) == [True, False]


def test_remove_by_name_with_and_without_files(pipeline, cache, root):
    make_tree(root, "a")
    make_tree(root, "b")
    cache.register("a")
    cache.register("b")
    assert pipeline.send("remove_directory", "a").get(timeout=WAIT)["files_deleted"] is False
    assert (root / "a").is_dir()
    assert pipeline.remove("b", remove_files=True).get(timeout=WAIT)["files_deleted"] is True
    assert not (root / "b").exists()
    assert cache.store.count_entries() == 0


def test_cleanup_task_expires_and_evicts_real_directories(
    worker, pipeline, settings, redis_client, root
):
    from workers import tasks

    cache = DiskCache(settings.with_(disk_cache_ttl_seconds=1), redis_client)
    tasks.configure(cache)
    make_tree(root, "stale", files=4)
    cache.register("stale")
    time.sleep(1.1)
    for i in range(19):
        make_tree(root, f"fresh{i:02d}", files=4)
        cache.register(f"fresh{i:02d}")
    result = pipeline.send("cleanup").get(timeout=WAIT)
    assert result["sweep"]["paths"] == ["stale"]
    assert result["evict"]["paths"] == ["fresh00", "fresh01", "fresh02"]
    assert not (root / "stale").exists() and not (root / "fresh00").exists()
    assert cache.store.total_bytes() == 16 * UNIT


def test_sweep_and_enforce_tasks(pipeline, cache, root):
    for i in range(19):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    assert pipeline.send("sweep_expired").get(timeout=WAIT)["sweep"]["count"] == 0
    assert pipeline.send("enforce_quota").get(timeout=WAIT)["evict"]["count"] == 3


def test_two_cleanups_at_once_one_is_skipped(pipeline, cache, root):
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    cache.before_delete = lambda path: time.sleep(0.3)
    first, second = pipeline.cleanup(), pipeline.cleanup()
    results = [first.get(timeout=WAIT), second.get(timeout=WAIT)]
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["done", "skipped"]
    skipped = next(r for r in results if r["status"] == "skipped")
    assert skipped["reason"] == "another cleanup is running"


def test_stop_scheduler_then_periodic_cleanup_deletes_nothing(pipeline, cache, root):
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    cache.set_scheduler(False)
    assert cache.stats()["scheduler_running"] is False
    periodic = pipeline.send("cleanup", periodic=True).get(timeout=WAIT)
    assert periodic == {"status": "skipped", "reason": "scheduler stopped"}
    assert cache.store.count_entries() == 20
    cache.set_scheduler(True)
    assert pipeline.send("cleanup", periodic=True).get(timeout=WAIT)["evict"]["count"] == 4


@contextlib.contextmanager
def quota_passes() -> Iterator[list[dict]]:
    """The quota passes the session worker runs meanwhile, each's return value as it ends (they
    store no result: read by none but tests). Its id is taken before it is sent: another
    thread of the worker may run it to its end before the sender's after_task_publish."""
    from celery.signals import before_task_publish, task_postrun

    sent: set[str] = set()
    done: list[dict] = []

    def published(sender=None, headers=None, **_: object) -> None:
        if sender == "cachemgr.cleanup":
            sent.add(headers["id"])  # sent by this test's registration, in the session worker

    def ran(task_id=None, retval=None, **_: object) -> None:
        if task_id in sent:
            done.append(retval)

    before_task_publish.connect(published, weak=False)
    task_postrun.connect(ran, weak=False)
    try:
        yield done
    finally:
        before_task_publish.disconnect(published)
        task_postrun.disconnect(ran)


def first_of(done: list[dict]) -> dict:
    deadline = time.monotonic() + WAIT
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done, "no quota pass ran"
    return done[0]


def test_a_stopped_scheduler_also_stops_evictions_that_registrations_trigger(
    pipeline, cache, root
):
    for i in range(19):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    cache.set_scheduler(False)
    make_tree(root, "last", files=4)
    with quota_passes() as done:
        result = pipeline.register("last").get(timeout=WAIT)
        assert result["over_threshold"] is True
        automatic = first_of(done)
    assert automatic == {"status": "skipped", "reason": "scheduler stopped"}
    assert cache.store.count_entries() == 20


def test_a_registrations_quota_pass_expires_what_outlived_its_ttl_before_it_evicts(
    pipeline, cache, root
):
    """It sent a quota pass alone: the directories whose TTL had run out were evicted and
    counted as evictions, and under a policy other than LRU live ones went while they stayed."""
    for i in range(19):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    outlived = cache.clock() - cache.settings.disk_cache_ttl_seconds - 60
    cache.client.zadd(cache.keys.lru, {"d07": outlived, "d11": outlived})
    make_tree(root, "last", files=4)
    with quota_passes() as passes:
        assert pipeline.register("last").get(timeout=WAIT)["over_threshold"] is True
        done = first_of(passes)
    assert sorted(done["sweep"]["paths"]) == ["d07", "d11"], done
    assert not {"d07", "d11"} & set(done["evict"]["paths"])
    counters = cache.stats()
    assert counters["expirations"] == 2 and counters["evictions"] == done["evict"]["count"]


def test_manual_cleanup_ignores_the_scheduler_switch(pipeline, cache, root):
    for i in range(20):
        make_tree(root, f"d{i:02d}", files=4)
        cache.register(f"d{i:02d}")
    cache.set_scheduler(False)
    assert pipeline.cleanup().get(timeout=WAIT)["evict"]["count"] == 4


def test_disabled_switch_turns_everything_off(worker, pipeline, settings, redis_client, root):
    from workers import tasks

    off = DiskCache(settings.with_(enable_disk_cache_management=False), redis_client)
    tasks.configure(off)
    make_tree(root, "a")
    for name, args in [
        ("register_directory", ("a",)),
        ("register_completed_download", ()),
        ("touch_directory", ("a",)),
        ("remove_directory", ("a", True)),
        ("sweep_expired", ()),
        ("enforce_quota", ()),
        ("cleanup", ()),
        ("reconcile", ()),
    ]:
        assert pipeline.send(name, *args).get(timeout=WAIT) == {"status": "disabled"}, name
    assert (root / "a").is_dir() and off.store.count_entries() == 0


def test_a_bad_path_fails_at_once_with_a_clear_message(pipeline):
    started = time.monotonic()
    result = pipeline.send("register_directory", "../etc")
    with pytest.raises(Exception) as err:
        result.get(timeout=WAIT)
    assert "'..'" in str(err.value)
    assert result.state == "FAILURE"
    assert time.monotonic() - started < WAIT  # no retry with backoff happened


@pytest.mark.parametrize("bad", ["abc", 1.5, -1, True, 2**62])
def test_a_bad_miss_size_fails_the_touch_and_counts_nothing(pipeline, cache, bad):
    before = counters(cache.store)[0]
    result = pipeline.send("touch_directory", "never-seen", bad)
    with pytest.raises(Exception) as err:
        result.get(timeout=WAIT)
    assert "miss_bytes" in str(err.value) and result.state == "FAILURE"
    assert counters(cache.store)[0] == before  # the miss was not half counted


@pytest.mark.parametrize("flag", ["0", 0.5, 1, None, "false"])
def test_a_flag_that_is_not_a_boolean_is_refused_and_nothing_is_deleted(
    pipeline, cache, root, flag
):
    make_tree(root, "p")
    cache.register("p")
    cache.pin("p", 3600)
    result = pipeline.send("remove_directory", "p", flag)
    with pytest.raises(Exception) as err:
        result.get(timeout=WAIT)
    assert "remove_files must be true or false" in str(err.value)
    assert (root / "p").is_dir() and cache.store.tracked(["p"]) == [True]


def test_reconcile_refuses_a_force_that_is_not_a_boolean(pipeline, cache, root):
    make_tree(root, "x")
    cache.register("x")
    for child in (root / "x").iterdir():
        child.unlink()
    (root / "x").rmdir()  # the root is empty, as an unmounted disk leaves it
    result = pipeline.send("reconcile", force="false")
    with pytest.raises(Exception) as err:
        result.get(timeout=WAIT)
    assert "force must be true or false" in str(err.value)
    assert cache.store.tracked(["x"]) == [True]  # the books were not emptied


@pytest.mark.parametrize("ttl", ["10", None, True, float("nan"), 0, 1e-7, 8 * 86400])
def test_a_bad_pin_ttl_is_refused_in_one_line(pipeline, cache, root, ttl):
    make_tree(root, "a")
    cache.register("a")
    result = pipeline.send("pin_directory", "a", ttl)
    with pytest.raises(Exception) as err:
        result.get(timeout=WAIT)
    assert "ttl_seconds must be a number of seconds" in str(err.value)
    assert cache.info("a").pinned_until is None


def test_pins_through_tasks(pipeline, cache, root):
    make_tree(root, "a")
    cache.register("a")
    assert pipeline.pin("a", 60).get(timeout=WAIT)["path"] == "a"
    assert cache.info("a").pinned(time.time())
    assert pipeline.unpin("a").get(timeout=WAIT)["unpinned"] is True
    assert not cache.info("a").pinned(time.time())


def test_direct_access_and_batch_use_the_same_books(pipeline, cache, root):
    make_tree(root, "a")
    cache.register("a")
    assert pipeline.access("a") is True
    assert pipeline.access_many(["a", "b", "a"]) == [True, False, True]
    assert cache.info("a").hits == 3 and cache.stats()["misses"] == 1
    # One string is no batch: iterated, it played each of its letters ("ab": a hit of `a`).
    with pytest.raises(BadArgument, match="paths must be a list, not one string"):
        pipeline.access_many("ab")
    assert cache.info("a").hits == 3 and cache.stats()["misses"] == 1


def test_the_worker_emits_task_events(worker, pipeline, cache, root):
    seen: list[str] = []

    def capture() -> None:
        with worker.connection_for_read() as conn:
            recv = worker.events.Receiver(
                conn, handlers={"task-succeeded": lambda e: seen.append(e["uuid"])}
            )
            try:
                recv.capture(limit=None, timeout=5, wakeup=True)
            except TimeoutError:
                pass

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    time.sleep(0.5)
    make_tree(root, "a")
    result = pipeline.register("a")
    result.get(timeout=WAIT)
    deadline = time.monotonic() + 5
    while result.id not in seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert result.id in seen


def test_the_access_log_is_opt_in_and_capped(worker, settings, redis_client, root):
    from tests.conftest import BROKER_URL, REDIS_URL, TEST_QUEUE
    from workers import tasks
    from workers.client import CacheClient

    cache = DiskCache(settings.with_(disk_cache_access_log_maxlen=50), redis_client)
    tasks.configure(cache)  # publishes the cap for pipeline clients
    make_tree(root, "a")
    cache.register("a")
    client = CacheClient(BROKER_URL, redis_url=REDIS_URL, key_prefix=cache.keys.prefix,
                         queue=TEST_QUEUE)  # fmt: skip
    for _ in range(200):
        client.access("a")
    client.access("gone", miss_bytes=7)
    log = redis_client.xrevrange(cache.keys.accesses, count=1)
    assert log[0][1]["path"] == "gone" and log[0][1]["hit"] == "0" and log[0][1]["size"] == "7"
    assert redis_client.xlen(cache.keys.accesses) == 50  # a small cap is held exactly
    client.close()
    # ...through the batch path too, and the events stream with a small cap likewise.
    batch = DiskCache(settings.with_(disk_cache_access_log_maxlen=5), redis_client)
    batch.store.access_many(["a"] * 300)
    assert redis_client.xlen(cache.keys.accesses) == 5
    few = DiskCache(settings.with_(disk_cache_events_maxlen=3), redis_client)
    for i in range(20):
        make_tree(root, f"e{i:02d}")
        few.register(f"e{i:02d}")
        few.remove(f"e{i:02d}")
    assert redis_client.xlen(cache.keys.events) == 3


def test_no_access_log_by_default(cache, root):
    make_tree(root, "a")
    cache.register("a")
    cache.access("a")
    assert cache.client.exists(cache.keys.accesses) == 0


@pytest.mark.parametrize(
    "setting,said",
    [
        ("DISK_CACHE_TTL_SECONDS=abc", "DISK_CACHE_TTL_SECONDS='abc'"),
        ("DISK_CACHE_LOG_LEVEL=BOGUS", "DISK_CACHE_LOG_LEVEL='BOGUS': not a log level"),
    ],
)
def test_a_worker_with_bad_settings_stops_in_one_line(tmp_path, setting, said):
    # Rather than say "ready" and fail every task it is sent with a traceback.
    import os
    import subprocess
    import sys

    name, _, value = setting.partition("=")
    env = {
        **os.environ,
        "DISK_CACHE_ROOT": str(tmp_path),
        name: value,
        "CACHEMGR_QUEUE": f"badsettings-{os.getpid()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "solo",
         "-n", f"badsettings-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert f"worker stopping: {said}" in log and "Traceback" not in log, log[-2000:]
    assert " ready." not in log  # it said ready after saying it was stopping
    assert done.returncode == 5  # a supervisor must not read it as success


def test_the_node_is_published_with_the_queue_its_workers_consume(worker, cache):
    # CACHEMGR_QUEUE (here the tests' own queue) overrides the node's queue: every other
    # process (the pipeline's for_path, the API's ?node=) must send there, not to cachemgr.<node>.
    entry = cache.registry.entries()[cache.settings.node]
    assert entry["queue"] == worker.conf.task_default_queue != "celery"


def test_a_refused_cleanup_is_one_line_in_the_workers_log(pipeline, cache, root, tmp_path):
    """The cleanup's ERROR line said it, then the failed task's WARNING said it again."""
    import logging

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    make_tree(root, "a")
    cache.register("a")
    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("cachemgr")
    logger.addHandler(handler)
    away = tmp_path / "unmounted"
    root.rename(away)
    try:
        with pytest.raises(Exception, match="does not exist|mounted"):
            pipeline.send("cleanup").get(timeout=WAIT)
        time.sleep(0.3)  # the failure signal runs in the worker's thread
    finally:
        logger.removeHandler(handler)
        away.rename(root)
    said = [r.getMessage() for r in seen if "is not a directory" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("cleanup refused: "), said


def test_a_failed_task_is_logged_as_a_warning_by_cachemgr(pipeline):
    import logging

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("cachemgr.workers")
    logger.addHandler(handler)
    try:
        result = pipeline.send("register_directory", "not-on-disk")
        with pytest.raises(Exception, match="not-on-disk"):
            result.get(timeout=WAIT)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)  # the signal runs in the worker's thread
    finally:
        logger.removeHandler(handler)
    [record] = [r for r in seen if "register_directory failed" in r.getMessage()]
    assert record.levelno == logging.WARNING and "NotOnDisk" in record.getMessage()


def test_the_heartbeat_publishes_a_flushed_node_again_and_never_outlives_a_shutdown(
    settings, redis_client, monkeypatch
):
    import threading

    from workers import app as worker_app
    from workers import tasks

    cache = DiskCache(settings, redis_client)
    monkeypatch.setattr(worker_app, "HEARTBEAT_SECONDS", 0.05)
    built = iter([RuntimeError("the Redis Cluster does not answer yet"), cache])

    def get_cache_once_redis_answers() -> DiskCache:
        got = next(built, cache)
        if isinstance(got, Exception):
            raise got
        return got

    monkeypatch.setattr(tasks, "get_cache", get_cache_once_redis_answers)
    monkeypatch.setattr(tasks, "current_cache", lambda: cache)
    # This test's own switch and lock: the module's are left as they were.
    monkeypatch.setattr(worker_app, "_stop", threading.Event())
    monkeypatch.setattr(worker_app, "_beating", threading.Lock())
    # Started while the cache could not be built: it is built and announced by the beats.
    beating = threading.Thread(target=worker_app._beat_forever, args=(None, False), daemon=True)
    beating.start()
    registry, node = cache.registry, settings.node

    def announced() -> bool:  # published first, then alive: wait for both
        return bool(
            redis_client.hexists(registry.nodes_key, node)
            and redis_client.exists(cache.keys.alive)
        )

    deadline = time.monotonic() + 5
    while not announced() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert announced()
    # The books are flushed: the next beats publish the node and its config again.
    redis_client.delete(registry.nodes_key, cache.keys.config)
    deadline = time.monotonic() + 5
    while not redis_client.exists(cache.keys.config) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis_client.hexists(registry.nodes_key, node) and redis_client.exists(cache.keys.config)
    # A beat slowed down in flight while the worker shuts down: the node stays down after.
    real_heartbeat = type(registry).heartbeat

    def slow_heartbeat(self, *args, **kwargs):
        time.sleep(0.2)
        return real_heartbeat(self, *args, **kwargs)

    monkeypatch.setattr(type(registry), "heartbeat", slow_heartbeat)
    time.sleep(0.1)  # a beat is now in flight
    worker_app.goodbye()
    beating.join(5)
    time.sleep(0.3)
    assert not beating.is_alive() and not redis_client.exists(cache.keys.alive)


def test_a_fresh_worker_process_meets_a_root_gone_since_start_as_a_failed_cleanup(
    monkeypatch, settings, root
):
    # A prefork child builds its cache on its first task. With the disk unmounted since the
    # worker started, that build refused the root as a bad setting: the cleanup answered a
    # 500-like task failure and no failed pass was recorded (found by exploratory testing).
    from cachemgr import RootMissing
    from cachemgr.clock import RedisClock
    from workers import tasks

    monkeypatch.setenv("DISK_CACHE_ROOT", str(root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DISK_CACHE_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DISK_CACHE_CLUSTER", settings.disk_cache_cluster)  # its registry too
    away = root.with_name("unmounted")
    root.rename(away)
    tasks.configure(None)
    try:
        with pytest.raises(RootMissing, match="mounted"):
            tasks.cleanup.run()
        cache = tasks.get_cache()
        assert cache.client.hget(cache.keys.last_cleanup, "status") == "failed"
        # A worker's cache books by Redis's clock (its host's may be hours off).
        assert isinstance(cache.clock, RedisClock)
    finally:
        park()
        away.rename(root)


def test_a_reconcile_that_books_past_the_threshold_sends_a_quota_pass(pipeline, cache, root):
    """Lost downloads booked by reconcile took usage past the quota, and the disk stayed
    there until beat's next periodic cleanup (an hour by default)."""
    from cachemgr.cleanup import cleanup

    make_tree(root, "d00", files=9)  # 40 KiB each with the directory, quota 400 KiB
    cache.register("d00")
    cleanup(cache)  # the marker: a plain reconcile below, not a rebuild
    for i in range(1, 12):
        make_tree(root, f"d{i:02d}", files=9)  # lost registrations
    done = pipeline.send("reconcile").get(timeout=WAIT)
    assert done["over_threshold"] is True and len(done["registered"]) == 11
    deadline = time.monotonic() + 20
    while cache.store.total_bytes() > cache.settings.target_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.store.total_bytes() <= cache.settings.target_bytes


def test_tasks_retry_through_minutes_of_redis_away():
    """Eight jittered retries gave up after 30-65 s of Redis away: a queued registration was
    lost to a restart. The budget must span several minutes on average (jitter draws each
    wait between 0 and its step: half of it on average)."""
    import redis

    import workers.tasks  # noqa: F401 - registers the tasks
    from workers.app import app

    for name in ("register_directory", "cleanup", "pin_directory", "touch_directory"):
        task = app.tasks[f"cachemgr.{name}"]
        assert redis.ConnectionError in task.autoretry_for, name
        assert task.retry_backoff and task.retry_jitter, name
        steps = [min(2**k, task.retry_backoff_max) for k in range(task.max_retries)]
        assert sum(steps) / 2 >= 5 * 60, name


def test_a_cleanup_task_sent_a_wrong_argument_names_the_task():
    """It said `_pass_task.<locals>.run() got an unexpected keyword argument 'bogus'`."""
    import pytest

    from workers.tasks import cleanup, enforce_quota

    for task, name in ((cleanup, "cachemgr.cleanup"), (enforce_quota, "cachemgr.enforce_quota")):
        with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument"):
            task.run(bogus=1)  # in the worker
        short = name.removeprefix("cachemgr.")
        with pytest.raises(TypeError, match=rf"^{short}\(\) got an unexpected keyword argument"):
            task.apply_async(kwargs={"bogus": 1})  # checked before it is sent


def test_a_registration_redelivered_past_a_dead_workers_lock_is_booked_once_it_lapses(
    pipeline, cache, root
):
    """A worker killed mid-scan leaves its directory lock until it lapses; Celery redelivers
    the registration at once, which found the lock, answered "skipped" as a success, and the
    download never reached the books. It is sent again until the lock lapses."""
    make_tree(root, "huge1", files=3)
    cache.client.set(cache.keys.lock("huge1"), "a-killed-worker", px=4000)
    started = time.monotonic()
    done = pipeline.send("register_directory", "huge1").get(timeout=60)
    assert done["status"] == "registered", done
    assert time.monotonic() - started >= 3.5  # booked after the lapse, not before
    assert cache.store.tracked(["huge1"]) == [True]


def test_a_removal_redelivered_past_a_dead_workers_lock_removes_once_it_lapses(
    pipeline, cache, root
):
    """A worker killed mid-deletion leaves the directory's lock until it lapses; the
    redelivered removal answered "skipped: locked" as a success and the files stayed (the
    journal's recovery put the directory back on the books). It is sent again until then."""
    make_tree(root, "gone1", files=2)
    cache.register("gone1")
    cache.client.set(cache.keys.lock("gone1"), "a-killed-worker", px=3000)
    started = time.monotonic()
    done = pipeline.send("remove_directory", "gone1", remove_files=True).get(timeout=60)
    assert done["status"] == "removed" and done["files_deleted"] is True, done
    assert time.monotonic() - started >= 2.5  # after the lapse, not before
    assert not (root / "gone1").exists() and cache.store.tracked(["gone1"]) == [False]


def test_a_registration_locked_through_every_retry_fails_rather_than_succeeds(
    cache, root, monkeypatch
):
    from cachemgr import registration
    from cachemgr.errors import StillLocked
    from workers import tasks

    monkeypatch.setattr(registration, "REGISTER_WAITS", ())
    make_tree(root, "held")
    cache.client.set(cache.keys.lock("held"), "someone", px=60_000)
    tasks.configure(cache)
    task = tasks.register_directory
    last = max(task.max_retries, tasks.retries_to_outlast(300))
    task.push_request(retries=last, headers={tasks.LOCK_RETRIES: last})  # the last try
    try:
        said = "never free for its registration .* send it again, or run"
        with pytest.raises(StillLocked, match=said):
            task.run("held")
    finally:
        task.pop_request()
        park()
    assert cache.store.tracked(["held"]) == [False]


def test_a_task_sent_arguments_it_does_not_take_is_a_bad_argument(pipeline, cache, caplog):
    """Celery logged a wrong-arity task as a bug of ours, with a 12-line traceback."""
    import logging

    from celery.exceptions import TimeoutError as CeleryTimeout

    caplog.set_level(logging.INFO)
    for args, kwargs, said in (
        ((), {}, "missing a required argument: 'path'"),
        (("x", "y"), {}, "too many positional arguments"),
        (("x",), {"pth": 1}, "got an unexpected keyword argument 'pth'"),
        # A misspelt required one: said as `path` missing alone.
        ((), {"pth": "x"}, "missing a required argument: 'path'; unexpected keyword "
                           "argument(s): 'pth'"),
    ):
        result = pipeline.app.send_task(
            "cachemgr.register_directory", args=args, kwargs=kwargs, queue=pipeline.queue
        )
        with pytest.raises(Exception) as caught:
            result.get(timeout=WAIT)
        assert not isinstance(caught.value, CeleryTimeout)
        assert type(caught.value).__name__ == "BadArgument", caught.value
        assert str(caught.value) == f"cachemgr.register_directory: {said}"
    assert "Traceback" not in caplog.text


def test_a_newest_download_skipped_for_a_lock_is_sent_again_by_its_path(pipeline, cache, root):
    """Sent again as it was, `register_completed_download` would ask anew for the newest
    download, and book another one that finished meanwhile instead of the one skipped."""
    make_tree(root, "album-a", files=2)
    cache.client.set(cache.keys.lock("album-a"), "a-killed-worker", px=4000)
    done = pipeline.send("register_completed_download").get(timeout=WAIT)
    assert done["status"] == "skipped" and done["sent_again"] is True and done["path"] == "album-a"
    time.sleep(0.05)
    make_tree(root, "album-b", files=1)  # newer, finished meanwhile
    deadline = time.monotonic() + 30
    while not cache.store.tracked(["album-a"])[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cache.store.tracked(["album-a", "album-b"]) == [True, False]


@pytest.mark.parametrize(("name", "requeue"), [("register_directory", True),
                                                ("touch_directory", False)])  # fmt: skip
def test_a_retry_that_cannot_be_sent_puts_a_late_acked_task_back(monkeypatch, name, requeue):
    """Redis went away mid-registration: the task's retry goes through the broker, that same
    Redis, and Celery answered the failed send with Reject(requeue=False), dropping the task:
    the download never reached the books."""
    import redis
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError

    from workers import tasks

    task = getattr(tasks, name)
    task = getattr(task, "_get_current_object", lambda: task)()  # not Celery's lazy proxy

    class Unsendable:
        def apply_async(self, *args, **kwargs):
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(task, "signature_from_request", lambda *a, **k: Unsendable())
    task.push_request(id="t1", retries=0, is_eager=False, called_directly=False,
                      args=("a",), kwargs={}, delivery_info={})  # fmt: skip
    try:
        with pytest.raises(Reject) as caught:
            task.retry(exc=redis.ConnectionError("gone"), countdown=1)
    finally:
        task.pop_request()
    assert caught.value.requeue is requeue  # only a late-acked task is still the broker's


def test_a_result_backend_that_gives_up_is_said_to_the_pipeline_in_our_words(
    pipeline, monkeypatch, caplog
):
    """A Redis restart under `cache.register(path).get()`: Celery raised a bare RuntimeError,
    "The Celery application must be restarted", which it need not be (the same client went on
    registering once Redis was back), and logged it as CRITICAL."""
    import logging

    from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED
    from celery.result import AsyncResult

    from workers.client import ResultUnavailable, TaskResult

    scope: dict = {"__name__": "celery.backends.asynchronous", "log": logging.getLogger(
        "celery.backends.asynchronous"), "said": E_RETRY_LIMIT_EXCEEDED}  # fmt: skip
    exec("def give_up(*a, **kw):\n    log.critical(said)\n    raise RuntimeError(said)", scope)
    monkeypatch.setattr(AsyncResult, "get", scope["give_up"])
    sent = pipeline.send("noop")
    assert isinstance(sent, TaskResult) and sent.app is pipeline.app
    with pytest.raises(ResultUnavailable, match="send it again") as caught:
        sent.get(timeout=1)
    assert isinstance(caught.value, ConnectionError) and sent.id in str(caught.value)
    assert "restarted" not in caplog.text
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(sent)), copy.deepcopy(sent)):  # as Celery's were
        assert isinstance(again, TaskResult) and again.id == sent.id  # and says it alike
        with pytest.raises(ResultUnavailable):
            again.get(timeout=1)


def test_a_client_used_before_a_fork_answers_in_every_process(pipeline, cache, root):
    """Parent and children shared its result backend's connection: four children and the
    parent waited for answers together, and five of them timed out though every task ran."""
    names = [f"f{i}" for i in range(5)]
    for name in names:
        make_tree(root, name)
    assert pipeline.register(names[0]).get(timeout=WAIT)["status"] == "registered"
    children = []
    for name in names[1:]:
        pid = os.fork()
        if pid == 0:  # the child: its answer, then out at once (no pytest teardown here)
            try:
                done = pipeline.register(name).get(timeout=WAIT)["status"] == "registered"
            except BaseException:
                done = False
            os._exit(0 if done else 1)
        children.append(pid)
    mine = [pipeline.send("noop").get(timeout=WAIT) for _ in range(3)]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0, 0] and len(mine) == 3
    assert cache.store.tracked(names) == [True] * 5


def test_a_result_backend_refused_or_hung_is_said_to_the_pipeline_in_our_words(
    pipeline, monkeypatch
):
    """Refused or hung before the wait, redis-py's ConnectionError or TimeoutError came out of
    get() and state: neither the ConnectionError nor the OperationalError README names."""
    import redis
    from celery.result import AsyncResult

    from workers.client import ResultUnavailable

    sent = pipeline.send("noop")
    for error in (redis.ConnectionError, redis.TimeoutError):
        scope: dict = {"__name__": "redis.connection", "error": error}
        exec("def away(*a, **kw):\n    raise error('Connection refused')", scope)
        monkeypatch.setattr(AsyncResult, "get", scope["away"])
        monkeypatch.setattr(AsyncResult, "_get_task_meta", scope["away"])
        with pytest.raises(ResultUnavailable, match="send it again"):
            sent.get(timeout=1)
        with pytest.raises(ResultUnavailable, match="send it again"):
            assert sent.state
        with pytest.raises(ResultUnavailable):
            sent.ready()
    # A task's own error, re-raised by Celery, is the task's: not taken for the backend's.
    scope = {"__name__": "celery.result", "error": redis.ConnectionError}
    exec("def failed(*a, **kw):\n    raise error('the books away in the worker')", scope)
    monkeypatch.setattr(AsyncResult, "get", scope["failed"])
    with pytest.raises(redis.ConnectionError, match="books away in the worker"):
        sent.get(timeout=1)


@pytest.mark.parametrize("timeout", [1, 300, 3600, 6000, 86400])
def test_the_retries_behind_a_lock_outlast_the_longest_lock(timeout):
    """Their waits doubled from 2 s while their number assumed 300 s each: behind a dead
    worker's lock of an hour or more, StillLocked came before the lock lapsed."""
    from workers.tasks import retries_to_outlast, retry_wait

    limit = max(20, retries_to_outlast(timeout))
    assert sum(retry_wait(n) for n in range(limit - 3)) >= timeout
    assert retry_wait(0) == 2 and retry_wait(100) == 300


def _registration_retried(cache, monkeypatch, path: str, *, retries: int, lock_retries: int):
    """Runs register_directory(path) as a worker would on a redelivery with those counts, and
    returns the options of the retry it sends (instead of a message to the broker)."""
    from celery.exceptions import Retry

    from workers import tasks

    task = tasks.register_directory
    task = getattr(task, "_get_current_object", lambda: task)()
    sent: list[dict] = []

    class Capture:
        def __init__(self, options):
            self.options = options

        def apply_async(self, *args, **kwargs):
            sent.append(self.options)

    def signature_from_request(request=None, args=None, kwargs=None, queue=None, **options):
        return Capture({**request.as_execution_options(), **options})  # as Celery's does

    monkeypatch.setattr(task, "signature_from_request", signature_from_request)
    tasks.configure(cache)
    task.push_request(id="t1", retries=retries, headers={tasks.LOCK_RETRIES: lock_retries},
                      is_eager=False, called_directly=False, args=(path,), kwargs={},
                      delivery_info={})  # fmt: skip
    try:
        with pytest.raises(Retry):
            task.run(path)
    finally:
        task.pop_request()
        park()
    # Celery kept a given max_retries on the task, for every later request's autoretry.
    assert "override_max_retries" not in task.__dict__
    assert len(sent) == 1
    return sent[0]


def test_the_retries_behind_a_lock_do_not_spend_the_budget_for_a_lost_redis(
    cache, root, monkeypatch
):
    """One counter for both: behind a lock of over an hour (more than 20 lock retries), a
    Redis blip found the 20 Redis retries spent and failed the task, losing the download."""
    from workers import tasks

    def redis_away(path):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(cache, "register", redis_away)
    sent = _registration_retried(cache, monkeypatch, "a", retries=25, lock_retries=25)
    assert sent["retries"] == 26 and sent["headers"][tasks.LOCK_RETRIES] == 25


def test_the_retries_after_a_lost_redis_do_not_shorten_the_wait_behind_a_lock(
    cache, root, monkeypatch
):
    """Redis retries counted as lock retries: a registration that had waited out a Redis
    restart (20 retries) and then met a lock failed at once, "never free"."""
    from cachemgr import registration
    from workers import tasks

    monkeypatch.setattr(registration, "REGISTER_WAITS", ())
    make_tree(root, "held")
    cache.client.set(cache.keys.lock("held"), "someone", px=60_000)
    sent = _registration_retried(cache, monkeypatch, "held", retries=20, lock_retries=2)
    assert sent["headers"][tasks.LOCK_RETRIES] == 3 and sent["retries"] == 21
    assert sent["countdown"] == tasks.retry_wait(2)  # the third lock wait, not the 21st


def test_the_count_of_lock_retries_rises_through_the_broker(pipeline, cache, root, monkeypatch):
    """The count travels in the retry's headers: were it lost on the way (0 each time), a
    task behind a lock that never lapses would be sent again forever, never said lost."""
    from cachemgr import registration
    from workers import tasks

    monkeypatch.setattr(registration, "REGISTER_WAITS", ())
    monkeypatch.setattr(tasks, "retry_wait", lambda retries: 0.2)
    monkeypatch.setattr(tasks, "retries_to_outlast", lambda timeout: 3)
    task = tasks.register_directory
    task = getattr(task, "_get_current_object", lambda: task)()
    monkeypatch.setattr(task, "max_retries", 2)
    make_tree(root, "held")
    cache.client.set(cache.keys.lock("held"), "someone", px=60_000)
    with pytest.raises(Exception, match="never free for its registration .* after 3 retries"):
        pipeline.send("register_directory", "held").get(timeout=30)
    assert cache.store.tracked(["held"]) == [False]


def test_the_one_url_a_pipeline_gives_its_client_wins_over_its_redis_url(
    pipeline, cache, root, monkeypatch
):
    """A pipeline's own REDIS_URL (its own Redis) took the books: `CacheClient(url)` sent
    its tasks to `url` but booked its pins and plays in the other Redis, where nothing read
    them: a stream "pinned" was not protected, its plays were misses."""
    from workers.client import CacheClient

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # the pipeline's own
    url = cache.settings.redis_url
    given = CacheClient(url, key_prefix=cache.keys.prefix)
    elsewhere = CacheClient("amqp://guest@127.0.0.1//", key_prefix=cache.keys.prefix)
    named = CacheClient(url, redis_url="redis://127.0.0.1:2/0", key_prefix=cache.keys.prefix)
    try:
        assert (given.redis_url, given.shares_books_server) == (url, True)
        assert elsewhere.redis_url == "redis://127.0.0.1:1/0"  # RabbitMQ's: the environment's
        assert not elsewhere.shares_books_server and named.redis_url == "redis://127.0.0.1:2/0"
        make_tree(root, "streamed")
        cache.register("streamed")
        assert given.pin_now("streamed", 600, holder="stream-7")["pinned_until"]
        assert given.access("streamed") is True
        assert cache.info("streamed").pinned_until and cache.info("streamed").hits == 1
    finally:
        for client in (given, elsewhere, named):
            client.close()
    # The mirror: the workers' REDIS_URL in the environment, a broker URL of its own given
    # (a database where no worker published): the books stay where the workers keep them.
    monkeypatch.setenv("REDIS_URL", url)
    broker_only = side_db(13)
    cluster = cache.settings.disk_cache_cluster
    cache.registry.publish(cache.settings)  # as the workers do, in their cluster's registry
    beside = CacheClient(broker_only, key_prefix=cache.keys.prefix, cluster=cluster)
    try:
        assert beside.redis_url == url and beside.pin_now("streamed", 60, holder="s-8")
        assert {h.holder for h in cache.info("streamed").holders or []} >= {"s-8"}
    finally:
        beside.close()


def test_a_worker_whose_floor_is_beyond_its_disk_stops_at_start(root, monkeypatch):
    import shutil
    from collections import namedtuple

    from cachemgr.paths import BOOKS_MARKER
    from workers import app as worker_app

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 9 * 10**8, 10**8))
    monkeypatch.setenv("DISK_CACHE_ROOT", str(root))
    monkeypatch.setenv("DISK_CACHE_MIN_FREE_BYTES", "1GB")
    worker_app._settings_or_stop()  # the root not marked yet: maybe a disk not mounted
    (root / BOOKS_MARKER).write_text("books: cache:*\n")
    with pytest.raises(SystemExit) as stopped:
        worker_app._settings_or_stop()
    assert stopped.value.code == worker_app.EXIT_BAD_SETTINGS


def test_a_books_url_that_cannot_be_asked_is_said_so(caplog):
    from workers.urls import books_url

    with caplog.at_level("WARNING", logger="cachemgr"):
        got = books_url(["redis://:pw@127.0.0.1:1/0", "redis+cluster://127.0.0.1:2"], "nocluster")
    assert got == "redis://:pw@127.0.0.1:1/0"  # the URL given, said
    assert "could not be asked" in caplog.text and "127.0.0.1:2" in caplog.text
    assert ":pw@" not in caplog.text  # its password masked


def test_a_client_given_a_broker_url_alone_where_no_worker_published_says_so(
    cache, caplog, monkeypatch
):
    """Workers with their books at db 0 and their broker at db 1; a pipeline given the broker's
    URL alone (no REDIS_URL in its environment): its plays and pins went to db 1, no worker
    reading them, and nothing was said."""
    from workers.client import CacheClient

    broker = side_db(13)  # a database no registry is in
    monkeypatch.delenv("REDIS_URL", raising=False)
    cache.registry.publish(cache.settings)  # at the books' URL, not the broker's
    cluster = cache.settings.disk_cache_cluster
    with caplog.at_level("WARNING", logger="cachemgr"):
        client = CacheClient(broker, cluster=cluster, key_prefix=cache.keys.prefix)
        try:
            client.access("album")  # a miss, counted where no worker reads
        finally:
            stray = client.store.client
            if left := list(stray.scan_iter(match=f"{cache.keys.prefix}*")):
                stray.delete(*left)
            client.close()
        again = CacheClient(broker, cluster=cluster, key_prefix=cache.keys.prefix)
        again.close()
        # REDIS_URL set (the workers' environment), the URL alone is it: nothing to say, nor
        # asked (a fresh install's pipeline, started before the workers published).
        monkeypatch.setenv("REDIS_URL", broker)
        CacheClient(broker, cluster=f"{cluster}x", key_prefix=cache.keys.prefix).close()
    said = [r.getMessage() for r in caplog.records if "no workers have published" in r.getMessage()]
    assert len(said) == 1 and f"the books are taken to be at {broker}" in said[0], said
    assert "pass redis_url= (or set REDIS_URL)" in said[0]


def test_a_periodic_cleanup_beat_did_not_send_does_not_hide_a_stopped_beat(
    pipeline, cache, root
):
    """A pipeline's `cleanup(periodic=True)` cleared "no periodic cleanup for N s": beat's run
    was stamped by whoever sent the argument. Beat's carry its header; others do beat's work
    (the scheduler switch, the audits) without counting as its run."""
    make_tree(root, "a")
    cache.register("a")
    cache.registry.publish(cache.settings)
    long_ago = time.time() - 100 * cache.settings.disk_cache_cleanup_interval
    cache.client.hset(cache.keys.last_cleanup, "periodic_time", f"{long_ago:.3f}")
    assert cache.stats()["periodic_overdue"] is True
    done = pipeline.send("cleanup", periodic=True).get(timeout=WAIT)
    assert done["status"] == "done" and "untracked" in done  # beat's work, done
    stats = cache.stats()
    assert stats["periodic_overdue"] is True
    assert any("no periodic cleanup" in w for w in stats["warnings"]), stats["warnings"]
    # Beat's own: its header, even with an interval past what the stats believe (400 days).
    pipeline.app.send_task(
        "cachemgr.cleanup", kwargs={"periodic": True}, queue=pipeline.queue,
        headers={"cachemgr_beat_interval": 400 * 86400.0},
    ).get(timeout=WAIT)  # fmt: skip
    assert cache.stats()["periodic_overdue"] is False


def test_beat_at_another_interval_than_the_workers_is_said_not_called_stopped(
    pipeline, cache, root
):
    """Beat at 600 s, workers at 20: the stats said beat was not running ("no periodic
    cleanup for 62 s (interval 20 s)"). Beat's cleanups carry its interval; the overdue
    check follows it, and the difference is a warning of its own."""
    import celeryconfig

    entry = next(iter(celeryconfig.beat_schedule.values()))
    assert entry["options"]["headers"]["cachemgr_beat_interval"] == float(celeryconfig._interval)
    make_tree(root, "a")
    cache.register("a")
    workers = cache.settings.disk_cache_cleanup_interval
    beat = workers * 10
    pipeline.app.send_task(
        "cachemgr.cleanup",
        kwargs={"periodic": True},
        queue=pipeline.queue,
        headers={"cachemgr_beat_interval": float(beat)},
    ).get(timeout=WAIT)
    cache.registry.publish(cache.settings)
    # Three of the workers' intervals since beat's run: overdue by theirs, not by beat's.
    later = time.time() + 3 * workers
    cache.clock = lambda: later
    stats = cache.stats()
    assert stats["last_cleanup"]["beat_interval"] == beat
    assert stats["periodic_overdue"] is False
    assert not any("no periodic cleanup" in w for w in stats["warnings"]), stats["warnings"]
    assert (
        f"celery beat sends the node's cleanups every {beat} s, its workers' "
        f"DISK_CACHE_CLEANUP_INTERVAL is {workers} s: give beat and the workers the same setting"
    ) in stats["warnings"]
    # Past three of beat's own, it is overdue.
    later = time.time() + 3 * beat + 1
    assert cache.stats()["periodic_overdue"] is True


def test_a_beat_interval_out_of_bounds_is_not_believed(cache):
    """Another sender's header of `inf` was stored and failed every periodic cleanup
    (OverflowError); 1234567 came back as 1234570, a false 'beat and workers differ'."""
    import types

    from cachemgr import history
    from workers.app import beat_interval

    for bad in ("inf", "nan", "1e300", "0", "-5", "abc"):
        task = types.SimpleNamespace(request=types.SimpleNamespace(headers={
            "cachemgr_beat_interval": bad}))  # fmt: skip
        assert beat_interval(task) is None, bad
    cache.client.hset(cache.keys.last_cleanup, "beat_interval", "inf")
    assert history.beat_interval(cache) == cache.settings.disk_cache_cleanup_interval
    history.beat_every(cache, 1234567.0)
    assert history.beat_interval(cache) == 1234567
    # One an older version stored (any sender's 1e300) is not believed by the stats either.
    cache.client.hset(cache.keys.last_cleanup, mapping={"beat_interval": "1e300",
                                                        "periodic_time": "1"})  # fmt: skip
    stats = cache.stats()
    assert not any("celery beat sends" in w for w in stats["warnings"]), stats["warnings"]


def test_a_broker_url_the_environment_overrides_is_said(monkeypatch, caplog):
    """CELERY_BROKER_URL set, CacheClient("redis://...:18338/0") sent its tasks to the
    environment's broker while its broker_url said 18338, unsaid (Celery's rule)."""
    from workers.client import CacheClient

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:pw1@127.0.0.1:6379/11")
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    with caplog.at_level("WARNING", logger="cachemgr"):
        client = CacheClient("redis://:pw2@127.0.0.1:1/0", redis_url=REDIS_URL)
    assert client.broker_url == "redis://:pw1@127.0.0.1:6379/11"
    said = [r.getMessage() for r in caplog.records if "wins over the URL given" in r.getMessage()]
    assert said == [
        "CELERY_BROKER_URL in the environment (redis://:***@127.0.0.1:6379/11) wins over the "
        "URL given (redis://:***@127.0.0.1:1/0), by Celery's rule: it is the one used"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cachemgr"):
        CacheClient("redis://:pw1@127.0.0.1:6379/11", redis_url=REDIS_URL)
    assert "wins over" not in caplog.text  # the same URL: nothing to say


def test_celerys_cancel_warning_is_not_said_at_each_lost_broker_connection():
    """Seven lines of CPendingDeprecationWarning in each worker's log at each Redis restart."""
    import warnings

    from celery.exceptions import CPendingDeprecationWarning
    from celery.worker.consumer.consumer import CANCEL_TASKS_BY_DEFAULT

    from workers.consumer import quiet_cancel_warning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_cancel_warning()
        warnings.warn(CANCEL_TASKS_BY_DEFAULT, CPendingDeprecationWarning, stacklevel=1)
        warnings.warn("another of Celery's", CPendingDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another of Celery's"]
