"""Redis's clock: every time on the books (a play, a registration, a lease, an expiry's
cutoff) is dated by it, whatever the clock of the host that writes or reads it; how far a
host's clock is off it, and what that means."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache

log = logging.getLogger("cachemgr")

# A host whose clock is further than this from Redis's is said to be skewed.
CLOCK_SKEW_SECONDS = 5.0
# A TIME reply that took longer than this to come was held up (Redis paused, a network
# stall): it says nothing of the clocks. Taken, it read as half the stall of skew (8 s after
# a 20 s pause of Redis, a false NTP warning and leases judged by a clock 8 s off).
MAX_ROUND_TRIP_SECONDS = 0.5


def measured_skew(client: Any, tries: int = 3) -> float | None:
    """How far this host's clock is ahead of Redis's (negative: behind), in seconds; the round
    trip's half is allowed for. A reply held up (MAX_ROUND_TRIP_SECONDS: a pause of Redis,
    over by the next) is read again, `tries` times in all; if each was, the last stands.
    None when TIME cannot be read (Redis away, a proxy or an ACL without TIME)."""
    try:
        return _measured(client, tries)
    except Exception:  # a cluster client's own errors too; a held-up reading is none
        return None


def _measured(client: Any, tries: int = 3) -> float:
    for _ in range(tries):
        before = time.time()
        reply = client.time()
        after = time.time()
        skew = _skew(before, after, reply)
        if after - before <= MAX_ROUND_TRIP_SECONDS:
            break
    return skew


def clock_skew(client: Any) -> float:
    """`measured_skew`, 0 when it cannot be read: the check must never cost a heartbeat."""
    return measured_skew(client) or 0.0


def skew_of(before: float, after: float, reply: tuple[int, int]) -> float | None:
    """The skew from a TIME reply read between `before` and `after` (this host's clock); None
    when it took longer than MAX_ROUND_TRIP_SECONDS."""
    return None if after - before > MAX_ROUND_TRIP_SECONDS else _skew(before, after, reply)


def _skew(before: float, after: float, reply: tuple[int, int]) -> float:
    seconds, micros = reply
    return (before + after) / 2 - (seconds + micros / 1e6)


class RedisClock:
    """Now by Redis's clock, for a process that acts on the books (a worker, the API, the
    CLI): this host's time less its skew, measured again every `every` seconds (one TIME). A
    worker an hour behind granted a lease that had already run out, which the next pass
    evicted through, and booked its plays and registrations an hour back."""

    def __init__(self, client: Any, every: float = 10.0) -> None:
        self.client, self.every = client, every
        self.skew, self._due, self._refused = 0.0, float("-inf"), False

    def __call__(self) -> float:
        tick = time.monotonic()
        if tick >= self._due:
            try:
                measured = _measured(self.client)
            except Exception as exc:
                # Redis away (a failover) or TIME refused: the last skew stands, and is
                # measured again soon; it had fallen back to this host's clock for 10 s.
                self._due = tick + 1.0
                # Unreachable, the call that follows says so (the CLI's one line was two).
                away = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
                if not self._refused and not away:
                    self._refused = True
                    log.warning("Redis's clock cannot be read (TIME): booking by the last "
                                "skew measured, %.1f s", self.skew)  # fmt: skip
            else:
                self._due, self.skew, self._refused = tick + self.every, measured, False
        return time.time() - self.skew


def redis_now(client: Any) -> float:
    """Now by Redis's clock, which dates workers' beats (this host's when TIME is refused)."""
    return time.time() - clock_skew(client)


def skewed(who: str, skew: float) -> str:
    """What a clock `skew` seconds off Redis's means, said the same by a worker's log, the
    pipeline client's and the stats."""
    way = "ahead of" if skew > 0 else "behind"
    return (
        f"the clock of {who} is {abs(skew):.0f} s {way} Redis's: cachemgr books registrations, "
        "plays, leases and expiry by Redis's clock, measured again every few seconds, but a "
        "clock that jumps is followed late, and logs, beat's schedule and Celery's task times "
        "go by the host's (a worker ahead by more than the cleanup interval discards beat's "
        "cleanups as expired, and holds back the quota passes it sends); synchronise the "
        "clocks (NTP)"
    )


def on_the_books(cache: DiskCache) -> Callable[[float], float]:
    """A file time (this host's clock) as the books date it (Redis's: cache.clock): on a
    worker an hour behind, a download written a minute ago was booked as an hour old."""
    offset = cache.clock() - time.time()
    return lambda t: t + offset
