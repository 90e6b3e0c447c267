"""Deletion through a trash folder inside the root, without following any symlink.

A directory is first renamed into the trash (atomic, same filesystem), then deleted: a reader
never sees a half-deleted tracked directory, and a crash leaves only trash, which the next
cleanup empties. Every step works on directory descriptors opened with O_NOFOLLOW from the
root down, so a parent swapped for a symlink between a check and the rename makes the rename
fail instead of moving something outside the root; the removal (`_rmtree`) never follows one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from cachemgr.mounts import mount_id, mount_points, mount_points_under, mounts_above
from cachemgr.nested import this_root
from cachemgr.paths import BOOKS_MARKER, DIR_FLAGS, TRASH_DIR
from cachemgr.slots import (
    IN_FLIGHT,
    KEPT,
    NO_ROOM,
    SPARE,
    in_flight,
    keep_spare,
    new_slot,
    release,
)

log = logging.getLogger("cachemgr")


class NotADirectory(OSError):
    """The path no longer names a directory (a file or a symlink took its place)."""


def trash_dir(root: Path) -> Path:
    return root / TRASH_DIR


@contextlib.contextmanager
def _opened(path: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _same_device(fd: int, root_fd: int, where: str = "") -> None:
    """The trash must be the root's own folder: one that is a mount point (another disk, or a
    bind mount of something elsewhere, which st_dev cannot tell) would have that emptied, and
    a deletion's rename into it failed with a bare "Invalid cross-device link"."""
    if os.fstat(fd).st_dev != os.fstat(root_fd).st_dev or mount_id(fd) != mount_id(root_fd):
        raise OSError(
            errno.EXDEV, f"the trash {where + '/' if where else ''}{TRASH_DIR} is a mount point: "
            "nothing is deleted through it until it is unmounted"
        )


@contextlib.contextmanager
def _trash_fd(root_fd: int, where: str = "") -> Iterator[int]:
    """The trash in the directory `root_fd` (the root, or `where` below it), made if need be."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(TRASH_DIR, dir_fd=root_fd)
    try:
        fd = os.open(TRASH_DIR, DIR_FLAGS, dir_fd=root_fd)  # a symlink: ELOOP, never followed
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        # Said as what it is: "Not a directory" alone named the download, not the trash.
        raise OSError(
            exc.errno, f"the trash {where + '/' if where else ''}{TRASH_DIR} is a symlink or a "
            "file, not a directory: nothing is deleted until it is removed"
        ) from None
    try:
        _same_device(fd, root_fd, where)
        yield fd
    finally:
        os.close(fd)


def _base(chain: list[int]) -> int:
    """Where the trash goes for a directory in the last of `chain` (the root's descriptor,
    then each level down to its parent): its index there, the root (0) or the mount point
    below it that the directory's disk is mounted at (a rename cannot cross filesystems: a
    download on a disk mounted at root/artist could never be deleted, EXDEV)."""
    mount = mount_id(chain[-1])
    if mount is None:
        return 0
    return next(i for i, fd in enumerate(chain) if mount_id(fd) == mount)


def _bases(root: Path, points: list[str], depth: int) -> list[Path]:
    """Where a trash may be: the root, and the disks mounted below it (a download's parent
    is above the entry depth) that are no cache's root: another cache's trash, or this one's
    seen twice, is not this one's to judge."""
    return [root, *(p for p in mounts_above(root, depth, points) if _a_disk_of_ours(root, p))]


def _remove(name: str, dir_fd: int) -> list[str]:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        return _rmtree(name, dir_fd)
    os.unlink(name, dir_fd=dir_fd)
    return []


def _rmtree(name: str, dir_fd: int) -> list[str]:
    """Delete a tree in the trash; what could not go is returned, not raised: it stays in the
    trash for the next `empty`. Gone already (another cleanup's `empty`) is not an error.

    Without recursion (shutil.rmtree recursed once per level: a tree a thousand levels deep
    raised RecursionError, which every handler let through), on descriptors opened without
    following symlinks, never into another device or mount: the mount points were looked for
    before the rename, and one made since (a bind mount of the same filesystem: the same
    st_dev) had what lives outside the root deleted."""
    problems: list[str] = []
    try:
        top = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    except OSError as exc:  # EMFILE...: left in the trash, said, not raised
        return [f"{name}: {exc}"]
    device, mount = os.fstat(top).st_dev, mount_id(dir_fd)
    if mount_id(top) != mount:
        os.close(top)
        return [f"{name}: a mount point; not entered"]
    # Each level: its descriptor, its name in its parent, the parent's descriptor, and the
    # names in it that could not go (not tried again when the level is read again).
    stack: list[tuple[int, str, int, set[str]]] = [(top, name, dir_fd, set())]
    while stack:
        fd, here, parent, stuck = stack[-1]
        child: int | None = None
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name in stuck:
                    continue
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=fd)
                        continue
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                    if os.fstat(child).st_dev != device or mount_id(child) != mount:
                        os.close(child)
                        child = None
                        raise OSError(errno.EXDEV, "a mount point; not entered")
                except FileNotFoundError:
                    continue
                except OSError as exc:  # EMFILE past the descriptor limit too: left there
                    problems.append(f"{here}/{entry.name}: {exc}")
                    stuck.add(entry.name)
                    continue
                stack.append((child, entry.name, fd, set()))
                break
        if child is not None:
            continue
        stack.pop()
        os.close(fd)
        try:
            os.rmdir(here, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not stuck:
                problems.append(f"{here}: {exc}")
            if stack:
                stack[-1][3].add(here)
    return problems


def _still_in_place(root: Path, parts: list[str], chain: list[int]) -> bool:
    """Whether the folders opened on the way down (`chain`: the root, then each of `parts`
    but the last) are each still where its name was, the root at its path."""
    try:
        here = [(os.stat(root), chain[0])]
        here += [(os.stat(n, dir_fd=fd, follow_symlinks=False), c) for n, fd, c in
                 zip(parts, chain, chain[1:], strict=False)]  # fmt: skip
        return all(_same(st, os.fstat(fd)) for st, fd in here)
    except OSError:  # gone, or no longer a folder we can look into
        return False


def _put_back(
    moved: tuple[int, str], slot: str, trash_fd: int, name: str, parent_fd: int, rel: str,
    why: Exception,
) -> None:
    """Move a called-off deletion's directory (`moved`: where it lies, `d` in its slot or the
    slot itself) back where it was taken from; where that cannot be (its folder gone,
    read-only, or the name taken: a rename would replace an empty folder there), keep it
    whole in the trash under KEPT and raise `why`."""
    try:
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(moved[1], name, src_dir_fd=moved[0], dst_dir_fd=parent_fd)
            return
        raise FileExistsError(errno.EEXIST, "its name is taken there now")
    except OSError as exc:
        kept = f"{KEPT}{slot.removeprefix(IN_FLIGHT)}"
        try:
            _rename_kept(slot, kept, trash_fd)
        except OSError as lost:  # left under its slot's name, a cleanup would empty it
            log.critical(
                "deletion of %s called off (%s): it could be neither put back (%s) nor kept "
                "(%s), and lies in the trash as %s, which a cleanup empties once it is older "
                "than the lock timeout: move it back by hand now", rel, why,
                exc.strerror or exc, lost.strerror or lost, slot,
            )  # fmt: skip
            raise why from lost
        whole = kept if moved[1] == slot else f"{kept}/d"
        log.error(
            "deletion of %s called off (%s) and it could not be put back (%s): kept whole as "
            "%s in the trash; move it back by hand", rel, why, exc.strerror or exc, whole,
        )
        raise why from exc


def _rename_kept(slot: str, kept: str, trash_fd: int) -> None:
    try:
        os.rename(slot, kept, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        # The trash's folder must grow for the new name (ext4): the spare's room first.
        with contextlib.suppress(OSError):
            os.rmdir(SPARE, dir_fd=trash_fd)
        os.rename(slot, kept, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)


def _refusal(
    moved: os.stat_result,
    st: os.stat_result,
    root: Path,
    parts: list[str],
    chain: list[int],
    still_ours: Callable[[], str | None] | None,
) -> Exception | None:
    """Why a directory moved aside goes back in its place, deleting nothing; None: it is
    ours to delete."""
    rel = "/".join(parts)
    if not _same(moved, st):  # swapped between the check and the rename
        return NotADirectory(f"{rel!r} changed while it was being deleted")
    if not _still_in_place(root, parts, chain):
        # A folder above it moved (out of the root, perhaps) before the rename: what was
        # taken may have lain outside the root then.
        return NotADirectory(f"a folder above {rel!r} moved while it was being deleted")
    if still_ours is None:
        return None
    try:
        why = still_ours()
    except Exception as exc:  # Redis away: the journal keeps it for recovery
        return exc
    return Kept(why) if why else None  # pinned, or put back on the books, since the claim


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Kept(Exception):
    """The deletion was called off once the directory was moved aside (`still_ours` said
    why): it is back in its place."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def discard(
    root: Path,
    rel: str,
    still_ours: Callable[[], str | None] | None = None,
    depth: int | None = None,
) -> list[str]:
    """Rename `root/rel` into the trash, then delete it. Raises OSError, leaving everything in
    place, when the rename cannot be made (NotADirectory when `rel` is no longer a directory,
    EBUSY when a mount point is inside, EXDEV when its disk is mounted at or below the entry
    `depth`, whose trash no emptying visits). `still_ours`, asked once the directory is moved
    aside and before anything is deleted, may call it off (a reason: Kept, and it is put
    back). Once renamed, the directory is gone from the root: what the deletion could not
    remove stays in the trash and is returned (for the log). On a disk with no room for a
    slot, nor a spare, the directory is moved in as its own slot."""
    mounts = mount_points_under(root / rel)
    if mounts:
        raise OSError(errno.EBUSY, f"a mount point is inside ({mounts[0]}); not deleted")
    parts = rel.split("/")
    with contextlib.ExitStack() as stack:
        root_fd = stack.enter_context(_opened(root))
        chain = [root_fd]
        for part in parts[:-1]:
            chain.append(stack.enter_context(_opened(part, dir_fd=chain[-1])))
        parent_fd = chain[-1]
        st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectory(f"{rel!r} is no longer a directory")
        base = _base(chain)
        if depth is not None and base >= depth:
            # A directory registered below the entry depth, on a disk mounted there: what it
            # left in that trash was never emptied, nor counted in trash_left.
            raise OSError(
                errno.EXDEV, f"its disk is mounted at {'/'.join(parts[:base])!r}, at or below "
                f"the entry depth ({depth}), where no cleanup empties a trash: not deleted"
            )  # fmt: skip
        trash_fd = stack.enter_context(_trash_fd(chain[base], "/".join(parts[:base])))
        # Moved into a slot of its own that `empty` leaves alone while it is new: what was
        # moved is checked there first, and must still be there to be put back.
        try:
            slot = new_slot(trash_fd)
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            # No room for a slot, and no spare (a crash's leftover slot, an undeletable file
            # hold it): the directory is its own slot (a rename takes no room), which `empty`
            # leaves alone while it is checked by the change time the move gives it.
            slot = f"{IN_FLIGHT}{uuid.uuid4().hex}"
            os.rename(parts[-1], slot, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)
            refused = _refusal(os.stat(slot, dir_fd=trash_fd, follow_symlinks=False), st,
                               root, parts, chain, still_ours)  # fmt: skip
            if refused is not None:
                _put_back((trash_fd, slot), slot, trash_fd, parts[-1], parent_fd, rel, refused)
                raise refused from None
        else:
            with _opened(slot, dir_fd=trash_fd) as slot_fd:
                try:
                    os.rename(parts[-1], "d", src_dir_fd=parent_fd, dst_dir_fd=slot_fd)
                except OSError:
                    release(slot, trash_fd)
                    raise
                moved = os.stat("d", dir_fd=slot_fd, follow_symlinks=False)
                refused = _refusal(moved, st, root, parts, chain, still_ours)
                if refused is not None:
                    _put_back((slot_fd, "d"), slot, trash_fd, parts[-1], parent_fd, rel, refused)
                    release(slot, trash_fd)
                    raise refused
        # Checked: from here it is trash like any other, which any `empty` may finish.
        name = slot.removeprefix(IN_FLIGHT)
        os.rename(slot, name, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)
        left = _rmtree(name, trash_fd)
        keep_spare(trash_fd)  # the room just freed: ready before the disk fills again
        return left


def empty(root: Path, lock_timeout: float = 0.0, depth: int = 1) -> int:
    """Delete whatever a crash or a failed deletion left in the trash (the root's, and those
    of disks mounted below it, above the entry depth `depth`); returns how many items went.
    An item that cannot go (or holds a mount point) is logged and left for next time: one
    stuck item must not stop every cleanup, nor one disk below the root that cannot be
    read (a dead network mount: ENOTCONN, ESTALE)."""
    points = mount_points()
    removed = 0
    for base in _bases(root, points, depth):
        with contextlib.suppress(OSError):  # made ahead, with its SPARE, while there is room
            os.mkdir(trash_dir(base))
        try:
            removed += _empty(base, points, lock_timeout)
        except OSError as exc:
            if base == root:
                raise
            log.warning("trash of %s not emptied: %s", base, exc)
    return removed


def _a_disk_of_ours(root: Path, base: Path) -> bool:
    """A mount below the root that is a disk of downloads, not a cache's root (another's, or
    this one or a folder above it seen again)."""
    if os.path.lexists(base / BOOKS_MARKER):
        return False
    return this_root(root, os.path.relpath(base, os.path.realpath(root))) is None


def _empty(base: Path, points: list[str], lock_timeout: float) -> int:
    removed = 0
    try:
        with _opened(base) as base_fd, _opened(TRASH_DIR, dir_fd=base_fd) as trash_fd:
            try:
                _same_device(trash_fd, base_fd)
                if os.path.realpath(trash_dir(base)) in points:  # a bind mount: same st_dev
                    raise OSError(errno.EXDEV, "the trash is a mount point; not used")
            except OSError as exc:
                log.error("trash %s not emptied: %s", trash_dir(base), exc.strerror)
                return 0
            for name in os.listdir(trash_fd):
                if name == SPARE or name.startswith(KEPT):
                    continue
                if in_flight(name, trash_fd, lock_timeout):
                    continue
                mounts = mount_points_under(trash_dir(base) / name, points)
                try:
                    if mounts:
                        raise OSError(errno.EBUSY, f"a mount point is inside ({mounts[0]})")
                    problems = _remove(name, trash_fd)
                except FileNotFoundError:
                    continue  # another deletion or cleanup got there first
                except OSError as exc:
                    problems = [str(exc)]
                if problems:
                    where = trash_dir(base) / name
                    log.warning("trash: %s left in place: %s", where, "; ".join(problems[:3]))
                else:
                    removed += 1
            keep_spare(trash_fd)  # after: a crash's leftover slot gone may have made room
    except (FileNotFoundError, NotADirectoryError):
        return removed
    except OSError as exc:  # a symlinked trash (ELOOP) is never followed
        if exc.errno == errno.ELOOP:
            return removed
        raise
    return removed


def tally(root: Path, lock_timeout: float = 0.0, depth: int = 1) -> tuple[int, int]:
    """(pending, kept) in one look at each trash: items `empty` would take (a deletion still
    checking what it moved is not one), and directories a called-off deletion kept whole for
    the operator to move back (they were said to be stuck, with the wrong cure)."""
    pending = kept = 0
    for base in _bases(root, mount_points(), depth):
        try:
            with _opened(base) as base_fd, _opened(TRASH_DIR, dir_fd=base_fd) as trash_fd:
                for name in os.listdir(trash_fd):
                    if name.startswith(KEPT):
                        kept += 1
                    elif name != SPARE and not in_flight(name, trash_fd, lock_timeout):
                        pending += 1
        except OSError:  # no trash, or a symlinked one (never followed)
            continue
    return pending, kept


def pending(root: Path, lock_timeout: float = 0.0, depth: int = 1) -> int:
    """Items `empty` would take (tally)."""
    return tally(root, lock_timeout, depth)[0]


def kept(root: Path, depth: int = 1) -> int:
    """Directories a called-off deletion kept whole in the trash (tally)."""
    return tally(root, 0.0, depth)[1]
