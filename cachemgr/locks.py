"""Redis locks with a timeout and an owner: only the holder of the token can release one."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

log = logging.getLogger("cachemgr")

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

# KEYS[1] lock key; ARGV[1] the token of a holder known dead, ARGV[2] ours, ARGV[3] timeout in
# ms. Takes the lock over only if that dead holder still has it (not a live one since).
TAKEOVER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def _read(path: str) -> str | None:
    """The file's text; None when there is no such file. Any other error (EACCES under an
    LSM, EMFILE) is raised: it says nothing of whether a process lives."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot); "" when it is known dead (no such
    process, or a zombie not yet reaped); None when that cannot be told."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    if stat is None:
        return ""
    # The name in parentheses may hold spaces and parentheses of its own.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    return "" if fields[0] in ("Z", "X") else fields[19]


def _namespace(kind: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{kind}").partition("[")[2].rstrip("]")
    except OSError:
        return ""


def _proc_hides() -> bool:
    """/proc mounted so that it hides processes (hidepid, subset=pid): there a missing
    /proc/<pid> does not mean a dead one."""
    try:
        lines = (_read("/proc/self/mountinfo") or "").splitlines()
    except OSError:
        return True
    hides = True  # no /proc mounted at /proc: nothing to go by
    for line in lines:  # the last mount at /proc is the one seen
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/proc" and " - proc " in line:
            options = line.rpartition(" ")[2].split(",")
            hides = any(
                o.startswith("subset=") or (o.startswith("hidepid=") and o[8:] not in ("0", "off"))
                for o in options
            )
    return hides


_machine: tuple[int, str] | None = None  # (pid it was read in, the tag)


def holder_tag() -> str:
    """This process, as another on this machine can check it is still alive: boot id, host
    name, PID and time namespaces, user, PID and start time. Empty where /proc cannot tell
    (no Linux, a /proc that hides processes or is another PID namespace's)."""
    global _machine
    pid = os.getpid()
    if _machine is None or _machine[0] != pid:  # read again in a forked child
        _machine = (pid, _tag(pid))
    return _machine[1]


def _tag(pid: int) -> str:
    try:
        if os.readlink("/proc/self") != str(pid) or _proc_hides():
            return ""
        boot = _read("/proc/sys/kernel/random/boot_id")
    except OSError:
        return ""
    started, space = _started(pid), _namespace("pid")
    if not (boot and started and space):
        return ""
    return "/".join(
        (boot, socket.gethostname(), space, _namespace("time"), str(os.getuid()), str(pid),
         started)
    )  # fmt: skip


TAG_FIELDS = 7  # _tag's; the first five name where, the last two which process


def holder_gone(token: str) -> int | None:
    """The PID of the process that took a lock with `token`, when it is known dead: it ran on
    this machine, in these PID and time namespaces, as this user, and no process of that PID
    and start time runs now. None when alive or not knowable."""
    theirs = token.rpartition("@")[2].split("/") if "@" in token else []
    ours = holder_tag().split("/")
    if len(theirs) != TAG_FIELDS or len(ours) != TAG_FIELDS or theirs[:5] != ours[:5]:
        return None
    if not theirs[5].isdigit():
        return None
    pid = int(theirs[5])
    now = _started(pid)
    return pid if now is not None and now != theirs[6] else None


# How long a worker waits, in steps, for another's lock on a directory before it gives up
# and is sent again later: a scan of an album takes well under a second (3 s in all).
HOLDER_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class LockNotAcquired(RuntimeError):
    """`with Lock(...)` found somebody else holding it: the block does not run."""


class Lock:
    """`SET key token NX PX timeout`; the seed's value "locked" is kept as the token's prefix.

    `from_dead`: the token names this process (holder_tag), and a lock whose holder is known
    dead (a worker killed mid-task on this machine) is taken over at once instead of standing
    until its timeout. For work whose successor recovers what a dead one left half done."""

    def __init__(self, client: Any, key: str, timeout_ms: int, *, from_dead: bool = False) -> None:
        self.client = client
        self.key = key
        self.timeout_ms = timeout_ms
        self.wants_dead = from_dead
        self._name()
        self._release = client.register_script(RELEASE_LUA)
        self._extend = client.register_script(EXTEND_LUA)

    def _name(self) -> None:
        tag = holder_tag() if self.wants_dead else ""
        self.token = f"locked:{secrets.token_hex(8)}" + (f"@{tag}" if tag else "")
        self.from_dead, self._pid = bool(tag), os.getpid()

    def acquire(self) -> bool:
        if self._pid != os.getpid():  # made before a fork: the token must name this process
            self._name()
        if self.client.set(self.key, self.token, nx=True, px=self.timeout_ms):
            return True
        return self.from_dead and self._take_from_dead()

    def _take_from_dead(self) -> bool:
        takeover = self.client.register_script(TAKEOVER_LUA)

        def swap(dead: str) -> Any:
            return takeover(keys=[self.key], args=[dead, self.token, self.timeout_ms])

        return self._from_dead("taken over", swap)

    def clear_if_dead(self) -> bool:
        """Delete the lock if its holder is known dead (a lock only in someone's way, not
        wanted by the caller); a free one, or a live holder's, is left alone."""
        # RELEASE_LUA with the dead holder's token: compare-and-delete.
        return self.from_dead and self._from_dead(
            "let go", lambda dead: self._release(keys=[self.key], args=[dead])
        )

    def _from_dead(self, done: str, swap: Callable[[str], Any]) -> bool:
        """`swap` the token of a holder known dead, if it still holds the lock; said."""
        theirs = self.client.get(self.key)
        pid = holder_gone(theirs) if isinstance(theirs, str) else None
        if pid is None or not swap(theirs):
            return False  # alive; or freed or taken since: by the rules of SET NX, not ours
        log.warning(
            "%s: its holder (process %d on this machine) is dead: %s, not waited for until "
            "it lapses", self.key, pid, done,
        )
        return True

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
