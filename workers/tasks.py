"""The Celery tasks: the contract the download pipeline codes against (stable names).

Each task is a thin call into cachemgr. A bad path fails at once with a clear message and no
retry; a lost Redis connection is retried with exponential backoff. Late acknowledgement is on
for the idempotent tasks, so a worker that dies mid-task leaves the task to another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import redis
from celery import Task
from kombu.exceptions import OperationalError

from cachemgr import CacheError, DiskCache, Settings, SettingsError, connect, history
from cachemgr import cleanup as cleanups
from cachemgr.clock import RedisClock
from cachemgr.continuation import continuation, delay
from cachemgr.errors import StillLocked
from cachemgr.locks import retries_to_outlast, retry_wait
from cachemgr.quota import send_quota_pass
from cachemgr.reconcile import reconcile as reconcile_books
from workers.app import (
    BEAT_INTERVAL,
    LOCK_RETRIES,
    WORKER,
    app,
    beat_interval,
    lock_retries,
    published_broker,
)

log = logging.getLogger("cachemgr.workers")

_cache: DiskCache | None = None

RETRY: dict[str, Any] = {
    # Expected refusals (bad path, not tracked...) are logged in one line, not as a traceback.
    "throws": (CacheError, SettingsError),
    # OperationalError: the broker away when a task sends another (register_completed_download
    # hands its directory to register_directory): it failed, and the registration was lost.
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError, OperationalError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    # Backoff to a minute, jittered: about 7 minutes of Redis away in all (a restart, a
    # failover). Eight retries gave up after 30-65 s, and a queued registration was lost.
    "max_retries": 20,
}
IDEMPOTENT = {"acks_late": True, **RETRY}


def get_cache() -> DiskCache:
    """The worker process's DiskCache, built from the environment on first use. The root was
    checked when the worker started (workers/app.py); one gone since (an unmounted disk) is for
    each operation to meet and report (a cleanup's RootMissing is recorded as a failed pass),
    not a bad setting that fails every task of a process that had run none yet."""
    global _cache
    if _cache is None:
        settings = Settings.from_env(require_root=False)
        client = connect(settings.redis_url)
        configure(DiskCache(settings, client, clock=RedisClock(client)))
    assert _cache is not None
    return _cache


def current_cache() -> DiskCache | None:
    return _cache


def configure(cache: DiskCache | None) -> None:
    """Use this DiskCache in the tasks (tests, `cachemgr up`); None forgets it. The worker
    publishes the node when it is ready (workers/app.py), again until Redis answers."""
    global _cache
    _cache = cache
    if cache is None:
        return
    pause = os.environ.get("CACHEMGR_TEST_PAUSE_BEFORE_DELETE")
    if pause:  # fault tests: hold a deletion open so the test can kill the worker there
        cache.before_delete = lambda path: time.sleep(float(pause))
    with contextlib.suppress(redis.RedisError):  # not yet: announced at each heartbeat
        cache.publish_config(
            queue=app.conf.task_default_queue, worker=WORKER, broker=published_broker()
        )


def _quota_pass_if_due(booked: dict[str, Any]) -> dict[str, Any]:
    # A cleanup, sweep first: a quota pass alone evicted (and counted as evictions) the
    # directories whose TTL had run out, and under another policy than LRU evicted live
    # ones while expired ones stayed.
    # Its result is read by none (the books' history keeps the outcome): not stored.
    send_quota_pass(
        get_cache(), booked,
        lambda: cleanup.apply_async(kwargs={"automatic": True}, ignore_result=True),
    )  # fmt: skip
    return booked


def _done_or_later(
    task: Task, done: dict[str, Any], what: str = "registration"
) -> dict[str, Any]:
    """A registration or removal skipped for another's lock (the directory's, or one above
    it) is sent again (retry_wait), by the time that lock lapses at the latest (`retry_after`):
    its holder may be a worker killed mid-task, whose lock stands for
    DISK_CACHE_LOCK_TIMEOUT_SECONDS, and the redelivery that answered "skipped" as a success
    lost the download from the books (a removal: left it on the disk and the books). The
    newest download is sent again by its path: asked again, "the newest" may be another.
    Still locked after every retry: a failure, said, not a success."""
    if done.get("status") != "skipped" or "retry_after" not in done:
        return done
    path, reason = done["path"], done["reason"]
    timeout = get_cache().settings.disk_cache_lock_timeout_seconds
    limit = max(int(task.max_retries or 0), retries_to_outlast(timeout))
    waited = lock_retries(task)
    if waited >= limit:
        said = (
            f"{path!r} was never free for its {what} ({reason}) after "
            f"{waited} retries: send it again"
            + (", or run `cachemgr reconcile`" if what == "registration" else "")
        )
        log.error("%s", said, extra={"event": f"{what}_lost", "path": path})
        raise StillLocked(said)
    countdown = min(retry_wait(waited), float(done["retry_after"]) + 1)
    log.info("%s of %s skipped (%s): again in %.0f s", what, path, reason, countdown)
    headers = {**(task.request.headers or {}), LOCK_RETRIES: waited + 1}
    if task.name == register_completed_download.name:
        register_directory.apply_async(
            (path,), countdown=countdown, queue=_queue_of(task), headers=headers
        )
        return {**done, "sent_again": True}
    # The lock named as the retry's reason: a waiting caller tells it from a lost Redis.
    raise task.retry(exc=StillLocked(reason), countdown=countdown, headers=headers)


def _queue_of(task: Task) -> str:
    """The queue the task came from: where the node's workers read (CACHEMGR_QUEUE)."""
    info = task.request.delivery_info or {}
    return str(info.get("routing_key") or app.conf.task_default_queue)


@app.task(name="cachemgr.register_directory", bind=True, **IDEMPOTENT)
def register_directory(self: Task, path: str) -> dict[str, Any]:
    return _quota_pass_if_due(_done_or_later(self, get_cache().register(path)))


@app.task(name="cachemgr.register_completed_download", bind=True, **IDEMPOTENT)
def register_completed_download(self: Task) -> dict[str, Any]:
    return _quota_pass_if_due(_done_or_later(self, get_cache().register_latest()))


@app.task(name="cachemgr.touch_directory", **RETRY)
def touch_directory(path: str, miss_bytes: int = 0) -> dict[str, Any]:
    return get_cache().access(path, miss_bytes=miss_bytes)


@app.task(name="cachemgr.remove_directory", bind=True, **IDEMPOTENT)
def remove_directory(self: Task, path: str, remove_files: bool = False) -> dict[str, Any]:
    done = get_cache().remove(path, remove_files=remove_files, missing_ok=True)
    return _done_or_later(self, done, "removal")


def _cleanup(
    task: Task,
    *,
    sweep: bool,
    enforce: bool,
    periodic: bool,
    dry_run: bool,
    resume: bool,
    owed: int | None = None,
    automatic: bool = False,
    again: bool = False,
) -> Any:
    cache = get_cache()
    every = beat_interval(task) if periodic else None
    if every is not None:
        history.beat_every(cache, every)
    from_beat = BEAT_INTERVAL in (task.request.headers or {})  # its interval believed or not
    if periodic and not from_beat and not task.request.retries:
        log.warning(
            "a periodic cleanup not sent by beat (no %s header): done as beat's, not counted "
            "as beat's run (periodic=True is beat's to send)",
            BEAT_INTERVAL,
            extra={"event": "not_beat"},
        )
    result = cleanups.cleanup(
        cache,
        periodic=periodic,
        from_beat=from_beat,
        automatic=automatic,
        dry_run=dry_run,
        sweep_expired=sweep,
        enforce=enforce,
        resume=resume,
        owed=owed,
        again=again,
    )
    scheduled = periodic or automatic
    rest = continuation(result, resume=resume, owed=owed, scheduled=scheduled)
    if rest is not None:
        # Bounded pass (or one that met another cleanup and must run after it): hand the
        # rest to a fresh task rather than hold this worker.
        task.apply_async(kwargs=rest, countdown=delay(result))
        result["continued"] = True
    return result


def _pass_task(name: str, *, sweep: bool, enforce: bool) -> Task:
    """The three cleanup tasks differ only in which passes they run."""

    def run(
        self: Task,
        periodic: bool = False,
        dry_run: bool = False,
        resume: bool = False,
        automatic: bool = False,
        owed: int | None = None,
        again: bool = False,
    ) -> Any:
        return _cleanup(
            self,
            sweep=sweep,
            enforce=enforce,
            periodic=periodic,
            dry_run=dry_run,
            resume=resume,
            owed=owed,
            automatic=automatic,
            again=again,
        )

    # Named in an argument error: "cachemgr.cleanup() got an unexpected keyword argument",
    # not "_pass_task.<locals>.run()".
    run.__qualname__, run.__name__ = f"cachemgr.{name}", name
    task: Task = app.task(name=f"cachemgr.{name}", bind=True, **IDEMPOTENT)(run)
    return task


sweep_expired = _pass_task("sweep_expired", sweep=True, enforce=False)
enforce_quota = _pass_task("enforce_quota", sweep=False, enforce=True)
cleanup = _pass_task("cleanup", sweep=True, enforce=True)


@app.task(name="cachemgr.reconcile", **IDEMPOTENT)
def reconcile(dry_run: bool = False, force: bool = False) -> dict[str, Any]:
    return _quota_pass_if_due(reconcile_books(get_cache(), dry_run=dry_run, force=force))


@app.task(name="cachemgr.pin_directory", **IDEMPOTENT)
def pin_directory(path: str, ttl_seconds: int = 3600, holder: str | None = None) -> dict[str, Any]:
    return get_cache().pin(path, ttl_seconds, holder)


@app.task(name="cachemgr.unpin_directory", **IDEMPOTENT)
def unpin_directory(path: str, holder: str | None = None) -> dict[str, Any]:
    return get_cache().unpin(path, holder)


@app.task(name="cachemgr.noop")
def noop() -> None:
    """Does nothing: the benchmark's baseline for a task's own cost."""
