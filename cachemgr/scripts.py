"""The Lua scripts that change the books, one per operation, so that each change is atomic
(a deletion's, which go through the journal, are in journal.py).

Every script gets the same KEYS layout (COMMON_KEYS), so that one script serves every policy:
a policy adds its own Lua at the `--@on_insert`, `--@on_hit`, `--@on_remove` and `--@on_restore`
marks, and may use its own keys, appended as KEYS[13..] and seen as AUX[1..]. A record is the string
`size files registered hits` (records.py), under the path's id (`record(path)` below).
"""

from __future__ import annotations

# KEYS[1] cache:entries      KEYS[2] cache:lru          KEYS[3] cache:bytes
# KEYS[4] cache:stats        KEYS[5] cache:pins:paths   KEYS[6] cache:pins
# KEYS[7] cache:deleting     KEYS[8] cache:policy       KEYS[9] dir:{path} (or unused)
# KEYS[10] cache:events      KEYS[11] cache:accesses    KEYS[12] lock:dir:{path} (or unused)
# KEYS[13..] the policy's own keys
COMMON_KEYS = 12

PRELUDE = """
local AUX = {}
for i = 13, #KEYS do AUX[#AUX + 1] = KEYS[i] end
local function count(field, n)
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[4], field, n)
  end
end
-- A byte counter stops at 511 x 2^54, short of 2^63: HINCRBY past it failed the script after
-- its other writes (the hit or miss counted), and every access after it, for good. pcall:
-- no read before each increment, on the hot path.
local function count_bytes(field, n)
  if n ~= 0 then
    local done = redis.pcall('HINCRBY', KEYS[4], field, n)
    if type(done) == 'table' and done.err then
      redis.call('HSET', KEYS[4], field, '9205357638345293824')
    end
  end
end
-- A record's field is not its path but the path's id (records.record_id): 12 base64
-- characters of its SHA-1. A 40-character field costs Redis a 48-byte allocation per
-- directory, the id a 16-byte one.
local function b64(v)  -- one base64 digit, as its character code
  if v < 26 then return v + 65 elseif v < 52 then return v + 71 elseif v < 62 then return v - 4 end
  return v == 62 and 43 or 47
end
-- Three 24-bit numbers and one string.char: building strings in a loop costs twice as much.
local function rid(p)
  local h, f = redis.sha1hex(p), math.floor
  local x = tonumber(string.sub(h, 1, 6), 16)
  local y = tonumber(string.sub(h, 7, 12), 16)
  local z = tonumber(string.sub(h, 13, 18), 16)
  return string.char(
    b64(f(x / 262144)), b64(f(x / 4096) % 64), b64(f(x / 64) % 64), b64(x % 64),
    b64(f(y / 262144)), b64(f(y / 4096) % 64), b64(f(y / 64) % 64), b64(y % 64),
    b64(f(z / 262144)), b64(f(z / 4096) % 64), b64(f(z / 64) % 64), b64(z % 64))
end
-- A tracked path's record, id and last access. The record counts only while the path is in
-- cache:lru (KEYS[2]): two paths whose ids collide (72 bits) never read each other's.
local function record(p)
  local id = rid(p)
  local rec = redis.call('HGET', KEYS[1], id)
  local last = rec and redis.call('ZSCORE', KEYS[2], p)
  if not last then rec = false end
  return rec, id, last
end
local function parse(rec)
  local size, files, reg, hits = string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$')
  return tonumber(size), tonumber(files), reg, tonumber(hits)
end
-- Sizes stay the strings they came as: Lua would print a big number as %.14g.
local function raw(rec)
  return string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$')
end
-- dir:{path} holds whole seconds: Redis keeps an integer inside the key's object, no string.
local function seconds(t)
  return string.match(t, '^-?%d+')
end
-- Streams are trimmed to their cap: approximately (whole nodes of about 100 entries, cheap)
-- for a big cap, exactly for a small one, which approximate trimming would not hold.
local function trim(cap)
  return tonumber(cap) < 1000 and '=' or '~'
end
-- The caller's lock must still be ours: a lock that lapsed mid-work may now be another's.
local function lock_lost(token)
  return token ~= '' and redis.call('GET', KEYS[12]) ~= token
end
"""

# A play, or a registration again, never moves a directory's last access back: a host whose
# clock is behind booked it as an hour ago, and the next sweep expired the album just played.
NOT_BEFORE = """
-- `last`: the path's score when the caller has read it (record), else nil.
local function not_before(path, now, last)
  if last == nil then last = redis.call('ZSCORE', KEYS[2], path) end
  if last and tonumber(last) > tonumber(now) then return last end
  return now
end
"""

# Register or re-register one scanned directory.
# ARGV[1] path  ARGV[2] size  ARGV[3] files  ARGV[4] now  ARGV[5] ttl seconds
# ARGV[6] lock token ('' = none held)
# ARGV[7..] paths that must not be tracked (ancestors and subdirectories: no double counting)
# Returns {'overlap', other}, {'lock_lost'}, {'busy', above} (a directory above holds its lock),
# {'collision'} (the path's record id is another tracked path's: records.record_id),
# {'claimed'} (a deletion of it was interrupted: the caller settles it first, journal.settle)
# or {'ok', new (1/0), byte delta, cache:bytes after}.
REGISTER = (
    PRELUDE
    + NOT_BEFORE
    + """
local path, size, files, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if lock_lost(ARGV[6]) then return {'lock_lost'} end
-- Booked over, its journal entry went with it, unsaid: neither put back nor counted.
if redis.call('HEXISTS', KEYS[7], path) == 1 then return {'claimed'} end
for i = 7, #ARGV do
  -- tracked, or claimed and not yet deleted (the journal): its recovery may put it back.
  -- Tracked is on cache:lru with a record: the seed's books list paths there with none.
  if record(ARGV[i]) or redis.call('HEXISTS', KEYS[7], ARGV[i]) == 1 then
    return {'overlap', ARGV[i]}
  end
end
-- A directory above that holds its lock is being registered (its scan may have missed this
-- one: both would be tracked) or deleted: the caller waits for it, then scans again.
local lock_prefix = string.sub(KEYS[12], 1, #KEYS[12] - #path)
local slash = string.find(path, '/', 1, true)
while slash do
  local above = string.sub(path, 1, slash - 1)
  if redis.call('EXISTS', lock_prefix .. above) == 1 then return {'busy', above} end
  slash = string.find(path, '/', slash + 1, true)
end
local old, id, last = record(path)
if not old and redis.call('HEXISTS', KEYS[1], id) == 1 then return {'collision'} end
local hits, delta, new = 0, size, 1
if old then
  local osize, ofiles, oreg, ohits = parse(old)
  hits, delta, new = ohits, size - osize, 0
  now = not_before(path, now, last)
end
redis.call('HSET', KEYS[1], id, ARGV[2] .. ' ' .. files .. ' ' .. now .. ' ' .. hits)
redis.call('ZADD', KEYS[2], now, path)
redis.call('SET', KEYS[9], seconds(now), 'EX', ttl)
local total_after = redis.call('INCRBY', KEYS[3], delta)
count('registrations', 1)
--@on_insert
return {'ok', new, delta, total_after}
"""
)

# A path inside a tracked directory is a play of that directory: the pipeline may name a disc
# or a folder below the directory the cache tracks (DISK_CACHE_ENTRY_DEPTH), and the play must
# keep that directory. Looked for on a miss only: (tracked path, record, id, last access),
# or nil.
WITHIN_TRACKED = """
local function within_tracked(path)
  local i = string.find(path, '/', 1, true)
  while i do
    local above = string.sub(path, 1, i - 1)
    local rec, id, last = record(above)
    if rec then return above, rec, id, last end
    i = string.find(path, '/', i + 1, true)
  end
  return nil
end
"""

# A store that outlived a policy switch (a pipeline's client) must not feed another policy's
# structures, nor leave the new one blind to its hits unsaid: where cache:policy_name names
# another policy than the one whose hooks this script carries, a hit skips its on_hit and
# answers 2 (STALE_HIT), so that the caller reads the policy again. Store fills in the mark.
POLICY_IN_FORCE = """
local policy_key, policy_self = nil, nil
--@policy_in_force
local named
local function policy_stale()
  if not policy_key then return false end
  if named == nil then named = redis.call('GET', policy_key) end
  return named ~= false and named ~= policy_self
end
"""
STALE_HIT = 2


# A hit, as ACCESS and ACCESS_MANY book it: one more hit in the record, the last access
# (never moved back), the TTL key renewed (`dirkey`: the directory's dir: key), and the access
# log's entry. Returns the locals the policies' on_hit reads: now, size, reg, hits (before).
# `ttl` and `logcap` are the caller's ARGV, given.
HIT = """
local function log_access(logcap, now, path, size, hit)
  if logcap > 0 then
    redis.call('XADD', KEYS[11], 'MAXLEN', trim(logcap), logcap, '*', 't', now, 'path', path,
      'size', size, 'hit', hit)
  end
end
local function book_hit(path, id, rec, last, now, dirkey, ttl, logcap)
  local size_s, files_s, reg, hits_s = raw(rec)
  local hits = tonumber(hits_s)
  now = not_before(path, now, last)
  redis.call('HSET', KEYS[1], id, size_s .. ' ' .. files_s .. ' ' .. reg .. ' ' .. (hits + 1))
  redis.call('ZADD', KEYS[2], now, path)
  if redis.call('EXPIRE', dirkey, ttl) == 0 then
    redis.call('SET', dirkey, seconds(reg), 'EX', ttl)
  end
  log_access(logcap, now, path, size_s, 1)
  return now, tonumber(size_s), reg, hits
end
"""

# Record one access: a hit renews the TTL and moves the directory to the front.
# Registered through with_baked_keys: KEYS[1] cache:entries, the others written in.
# ARGV[1] path  ARGV[2] now  ARGV[3] ttl seconds  ARGV[4] bytes a miss had to fetch (0 unknown)
# ARGV[5] access-log cap (0: no log)
# Returns 1 for a hit (of the path, or of the tracked directory that holds it), 0 for a miss,
# 2 for a hit whose policy hook was not this script's to run (POLICY_IN_FORCE).
ACCESS = (
    PRELUDE
    + WITHIN_TRACKED
    + POLICY_IN_FORCE
    + NOT_BEFORE
    + HIT
    + """
local path, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local rec, id, last = record(path)
if not rec then
  local above, arec, aid, alast = within_tracked(path)
  if above then
    KEYS[9] = string.sub(KEYS[9], 1, #KEYS[9] - #path) .. above
    path, rec, id, last = above, arec, aid, alast
  end
end
local logcap = tonumber(ARGV[5])
if not rec then
  count('misses', 1)
  count_bytes('missed_bytes', tonumber(ARGV[4]))
  if tonumber(ARGV[4]) == 0 then count('unsized_misses', 1) end
  log_access(logcap, now, path, ARGV[4], 0)
  return 0
end
local now, size, reg, hits = book_hit(path, id, rec, last, now, KEYS[9], ttl, logcap)
count('hits', 1)
count_bytes('hit_bytes', size)
if policy_stale() then return 2 end  -- STALE_HIT
--@on_hit
return 1
"""
)

# Record a batch of accesses in one call: one EVALSHA per batch instead of one per access.
# Registered through with_baked_keys with path_arg=1 and ARGV[1] = '', so that KEYS[9] is the
# bare `dir:` prefix each path is appended to. KEYS[1] cache:entries.
# ARGV[1] ''  ARGV[2] now  ARGV[3] ttl seconds  ARGV[4] access-log cap (0: no log)
# ARGV[5..] paths. Returns one 1 (hit), 0 (miss) or 2 (ACCESS's) per path, with ACCESS's
# effects for each.
ACCESS_MANY = (
    PRELUDE
    + WITHIN_TRACKED
    + POLICY_IN_FORCE
    + NOT_BEFORE
    + HIT
    + """
local now, ttl, logcap = ARGV[2], ARGV[3], tonumber(ARGV[4])
local dir_prefix = KEYS[9]
local out, nhits, nbytes, nmisses = {}, 0, 0, 0
for j = 5, #ARGV do
  local path = ARGV[j]
  local rec, id, last = record(path)
  if not rec then
    local above, arec, aid, alast = within_tracked(path)
    if above then path, rec, id, last = above, arec, aid, alast end
  end
  if not rec then
    nmisses = nmisses + 1
    out[#out + 1] = 0
    log_access(logcap, now, path, 0, 0)
  else
    local now, size, reg, hits = book_hit(path, id, rec, last, now, dir_prefix .. path, ttl, logcap)
    nhits = nhits + 1
    nbytes = nbytes + size
    out[#out + 1] = 1
    if policy_stale() then
      out[#out] = 2  -- STALE_HIT
    else
--@on_hit
    end
  end
end
count('hits', nhits)
count_bytes('hit_bytes', nbytes)
count('misses', nmisses)
count('unsized_misses', nmisses)  -- a batch carries no sizes
return out
"""
)

# Correct a tracked directory's size after a rescan, keeping its times and hits. The policy
# hears of it as of a registration again (its own byte counts and sizes follow), at the
# directory's last access.
# KEYS: COMMON_KEYS layout  ARGV[1] path  ARGV[2] size  ARGV[3] files
# ARGV[4] the record the scan was of, `size files registered` ('' = any)
# ARGV[5] the caller's lock token
# ('' = it holds none: then nobody may hold the directory's lock, a registration or deletion)
# Returns the byte delta, or false when the path is not tracked, was registered again since
# the scan, or is (no longer) the caller's to change: a stale scan never overwrites a newer one.
RESIZE = (
    PRELUDE
    + """
local path, token = ARGV[1], ARGV[5] or ''
if token ~= '' then
  if lock_lost(token) then return false end
elseif redis.call('EXISTS', KEYS[12]) == 1 then
  return false
end
local rec, id = record(path)
if not rec then return false end
local old_size, old_files, reg, hits_s = raw(rec)
if (ARGV[4] or '') ~= '' and old_size .. ' ' .. old_files .. ' ' .. reg ~= ARGV[4] then
  return false
end
redis.call('HSET', KEYS[1], id, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. reg .. ' ' .. hits_s)
local size, hits = tonumber(ARGV[2]), tonumber(hits_s)
local now = redis.call('ZSCORE', KEYS[2], path)
local delta = size - tonumber(old_size)
redis.call('INCRBY', KEYS[3], delta)
--@on_insert
return delta
"""
)

def with_baked_keys(script: str, common: list[str], path_arg: int = 1) -> str:
    """The hot-path form of a script: it takes only KEYS[1] and rebuilds the rest itself.

    `common` is Store.script_keys("") (every key name, the two per-path ones empty): their
    names are written into the script, and the per-path ones (dir:, lock:dir:) are made from
    ARGV[path_arg]. Fewer arguments on the wire make a round trip measurably cheaper; every
    name shares the node's hash tag, so a Redis Cluster still runs it on one shard.
    """
    lines = []
    for i, name in enumerate(common, 1):
        if i == 1:
            continue
        if i in (9, 12):  # dir:{path}, lock:dir:{path}: the names end where the path goes
            lines.append(f"KEYS[{i}] = {lua_str(name)} .. ARGV[{path_arg}]")
        else:
            lines.append(f"KEYS[{i}] = {lua_str(name)}")
    return "\n".join(lines) + "\n" + script


def lua_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose(template: str, hooks: dict[str, str]) -> str:
    """Splice a policy's Lua into a script at its `--@name` marks."""
    for mark, code in hooks.items():
        template = template.replace(f"--@{mark}", code)
    return template
