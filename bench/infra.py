"""What the bench starts and stops: its own redis-server, a Celery worker, gunicorn web processes.

Everything is started in its own process group and stopped by that group's id, so that a
gunicorn master or a prefork pool never outlives the bench, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent


def ensure_tools() -> None:
    """Install what the bench runs (wrk, redis-server, redis-cli, py-spy) when it is missing."""
    if all(shutil.which(t) for t in ("wrk", "redis-server", "redis-cli", "du")) and py_spy():
        return
    env = {**os.environ, "BENCH_PYTHON": sys.executable}
    subprocess.run(["bash", str(REPO / "bench" / "setup.sh")], check=True, env=env)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Processes:
    """Children in their own sessions; `stop_all` ends each group by its id, newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log:
                out.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The group may hold children (prefork pool, gunicorn workers) after its leader left.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop(proc)


class RedisServer:
    """A redis-server of the bench's own on a free port: no persistence, no other clients."""

    def __init__(self, procs: Processes, workdir: Path) -> None:
        self.port = free_port()
        self.proc = procs.start(
            "redis",
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(workdir),
                "--databases", "16", "--slowlog-log-slower-than", "10000",
                "--slowlog-max-len", "256",
            ],  # fmt: skip
            log=workdir / "redis.log",
        )
        wait_port(self.port, 10, self.proc)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int, *, decode: bool = True) -> Any:
        return redis.Redis(port=self.port, db=db, decode_responses=decode)

    def version(self) -> str:
        return str(self.client(0).info("server")["redis_version"])


def pipe_commands(port: int, db: int, payload: bytes) -> int:
    """Send raw RESP through `redis-cli --pipe` (the fastest bulk load Redis documents).

    Returns the number of replies; raises if any reply was an error.
    """
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "-n", str(db), "--pipe"],
        input=payload,
        capture_output=True,
        check=True,
    )
    text = done.stdout.decode(errors="replace")
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    # The last line reads: "errors: 0, replies: 1000000".
    fields = dict(part.strip().split(": ") for part in tail.split(",") if ": " in part)
    if int(fields.get("errors", "1")) != 0:
        raise RuntimeError(f"redis-cli --pipe reported errors: {text[-2000:]}")
    return int(fields.get("replies", "0"))


@contextlib.contextmanager
def memory_scratch() -> Iterator[Path]:
    """A scratch folder in memory (tmpfs) when there is one, else on disk.

    The sweep and eviction figures delete real directories; on this kind of VM an `rmdir` on
    ext4 mounted with `discard` costs 0.3-1 ms, the same at any n, which would drown the part
    of the cost that can grow with n. tmpfs keeps the comparison about cachemgr.
    """
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="cachemgr-bench-", dir=where) as tmp:
        yield Path(tmp)


def bench_env(base: Mapping[str, str], **values: str) -> dict[str, str]:
    """The children's environment: this one, less what would point them at another cache."""
    env = {k: v for k, v in base.items() if not k.startswith(("DISK_CACHE_", "CELERY_"))}
    env.pop("REDIS_URL", None)
    env.pop("PORT", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH", "")]))
    env.update(values)
    return env
