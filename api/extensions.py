"""The API's one extension: the node's DiskCache (reads, straight from Redis) and the task
client (writes, enqueued to the workers). Set up in init_app, as Flask's tutorial does."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Flask, Request, current_app, request
from flask.json.provider import DefaultJSONProvider

from cachemgr import DiskCache, Settings, connect
from cachemgr.clock import RedisClock
from cachemgr.environment import queue_override
from workers.client import CacheClient


@dataclass
class CacheState:
    cache: DiskCache
    tasks: CacheClient


class FastJSONProvider(DefaultJSONProvider):
    """orjson for replies: the stats reply (2.6 KB) encodes in 2 µs instead of 22.
    What orjson cannot encode goes through Flask's own rules."""

    def _encode(self, obj: Any) -> bytes:
        try:  # str keys only, as every reply of ours: orjson's check for others costs it 80%
            return orjson.dumps(obj, default=self.default)
        except orjson.JSONEncodeError:
            try:
                return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS)
            except orjson.JSONEncodeError:
                # A name off the disk that is not UTF-8 (a lone surrogate), in a task's result:
                # escaped as \udcff, as the stdlib writes it, rather than a 500.
                return json.dumps(obj, default=self.default, ensure_ascii=True).encode()

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # a caller asked for stdlib options (indent, sort_keys...)
            return super().dumps(obj, **kwargs)
        return self._encode(obj).decode()

    def response(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._prepare_response_obj(args, kwargs)
        app: Flask = self._app  # type: ignore[assignment]  # a Flask app's provider
        return app.response_class(self._encode(obj), mimetype=self.mimetype)


class CacheExtension:
    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.json = FastJSONProvider(app)
        settings: Settings = app.config.get("CACHEMGR_SETTINGS") or Settings.from_env()
        client: Any = app.config.get("REDIS_CLIENT")
        client = client or connect(settings.redis_url, interactive=True)  # a person waits
        tasks = CacheClient(
            app.config.get("CELERY_BROKER_URL"),
            redis_url=settings.redis_url,
            key_prefix=settings.key_prefix,
            # A named node's queue is the one its workers published (CACHEMGR_QUEUE there);
            # set here, CACHEMGR_QUEUE wins, as in celeryconfig.
            node=settings.disk_cache_node,
            queue=app.config.get("CELERY_TASK_QUEUE") or queue_override(),
            backend=app.config.get("CELERY_RESULT_BACKEND"),
            cluster=settings.disk_cache_cluster,
            redis=client,  # its reads (the node's route) fail fast too
        )
        cache = DiskCache(settings, client, clock=RedisClock(client))  # leases, plays: Redis's
        # The CLI's read of another node whose root is not its shell's: the books alone, as
        # the API's ?node= reads them (cli_group.ELSEWHERE).
        cache.local = bool(app.config.get("CACHEMGR_LOCAL", True))
        app.extensions["cachemgr"] = CacheState(cache, tasks)


def this_app() -> Flask:
    """The app itself, not werkzeug's proxy of it: each attribute read through `current_app`
    or `request` costs about 1.8 µs (the proxy's type raises and catches an AttributeError
    first); fifteen such reads were a tenth of a `GET /cache/stats`."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def this_request() -> Request:
    """The request itself, not werkzeug's proxy of it (see `this_app`)."""
    found: Request = request._get_current_object()  # type: ignore[attr-defined]
    return found


def state() -> CacheState:
    found: CacheState = this_app().extensions["cachemgr"]
    return found


def cache() -> DiskCache:
    return state().cache


def answered(result: Any, wait: float, alive: Callable[[], bool] | None = None) -> bool:
    """Whether a task's answer came within `wait` seconds. False at once when the workers
    will send it again once another's lock lapses (a registration behind it, `behind_lock`):
    that is the answer for now, not one to wait out. A retry for a lost Redis is waited for.
    `alive`: asked about once a second, False once no worker is left to answer."""
    deadline = time.monotonic() + wait
    while True:
        try:
            result.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())), propagate=False)
            return True
        except (TimeoutError, CeleryTimeout):  # Celery raises its own class, not the builtin
            gone = alive is not None and not alive()
            if gone or behind_lock(result) or time.monotonic() >= deadline:
                return result.ready()  # it may have come at the very last moment


def behind_lock(result: Any) -> bool:
    """Whether the task waits to run again once another's lock lapses (workers/tasks.py)."""
    return bool(result.state == "RETRY" and type(result.info).__name__ == "StillLocked")


def let_go(result: Any) -> None:
    """Stop following a task not waited out: Celery keeps its pending result (and the
    subscription to it) until the task ends, and its finaliser ran at exit."""
    with contextlib.suppress(Exception):
        result.backend.remove_pending_result(result)
