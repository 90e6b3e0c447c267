"""The books in Redis: every read and every atomic change of cachemgr's keys.

The changes callers batch (register, access, claim, pin, count) accept an optional
`pipeline` and then queue their command on it (register, access, claim and pin return its
pending reply; a register still names a new policy first, in a round trip of its own); the
rest run at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from cachemgr import checks, journal, listing, pins, scripts
from cachemgr.errors import BeingDeleted
from cachemgr.keys import Keys
from cachemgr.paths import ancestors
from cachemgr.policies import POLICIES, Policy
from cachemgr.records import Entry, record_id, unpack


def now_str(now: float | None = None) -> str:
    """Times travel to Lua as strings with microseconds, so comparisons are exact."""
    return f"{time.time() if now is None else now:.6f}"


class Store:
    def __init__(
        self,
        client: Any,  # a redis.Redis made with decode_responses=True (see connect)
        keys: Keys | None = None,
        *,
        policy: str = "lru",
        ttl_seconds: int = 86400,
        events_maxlen: int = 10000,
        access_log_maxlen: int = 0,
    ) -> None:
        self.client: Any = client
        self.keys = keys or Keys()
        self.ttl_seconds = ttl_seconds
        self.events_maxlen = events_maxlen
        self.access_log_maxlen = access_log_maxlen
        self.policy: Policy = POLICIES[policy]
        self._register = client.register_script(self.policy.script(scripts.REGISTER))
        self._named = False  # cache:policy_name set, if unset, before this store's first hook
        self._access, self._access_many = (
            client.register_script(
                scripts.with_baked_keys(self.policy_in_force(template), self.script_keys(""))
            )
            for template in (scripts.ACCESS, scripts.ACCESS_MANY)
        )
        self._claim = client.register_script(self.policy.script(journal.CLAIM))
        self._finish = client.register_script(journal.FINISH)
        self._restore = client.register_script(self.policy.script(journal.RESTORE))
        self._victims = client.register_script(listing.victims_snapshot(self.policy.victims))
        self._read_entries = client.register_script(listing.ENTRIES)
        # KEYS as scripts.COMMON_KEYS; ARGV[1] how many entries this step moves at most.
        self._settle = self.policy.settle and client.register_script(
            scripts.PRELUDE + self.policy.settle + "\nreturn settle_step(tonumber(ARGV[1]))"
        )
        self.pin_script = client.register_script(pins.PIN)
        # pins.STILL_OURS's KEYS and ARGV.
        self._still_ours = client.register_script(
            scripts.PRELUDE + pins.LEASE_AROUND + pins.STILL_OURS
        )
        self._drop_lapsed_pins = client.register_script(pins.DROP_LAPSED_PINS)
        self._resize = client.register_script(self.policy.script(scripts.RESIZE))

    def policy_in_force(self, template: str) -> str:
        """An access script with this policy's hooks, which it runs only while this policy's
        structures are the ones built (scripts.POLICY_IN_FORCE)."""
        key, name = scripts.lua_str(self.keys.policy_name), scripts.lua_str(self.policy.name)
        fill = {"policy_in_force": f"policy_key, policy_self = {key}, {name}"}
        return scripts.compose(self.policy.script(template), fill)

    # -- keys ---------------------------------------------------------------------------
    def lease_keys(self) -> list[str]:
        """The first six COMMON_KEYS places: enough for a script that reads records and the
        leases around a path (pins.LEASE_AROUND, listing.DIRECTORY)."""
        k = self.keys
        return [k.entries, k.lru, k.bytes, k.stats, k.pin_paths, k.pins]

    def script_keys(self, path: str | None = None) -> list[str]:
        k = self.keys
        return [
            *self.lease_keys(),
            k.deleting,
            k.policy,
            k.dir(path) if path is not None else k.dir(""),
            k.events,
            k.accesses,
            k.lock(path) if path is not None else k.lock(""),
            *(k.policy_aux(self.policy.name, name) for name in self.policy.aux),
        ]

    # -- changes ------------------------------------------------------------------------
    def register(
        self,
        path: str,
        size: int,
        files: int,
        *,
        now: float | None = None,
        must_not_be_tracked: Sequence[str] = (),
        lock_token: str = "",
        pipeline: Any = None,
        queued: Any = None,
    ) -> Any:
        """Returns ['ok', new, delta, total], ['overlap', other_path], ['busy', above],
        ['claimed'] (a deletion of it interrupted: journal.settle first),
        ['collision'] or ['lock_lost']; with `pipeline` or `queued` (a pipeline, the script by
        its SHA alone) the pending reply."""
        if not self._named:
            # Whose structures the hooks build is then known at the next switch: fifo's and
            # lfu's share cache:policy, and an lfu that adopted fifo's read times as hits.
            self.client.set(self.keys.policy_name, self.policy.name, nx=True)
            self._named = True
        _exact(path, size, files)
        keys = self.script_keys(path)
        args = [path, size, files, now_str(now), self.ttl_seconds, lock_token]
        args += must_not_be_tracked
        if queued is not None:
            # By its SHA alone: handed the Script, redis-py's pipeline first asks SCRIPT
            # EXISTS, a round trip more; a NoScriptError is the caller's to handle.
            return queued.evalsha(self._register.sha, len(keys), *keys, *args)
        outcome = self._register(keys=keys, args=args, client=pipeline or self.client)
        return outcome if pipeline is not None else self.named_if_first(outcome)

    def named_if_first(self, outcome: Any) -> Any:
        """A registration's outcome, once the policy is named if it was the first directory
        of empty books (new, or flushed since this store named them)."""
        if outcome[0] == "ok" and int(outcome[2]) == int(outcome[3]):
            self.client.set(self.keys.policy_name, self.policy.name, nx=True)
        return outcome

    def access(
        self, path: str, *, now: float | None = None, miss_bytes: int = 0, pipeline: Any = None
    ) -> Any:
        """One round trip: 1 for a hit, 0 for a miss, 2 for a hit whose policy hook was not
        this store's to run (scripts.STALE_HIT: read the policy again)."""
        checks.whole("miss_bytes", miss_bytes)  # here: the script counts the miss first
        return self._access(
            keys=[self.keys.entries],
            args=[path, now_str(now), self.ttl_seconds, miss_bytes, self.access_log_maxlen],
            client=pipeline or self.client,
        )

    def access_many(
        self, paths: Iterable[str], *, now: float | None = None, chunk: int = 200
    ) -> list[int]:
        """A batch of accesses in one round trip: one script call per `chunk` paths.

        An EVALSHA per access costs the client the packing of each call and Redis a script
        set-up each (52,000 accesses/s against 165,000 pipelined ZADDs). `chunk` bounds how
        long one call holds Redis (about 2 ms for 200 at 10^6 entries).
        """
        todo = checks.many("paths", paths)
        if not todo:
            return []
        stamp = now_str(now)
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(todo), chunk):
            self._access_many(
                keys=[self.keys.entries],
                args=["", stamp, self.ttl_seconds, self.access_log_maxlen,
                      *todo[start : start + chunk]],
                client=pipe,
            )  # fmt: skip
        return [int(x) for result in pipe.execute() for x in result]

    def claim(
        self,
        path: str,
        reason: str,
        *,
        now: float | None = None,
        expect_registered: str = "",
        expect_last_access: float | None = None,
        honour_pins: bool = True,
        deleting_files: bool = True,
        min_age_seconds: int = 0,
        lock_token: str = "",
        pipeline: Any = None,
    ) -> Any:
        """Take a directory off the books if it is unchanged: ['ok', size, files] or [why].

        With `deleting_files`, the entry waits in the journal until `finish_deletion` (its
        files are gone) or `restore` (they could not be deleted).
        """
        return self._claim(
            keys=self.script_keys(path),
            args=[
                path,
                reason,
                now_str(now),
                expect_registered,
                "" if expect_last_access is None else repr(expect_last_access),
                int(honour_pins),
                int(deleting_files),
                min_age_seconds,
                self.events_maxlen,
                lock_token,
            ],
            client=pipeline or self.client,
        )

    def finish_deletion(
        self, path: str, *, now: float | None = None, deleted: bool = True
    ) -> bool:
        """The claimed directory's files are gone: count it, close its journal entry.
        `deleted` False: they went otherwise (the path is no directory now), a vanished one."""
        args = [path, now_str(now), int(deleted), "", "", "", "", "", self.events_maxlen]
        return bool(self._finish(keys=self.script_keys(path), args=args))

    def restore(self, path: str, *, now: float | None = None) -> bool:
        """Put a claimed directory back exactly as it was (its files are still there)."""
        args = [path, now_str(now), self.ttl_seconds]
        return bool(self._restore(keys=self.script_keys(path), args=args))

    def unfinished_deletions(self) -> dict[str, int]:
        """Journal entries: path -> bytes, claimed for deletion and not yet finished."""
        return {
            p: int(entry.split(" ", 1)[0])
            for p, entry in self.client.hgetall(self.keys.deleting).items()
        }

    def pin(
        self,
        path: str,
        until: float,
        holder: str = "",
        *,
        now: float | None = None,
        pipeline: Any = None,
    ) -> Any:
        """`holder`'s lease until `until` ('' : anyone's); the lease in force comes back.
        Raises BeingDeleted when a directory at, above or inside `path` is being deleted (in a
        pipeline: its reply is that path, as [path])."""
        done = self.pin_script(
            keys=self.pin_keys(path),
            args=[path, repr(until), holder, now_str(now)],
            client=pipeline or self.client,
        )
        if pipeline is None and isinstance(done, list):
            raise BeingDeleted(
                f"{done[0]!r} is being deleted: pin {path!r} again once it is gone"
            )
        return done

    def pin_keys(self, path: str) -> list[str]:
        k = self.keys
        return [k.pins, k.pin_paths, k.deleting, k.pin_holders(path)]

    def still_ours(self, path: str, now: float) -> str:
        """Whether a claimed directory, moved out of its place, may go: `ok`, `pinned` or
        `taken` (pins.STILL_OURS)."""
        return str(self._still_ours(keys=self.script_keys(path), args=[path, now_str(now)]))

    def drop_lapsed_pins(self, now: float | None = None, batch: int = 1000) -> int:
        keys, cutoff, dropped = [self.keys.pins, self.keys.pin_paths], now or time.time(), 0
        while n := int(self._drop_lapsed_pins(keys=keys, args=[repr(cutoff), batch])):
            dropped += n
            if n < batch:
                break
        return dropped

    def count(self, field: str, n: int = 1, pipeline: Any = None) -> None:
        pipe = pipeline or self.client.pipeline(transaction=False)
        pipe.hincrby(self.keys.stats, field, n)
        if pipeline is None:
            pipe.execute()

    def resize(
        self,
        path: str,
        size: int,
        files: int,
        *,
        was: tuple[int, int, str] | None = None,
        lock_token: str = "",
    ) -> int | None:
        """A rescan's size for a tracked directory; the byte delta, or None when untracked,
        changed since (`was`: the record the scan was of, size, files, registered) or locked
        by another (scripts.RESIZE)."""
        _exact(path, size, files)
        args = [path, size, files, " ".join(map(str, was)) if was else "", lock_token]
        delta = self._resize(keys=self.script_keys(path), args=args)
        return None if delta is None else int(delta)

    # -- reads --------------------------------------------------------------------------
    def entries(
        self, items: Sequence[tuple[str, float | None]], chunk: int = 1000
    ) -> list[Entry]:
        """The entries of (path, last access) pairs with their records and leases, one script
        call per `chunk` paths (Redis stays free between them); one that left the books since
        is left out. The last access is the one given: the time the caller chose the entry
        by, which the claim compares (an expired entry played since must not be taken);
        None takes the books' own."""
        out: list[Entry] = []
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            flat = self._read_entries(keys=self.script_keys(), args=[p for p, _ in part])
            for (path, given), last, rec, lease in zip(
                part, flat[::3], flat[1::3], flat[2::3], strict=True
            ):
                if rec:  # removed between the two reads otherwise
                    out.append(self.entry(path, last if given is None else given, rec, lease))
        return out

    def entry(self, path: str, last: Any, rec: str, pin: Any) -> Entry:
        """An Entry from its path, last access, packed record and lease ('' or None: none)."""
        size, files, registered, hits = unpack(rec)
        pinned = float(pin) if pin else None
        return Entry(path, size, files, registered, float(last), hits, self.ttl_seconds, pinned)

    def info(self, path: str) -> Entry | None:
        """One tracked directory, read in one round trip."""
        found = self.entries([(path, None)])
        return found[0] if found else None

    def expired(self, cutoff: float, limit: int, offset: int = 0) -> list[Entry]:
        """Entries last accessed before `cutoff`, oldest first: O(log n + limit)."""
        items = self.client.zrangebyscore(
            self.keys.lru, "-inf", f"({cutoff!r}", start=offset, num=limit, withscores=True
        )
        return self.entries(items)

    def victims(self, limit: int, offset: int = 0) -> list[Entry]:
        """The active policy's next victims, best first: at most 1000 a call, each read with
        its record and the leases around it in the same script, which Redis runs alone."""
        limit = min(limit, 1000)
        try:
            flat = self._victims(keys=self.script_keys(), args=[limit, offset])
        except redis.ResponseError as exc:
            if not str(exc).startswith("SETTLING"):
                raise
            self.settle()  # someone's settle is half done: help finish it, then ask again
            flat = self._victims(keys=self.script_keys(), args=[limit, offset])
        return [self.entry(*flat[i : i + 4]) for i in range(0, len(flat), 4)]

    def settle(self, batch: int = 1000, step: Callable[[], object] | None = None) -> int:
        """Settle the policy's warm-up before the first eviction, `batch` entries per call (at
        most 1000; policies.py says which policies have one). `step` runs after each call: the
        cleanup's heartbeat, which keeps its lock alive; False from it (the lock is lost) stops
        here, and whoever settles next goes on from there. Returns how many calls did work:
        0 when settled before."""
        calls, keys = 0, self.script_keys()
        while self._settle and (done := self._settle(keys=keys, args=[batch])):
            calls += 1
            if done == 2 or (step is not None and step() is False):
                break
        return calls

    def total_bytes(self) -> int:
        return int(self.client.get(self.keys.bytes) or 0)

    def count_entries(self) -> int:
        return int(self.client.hlen(self.keys.entries))

    def covering(self, path: str) -> str:
        """The tracked directory above `path` that holds it (the outermost), else `path`
        itself, tracked or not: what a pin on a path inside a tracked directory must name to
        protect it."""
        above = ancestors(path)
        found = [p for p, hit in zip(above, self.tracked(above), strict=True) if hit]
        return found[0] if found else path

    def tracked(self, paths: Sequence[str]) -> list[bool]:
        if not paths:
            return []
        return [s is not None for s in self.client.zmscore(self.keys.lru, list(paths))]

    def scan_records(
        self, batch: int = 1000, unrecorded: dict[str, float] | None = None
    ) -> Iterator[tuple[str, str]]:
        """(path, record) of every tracked directory: ZSCAN of cache:lru, records by HMGET.
        O(n), for reconcile and status pages, never a steady-state path. `unrecorded`, when
        given, gets the paths on cache:lru with no record (the seed's books) and their last
        access."""
        chunk: list[tuple[str, float]] = []
        for path, last in self.client.zscan_iter(self.keys.lru, count=batch):
            chunk.append((path, last))
            if len(chunk) == batch:
                yield from self._with_records(chunk, unrecorded)
                chunk = []
        yield from self._with_records(chunk, unrecorded)

    def _with_records(
        self, chunk: list[tuple[str, float]], unrecorded: dict[str, float] | None
    ) -> Iterator[tuple[str, str]]:
        if not chunk:
            return
        recs = self.client.hmget(self.keys.entries, [record_id(p) for p, _ in chunk])
        for (path, last), rec in zip(chunk, recs, strict=True):
            if rec is not None:
                yield path, rec
            elif unrecorded is not None:
                unrecorded[path] = float(last)

    def all_records(
        self, batch: int = 1000, unrecorded: dict[str, float] | None = None
    ) -> dict[str, tuple[int, int, str, int]]:
        """Every record (ZSCAN of cache:lru, HMGET of the records): for reconcile and
        audits, never on a steady-state path. `unrecorded`: as scan_records'."""
        return {p: unpack(r) for p, r in self.scan_records(batch, unrecorded)}


def _exact(path: str, size: int, files: int) -> None:
    """Refuse a size the scripts cannot book exactly (Lua's doubles: past 2^53, 9 PB in one
    directory), before any write: a script that failed at its INCRBY had already booked the
    record without its bytes."""
    checks.whole(f"the size of {path!r}", size)
    checks.whole(f"the file count of {path!r}", files)
