"""Reads queued on one pipeline: several objects' reads in one round trip.

A `queue_*` method queues its commands on a Batch and returns a reader; `run` executes the
batch, and each reader takes its own replies, in order, from one shared iterator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoScriptError, ResponseError

T = TypeVar("T")
Reader = Callable[[Iterator[Any]], T]

pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command
except ImportError:  # redis-py's own packer then
    pack_command = None


class Lua:
    """A script as a module constant, known by its SHA before any client has seen it; `run`
    loads it into a Redis that lacks it."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()


class Batch:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.writes: list[bool] = []
        self.scripts: list[Any] = []

    def command(self, *args: Any, writes: bool = True) -> None:
        """`writes=False` for a read, which execute may run again; a write never runs twice."""
        self.commands.append(args)
        self.writes.append(writes)

    def script(
        self, script: Any, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> None:
        """Queue a registered script by its SHA: a pipeline holding Script objects first asks
        Redis whether they are loaded, one more round trip on every read. `writes` as in
        command."""
        self.scripts.append(script)
        self.command("EVALSHA", script.sha, len(keys), *keys, *args, writes=writes)

    def execute(self, client: Any) -> list[Any]:
        if len(self.commands) == 1:  # a pipeline costs the client more than one plain call
            return [single(client, self.commands[0])]
        replies = self._pipelined(client, self.commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # A Redis that lost some of the scripts (restarted, SCRIPT FLUSH) ran the rest.
            # Run again, once they are loaded, what failed and every read after it (it read
            # the books before that failed write), never a write that ran: an unpin's second
            # run ended nothing and said so.
            for script in self.scripts:
                client.script_load(script.script)
            again = [
                i
                for i in range(missing[0], len(self.commands))
                if i in missing or not self.writes[i]
            ]
            for i, reply in zip(again, self._pipelined(client, [self.commands[i] for i in again]),
                                strict=True):  # fmt: skip
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    @staticmethod
    def _pipelined(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return list(pipe.execute(raise_on_error=False))


def single(client: Any, args: tuple[Any, ...]) -> Any:
    """One command on one of the client's pooled connections, as its pipelines send theirs.

    redis-py 8's `execute_command` spends 15-30 µs of Python per call around the socket
    (observability hooks, closures), and its packer 5 µs around hiredis's: together as much
    as the rest of a `GET /cache/stats`. A lost or timed-out connection is dropped and the
    command sent again exactly as the client's own retry policy says (none for Sentinel's
    clients): a write script runs no more often than through `execute_command`."""
    pool = getattr(client, "connection_pool", None)
    if (
        pool is None
        or getattr(client, "connection", None) is not None  # a single-connection client
        or args[0] in client.response_callbacks  # its reply is reshaped by redis-py
    ):
        return client.execute_command(*args)
    conn = pool.get_connection()

    def send_and_read() -> Any:
        if pack_command is None:
            conn.send_command(*args)
        else:  # our commands' names have no spaces, our arguments are str, int or float
            conn.send_packed_command([pack_command(args)])
        return conn.read_response()

    try:
        return conn.retry.call_with_retry(send_and_read, lambda _error: conn.disconnect())
    except ResponseError:  # Redis answered (NOSCRIPT, WRONGTYPE...): the connection is fine
        raise
    except BaseException:  # retries spent, or interrupted with a reply maybe on its way
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def run(client: Any, build: Callable[[Batch], Reader[T]]) -> T:
    """Queue with `build`, execute in one round trip, read. A Redis that lost its scripts
    (restarted, SCRIPT FLUSH) gets them again: a single command runs once more, a batch runs
    again what it must (Batch.execute)."""
    for attempt in range(2):
        batch = Batch()
        read = build(batch)
        try:
            replies = batch.execute(client)
        except NoScriptError:
            if attempt or len(batch.commands) > 1:  # a batch's writes may have run
                raise
            for script in batch.scripts:
                client.script_load(script.script)
            continue
        return read(iter(replies))
    raise AssertionError("unreachable")


def call(client: Any, script: Lua, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """One script, one round trip (loaded first if Redis lacks it)."""

    def build(batch: Batch) -> Reader[Any]:
        batch.script(script, keys, args)
        return next

    return run(client, build)


def pairs(flat: list[Any]) -> dict[Any, Any]:
    """A flat Lua reply [k1, v1, k2, v2...] (a hash as HGETALL inside Lua gives it) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
