"""Reads queued on one pipeline: several objects' reads in one round trip.

A `queue_*` method queues its commands on a Batch and returns a reader; `run` executes the
batch, and each reader takes its own replies, in order, from one shared iterator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

T = TypeVar("T")
Reader = Callable[[Iterator[Any]], T]


class Batch:
    def __init__(self, client: Any) -> None:
        self.pipe = client.pipeline(transaction=False)
        self.scripts: list[Any] = []

    def script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a registered script by its SHA: a pipeline holding Script objects first asks
        Redis whether they are loaded, one more round trip on every read."""
        self.scripts.append(script)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)


def run(client: Any, build: Callable[[Batch], Reader[T]]) -> T:
    """Queue with `build`, execute in one round trip, read. A Redis that lost its scripts
    (restarted, SCRIPT FLUSH) gets them again and the batch runs once more."""
    for attempt in range(2):
        batch = Batch(client)
        read = build(batch)
        try:
            replies = batch.pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            for script in batch.scripts:
                client.script_load(script.script)
            continue
        return read(iter(replies))
    raise AssertionError("unreachable")
