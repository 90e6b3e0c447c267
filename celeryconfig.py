"""Celery configuration, read from the environment (the same variables as cachemgr's settings).

Broker and result backend default to REDIS_URL; JSON only; task events on so that Flower sees
every task; late acknowledgement for the idempotent tasks (set per task in workers/tasks.py);
the beat schedule sends `cachemgr.cleanup` every DISK_CACHE_CLEANUP_INTERVAL seconds.
"""

from __future__ import annotations

import os
import sys

from cachemgr.environment import beat_nodes, cluster_of, queue_override
from cachemgr.nodes import node_queue
from cachemgr.settings import Settings, SettingsError
from workers.urls import celery_env_urls, celery_url_problem

broker_url, result_backend = celery_env_urls()
if _url_problem := celery_url_problem(broker_url, result_backend):
    print(f"cachemgr stopping: {_url_problem}", file=sys.stderr)  # one line, exit 5 as below
    raise SystemExit(5)
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
# An hour, not Celery's day: every task's result is kept in Redis that long, and the books'
# Redis held a day of the pipeline's touches, pins and registrations (360-490 bytes each: 360
# MB at a million plays a day) for answers read within seconds, if at all.
result_expires = 3600
worker_send_task_events = True
task_send_sent_event = True
# No STARTED state and no extended results: each would cost one more write per task, and Flower
# gets names, arguments and results from the task events.
task_track_started = False
task_reject_on_worker_lost = True
broker_connection_retry_on_startup = True
# A Redis broker hands a dead worker's unacknowledged tasks to another after this long: ten
# minutes, well past a cleanup's time budget (60 s), not the hour a lost registration waited.
# A reconcile that runs longer is delivered twice and the second refused (ReconcileBusy).
broker_transport_options = {"visibility_timeout": 600}
# A Redis broker that refuses a command for a while (out of memory, read-only after a
# failover) is a channel error: retried as a lost connection is, not a worker stopped for good.
broker_channel_error_retry = True
worker_hijack_root_logger = False
# Celery's consumer, surviving a restart of its Redis broker (celery 5.7 stopped the worker).
worker_consumer = "workers.consumer:Consumer"
timezone = "UTC"

try:
    # Read and bounded as the settings read it (worded alike; the rest of the environment is
    # the workers' to check, not beat's).
    _only = {"DISK_CACHE_CLEANUP_INTERVAL": os.environ.get("DISK_CACHE_CLEANUP_INTERVAL", "")}
    _interval = Settings.from_env(_only, require_root=False).disk_cache_cleanup_interval
except SettingsError as exc:
    # One line, not a traceback (and no flood of cleanups from an interval of 0), with the
    # exit code of every other bad setting (5).
    print(f"cachemgr stopping: {exc}", file=sys.stderr)
    raise SystemExit(5) from None
_node = os.environ.get("DISK_CACHE_NODE", "")

# A named node's workers consume its own queue (and send continuations there); a single node
# keeps Celery's default queue, so a plain client that knows only a task name reaches it.
try:
    task_default_queue = queue_override() or node_queue(_node)
    cluster_of()  # beat reads it alone (workers/beat.py): checked as every process starts
except SettingsError as exc:
    print(f"cachemgr stopping: {exc}", file=sys.stderr)
    raise SystemExit(5) from None

# One beat can drive several nodes: DISK_CACHE_NODES=a,b sends each node's periodic cleanup
# to that node's queue. Without it, the cleanup goes to this process's default queue.
_targets = {node_queue(n): n for n in beat_nodes()} or {task_default_queue: ""}

# Follows each node's published queue at every send (workers/beat.py).
beat_scheduler = "workers.beat:NodeScheduler"
# Beat wakes at least this often, and renews its key in the books then (nodes.beat_alive).
beat_max_loop_interval = 30

beat_schedule = {
    f"cachemgr-periodic-cleanup{'-' + node if node else ''}": {
        "task": "cachemgr.cleanup",
        "schedule": float(_interval),
        "kwargs": {"periodic": True},
        # A cleanup that waits longer than an interval is stale: the next one will come.
        # Its result is read by none (the books' history keeps the outcome): not stored.
        "options": {"expires": float(_interval), "queue": queue, "ignore_result": True, "headers": {
            # Beat's own interval, which the node's stats then judge its cleanups by.
            "cachemgr_beat_interval": float(_interval),
        }},
    }
    for queue, node in _targets.items()
}
