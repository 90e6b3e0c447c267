"""Every error is JSON with a code and a message: never an HTML page or a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from flask import Flask, jsonify, request
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from cachemgr import errors
from cachemgr.reconcile import ReconcileBusy
from workers.results import ResultUnavailable, backend_gave_up, quiet_backend_noise

log = logging.getLogger("cachemgr.api")

STATUS = {
    errors.PathError: 400,
    errors.BadArgument: 400,
    errors.NotTracked: 404,
    errors.UnknownNode: 404,
    errors.NotOnDisk: 404,
    errors.Overlap: 409,
    errors.RecordCollision: 409,
    errors.BeingDeleted: 409,
    errors.NodeAlive: 409,
    errors.StillLocked: 409,
    errors.DeleteFailed: 500,
    errors.RootMissing: 503,
    ReconcileBusy: 409,
}
# A task that failed in the worker comes back as an exception rebuilt from its class name.
STATUS_BY_NAME = {cls.__name__: code for cls, code in STATUS.items()}


# Replies of a Redis that is there but cannot serve (a script running past its limit, a cluster
# or replica down, loading, read-only, an ACL refusal): unavailable, like a refused connection.
UNAVAILABLE_REPLIES = (
    "BUSY", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "MISCONF", "NOAUTH", "NOPERM", "OOM",
    "READONLY", "TRYAGAIN", "WRONGPASS",
)  # fmt: skip


# The database REDIS_URL names (its /N) is past the server's `databases`: every command fails.
WRONG_DATABASE = "DB index is out of range"


def wrong_database(exc: BaseException) -> str | None:
    """What to say of a URL whose database the Redis server does not have (REDIS_URL's, or
    a Celery one's: it was said as a broker that cannot be reached); None otherwise."""
    if WRONG_DATABASE not in str(exc):
        return None
    if isinstance(exc, redis.ResponseError):
        named = "REDIS_URL names"
    elif isinstance(exc, OperationalError):
        named = "CELERY_BROKER_URL or CELERY_RESULT_BACKEND (REDIS_URL where unset) name"
    else:
        return None
    return (
        f"{named} a database this Redis server does not have (DB index is out of range): "
        "give a number below its `databases` setting (16 by default)"
    )


# What the API and the CLI say of a result backend away (a Redis restart).
BACKEND_AWAY = "the Celery result backend cannot be reached"

# A script's error names its SHA and Lua line: nothing a user can act on.
SCRIPT_WHERE = re.compile(
    r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?"
    # A redis.call's error inside a script, as Redis before 7 words it.
    r"|Error running script \(call to f_[0-9a-f]+\): @user_script:\d+: @user_script: \d+: -?"
)
# What a Redis that refuses a write (out of memory) says, its code stripped by redis-py.
REFUSED = ("used memory > 'maxmemory'", "READONLY", "You can't write against a read only")


def redis_said(exc: BaseException) -> str:
    """One line for a Redis that cannot serve now: reached and refusing, or not reached."""
    if isinstance(exc, redis.exceptions.InvalidResponse):  # an HTTP server, another service
        return f"what answers at the Redis URL does not speak Redis (a wrong port?): {exc}"
    # LOADING and a refused login are ConnectionErrors to redis-py, from a Redis reached.
    reached = not isinstance(exc, redis.ConnectionError | redis.TimeoutError) or isinstance(
        exc, redis.BusyLoadingError | redis.AuthenticationError
    )
    text = SCRIPT_WHERE.sub("", str(exc))
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        # redis-py's own message ends in its client's repr: a 1 KB line
        name = text.split(" : <", 1)[0]
        text = f"{name} (no Sentinel at the URL answers, or none knows that name)"
    return wrong_database(exc) or (
        f"Redis refuses it now: {text}" if reached else f"Redis cannot be reached: {text}"
    )


def broker_said(exc: BaseException) -> str:
    """One line for a broker that cannot take a task: one out of memory was 'unreachable'."""
    text = str(exc)
    if said := wrong_database(exc):
        return said
    if any(mark in text for mark in REFUSED):
        return f"the Celery broker refuses it now: {text}"
    return f"the Celery broker cannot be reached: {text}"


def redis_unavailable(exc: BaseException) -> bool:
    """Whether a Redis error means the books cannot be read now (a 503), not a bug (a 500)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(exc, redis.exceptions.InvalidResponse):  # not Redis at that address
        return True
    if wrong_database(exc):
        return True
    e = redis.exceptions
    if isinstance(exc, e.ReadOnlyError | e.TryAgainError | e.ClusterDownError | e.OutOfMemoryError):
        return True  # redis-py strips the reply's code from these messages
    if isinstance(exc, e.NoPermissionError | e.AuthenticationError | e.AuthorizationError):
        return True
    if isinstance(exc, redis.ResponseError):
        # A pipeline's error names its command first: "Command # 1 (...) of pipeline caused
        # error: MISCONF ..." (a registration is one).
        text = str(exc).rpartition(" of pipeline caused error: ")[2]
        if text.split(" ", 1)[0].upper() in UNAVAILABLE_REPLIES:
            return True
        # A script's error wraps the reply that failed it: "Error running script ... -OOM
        # command not allowed when used memory > 'maxmemory'" (a full Redis, a 500 before).
        return any(f"-{code} " in text for code in UNAVAILABLE_REPLIES)
    return False


def body(status: int, code: str, message: str, **extra: Any) -> tuple[Any, int]:
    return jsonify({"status": status, "code": code, "message": message, **extra}), status


def register_error_handlers(app: Flask) -> None:
    quiet_backend_noise()

    @app.errorhandler(errors.CacheError)
    def cache_error(exc: errors.CacheError) -> tuple[Any, int]:
        return body(STATUS.get(type(exc), 400), exc.code, str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: Exception) -> tuple[Any, int]:
        if not redis_unavailable(exc):
            return unexpected(exc)
        said = redis_said(exc)
        log.error("redis unreachable: %s", said)
        return body(503, "redis_unavailable", said)

    @app.errorhandler(OperationalError)
    def broker_down(exc: Exception) -> tuple[Any, int]:
        said = broker_said(exc)
        log.error("broker unavailable: %s", said)
        return body(503, "broker_unavailable", said)

    @app.errorhandler(RuntimeError)
    @app.errorhandler(ResultUnavailable)
    def backend_down(exc: Exception) -> tuple[Any, int]:
        if backend_gave_up(exc):
            log.error("Celery's result backend (Redis) cannot be reached: answered 503")
            return body(503, "backend_unavailable", BACKEND_AWAY)
        return unexpected(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int]:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages") if isinstance(data, dict) else None
        message = exc.description or exc.name
        if messages:
            # flask-smorest/webargs: {"query": {"limit": ["Must be ..."]}} -> one clear line
            flat = [
                f"{field}: {' '.join(map(str, problems))}"
                for where in messages.values()
                for field, problems in where.items()
            ]
            message = "invalid parameter - " + "; ".join(flat)
            return body(status, "bad_parameter", message, errors=messages)
        if status == 404 and request.path.startswith("/cache/") and "//" in request.path:
            # `/cache/directories//etc` (or %2F): an absolute path, which no route takes
            return body(400, "bad_path", f"absolute path or empty segment in {request.path!r}")
        code = exc.name.lower().replace(" ", "_")
        response, status = body(status, code, message)
        # werkzeug's own headers: a 405's Allow (RFC 9110 asks for it), a 401's challenge.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Any, int]:
        log.exception("unexpected error")
        return body(500, "internal_error", f"{type(exc).__name__}: {exc}")
