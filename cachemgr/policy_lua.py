"""The Lua of the sieve, s3fifo, 2q and gdsf policies (registered in policies.py).

Each mirrors a reference model in models.py decision for decision. The `victims` script is
read-only: for policies whose eviction moves entries (SIEVE's hand, S3-FIFO's promotions) it
works the process out on a copy and names the victims in order. The state change happens when
a victim is claimed (the `--@on_remove` hook with reason `evicted`): the claim performs the
moves the process makes up to its next victim, then removes the claimed entry. So a dry run
changes nothing, and claiming victims in the order given reproduces the model exactly. An entry
claimed out of order (the ones before it were pinned or changed) is removed without moving
SIEVE's hand past them; S3-FIFO still makes the moves that precede its next natural victim.
Either way the skipped entries stay at the head of the order, which is what the cleanup's
offset (cleanup._run_pass) counts on.

Hook locals: path, size, hits, now (and reason in CLAIM; `reg` only in REBUILD). AUX[i] are
the policy's keys. Numbers that go back to Redis are integers well below 2^53, or formatted
with %.17g.
"""

from __future__ import annotations

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

# -- S3-FIFO -------------------------------------------------------------------------------
# AUX[1] small zset, AUX[2] main zset (scored by sequence), AUX[3] ghost zset, AUX[4] hash
# path -> frequency, AUX[5] hash path -> size (as the policy counted it), AUX[6] hash ghost
# path -> size, AUX[7] hash {seq, sb, mb, gb, evicted}. Shares of the bytes held (small
# @SN@/@SD@, ghost @GN@/@GD@), the promotion threshold and the counter's cap are filled in by
# s3fifo_lua(), and compared in integers as in models.S3FIFO.
S3FIFO_AUX = ("small", "main", "ghost", "freq", "size", "ghostsize", "meta")

S3FIFO_ON_INSERT = """
do
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local in_main = redis.call('ZSCORE', AUX[2], path)
  if in_small or in_main then
    -- registered again (rescanned): only its size may have changed
    local old = tonumber(redis.call('HGET', AUX[5], path) or '0')
    redis.call('HINCRBY', AUX[7], in_small and 'sb' or 'mb', size - old)
    redis.call('HSET', AUX[5], path, size)
  else
    local to_main = false
    local gsize = redis.call('HGET', AUX[6], path)
    if gsize then
      redis.call('ZREM', AUX[3], path)
      redis.call('HDEL', AUX[6], path)
      redis.call('HINCRBY', AUX[7], 'gb', -tonumber(gsize))
      to_main = true
    end
    local seq = redis.call('HINCRBY', AUX[7], 'seq', 1)
    redis.call('ZADD', to_main and AUX[2] or AUX[1], seq, path)
    redis.call('HINCRBY', AUX[7], to_main and 'mb' or 'sb', size)
    redis.call('HSET', AUX[4], path, 0)
    redis.call('HSET', AUX[5], path, size)
  end
end
"""

S3FIFO_ON_HIT = """
if redis.call('HEXISTS', AUX[4], path) == 1 then redis.call('HINCRBY', AUX[4], path, 1) end
"""

# A cursor over a sorted set, read in chunks (shared by the read-only simulations).
CURSOR = """
local CHUNK = 128
local function cursor(key, start)
  return {key = key, buf = {}, i = 1, off = start or 0, done = false}
end
local function peek(c)
  if c.i > #c.buf then
    if c.done then return nil end
    c.buf = redis.call('ZRANGE', c.key, c.off, c.off + CHUNK - 1)
    c.off, c.i = c.off + #c.buf, 1
    if #c.buf < CHUNK then c.done = true end
    if #c.buf == 0 then return nil end
  end
  return c.buf[c.i]
end
"""

# S3-FIFO's helpers. Until the first eviction every new entry waits in the small queue; the first
# eviction settles the queues as if the small one had filled first: the oldest entries up to
# its share of the bytes stay, the rest move to main in order (models.S3FIFO._settle).
S3FIFO_COMMON = (
    CURSOR
    + """
local function size_of(p) return tonumber(redis.call('HGET', AUX[5], p) or '0') end
-- How many of the oldest small entries stay when the warm-up settles, and their bytes.
local function s3_settle_point(sb, mb)
  local t, acc, keep = sb + mb, 0, 0
  while true do
    local chunk = redis.call('ZRANGE', AUX[1], keep, keep + CHUNK - 1)
    if #chunk == 0 then return keep, acc end
    for _, p in ipairs(chunk) do
      if @SD@ * acc >= @SN@ * t then return keep, acc end
      acc = acc + size_of(p)
      keep = keep + 1
    end
  end
end
"""
)

# Works the eviction process out on a copy: returns up to n victims, and the moves made before
# the first one ({'m', path, freq} reinsert in main; {'s', path} small -> main).
S3FIFO_SIMULATE = """
local function s3_simulate(n)
  local m = redis.call('HMGET', AUX[7], 'sb', 'mb', 'evicted')
  local sb, mb = tonumber(m[1] or '0'), tonumber(m[2] or '0')
  local victims, moves = {}, {}
  local sc, mc, mc2 = cursor(AUX[1]), cursor(AUX[2]), nil
  local keep = nil
  if not m[3] then
    -- the warm-up would settle first: small keeps its oldest share, main gets the rest
    local acc
    keep, acc = s3_settle_point(sb, mb)
    mb = mb + sb - acc
    sb = acc
    mc2 = cursor(AUX[1], keep)
  end
  local taken_small = 0
  local tail, ti, ofreq = {}, 1, {}
  local function next_main()
    local p = peek(mc)
    if p then mc.i = mc.i + 1 return p end
    if mc2 then
      p = peek(mc2)
      if p then mc2.i = mc2.i + 1 return p end
    end
    p = tail[ti]
    if p then ti = ti + 1 end
    return p
  end
  local function freq_of(p)
    return ofreq[p] or tonumber(redis.call('HGET', AUX[4], p) or '0')
  end
  while #victims < n do
    local t = sb + mb
    if t <= 0 then break end
    if sb == 0 or @SD@ * sb < @SN@ * t then
      local found = false
      while true do
        local p = next_main()
        if not p then break end
        local f = freq_of(p)
        if f >= 1 then
          ofreq[p] = math.min(f, @CAP@) - 1
          tail[#tail + 1] = p
          if #victims == 0 then moves[#moves + 1] = {'m', p, ofreq[p]} end
        else
          victims[#victims + 1] = p
          mb = mb - size_of(p)
          found = true
          break
        end
      end
      -- main ran dry though counted: the books are out of step, so count it empty and let
      -- the small queue be offered (the model never gets here)
      if not found then mb = 0 end
    else
      while sb > 0 do
        local p = nil
        if not keep or taken_small < keep then p = peek(sc) end
        if not p then sb = 0 break end
        sc.i = sc.i + 1
        taken_small = taken_small + 1
        local s = size_of(p)
        sb = sb - s
        if freq_of(p) >= @PROMOTE@ then
          mb = mb + s
          ofreq[p] = 0
          tail[#tail + 1] = p
          if #victims == 0 then moves[#moves + 1] = {'s', p} end
        else
          victims[#victims + 1] = p
          break
        end
      end
    end
  end
  return victims, moves
end
"""

S3FIFO_VICTIMS = (
    S3FIFO_COMMON
    + S3FIFO_SIMULATE
    + """
local n, off = tonumber(ARGV[1]), tonumber(ARGV[2])
local victims = s3_simulate(n + off)
local out = {}
for i = off + 1, #victims do out[#out + 1] = victims[i] end
return out
"""
)

S3FIFO_ON_REMOVE = (
    "do\n"
    + S3FIFO_COMMON
    + S3FIFO_SIMULATE
    + """
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local in_main = redis.call('ZSCORE', AUX[2], path)
  if in_small or in_main then
    if reason == 'evicted' then
      local m = redis.call('HMGET', AUX[7], 'sb', 'mb', 'evicted')
      if not m[3] then
        -- the first eviction: settle the warm-up (once; each entry moves at most once)
        local sb, mb = tonumber(m[1] or '0'), tonumber(m[2] or '0')
        local keep, acc = s3_settle_point(sb, mb)
        while true do
          local rest = redis.call('ZRANGE', AUX[1], keep, keep + CHUNK - 1)
          if #rest == 0 then break end
          for _, p in ipairs(rest) do
            redis.call('ZADD', AUX[2], redis.call('HINCRBY', AUX[7], 'seq', 1), p)
          end
          redis.call('ZREMRANGEBYRANK', AUX[1], keep, keep + #rest - 1)
        end
        redis.call('HSET', AUX[7], 'sb', acc, 'mb', mb + sb - acc, 'evicted', 1)
      end
      local _, moves = s3_simulate(1)
      for _, mv in ipairs(moves) do
        local p = mv[2]
        local seq = redis.call('HINCRBY', AUX[7], 'seq', 1)
        if mv[1] == 's' then
          local s = size_of(p)
          redis.call('ZREM', AUX[1], p)
          redis.call('HINCRBY', AUX[7], 'sb', -s)
          redis.call('HINCRBY', AUX[7], 'mb', s)
          redis.call('HSET', AUX[4], p, 0)
        else
          redis.call('HSET', AUX[4], p, mv[3])
        end
        redis.call('ZADD', AUX[2], seq, p)
      end
      in_small = redis.call('ZSCORE', AUX[1], path)
    end
    local psize = size_of(path)
    redis.call('ZREM', AUX[1], path)
    redis.call('ZREM', AUX[2], path)
    redis.call('HDEL', AUX[4], path)
    redis.call('HDEL', AUX[5], path)
    redis.call('HINCRBY', AUX[7], in_small and 'sb' or 'mb', -psize)
    if in_small and reason == 'evicted' then
      -- remembered in the ghost, which keeps the newest @GN@/@GD@ of the bytes held
      local m = redis.call('HMGET', AUX[7], 'sb', 'mb', 'gb')
      local t = tonumber(m[1] or '0') + tonumber(m[2] or '0')
      local gb = tonumber(m[3] or '0')
      if @GD@ * psize <= @GN@ * t then
        while @GD@ * (gb + psize) > @GN@ * t do
          local old = redis.call('ZRANGE', AUX[3], 0, 0)[1]
          if not old then break end
          gb = gb - tonumber(redis.call('HGET', AUX[6], old) or '0')
          redis.call('ZREM', AUX[3], old)
          redis.call('HDEL', AUX[6], old)
        end
        redis.call('ZADD', AUX[3], redis.call('HINCRBY', AUX[7], 'seq', 1), path)
        redis.call('HSET', AUX[6], path, psize)
        redis.call('HSET', AUX[7], 'gb', gb + psize)
      end
    end
  end
end
"""
)


def s3fifo_lua(
    small: tuple[int, int] = (1, 10),
    ghost: tuple[int, int] = (9, 10),
    promote_at: int = 2,
    freq_cap: int = 3,
) -> dict[str, str]:
    """The S3-FIFO hooks and victims script with these parameters (see models.S3FIFO)."""
    values = {
        "@SN@": small[0],
        "@SD@": small[1],
        "@GN@": ghost[0],
        "@GD@": ghost[1],
        "@PROMOTE@": promote_at,
        "@CAP@": freq_cap,
    }

    def fill(text: str) -> str:
        for mark, value in values.items():
            text = text.replace(mark, str(int(value)))
        return text

    return {
        "victims": fill(S3FIFO_VICTIMS),
        "on_insert": fill(S3FIFO_ON_INSERT),
        "on_hit": S3FIFO_ON_HIT,
        "on_remove": fill(S3FIFO_ON_REMOVE),
    }


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

TWOQ_ON_INSERT = """
do
  local in_ain = redis.call('ZSCORE', AUX[1], path)
  local in_am = redis.call('ZSCORE', AUX[2], path)
  if in_ain or in_am then
    local old = tonumber(redis.call('HGET', AUX[4], path) or '0')
    redis.call('HINCRBY', AUX[6], in_ain and 'ab' or 'mb', size - old)
    redis.call('HSET', AUX[4], path, size)
  else
    local gsize = redis.call('HGET', AUX[5], path)
    if gsize then
      redis.call('ZREM', AUX[3], path)
      redis.call('HDEL', AUX[5], path)
      redis.call('HINCRBY', AUX[6], 'gb', -tonumber(gsize))
    end
    local seq = redis.call('HINCRBY', AUX[6], 'seq', 1)
    redis.call('ZADD', gsize and AUX[2] or AUX[1], seq, path)
    redis.call('HINCRBY', AUX[6], gsize and 'mb' or 'ab', size)
    redis.call('HSET', AUX[4], path, size)
  end
end
"""

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

TWOQ_ON_REMOVE = """
do
  local in_ain = redis.call('ZSCORE', AUX[1], path)
  local in_am = redis.call('ZSCORE', AUX[2], path)
  if in_ain or in_am then
    local psize = tonumber(redis.call('HGET', AUX[4], path) or '0')
    redis.call('ZREM', AUX[1], path)
    redis.call('ZREM', AUX[2], path)
    redis.call('HDEL', AUX[4], path)
    redis.call('HINCRBY', AUX[6], in_ain and 'ab' or 'mb', -psize)
    if in_ain and reason == 'evicted' then
      -- remembered in the ghost, which keeps the newest half of the bytes held
      local m = redis.call('HMGET', AUX[6], 'ab', 'mb', 'gb')
      local t = tonumber(m[1] or '0') + tonumber(m[2] or '0')
      local gb = tonumber(m[3] or '0')
      if 2 * psize <= t then
        while 2 * (gb + psize) > t do
          local old = redis.call('ZRANGE', AUX[3], 0, 0)[1]
          if not old then break end
          gb = gb - tonumber(redis.call('HGET', AUX[5], old) or '0')
          redis.call('ZREM', AUX[3], old)
          redis.call('HDEL', AUX[5], old)
        end
        redis.call('ZADD', AUX[3], redis.call('HINCRBY', AUX[6], 'seq', 1), path)
        redis.call('HSET', AUX[5], path, psize)
        redis.call('HSET', AUX[6], 'gb', gb + psize)
      end
    end
  end
end
"""
