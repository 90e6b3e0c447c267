"""The Lua of the s3fifo policies (S3-FIFO, SOSP'23), registered in policies.py.

The same conventions as policy_lua.py: a read-only `victims` script that works the eviction
process out on a copy, and the moves made when a victim is claimed. CURSOR is shared with 2Q.
"""

from __future__ import annotations

# -- S3-FIFO -------------------------------------------------------------------------------
# AUX[1] small zset, AUX[2] main zset (scored by sequence), AUX[3] ghost zset, AUX[4] hash
# path -> frequency, AUX[5] hash path -> size (as the policy counted it), AUX[6] hash ghost
# path -> size, AUX[7] hash {seq, sb, mb, gb, evicted}. Shares of the bytes held (small
# @SN@/@SD@, ghost @GN@/@GD@), the promotion threshold and the counter's cap are filled in by
# s3fifo_lua(), and compared in integers as in models.S3FIFO.
S3FIFO_AUX = ("small", "main", "ghost", "freq", "size", "ghostsize", "meta")


def forget_in_ghost(
    *, ghost: int, sizes: int, meta: int, size_of: str = "tonumber(g)", scoped: bool = True
) -> str:
    """Lua that forgets `path` in the ghost (its bytes off the meta's `gb`), if it is there.

    An insert hook runs it `scoped=False` and goes on with the ghost's value in the local `g`
    (nil when `path` was not there): a return from the ghost is a hit on an evicted entry. A
    restore (the eviction's deletion failed) puts back the victim itself: it is no return, and
    is only forgotten. `size_of` reads the size from `g`."""
    body = f"""local g = redis.call('HGET', AUX[{sizes}], path)
if g then
  redis.call('ZREM', AUX[{ghost}], path)
  redis.call('HDEL', AUX[{sizes}], path)
  redis.call('HINCRBY', AUX[{meta}], 'gb', string.format('%.0f', 0 - {size_of}))
end
"""
    return f"do\n{body}end\n" if scoped else body


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


def remember_in_ghost(
    *, ghost: int, sizes: int, meta: int, held: tuple[str, str], share: tuple[str, str]
) -> str:
    """Lua that remembers `path` (of `psize` bytes) in a byte-bounded ghost, oldest out first.

    The ghost keeps at most share[0]/share[1] of the bytes held (the sum of the two `held`
    fields of AUX[meta]); AUX[ghost] is a zset by sequence, AUX[sizes] a hash of sizes.
    Shared by S3-FIFO and 2Q, as models._Ghost is.
    """
    gn, gd = share
    return f"""      local m = redis.call('HMGET', AUX[{meta}], '{held[0]}', '{held[1]}', 'gb')
      local t = tonumber(m[1] or '0') + tonumber(m[2] or '0')
      local gb = tonumber(m[3] or '0')
      if {gd} * psize <= {gn} * t then
        while {gd} * (gb + psize) > {gn} * t do
          local old = redis.call('ZRANGE', AUX[{ghost}], 0, 0)[1]
          if not old then break end
          gb = gb - tonumber(redis.call('HGET', AUX[{sizes}], old) or '0')
          redis.call('ZREM', AUX[{ghost}], old)
          redis.call('HDEL', AUX[{sizes}], old)
        end
        redis.call('ZADD', AUX[{ghost}], redis.call('HINCRBY', AUX[{meta}], 'seq', 1), path)
        redis.call('HSET', AUX[{sizes}], path, psize)
        redis.call('HSET', AUX[{meta}], 'gb', gb + psize)
      end
"""


def settle_steps(*, meta: int, limit: str, stays: str, move: str, finish: str = "") -> str:
    """Lua `settle_step(budget)`: the warm-up settle (see S3FIFO_COMMON) in steps of at most
    `budget` entries, so that no call holds Redis for long (one call at 10^6 entries held it
    for seconds). Returns 1 while work is left, 2 from the step that finishes, 0 when there
    was nothing to do.

    The first step freezes the settle as of now: the newest small entry (`st_to`; entries
    registered later stay small) and `limit`, a Lua expression of the bytes held `t`. Steps
    then walk small oldest first while `stays` (of `acc`, the bytes kept so far, and `limit`)
    holds, and move the rest, a chunk at a time, by `move` (a Lua block given `ps` and `sizes`,
    which adds them to main); the queues' byte counts follow each chunk. The last step sets
    `evicted` and the fields of `finish` (Lua HSET arguments, `lim` in scope). AUX[1] is the
    small queue, AUX[5] the sizes, AUX[meta] the policy's counters.
    """
    return f"""
local function settle_num(x) return string.format('%.0f', x + 0) end  -- + 0: no '-0'
local ST = {{'st_to', 'st_limit', 'st_acc', 'st_at', 'st_from'}}
local function settle_step(budget)
  -- at most 1000 a call: Lua's unpack takes no more than about 8000 values
  budget = math.max(1, math.min(tonumber(budget) or 1, 1000))
  local M = AUX[{meta}]
  local m = redis.call('HMGET', M, 'evicted', 'st_to', 'st_limit', 'st_acc', 'st_at', 'st_from',
    'sb', 'mb')
  if m[1] then
    -- settled; a settle state left beside it (an older cachemgr settled in one go) is stale
    if m[2] then redis.call('HDEL', M, unpack(ST)) end
    return 0
  end
  local to, lim, acc, at, from = m[2], tonumber(m[3] or '0'), tonumber(m[4] or '0'), m[5], m[6]
  if not to then
    to = redis.call('ZRANGE', AUX[1], -1, -1, 'WITHSCORES')[2] or '0'
    local t = tonumber(m[7] or '0') + tonumber(m[8] or '0')
    lim, acc, at = {limit}, 0, ''
    redis.call('HSET', M, 'st_to', to, 'st_limit', settle_num(lim), 'st_acc', 0, 'st_at', '')
  end
  if not from then
    -- walk: the oldest entries stay while they hold less than the limit
    local lo = (at == '') and '-inf' or ('(' .. at)
    local chunk = redis.call('ZRANGEBYSCORE', AUX[1], lo, to, 'WITHSCORES', 'LIMIT', 0, budget)
    local n = #chunk / 2
    if n > 0 then
      local ps = {{}}
      for i = 1, n do ps[i] = chunk[2 * i - 1] end
      local sizes = redis.call('HMGET', AUX[5], unpack(ps))
      for i = 1, n do
        if not ({stays}) then from = at break end
        acc, at = acc + tonumber(sizes[i] or '0'), chunk[2 * i]
      end
    end
    if not from and n < budget then from = at end
    if from then
      redis.call('HSET', M, 'st_from', from)
    else
      redis.call('HSET', M, 'st_acc', settle_num(acc), 'st_at', at)
    end
    return 1
  end
  -- move: the rest, oldest first, to main
  local lo = (from == '') and '-inf' or ('(' .. from)
  local ps = redis.call('ZRANGEBYSCORE', AUX[1], lo, to, 'LIMIT', 0, budget)
  if #ps > 0 then
    local sizes = redis.call('HMGET', AUX[5], unpack(ps))
    local moved = 0
    for i = 1, #ps do
      sizes[i] = tonumber(sizes[i] or '0')
      moved = moved + sizes[i]
    end
    {move}
    redis.call('ZREM', AUX[1], unpack(ps))
    redis.call('HINCRBY', M, 'sb', settle_num(-moved))
    redis.call('HINCRBY', M, 'mb', settle_num(moved))
  end
  if #ps < budget then
    redis.call('HSET', M, 'evicted', 1{finish})
    redis.call('HDEL', M, unpack(ST))
    return 2
  end
  return 1
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

# The settle of S3FIFO_COMMON in steps (each moved entry gets the next sequence in main).
S3FIFO_SETTLE = settle_steps(
    meta=7,
    limit="t",
    stays="@SD@ * acc < @SN@ * lim",
    move="""for _, p in ipairs(ps) do
      redis.call('ZADD', AUX[2], redis.call('HINCRBY', AUX[7], 'seq', 1), p)
    end""",
)


def victims_of(simulate: str, meta: int) -> str:
    """The victims chunk of a policy whose Lua function `simulate(n)` names its next n victims
    without moving anything: ARGV[1] how many, ARGV[2] how many to skip. While a warm-up settle
    is half done (AUX[meta] has `st_to` and no `evicted`) it raises SETTLING: Store.victims
    finishes the settle in bounded steps and asks again."""
    return f"""
do
  local st = redis.call('HMGET', AUX[{meta}], 'st_to', 'evicted')
  if st[1] and not st[2] then
    error({{err = 'SETTLING the warm-up settle is half done: run the settle steps first'}})
  end
end
local n, off = tonumber(ARGV[1]), tonumber(ARGV[2])
local victims = {simulate}(n + off)
local out = {{}}
for i = off + 1, #victims do out[#out + 1] = victims[i] end
return out
"""


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


def filled(values: dict[str, int], **chunks: str) -> dict[str, str]:
    """Each Lua chunk with its @MARK@ placeholders replaced by the integer parameters."""

    def fill(text: str) -> str:
        for mark, value in values.items():
            text = text.replace(mark, str(int(value)))
        return text

    return {name: fill(text) for name, text in chunks.items()}
