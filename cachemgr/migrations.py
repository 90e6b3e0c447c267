"""Carrying books over: into the structures of the policy chosen now, the seed's dir: keys to
the TTL set now, the seed's own books (a cache:lru without records, locks that never lapse), and
from the layout of an older cachemgr (records by path, pins without their index). Each runs in
batches; the rebuild, the restamping and the refiling once (a marker key says they are done), the
seed's books at each reconcile, the pin index at every cleanup (one command: leases are few)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cachemgr import events
from cachemgr.policies import POLICIES
from cachemgr.published import split
from cachemgr.reads import Lua, call
from cachemgr.records import RECORD_FORMAT
from cachemgr.scripts import COMMON_KEYS, PRELUDE

if TYPE_CHECKING:
    from cachemgr.store import Store

log = logging.getLogger("cachemgr")

# Refile records that books written before record ids keep under their path.
# KEYS: COMMON_KEYS layout  ARGV[1..] fields of cache:entries
# Returns how many moved. A field that is a tracked path is an old one: an id is not a path.
REFILE = Lua(
    PRELUDE
    + """
local moved = 0
for i = 1, #ARGV do
  local field = ARGV[i]
  local id = rid(field)
  if id ~= field and redis.call('ZSCORE', KEYS[2], field) then
    local rec = redis.call('HGET', KEYS[1], field)
    redis.call('HDEL', KEYS[1], field)
    if rec and redis.call('HSETNX', KEYS[1], id, rec) == 1 then moved = moved + 1 end
  end
end
return moved
"""
)


def rebuild_policy(store: Store, batch: int = 1000) -> int:
    """Carry every tracked entry over into the active policy's structures, oldest access
    first (policies.py says how each policy takes them)."""
    rebuild = Lua(store.policy.rebuild_script)
    lru, done, first = store.keys.lru, 0, True
    after: tuple[float, str] | None = None
    while True:
        # By (last access, path), not by rank: an access moves an entry to the end, and an
        # offset would then skip one that was not carried yet. An entry accessed after it was
        # carried comes again, and its insert hook takes it as a registration again.
        if after is None:
            items = store.client.zrange(lru, 0, batch - 1, withscores=True)
        else:
            score, member = after
            ties = int(store.client.zcount(lru, score, score))
            raw = store.client.zrangebyscore(
                lru, score, "+inf", start=0, num=batch + ties, withscores=True
            )
            items = [(m, s) for m, s in raw if s > score or m > member][:batch]
        if not items and not first:
            break
        call(store.client, rebuild, store.script_keys(), [int(first), *(m for m, _ in items)])
        done += len(items)
        first = False
        if len(items) < batch:
            break
        after = (items[-1][1], items[-1][0])
    store.client.set(store.keys.policy_name, store.policy.name)
    return done


# cache:policy_name while a switch rebuilds: `old>new` (no policy's name holds '>').
SWITCHING = ">"


def built(named: str | None) -> str | None:
    """The policy whose structures are built, from cache:policy_name as read (`named`): None
    for new books and while a switch to another is under way; a rebuild of the one in force
    cut short (`a>a`) names it."""
    old, _, new = (named or "").partition(SWITCHING)
    return old if old and (not new or new == old) else None


def recorded(store: Store) -> str | None:
    """`built`, read from the books."""
    return built(store.client.get(store.keys.policy_name))


def to_feed(published: str | None, named: str | None) -> str:
    """The policy a pipeline's store runs: the one whose structures are built (`named`:
    cache:policy_name), which its plays must feed, else the one the workers published. While
    the workers disagree, or before their first cleanup switched, the published one is not
    in force: a client of it fed no policy at all."""
    for name in (built(named), published):
        if name in POLICIES:
            return name
    return "lru"


def held(name: str | None, live: dict[str, dict[str, Any]]) -> str | None:
    """The policy in force (`name`: `built`) while the node's live workers (`live`:
    NodeRegistry.live_workers) run it and another: every cleanup then acts by it, whichever
    worker runs it, and rebuilds its structures first (rebuild_in_force), since the others'
    registrations fed their own policy's hooks. Workers of two policies (a rolling restart, or
    one set apart by mistake) had switched it back and forth at each cleanup; the switch now
    happens once the last worker of the old policy stops."""
    running = {entry["policy"] for entry in live.values() if entry.get("policy")}
    if name and name in running and running != {name}:
        return name
    return None


def rebuild_in_force(store: Store) -> int:
    """Rebuild this store's policy, the one in force, from the records: a worker of another
    policy fed its own structures, not these, with its registrations. Named as in passage
    meanwhile, as a switch is (no client feeds structures being rebuilt)."""
    name = store.policy.name
    store.client.set(store.keys.policy_name, f"{name}{SWITCHING}{name}")
    return rebuild_policy(store)


def ensure_policy(store: Store, now: float | None = None) -> bool:
    """Rebuild when the policy changed since the structures were built; True if it did so
    for a switch (not for new books). `now` (the cache's clock) dates the switch's event.

    With no name recorded, structures that exist were built by books older than the name
    (Store.register records it before a store's first hook, and at the first directory of
    empty books): adopt them rather than wipe their history. A switch is logged and kept as
    an event; the old policy's own structures go. Cleanups alone call this, under their lock.
    """
    recorded = store.client.get(store.keys.policy_name)
    new = store.policy.name
    if recorded == new:
        return False
    if recorded is not None:
        # Named as in passage while the structures are rebuilt in batches: every store's
        # access script then finds the name not its own and runs no hook, as a client of the
        # old policy would meanwhile into structures being rebuilt. A switch a crash cut
        # short is named so still, and done again.
        recorded = recorded.partition(SWITCHING)[0]
        store.client.set(store.keys.policy_name, f"{recorded}{SWITCHING}{new}")
    own = [store.keys.policy] + store.script_keys()[COMMON_KEYS:]
    if recorded is None and store.client.exists(*own):
        store.client.set(store.keys.policy_name, new)
        return False
    carried = rebuild_policy(store)
    if recorded is None or recorded == new:  # new books, or a rebuild a crash cut short
        return False
    old = POLICIES.get(recorded)
    stale = [store.keys.policy_aux(recorded, name) for name in (old.aux if old else ())]
    if stale:
        store.client.unlink(*stale)  # a ghost can be large: freed in the background
    log.info(
        "eviction policy switched from %s to %s: %d directories carried over",
        recorded,
        new,
        carried,
        extra={"event": "policy_switched"},
    )
    event = {"event": "policy_switched", "previous": recorded, "policy": new, "carried": carried}
    events.add(store, {**event, "time": f"{time.time() if now is None else now:.3f}"})
    return True


def ensure_record_ids(store: Store, batch: int = 1000) -> int:
    """Books written before records were filed by id keep them under their paths: refile
    them, once (cache:format marks it done). Returns how many records moved."""
    if store.client.get(store.keys.format) == RECORD_FORMAT:
        return 0
    moved, fields = 0, []
    for field, _ in store.client.hscan_iter(store.keys.entries, count=batch):
        fields.append(field)  # the script tells an old path from an id
        if len(fields) >= batch:
            moved += int(call(store.client, REFILE, store.script_keys(), fields))
            fields = []
    if fields:
        moved += int(call(store.client, REFILE, store.script_keys(), fields))
    store.client.set(store.keys.format, RECORD_FORMAT)
    return moved


# Stamp the dir: keys of some directories with the TTL now in force: each expires TTL seconds
# after its directory's last access, as if it had been written with it; one no longer tracked
# is left alone. KEYS: COMMON_KEYS layout, KEYS[9] the bare `dir:` prefix
# ARGV[1] now  ARGV[2] ttl seconds  ARGV[3..] paths. Returns how many were stamped.
RESTAMP = Lua(
    PRELUDE
    + """
local now, ttl, stamped = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  local path = ARGV[i]
  local last = redis.call('ZSCORE', KEYS[2], path)
  local rec = last and record(path)
  if rec then
    local left = math.floor(tonumber(last) + ttl - now)
    if left > 0 then
      local _, _, reg = parse(rec)
      redis.call('SET', KEYS[9] .. path, seconds(reg), 'EX', left)
      stamped = stamped + 1
    else
      redis.call('DEL', KEYS[9] .. path)  -- expired by this TTL: the sweep takes it
    end
  end
end
return stamped
"""
)


def ensure_ttl(store: Store, now: float, live: dict[str, dict[str, Any]] | None = None,
               batch: int = 1000) -> int:  # fmt: skip
    """The seed's dir:{path} keys carry the TTL they were written with: after a change of
    DISK_CACHE_TTL_SECONDS they vanished early, or outlived their directories' expiry, though
    `redis-cli keys "dir:*"` is how the seed says to look. Stamp them anew in batches (ZSCAN:
    none skipped as plays reorder the books), once per change (cache:ttl_applied); not while
    the live workers (`live`) disagree on the TTL, which would stamp the books to and fro.
    Returns how many keys were stamped."""
    ttl = store.ttl_seconds
    if store.client.get(store.keys.ttl_applied) == str(ttl):
        return 0
    if "ttl_seconds" in split(live or {}):
        return 0  # a rolling restart: the last one standing stamps
    stamped, paths = 0, []
    for path, _ in store.client.zscan_iter(store.keys.lru, count=batch):
        paths.append(path)
        if len(paths) >= batch:
            stamped += int(call(store.client, RESTAMP, store.script_keys(""), [now, ttl, *paths]))
            paths = []
    if paths:
        stamped += int(call(store.client, RESTAMP, store.script_keys(""), [now, ttl, *paths]))
    store.client.set(store.keys.ttl_applied, str(ttl))
    if stamped:
        log.info("dir: keys stamped with DISK_CACHE_TTL_SECONDS=%d (%d directories)", ttl, stamped)
    return stamped


# Take off cache:lru paths that have no record (the seed's books, migrations.seed_books), with
# their dir: keys, once reconcile has booked what it could of them.
# KEYS: COMMON_KEYS layout, KEYS[9] the bare `dir:` prefix  ARGV[1..] paths
# Returns how many it took off (one booked meanwhile has its record: it stays).
DROP_UNRECORDED = Lua(
    PRELUDE
    + """
local dropped = 0
for i = 1, #ARGV do
  local p = ARGV[i]
  if redis.call('ZSCORE', KEYS[2], p) and not redis.call('HGET', KEYS[1], rid(p)) then
    redis.call('ZREM', KEYS[2], p)
    redis.call('DEL', KEYS[9] .. p)
    dropped = dropped + 1
  end
end
return dropped
"""
)

# What the seed's code writes in a directory's lock (cachemgr's: `locked:<token>`, with a TTL).
SEED_LOCK = "locked"


def seed_books(store: Store, found: dict[str, float], lock_timeout: int, batch: int = 1000) -> None:
    """The seed's books, for reconcile to book: `found`, the paths on cache:lru with no record
    and their last access (Store.all_records gathers them: the seed writes cache:lru and dir:
    keys alone), left in place until booked (a walk cut short loses none). Booked as new, in
    the order the walk met them, the albums played in the last hour were the first evicted,
    and a download registered meanwhile went with them. And the seed's locks that never lapse
    (a crashed seed process's `locked`, no TTL) are given the lock timeout: each kept its
    directory unbooked for ever. O(n) (SCAN), as the reconcile that runs it."""
    stale = 0
    for key in store.client.scan_iter(match=store.keys.lock("*"), count=batch):
        # Only a value the seed writes, with no TTL: cachemgr's own always lapse.
        if store.client.get(key) == SEED_LOCK and store.client.ttl(key) == -1:
            stale += int(store.client.expire(key, lock_timeout))
    if found or stale:
        log.warning(
            "reconcile: the seed's books: %d directories on cache:lru with no record (booked "
            "at their last access there), %d locks that never lapsed (given %d s)",
            len(found),
            stale,
            lock_timeout,
            extra={"event": "seed_adopted"},
        )


def drop_unrecorded(store: Store, paths: list[str], batch: int = 1000) -> int:
    """Take these paths off cache:lru where they still have no record (DROP_UNRECORDED)."""
    dropped = 0
    for i in range(0, len(paths), batch):
        part = paths[i : i + batch]
        dropped += int(call(store.client, DROP_UNRECORDED, store.script_keys(""), part))
    return dropped


def ensure_pin_index(store: Store) -> int:
    """Make cache:pins:paths name exactly the pinned paths; returns how many.

    Pins made before the index existed, or by a pipeline client of an older cachemgr, are
    only in cache:pins: each cleanup and each worker's start rebuilds the index from it, in
    one atomic command (leases are few: each lasts a week at most)."""
    k = store.keys
    return int(store.client.zunionstore(k.pin_paths, {k.pins: 0}))
