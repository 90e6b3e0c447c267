"""Batches of reads and writes in one round trip, and a Redis that lost some scripts."""

from __future__ import annotations

import uuid

from cachemgr.reads import Batch, Lua, run


def test_a_batch_that_meets_a_lost_script_runs_each_write_once_and_its_reads_again(
    redis_client, prefix
):
    """The failed script runs again once loaded, and the reads after it (they read the books
    before that write); a write that ran, script or plain command, never runs twice."""
    key = f"{prefix}n"
    lost = Lua(f"return redis.call('INCR', KEYS[1]) -- {uuid.uuid4()}")  # Redis never saw it

    def build(batch: Batch):
        batch.script(lost, [key], [])  # NOSCRIPT at first
        batch.command("INCR", key)  # a write (the default): ran, must not run again
        batch.command("GET", key, writes=False)  # a read: runs again, after the script

        def read(replies):
            return [next(replies), next(replies), next(replies)]

        return read

    assert run(redis_client, build) == [2, 1, "2"]
    assert redis_client.get(key) == "2"
