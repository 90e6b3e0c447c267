"""reads.single: one command on a pooled connection, redis-py's own path when anything fails."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from cachemgr import connect, reads
from cachemgr.reads import Lua, call, single
from tests.conftest import REDIS_URL

ECHO = Lua("return {KEYS[1], ARGV[1], redis.call('EXISTS', KEYS[1])}")


@pytest.fixture
def client() -> Any:
    c = connect(REDIS_URL)
    yield c
    c.close()


def _spoil_next_read(client: Any, error: BaseException) -> list[Any]:
    """Make the next read on the pooled connection fail once; returns the sockets it spoiled."""
    client.ping()  # one connection made and back in the pool
    conn = client.connection_pool.get_connection()
    client.connection_pool.release(conn)
    real = conn.read_response
    spoiled: list[Any] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        conn.read_response = real
        real(*args, **kwargs)  # the reply is read off the wire and lost, as with a dead peer
        spoiled.append(conn._sock)
        raise error

    conn.read_response = failing
    return spoiled


@pytest.mark.parametrize("packer", ["hiredis", "redis-py"])
def test_a_script_reply_is_the_same_as_redis_pys(
    client: Any, prefix: str, packer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if packer == "redis-py":  # hiredis is not installed
        monkeypatch.setattr(reads, "pack_command", None)
    else:
        assert reads.pack_command is not None
    client.set(f"{prefix}k", "1")
    assert call(client, ECHO, [f"{prefix}k"], ["x"]) == [f"{prefix}k", "x", 1]
    assert single(client, ("GET", f"{prefix}k")) == "1"


COUNT = Lua("return redis.call('INCR', KEYS[1])")


def _sends_after_a_lost_reply(client: Any, key: str, through: str) -> tuple[Any, int]:
    """Run a counting script whose first reply is lost; (what the call gave, times it ran)."""
    client.script_load(COUNT.script)
    _spoil_next_read(client, RedisConnectionError("Connection reset by peer"))
    try:
        if through == "single":
            got: Any = single(client, ("EVALSHA", COUNT.sha, 1, key))
        else:
            got = client.execute_command("EVALSHA", COUNT.sha, 1, key)
    except RedisConnectionError as exc:
        got = exc
    return got, int(client.get(key) or 0)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_lost_reply_is_sent_again_as_often_as_redis_py_would(prefix: str, retries: int) -> None:
    """A write script must not run more often than through execute_command (Sentinel's
    clients retry nothing: a resend would run it twice)."""
    outcomes = {}
    for through in ("single", "execute_command"):
        client = redis.Redis.from_url(
            REDIS_URL, decode_responses=True, retry=Retry(NoBackoff(), retries)
        )
        outcomes[through] = _sends_after_a_lost_reply(client, f"{prefix}{through}", through)
        client.close()
    (mine, ran_mine), (theirs, ran_theirs) = outcomes["single"], outcomes["execute_command"]
    assert ran_mine == ran_theirs == retries + 1
    assert type(mine) is type(theirs)  # both raise, or both give the second run's reply
    if retries:
        assert mine == theirs == 2


def test_a_lost_connection_is_dropped_and_not_handed_out_again(client: Any, prefix: str) -> None:
    spoiled = _spoil_next_read(client, RedisConnectionError("Connection reset by peer"))
    assert call(client, ECHO, [f"{prefix}k"], ["y"]) == [f"{prefix}k", "y", 0]  # retried
    assert len(spoiled) == 1 and spoiled[0].fileno() == -1  # closed, not read again
    assert client.ping()


def test_an_error_reply_is_raised_and_the_connection_kept(client: Any) -> None:
    client.ping()
    before = client.connection_pool.get_connection()
    client.connection_pool.release(before)
    with pytest.raises(NoScriptError):
        single(client, ("EVALSHA", "0" * 40, 0))
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        single(client, ("GET",))
    after = client.connection_pool.get_connection()
    client.connection_pool.release(after)
    assert after is before and after._sock is not None


def test_an_interrupted_read_drops_the_connection_and_raises(client: Any, prefix: str) -> None:
    spoiled = _spoil_next_read(client, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        single(client, ("GET", f"{prefix}k"))
    assert spoiled[0].fileno() == -1  # its reply may still have been on the way
    assert client.ping()


def test_a_script_redis_lost_is_loaded_again(client: Any, prefix: str) -> None:
    script = Lua(f"return '{prefix}'")  # a script this Redis has never seen
    assert call(client, script, [], []) == prefix


def test_a_batch_that_meets_a_lost_script_runs_each_write_once_and_its_reads_again(
    redis_client, prefix
):
    """The failed script runs again once loaded, and the reads after it (they read the books
    before that write); a write that ran, script or plain command, never runs twice."""
    key = f"{prefix}n"
    lost = Lua(f"return redis.call('INCR', KEYS[1]) -- {uuid.uuid4()}")  # Redis never saw it

    def build(batch: reads.Batch) -> Any:
        batch.script(lost, [key], [])  # NOSCRIPT at first
        batch.command("INCR", key)  # a write (the default): ran, must not run again
        batch.command("GET", key, writes=False)  # a read: runs again, after the script

        def read(replies: Any) -> list[Any]:
            return [next(replies), next(replies), next(replies)]

        return read

    assert reads.run(redis_client, build) == [2, 1, "2"]
    assert redis_client.get(key) == "2"
