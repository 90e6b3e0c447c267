"""The `cachemgr` command: the admin CLI, with `serve` and `up` (api/cli_stack.py).

Reads go straight to Redis; writes send the same tasks as the API (or run inline with --now).
Output is a table on a terminal and JSON with --json or when piped. A user error is one
line and an exit code (api/cli_errors.py), never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import with_appcontext

from api.cli_errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    Fail,
    friendly,
)
from api.cli_group import CacheGroup, create_cli_app, node_named
from api.cli_sim import simulate_command, trace_group
from api.cli_stack import serve, up
from api.cli_tables import entry_rows, kv, plan_table, stats_table
from api.cli_tasks import acting, send_quota_pass, state, wait_task
from api.errors import redis_said
from cachemgr import events as event_log
from cachemgr import journal, listing, paths
from cachemgr.continuation import cleanup_through
from cachemgr.logs import printable
from cachemgr.pins import MAX_PIN_SECONDS, TTL_HINT
from cachemgr.quota import quota_pass_due
from cachemgr.reconcile import reconcile as run_reconcile
from cachemgr.settings import parse_duration, parse_size, quoted

# The API's own limit for GET /cache/events; a COUNT past 2^63 was a Redis error's traceback.
MAX_EVENTS = 10000


def _option(option: str, text: str, parse: Callable[[str], int]) -> int:
    """An option's value parsed, or one line naming the option and what was typed (exit 2)."""
    try:
        return parse(text)
    except ValueError as exc:
        raise Fail(f"{option} {quoted(text)}: {exc}", EXIT_USAGE) from None


def _json_wanted(as_json: bool | None) -> bool:
    return bool(as_json or (as_json is None and not sys.stdout.isatty()))


def emit(data: Any, as_json: bool | None, table: Callable[[Any], None]) -> None:
    """JSON when asked or when stdout is not a terminal; a table otherwise."""
    if _json_wanted(as_json):
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        table(data)


json_option = click.option("--json", "as_json", is_flag=True, default=None, help="JSON output.")
now_option = click.option("--now", is_flag=True, help="Do it in this process, not via a worker.")


def _skipped(result: Any, as_json: bool | None) -> None:
    """A skipped, disabled or retried operation fails (exit 1), its result still printed as
    JSON when JSON is wanted: a script reading stdout gets an answer."""
    status = result.get("status") if isinstance(result, dict) else None
    if status not in ("skipped", "disabled", "retry"):
        return
    if _json_wanted(as_json):
        click.echo(json.dumps(result, indent=2, default=str))
    reason = result.get("reason") or (
        "ENABLE_DISK_CACHE_MANAGEMENT is false" if status == "disabled" else ""
    )
    raise Fail(f"{status}: {reason}".rstrip(": "), EXIT_FAILED)


@click.command()
@click.option("--reset", is_flag=True, help="Start the since-reset figures afresh first.")
@click.option(
    "--node", default=None, callback=node_named, help="That node's stats alone (see `nodes`)."
)
@json_option
@with_appcontext
@friendly
def stats(reset: bool, node: str | None, as_json: bool | None) -> None:
    """Usage against the quota, hit ratios and counters: this node's, with every node's and
    their totals, as GET /cache/stats; --node: that node's alone."""
    cache = state().cache
    target = cache.for_node(node) if node is not None else cache
    if reset:
        target.reset_stats()
        # This node's alone (DISK_CACHE_NODE's, or --node's): the output shows every node's.
        said = target.settings.node or "(unnamed)"
        click.echo(f"reset: the since-reset figures of node {said} start afresh", err=True)
    # Every node's too: a shell whose DISK_CACHE_NODE names none that runs (`up --nodes 2`)
    # said only "no worker of node vm is alive", as if the cache were down.
    s = target.stats() if node is not None else cache.cluster_stats()
    now = cache.clock()  # Redis's, as the books'
    emit(s, as_json, lambda stats: stats_table(stats, now))


@click.command("ls")
@click.option("--larger-than", help="Only directories larger than this (e.g. 1GB).")
@click.option("--idle-for", help="Only directories not accessed for this long (e.g. 7d).")
@click.option("--sort", type=click.Choice(list(listing.ORDERS)), default="last-access")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@json_option
@with_appcontext
@friendly
def ls(
    larger_than: str | None, idle_for: str | None, sort: str, limit: int | None, as_json: Any
) -> None:
    """List cached directories (newest access first by default)."""
    # '' is a value (an unset variable in a script), refused as one: not "no filter".
    min_size = None if larger_than is None else _option("--larger-than", larger_than, parse_size)
    idle = None if idle_for is None else _option("--idle-for", idle_for, parse_duration)
    acting = state().cache.enforcing()  # the workers' TTL
    now = acting.clock()  # by Redis's clock, as the books
    entries = listing.select(
        acting.store, now, larger_than=min_size, idle_for=idle, sort=sort, limit=limit
    )
    emit([e.to_dict(now) for e in entries], as_json, lambda _: entry_rows(entries, now))


@click.command()
@click.argument("path")
@json_option
@with_appcontext
@friendly
def info(path: str, as_json: Any) -> None:
    """One cached directory."""
    entry = state().cache.info(path)  # expires_at by the workers' TTL

    def lines(d: dict[str, Any]) -> None:
        for key, value in d.items():
            if key == "holders":  # one line each: a name or path escaped, never a newline
                value = "\n".join(
                    f"{'':<15}" * bool(i)
                    + printable(
                        f"{h['holder'] or '(none named)'} until {h['until']}"
                        + (f" on {h['path']}" if h["path"] != d["path"] else "")
                    )
                    for i, h in enumerate(value)
                ) or "none"
            else:
                value = printable(str(value))
            click.echo(f"{key:<14} {value}")

    emit(entry.to_dict(), as_json, lines)


@click.command()
@click.argument("path")
@now_option
@json_option
@with_appcontext
@friendly
def register(path: str, now: bool, as_json: Any) -> None:
    """Register a directory under the cache root."""
    if now:
        cache = acting(disk=True)
        result = cache.register(path)
        if quota_pass_due(result):
            send_quota_pass(cache)
    else:
        result = wait_task("register_directory", path)
    _skipped(result, as_json)
    emit(result, as_json, kv)


@click.command()
@click.argument("path")
@click.option("--files", is_flag=True, help="Delete the directory from disk too.")
@now_option
@json_option
@with_appcontext
@friendly
def rm(path: str, files: bool, now: bool, as_json: Any) -> None:
    """Stop tracking a directory (and delete it with --files)."""
    if now:
        result = acting(disk=files).remove(path, remove_files=files)
    else:
        # Not tracked: said now, not after a worker's round trip.
        journal.check_removable(state().cache.store, paths.normalize(path))
        result = wait_task("remove_directory", path, files)
    _skipped(result, as_json)
    emit(result, as_json, kv)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would expire and be evicted.")
@now_option
@json_option
@with_appcontext
@friendly
def cleanup(dry_run: bool, now: bool, as_json: Any) -> None:
    """Sweep expired directories, then enforce the quota."""
    if now:
        result = cleanup_through(acting(disk=True), dry_run=dry_run)
    else:  # the worker plans too: with the settings and policy it enforces, not this shell's
        result = wait_task("cleanup", dry_run=dry_run)
    _skipped(result, as_json)
    emit(result, as_json, plan_table)


@click.command()
@click.option("--dry-run", is_flag=True, help="Report the differences, change nothing.")
@click.option(
    "--force", is_flag=True, help="Go on over an empty root (downloads removed on purpose)."
)
@now_option
@json_option
@with_appcontext
@friendly
def reconcile(dry_run: bool, force: bool, now: bool, as_json: Any) -> None:
    """Compare the books with the disk and fix them."""
    if not now:  # the worker plans too: it sees the disk as it does (its user, its mount)
        result = wait_task("reconcile", dry_run=dry_run, force=force)
    else:
        cache = acting(disk=True, adopting=force and not dry_run)
        if not sys.stderr.isatty():  # a bar is for a person: in a log it was a bare "walking"
            result = run_reconcile(cache, dry_run=dry_run, force=force)
        else:
            with click.progressbar(length=1, label="walking", file=sys.stderr) as bar:

                def progress(done: int, total: int, path: str) -> None:
                    bar.length = total
                    bar.update(1)

                result = run_reconcile(cache, dry_run=dry_run, progress=progress, force=force)
        if quota_pass_due(result):
            send_quota_pass(cache)
    _skipped(result, as_json)
    emit(result, as_json, kv)


HOLDER_HELP = "Whose lease (a stream's id): unpin --holder ends it alone; none: anyone's."


@click.command()
@click.argument("path")
@click.option("--ttl", "ttl", default="1h", help="Lease length (e.g. 30m); renew before it lapses.")
@click.option("--holder", default=None, help=HOLDER_HELP)
@json_option
@with_appcontext
@friendly
def pin(path: str, ttl: str, holder: str | None, as_json: Any) -> None:
    """Pin a directory: never evicted or expired while the lease holds."""
    seconds = _option("--ttl", ttl, functools.partial(parse_duration, high=None))
    if seconds <= 0:
        raise Fail(f"--ttl {quoted(ttl)}: must be more than 0 s", EXIT_USAGE)
    if seconds > MAX_PIN_SECONDS:
        # Said here, with the text typed: the domain's own message would quote a 400-digit int.
        raise Fail(
            f"--ttl {quoted(ttl)}: ttl_seconds must be at most {MAX_PIN_SECONDS} s{TTL_HINT}",
            EXIT_USAGE,
        )
    result = acting().pin(path, seconds, holder)  # the workers' switch, as --now obeys
    _skipped(result, as_json)
    emit(result, as_json, kv)


@click.command()
@click.argument("path")
@click.option("--holder", default=None, help=HOLDER_HELP)
@json_option
@with_appcontext
@friendly
def unpin(path: str, holder: str | None, as_json: Any) -> None:
    """End a holder's lease on a directory (--holder), or every lease on it."""
    result = acting().unpin(path, holder)
    _skipped(result, as_json)
    emit(result, as_json, kv)


@click.command()
@click.option("--limit", type=click.IntRange(1, MAX_EVENTS), default=20)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (always: the events' format).")
@with_appcontext
@friendly
def events(limit: int, follow: bool, as_json: bool) -> None:
    """Evictions, expiries, removals and failed cleanups (JSON lines)."""
    store = state().cache.store
    latest = list(reversed(event_log.latest(store, limit)))
    for event in latest:
        click.echo(json.dumps(event))
    if not follow:
        return
    def away(exc: BaseException | None) -> None:
        # On stderr: stdout stays the events' JSON lines.
        said = f"{redis_said(exc)}: following again once it answers" if exc else "following again"
        click.echo(f"events: {said}", err=True)

    for event in event_log.follow(store, latest[-1]["id"] if latest else "$", away=away):
        click.echo(json.dumps(event))


@click.command()
@click.argument("action", type=click.Choice(["start", "stop"]))
@json_option
@with_appcontext
@friendly
def scheduler(action: str, as_json: Any) -> None:
    """Let periodic cleanups run (start), or make them skip (stop); manual ones still run."""
    emit(state().cache.set_scheduler(action == "start"), as_json, kv)


@click.command("forget-node")
@click.argument("name")
@json_option
@with_appcontext
@friendly
def forget_node(name: str, as_json: Any) -> None:
    """Forget a node taken out of service (its books stay in Redis); refused while it is up."""
    emit(state().cache.registry.forget(name), as_json, kv)


COMMANDS = [
    stats, ls, info, register, rm, cleanup, reconcile, pin, unpin, events, scheduler, forget_node
]


main = CacheGroup(
    name="cachemgr",
    help="cachemgr: keep a download directory from filling the disk.",
    create_app=create_cli_app,
    add_default_commands=False,
    add_version_option=False,
    load_dotenv=False,
)
for command in [*COMMANDS, serve, up, simulate_command, trace_group]:
    main.add_command(command)


if __name__ == "__main__":
    main()
