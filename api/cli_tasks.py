"""How the CLI has the node's workers do a write: send the task, wait for its answer, or act
here (--now) with the settings the workers published."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
import redis
from flask import current_app
from kombu.exceptions import OperationalError

from api.cli_errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Fail,
)
from api.errors import BACKEND_AWAY
from api.extensions import answered, behind_lock, let_go
from cachemgr import CacheError, DiskCache, marker
from cachemgr.connection import broker_id
from cachemgr.nodes import no_worker
from cachemgr.settings import env_value
from workers.results import backend_gave_up

TASK_WAIT_SECONDS = 120.0
# How long no worker of the node must be seen alive before a waiting write stops waiting: a
# worker stopped by SIGTERM takes its heartbeat down at once and still finishes the task it
# runs, and one restarted is back within seconds (a killed one's heartbeat lapses in 30 s).
GONE_SECONDS = 30.0


def state() -> Any:
    return current_app.extensions["cachemgr"]


def wait_task(name: str, *args: Any, **kwargs: Any) -> Any:
    """Send a task to this node's workers and wait for its answer; none of them alive (no
    heartbeat) is said at once, and nothing is queued to run behind the user's back later."""
    cache = state().cache
    if not cache.registry.alive(cache.keys):
        raise Fail(
            f"{no_worker(cache.settings.node)}: start one (celery -A workers.app worker), or do "
            "it in this process with --now (workers beat every 10 s: after a Redis restart or "
            "flush, try again in 10 s)",
            EXIT_FAILED,
        )
    result = state().tasks.send(name, *args, **kwargs)
    try:
        return answer(name, result, TASK_WAIT_SECONDS, alive=worker_watch(cache))
    except (CacheError, Fail):
        raise
    except Exception as exc:
        if backend_gave_up(exc):
            # Sent: only its answer cannot be read. "Cannot be reached", exit 4, alone read
            # as nothing done, while the registration or cleanup had run.
            raise Fail(
                f"{name} was sent (task {result.id}), but {BACKEND_AWAY}: its answer cannot be "
                "read, and it may have run; see `cachemgr info` or `cachemgr events` once it "
                "answers (sent again, a write does no harm)",
                EXIT_UNAVAILABLE,
            ) from None
        if type(exc).__name__ in ("NotTracked", "NotOnDisk"):
            raise Fail(str(exc), EXIT_NOT_FOUND) from None
        if type(exc).__name__ == "PathError":
            raise Fail(str(exc), EXIT_USAGE) from None
        raise Fail(f"{name} failed: {exc}", EXIT_FAILED) from None
    finally:
        let_go(result)  # now: at exit, its finaliser printed a traceback under the answer


def worker_watch(cache: DiskCache) -> Callable[[], bool]:
    """Whether the node may still answer: False once no worker of it has been alive for
    GONE_SECONDS. A Redis that does not answer meanwhile tells nothing: the wait goes on."""
    seen = time.monotonic()

    def alive() -> bool:
        nonlocal seen
        try:
            up = cache.registry.alive(cache.keys)
        except redis.RedisError:
            return True
        if up:
            seen = time.monotonic()
        return up or time.monotonic() - seen < GONE_SECONDS

    return alive


def answer(
    name: str,
    result: Any,
    wait: float = TASK_WAIT_SECONDS,
    alive: Callable[[], bool] | None = None,
) -> Any:
    """The task's answer, within `wait` seconds. One the workers will send again (a
    registration behind another's lock) is answered at once as status "retry", not waited
    out: the command fails (exit 1) and a script reading its JSON still gets the task's id.
    `alive`: whether a worker of the node may still answer (worker_watch); once none can
    (killed mid-wait), said then, not after the whole wait in bare words."""
    if answered(result, wait, alive):
        return result.get()
    if behind_lock(result):
        return {
            "status": "retry",
            "task_id": result.id,
            "reason": f"{name} is waiting for another's lock and will run again once it "
            f"lapses (task {result.id}): nothing is lost; see `cachemgr info` later",
        }
    if alive is not None and not alive():
        node = state().cache.settings.node
        raise Fail(
            f"{name}: {no_worker(node)} for {GONE_SECONDS:.0f} s while this waited: the task "
            f"({result.id}) runs once one starts (one that stopped meanwhile may have done it: "
            "see `cachemgr events` before doing it here with --now)",
            EXIT_FAILED,
        )
    raise Fail(
        f"{name}: no answer within {wait:.0f} s (task {result.id}); it may still run: see "
        f"`cachemgr events`{_unread_broker()}",
        EXIT_FAILED,
    )


def _unread_broker() -> str:
    """Why no answer came, when the node's workers published a broker that is not the one
    the task went to (the client warned at the send; a name of the same server its workers
    know by another, `redis` in a container, is not refused for it). Best effort."""
    st = state()
    try:
        entry = st.cache.published_entry()
    except Exception:  # Redis away, an entry unreadable: the message stands without it
        return ""
    theirs, mine = entry.get("broker"), broker_id(st.tasks.broker_url)
    if not theirs or theirs == mine:
        return ""
    return (
        f"; it went to broker {mine}, and the node's workers read {theirs}: set "
        "CELERY_BROKER_URL to theirs (or do it in this process with --now)"
    )


def acting(disk: bool = False, adopting: bool = False) -> DiskCache:
    """The cache a write done here (--now) acts on: with the quota, TTL and policy the node's
    workers published (DiskCache.acting), each difference from this shell's said on stderr.
    `disk`: it looks at the root, which must then be the books' (see `_not_their_root`);
    `adopting` (reconcile --force): it makes this shell's root the books', which must then
    be the workers'."""
    cache = state().cache
    theirs, differences = cache.acting()
    if disk or adopting:
        _not_their_root(cache, theirs, adopting)
    for name, mine, workers in differences:
        click.echo(
            f"note: the node's workers run with {name}={env_value(workers)} (this shell: "
            f"{env_value(mine)}): done here with theirs",
            err=True,
        )
    if differences and not cache.registry.alive(cache.keys):
        click.echo(
            "note: no worker of the node is alive; these are the settings its workers last "
            f"published (`cachemgr forget-node {cache.settings.node}` drops them)",
            err=True,
        )
    return theirs


def _not_their_root(cache: DiskCache, theirs: DiskCache, adopting: bool) -> None:
    """A shell whose DISK_CACHE_ROOT is not the workers' and not the books' (none set, a
    typo): refused here in one line. Run, its cleanup was recorded as the node's, failed,
    and the stats and /readyz said the cache was broken until the workers' next one; its
    `reconcile --force` made that directory the books' root, untracking every download."""
    elsewhere = cache.root_elsewhere()
    if not elsewhere:
        return  # theirs
    why = marker.refusal(theirs)
    # The same disk mounted elsewhere (a container) is the books' root only where its marker
    # says so: books with no mark to match (from a version that marked at the first cleanup,
    # a read-only root) let a wrong root through, which reconciled another directory into
    # the books and evicted from it.
    if not adopting and why is None and marker.marked(theirs):
        return
    if why is None and not adopting:
        why = (
            "the books hold no mark of their root yet to tell it is the same disk (the node's "
            "next registration or cleanup writes one; on a read-only root none is ever written)"
        )
    raise Fail(
        f"not done here: this shell's DISK_CACHE_ROOT ({cache.settings.root}) is not the one "
        f"the node's workers use ({elsewhere})"
        + (f", and {marker.without_advice(why)}" if why else ", and --force would make it theirs")
        + f": set DISK_CACHE_ROOT={elsewhere}, or leave out --now (the workers do it there)",
        EXIT_CONFIG,
    )


def send_quota_pass(cache: DiskCache) -> None:
    """Past the threshold: the workers evict, as after a task's registration. Best effort: the
    directory is registered already, and a broker or worker away is said, not a failure."""
    hint = "run `cachemgr cleanup --now` to evict here"
    if not cache.registry.alive(cache.keys):
        click.echo(f"past the threshold, and no worker of the node is alive: {hint}", err=True)
        return
    try:
        state().tasks.send("cleanup", automatic=True)  # sweep first, as a task's does
    except OperationalError as exc:
        click.echo(f"past the threshold; no quota pass could be sent ({exc}): {hint}", err=True)
