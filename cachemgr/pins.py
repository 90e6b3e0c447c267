"""Pins: leases that keep a directory, and the tree around it, from eviction and expiry.

A pin names a path (tracked or about to be) with a lease expiry in `cache:pins`; the same path
is in `cache:pins:paths`, ordered by name, so that the pins inside a directory are one range.
Holders renew their leases; the cleanup drops lapsed ones. The claim (scripts.CLAIM) refuses
a directory while a live lease names it, a directory above it or one inside it.
"""

from __future__ import annotations

# Put a lease on a directory (tracked or about to be) until ARGV[2]; 0 removes it.
# KEYS[1] cache:pins  KEYS[2] cache:pins:paths  ARGV[1] path  ARGV[2] lease expiry or 0
PIN = """
if tonumber(ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
-- GT: of two holders' leases on one directory the later one stands
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
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

# Lua for CLAIM: is `path` protected at `now`? KEYS[5] cache:pins:paths  KEYS[6] cache:pins
PINNED_AROUND = """
-- A live lease on the path, on a directory above it or on one inside it protects it: a pin
-- may precede its directory, and a directory may be registered above a pinned one later.
local function pinned_around(path, now)
  local function live(p)
    local lease = redis.call('ZSCORE', KEYS[6], p)
    return lease and tonumber(lease) > now
  end
  if live(path) then return true end
  local i = string.find(path, '/', 1, true)
  while i do
    if live(string.sub(path, 1, i - 1)) then return true end
    i = string.find(path, '/', i + 1, true)
  end
  -- '0' follows '/': the range holds exactly the paths that start with path .. '/'
  for _, p in ipairs(redis.call('ZRANGEBYLEX', KEYS[5], '[' .. path .. '/', '(' .. path .. '0')) do
    if live(p) then return true end
  end
  return false
end
"""
