"""Reads queued on one pipeline: several objects' reads in one round trip.

A `queue_*` method queues its commands on a Batch and returns a reader; `run` executes the
batch, and each reader takes its own replies, in order, from one shared iterator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

T = TypeVar("T")
Reader = Callable[[Iterator[Any]], T]


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
            return [client.execute_command(*self.commands[0])]
        pipe = client.pipeline(transaction=False)
        for args in self.commands:
            pipe.execute_command(*args)
        return list(pipe.execute())


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
