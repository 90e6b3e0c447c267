"""The Lua of the s3fifo-a policy (models_s3fifo.S3FIFOAdaptive), registered in policies.py.

The conventions of policy_lua.py: a read-only `victims` script works the eviction process out
on a copy, and claiming a victim makes the moves the process makes up to its next victim
(promotions from small to main, the clamps of T), then removes the claimed entry. Main never
reinserts, so its victims are the lowest scores; the only walk is small's promote-and-continue,
each entry passed paid for by the hit that promotes it. Scores P = L + min(freq, cap) x
2^24 // isqrt(isqrt(size)) are integers: L rises by at most cap x 2^24 = 2^28 per turnover of
main, so P stays exact in a zset score (< 2^53) for millions of turnovers. Numbers that go
back to Redis are formatted with %.0f: Lua would print a big one as %.14g.
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

# AUX[1] small zset (by sequence), AUX[2] main zset (by P; a member is the 16-hex-digit sequence
# of its last scoring followed by the path, so equal scores go oldest first, as the model's
# heap breaks ties), AUX[3] ghost zset (by sequence), AUX[4] hash path -> frequency, AUX[5] hash
# path -> size (as the policy counted it), AUX[6] hash ghost path -> 's' or 'm' (the queue it
# was evicted from) followed by its size, AUX[7] hash path -> its member in main, AUX[8] hash
# {seq, sb, mb, gb, evicted, T, L}; T and L exist once the first eviction has settled.
S3FIFO_A_AUX = ("small", "main", "ghost", "freq", "size", "ghostinfo", "members", "meta")

# models_s3fifo.size_weight and the score; isqrt corrected after math.sqrt, which may round.
SCORE = """
local function s3a_isqrt(n)
  local r = math.floor(math.sqrt(n))
  while r * r > n do r = r - 1 end
  while (r + 1) * (r + 1) <= n do r = r + 1 end
  return r
end
local function s3a_score(L, f, size)
  local w = math.floor(16777216 / math.max(1, s3a_isqrt(s3a_isqrt(math.max(size, 1)))))
  return L + math.min(f, @CAP@) * w
end
local function s3a_num(x) return string.format('%.0f', x + 0) end  -- + 0: no '-0'
local function s3a_member(seq, p) return string.format('%016x', seq) .. p end
"""

# A ghost's value is the queue it was evicted from ('s' or 'm') and its size.
GHOST_SIZE = "tonumber(string.sub(g, 2))"

S3FIFO_A_ON_INSERT = (
    "do\n"
    + SCORE
    + """
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local in_main = redis.call('HGET', AUX[7], path)
  if in_small or in_main then
    -- registered again (rescanned): only its size may have changed; its score stays
    local old = tonumber(redis.call('HGET', AUX[5], path) or '0')
    redis.call('HINCRBY', AUX[8], in_small and 'sb' or 'mb', s3a_num(size - old))
    redis.call('HSET', AUX[5], path, s3a_num(size))
  else
    -- The record's hit count: 0 when new, the entry's history when carried over or restored.
    local f = hits
    local seq = redis.call('HINCRBY', AUX[8], 'seq', 1)
"""
    + forget_in_ghost(ghost=3, sizes=6, meta=8, size_of=GHOST_SIZE, scoped=False)
    + """
    if g then
      -- evicted not long ago: T learns which queue was too short, and the entry skips small
      if redis.call('HEXISTS', AUX[8], 'T') == 1 then
        local step = (string.sub(g, 1, 1) == 's') and size or -@STEP@ * size
        redis.call('HINCRBY', AUX[8], 'T', s3a_num(step))
      end
      f = f + 1
      local L = tonumber(redis.call('HGET', AUX[8], 'L') or '0')
      local member = s3a_member(seq, path)
      redis.call('ZADD', AUX[2], s3a_num(s3a_score(L, f, size)), member)
      redis.call('HSET', AUX[7], path, member)
      redis.call('HINCRBY', AUX[8], 'mb', s3a_num(size))
    else
      redis.call('ZADD', AUX[1], seq, path)
      redis.call('HINCRBY', AUX[8], 'sb', s3a_num(size))
    end
    redis.call('HSET', AUX[4], path, f)
    redis.call('HSET', AUX[5], path, s3a_num(size))
  end
end
"""
)

# Runs in ACCESS_MANY's loop too, so the helpers are made only for an entry in main.
S3FIFO_A_ON_HIT = (
    """
if redis.call('HEXISTS', AUX[4], path) == 1 then
  local f = redis.call('HINCRBY', AUX[4], path, 1)
  local old = redis.call('HGET', AUX[7], path)
  if old then
    -- in main: scored again from the current L, the newest of its score
"""
    + SCORE
    + """
    local L = tonumber(redis.call('HGET', AUX[8], 'L') or '0')
    local member = s3a_member(redis.call('HINCRBY', AUX[8], 'seq', 1), path)
    local s = tonumber(redis.call('HGET', AUX[5], path) or '0')
    redis.call('ZREM', AUX[2], old)
    redis.call('ZADD', AUX[2], s3a_num(s3a_score(L, f, s)), member)
    redis.call('HSET', AUX[7], path, member)
  end
end
"""
)

S3FIFO_A_COMMON = (
    CURSOR
    + SCORE
    + """
local function size_of(p) return tonumber(redis.call('HGET', AUX[5], p) or '0') end
local function freq_of(p) return tonumber(redis.call('HGET', AUX[4], p) or '0') end
-- A binary heap of {P, seq, path}, lowest first under hless (or under `less` if given).
local function hless(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local function hdown(h, i, less)
  local n = #h
  while true do
    local l, r, s = 2 * i, 2 * i + 1, i
    if l <= n and less(h[l], h[s]) then s = l end
    if r <= n and less(h[r], h[s]) then s = r end
    if s == i then return end
    h[i], h[s] = h[s], h[i]
    i = s
  end
end
local function hpush(h, x, less)
  less = less or hless
  local i = #h + 1
  h[i] = x
  while i > 1 do
    local j = math.floor(i / 2)
    if not less(h[i], h[j]) then break end
    h[i], h[j] = h[j], h[i]
    i = j
  end
end
local function hpop(h)
  local top = h[1]
  h[1] = h[#h]
  h[#h] = nil
  if #h > 1 then hdown(h, 1, hless) end
  return top
end
-- Main's entries in order, with their scores, read in chunks.
local function main_cursor() return {buf = {}, i = 1, off = 0, done = false} end
local function main_peek(c)
  if c.i > #c.buf then
    if c.done then return nil end
    c.buf = redis.call('ZRANGE', AUX[2], c.off, c.off + CHUNK - 1, 'WITHSCORES')
    c.off, c.i = c.off + #c.buf / 2, 1
    if #c.buf < 2 * CHUNK then c.done = true end
    if #c.buf == 0 then return nil end
  end
  return c.buf[c.i], tonumber(c.buf[c.i + 1])
end
-- The first eviction ends the warm-up (S3FIFOAdaptive._settle): T starts at @IN@/@ID@ of the
-- bytes held, small keeps its oldest entries until they reach T, and `moved` is called on the
-- rest in order, a chunk at a time (paths, sizes, frequencies), until it returns true. Returns
-- T, how many stay and their bytes.
local function s3a_settle(sb, mb, moved)
  local T = math.floor(@IN@ * (sb + mb) / @ID@)
  local acc, keep, off = 0, 0, 0
  while true do
    local chunk = redis.call('ZRANGE', AUX[1], off, off + CHUNK - 1)
    if #chunk == 0 then break end
    off = off + #chunk
    local sizes = redis.call('HMGET', AUX[5], unpack(chunk))
    local rest, rsizes = {}, {}
    for i, p in ipairs(chunk) do
      local s = tonumber(sizes[i] or '0')
      if acc >= T then
        rest[#rest + 1], rsizes[#rsizes + 1] = p, s
      else
        acc = acc + s
        keep = keep + 1
      end
    end
    if #rest > 0 then
      local f = redis.call('HMGET', AUX[4], unpack(rest))
      for i = 1, #f do f[i] = tonumber(f[i] or '0') end
      if moved(rest, rsizes, f) then break end
    end
  end
  return T, keep, acc
end
"""
)

# Works the eviction process out on a copy. Returns up to n victims, the promotions made before
# the first one ({path, P}, in order) and T as the first victim's step left it.
S3FIFO_A_SIMULATE = """
local function s3a_simulate(n)
  local m = redis.call('HMGET', AUX[8], 'sb', 'mb', 'evicted', 'T', 'L')
  local sb, mb = tonumber(m[1] or '0'), tonumber(m[2] or '0')
  local T, L = tonumber(m[4] or '0'), tonumber(m[5] or '0')
  -- entries moved to main here would get newer sequences than any in the zset: ties go to it
  local heap, vseq = {}, 0
  local keep = nil
  if not m[3] then
    -- Main gives at most n victims, so of the entries the settle moves only the n lowest can
    -- be reached: keep those (a max-heap by (P, seq), its top the first to drop), then sorted
    -- they make the heap to which promotions are added. No score is below L, and an entry
    -- without hits scores L: once the n kept are all such, no later entry can pass them.
    local acc
    local function more(a, b) return hless(b, a) end
    T, keep, acc = s3a_settle(sb, mb, function(ps, sizes, freqs)
      for i, p in ipairs(ps) do
        if #heap >= n and (n == 0 or heap[1][1] <= L) then return true end
        vseq = vseq + 1
        local e = {s3a_score(L, freqs[i], sizes[i]), vseq, p}
        if #heap < n then
          hpush(heap, e, more)
        elseif hless(e, heap[1]) then
          heap[1] = e
          hdown(heap, 1, more)
        end
      end
    end)
    table.sort(heap, hless)
    mb = mb + sb - acc
    sb = acc
  end
  local sc, mc, taken = cursor(AUX[1]), main_cursor(), 0
  local victims, moves, first_T = {}, {}, nil
  while #victims < n do
    local t = sb + mb
    if t <= 0 then break end
    T = math.max(math.floor(@LN@ * t / @LD@), math.min(T, math.floor(@HN@ * t / @HD@)))
    if sb == 0 or (sb <= T and mb > 0) then
      local p, P = main_peek(mc)
      if p and (#heap == 0 or P <= heap[1][1]) then
        mc.i = mc.i + 2
        p = string.sub(p, 17)
      elseif #heap > 0 then
        local e = hpop(heap)
        p, P = e[3], e[1]
      end
      if p then
        victims[#victims + 1] = p
        if P > L then L = P end
        mb = mb - size_of(p)
      else
        -- main ran dry though counted: the books are out of step, so count it empty and let
        -- the small queue be offered (the model never gets here)
        mb = 0
      end
    else
      local p = nil
      if not keep or taken < keep then p = peek(sc) end
      if p then
        sc.i, taken = sc.i + 1, taken + 1
        local s = size_of(p)
        sb = sb - s
        local f = freq_of(p)
        if f >= 1 then
          mb, vseq = mb + s, vseq + 1
          local P = s3a_score(L, f, s)
          hpush(heap, {P, vseq, p})
          if #victims == 0 then moves[#moves + 1] = {p, P} end
        else
          victims[#victims + 1] = p
        end
      else
        sb = 0
      end
    end
    if #victims == 1 and not first_T then first_T = T end
  end
  return victims, moves, first_T
end
"""

S3FIFO_A_VICTIMS = S3FIFO_A_COMMON + S3FIFO_A_SIMULATE + victims_of("s3a_simulate", meta=8)

# s3a_settle in steps: T starts at @IN@/@ID@ of the bytes held; the moved entries are scored
# into main from L and their hits, each with the next sequence. Needs SCORE.
S3FIFO_A_SETTLE_STEPS = settle_steps(
    meta=8,
    limit="math.floor(@IN@ * t / @ID@)",
    stays="acc < lim",
    move="""local L = tonumber(redis.call('HGET', AUX[8], 'L') or '0')
    local f = redis.call('HMGET', AUX[4], unpack(ps))
    local seq = redis.call('HINCRBY', AUX[8], 'seq', #ps) - #ps
    local scored, members = {}, {}
    for i, p in ipairs(ps) do
      local mp = s3a_member(seq + i, p)
      scored[2 * i - 1] = s3a_num(s3a_score(L, tonumber(f[i] or '0'), sizes[i]))
      scored[2 * i], members[2 * i - 1], members[2 * i] = mp, p, mp
    end
    redis.call('ZADD', AUX[2], unpack(scored))
    redis.call('HSET', AUX[7], unpack(members))""",
    finish=", 'T', settle_num(lim)",
)

S3FIFO_A_ON_REMOVE = (
    "do\n"
    + S3FIFO_A_COMMON
    + S3FIFO_A_SIMULATE
    + S3FIFO_A_SETTLE_STEPS
    + """
  local in_small = redis.call('ZSCORE', AUX[1], path)
  local member = redis.call('HGET', AUX[7], path)
  if in_small or member then
    if reason == 'evicted' then
      if redis.call('HEXISTS', AUX[8], 'evicted') == 0 then
        -- the first eviction and nobody settled the warm-up in steps first: settle it here
        while settle_step(1000) == 1 do end
      end
      local _, moves, T = s3a_simulate(1)
      for _, mv in ipairs(moves) do
        local p, s = mv[1], size_of(mv[1])
        local mp = s3a_member(redis.call('HINCRBY', AUX[8], 'seq', 1), p)
        redis.call('ZREM', AUX[1], p)
        redis.call('ZADD', AUX[2], s3a_num(mv[2]), mp)
        redis.call('HSET', AUX[7], p, mp)
        redis.call('HINCRBY', AUX[8], 'sb', s3a_num(-s))
        redis.call('HINCRBY', AUX[8], 'mb', s3a_num(s))
      end
      if T then redis.call('HSET', AUX[8], 'T', s3a_num(T)) end
      -- claimed out of order, the entry itself may have been promoted on the way
      member = redis.call('HGET', AUX[7], path)
    end
    local psize = size_of(path)
    if member then
      if reason == 'evicted' then
        -- L is the highest score evicted from main: newer scores start above the old ones
        local P = tonumber(redis.call('ZSCORE', AUX[2], member) or '0')
        if P > tonumber(redis.call('HGET', AUX[8], 'L') or '0') then
          redis.call('HSET', AUX[8], 'L', s3a_num(P))
        end
      end
      redis.call('ZREM', AUX[2], member)
      redis.call('HDEL', AUX[7], path)
    else
      redis.call('ZREM', AUX[1], path)
    end
    redis.call('HDEL', AUX[4], path)
    redis.call('HDEL', AUX[5], path)
    redis.call('HINCRBY', AUX[8], member and 'mb' or 'sb', s3a_num(-psize))
    if reason == 'evicted' then
      -- remembered, with its queue, in the ghost, which keeps the newest @GN@/@GD@ of the
      -- bytes held (a key bigger than that is not remembered)
"""
    + remember_in_ghost(
        ghost=3,
        sizes=6,
        meta=8,
        held=("sb", "mb"),
        share=("@GN@", "@GD@"),
        value="(member and 'm' or 's') .. s3a_num(psize)",
        size_of=GHOST_SIZE,
    )
    + """
    end
  end
end
"""
)


def s3fifo_a_lua(
    init: tuple[int, int] = (1, 10),
    lo: tuple[int, int] = (1, 20),
    hi: tuple[int, int] = (1, 4),
    ghost: tuple[int, int] = (2, 1),
    step_main: int = 4,
    freq_cap: int = 15,
) -> dict[str, str]:
    """The s3fifo-a hooks and victims script with these parameters (the defaults are
    S3FIFOAdaptive's: init_share, lo_share, hi_share, ghost_share, step_main, freq_cap)."""
    values = {
        "@IN@": init[0],
        "@ID@": init[1],
        "@LN@": lo[0],
        "@LD@": lo[1],
        "@HN@": hi[0],
        "@HD@": hi[1],
        "@GN@": ghost[0],
        "@GD@": ghost[1],
        "@STEP@": step_main,
        "@CAP@": freq_cap,
    }
    return filled(
        values,
        victims=S3FIFO_A_VICTIMS,
        on_insert=S3FIFO_A_ON_INSERT,
        on_hit=S3FIFO_A_ON_HIT,
        on_remove=S3FIFO_A_ON_REMOVE,
        on_restore=forget_in_ghost(ghost=3, sizes=6, meta=8, size_of=GHOST_SIZE),
        settle=SCORE + S3FIFO_A_SETTLE_STEPS,
    )
