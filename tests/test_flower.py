"""Flower against the same broker shows the workers and every task with its arguments and
result (task events are on in celeryconfig)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, make_tree, side_db

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_flower_sees_workers_and_tasks(settings, root, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    broker = side_db(12)
    queue = f"flower-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    env.update(
        CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker, REDIS_URL=REDIS_URL,
        DISK_CACHE_ROOT=str(root), DISK_CACHE_KEY_PREFIX=settings.key_prefix,
        DISK_CACHE_CLUSTER=settings.disk_cache_cluster,  # its registry is the test's too
        CACHEMGR_QUEUE=queue, FLOWER_UNAUTHENTICATED_API="true",
    )  # fmt: skip
    port = free_port()
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    procs = [
        subprocess.Popen([*celery, "flower", f"--port={port}", "--address=127.0.0.1"],
                         env=env, cwd=REPO, start_new_session=True),
        subprocess.Popen([*celery, "worker", "-c", "1", "-l", "WARNING",
                          "-n", f"{queue}@%h"], env=env, cwd=REPO, start_new_session=True),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers: object = {}
        while time.monotonic() < deadline:
            try:
                workers = get_json(f"http://127.0.0.1:{port}/api/workers?refresh=1")
                if any(queue in name for name in workers):  # type: ignore[union-attr]
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert any(queue in name for name in workers), workers  # type: ignore[union-attr]

        from workers.client import CacheClient

        make_tree(root, "album", files=2)
        client = CacheClient(broker, redis_url=REDIS_URL, backend=broker, queue=queue,
                             key_prefix=settings.key_prefix)  # fmt: skip
        result = client.register("album")
        assert result.get(timeout=30)["status"] == "registered"
        task: dict = {}
        while time.monotonic() < deadline:
            task = get_json(f"http://127.0.0.1:{port}/api/task/info/{result.id}")  # type: ignore[assignment]
            if task.get("state") == "SUCCESS":
                break
            time.sleep(0.5)
        assert task["name"] == "cachemgr.register_directory"
        assert "album" in task["args"] and "registered" in task["result"]
        client.close()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
