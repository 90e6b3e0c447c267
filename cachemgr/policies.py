"""Eviction policies: one registry maps a policy name to its behaviour.

A policy is Lua spliced into the core scripts (scripts.py) plus a script that names the next
victims. The hooks see the locals `path`, `size`, `now`, `hits` and `reg`. The core keeps
`cache:lru` for every policy (the seed's key, and the expiry index), so `lru` needs no hook.

Switching policy on a running cache rebuilds the new policy's structures from the records:
`fifo` orders by registration time, `lfu` by hit count then last access, `lru` by last access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachemgr.scripts import COMMON_KEYS, PRELUDE, compose


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    # Lua returning up to ARGV[1] paths, best victim first, skipping the first ARGV[2].
    victims: str
    on_insert: str = ""
    on_hit: str = ""
    on_remove: str = ""
    aux: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hooks(self) -> dict[str, str]:
        return {"on_insert": self.on_insert, "on_hit": self.on_hit, "on_remove": self.on_remove}

    def script(self, template: str) -> str:
        return compose(template, self.hooks)

    @property
    def victims_script(self) -> str:
        return PRELUDE + self.victims

    @property
    def rebuild_script(self) -> str:
        """ARGV[1] '1' on the first batch (drop old structures), ARGV[2..] paths to carry over."""
        return compose(REBUILD, self.hooks)


# KEYS: COMMON_KEYS layout. ARGV[1] first batch (1/0), ARGV[2..] tracked paths.
REBUILD = (
    PRELUDE
    + """
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[8])
  for i = 1, #AUX do redis.call('DEL', AUX[i]) end
end
for i = 2, #ARGV do
  local path = ARGV[i]
  local rec = redis.call('HGET', KEYS[1], path)
  if rec then
    local size, files, reg, hits = parse(rec)
    local now = redis.call('ZSCORE', KEYS[2], path)
    --@on_insert
  end
end
return #ARGV - 1
"""
)

_HEAD_OF_POLICY_ZSET = """
local first = tonumber(ARGV[2])
return redis.call('ZRANGE', KEYS[8], first, first + tonumber(ARGV[1]) - 1)
"""

LRU = Policy(
    name="lru",
    description="least recently used first (the seed's behaviour)",
    victims="""
local first = tonumber(ARGV[2])
return redis.call('ZRANGE', KEYS[2], first, first + tonumber(ARGV[1]) - 1)
""",
)

FIFO = Policy(
    name="fifo",
    description="first registered, first evicted; accesses do not reorder",
    victims=_HEAD_OF_POLICY_ZSET,
    on_insert="redis.call('ZADD', KEYS[8], 'NX', reg, path)",
    on_remove="redis.call('ZREM', KEYS[8], path)",
)

# Score = hits * 2^32 + last access in whole seconds: fewest hits first, ties by recency.
LFU = Policy(
    name="lfu",
    description="least frequently used first, ties broken by least recent access",
    victims=_HEAD_OF_POLICY_ZSET,
    on_insert="redis.call('ZADD', KEYS[8], hits * 4294967296 + math.floor(tonumber(now)), path)",
    on_hit="redis.call('ZADD', KEYS[8], (hits + 1) * 4294967296 + math.floor(tonumber(now)), path)",
    on_remove="redis.call('ZREM', KEYS[8], path)",
)

POLICIES: dict[str, Policy] = {p.name: p for p in (LRU, FIFO, LFU)}

__all__ = ["COMMON_KEYS", "POLICIES", "Policy", "register_policy"]


def register_policy(policy: Policy) -> Policy:
    """Add a policy to the registry (used by modules that define more policies)."""
    POLICIES[policy.name] = policy
    return policy
