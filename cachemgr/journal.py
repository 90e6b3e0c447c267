"""The deletion journal (`cache:deleting`): a claim takes a directory off the books into it,
FINISH counts it once its files are gone, RESTORE puts it back when they could not go; after
a crash, recover_unfinished does whichever the disk says. Each step is one Lua script, so a
directory is always either on the books or in the journal, never lost between them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cachemgr import mounts, paths, scanner
from cachemgr.errors import NotTracked
from cachemgr.logs import Repeats
from cachemgr.pins import LEASE_AROUND
from cachemgr.records import Entry
from cachemgr.scripts import PRELUDE

if TYPE_CHECKING:
    from cachemgr.cache import DiskCache
    from cachemgr.store import Store

log = logging.getLogger("cachemgr")
_REPEATS = Repeats(600)  # a deletion under a disk not mounted, said once in ten minutes
# Past the claimed directory's last access, a directory at its path born this much later is
# another: the margin covers a network disk's clock ahead of Redis's.
MADE_SINCE_SECONDS = 60.0

_EVENT = """
local function event(kind, path, size, deleted, now)
  redis.call('XADD', KEYS[10], 'MAXLEN', trim(ARGV[9]), ARGV[9], '*', 'event', kind, 'path', path,
    'size', size, 'files_deleted', deleted, 'time', now)
end
local counter = {evicted = 'evictions', expired = 'expirations', removed = 'removals',
  vanished = 'vanished'}
"""

# Take one directory off the books, if it is still the one the caller chose.
# ARGV[1] path  ARGV[2] reason: evicted | expired | removed | vanished  ARGV[3] now
# ARGV[4] expected registration ('' = any)  ARGV[5] expected last access ('' = any)
# ARGV[6] honour pins (1/0)  ARGV[7] files will be deleted (1/0)
# ARGV[8] grace period after registration in seconds  ARGV[9] events stream cap
# ARGV[10] lock token ('' = none held)
# With files to delete, the entry moves to the journal cache:deleting (its record and last
# access, so it can be put back) and is counted by FINISH once the files are gone; otherwise
# it is counted now. Returns {'ok', size, files} or {why}: gone | changed | pinned | young |
# lock_lost.
CLAIM = (
    PRELUDE
    + _EVENT
    + LEASE_AROUND
    + """
local path, reason, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if lock_lost(ARGV[10]) then return {'lock_lost'} end
local rec, id = record(path)
if not rec then return {'gone'} end
local size, files, reg, hits = parse(rec)
if ARGV[4] ~= '' and reg ~= ARGV[4] then return {'changed'} end
local last = redis.call('ZSCORE', KEYS[2], path)
if ARGV[5] ~= '' then
  if (not last) or tonumber(last) ~= tonumber(ARGV[5]) then return {'changed'} end
end
local lease = ARGV[6] == '1' and lease_around(path)
if lease and tonumber(lease) > now then
  count('skipped_pinned', 1)
  return {'pinned'}
end
if tonumber(ARGV[8]) > 0 and tonumber(reg) > now - tonumber(ARGV[8]) then return {'young'} end
redis.call('HDEL', KEYS[1], id)
redis.call('ZREM', KEYS[2], path)
redis.call('DEL', KEYS[9])
redis.call('DECRBY', KEYS[3], size)
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[7], path, rec .. ' ' .. (last or ARGV[3]) .. ' ' .. reason)
else
  count(counter[reason] or reason, 1)
  event(reason, path, size, 0, ARGV[3])
end
--@on_remove
return {'ok', size, files}
"""
)

# The files of a claimed directory are gone: count it and close its journal entry. With
# ARGV[3] '0' they were not deleted by us (no longer a directory under the root: a file or a
# symlinked parent took its place): counted as vanished, no bytes freed.
# ARGV[1] path  ARGV[2] now  ARGV[3] deleted (1/0)  ARGV[9] events stream cap (ARGV[4..8] unused)
# Returns 1, or 0 when the journal had no such entry.
FINISH = (
    PRELUDE
    + _EVENT
    + """
local path = ARGV[1]
local entry = redis.call('HGET', KEYS[7], path)
if not entry then return 0 end
local size_s, files_s, reg, hits_s, last, reason = string.match(entry,
  '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
if not size_s then
  -- the journal's first format held the size alone, and no reason
  size_s, reason = string.match(entry, '^(%d+)$'), 'removed'
  if not size_s then return redis.error_reply('ERR unreadable journal entry for ' .. path) end
end
redis.call('HDEL', KEYS[7], path)
if ARGV[3] == '0' then
  count('vanished', 1)
  event('vanished', path, size_s, 0, ARGV[2])
  return 1
end
count(counter[reason] or reason, 1)
count('bytes_freed', tonumber(size_s))
event(reason, path, size_s, 1, ARGV[2])
return 1
"""
)

# Put a claimed directory back on the books exactly as it was: its deletion failed, or a
# crash interrupted it before its files went. Skipped if the path was registered since.
# ARGV[1] path  ARGV[2] now  ARGV[3] ttl seconds
# Returns 1 when put back, 0 otherwise.
RESTORE = (
    PRELUDE
    + """
local path, now = ARGV[1], ARGV[2]
local entry = redis.call('HGET', KEYS[7], path)
redis.call('HDEL', KEYS[7], path)
local id = rid(path)
-- Registered again since (or, with ids colliding, another path holds the id): keep that.
if not entry or redis.call('HEXISTS', KEYS[1], id) == 1 then return 0 end
local size_s, files_s, reg, hits_s, last = string.match(entry,
  '^(%S+) (%S+) (%S+) (%S+) (%S+) %S+$')
-- The journal's first format held the size alone: too little to put the record back, so
-- the directory (still on disk) waits for reconcile to register it again.
if not size_s then return 0 end
local size, hits = tonumber(size_s), tonumber(hits_s)
redis.call('HSET', KEYS[1], id, size_s .. ' ' .. files_s .. ' ' .. reg .. ' ' .. hits_s)
redis.call('ZADD', KEYS[2], last, path)
local left = math.floor(tonumber(last) + tonumber(ARGV[3]) - tonumber(now))
if left > 0 then redis.call('SET', KEYS[9], seconds(reg), 'EX', left) end
redis.call('INCRBY', KEYS[3], size_s)
now = last  -- the hooks book its last access, not the restore's time (LFU's tie-break)
--@on_restore
--@on_insert
return 1
"""
)


def _claimed(store: Store, path: str) -> Entry:
    """The journal's entry for `path`, as the record it was taken off the books with (an
    entry of the first format, its size alone, as registered at 0)."""
    raw = store.client.hget(store.keys.deleting, path) or "0"
    size, files, registered, hits, last, *_ = (raw.split(" ") + ["0"] * 5)[:6]
    return Entry(path, int(size), int(files), registered, float(last), int(hits), 0)


def _made_since(cache: DiskCache, path: str) -> bool:
    """Whether the directory at `path` was made (its birth time, where the filesystem keeps
    one) over MADE_SINCE_SECONDS after the claimed one's last access: another directory."""
    last = _claimed(cache.store, path).last_access
    born = scanner.birth_time(paths.resolve(cache.root, path))
    return last > 0 and born is not None and born > last + MADE_SINCE_SECONDS


def held(store: Store, path: str) -> bool:
    """Whether a deletion holds the path (in the journal: now, or interrupted by a crash)."""
    return bool(store.client.hexists(store.keys.deleting, path))


def not_tracked(store: Store, path: str) -> NotTracked:
    """The error for a path off the books, saying so when a deletion holds it (in the
    journal: deleted now, or interrupted by a crash and put back later)."""
    said = f"directory is not tracked: {path!r}"
    if held(store, path):
        said += (
            " (it is being deleted; one interrupted by a crash is back on the books at the "
            "first cleanup after its lock lapses)"
        )
    return NotTracked(said)


def check_removable(store: Store, path: str) -> None:
    """Raise not_tracked unless the path is on the books or a deletion holds it (one
    interrupted by a crash is the removal's to finish): said before a removal is sent."""
    if not store.tracked([path])[0] and not held(store, path):
        raise not_tracked(store, path)


def recover_unfinished(cache: DiskCache) -> list[str]:
    """Finish what a crash interrupted: directories claimed for deletion (cache:deleting).
    Returns the paths put back on the books.

    One whose files are still there is put back on the books exactly as it was (the next pass
    decides again, with fresh checks); one whose files are gone is counted as deleted. An entry
    whose directory lock is still held (the crashed worker's, until it lapses) waits.
    """
    recovered = []
    for path in cache.store.unfinished_deletions():
        lock = cache.lock(path)
        if not lock.acquire():
            continue
        try:
            if settle(cache, path) == "restored":
                recovered.append(path)
        finally:
            lock.release()
    return recovered


def settle(cache: DiskCache, path: str, registering: bool = False) -> str | None:
    """Settle one interrupted deletion as the disk says, its lock held by the caller:
    `restored` (its files are still there), `finished` (they are gone), or None (cannot be
    told now: EACCES, EIO; or not in the journal). `registering`: a registration of the path
    asks, which takes a directory made since the claimed one was last used for another."""
    on_disk = paths.kind_at(cache.root, path)  # `unsafe`: a symlinked parent, kept
    if on_disk == "unknown":
        return None
    if registering and on_disk == "dir" and _made_since(cache, path):
        # Downloaded again after the claimed one went into the trash: put back, the old
        # record (its hits, its age) stood for the new files and the removal went uncounted.
        # Not for a cleanup's recovery: taken wrongly, a directory on disk would leave the
        # books; here the registration books it at once.
        if not cache.store.finish_deletion(path, now=cache.clock()):
            return None
        log.warning("deletion of %s interrupted (a crash?): finished, a directory made "
                    "since is there now", path)  # fmt: skip
        return "finished"
    if on_disk in ("dir", "unsafe"):
        if not cache.store.restore(path, now=cache.clock()):
            return None
        log.warning("deletion of %s interrupted (a crash?): back on the books", path)
        return "restored"
    # Missing: its files went (into the trash, or gone). Anything else is not ours to count
    # as freed: it vanished from the books.
    deleted = on_disk == "missing"
    if deleted and mounts.under_bare_mount(cache, [_claimed(cache.store, path)]):
        # Missing as a pass's victim under a disk not mounted is (deletion.take): it was
        # counted as freed and, the disk back, lay there untracked. Kept for a later cleanup.
        level = logging.WARNING if _REPEATS.due(path) else logging.DEBUG
        log.log(level, "deletion of %s interrupted (a crash?): %s; left for later", path,
                mounts.UNDER_BARE_MOUNT)  # fmt: skip
        return None
    if not cache.store.finish_deletion(path, now=cache.clock(), deleted=deleted):
        return None
    log.warning(
        "deletion of %s interrupted (a crash?): finished, %s",
        path,
        "its files were gone" if deleted else f"counted as vanished ({on_disk})",
    )
    return "finished"
