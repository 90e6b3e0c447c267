"""Pins: leases that keep a directory, and the tree around it, from eviction and expiry.

A pin names a path (tracked or about to be) with a lease expiry in `cache:pins`; the same path
is in `cache:pins:paths`, ordered by name, so that the pins inside a directory are one range.
Holders renew their leases; the cleanup drops lapsed ones. A holder that names itself has a
lease of its own (`pin:{path}`, holder -> expiry), which it renews, shortens or ends without
ending another's; `cache:pins` keeps the latest lease in force. The claim (journal.CLAIM) refuses
a directory while a live lease names it, a directory above it or one inside it, and the
reads report that lease (LEASE_AROUND).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cachemgr import checks
from cachemgr.paths import PathError, ancestors, normalize, root_own
from cachemgr.reads import Batch, Lua, Reader, run
from cachemgr.records import iso

if TYPE_CHECKING:
    from cachemgr.store import Store

# A pin is a lease its holder renews while it needs the directory: a week at most, so that a
# forgotten pin cannot keep a directory (and its bytes) forever.
MAX_PIN_SECONDS = 7 * 86400
# The pin script keeps time to the microsecond: a shorter lease read as lapsed at once, and
# its caller met a TypeError for an answer.
MIN_PIN_SECONDS = 0.001


# Why a pin is no longer than a week, wherever the bound is said.
TTL_HINT = " (a week: renew a pin rather than make it long)"


def check_ttl(ttl_seconds: float) -> None:
    checks.seconds("ttl_seconds", ttl_seconds, low=MIN_PIN_SECONDS, high=MAX_PIN_SECONDS,
                   hint=TTL_HINT)  # fmt: skip


def grant(
    store: Store,
    path: str,
    ttl_seconds: float,
    holder: str | None,
    now: float,
    check: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """A lease until `now` + `ttl_seconds` on `path`, or on the tracked directory that holds
    it; the reply names that directory and the lease in force there (another holder's later
    one stands). `check(path, directory)` may refuse it first."""
    check_ttl(ttl_seconds)
    rel, who = normalize(path), checks.holder(holder)
    # By name, as the API refuses it: a lease on lost+found said it would keep a download
    # of that name once registered, which no registration ever is.
    own = root_own(rel)
    if own is not None:
        raise PathError(own)
    target = store.covering(rel)
    if check is not None:
        check(rel, target)
    until = float(store.pin(target, now + ttl_seconds, who, now=now))
    return {"path": target, "pinned_until": iso(until)}


def end(store: Store, path: str, holder: str | None, now: float) -> dict[str, Any]:
    """`end_lease`, with its reply: the directory, whether a lease ended, the one in force;
    and a `warning` where nothing ended and a lease that named no holder, made through this
    path, stands on the tracked directory above it: it is not ended through a path inside
    (it may be another's too), and a pipeline that pinned and unpinned the same path saw its
    album kept until the lease lapsed, unsaid."""
    rel, who = normalize(path), checks.holder(holder)
    target, had, rest = end_lease(store, rel, who, now)
    reply: dict[str, Any] = {"path": target, "unpinned": had, "pinned_until": iso(rest)}
    above = store.covering(rel) if not had and not who and rest is not None else rel
    if above != rel and _anyones_on(store, above, now):
        reply["warning"] = (
            f"nothing ended on {rel!r}, which lies in the tracked directory {above!r}: a pin "
            f"made through it naming no holder is on {above!r}, and is not ended through a "
            f"path inside (it may be another's too); unpin {above!r} to end every lease on "
            "it, or pin and unpin with a holder of your own"
        )
    return reply


def _anyones_on(store: Store, directory: str, now: float) -> bool:
    """Whether a lease that named no holder is in force on `directory` itself: a named
    holder's there, or one above or inside it, is not one to tell an unpin to end."""
    named = store.client.hgetall(store.keys.pin_holders(directory))
    latest = store.client.zscore(store.keys.pins, directory)
    return "" in in_force(named, latest, now)


def in_force(named: dict[str, Any], latest: Any, now: float) -> dict[str, float]:
    """The leases in force on one path, holder -> expiry, from its `pin:{path}` hash and its
    lease in cache:pins ('': one no holder named, or one an older client wrote to cache:pins
    alone, as PIN's adopt() takes it)."""
    found = {holder: float(until) for holder, until in named.items() if float(until) > now}
    if latest not in (None, "") and float(latest) > now and float(latest) not in found.values():
        found[""] = max(found.get("", 0.0), float(latest))
    return found


# Put a holder's lease on a directory (tracked or about to be) until ARGV[2]; 0 ends it.
# Refused while the directory, one above it or one inside it is being deleted (in
# cache:deleting): the claim checked the leases before, and a lease granted now would protect
# nothing. A lease no holder named ('') is anyone's: of two, the later stands, and ending it
# ends every lease on the directory; a named holder's is its own to renew, shorten or end.
# KEYS[1] cache:pins  KEYS[2] cache:pins:paths  KEYS[3] cache:deleting  KEYS[4] pin:{path}
# ARGV[1] path  ARGV[2] lease expiry or 0  ARGV[3] holder or ''  ARGV[4] now
# Returns the lease in force (its expiry, as a string; false when none is: one given lapsed
# already); for an end, {1 or 0 (whether there
# was one), the lease still in force or false}; or the path being deleted as {path}.
PIN = """
local path, holder, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
-- A live lease in cache:pins that no holder's is (written by a client from before holders,
-- which knows nothing of pin:{path}) is anyone's: kept as such, the later of two.
local function adopt()
  local cur = redis.call('ZSCORE', KEYS[1], path)
  if not cur or tonumber(cur) <= now then return end
  local flat = redis.call('HGETALL', KEYS[4])
  for i = 2, #flat, 2 do
    if tonumber(flat[i]) == tonumber(cur) then return end
  end
  local anyone = redis.call('HGET', KEYS[4], '')
  if not anyone or tonumber(cur) > tonumber(anyone) then redis.call('HSET', KEYS[4], '', cur) end
end
-- No lease left on the path: 1 if cache:pins had one.
local function drop()
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[2], path)
  return redis.call('ZREM', KEYS[1], path)
end
-- The latest lease in force, kept in cache:pins (lapsed holders forgotten); none: no pin.
local function settle()
  local best, best_s = nil, nil
  local flat = redis.call('HGETALL', KEYS[4])
  for i = 1, #flat, 2 do
    local t = tonumber(flat[i + 1])
    if t <= now then
      redis.call('HDEL', KEYS[4], flat[i])
    elseif not best or t > best then
      best, best_s = t, flat[i + 1]
    end
  end
  if not best then
    drop()
    return false
  end
  redis.call('ZADD', KEYS[1], best_s, path)
  redis.call('ZADD', KEYS[2], 0, path)
  -- By the caller's clock, as the leases are (Redis's may differ): a second past the last.
  redis.call('PEXPIRE', KEYS[4], math.ceil((best - now) * 1000) + 1000)
  return best_s
end
if tonumber(ARGV[2]) == 0 then
  if holder == '' then return {drop(), false} end
  adopt()
  local had = redis.call('HDEL', KEYS[4], holder)
  return {had, settle()}
end
if redis.call('HEXISTS', KEYS[3], path) == 1 then return {path} end
local i = string.find(path, '/', 1, true)
while i do
  local above = string.sub(path, 1, i - 1)
  if redis.call('HEXISTS', KEYS[3], above) == 1 then return {above} end
  i = string.find(path, '/', i + 1, true)
end
local prefix = path .. '/'  -- the journal holds the deletions in flight: a few
for _, p in ipairs(redis.call('HKEYS', KEYS[3])) do
  if string.sub(p, 1, #prefix) == prefix then return {p} end
end
adopt()  -- after the checks above: a pin refused leaves nothing behind
local mine = redis.call('HGET', KEYS[4], holder)
if holder ~= '' or not mine or tonumber(ARGV[2]) > tonumber(mine) then
  redis.call('HSET', KEYS[4], holder, ARGV[2])
end
return settle()
"""

# Forget leases that lapsed before ARGV[1], at most ARGV[2] of them; returns how many.
# KEYS[1] cache:pins  KEYS[2] cache:pins:paths
DROP_LAPSED_PINS = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #lapsed > 0 then
  redis.call('ZREM', KEYS[1], unpack(lapsed))
  redis.call('ZREM', KEYS[2], unpack(lapsed))
end
return #lapsed
"""

# Lua for the claim and the reads: the latest lease that protects `path` (a string, nil for
# none): one on it, on a directory above it or on one inside it. A pin may precede its
# directory, and a directory may be registered above a pinned one later. It is live while
# later than now: the claim compares it, and so does a pass deciding from a read (a dry run
# then plans what the real run does).  KEYS[5] cache:pins:paths  KEYS[6] cache:pins
LEASE_AROUND = """
local function lease_around(path)
  local best, best_s = nil, nil
  local function take(p)
    local lease = redis.call('ZSCORE', KEYS[6], p)
    if lease and (not best or tonumber(lease) > best) then best, best_s = tonumber(lease), lease end
  end
  take(path)
  local i = string.find(path, '/', 1, true)
  while i do
    take(string.sub(path, 1, i - 1))
    i = string.find(path, '/', i + 1, true)
  end
  -- '0' follows '/': the range holds exactly the paths that start with path .. '/'
  for _, p in ipairs(redis.call('ZRANGEBYLEX', KEYS[5], '[' .. path .. '/', '(' .. path .. '0')) do
    take(p)
  end
  return best_s
end
"""

# A deletion that moved a claimed directory out of its place (trash.discard) goes on only
# while the directory is still its own to delete: no live lease around it (a pin granted
# between the claim and the move), and no record of it (a recovery that put it back while
# this worker stalled past its lock, or a registration since). KEYS as scripts.COMMON_KEYS
# (KEYS[1] cache:entries, KEYS[2] cache:lru, KEYS[5] cache:pins:paths, KEYS[6] cache:pins).
# ARGV[1] path  ARGV[2] now. Returns 'ok', 'pinned' or 'taken'.
STILL_OURS = """
local path, now = ARGV[1], tonumber(ARGV[2])
if record(path) then return 'taken' end
local lease = lease_around(path)
if lease and tonumber(lease) > now then return 'pinned' end
return 'ok'
"""


# The latest lease that protects a path (LEASE_AROUND), read after the unpins in one batch.
# KEYS[5] cache:pins:paths  KEYS[6] cache:pins (their COMMON_KEYS places; 1-4 unused)
# ARGV[1] path. Returns the lease (a string) or false.
LEASE_NOW = Lua(LEASE_AROUND + "\nreturn lease_around(ARGV[1]) or false\n")


def end_lease(store: Store, path: str, holder: str, now: float) -> tuple[str, bool, float | None]:
    """End `holder`'s leases on `path` ('': every lease on it) and, for a named holder, on the
    tracked directory that covers it and on the paths inside that one (a pin through a path
    inside lands on the directory once it is tracked; one taken before the registration
    stays on its path): (the directory, whether a lease ended, the latest lease still in
    force on it, above it or inside it). Three round trips at most, the ends in one."""
    where, targets = path, [path]
    if holder:
        above = ancestors(path)
        hits = store.tracked([*above, path])
        where = next((p for p, hit in zip(above, hits, strict=False) if hit), path)
        if where != path or hits[-1]:  # an untracked path's inside is other downloads
            pinned = store.keys.pin_paths
            inside = store.client.zrangebylex(pinned, f"[{where}/", f"({where}0")
            targets = list(dict.fromkeys([path, where, *inside]))

    def build(batch: Batch) -> Reader[tuple[bool, Any]]:
        for target in targets:
            args = [target, 0, holder, f"{now:.6f}"]
            batch.script(store.pin_script, store.pin_keys(target), args)
        batch.script(LEASE_NOW, store.lease_keys(), [where], writes=False)

        def read(replies: Iterator[Any]) -> tuple[bool, Any]:
            ended = [bool(next(replies)[0]) for _ in targets]
            return any(ended), next(replies)

        return read

    ended, lease = run(store.client, build)
    live = float(lease) if lease and float(lease) > now else None
    return where, ended, live
