"""The errors cachemgr raises on purpose; each carries a one-line message for users."""

from __future__ import annotations

# Set on an error the domain has logged already (a cleanup's failure): an adapter that logs
# the errors of what it runs (the workers' failed tasks) leaves it out, one line a failure.
LOGGED = "cachemgr_logged"


def logged(exc: BaseException) -> BaseException:
    setattr(exc, LOGGED, True)
    return exc


class CacheError(Exception):
    """Base of the errors an adapter turns into a clear answer (HTTP code, exit code)."""

    code = "cache_error"


class BadArgument(CacheError, ValueError):
    """A value of the wrong type or out of range (a task's argument, mostly): a 400."""

    code = "bad_argument"


class PathError(CacheError, ValueError):
    """A path cachemgr refuses (absolute, `..`, NUL, outside the root...): a 400."""

    code = "bad_path"


class NotTracked(CacheError, LookupError):
    """The directory is not in the books: a 404."""

    code = "not_tracked"


class UnknownNode(NotTracked):
    """A node no worker has published, or one forgotten: a 404 of its own code (a client
    told it apart from an untracked directory by the message alone)."""

    code = "unknown_node"


class NotOnDisk(CacheError, LookupError):
    """The directory does not exist under the cache root: a 404."""

    code = "not_on_disk"


class Overlap(CacheError):
    """The directory contains, or is inside, a directory tracked on its own: a 409."""

    code = "overlap"


class BeingDeleted(CacheError):
    """A pin asked for a directory being deleted (or one above or inside it): a 409. Pin it
    again once the deletion is over: a new download there is registered anew."""

    code = "being_deleted"


class NodeAlive(CacheError):
    """A node asked to be forgotten still has a live worker, which would publish it again at
    its next heartbeat: a 409. Stop its workers first."""

    code = "node_alive"


class RecordCollision(CacheError):
    """Two paths with the same record id (records.record_id): the second is refused, a 409."""

    code = "record_id_collision"


# How a DeleteFailed's message starts: the record of a cleanup counts them by it.
DELETE_FAILED = "could not delete"


class DeleteFailed(CacheError):
    """A directory's files could not be deleted; it stays on the books: a 500 with a reason."""

    code = "delete_failed"


class StillLocked(CacheError):
    """A registration's or removal's directory stayed locked by another through every retry
    of its task: a 409."""

    code = "locked"


class RootMissing(CacheError):
    """The cache root is not a directory (an unmounted disk?): no pass runs, a 503. Passing
    over an empty root would untrack every directory as vanished."""

    code = "root_missing"


def root_missing(root: object, refused: str = "no cleanup or reconcile runs") -> str:
    """What a missing cache root means, said the same by a refused pass, a refused
    registration and the stats."""
    return (
        f"the cache root {str(root)!r} is not a directory (is the disk mounted?): {refused} "
        "until it is back"
    )
