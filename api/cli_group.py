"""The `cachemgr` command group: how it finds its app and its commands."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any

import click
import redis
from flask.cli import FlaskGroup, ScriptInfo

from api.cli_errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Fail,
)
from cachemgr.checks import NODE_NAME, NODE_NAME_RULE
from cachemgr.connection import connect
from cachemgr.environment import log_level, unknown_names
from cachemgr.logs import configure_logging
from cachemgr.nodes import NodeRegistry, as_published, unknown_node
from cachemgr.settings import Settings, SettingsError, quoted
from workers.results import quiet_backend_noise

# Commands that only touch the books in Redis: a root gone since the workers started (an
# unmounted disk) is for them to show (the stats warn), not a setting that stops them.
READS = {"stats", "ls", "info", "events", "scheduler", "forget-node"}
# Flask's own options, which mean nothing here (and -A reads like celery's -A workers.app).
FLASK_ONLY = {"env_file", "app", "debug"}


def create_cli_app() -> Any:
    from api import create_app

    ctx = click.get_current_context(silent=True)
    config: dict[str, Any] = {"CACHEMGR_CLI": True}  # a command: it serves nothing
    reading = ctx is not None and ctx.info_name in READS
    try:
        if reading:
            config["CACHEMGR_SETTINGS"] = Settings.from_env(require_root=False)
        if ctx is not None and ctx.meta.get(NODE_GIVEN):
            settings = config.get("CACHEMGR_SETTINGS") or Settings.from_env()
            config["CACHEMGR_SETTINGS"] = node_settings(settings)
            # A pin touches the books alone: its path check looked at this shell's root.
            books_only = reading or ctx.info_name in ("pin", "unpin")
            config["CACHEMGR_LOCAL"] = not (books_only and ctx.meta.get(ELSEWHERE))
        app = create_app(config)
        for said in unknown_names():  # a misspelt quota's name left it at 10 GiB, unsaid
            click.echo(f"note: {said}: ignored", err=True)
        # A read's output is its answer: INFO lines only when asked for. A write (`--now`:
        # registrations, evictions, removals) logs them as a worker does, on stderr.
        configure_logging(level=log_level(default="WARNING" if reading else "INFO"))
        quiet_backend_noise(retries=True)  # its error is said in one line
    except (SettingsError, ValueError) as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None
    except redis.ConnectionError as exc:  # a Redis Cluster's client asks for its nodes at once
        raise Fail(f"Redis cannot be reached: {exc}", EXIT_UNAVAILABLE) from None
    return app


def _one_line(exc: click.UsageError, where: str) -> Fail:
    said = " ".join(exc.format_message().split())  # click's choices span lines
    return Fail(f"{said} (`{where} --help` says how)", EXIT_USAGE)


def _in_echo(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == "echo"


def node_named(ctx: click.Context, param: click.Parameter, name: str | None) -> str | None:
    """A --node option's value, refused in one line unless a node's name (an empty one, an
    unset variable's, was taken for none)."""
    if name is not None and not NODE_NAME.fullmatch(name):
        raise Fail(f"--node {quoted(name)}: not {NODE_NAME_RULE}", EXIT_USAGE)
    return name


# In the context's meta: `--node` was given, the shell's own DISK_CACHE_NODE before it, and
# whether the node it names is another whose root is not this shell's (its disk not read).
NODE_GIVEN, OWN_NODE, ELSEWHERE = "cachemgr.node_given", "cachemgr.own_node", "cachemgr.elsewhere"


def _for_node(ctx: click.Context, param: click.Parameter, name: str | None) -> None:
    """`cachemgr --node b ...`: the shell's DISK_CACHE_NODE for this command."""
    if node_named(ctx, param, name) is not None:
        ctx.meta[OWN_NODE] = os.environ.get("DISK_CACHE_NODE", "")
        os.environ["DISK_CACHE_NODE"] = str(name)
        ctx.meta[NODE_GIVEN] = True


def node_settings(settings: Settings) -> Settings:
    """`settings` (the environment's, DISK_CACHE_NODE set by --node) for the node the
    command's --node names, as its workers published it (nodes.as_published); as they are
    with no --node (a shell's own node is as its environment says: every command would
    otherwise read the registry first, a hung Redis's timeout twice)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not ctx.meta.get(NODE_GIVEN):
        return settings
    return _as_published(settings, ctx.meta.get(OWN_NODE, ""))


def _as_published(settings: Settings, own: str) -> Settings:
    """The node --node names, as its workers published it. One no worker published is
    refused, as the API's `?node=` is (a misspelt name's `ls` listed empty books and its `pin`
    leased a directory in keys no worker reads, each exiting 0), unless it is the shell's own
    DISK_CACHE_NODE (`own`; a shell with none is the unnamed node, not its host's name)."""
    try:
        # A Redis Cluster's client asks for its nodes as it is made: inside the try too.
        client = connect(settings.redis_url, interactive=True)
    except redis.RedisError:  # the command says what is wrong with Redis, in its words
        return settings
    try:
        entries = NodeRegistry(client, settings.disk_cache_cluster).entries()
    except redis.RedisError:
        return settings
    finally:
        client.close()
    node = settings.disk_cache_node
    if node not in entries and node != own:
        raise Fail(str(unknown_node(node, entries)), EXIT_NOT_FOUND)
    root = entries.get(node, {}).get("root")
    ctx = click.get_current_context(silent=True)
    if ctx is not None and node != own and root:
        # Another node whose root is not this shell's: a read looks at its books only, as
        # the API's ?node= does (with the shell's root, `--node node2 stats` from node1's
        # shell said node2's cache was not working). A write done here still needs this
        # shell's root to be the node's (cli_tasks.acting refuses it otherwise). Not by
        # published.root_elsewhere's rule: for another node, a root set alike and resolved
        # apart is most often another host's (/srv/cache on each), whose disk this is not.
        ctx.meta[ELSEWHERE] = str(root) != os.path.realpath(settings.disk_cache_root)
    return as_published(settings, entries)


class CacheGroup(FlaskGroup):
    """Flask's command group, without its own options, and without loading the app to list or
    find a command: a bad setting printed a traceback above `--help`, and `cachemgr nosuch`
    answered with the bad setting instead of "No such command"."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params = [p for p in self.params if p.name not in FLASK_ONLY]
        self.params.append(
            click.Option(
                ["--node"],
                metavar="NAME",
                expose_value=False,
                is_eager=True,  # before the app, which reads it, loads
                callback=_for_node,
                help="Act on that node of a cache of several (as DISK_CACHE_NODE=NAME).",
            )
        )

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """An output that cannot be written (`> /dev/full`, a full disk) in one line too: click
        itself says only a closed pipe, and every command printed a traceback."""
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            said = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)
            if _in_echo(exc):
                said = f"cannot write its output: {exc.strerror or exc}"
                # What is still buffered would fail again as Python exits, in its own words.
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            with contextlib.suppress(OSError):
                click.echo(f"Error: {said}", err=True)
            sys.exit(EXIT_FAILED)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        """`cachemgr --bogus`: one line too."""
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `cachemgr` alone: its help, as click shows it
        except click.UsageError as exc:
            raise _one_line(exc, exc.ctx.command_path if exc.ctx else "cachemgr") from None

    def invoke(self, ctx: click.Context) -> Any:
        """A command's bad usage in one line, as every other refusal is (click's own took three:
        the usage, a hint, the error)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C: 130, as a shell reports SIGINT (click said "Aborted!" and exited 1, as
            # for a failure; `up`, which stops its processes, exits 0).
            click.echo("\ninterrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group named alone (`cachemgr trace`): its help, as click shows it
        except click.UsageError as exc:
            # Some parse errors carry no context: the command is the one being invoked.
            where = exc.ctx.command_path if exc.ctx is not None else " ".join(
                filter(None, [ctx.command_path, ctx.invoked_subcommand])
            )
            raise _one_line(exc, where) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(self.commands)
        with contextlib.suppress(Fail):  # the app's own (flask-smorest's `openapi`) if it loads
            names.update(ctx.ensure_object(ScriptInfo).load_app().cli.list_commands(ctx))
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        try:
            return super().get_command(ctx, name)
        except Fail as exc:  # the app cannot load: it may hold the command (`openapi`)
            raise Fail(
                f"{name!r} is not one of cachemgr's own commands, and the app that may hold it "
                f"cannot load: {exc.message}",
                exc.exit_code,
            ) from None
