"""Redis locks with a timeout and an owner: only the holder of the token can release one."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

# KEYS[1] lock key; ARGV[1] owner token. Deletes the key only if we still own it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] lock key; ARGV[1] owner token, ARGV[2] new timeout in ms. Extends only our own lock.
EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


# How long a worker waits, in steps, for another's lock on a directory before it gives up
# and is sent again later: a scan of an album takes well under a second (3 s in all).
HOLDER_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class LockNotAcquired(RuntimeError):
    """`with Lock(...)` found somebody else holding it: the block does not run."""


class Lock:
    """`SET key token NX PX timeout`; the seed's value "locked" is kept as the token's prefix."""

    def __init__(self, client: Any, key: str, timeout_ms: int) -> None:
        self.client = client
        self.key = key
        self.timeout_ms = timeout_ms
        self.token = f"locked:{secrets.token_hex(8)}"
        self._release = client.register_script(RELEASE_LUA)
        self._extend = client.register_script(EXTEND_LUA)

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.timeout_ms))

    def acquire_within(self, waits: Iterable[float]) -> bool:
        """Try again after each pause of `waits` before giving up."""
        for pause in (*waits, None):
            if self.acquire():
                return True
            if pause is not None:
                time.sleep(pause)
        return False

    def release(self) -> bool:
        return bool(self._release(keys=[self.key], args=[self.token]))

    def extend(self, timeout_ms: int | None = None) -> bool:
        return bool(self._extend(keys=[self.key], args=[self.token, timeout_ms or self.timeout_ms]))

    def held(self) -> bool:
        return bool(self.client.get(self.key) == self.token)

    def lapses_in(self) -> float:
        """Seconds until whoever holds it now loses it (its holder may be a worker killed
        mid-task, whose lock stands for its timeout): 0 when it is free."""
        left = int(self.client.pttl(self.key))  # -2: free, -1: no expiry (not ours: SET by hand)
        return round((self.timeout_ms if left == -1 else max(left, 0)) / 1000, 3)

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(self.key)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Keeper:
    """Renews a lock from a thread every `every` seconds, for at most `at_most` seconds: work
    that cannot renew it itself (one long deletion, a recovery) does not let it lapse and a
    second holder in; a hung one does not hold it forever. Stops once the lock is lost; Redis
    away, it tries again at the next beat until the lock would have lapsed."""

    def __init__(self, lock: Lock, *, every: float, at_most: float) -> None:
        self.lock, self.every, self.at_most = lock, every, at_most
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name="cachemgr-lock-keeper", daemon=True
        )

    def _renew(self) -> None:
        deadline = time.monotonic() + self.at_most
        lapses = time.monotonic() + self.lock.timeout_ms / 1000
        while not self._stop.wait(self.every) and time.monotonic() < deadline:
            try:
                if not self.lock.extend():
                    return
                lapses = time.monotonic() + self.lock.timeout_ms / 1000
            except Exception:  # Redis away a moment (a failover): again, while it may help
                if time.monotonic() >= lapses:
                    return

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# The longest a registration waits for a lock to lapse before it is sent again: well under the
# broker's visibility timeout (celeryconfig: 600 s), past which a Redis broker hands a task
# held for its countdown to another worker as well.
MAX_RETRY_SECONDS = 300.0


def retry_wait(retries: int) -> float:
    """The wait before a task skipped for another's lock runs again (by that lock's lapse at
    the latest): 2 s, doubling to MAX_RETRY_SECONDS. A live holder's goes in seconds (waited
    out to its lapse, 5 min by default); a dead worker's lapses."""
    return min(MAX_RETRY_SECONDS, 2.0 * 2 ** min(retries, 16))


def retries_to_outlast(timeout: float) -> int:
    """How many retries, waiting retry_wait each, outlast a lock of `timeout` seconds (the
    longest a dead worker's stands), with 3 to spare."""
    n, waited = 0, 0.0
    while waited < timeout:
        waited += retry_wait(n)
        n += 1
    return n + 3
