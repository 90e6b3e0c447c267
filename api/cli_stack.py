"""`cachemgr serve` (the web process, under gunicorn) and `cachemgr up` (the whole system)."""

from __future__ import annotations

import os
import sys

import click

from api import api_settings, stack
from api.cli_errors import EXIT_CONFIG, Fail
from cachemgr import Settings, SettingsError
from workers.urls import celery_env_problem

MAX_WEB_WORKERS = 1024


def _web_workers() -> int:
    """WEB_CONCURRENCY, read when `serve` runs: read at import, a bad value broke every command."""
    # gunicorn's own advice, 2 x cores + 1: requests wait on Redis, and the GIL is per process
    default = min(2 * (os.cpu_count() or 1) + 1, MAX_WEB_WORKERS)
    return stack.whole_env("WEB_CONCURRENCY", default, 1, MAX_WEB_WORKERS)


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WEB_WORKERS),
    default=None,
    help="gunicorn worker processes (default: $WEB_CONCURRENCY, else 2 x cores + 1).",
)
def serve(workers: int | None) -> None:
    """Serve the API under gunicorn ($PORT or 8080; loopback only without a token)."""
    try:
        Settings.from_env()  # each gunicorn worker would fail on it with a traceback
        api_settings()
        if problem := celery_env_problem():
            raise SettingsError(problem)
        argv = stack.serve_command(workers or _web_workers())
    except SettingsError as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None
    os.execv(argv[0], argv)


@click.command()
@click.option(
    "--flower", is_flag=True, help="Also start Flower on 127.0.0.1:$FLOWER_PORT (5555)."
)
@click.option("--nodes", type=click.IntRange(1, 16), default=1, help="Local cache nodes to run.")
def up(flower: bool, nodes: int) -> None:
    """Start the whole system here: Redis (embedded when REDIS_URL is unset), API, worker, beat."""
    try:
        code = stack.up(flower=flower, nodes=nodes)
    except SettingsError as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None
    if code:
        sys.exit(code)
