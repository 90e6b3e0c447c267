"""Reads queued on one pipeline: several objects' reads in one round trip.

A `queue_*` method queues its commands on a Batch and returns a reader; `run` executes the
batch, and each reader takes its own replies, in order, from one shared iterator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
        self.scripts: list[Any] = []

    def command(self, *args: Any) -> None:
        self.commands.append(args)

    def script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a registered script by its SHA: a pipeline holding Script objects first asks
        Redis whether they are loaded, one more round trip on every read."""
        self.scripts.append(script)
        self.command("EVALSHA", script.sha, len(keys), *keys, *args)

    def execute(self, client: Any) -> list[Any]:
        if len(self.commands) == 1:  # a pipeline costs the client more than one plain call
            return [single(client, self.commands[0])]
        pipe = client.pipeline(transaction=False)
        for args in self.commands:
            pipe.execute_command(*args)
        return list(pipe.execute())


def single(client: Any, args: tuple[Any, ...]) -> Any:
    """One command on one of the client's pooled connections, as its pipelines send theirs.

    redis-py 8's `execute_command` spends 15-30 µs of Python per call around the socket
    (retry closures, observability hooks), and its packer 5 µs around hiredis's: together as
    much as the rest of a `GET /cache/stats`. Anything but a reply from Redis (a lost or
    timed-out connection) drops this connection and leaves the command to `execute_command`,
    whose retries then apply as before."""
    pool = getattr(client, "connection_pool", None)
    if (
        pool is None
        or getattr(client, "connection", None) is not None  # a single-connection client
        or args[0] in client.response_callbacks  # its reply is reshaped by redis-py
    ):
        return client.execute_command(*args)
    conn = pool.get_connection()
    try:
        if pack_command is None:
            conn.send_command(*args)
        else:  # our commands' names have no spaces, our arguments are str, int or float
            conn.send_packed_command([pack_command(args)])
        reply = conn.read_response()
    except ResponseError:  # Redis answered (NOSCRIPT, WRONGTYPE...): the connection is fine
        pool.release(conn)
        raise
    except (RedisConnectionError, RedisTimeoutError):
        conn.disconnect()
        pool.release(conn)
        return client.execute_command(*args)
    except BaseException:  # the reply may still be on its way: this connection is spoiled
        conn.disconnect()
        pool.release(conn)
        raise
    pool.release(conn)
    return reply


def run(client: Any, build: Callable[[Batch], Reader[T]]) -> T:
    """Queue with `build`, execute in one round trip, read. A Redis that lost its scripts
    (restarted, SCRIPT FLUSH) gets them again and the batch runs once more."""
    for attempt in range(2):
        batch = Batch()
        read = build(batch)
        try:
            replies = batch.execute(client)
        except NoScriptError:
            if attempt:
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
