"""The reads that list tracked directories as the passes decide on them: each entry with its
record and the leases around it (pins.LEASE_AROUND), read in one script so that what a pass
decides on is one moment of the books; and the cursor of a listing's pages."""

from __future__ import annotations

import base64
import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cachemgr import pins
from cachemgr.pins import LEASE_AROUND
from cachemgr.reads import Batch, Lua, Reader, call, pairs, run
from cachemgr.records import Entry, Lease, unpack
from cachemgr.scripts import PRELUDE

if TYPE_CHECKING:
    from cachemgr.store import Store


def victims_snapshot(victims: str) -> str:
    """Wrap a policy's victims chunk so that each victim comes with its last access, record and
    pin, read in the same atomic call: an access after the choice then fails the claim's check.

    KEYS as scripts.COMMON_KEYS (KEYS[1] cache:entries, KEYS[2] cache:lru, and the policy's
    own); ARGV[1] limit  ARGV[2] offset, as the policy's `victims` reads them. Returns a flat
    list: path, last access, record, lease ('' for none: pins.LEASE_AROUND), ...
    """
    return (
        PRELUDE
        + LEASE_AROUND
        + "local function pick()\n"
        + victims
        + """
end
local out = {}
for _, p in ipairs(pick()) do
  local last = redis.call('ZSCORE', KEYS[2], p)
  local rec = last and redis.call('HGET', KEYS[1], rid(p))
  if rec then
    out[#out + 1] = p
    out[#out + 1] = last
    out[#out + 1] = rec
    out[#out + 1] = lease_around(p) or ''
  end
end
return out
"""
    )


# The books' view of some paths, in one call. KEYS: COMMON_KEYS layout  ARGV: paths
# Returns, for each path: last access, record, lease (pins.LEASE_AROUND), '' for none; the
# record only while the path is in cache:lru.
ENTRIES = (
    PRELUDE
    + LEASE_AROUND
    + """
local out = {}
for i = 1, #ARGV do
  local p = ARGV[i]
  local last = redis.call('ZSCORE', KEYS[2], p)
  local rec = last and redis.call('HGET', KEYS[1], rid(p))
  out[#out + 1] = last or ''
  out[#out + 1] = rec or ''
  out[#out + 1] = rec and lease_around(p) or ''
end
return out
"""
)


# One directory's read (listing.directory): its record, the TTL its workers published, the
# leases named on it, and the other pinned paths around it (above, inside): the lease that
# protects it (LEASE_AROUND's) is the latest of its own and those.
# KEYS[1] cache:entries  KEYS[2] cache:lru  KEYS[5] cache:pins:paths  KEYS[6] cache:pins (the
# COMMON_KEYS places)  KEYS[7] cache:config  KEYS[8] pin:{path}   ARGV[1] path
# Returns false for an untracked path, else {last access, record, TTL or '', its lease in
# cache:pins or '', {holder, expiry, ...}, {other path, lease, ...}}.
DIRECTORY = Lua(
    PRELUDE
    + """
local path = ARGV[1]
local last = redis.call('ZSCORE', KEYS[2], path)
local rec = last and redis.call('HGET', KEYS[1], rid(path))
if not rec then return false end
local others = {}
local function note(p)
  local lease = redis.call('ZSCORE', KEYS[6], p)
  if lease then others[#others + 1] = p; others[#others + 1] = lease end
end
local i = string.find(path, '/', 1, true)
while i do
  note(string.sub(path, 1, i - 1))
  i = string.find(path, '/', i + 1, true)
end
for _, p in ipairs(redis.call('ZRANGEBYLEX', KEYS[5], '[' .. path .. '/', '(' .. path .. '0')) do
  note(p)
end
return {last, rec, redis.call('HGET', KEYS[7], 'ttl_seconds') or '',
        redis.call('ZSCORE', KEYS[6], path) or '', redis.call('HGETALL', KEYS[8]), others}
"""
)


def directory(store: Store, path: str, now: float) -> Entry | None:
    """One tracked directory with every lease in force on it, above it or inside it (each
    with its holder and path), its expiry by the TTL its workers published: one round trip,
    and one more only when a path around it is pinned."""
    k = store.keys
    keys = [*store.lease_keys(), k.config, k.pin_holders(path)]
    reply = call(store.client, DIRECTORY, keys, [path])
    if not reply:
        return None
    last, rec, ttl, own, named, around = reply
    leased = pairs(around)
    protecting = max([float(t) for t in [own, *leased.values()] if t and float(t) > now],
                     default=None)  # fmt: skip
    entry = store.entry(path, last, rec, protecting)
    if ttl:
        entry.ttl_seconds = int(ttl)
    leases = [Lease(h, t, path) for h, t in pins.in_force(pairs(named), own, now).items()]
    others = [(p, lease) for p, lease in leased.items() if float(lease) > now]
    if others:  # a pin taken on a path inside before it was registered, or on one above

        def build(batch: Batch) -> Reader[list[Lease]]:
            for p, _ in others:
                batch.command("HGETALL", k.pin_holders(p), writes=False)

            def read(replies: Iterator[Any]) -> list[Lease]:
                return [
                    Lease(h, t, p)
                    for p, latest in others
                    for h, t in pins.in_force(next(replies), latest, now).items()
                ]

            return read

        leases += run(store.client, build)
    entry.holders = sorted(leases, key=lambda x: (-x.until, x.holder, x.path))
    return entry


def page(store: Store, limit: int, cursor: str | None = None) -> tuple[list[Entry], str | None]:
    """Entries by last access, newest first; the cursor is (score, path) of the last one."""
    lru = store.keys.lru
    if cursor is None:
        items = store.client.zrevrange(lru, 0, limit, withscores=True)
    else:
        score, member = decode_cursor(cursor)
        ties = int(store.client.zcount(lru, score, score))
        raw = store.client.zrevrangebyscore(
            lru, score, "-inf", start=0, num=limit + ties + 1, withscores=True
        )
        # Ties at `score` come in descending member order; keep those after the cursor.
        items = [(m, s) for m, s in raw if s < score or m < member]
    more = len(items) > limit
    items = items[:limit]
    next_cursor = encode_cursor(items[-1][1], items[-1][0]) if more and items else None
    return store.entries(items), next_cursor


# How select() orders what it keeps (page's own order, newest access first, is the default).
ORDERS: dict[str, Callable[[Entry], float] | None] = {
    "last-access": None,
    "size": lambda e: e.size_bytes,
    "hits": lambda e: e.hits,
}


def select(
    store: Store,
    now: float,
    *,
    larger_than: int | None = None,
    idle_for: float | None = None,
    sort: str = "last-access",
    limit: int | None = None,
    batch: int = 1000,
) -> list[Entry]:
    """Every tracked directory larger than `larger_than` bytes and not accessed for
    `idle_for` seconds (by `now`, the books' clock), ordered by `sort` (ORDERS: largest and
    most played first), the first `limit` of them. Read a page at a time."""
    if sort not in ORDERS:
        raise ValueError(f"unknown order {sort!r} (known: {', '.join(ORDERS)})")
    found: list[Entry] = []
    cursor = None
    while True:
        entries, cursor = page(store, batch, cursor)
        found += [
            e
            for e in entries
            if (larger_than is None or e.size_bytes > larger_than)
            and (idle_for is None or now - e.last_access >= idle_for)
        ]
        if cursor is None:
            break
    key = ORDERS[sort]
    if key is not None:
        found.sort(key=key, reverse=True)
    return found[:limit] if limit else found


# A page's cursor: (last access, path) of its last entry, opaque to the client.
def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}\n{member}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, member = base64.urlsafe_b64decode(cursor.encode()).decode().split("\n", 1)
        value = float(score)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if math.isnan(value):  # Redis refuses a nan bound
        raise ValueError(f"invalid cursor {cursor!r}")
    return value, member


def largest(store: Store, n: int, scan_limit: int = 100_000) -> tuple[list[Entry], bool]:
    """The n largest entries, and whether the scan stopped at `scan_limit` records.

    There is no index by size (it would cost memory on every entry), so this is a bounded
    scan for status pages, never a steady-state path.
    """
    top: list[tuple[int, str]] = []
    cut = False
    for seen, (path, rec) in enumerate(store.scan_records(), 1):
        if seen > scan_limit:
            cut = True
            break
        item = (unpack(rec)[0], path)
        if len(top) < n:
            heapq.heappush(top, item)
        elif item > top[0]:
            heapq.heapreplace(top, item)
    paths = [p for _, p in sorted(top, reverse=True)]
    if not paths:
        return [], cut
    scores = store.client.zmscore(store.keys.lru, paths)
    items = [(p, s) for p, s in zip(paths, scores, strict=True) if s is not None]
    return store.entries(items), cut


def stalest(store: Store, n: int, ttl: int | None = None) -> list[Entry]:
    """Least recently accessed first: the next to expire, whatever the eviction policy.
    `ttl`: the one the node's workers expire by (the stats'), when this process has another."""
    entries = store.expired(math.inf, n)
    if ttl is None:
        return entries
    return [replace(e, ttl_seconds=ttl) if e.ttl_seconds != ttl else e for e in entries]
