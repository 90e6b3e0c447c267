"""Marshmallow schemas: the request arguments and response bodies of the REST API."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from cachemgr import checks
from cachemgr.errors import BadArgument
from cachemgr.pins import MAX_PIN_SECONDS
from cachemgr.stats import COUNTERS

MAX_WAIT_SECONDS = 60


class ApiErrorSchema(Schema):
    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True)
    status = fields.Integer(required=True)
    errors = fields.Dict(metadata={"description": "per-parameter problems, when there are any"})
    task_id = fields.String(metadata={"description": "a task that failed (code task_failed)"})
    state = fields.String(metadata={"description": "that task's state: FAILURE"})


ErrorSchema = ApiErrorSchema


# The counters are named once, in cachemgr.stats.COUNTERS: the schema is built from them, so
# mypy sees a variable, not a class (hence the ignore where StatsSchema derives from it).
SinceResetSchema = Schema.from_dict(
    {
        **{name: fields.Integer() for name in COUNTERS},
        "hit_ratio": fields.Float(allow_none=True),
        "byte_hit_ratio": fields.Float(allow_none=True),
        "reset_at": fields.String(allow_none=True),
    },
    name="SinceResetSchema",
)


def _one_of_them() -> fields.String:
    """A count's example, as last_cleanup gives one beside each count."""
    return fields.String(allow_none=True, metadata={"description": "one of them"})


class LastCleanupSchema(Schema):
    time = fields.Float(allow_none=True, metadata={"description": "when it started, epoch seconds"})
    status = fields.String(
        allow_none=True,
        metadata={
            "description": "done, failed, or resolved (refused for the root, which a reconcile "
            "has since checked or adopted)"
        },
    )
    duration_seconds = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    trash_left = fields.Integer(metadata={"description": "trash items it could not delete"})
    trash_kept = fields.Integer(
        metadata={"description": "directories a called-off deletion kept whole in the trash"}
    )
    delete_failed = fields.Integer(
        metadata={"description": "directories it chose and could not delete (kept on the books)"}
    )
    delete_failed_example = _one_of_them()
    untracked = fields.Integer(
        metadata={"description": "directories at the entry depth not on the books (beat's last)"}
    )
    untracked_example = _one_of_them()
    gone_kept = fields.Integer(
        metadata={
            "description": "tracked directories missing under a disk below the root that is not "
            "mounted, kept on the books (beat's last)"
        }
    )
    gone_kept_example = _one_of_them()
    gone_refused = fields.String(
        allow_none=True,
        metadata={"description": "why beat's last look untracked nothing (most were missing)"},
    )
    gone_error = fields.String(
        allow_none=True,
        metadata={"description": "why beat's last look for gone directories failed"},
    )
    stray_files = fields.Integer(
        metadata={
            "description": "files at or above the entry depth outside every download directory "
            "(beat's last)"
        }
    )
    stray_bytes = fields.Integer(metadata={"description": "the bytes those files hold"})
    stray_example = _one_of_them()
    unlisted = fields.Integer(
        metadata={"description": "directories above the entry depth that cannot be listed"}
    )
    unlisted_example = _one_of_them()
    unnamable = fields.Integer(
        metadata={"description": "directories whose names are not UTF-8 (cannot be booked)"}
    )
    unnamable_example = _one_of_them()
    unowned = fields.Integer(
        metadata={
            "description": "directories holding a .cachemgr-books marker that names no node of "
            "the cluster: counted and cleaned by no cache (beat's last)"
        }
    )
    unowned_example = _one_of_them()
    audit_error = fields.String(
        allow_none=True,
        metadata={
            "description": "why beat's last look for untracked directories and stray files "
            "failed: the counts above are from an earlier one"
        },
    )
    evict_short = fields.String(
        allow_none=True, metadata={"description": "what kept eviction above the threshold"}
    )
    periodic_time = fields.Float(
        allow_none=True, metadata={"description": "when beat's last periodic cleanup started"}
    )
    beat_interval = fields.Float(
        allow_none=True,
        metadata={"description": "the interval beat sends the node's cleanups at (its own)"},
    )


class StatsSchema(SinceResetSchema):  # type: ignore[valid-type,misc]
    node = fields.String()
    enabled = fields.Boolean()
    total_bytes = fields.Integer(required=True)
    directory_count = fields.Integer(required=True)
    unrecorded = fields.Integer(
        metadata={
            "description": "paths on cache:lru with no record (the seed's books): the next "
            "reconcile books them at their last access"
        }
    )
    max_bytes = fields.Integer(required=True)
    threshold_bytes = fields.Integer()
    target_bytes = fields.Integer()
    usage_percent = fields.Float(required=True)
    quota_status = fields.String(
        required=True, validate=validate.OneOf(["ok", "evicting", "over_quota"])
    )
    since_reset = fields.Nested(SinceResetSchema)
    pinned_count = fields.Integer()
    scheduler_running = fields.Boolean(required=True)
    periodic_overdue = fields.Boolean(
        metadata={"description": "beat's cleanups are late (two intervals without one)"}
    )
    beat_interval_seconds = fields.Integer(
        allow_none=True,
        metadata={
            "description": "the interval beat sends the cleanups at, as a live beat or its "
            "last cleanup said it (null: unknown; the workers' then stands)"
        },
    )
    beat_alive = fields.Boolean(
        metadata={"description": "a celery beat said within 90 s that it sends these cleanups"}
    )
    beat_missing = fields.Boolean(
        metadata={
            "description": "none did while they are due (the workers up for over 90 s; "
            "cleanups that come from a beat that never said so are judged by their lateness)"
        }
    )
    eviction_policy = fields.String(
        metadata={
            "description": "the policy cleanups evict by: the workers', or while the node's "
            "live workers run different ones, the one in force"
        }
    )
    ttl_seconds = fields.Integer()
    cleanup_interval_seconds = fields.Integer()
    free_disk_bytes = fields.Integer(allow_none=True)
    disk_bytes = fields.Integer(
        allow_none=True,
        metadata={"description": "the size of the filesystem holding the cache (this host's)"},
    )
    free_inodes = fields.Integer(allow_none=True)
    inodes = fields.Integer(
        allow_none=True,
        metadata={"description": "inodes of the filesystem holding the cache (none: no fixed "
                  "number, or another host's)"},
    )
    min_free_bytes = fields.Integer()
    initialized = fields.Boolean()
    last_cleanup = fields.Nested(LastCleanupSchema, allow_none=True)
    up = fields.Boolean(metadata={"description": "a worker of the node is alive"})
    last_cleanup_age_seconds = fields.Float(allow_none=True)
    evict_held_until = fields.Float(
        allow_none=True,
        metadata={"description": "epoch seconds: periodic and automatic eviction waits until"},
    )
    cluster = fields.Dict(metadata={"description": "totals over every node"})
    nodes = fields.List(fields.Dict(), metadata={"description": "each node's own stats"})
    warnings = fields.List(
        fields.String(), metadata={"description": "what an operator should look at, in words"}
    )


class LeaseSchema(Schema):
    holder = fields.String(allow_none=True, metadata={"description": "null: none named"})
    until = fields.String(required=True, metadata={"format": "date-time"})
    path = fields.String(
        required=True,
        metadata={"description": "where the lease is: the directory, or a path above or inside it"},
    )


class DirectorySchema(Schema):
    path = fields.String(required=True)
    size_bytes = fields.Integer(required=True)
    file_count = fields.Integer(required=True)
    registered_at = fields.String(required=True, metadata={"format": "date-time"})
    last_access = fields.String(required=True, metadata={"format": "date-time"})
    expires_at = fields.String(required=True, metadata={"format": "date-time"})
    hits = fields.Integer()
    pinned_until = fields.String(allow_none=True, metadata={"format": "date-time"})
    holders = fields.List(
        fields.Nested(LeaseSchema),
        metadata={"description": "the leases in force on it, above it or inside it, latest first"},
    )


class DirectoryListSchema(Schema):
    directories = fields.List(fields.Nested(DirectorySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class TaskSchema(Schema):
    task_id = fields.String(required=True)
    state = fields.String(required=True)
    status_url = fields.String()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    warning = fields.String(metadata={"description": "no worker of the node is alive"})


class ForgottenSchema(Schema):
    node = fields.String(required=True)
    forgotten = fields.Boolean(required=True)


class SchedulerSchema(Schema):
    scheduler_running = fields.Boolean(required=True)


def _typed(what: str) -> fields.Raw:
    """An event's number or flag (events.typed), passed through: one written otherwise, by
    an older version, stays the string it was rather than fail the whole list."""
    return fields.Raw(metadata={"description": what})


class EventSchema(Schema):
    id = fields.String()
    event = fields.String()
    path = fields.String()
    size = _typed("bytes (an integer)")
    time = _typed("epoch seconds (a number)")
    files_deleted = _typed("whether its files were deleted (a boolean)")
    error = fields.String()
    # eviction_short: usage after the pass, and what it had to leave
    usage_after = _typed("bytes (an integer)")
    pinned = _typed("an integer")
    locked = _typed("an integer")
    young = _typed("an integer")
    undeletable = _typed("an integer")
    disk_short = _typed("bytes the disk still lacked (an integer)")
    # policy_switched: the policy before, the one now, and how many directories it took over
    previous = fields.String()
    policy = fields.String()
    carried = _typed("an integer")


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema), required=True)


def _node(value: str) -> None:
    # Whole: marshmallow's Regexp matches with `$`, which took "vm\n" (then an unknown node).
    if not checks.NODE_NAME.fullmatch(value):
        raise ValidationError(checks.NODE_NAME_RULE)


NODE_PATTERN = f"^{checks.NODE_NAME.pattern}$"  # as documented (JSON Schema's pattern)
NODE_PARAMETER = {
    "in": "path",
    "name": "name",
    "schema": {"type": "string", "pattern": NODE_PATTERN},
    "description": "the node's name",
}


class NoArgs(Schema):
    """A route that takes no argument: an unknown one is a 400 naming it, as elsewhere."""


class NodeArgs(Schema):
    node = fields.String(
        load_default=None,
        validate=_node,
        metadata={
            "description": "the cache node (default: this API's own)",
            "pattern": NODE_PATTERN,
        },
    )


class WaitArgs(NodeArgs):
    wait = fields.Float(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_WAIT_SECONDS),
        metadata={"description": f"seconds to wait for the task (at most {MAX_WAIT_SECONDS})"},
    )


class ListArgs(NodeArgs):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, allow_none=True)


class RemoveArgs(WaitArgs):
    remove_files = fields.Boolean(load_default=False)


class DryRunArgs(WaitArgs):
    dry_run = fields.Boolean(load_default=False)


class ReconcileArgs(DryRunArgs):
    force = fields.Boolean(
        load_default=False,
        metadata={"description": "go on over an empty root while directories are tracked"},
    )


def _holder(value: str) -> None:
    """The domain's rule for a holder's name (checks.holder), as a 400 before anything is sent."""
    try:
        checks.holder(value)
    except BadArgument as exc:
        raise ValidationError(str(exc)) from None


class UnpinArgs(WaitArgs):
    holder = fields.String(
        validate=[validate.Length(min=1, max=checks.MAX_HOLDER), _holder],
        metadata={
            "description": f"whose lease (a stream's id, 1-{checks.MAX_HOLDER} printable "
            "characters, not all blank); none: anyone's",
            "pattern": r"\S",
        },
    )


class PinArgs(UnpinArgs):
    ttl_seconds = fields.Integer(
        load_default=3600, validate=validate.Range(min=1, max=MAX_PIN_SECONDS)
    )


class EventArgs(NodeArgs):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10000))
