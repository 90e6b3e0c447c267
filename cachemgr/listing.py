"""The reads that list tracked directories as the passes decide on them: each entry with its
record and the leases around it (pins.LEASE_AROUND), read in one script so that what a pass
decides on is one moment of the books; and the cursor of a listing's pages."""

from __future__ import annotations

import base64
import math

from cachemgr.pins import LEASE_AROUND
from cachemgr.scripts import PRELUDE


def victims_snapshot(victims: str) -> str:
    """Wrap a policy's victims chunk so that each victim comes with its last access, record and
    pin, read in the same atomic call: an access after the choice then fails the claim's check.

    Returns a flat list: path, last access, record, lease ('' for none: pins.LEASE_AROUND), ...
    """
    return (
        PRELUDE
        + LEASE_AROUND
        + "local function pick()\n"
        + victims
        + """
end
local out = {}
for _, p in ipairs(pick()) do
  local last = redis.call('ZSCORE', KEYS[2], p)
  local rec = last and redis.call('HGET', KEYS[1], rid(p))
  if rec then
    out[#out + 1] = p
    out[#out + 1] = last
    out[#out + 1] = rec
    out[#out + 1] = lease_around(p) or ''
  end
end
return out
"""
    )


# The books' view of some paths, in one call. KEYS: COMMON_KEYS layout  ARGV: paths
# Returns, for each path: last access, record, lease (pins.LEASE_AROUND), '' for none; the
# record only while the path is in cache:lru.
ENTRIES = (
    PRELUDE
    + LEASE_AROUND
    + """
local out = {}
for i = 1, #ARGV do
  local p = ARGV[i]
  local last = redis.call('ZSCORE', KEYS[2], p)
  local rec = last and redis.call('HGET', KEYS[1], rid(p))
  out[#out + 1] = last or ''
  out[#out + 1] = rec or ''
  out[#out + 1] = rec and lease_around(p) or ''
end
return out
"""
)


# A page's cursor: (last access, path) of its last entry, opaque to the client.
def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}\n{member}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, member = base64.urlsafe_b64decode(cursor.encode()).decode().split("\n", 1)
        value = float(score)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if math.isnan(value):  # Redis refuses a nan bound
        raise ValueError(f"invalid cursor {cursor!r}")
    return value, member
