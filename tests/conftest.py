"""Fixtures: a real Redis (own key prefix, cleaned up), real directory trees, a canary outside."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cachemgr import DiskCache, Settings, connect, trash

REDIS_URL = os.environ.get("CACHEMGR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# scripts/test.sh runs the suite in two processes (pytest-xdist): each takes databases of its
# own for Celery and the seed's unprefixed key names (one FLUSHDB must not empty the other's),
# 11-14 in the first or a serial run, 7-10 in the second, 3-6 in a third.
_PROCESS = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
if _PROCESS > 2:
    raise pytest.UsageError("the suite runs in at most 3 processes (-n 3): Redis has 16 databases")
if 3 <= int(urlsplit(REDIS_URL).path.strip("/") or 0) <= 14:  # one FLUSHDB would empty it
    raise pytest.UsageError(
        f"CACHEMGR_TEST_REDIS_URL={REDIS_URL}: databases 3-14 are the test processes' own for "
        "Celery and the seed's keys; give it 0-2 or 15"
    )


def side_db(n: int) -> str:
    """The URL of database `n` (11-14) as this test process numbers it."""
    if not 11 <= n <= 14:
        raise ValueError(f"side databases are 11-14, not {n}")
    return f"{REDIS_URL.rsplit('/', 1)[0]}/{n - 4 * _PROCESS}"


# The test worker's broker and results live in a database of their own. Set before celeryconfig
# is imported: CELERY_BROKER_URL in the environment wins over conf.update().
BROKER_URL = os.environ.setdefault("CELERY_BROKER_URL", side_db(11))
os.environ.setdefault("CELERY_RESULT_BACKEND", side_db(11))
os.environ.pop("DISK_CACHE_NODE", None)
# A queue of this session's own: concurrent test runs on one machine share the broker database,
# and must never consume each other's tasks.
TEST_QUEUE = f"cachemgr-test-{uuid.uuid4().hex[:8]}"


def trash_items(base: Path) -> list[Path]:
    """What the trash at `base` holds, its spare slot (made ahead, see trash.SPARE) aside."""
    return sorted(p for p in (base / trash.TRASH_DIR).iterdir() if p.name != trash.SPARE)


def make_tree(root: Path, rel: str, files: int = 1, size: int = 4096) -> Path:
    """A directory with `files` files of `size` bytes each (written, so blocks are allocated)."""
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (d / f"track{i:02d}.mp3").write_bytes(b"\x01" * size)
    return d


def published_workers(settings: Settings, redis_client: Any, root: Path) -> DiskCache:
    """The node's workers as they published themselves (s3fifo-a, the fixture's quota), with
    three albums registered: what a shell or an API of another environment must act by."""
    workers = settings.with_(disk_cache_eviction_policy="s3fifo-a")
    theirs = DiskCache(workers, redis_client)
    theirs.registry.publish(workers)
    for name in ("a", "b", "c"):
        make_tree(root, name, files=4)
        theirs.register(name)
    return theirs


def cleanup_prefix(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_client():
    client = connect(REDIS_URL)
    client.ping()
    yield client
    client.close()


# Every test's prefix, swept again as the session ends: a task still in flight in the session
# worker when its test ended (a registration's quota pass) wrote the cleanup's record after
# the test had cleaned its keys.
USED_PREFIXES: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _no_keys_left_behind() -> Iterator[None]:
    yield  # set up before the session's worker, so torn down after it has stopped
    client = connect(REDIS_URL)
    for p in USED_PREFIXES:
        cleanup_prefix(client, p)
    client.close()


@pytest.fixture
def prefix(redis_client) -> Iterator[str]:
    p = f"t{uuid.uuid4().hex[:10]}:"
    USED_PREFIXES.append(p)
    yield p
    cleanup_prefix(redis_client, p)


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """Files outside the root that no test may ever delete."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("must survive")
    (outside / "nested").mkdir()
    (outside / "nested" / "keep.bin").write_bytes(b"x" * 100)
    yield outside
    assert (outside / "canary.txt").read_text() == "must survive"
    assert (outside / "nested" / "keep.bin").exists()


@pytest.fixture
def root(tmp_path: Path, canary: Path) -> Path:
    r = tmp_path / "downloads"
    r.mkdir()
    return r


@pytest.fixture
def settings(root: Path, prefix: str) -> Settings:
    return Settings(
        disk_cache_root=str(root),
        redis_url=REDIS_URL,
        disk_cache_key_prefix=prefix,
        disk_cache_max_bytes=100 * 4096,
        disk_cache_cluster=prefix.rstrip(":"),
    ).validate()


@pytest.fixture
def cache(settings: Settings, redis_client) -> DiskCache:
    return DiskCache(settings, redis_client)


@pytest.fixture(scope="session")
def parked(tmp_path_factory, redis_client) -> DiskCache:
    """What the session worker serves between tests: books of its own, swept at the end.
    Unconfigured, a task still in flight when its test ended (a registration's quota pass)
    built a cache from the environment, which published the default books' config and node
    entry (`cache:config`, `cachemgr:nodes`) in the tests' Redis, left there for good."""
    p = f"t{uuid.uuid4().hex[:10]}:"
    USED_PREFIXES.append(p)
    settings = Settings(
        disk_cache_root=str(tmp_path_factory.mktemp("parked")),
        redis_url=REDIS_URL,
        disk_cache_key_prefix=p,
        disk_cache_cluster=p.rstrip(":"),
    ).validate()
    PARKED.append(DiskCache(settings, redis_client))
    return PARKED[-1]


PARKED: list[DiskCache] = []


def park() -> None:
    """Leave the session worker serving the parked books (what a test configured goes)."""
    from workers import tasks

    tasks.configure(PARKED[-1] if PARKED else None)


@pytest.fixture(scope="session")
def worker_app(parked):
    """A real Celery worker in this process (threads pool), for the whole session."""
    import celery.contrib.testing.tasks  # noqa: F401  (start_worker's ping task)
    from celery.contrib.testing.worker import start_worker

    from workers import tasks
    from workers.app import app

    app.conf.task_default_queue = TEST_QUEUE  # also where continuations are sent
    tasks.configure(parked)  # what it announces as it starts, and beats for
    with start_worker(app, pool="threads", concurrency=4, loglevel="WARNING", shutdown_timeout=30):
        yield app


@pytest.fixture
def worker(worker_app, cache, parked):
    """The session worker, serving this test's cache (root, key prefix)."""
    from workers import tasks

    tasks.configure(cache)
    # As a worker of this test's node does when ready (and goes on doing: an hour here).
    cache.registry.heartbeat(cache.keys, ttl=3600)
    yield worker_app
    worker_app.control.purge()  # what this test enqueued and never waited for
    tasks.configure(parked)


@pytest.fixture
def pipeline(cache, worker):
    """The download pipeline's client, as a pipeline would build it: broker URL and node keys."""
    from workers.client import CacheClient

    client = CacheClient(
        BROKER_URL, redis_url=REDIS_URL, key_prefix=cache.keys.prefix, queue=TEST_QUEUE
    )
    yield client
    client.close()


@pytest.fixture
def app(settings, redis_client, worker):
    """flaskr-style: the app under test, its writes served by the session worker."""
    from api import create_app

    return create_app(
        {
            "TESTING": True,
            "CACHEMGR_SETTINGS": settings,
            "REDIS_CLIENT": redis_client,
            "CELERY_BROKER_URL": BROKER_URL,
            "CELERY_RESULT_BACKEND": os.environ["CELERY_RESULT_BACKEND"],
            "CELERY_TASK_QUEUE": TEST_QUEUE,
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def roomy_disk(monkeypatch) -> None:
    """The stats see a roomy disk under the cache root (a test of "no warnings" must not
    depend on how full this machine's disk is); a missing root still fails as it would."""
    import shutil

    import cachemgr.stats

    real = shutil.disk_usage

    def roomy(path):
        real(path)
        return shutil._ntuple_diskusage(2**40, 2**38, 2**40 - 2**38)

    monkeypatch.setattr(cachemgr.stats.shutil, "disk_usage", roomy)
