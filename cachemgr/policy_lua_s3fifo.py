"""The Lua of the s3fifo policies (S3-FIFO, SOSP'23), registered in policies.py.

The same conventions as policy_lua.py: a read-only `victims` script that works the eviction
process out on a copy, and the moves made when a victim is claimed. Their shared parts are in
policy_lua_parts.py.
"""

from __future__ import annotations

from cachemgr.policy_lua_parts import (
    CURSOR,
    filled,
    forget_in_ghost,
    remember_in_ghost,
    settle_steps,
    victims_of,
)

# -- S3-FIFO -------------------------------------------------------------------------------
# AUX[1] small zset, AUX[2] main zset (scored by sequence), AUX[3] ghost zset, AUX[4] hash
# path -> frequency, AUX[5] hash path -> size (as the policy counted it), AUX[6] hash ghost
# path -> size, AUX[7] hash {seq, sb, mb, gb, evicted}. Shares of the bytes held (small
# @SN@/@SD@, ghost @GN@/@GD@), the promotion threshold and the counter's cap are filled in by
# s3fifo_lua(), and compared in integers as in models.S3FIFO.
S3FIFO_AUX = ("small", "main", "ghost", "freq", "size", "ghostsize", "meta")


S3FIFO_ON_INSERT = (
    """
do
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local in_main = redis.call('ZSCORE', AUX[2], path)
  if in_small or in_main then
    -- registered again (rescanned): only its size may have changed
    local old = tonumber(redis.call('HGET', AUX[5], path) or '0')
    redis.call('HINCRBY', AUX[7], in_small and 'sb' or 'mb', size - old)
    redis.call('HSET', AUX[5], path, size)
  else
"""
    + forget_in_ghost(ghost=3, sizes=6, meta=7, scoped=False)
    + """
    -- back from the ghost: straight to main
    local seq = redis.call('HINCRBY', AUX[7], 'seq', 1)
    redis.call('ZADD', g and AUX[2] or AUX[1], seq, path)
    redis.call('HINCRBY', AUX[7], g and 'mb' or 'sb', size)
    redis.call('HSET', AUX[4], path, 0)
    redis.call('HSET', AUX[5], path, size)
  end
end
"""
)

S3FIFO_ON_HIT = """
if redis.call('HEXISTS', AUX[4], path) == 1 then redis.call('HINCRBY', AUX[4], path, 1) end
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

# The settle of S3FIFO_COMMON in steps (each moved entry gets the next sequence in main).
S3FIFO_SETTLE = settle_steps(
    meta=7,
    limit="t",
    stays="@SD@ * acc < @SN@ * lim",
    move="""for _, p in ipairs(ps) do
      redis.call('ZADD', AUX[2], redis.call('HINCRBY', AUX[7], 'seq', 1), p)
    end""",
)


S3FIFO_VICTIMS = S3FIFO_COMMON + S3FIFO_SIMULATE + victims_of("s3_simulate", meta=7)

S3FIFO_ON_REMOVE = (
    "do\n"
    + S3FIFO_COMMON
    + S3FIFO_SIMULATE
    + S3FIFO_SETTLE
    + """
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local in_main = redis.call('ZSCORE', AUX[2], path)
  if in_small or in_main then
    if reason == 'evicted' then
      if redis.call('HEXISTS', AUX[7], 'evicted') == 0 then
        -- the first eviction and nobody settled the warm-up in steps first: settle it here
        while settle_step(1000) == 1 do end
      end
      local _, moves = s3_simulate(1)
      for _, mv in ipairs(moves) do
        local p = mv[2]
        local seq = redis.call('HINCRBY', AUX[7], 'seq', 1)
        if mv[1] == 's' then
          local s = size_of(p)
          redis.call('ZREM', AUX[1], p)
          redis.call('HINCRBY', AUX[7], 'sb', 0 - s)
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
    redis.call('HINCRBY', AUX[7], in_small and 'sb' or 'mb', 0 - psize)
    if in_small and reason == 'evicted' then
      -- remembered in the ghost, which keeps the newest @GN@/@GD@ of the bytes held
"""
    + remember_in_ghost(ghost=3, sizes=6, meta=7, held=("sb", "mb"), share=("@GN@", "@GD@"))
    + """    end
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
    return filled(
        values,
        victims=S3FIFO_VICTIMS,
        on_insert=S3FIFO_ON_INSERT,
        on_hit=S3FIFO_ON_HIT,
        on_remove=S3FIFO_ON_REMOVE,
        on_restore=forget_in_ghost(ghost=3, sizes=6, meta=7),
        settle=S3FIFO_SETTLE,
    )
