"""The run command: `cachemgr up` starts everything, the seed's curl examples work as written,
a registration sent through the broker shows up, and Ctrl-C leaves no process behind."""

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
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

SEED_EXAMPLES = [
    "curl http://localhost:8080/cache/stats",
    "curl http://localhost:8080/cache/directories",
    "curl -X POST http://localhost:8080/cache/cleanup",
    "curl -X POST http://localhost:8080/cache/start-scheduler",
]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def interrupt(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C, as a person would; returns what the process printed."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return ""


def wait_for(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.skipif(not port_free(8080), reason="port 8080 is taken on this machine")
def test_up_runs_the_whole_system_and_stops_cleanly(tmp_path: Path, monkeypatch):
    # Celery lets CELERY_BROKER_URL win over an explicit broker: the client must see none.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    root = tmp_path / "downloads"
    (root / "album").mkdir(parents=True)
    (root / "album" / "t.mp3").write_bytes(b"x" * 5000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_URL"))}
    env.update(
        DISK_CACHE_ROOT=str(root),
        CACHEMGR_STATE_DIR=str(tmp_path / "state"),
        CACHEMGR_REDIS_PORT=str(_free_port()),
        PORT="8080",
        HOME=str(tmp_path / "home"),
    )
    log = tmp_path / "up.log"  # a file, not a pipe: a full pipe blocks every process on it
    up = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "up"],
        env=env,
        cwd=Path(__file__).parent.parent,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stats = wait_for("http://127.0.0.1:8080/cache/stats")
        assert stats["directory_count"] == 0
        # Writes sent before the workers announce themselves wait, answered with a warning:
        # `up` says when they have.
        deadline = time.monotonic() + 60
        while "ready   every node's workers are up" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert shutil.which("curl"), "curl: scripts/ensure-debian.sh curl curl installs it"
        for example in SEED_EXAMPLES:
            # As written, plus the status on a line of its own: curl exits 0 on a 500 too.
            argv = [*example.split(), "-sS", "-w", "\n%{http_code}"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            reply, status = out.stdout.rsplit("\n", 1)
            assert out.returncode == 0 and status in ("200", "202"), (example, out.stdout)
            assert "code" not in json.loads(reply), (example, reply)

        client = client_for(env)
        # The seed's examples include POST /cache/cleanup, whose reconcile registers "album"
        # too: a registration waits for its lock, at most 3 s, then is skipped: try again.
        for _ in range(20):
            result = client.register("album").get(timeout=60)
            if result["status"] != "skipped":
                break
            time.sleep(0.5)
        assert result["status"] == "registered", result
        listed = wait_for("http://127.0.0.1:8080/cache/directories")
        assert [d["path"] for d in listed["directories"]] == ["album"]
        client.close()
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4  # redis, web (+ its gunicorn workers), worker, beat
        # A worker that dies (killed, out of memory) is started again, not the end.
        [worker] = [p for p in psutil.Process(up.pid).children()
                    if "worker" in p.cmdline() and "celery" in " ".join(p.cmdline())]  # fmt: skip
        os.killpg(worker.pid, signal.SIGKILL)  # a lock it held stays for its timeout
        deadline = time.monotonic() + 30
        # Sent at once, a task can go to the dead worker's BRPOP, which Redis serves until it
        # sees the connection closed (a Redis broker's own way to lose a message).
        while "starting it again" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        (root / "after").mkdir()
        (root / "after" / "t.mp3").write_bytes(b"x" * 100)
        again = client_for(env)
        assert again.register("after").get(timeout=60)["status"] == "registered"
        again.close()
        children = psutil.Process(up.pid).children(recursive=True)
        # gunicorn's control socket: shared by two `serve` on a host, unwritable for some.
        assert not (tmp_path / "home" / ".gunicorn").exists()
    finally:
        interrupt(up)
        output = log.read_text()
    assert up.returncode == 0, output
    assert "worker was killed by SIGKILL; starting it again" in output
    # The CLI in another shell finds the embedded Redis only through REDIS_URL: say it.
    assert f"export REDIS_URL=redis://127.0.0.1:{env['CACHEMGR_REDIS_PORT']}/0" in output
    time.sleep(0.5)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]


def client_for(env: dict[str, str]):
    from workers.client import CacheClient

    broker = f"redis://127.0.0.1:{env['CACHEMGR_REDIS_PORT']}/0"
    return CacheClient(broker, redis_url=broker, backend=broker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_with_two_nodes(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_URL"))}
    (tmp_path / "downloads").mkdir()  # a root set is never made (a disk not mounted?)
    redis_port = _free_port()
    broker = f"redis://127.0.0.1:{redis_port}/1"  # the embedded Redis's: given to `up`
    env.update(
        DISK_CACHE_ROOT=str(tmp_path / "downloads"),
        CACHEMGR_STATE_DIR=str(tmp_path / "state"),
        CACHEMGR_REDIS_PORT=str(redis_port),
        PORT=str(port),
        CELERY_BROKER_URL=broker,
        CELERY_RESULT_BACKEND=broker,
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "up", "--nodes", "2"],
        env=env, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                stats = wait_for(f"{base}/cache/stats", timeout=5)
                if sorted((n["node"], n["up"]) for n in stats["nodes"]) == [
                    ("node1", True),
                    ("node2", True),
                ]:
                    break
            except AssertionError:
                pass
            time.sleep(0.5)
        assert [n["node"] for n in stats["nodes"] if n["up"]] == ["node1", "node2"]
        # Each root it made is marked at once: a node over the parent root (named after the
        # host, a shell in up's environment) must not take node1 for a download.
        from cachemgr.nested import other_books

        for name in ("node1", "node2"):
            assert other_books(tmp_path / "downloads" / name, "{vm}:") == f"{{{name}}}:cache:*"
        album = tmp_path / "downloads" / "node2" / "album"
        album.mkdir()
        (album / "t.mp3").write_bytes(b"x" * 5000)
        request = urllib.request.Request(
            f"{base}/cache/register/album?node=node2&wait=30", method="POST"
        )
        with urllib.request.urlopen(request, timeout=40) as r:
            assert json.loads(r.read())["result"]["status"] == "registered"
        node2 = wait_for(f"{base}/cache/directories?node=node2")
        node1 = wait_for(f"{base}/cache/directories?node=node1")
        assert [d["path"] for d in node2["directories"]] == ["album"]
        assert node1["directories"] == []
    finally:
        output = interrupt(up)
    assert up.returncode == 0, output
    # The CLI in another shell, unset, acted on a node named after the host that no worker
    # serves: `up` says which variable picks a node.
    assert "in another shell: export REDIS_URL=" in output and " DISK_CACHE_NODE=node1 " in output
    # and the broker `up` was given: without it, the shell's writes went to one no worker read
    assert f" CELERY_BROKER_URL={broker} CELERY_RESULT_BACKEND={broker} " in output, output
    # and its root: with the shell's own, `cachemgr stats` said the cache was not working.
    assert " DISK_CACHE_ROOT=" in output and "/node1 (the node it acts on" in output, output


def test_procfile_runs_under_honcho(tmp_path: Path, monkeypatch):
    """Every Procfile process starts (web answers on $PORT) and honcho stops them all."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    from tests.conftest import REDIS_URL, side_db

    root = tmp_path / "downloads"
    root.mkdir()
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=side_db(12),
        CACHEMGR_QUEUE=f"honcho-{port}",
        DISK_CACHE_ROOT=str(root),
        DISK_CACHE_KEY_PREFIX=f"honcho{port}:",
        DISK_CACHE_CLUSTER=f"honcho{port}",  # its registry too: honcho<port>:nodes
        CACHEMGR_STATE_DIR=str(tmp_path / "state"),
        FLOWER_PORT=str(_free_port()),
    )
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-p", str(port)],
        env=env, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(f"http://127.0.0.1:{port}/cache/stats")["directory_count"] == 0
        children = psutil.Process(honcho.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        for needed in ("gunicorn", "worker", "beat", "flower"):
            assert needed in names, needed
    finally:
        honcho.send_signal(signal.SIGINT)
        try:
            output, _ = honcho.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            output = ""
        from cachemgr import connect

        client = connect(REDIS_URL)
        for key in client.scan_iter(match=f"honcho{port}:*"):
            client.delete(key)
    time.sleep(0.5)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], output


def test_up_starts_a_worker_again_but_not_forever_nor_one_with_bad_settings():
    from api.stack import RESTARTS, _how_it_ended, _not_restarted

    when: list[float] = []
    said = [_not_restarted("worker", -9, when) for _ in range(RESTARTS + 1)]
    # a worker that keeps dying stops `up`: said, not looped on
    assert said == [None] * RESTARTS + [f" (it stopped {RESTARTS + 1} times in 10 min)"]
    bad = _not_restarted("worker", 5, [])  # a bad setting: it would stop again at once
    assert bad is not None and "bad setting" in bad
    assert _not_restarted("web", 1, []) == "" and _not_restarted("beat", 1, []) is None
    assert _how_it_ended(-9) == "was killed by SIGKILL" and _how_it_ended(1) == "exited with 1"


@pytest.mark.parametrize("name", ["CACHEMGR_QUEUE", "DISK_CACHE_KEY_PREFIX"])
def test_up_with_several_nodes_refuses_what_would_make_them_share(tmp_path: Path, name):
    """CACHEMGR_QUEUE set: both nodes' workers read one queue, and a removal sent for node2
    deleted node1's directory. DISK_CACHE_KEY_PREFIX set: both kept one set of books."""
    (tmp_path / "downloads").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_") and k != "REDIS_URL"}
    env.update({
        "DISK_CACHE_ROOT": str(tmp_path / "downloads"), name: "shared",
        "CACHEMGR_STATE_DIR": str(tmp_path / "state"), "PORT": str(_free_port()),
    })  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "up", "--nodes", "2"], env=env,
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert done.stderr.startswith(f"Error: {name}='shared' with --nodes 2: every node would")
    assert len(done.stderr.strip().splitlines()) == 1 and "embedded" not in done.stdout


def test_up_says_a_new_node_root_its_books_refuse_will_stay_refused(
    settings, cache, root, tmp_path, capsys
):
    """`up --nodes 2` at a new root over books kept for another: "its first cleanup marks
    it", then "ready", while every registration and cleanup was refused for that reason."""
    from api.stack import _mark
    from cachemgr.cleanup import cleanup
    from tests.conftest import make_tree

    make_tree(root, "album")
    cache.register("album")
    cleanup(cache)  # the books' root marked: this one
    elsewhere = tmp_path / "new-root"
    elsewhere.mkdir()
    _mark(settings.with_(disk_cache_root=str(elsewhere)), settings.redis_url)
    said = capsys.readouterr().err
    assert "registrations and cleanups are refused the same" in said, said
    assert "its first cleanup marks it" not in said


def test_ups_beat_sends_its_own_nodes_cleanups_whatever_the_shell_says(capsys):
    from api.stack import _beat_env

    shell = {"DISK_CACHE_NODES": "far,away", "REDIS_URL": "redis://x"}
    assert _beat_env(shell, [""]) == {"REDIS_URL": "redis://x"}  # the local node's
    assert "does not name this node" in capsys.readouterr().err
    assert _beat_env(shell, ["node1", "node2"])["DISK_CACHE_NODES"] == "node1,node2"
    # The host that runs beat for every node, this one among them: its list stands.
    every = {**shell, "DISK_CACHE_NODE": "away"}
    assert _beat_env(every, [""]) == every


def test_up_refuses_a_root_that_does_not_exist_rather_than_make_it(tmp_path: Path):
    """`up` made a missing DISK_CACHE_ROOT: a disk not mounted yet, or a typo, got an empty
    directory on the wrong filesystem, where `serve` and the worker refuse to start."""
    missing = tmp_path / "not-mounted" / "downloads"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_") and k != "REDIS_URL"}
    env.update(
        DISK_CACHE_ROOT=str(missing),
        CACHEMGR_STATE_DIR=str(tmp_path / "state"),
        PORT=str(_free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "up"], env=env, cwd=Path(__file__).parent.parent,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"DISK_CACHE_ROOT={str(missing)!r}: directory does not exist" in done.stderr
    assert not missing.exists() and not missing.parent.exists()
    assert "embedded" not in done.stdout  # refused before its Redis was started (and stopped)


def test_up_refuses_a_file_where_its_default_root_would_be_in_one_line(tmp_path: Path):
    """./downloads a file: `up` ended in a FileExistsError traceback (exit 1), its embedded
    Redis left running."""
    (tmp_path / "downloads").write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    env.update(
        CACHEMGR_STATE_DIR=str(tmp_path / "state"),
        PORT=str(_free_port()),
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "up"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert "downloads': is not a directory" in done.stderr and "Traceback" not in done.stderr


def test_up_stopped_by_a_process_that_died_exits_with_its_code(tmp_path: Path):
    """The web's port taken: `up` said "web exited with 5; stopping" and exited 0, and a
    supervisor that restarts on failure (systemd's Restart=on-failure) left it stopped."""
    import socket

    root = tmp_path / "downloads"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DISK_CACHE_"))}
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env.update(
            DISK_CACHE_ROOT=str(root),
            CACHEMGR_STATE_DIR=str(tmp_path / "state"),
            CACHEMGR_REDIS_PORT=str(_free_port()),
            PORT=str(held.getsockname()[1]),
        )
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", "up"], env=env, cwd=Path(__file__).parent.parent,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert "web exited with 5; stopping" in done.stderr, done.stdout + done.stderr
    assert done.returncode == 5, done.stdout + done.stderr


def test_up_says_writes_are_answered_disabled_when_the_switch_is_off():
    # `up` printed "writes are served" while every write answered {"status": "disabled"}.
    from api.stack import _served

    assert _served({}) == "writes are served"
    assert _served({"ENABLE_DISK_CACHE_MANAGEMENT": "true"}) == "writes are served"
    off = _served({"ENABLE_DISK_CACHE_MANAGEMENT": "false"})
    assert off == "ENABLE_DISK_CACHE_MANAGEMENT is false: every write answers disabled"
