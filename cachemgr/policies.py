"""Eviction policies: one registry maps a policy name to its behaviour.

A policy is Lua spliced into the core scripts (scripts.py) plus a script that names the next
victims. The hooks see the locals `path`, `size`, `now` and `hits` (and `reason` in the
claim); REGISTER has no `reg`, so an insert hook reads the registration from the record.
A rescan's new size (RESIZE) reaches `on_insert` as a registration again; a claimed directory
put back (RESTORE: its deletion failed) runs `on_restore`, then `on_insert`: the policies with
a ghost forget it there first, since the victim's return is no request. The core keeps
`cache:lru` for every policy (the seed's key, and the expiry index), so `lru` needs no hook.

Switching policy on a running cache (migrations.py) drops the new policy's structures and
carries every tracked entry over from the records, oldest access first, through the policy's
own insert hook: `fifo` orders by registration time, `lfu` by hit count then last access, `lru`
by last access (nothing to rebuild). `sieve` queues the entries by last
access with every visited bit clear and the hand at the oldest; `s3fifo` and `s3fifo-lg` put
them through admission as if newly registered in that order (about a tenth of the bytes in the
small queue, the rest in main, all counters zero, an empty ghost). `s3fifo-a` does the same
but keeps each entry's recorded hit count as its frequency: the first eviction after the switch
leaves the least recently used tenth of the bytes in the small queue (where an entry with hits
goes on to main when it reaches the head) and scores the rest into main by hits and size, the
least recently used first among equal scores; the ghost starts empty, T at a tenth of the bytes
held and L at 0. `2q` puts them all in its FIFO (Ain), oldest access first, with an empty
ghost; `gdsf` and `gdsf-bytes` give each entry the priority of its recorded hit count + 1, the
inflation L reset to 0. The records themselves (sizes, hits, times) are untouched: only the
old policy's own history (visited bits, queues, ghosts, L) is lost.

Every hook and victims script is O(log n) per entry touched. SIEVE's hand and S3-FIFO's
reinsertions may pass several entries on one eviction, but each entry passed was paid for by
an earlier hit (a visited bit, a clock count of at most 3; for `s3fifo-a`, whose main never
reinserts, the hit that promotes an entry out of the small queue), so the cost per access and
per eviction is O(log n) amortized. The one walk over many entries is the S3-FIFO family's
warm-up settle, made once before the first eviction (it moves most of the small queue into
main): Store.settle runs it in steps of a batch each, so no call holds Redis for long (one
call held it for seconds at 10^6 entries). A claim that finds it not done (nobody settled
first) finishes it itself. Before the settle, the victims scripts work it out on a copy,
reading the oldest tenth of the small queue each time; while it is half done, they refuse
(SETTLING) and Store.victims helps finish it. The victims scripts work moves out without
making them, so reading victims repeatedly without claiming any repeats that work; claiming
makes it once. The Lua of the newer policies is in policy_lua.py, policy_lua_s3fifo.py and
policy_lua_s3fifo_a.py, the reference models of all of them in models.py and models_s3fifo.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachemgr import policy_lua as lua
from cachemgr import policy_lua_s3fifo as s3
from cachemgr import policy_lua_s3fifo_a as s3a
from cachemgr.scripts import PRELUDE, compose


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    # Lua returning up to ARGV[1] paths, best victim first, skipping the first ARGV[2].
    victims: str
    on_insert: str = ""
    on_hit: str = ""
    on_remove: str = ""
    # Runs before on_insert when a claimed directory is put back (its deletion failed).
    on_restore: str = ""
    aux: tuple[str, ...] = field(default_factory=tuple)
    # Lua defining settle_step(budget) -> 1 while work is left: a warm-up the first eviction
    # must settle, done in bounded steps beforehand (Store.settle).
    settle: str = ""

    @property
    def hooks(self) -> dict[str, str]:
        return {
            "on_insert": self.on_insert,
            "on_hit": self.on_hit,
            "on_remove": self.on_remove,
            "on_restore": self.on_restore,
        }

    def script(self, template: str) -> str:
        return compose(template, self.hooks)

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
  local rec = record(path)
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
    # The registration time from the record: REGISTER has no `reg` local, REBUILD does.
    on_insert="""
do
  local _, _, registered = parse(record(path))
  redis.call('ZADD', KEYS[8], 'NX', registered, path)
end
""",
    on_remove="redis.call('ZREM', KEYS[8], path)",
)

# Score = hits * 2^32 + last access (seconds, with their fraction as far as a double keeps it:
# to the microsecond at few hits, which are the ones evicted; whole seconds left ties within a
# second to the names, and an album booked 0.3 s after another went first).
LFU = Policy(
    name="lfu",
    description="least frequently used first, ties broken by least recent access",
    victims=_HEAD_OF_POLICY_ZSET,
    on_insert="redis.call('ZADD', KEYS[8], hits * 4294967296 + tonumber(now), path)",
    on_hit="redis.call('ZADD', KEYS[8], (hits + 1) * 4294967296 + tonumber(now), path)",
    on_remove="redis.call('ZREM', KEYS[8], path)",
)

SIEVE = Policy(
    name="sieve",
    description="SIEVE (NSDI'24): FIFO order, a visited bit per hit, a hand that spares visited",
    victims=lua.SIEVE_VICTIMS,
    on_insert=lua.SIEVE_ON_INSERT,
    on_hit=lua.SIEVE_ON_HIT,
    on_remove=lua.SIEVE_ON_REMOVE,
    aux=lua.SIEVE_AUX,
)

S3FIFO = Policy(
    name="s3fifo",
    description="S3-FIFO (SOSP'23): small probationary FIFO, main 2-bit-clock FIFO, ghost",
    aux=s3.S3FIFO_AUX,
    **s3.s3fifo_lua(small=(1, 10), ghost=(9, 10)),
)

# The same with a ghost remembering twice the cache's bytes: evicted directories that come
# back within two cache-fulls skip probation. Best for byte miss ratio on the traces measured.
S3FIFO_LG = Policy(
    name="s3fifo-lg",
    description="S3-FIFO with a large ghost (2x the cache): good for the byte miss ratio",
    aux=s3.S3FIFO_AUX,
    **s3.s3fifo_lua(small=(1, 10), ghost=(2, 1)),
)

# S3-FIFO whose small queue's share adapts to the ghost's returns (ARC-style, in bytes) and
# whose main queue is a size-aware LFU with aging: the best byte and object miss ratios of the
# policies measured (docs/policies.md), at the cost of one zset update per hit in main.
S3FIFO_A = Policy(
    name="s3fifo-a",
    description="S3-FIFO with an adaptive small queue and a size-aware LFU main: recommended",
    aux=s3a.S3FIFO_A_AUX,
    **s3a.s3fifo_a_lua(),
)

TWOQ = Policy(
    name="2q",
    description="2Q: a FIFO for new entries, a ghost of those it evicted, an LRU for returns",
    victims=lua.TWOQ_VICTIMS,
    on_insert=lua.TWOQ_ON_INSERT,
    on_hit=lua.TWOQ_ON_HIT,
    on_remove=lua.TWOQ_ON_REMOVE,
    on_restore=lua.TWOQ_ON_RESTORE,
    aux=lua.TWOQ_AUX,
)

GDSF = Policy(
    name="gdsf",
    description="GreedyDual-Size-Frequency, cost 1: favours small, popular entries (objects)",
    victims=lua.GDSF_VICTIMS,
    on_insert=lua.gdsf_priority("hits + 1", cost_is_size=False),
    on_hit=lua.gdsf_priority("hits + 2", cost_is_size=False),
    on_remove=lua.GDSF_ON_REMOVE,
    aux=lua.GDSF_AUX,
)

GDSF_BYTES = Policy(
    name="gdsf-bytes",
    description="GreedyDual-Size-Frequency, cost = size: LFU with aging (bytes)",
    victims=lua.GDSF_VICTIMS,
    on_insert=lua.gdsf_priority("hits + 1", cost_is_size=True),
    on_hit=lua.gdsf_priority("hits + 2", cost_is_size=True),
    on_remove=lua.GDSF_ON_REMOVE,
    aux=lua.GDSF_AUX,
)

POLICIES: dict[str, Policy] = {
    p.name: p for p in (LRU, FIFO, LFU, SIEVE, S3FIFO, S3FIFO_LG, S3FIFO_A, TWOQ, GDSF, GDSF_BYTES)
}

__all__ = ["POLICIES", "Policy"]
