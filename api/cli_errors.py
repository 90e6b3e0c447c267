"""How a CLI command fails: one line on stderr and an exit code scripts can rely on, never
a traceback. 0 done, 1 failed or skipped, 2 bad usage or bad path, 3 not found, 4 Redis or
broker unreachable, 5 bad configuration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import redis
from kombu.exceptions import OperationalError

from api.errors import BACKEND_AWAY, broker_said, redis_said, redis_unavailable, wrong_database
from cachemgr import CacheError, NotOnDisk, NotTracked, PathError, SettingsError
from workers.results import ResultUnavailable, backend_gave_up

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_CONFIG = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell says it


class Fail(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it off the instance


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected error into one line and an exit code scripts can rely on."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (NotTracked, NotOnDisk) as exc:
            raise Fail(str(exc), EXIT_NOT_FOUND) from None
        except SettingsError as exc:  # a ValueError too: caught first
            raise Fail(str(exc), EXIT_CONFIG) from None
        except (PathError, ValueError) as exc:
            raise Fail(str(exc), EXIT_USAGE) from None
        except CacheError as exc:
            raise Fail(str(exc), EXIT_FAILED) from None
        except redis.RedisError as exc:  # away, out of memory, read-only, loading...: no bug
            if said := wrong_database(exc):
                raise Fail(said, EXIT_CONFIG) from None
            if not redis_unavailable(exc):
                raise
            raise Fail(redis_said(exc), EXIT_UNAVAILABLE) from None
        except ResultUnavailable:  # a send's too (BackendUnavailable), before the broker's
            raise Fail(BACKEND_AWAY, EXIT_UNAVAILABLE) from None
        except OperationalError as exc:
            code = EXIT_CONFIG if wrong_database(exc) else EXIT_UNAVAILABLE
            raise Fail(broker_said(exc), code) from None
        except RuntimeError as exc:
            if not backend_gave_up(exc):
                raise
            raise Fail(BACKEND_AWAY, EXIT_UNAVAILABLE) from None

    return wrapper
