"""The Lua of the sieve, 2q and gdsf policies (registered in policies.py; s3fifo and s3fifo-a
have their own modules, policy_lua_s3fifo.py and policy_lua_s3fifo_a.py).

Each mirrors a reference model (models.py; 2Q's and the S3-FIFOs' in models_s3fifo.py)
decision for decision. The `victims` script is
read-only: for policies whose eviction moves entries (SIEVE's hand, S3-FIFO's promotions) it
works the process out on a copy and names the victims in order. The state change happens when
a victim is claimed (the `--@on_remove` hook with reason `evicted`): the claim performs the
moves the process makes up to its next victim, then removes the claimed entry. So a dry run
changes nothing, and claiming victims in the order given reproduces the model exactly. An entry
claimed out of order (the ones before it were pinned or changed) is removed without moving
SIEVE's hand past them; S3-FIFO still makes the moves that precede its next natural victim.
Either way the skipped entries stay at the head of the order, which is what the cleanup's
offset (passes.run_pass) counts on.

Hook locals: path, size, hits, now (and reason in CLAIM; `reg` in every script but
REGISTER). AUX[i] are the policy's keys. Numbers that go back to Redis are integers well
below 2^53, or formatted with %.17g. A size is negated as `0 - size`: `-size` of an empty
directory (0 bytes on tmpfs) is -0, which reaches Redis as '-0' and HINCRBY refuses it.
"""

from __future__ import annotations

from cachemgr.policy_lua_parts import CURSOR, forget_in_ghost, remember_in_ghost

# -- SIEVE ---------------------------------------------------------------------------------
# AUX[1] zset of unvisited entries, AUX[2] zset of visited entries, both scored by insertion
# sequence; AUX[3] hash {seq, hand}. The hand is a score: it rests on the first entry at or
# after it, wrapping to the oldest. Victim order: unvisited from the hand (circularly), then
# visited from the hand, which is what the hand's walk produces.
SIEVE_AUX = ("unvisited", "visited", "meta")

SIEVE_ON_INSERT = """
if not redis.call('ZSCORE', AUX[1], path) and not redis.call('ZSCORE', AUX[2], path) then
  redis.call('ZADD', AUX[1], redis.call('HINCRBY', AUX[3], 'seq', 1), path)
end
"""

SIEVE_ON_HIT = """
do
  local s = redis.call('ZSCORE', AUX[1], path)
  if s then
    redis.call('ZREM', AUX[1], path)
    redis.call('ZADD', AUX[2], s, path)
  end
end
"""

SIEVE_ON_REMOVE = """
do
  local su = redis.call('ZSCORE', AUX[1], path)
  local sv = redis.call('ZSCORE', AUX[2], path)
  if reason == 'evicted' and (su or sv) then
    local H = redis.call('HGET', AUX[3], 'hand') or '0'
    local function first_unvisited()
      return redis.call('ZRANGEBYSCORE', AUX[1], H, '+inf', 'LIMIT', 0, 1)[1]
        or redis.call('ZRANGE', AUX[1], 0, 0)[1]
    end
    local f = first_unvisited()
    if not f then
      -- the hand went a whole lap and cleared every bit
      redis.call('RENAME', AUX[2], AUX[1])
      su, sv = sv, nil
      f = first_unvisited()
    end
    if f == path then
      -- the hand walked from H to this entry: it cleared the visited bits it passed
      local ranges = {{H, '(' .. su}}
      if tonumber(H) > tonumber(su) then ranges = {{H, '+inf'}, {'-inf', '(' .. su}} end
      for _, r in ipairs(ranges) do
        local passed = redis.call('ZRANGEBYSCORE', AUX[2], r[1], r[2], 'WITHSCORES')
        for i = 1, #passed, 2 do redis.call('ZADD', AUX[1], passed[i + 1], passed[i]) end
        if #passed > 0 then redis.call('ZREMRANGEBYSCORE', AUX[2], r[1], r[2]) end
      end
      local after = redis.call('ZRANGEBYSCORE', AUX[1], '(' .. su, '+inf', 'LIMIT', 0, 1)[1]
        or redis.call('ZRANGEBYSCORE', AUX[2], '(' .. su, '+inf', 'LIMIT', 0, 1)[1]
      redis.call('HSET', AUX[3], 'hand', after and (tonumber(su) + 1) or 0)
    end
  end
  redis.call('ZREM', AUX[1], path)
  redis.call('ZREM', AUX[2], path)
end
"""

SIEVE_VICTIMS = """
local n, off = tonumber(ARGV[1]), tonumber(ARGV[2])
local H = redis.call('HGET', AUX[3], 'hand') or '0'
local out = {}
local segments = {
  {AUX[1], H, '+inf'}, {AUX[1], '-inf', '(' .. H}, {AUX[2], H, '+inf'}, {AUX[2], '-inf', '(' .. H}
}
for _, s in ipairs(segments) do
  if #out >= n then break end
  local c = redis.call('ZCOUNT', s[1], s[2], s[3])
  if off >= c then
    off = off - c
  else
    local got = redis.call('ZRANGEBYSCORE', s[1], s[2], s[3], 'LIMIT', off, n - #out)
    off = 0
    for _, p in ipairs(got) do out[#out + 1] = p end
  end
end
return out
"""

# -- GDSF ---------------------------------------------------------------------------------
# KEYS[8] zset of priorities L + frequency x cost / size; AUX[1] string L, the priority of the
# last victim; AUX[2] a sequence; AUX[3] hash path -> member. A member is the 16-hex-digit
# sequence of its last update followed by the path, so that equal priorities go oldest update
# first (as in libCacheSim) rather than by path. Frequency is the record's hit count + 1 (the
# hook's `hits` is the count before this access).
GDSF_AUX = ("inflation", "seq", "members")


def gdsf_priority(freq: str, cost_is_size: bool) -> str:
    cost = "math.max(size, 1)" if cost_is_size else "1.0e6"
    return f"""
do
  local L = tonumber(redis.call('GET', AUX[1]) or '0')
  local pri = L + ({freq}) * {cost} / math.max(size, 1)
  local old = redis.call('HGET', AUX[3], path)
  if old then redis.call('ZREM', KEYS[8], old) end
  local member = string.format('%016x', redis.call('INCR', AUX[2])) .. path
  redis.call('ZADD', KEYS[8], string.format('%.17g', pri), member)
  redis.call('HSET', AUX[3], path, member)
end
"""


GDSF_ON_REMOVE = """
do
  local member = redis.call('HGET', AUX[3], path)
  if member then
    if reason == 'evicted' then
      local p = redis.call('ZSCORE', KEYS[8], member)
      if p and tonumber(p) > tonumber(redis.call('GET', AUX[1]) or '0') then
        redis.call('SET', AUX[1], p)
      end
    end
    redis.call('ZREM', KEYS[8], member)
    redis.call('HDEL', AUX[3], path)
  end
end
"""

GDSF_VICTIMS = """
local first = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[8], first, first + tonumber(ARGV[1]) - 1)
for i = 1, #members do members[i] = string.sub(members[i], 17) end
return members
"""

# -- 2Q ------------------------------------------------------------------------------------
# AUX[1] Ain zset (FIFO of new entries), AUX[2] Am zset (LRU of entries that came back from
# the ghost), AUX[3] Aout zset (ghost), AUX[4] hash path -> size, AUX[5] hash ghost path ->
# size, AUX[6] hash {seq, ab, mb, gb}. Ain is evicted while it holds more than a quarter of the
# bytes; the ghost keeps the newest half. Nothing moves on eviction, so the victims script is a
# merge of the two queues' heads.
TWOQ_AUX = ("ain", "am", "aout", "size", "ghostsize", "meta")

TWOQ_ON_INSERT = (
    """
do
  local in_ain = redis.call('ZSCORE', AUX[1], path)
  local in_am = redis.call('ZSCORE', AUX[2], path)
  if in_ain or in_am then
    local old = tonumber(redis.call('HGET', AUX[4], path) or '0')
    redis.call('HINCRBY', AUX[6], in_ain and 'ab' or 'mb', size - old)
    redis.call('HSET', AUX[4], path, size)
  else
"""
    + forget_in_ghost(ghost=3, sizes=5, meta=6, scoped=False)
    + """
    local seq = redis.call('HINCRBY', AUX[6], 'seq', 1)
    redis.call('ZADD', g and AUX[2] or AUX[1], seq, path)
    redis.call('HINCRBY', AUX[6], g and 'mb' or 'ab', size)
    redis.call('HSET', AUX[4], path, size)
  end
end
"""
)

TWOQ_ON_RESTORE = forget_in_ghost(ghost=3, sizes=5, meta=6)

TWOQ_ON_HIT = """
if redis.call('ZSCORE', AUX[2], path) then
  redis.call('ZADD', AUX[2], redis.call('HINCRBY', AUX[6], 'seq', 1), path)
end
"""

TWOQ_VICTIMS = (
    CURSOR
    + """
local function size_of(p) return tonumber(redis.call('HGET', AUX[4], p) or '0') end
local n, off = tonumber(ARGV[1]), tonumber(ARGV[2])
local m = redis.call('HMGET', AUX[6], 'ab', 'mb')
local ab, mb = tonumber(m[1] or '0'), tonumber(m[2] or '0')
local ac, mc = cursor(AUX[1]), cursor(AUX[2])
local out, seen = {}, 0
while #out < n do
  local t = ab + mb
  if t <= 0 then break end
  local p
  if 4 * ab > t then
    p = peek(ac)
    if p then ac.i = ac.i + 1; ab = ab - size_of(p) else ab = 0 end
  else
    p = peek(mc)
    if p then mc.i = mc.i + 1; mb = mb - size_of(p) else mb = 0 end
  end
  if p then
    seen = seen + 1
    if seen > off then out[#out + 1] = p end
  end
end
return out
"""
)

TWOQ_ON_REMOVE = (
    """
do
  local in_ain = redis.call('ZSCORE', AUX[1], path)
  local in_am = redis.call('ZSCORE', AUX[2], path)
  if in_ain or in_am then
    local psize = tonumber(redis.call('HGET', AUX[4], path) or '0')
    redis.call('ZREM', AUX[1], path)
    redis.call('ZREM', AUX[2], path)
    redis.call('HDEL', AUX[4], path)
    redis.call('HINCRBY', AUX[6], in_ain and 'ab' or 'mb', 0 - psize)
    if in_ain and reason == 'evicted' then
      -- remembered in the ghost, which keeps the newest half of the bytes held
"""
    + remember_in_ghost(ghost=3, sizes=5, meta=6, held=("ab", "mb"), share=("1", "2"))
    + """    end
  end
end
"""
)
