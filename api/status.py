"""`GET /`: the status page, for a person at a glance (a phone will do).

Rendered on the server from the same reads as `/cache/stats` (so the page and the API never
disagree), with charts drawn as inline SVG from the counter samples each cleanup pushes to
`cache:history`. No CDN and no outside request: the CSS and the small script are served from
api/static; the page works without the script, which only keeps times relative and, when asked,
refreshes the page in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis
from flask import Blueprint, current_app, render_template

from api.arguments import query
from api.errors import redis_unavailable
from api.extensions import cache
from api.humanize import human_bytes, human_count, human_duration, percent
from api.schemas import NodeArgs
from cachemgr import DiskCache, listing
from cachemgr import events as event_log
from cachemgr import history as cleanup_history
from cachemgr.logs import printable
from cachemgr.records import Entry, iso, number

bp = Blueprint("status", __name__)

TOP = 8  # rows in each directory table
EVENTS = 10
# The largest directories need a full scan of the records (there is no index by size): bounded,
# so that the page stays quick on a cache of millions; the page says when it was cut short.
SCAN_LIMIT = 100_000
CHART_W, CHART_H = 320, 96
PAD_X, PAD_Y = 2, 6


def ago(ts: float | None, now: float) -> str:
    """Server-side text for a <time>; status.js keeps it current while the page stays open."""
    if ts is None:
        return "never"
    delta = now - ts
    if abs(delta) < 5:
        return "just now"
    # Whole seconds, as status.js writes them: the text must not change style on its first tick.
    text = f"{abs(delta):.0f} s" if abs(delta) < 60 else human_duration(abs(delta))
    return f"{text} ago" if delta > 0 else f"in {text}"


# -- charts ---------------------------------------------------------------------------------
@dataclass
class Chart:
    """An inline SVG line chart: polylines (a gap where a value is missing), guides, dots."""

    segments: list[str]
    area: str
    guides: list[dict[str, Any]]
    points: list[dict[str, Any]]
    width: int = CHART_W
    height: int = CHART_H

    @property
    def empty(self) -> bool:
        return not self.points


def _y(value: float, lo: float, hi: float) -> float:
    span = (hi - lo) or 1.0
    return round(PAD_Y + (CHART_H - 2 * PAD_Y) * (1 - (value - lo) / span), 1)


def chart(
    times: list[float],
    values: list[float | None],
    *,
    lo: float,
    hi: float,
    guides: dict[str, float] | None = None,
    label: Any = str,
) -> Chart:
    n = len(values)
    step = (CHART_W - 2 * PAD_X) / max(n - 1, 1)
    segments: list[str] = []
    current: list[str] = []
    points: list[dict[str, Any]] = []
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if v is None or not math.isfinite(v):
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        x = round(PAD_X + i * step if n > 1 else CHART_W / 2, 1)
        y = _y(min(max(v, lo), hi), lo, hi)
        current.append(f"{x},{y}")
        points.append({"x": x, "y": y, "title": f"{label(v)} · {iso(t)}"})
    if current:
        segments.append(" ".join(current))
    # The area under the longest run, for a little weight under the line.
    area = ""
    if segments:
        longest = max(segments, key=lambda s: s.count(" "))
        xs = [p.split(",")[0] for p in longest.split(" ")]
        bottom = CHART_H - PAD_Y
        area = f"M{xs[0]},{bottom} L{longest.replace(' ', ' L')} L{xs[-1]},{bottom} Z"
    lines = [
        {"name": name, "y": _y(v, lo, hi), "label": label(v)}
        for name, v in (guides or {}).items()
        if lo <= v <= hi
    ]
    return Chart(segments, area, lines, points)


def history(disk_cache: DiskCache) -> list[dict[str, Any]]:
    return cleanup_history.samples(disk_cache)


# -- directories ----------------------------------------------------------------------------
def largest(disk_cache: DiskCache, n: int = TOP) -> tuple[list[Entry], bool]:
    """The n largest tracked directories, and whether the scan was cut at SCAN_LIMIT."""
    return listing.largest(disk_cache.store, n, SCAN_LIMIT)


def page_context(disk_cache: DiskCache, flower_url: str) -> dict[str, Any]:
    now = disk_cache.clock()
    stats = disk_cache.cluster_stats()  # this node's, with what is wrong on the others
    s = disk_cache.settings
    samples = history(disk_cache)
    times = [float(x["time"]) for x in samples]
    ratios = cleanup_history.interval_ratios(samples)
    max_bytes = stats["max_bytes"]
    scale = max(max_bytes, stats["total_bytes"])  # over quota, the bar still fits
    # The samples, then usage now: the chart ends where the bar beside it stands.
    usage_times = [*times, now]
    usage_values: list[float | None] = [float(x.get("total_bytes", 0)) for x in samples]
    usage_values.append(float(stats["total_bytes"]))
    usage_hi = float(max([max_bytes, *(v or 0 for v in usage_values)]))
    last = stats.get("last_cleanup") or {}
    last_time = last.get("time")
    # Beat's schedule runs from its own last run: the quota passes that registrations trigger
    # also record `time`, and would push "next" ever later while beat stays down.
    periodic_time = last.get("periodic_time")
    # Beat's own, where it says it (it may not be the workers'), as the overdue check.
    interval = int(stats.get("beat_interval_seconds") or stats["cleanup_interval_seconds"])
    running = bool(stats["scheduler_running"])
    events = event_log.latest(disk_cache.store, EVENTS)
    for event in events:
        event["at"] = number(event.get("time"))
        event["size_bytes"] = int(event["size"]) if str(event.get("size", "")).isdigit() else None
    big, cut = largest(disk_cache)
    return {
        "stats": stats,
        "now": now,
        "generated_at": iso(now),
        "flower_url": flower_url,
        "bar": {
            "fill": 100.0 * stats["total_bytes"] / scale,
            "target": 100.0 * stats["target_bytes"] / scale,
            "threshold": 100.0 * stats["threshold_bytes"] / scale,
            "max": 100.0 * max_bytes / scale,
        },
        "ratio_chart": chart(
            times[1:],
            ratios,
            lo=0.0,
            hi=1.0,
            guides={"50 %": 0.5},
            label=percent,
        ),
        "usage_chart": chart(
            usage_times if samples else [],
            usage_values if samples else [],
            lo=0.0,
            hi=usage_hi,
            guides={
                "threshold": float(stats["threshold_bytes"]),
                "target": float(stats["target_bytes"]),
            },
            label=human_bytes,
        ),
        "usage_top": usage_hi,
        "samples": len(samples),
        "first_sample": times[0] if times else None,
        "last_sample": times[-1] if times else None,
        "largest": big,
        "largest_cut": cut,
        "scan_limit": SCAN_LIMIT,
        "stalest": listing.stalest(disk_cache.store, TOP, ttl=int(stats["ttl_seconds"])),
        "events": events,
        # The same judgement as the stats' warning (cachemgr.health.overdue).
        "overdue": periodic_time is not None and bool(stats.get("periodic_overdue")),
        "cleanup": {
            "time": last_time,
            "periodic_time": periodic_time,
            "status": last.get("status"),
            "duration": last.get("duration_seconds"),
            "error": last.get("error") or "",
            "interval": interval,
            "max_evictions": s.disk_cache_max_evictions_per_run,
            "next": periodic_time + interval if periodic_time is not None and running else None,
        },
    }


@bp.app_template_filter("bytes")
def _bytes_filter(n: float | None) -> str:
    return human_bytes(n)


@bp.app_template_filter("count")
def _count_filter(n: float | None) -> str:
    return human_count(n)


@bp.app_template_filter("percent")
def _percent_filter(ratio: float | None, digits: int = 1) -> str:
    return percent(ratio, digits)


@bp.app_template_filter("shown")
def _shown_filter(name: str | None) -> str:
    """A name read off the disk: a newline or a bidirectional override (U+202E showed
    "x\u202etxt.exe" as "xexe.txt") as an escape; autoescape takes care of the HTML."""
    return printable(name or "")


@bp.app_template_filter("duration")
def _duration_filter(seconds: float | None) -> str:
    return human_duration(seconds)


@bp.app_template_filter("iso")
def _iso_filter(ts: float | None) -> str:
    return iso(ts) or ""


@bp.app_template_global("ago")
def _ago(ts: float | None, now: float | None = None) -> str:
    return ago(ts, cache().clock() if now is None else now)


@bp.get("/")
def index() -> Any:
    """The status page: this API's node, or `?node=`'s (a 404 for a node nobody published)."""
    flower = current_app.config.get("FLOWER_URL") or ""
    node = query(NodeArgs)["node"]
    try:
        ctx = page_context(cache().for_node(node), flower)
    except redis.RedisError as exc:
        if not redis_unavailable(exc):
            raise
        # A person gets a page that says what is wrong, not the API's JSON error body.
        page = render_template("status_down.html", error=str(exc), flower_url=flower)
        return page, 503
    # Its figures' links name the node too: they opened this API's own node's.
    return render_template("status.html", **ctx, node_args={"node": node} if node else {})
