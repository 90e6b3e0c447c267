"""Path safety: every path cachemgr touches is a checked path relative to the cache root."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container
from pathlib import Path
from urllib.parse import unquote

from cachemgr.errors import NotOnDisk, PathError

TRASH_DIR = ".cachemgr-trash"
# A file in the root saying that books were kept for it: books found missing later were lost
# (FLUSHALL, Redis restarted without persistence), not new (cleanup, reconcile).
BOOKS_MARKER = ".cachemgr-books"
MAX_PATH_BYTES = 4096
# How every walk opens a directory (scans, the trash): never through a symlink, so a directory
# swapped for one mid-walk is skipped, never followed out of the tree.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_NAME_BYTES = 255


# What a root holds that is no download: cachemgr's own (.cachemgr-trash, .cachemgr-books and
# its temporaries), a desktop's trash (.Trash, .Trash-1000), and lost+found, in the root of
# every ext2/3/4 file system.
_NOT_DOWNLOADS = (".cachemgr-", ".Trash")
LOST_FOUND = "lost+found"


def not_a_download(name: str) -> bool:
    """A name in the root that is the root's own, not a download."""
    return name == LOST_FOUND or name.startswith(_NOT_DOWNLOADS)


def root_own(rel: str, mounted: Container[str] = ()) -> str | None:
    """Why a normalized path is the root's own, not a download (registered, a quota pass
    deleted a file system's lost+found); None for a download's. `mounted`: the disks mounted
    below the root (relative paths, mounts.mounted_below), whose own such folders they are too."""
    parts = rel.split("/")
    for i, name in enumerate(parts):
        if not_a_download(name) and (i == 0 or "/".join(parts[:i]) in mounted):
            where = "the cache root" if i == 0 else f"the disk mounted at {'/'.join(parts[:i])!r}"
            return (
                f"{'/'.join(parts[: i + 1])!r} is {where}'s own (a file system's lost+found, a "
                "desktop's trash or cachemgr's files), not a download"
            )
    return None


def normalize(path: str) -> str:
    """Check a relative path by its text alone (no disk access) and return its canonical form.

    Refuses absolute paths, `..` and `.` components, empty components (`a//b`; trailing
    slashes, as a shell completes a directory, are taken off), NUL bytes, names that no
    filesystem takes, the root itself and the trash folder.
    """
    if not isinstance(path, str):
        raise PathError("path must be a string")
    if "\x00" in path:
        raise PathError("path contains a NUL byte")
    stripped = path.rstrip("/")
    try:
        encoded = stripped.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError("path is not valid UTF-8") from None
    # Before any message quotes it: a 10 MB path was a 10 MB log line and a 20 MB result.
    if len(encoded) > MAX_PATH_BYTES or len(path) > 2 * MAX_PATH_BYTES:  # or its slashes
        raise PathError(f"path is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise PathError(f"path must be relative to the cache root, got absolute {path!r}")
    if path.startswith("\\"):  # a Windows client's absolute path, or its UNC share
        raise PathError(f"path starts with a backslash, as a Windows absolute path: {path!r}")
    if stripped in ("", "."):
        raise PathError("path names the cache root itself")
    parts = stripped.split("/")
    for part in parts:
        if part == "":
            raise PathError(f"path has an empty component: {path!r}")
        if part in (".", ".."):
            raise PathError(f"path may not contain {part!r} components: {path!r}")
        if "%" in part and _fully_unquoted(part) in (".", ".."):
            raise PathError(f"path contains percent-encoded traversal: {path!r}")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(f"a path component is longer than {MAX_NAME_BYTES} bytes")
    if TRASH_DIR in parts:  # the root's, or that of a disk mounted below it
        raise PathError("path is inside cachemgr's trash folder")
    return stripped


def _fully_unquoted(text: str) -> str:
    for _ in range(5):  # double (or deeper) encoding
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text.split("/")[0] if "/" in text else text


def encodable(name: str) -> bool:
    """False for a name read off the disk that is not UTF-8 (its surrogate escapes)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def unbookable(name: str) -> str | None:
    """Why a name read off the disk cannot be booked (not UTF-8, or one normalize refuses as
    a path: a leading backslash, a percent-encoded `..`); None when it can."""
    if not encodable(name):
        return "not UTF-8"
    try:
        normalize(name)
    except PathError as exc:
        return str(exc)
    return None


def shown(name: str) -> str:
    """A name read off the disk, as text that Redis and a log take: bytes that are not UTF-8
    as backslash escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def ancestors(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]: the paths that would contain this one."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def resolve(root: Path, path: str) -> Path:
    """The absolute location of a checked path. Refuses a path with a symlink in any parent.

    A symlinked parent is refused even when it points inside the root: it would make two
    names for one directory (counted twice, a pin on one name not protecting the other). The
    last component itself is not followed: a symlink there is returned as the link.
    """
    rel = normalize(path)
    real_root = Path(os.path.realpath(root))
    target = real_root / rel
    parent = Path(os.path.realpath(target.parent))
    if parent != target.parent:
        inside = parent == real_root or real_root in parent.parents
        where = "inside" if inside else "out of"
        raise PathError(f"path goes through a symlink ({where} the cache root): {path!r}")
    return target


def kind(location: Path) -> str:
    """`dir`, `missing`, `other` (a file, a symlink...), without following a symlink, or
    `unknown` when it cannot be told now (EACCES, EIO...): nobody may take that for gone."""
    try:
        st = os.lstat(location)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
            return "other"  # a file where a parent was, a symlink loop, a name too long
        return "unknown"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def kind_at(root: Path, path: str) -> str:
    """`kind` of a checked path under the root, or `unsafe` when a parent is a symlink now
    (what is behind it is not ours to judge)."""
    try:
        return kind(resolve(root, path))
    except PathError:
        return "unsafe"


def existing_directory(root: Path, path: str) -> Path:
    """Resolve a path that must be a real directory now (not a symlink, not a file)."""
    location = resolve(root, path)
    try:
        st = os.lstat(location)
    except FileNotFoundError:
        # The root named: a pipeline whose own root is not the workers' saw only the path.
        where = f"the cache root {str(root)!r}"
        raise NotOnDisk(f"directory not found under {where}: {path!r}") from None
    except OSError as exc:
        raise PathError(f"cannot inspect {path!r}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise PathError(f"path is a symlink, not a directory: {path!r}")
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"path is a file, not a directory: {path!r}")
    return location
