"""Lua building blocks shared by the queue-based policies (S3-FIFO and its variants, 2Q):
ghosts bounded by bytes, a chunked cursor over a sorted set, warm-up settling in bounded
steps, and the victims chunk of a policy that simulates its evictions on a copy."""

from __future__ import annotations


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
    *,
    ghost: int,
    sizes: int,
    meta: int,
    held: tuple[str, str],
    share: tuple[str, str],
    value: str = "psize",
    size_of: str = "tonumber(g)",
) -> str:
    """Lua that remembers `path` (of `psize` bytes) in a byte-bounded ghost, oldest out first.

    The ghost keeps at most share[0]/share[1] of the bytes held (the sum of the two `held`
    fields of AUX[meta]); AUX[ghost] is a zset by sequence, AUX[sizes] a hash of what each
    remembers (`value`, a Lua expression; `size_of` reads the size back from it, as `g`).
    Shared by the S3-FIFO family and 2Q, as models._Ghost is.
    """
    gn, gd = share
    return f"""      local m = redis.call('HMGET', AUX[{meta}], '{held[0]}', '{held[1]}', 'gb')
      local t = tonumber(m[1] or '0') + tonumber(m[2] or '0')
      local gb = tonumber(m[3] or '0')
      if {gd} * psize <= {gn} * t then
        while {gd} * (gb + psize) > {gn} * t do
          local old = redis.call('ZRANGE', AUX[{ghost}], 0, 0)[1]
          if not old then break end
          local g = redis.call('HGET', AUX[{sizes}], old)
          if g then gb = gb - {size_of} end
          redis.call('ZREM', AUX[{ghost}], old)
          redis.call('HDEL', AUX[{sizes}], old)
        end
        redis.call('ZADD', AUX[{ghost}], redis.call('HINCRBY', AUX[{meta}], 'seq', 1), path)
        redis.call('HSET', AUX[{sizes}], path, {value})
        redis.call('HSET', AUX[{meta}], 'gb', string.format('%.0f', gb + psize))
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


def filled(values: dict[str, int], **chunks: str) -> dict[str, str]:
    """Each Lua chunk with its @MARK@ placeholders replaced by the integer parameters."""

    def fill(text: str) -> str:
        for mark, value in values.items():
            text = text.replace(mark, str(int(value)))
        return text

    return {name: fill(text) for name, text in chunks.items()}
