"""`cachemgr simulate TRACE` and `cachemgr trace export`: pick a policy and a quota from evidence.

Plain click objects (`simulate_command`, `trace_group`), registered on the main CLI. Every
expected error is one line (click.ClickException), never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import redis

from api.cli_group import node_settings
from api.errors import redis_said, redis_unavailable, wrong_database
from api.humanize import counted
from cachemgr.access_log import Exported, export_rows
from cachemgr.connection import connect
from cachemgr.keys import Keys
from cachemgr.logs import printable
from cachemgr.models import MODELS
from cachemgr.settings import Settings, SettingsError
from cachemgr.simulate import BOUNDS, CacheSize, format_table, parse_size, plot, simulate
from cachemgr.traces import (
    FORMATS,
    Trace,
    TraceError,
    read_trace,
)


class Refused(click.ClickException):
    """One line, and the main CLI's exit code for it: 2 bad usage or input, 4 Redis
    unreachable, 5 bad configuration (1, click's own, is left for failures)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it off the instance


def _cache_size(text: str) -> CacheSize:
    """A --size, refused in one line when it is not one or is beyond 2^63 - 1 bytes."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def _read_stdin(fmt: str | None) -> Trace:
    """`-`: the trace from standard input, through a file aside (every reader takes a path),
    compressed or not, CSV (an export piped in) or text unless --format says otherwise."""
    # read_trace tells it as it tells a file whose name says nothing: compression by its
    # first bytes, CSV by its header line.
    with tempfile.NamedTemporaryFile(prefix="cachemgr-trace-") as aside:
        shutil.copyfileobj(sys.stdin.buffer, aside)
        aside.flush()
        try:
            trace = read_trace(aside.name, fmt)
        except TraceError as exc:  # named as the user knows it, not by the file aside
            raise TraceError(str(exc).replace(aside.name, "stdin")) from None
    return replace(trace, name="stdin")


@click.command("simulate")
@click.argument("trace", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help=f"Policy to replay (repeatable; default all: {', '.join(MODELS)}).",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    help="Cache size: 1% / 10% (or 0.01 / 0.1) of the working set, or 128MiB (binary), 2GB "
    "(= 2G, decimal, as in the settings), bytes (repeatable; default 1%, 5%, 10%).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Trace format (default: from the file name: .bin oracleGeneral, .csv; else CSV when "
    "its first line names the columns, text otherwise).",
)
@click.option("--bounds/--no-bounds", default=True, help="Also compute Belady, BeladySize, PFOO-L.")
@click.option("--limit", type=int, default=None, help="Replay only the first N requests.")
@click.option(
    "--threshold",
    type=float,
    default=1.0,
    show_default=True,
    help="Evict once usage passes this share of the size (cachemgr's own: 0.9).",
)
@click.option(
    "--target",
    type=float,
    default=None,
    help="...down to this share (default: the threshold; cachemgr's own: 0.8).",
)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG plot.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def simulate_command(
    trace: str,
    policies: tuple[str, ...],
    sizes: tuple[str, ...],
    fmt: str | None,
    bounds: bool,
    limit: int | None,
    threshold: float,
    target: float | None,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """Replay TRACE (a file, or - for standard input) through the policies at several cache
    sizes; print miss ratios."""
    chosen = list(dict.fromkeys(p.strip().lower() for p in policies)) or list(MODELS)
    unknown = [p for p in chosen if p not in MODELS]
    if unknown:
        raise Refused(f"unknown policy {unknown[0]!r} (known: {', '.join(MODELS)})")
    parsed = [_cache_size(s) for s in dict.fromkeys(sizes or ("1%", "5%", "10%"))]
    if plot_path is not None and not Path(plot_path).name.strip():
        raise Refused("--plot needs a file name (e.g. --plot curves.png)")
    if plot_path and not Path(plot_path).suffix:
        plot_path += ".png"  # what matplotlib writes: the path said after is the one written
    if plot_path:
        # Said before the replay, not after minutes of it (with --json, nothing was printed).
        _plot_writable(plot_path)
    if limit is not None and limit <= 0:
        raise Refused("--limit must be > 0")
    target = threshold if target is None else target
    if not 0 < target <= threshold <= 1:
        raise Refused("need 0 < --target <= --threshold <= 1")
    try:
        data = _read_stdin(fmt) if trace == "-" else read_trace(trace, fmt)
    except TraceError as exc:
        raise Refused(str(exc)) from None
    if limit:
        data = data.head(limit)
    results = simulate(
        data,
        chosen,
        parsed,
        with_bounds=BOUNDS if bounds else (),
        progress=not as_json,
        threshold=threshold,
        target=target,
    )
    _print_results(data, results, as_json)
    if plot_path:
        try:
            plot(results, plot_path, title=data.name)
        except (OSError, ValueError) as exc:  # the results are out: the plot alone is lost
            why = getattr(exc, "strerror", None) or exc
            raise Refused(f"cannot write the plot {printable(plot_path)}: {why}") from None
        if not as_json:
            click.echo(f"plot written to {printable(plot_path)}")


def _plot_writable(path: str) -> None:
    """A plot --plot could not write, refused before the replay: a format matplotlib does not
    write, a missing directory, a file that cannot be created there."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    kind = Path(path).suffix.lstrip(".").lower()
    known = FigureCanvasBase.get_supported_filetypes()
    if kind not in known:
        raise Refused(
            f"--plot {printable(path)}: matplotlib writes no {kind!r} (it writes "
            f"{', '.join(sorted(known))})"
        )
    if not Path(path).absolute().parent.is_dir():
        raise Refused(f"cannot write the plot {printable(path)}: no directory {Path(path).parent}")
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise Refused(f"cannot write the plot {printable(path)}: {exc.strerror or exc}") from None
    if not existed:
        os.unlink(path)  # the check's: none is left behind should the replay fail


def _print_results(data: Any, results: Any, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "trace": data.name,
                    "requests": len(data),
                    "objects": data.objects,
                    "resized_requests": data.resized(),
                    "unsized_requests": data.unsized(),
                    "working_set_bytes": data.working_set_bytes(),
                    "results": [r.to_dict() for r in results],
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"{data.name}: {counted(len(data), 'request')}, {counted(data.objects, 'object')}, "
        f"working set {data.working_set_bytes():,} bytes"
    )
    resized = data.resized()
    if resized:
        click.echo(
            f"note: {counted(resized, 'request')} {'asks' if resized == 1 else 'ask'} for an "
            "object at another size than its "
            "last request: as in libCacheSim, a hit counts the request's bytes while the "
            "cached copy keeps the size it was admitted at, and the PFOO-L bound prices each "
            "object at its smallest size"
        )
    unsized = data.unsized()
    if unsized < len(data) and unsized:  # all 0: the table says n/a
        click.echo(
            f"note: {counted(unsized, 'request')} of size 0 (in an exported access log: misses "
            "sent without their size, of a path never seen with one): the byte ratios count "
            "them as free; a pipeline that sends a miss's size makes them count"
        )
    click.echo(format_table(results))


@click.group("trace")
def trace_group() -> None:
    """The access log: an opt-in, capped Redis stream of every access (set
    DISK_CACHE_ACCESS_LOG_MAXLEN on the node's workers to record it)."""


def _keys_and_client(redis_url: str | None, prefix: str | None) -> tuple[Keys, Any]:
    if redis_url is None or prefix is None:
        try:
            settings = node_settings(Settings.from_env(require_root=False))
        except SettingsError as exc:
            raise Refused(str(exc), 5) from None
        redis_url = redis_url or settings.redis_url
        prefix = settings.key_prefix if prefix is None else prefix  # a named node's {n}:
    try:
        prefix.encode()
    except UnicodeEncodeError:
        raise Refused(f"--prefix {prefix!r} is not valid UTF-8") from None
    try:
        client = connect(redis_url, interactive=True)  # 5 s for a hung one, as every command
        client.ping()  # before the output file is opened: a failure must not empty it
    except ValueError as exc:
        raise Refused(f"bad Redis URL {redis_url!r}: {exc}") from None
    except redis.RedisError as exc:
        if said := wrong_database(exc):
            raise Refused(said, 5) from None
        if not redis_unavailable(exc):
            raise
        raise Refused(redis_said(exc), 4) from None
    return Keys(prefix), client


def _file_mode(target: Path) -> int:
    """The mode the finished file gets: the old file's, else what open() would have given
    (mkstemp's own 0600 would hide an export the user meant to share)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _export_to_file(
    client: Any, keys: Keys, target: Path, count: int | None
) -> Exported:
    """Written aside under a name of its own and renamed once complete: a failure leaves the
    old file as it was, and no file of the user's (`out.csv.part`) is ever overwritten. A
    symlink is followed (the file it names is replaced, not the link); what is not a regular
    file (a named pipe, /dev/stdout, a process substitution) is written into directly."""
    target = Path(os.path.realpath(target))
    try:
        regular = stat.S_ISREG(target.stat().st_mode)
    except FileNotFoundError:
        regular = True  # a new file
    if not regular:
        with target.open("w", newline="", encoding="utf-8") as fh:
            return export_rows(client, keys, fh, count)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    part = Path(name)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            done = export_rows(client, keys, fh, count)
        part.chmod(_file_mode(target))
        part.replace(target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return done


@trace_group.command("export")
@click.option("--redis-url", default=None, help="Default: REDIS_URL from the environment.")
@click.option(
    "--prefix",
    default=None,
    help="Key prefix of the node (default: the node's, from DISK_CACHE_KEY_PREFIX or "
    "DISK_CACHE_NODE).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    help="CSV file to write (default: standard output).",
)
@click.option("--count", type=int, default=None, help="At most this many accesses (oldest first).")
def export_command(
    redis_url: str | None, prefix: str | None, output: str, count: int | None
) -> None:
    """Write the access log as CSV timestamp,path,size,hit, for `cachemgr simulate`."""
    if count is not None and count <= 0:
        raise Refused("--count must be > 0")
    if not output.strip():
        raise Refused("-o needs a file name (or - for standard output)")
    if output != "-" and not Path(output).absolute().parent.is_dir():
        parent = printable(str(Path(output).absolute().parent))
        raise Refused(f"cannot write {printable(output)}: no directory {parent}")
    keys, client = _keys_and_client(redis_url, prefix)
    try:
        if output == "-":
            # Standard output has nothing to keep safe: no file aside, none to clean up.
            done = export_rows(client, keys, sys.stdout, count)
        else:
            done = _export_to_file(client, keys, Path(output), count)
        published = client.hgetall(keys.config)  # the workers' settings, as they published them
        maxlen = published.get("access_log_maxlen")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Refused(f"Redis cannot be reached: {exc}", 4) from None
    except redis.ResponseError as exc:
        raise click.ClickException(f"cannot read {keys.accesses}: {exc}") from None
    except OSError as exc:  # its strerror: the whole exception names the file written aside
        raise Refused(f"cannot write {printable(output)}: {exc.strerror or exc}") from None
    n = done.rows
    if output != "-":
        click.echo(f"{counted(n, 'access')} written to {printable(output)}", err=True)
    if done.folded:
        click.echo(
            f"{counted(done.folded, 'miss')} of a folder below a directory tracked "
            "later written as that directory (one object for the simulator)",
            err=True,
        )
    if done.trimmed:
        click.echo(
            f"{counted(done.trimmed, 'access')} trimmed by the log's cap before the export "
            "read them (the pipeline logged faster than it reads): not in the file; raise "
            "DISK_CACHE_ACCESS_LOG_MAXLEN, or export when it is quieter",
            err=True,
        )
    if done.escaped:
        click.echo(
            f"{counted(done.escaped, 'path')} not UTF-8: written with \\x escapes", err=True
        )
    if n and maxlen == "0":
        click.echo("the access log is off now: these accesses were recorded before", err=True)
    if n == 0:  # a header alone said nothing of why
        click.echo(
            # No config published under these keys: no node's workers keep these books (the
            # log was said to be off for a --prefix of none of them).
            f"no accesses: no node's workers keep books under key prefix {keys.prefix!r} "
            "(a wrong --prefix, DISK_CACHE_KEY_PREFIX or DISK_CACHE_NODE?)"
            if not published
            else "no accesses: the access log is off (DISK_CACHE_ACCESS_LOG_MAXLEN is 0 for "
            "the node's workers; set it there to record them)"
            if maxlen in (None, "0")
            else "no accesses recorded yet",
            err=True,
        )


__all__ = ["simulate_command", "trace_group"]
