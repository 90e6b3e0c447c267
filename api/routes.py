"""The seed's endpoints under /cache: reads straight from Redis, writes enqueued as tasks."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import redis
from celery.result import AsyncResult
from flask import request, url_for
from flask.views import MethodView as FlaskMethodView

from api.arguments import CacheBlueprint
from api.errors import STATUS_BY_NAME, body, redis_unavailable
from api.extensions import answered, cache, let_go, state, this_app, this_request
from api.schemas import (
    NODE_PARAMETER,
    DirectoryListSchema,
    DirectorySchema,
    DryRunArgs,
    ErrorSchema,
    EventArgs,
    EventListSchema,
    ForgottenSchema,
    ListArgs,
    NoArgs,
    NodeArgs,
    PinArgs,
    ReconcileArgs,
    RemoveArgs,
    SchedulerSchema,
    SinceResetSchema,
    StatsSchema,
    TaskSchema,
    UnpinArgs,
    WaitArgs,
)
from cachemgr import DiskCache, journal, listing, mounts, paths
from cachemgr import events as event_log
from cachemgr.cleanup import cleanup as cleanup_plan
from cachemgr.nodes import no_worker, route_of
from workers.client import holder_kwargs
from workers.results import TaskResult


class MethodView(FlaskMethodView):
    """The views keep nothing between calls: one instance serves every request (Flask made
    one per request, a tenth of the Python of a `GET /cache/stats`)."""

    init_every_request = False

    def dispatch_request(self, **kwargs: Any) -> Any:
        """Flask's, reading the request and the app once (see api.extensions.this_app)."""
        method = this_request().method
        meth = getattr(self, method.lower(), None)
        if meth is None and method == "HEAD":
            meth = getattr(self, "get", None)
        assert meth is not None, f"Unimplemented method {method!r}"
        return this_app().ensure_sync(meth)(**kwargs)


blp = CacheBlueprint("cache", __name__, url_prefix="/cache", description="Cache status and control")
# Schemas are passed as instances: webargs would build a class anew on every request.
ARGS = {"location": "query", "error_status_code": 400}


@blp.before_request
def utf8_path() -> Any:
    """Refuse a path whose percent-encoding is not UTF-8: werkzeug makes `%ff` into U+FFFD,
    another path than the one the client named, and one no directory on disk has."""
    environ = this_request().environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if "%" not in raw:
        # Nothing percent-encoded (most requests), or a server that keeps no raw URI, where
        # werkzeug's own decoding stands.
        return None
    try:
        unquote_to_bytes(raw.partition("?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        return body(400, "bad_path", "the path is not valid UTF-8 once percent-decoded")
    return None


def empty_path() -> Any:
    """`POST /cache/register/`, `DELETE /cache/directories/`: no route takes an empty path,
    and a 404 "not found" told the client nothing of what was wrong."""
    return body(400, "bad_path", f"empty path in {request.path!r}: name a directory under the root")


def prepared(data: dict[str, Any]) -> Any:
    """JSON of a dict the domain already shaped as its schema says, without the schema's dump:
    on the hottest reads that dump cost a quarter of the request. tests/test_schemathesis.py
    checks every reply against the OpenAPI schema."""
    return this_app().json.response(data)


def task_reply(result: AsyncResult, wait: float) -> Any:
    """202 with the task's id and status URL; with ?wait, the result once it is there."""
    reply: dict[str, Any] = {
        "task_id": result.id,
        "state": "PENDING",
        "status_url": url_for("cache.Task", task_id=result.id, _external=False),
    }
    if wait <= 0:
        return reply, 202
    if not answered(result, wait):
        reply["state"] = result.state  # RETRY: behind another's lock, sent again once it lapses
        let_go(result)
        return reply, 202
    value = result.get(propagate=False)
    reply["state"] = result.state
    if result.failed():
        error = result.result
        status = STATUS_BY_NAME.get(type(error).__name__, 500)
        return body(status, "task_failed", str(error), task_id=result.id, state=result.state)
    reply["result"] = value
    return reply, 200


def node_cache(args: dict[str, Any]) -> DiskCache:
    """The DiskCache of the node the request names (`?node=`), this API's own by default."""
    return cache().for_node(args.get("node"))


def send(args: dict[str, Any], name: str, *task_args: Any, **task_kwargs: Any) -> Any:
    """Enqueue a task on the queue of the node the request names."""
    tasks, own, node = state().tasks, cache(), args.get("node")
    if tasks.shares_books_server:
        # A hung Redis is said (503) in the 5 s the books' client waits: Celery's own
        # connections to it waited 25 s, and gunicorn killed the request first (HTML 500).
        own.client.ping()
    if not node or node == own.settings.node:
        queue, target = tasks.queue, own
    else:  # the queue the node's workers published (CACHEMGR_QUEUE may override its own)
        entries = own.registry.entries()  # read once: for the node's settings and its queue
        target = own.for_node(node, entries)
        queue = route_of(node, entries).queue
    try:
        alive = target.registry.alive(target.keys)
    except redis.RedisError:  # the books away, the broker not: queued, run once they answer
        alive = True
    result = tasks.send_to(queue, name, *task_args, **task_kwargs)
    if alive:
        return task_reply(result, args["wait"])
    # Queued all the same (a worker restarting, the few seconds before one announces itself:
    # refused, a fire-and-forget registration was lost), answered at once, and said: it had
    # waited the whole ?wait, then answered 202 PENDING, as if a worker had it.
    reply, status = task_reply(result, 0)
    reply["warning"] = (
        f"{no_worker(target.settings.node)}: the task waits in the queue and runs when one "
        "starts (celery -A workers.app worker)"
    )
    return reply, status


def checked(path: str, target: DiskCache) -> tuple[str, bool]:
    """Refuse a bad path with a 400 before anything is enqueued: one that cannot be a
    download's (the root's own lost+found, a trash) is neither registered nor deleted. With
    whether this process's disk is the workers' own to look at (`here`)."""
    rel = paths.normalize(path)
    # An API whose DISK_CACHE_ROOT is not the workers' answered 404 for their downloads.
    try:
        elsewhere = target.root_elsewhere()
    except redis.RedisError:  # the books away, the broker not: judged here, and queued
        elsewhere = None
    here = target.local and elsewhere is None
    # By name alone here: the mounts and the node registry are the workers' to judge (this
    # host's mounts say nothing of another's; the books may be away while the broker is not).
    depth = target.settings.disk_cache_entry_depth
    own = mounts.root_own(target.root, rel, depth) if here else paths.root_own(rel)
    if own is not None:
        raise paths.PathError(own)
    if elsewhere is None:
        paths.resolve(target.root, rel)
    return rel, here


@blp.route("/stats")
class Stats(MethodView):
    @blp.lean
    @blp.arguments(NodeArgs(), **ARGS)
    @blp.response(200, StatsSchema)
    @blp.alt_response(503, schema=ErrorSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Usage statistics: this node's, every node's (`nodes`) and their totals (`cluster`);
        with ?node=, that node's alone."""
        if args["node"]:
            return prepared(node_cache(args).stats())
        return prepared(cache().cluster_stats())


@blp.route("/stats/reset")
class StatsReset(MethodView):
    @blp.arguments(NodeArgs(), **ARGS)
    @blp.response(200, SinceResetSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Start the "since reset" figures afresh (hits, misses, bytes, ratios)."""
        return node_cache(args).reset_stats()


@blp.route("/directories")
class Directories(MethodView):
    @blp.arguments(ListArgs(), **ARGS)
    @blp.response(200, DirectoryListSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Cached directories by last access, newest first, a page at a time."""
        try:
            acting = node_cache(args).enforcing()  # expiry by the workers' TTL
            # `?cursor=` (README's own first page) is none: the start
            entries, cursor = listing.page(acting.store, args["limit"], args["cursor"] or None)
        except ValueError as exc:
            return body(400, "bad_parameter", str(exc))
        now = acting.clock()
        return {"directories": [e.to_dict(now) for e in entries], "next_cursor": cursor}


@blp.route("/directories/<path:path>")
class Directory(MethodView):
    @blp.lean
    @blp.arguments(NodeArgs(), **ARGS)
    @blp.response(200, DirectorySchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    def get(self, args: dict[str, Any], path: str) -> Any:
        """One cached directory."""
        return prepared(node_cache(args).info(path).to_dict())

    @blp.arguments(RemoveArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    def delete(self, args: dict[str, Any], path: str) -> Any:
        """Remove a directory from tracking, and from disk with ?remove_files=true."""
        target = node_cache(args)
        # Untracking alone looks at no disk (DiskCache.remove): an entry whose parent became a
        # symlink, which every cleanup fails to delete, could not be untracked here.
        rel = checked(path, target)[0] if args["remove_files"] else paths.normalize(path)
        try:
            journal.check_removable(target.store, rel)
        except redis.RedisError as exc:
            if not redis_unavailable(exc):
                raise
            # The books away, the broker not: queued as every other write is (it was the one
            # 503), for the worker to judge once Redis is back.
        return send(args, "remove_directory", rel, args["remove_files"])


@blp.route("/directories/<path:path>/pin")
class Pin(MethodView):
    @blp.arguments(PinArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    def post(self, args: dict[str, Any], path: str) -> Any:
        """Pin a directory for ttl_seconds: it is neither evicted nor expired meanwhile."""
        # A file in a tracked album pins the album: the workers judge what is on the disk.
        rel = checked(path, node_cache(args))[0]
        ttl, who = args["ttl_seconds"], holder_kwargs(args.get("holder"))
        return send(args, "pin_directory", rel, ttl, **who)

    @blp.arguments(UnpinArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    def delete(self, args: dict[str, Any], path: str) -> Any:
        """End a holder's lease on a directory (?holder=), or every lease on it."""
        rel = paths.normalize(path)  # a lease is Redis's alone: no disk to look at
        # `DELETE .../Artist/pin`, meant to remove the album `pin`, ended every lease on
        # `Artist` (a stream's among them) and answered 200. With ?holder= it is an unpin.
        if not args.get("holder") and _tracked(node_cache(args), f"{rel}/pin"):
            raise paths.PathError(
                f"ambiguous: {rel + '/pin'!r} is a tracked directory, and this URL also ends "
                f"every lease on {rel!r}: DELETE /cache/directories/{rel}/pin/ (a trailing "
                f"slash) removes the directory; with ?holder= it ends that holder's lease on "
                f"{rel!r}; `cachemgr unpin {rel}` ends every lease on it"
            )
        return send(args, "unpin_directory", rel, **holder_kwargs(args.get("holder")))


def _tracked(target: DiskCache, path: str) -> bool:
    try:
        return target.store.tracked([path])[0]
    except redis.RedisError:  # the books away, the broker not: the unpin is queued, as ever
        return False


@blp.route("/register/<path:path>")
class Register(MethodView):
    @blp.arguments(WaitArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    def post(self, args: dict[str, Any], path: str) -> Any:
        """Register a directory under the cache root."""
        target = node_cache(args)
        rel, here = checked(path, target)
        # Another host's root is checked by that node's worker, and so is a directory this
        # process may not inspect (a root of the workers' user): a 400 blamed the path.
        if here and target.root.is_dir() and paths.kind_at(target.root, rel) != "unknown":
            paths.existing_directory(target.root, rel)
        return send(args, "register_directory", rel)


@blp.route("/cleanup")
class Cleanup(MethodView):
    @blp.arguments(DryRunArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Sweep expired directories, then enforce the quota. ?dry_run=true answers the plan."""
        if args["dry_run"]:
            target = node_cache(args)
            if not target.local:  # its disk is not here (nor, maybe, its root): its workers plan
                return send(args, "cleanup", dry_run=True)
            # With the quota and policy the workers enforce, as the real run will.
            plan = cleanup_plan(target.acting()[0], dry_run=True)
            return {"task_id": "", "state": "SUCCESS", "result": plan}, 200
        return send(args, "cleanup")


@blp.route("/reconcile")
class Reconcile(MethodView):
    @blp.arguments(ReconcileArgs(), **ARGS)
    @blp.response(202, TaskSchema)
    @blp.alt_response(200, schema=TaskSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Compare the books with the disk and fix them (or, with ?dry_run=true, report).
        ?force=true goes on over an empty root (the downloads were removed on purpose)."""
        return send(args, "reconcile", dry_run=args["dry_run"], force=args["force"])


@blp.route("/start-scheduler")
class StartScheduler(MethodView):
    @blp.arguments(NodeArgs(), **ARGS)
    @blp.response(200, SchedulerSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Let periodic cleanups run (the switch lives in Redis; no restart needed)."""
        return node_cache(args).set_scheduler(True)


@blp.route("/stop-scheduler")
class StopScheduler(MethodView):
    @blp.arguments(NodeArgs(), **ARGS)
    @blp.response(200, SchedulerSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Make periodic cleanups, and the evictions registrations trigger, skip; manual
        cleanups still run."""
        return node_cache(args).set_scheduler(False)


@blp.route("/nodes/<name>", parameters=[NODE_PARAMETER])
class Node(MethodView):
    # No arguments: `?dry_run=true` forgot the node, as every unknown one was taken.
    @blp.arguments(NoArgs(), **ARGS)
    @blp.response(200, ForgottenSchema)
    @blp.alt_response(400, schema=ErrorSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    @blp.alt_response(409, schema=ErrorSchema)
    def delete(self, _: dict[str, Any], name: str) -> Any:
        """Forget a node taken out of service: it leaves the stats, metrics and alerts; its
        books stay in Redis. Refused (409) while a worker of it is up."""
        return cache().registry.forget(name)


@blp.route("/tasks/<task_id>")
class Task(MethodView):
    @blp.arguments(NoArgs(), **ARGS)
    @blp.response(200, TaskSchema)
    def get(self, _: dict[str, Any], task_id: str) -> Any:
        """A task's state and, once it is done, its result. Celery answers PENDING for an id
        it never saw, or whose result expired (after an hour), as for a task still queued."""
        # Ours, not Celery's: a result backend away is said as such (503 backend_unavailable),
        # not as the books' Redis.
        result = TaskResult(task_id, app=state().tasks.app)
        reply: dict[str, Any] = {"task_id": task_id, "state": result.state}
        if result.failed():
            reply["error"] = str(result.result)
        elif result.successful():
            reply["result"] = result.result
        return reply


@blp.route("/events")
class Events(MethodView):
    @blp.arguments(EventArgs(), **ARGS)
    @blp.response(200, EventListSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """The latest evictions, expiries, removals and failed cleanups, newest first."""
        return {"events": event_log.latest(node_cache(args).store, args["limit"])}
