"""A deletion's slots in the trash: the one it moves its directory into while it checks what
it moved (in flight), one it could not put back (kept), and the spare made ahead for a disk
with no room left (see trash.discard)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid

# A deletion's slot in the trash while it checks what it moved; one older than the lock
# timeout (IN_FLIGHT_AGE at least) is a crash's leftover, and goes like any other item. Its
# deleter holds the directory's lock until then: a minute, as it was, let another cleanup
# empty the slot of a worker held up longer (counted vanished, not evicted; put back: gone).
IN_FLIGHT = ".in-flight-"
# A directory a deletion called off and could not put back (its place gone or taken): kept
# whole under this name, which no emptying deletes, for the operator to move back.
KEPT = ".kept-"
IN_FLIGHT_AGE = 60.0
IN_FLIGHT_AHEAD = 86400.0
# An empty slot made ahead while there is room: on a disk so full that no directory can be
# made (ENOSPC), a deletion's slot is this one renamed, which takes no new block; without it
# no eviction could free the disk that most needed it. `empty` leaves it alone.
SPARE = ".spare-slot"
# What a full disk answers a new directory: no block, or no inode, left (or a quota reached).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def new_slot(trash_fd: int) -> str:
    slot = f"{IN_FLIGHT}{uuid.uuid4().hex}"
    try:
        os.mkdir(slot, dir_fd=trash_fd)
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        try:  # another deletion may have taken it: then the directory is its own slot
            # New from here on: the rename sets its change time, which `in_flight` goes by.
            os.rename(SPARE, slot, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)
        except FileNotFoundError:
            raise exc from None
    # The spare is made again after the deletion (trash.discard), or is this slot given back.
    return slot


def release(slot: str, trash_fd: int) -> None:
    """A slot a deletion did not use (called off, or nothing to move): kept as the spare,
    whose room a full disk's writer would otherwise take first."""
    try:
        os.rename(slot, SPARE, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)
    except OSError:
        os.rmdir(slot, dir_fd=trash_fd)


def keep_spare(trash_fd: int) -> None:
    with contextlib.suppress(OSError):  # there already, or no room: the next deletion tries
        os.mkdir(SPARE, dir_fd=trash_fd)


def in_flight(name: str, trash_fd: int, lock_timeout: float) -> bool:
    """A slot whose deletion is still checking what it moved (see trash.discard)."""
    if not name.startswith(IN_FLIGHT):
        return False
    try:
        st = os.stat(name, dir_fd=trash_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True  # gone already: nothing to do
    # Dated ahead by a network disk's own clock, it may be a deletion's in flight; by more
    # than a day (a clock set back), it is no deletion's: it stayed in the trash for good.
    # By its change time, which making a slot or moving into one sets and no utime sets back:
    # a directory that is its own slot keeps its own mtime, whatever its content dated it
    # (hours back, or days ahead: `tar x` from a host with a bad clock).
    age = time.time() - st.st_ctime
    return -IN_FLIGHT_AHEAD < age < max(IN_FLIGHT_AGE, lock_timeout)
