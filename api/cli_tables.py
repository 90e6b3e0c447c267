"""The CLI's tables, for a person at a terminal (JSON otherwise: api/cli.py's `emit`)."""

from __future__ import annotations

from typing import Any

import click

from api.humanize import counted, human_bytes, percent
from cachemgr.logs import printable
from cachemgr.records import Entry


def line(text: str) -> None:
    """One line of a table: a directory's name read off the disk (an escape sequence, a
    newline) is shown escaped, not let loose on the terminal."""
    click.echo(printable(text))


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def last_cleanup_rows(last: dict[str, Any] | None, now: float) -> list[tuple[str, str]]:
    """The last cleanup as the stats table shows it: status, how long ago, its error; the
    stray files it counted, which warn only once they hold 1% of the quota."""
    if not last:
        return [("last cleanup", "none yet")]
    said = [str(last.get("status") or "unknown")]
    if last.get("time") is not None:
        said.append(f"{human_age(max(0.0, now - last['time']))} ago")
    if last.get("error"):
        said.append(str(last["error"]))
    rows = [("last cleanup", ", ".join(said))]
    if last.get("stray_files"):
        stray = f"{last['stray_files']} ({human_bytes(last.get('stray_bytes'))})"
        rows.append(("stray files", f"{stray}, e.g. {last.get('stray_example')}"))
    return rows


def entry_rows(entries: list[Entry], now: float) -> None:
    line(f"{'SIZE':>10}  {'FILES':>5}  {'HITS':>5}  {'IDLE':>6}  PATH")
    for e in entries:
        pin = "  (pinned)" if e.pinned(now) else ""
        line(
            f"{human_bytes(e.size_bytes):>10}  {e.file_count:>5}  {e.hits:>5}  "
            f"{human_age(now - e.last_access):>6}  {e.path}{pin}"
        )


def kv(data: dict[str, Any]) -> None:
    for k, v in data.items():
        line(f"{k:<14} {v}")


def hits_and_misses(c: dict[str, Any]) -> str:
    """Hits and misses by directories and by bytes, with both ratios."""
    return (
        f"{c['hits']} / {c['misses']} ({percent(c['hit_ratio'])} of requests), "
        f"{human_bytes(c['hit_bytes'])} / {human_bytes(c['missed_bytes'])} "
        f"({percent(c['byte_hit_ratio'])} of bytes)"
    )


def plan_table(result: dict[str, Any]) -> None:
    for part in ("sweep", "evict"):
        p = result.get(part) or {}
        verb = "would free" if p.get("dry_run") else "freed"
        line(
            f"{part}: {counted(p.get('count', 0), 'directory')}, {verb} "
            f"{human_bytes(p.get('bytes_freed', 0))}, "
            f"usage {human_bytes(p.get('usage_before'))} -> "
            f"{human_bytes(p.get('usage_after'))}"
        )
        for r in p.get("plan", []):
            line(
                f"  {r['reason']:<8} {human_bytes(r['size_bytes']):>10}  "
                f"-> {human_bytes(r['usage_after']):>10}  {r['path']}"
            )
        for why in ("pinned", "locked", "young", "changed"):
            if p.get(f"skipped_{why}"):
                line(f"  skipped ({why}): {', '.join(p[f'skipped_{why}'])}")
        if p.get("vanished"):
            line(f"  gone from disk already, untracked: {', '.join(p['vanished'])}")
    if result.get("policy_switch_pending"):
        line(
            "policy switch pending: this plan goes by the policy still in force; the next real "
            "cleanup switches first (the new policy's structures built from the records), and "
            "its evictions may differ"
        )
    if result.get("policy_held"):
        line(
            f"the node's live workers run different eviction policies: cleanups act by "
            f"{result['policy_held']}, the one in force, until they agree"
        )
    if result.get("policy_rebuilt"):
        line("policy structures rebuilt from the records (see `cachemgr events`)")


def stats_table(s: dict[str, Any], now: float) -> None:
    """`cachemgr stats` at a terminal."""
    recent = s["since_reset"]
    rows = [
        ("node", s["node"]),
        ("usage", f"{human_bytes(s['total_bytes'])} of {human_bytes(s['max_bytes'])} "
                  f"({s['usage_percent']}%), {s['quota_status']}"),
        ("watermarks", f"evict above {human_bytes(s['threshold_bytes'])}, "
                       f"down to {human_bytes(s['target_bytes'])}"),
        ("directories", s["directory_count"]),
        ("hits / misses", hits_and_misses(s)),
        *([("  since reset", hits_and_misses(recent)), ("  reset at", recent["reset_at"])]
          if recent.get("reset_at") else []),
        ("evictions", s["evictions"]),
        ("expirations", s["expirations"]),
        ("bytes freed", human_bytes(s["bytes_freed"])),
        ("pinned", s["pinned_count"]),
        ("policy", s["eviction_policy"]),
        ("scheduler", "running" if s["scheduler_running"] else "stopped"),
        *last_cleanup_rows(s.get("last_cleanup"), now),
        *([("nodes", ", ".join(f"{n['node']} {'up' if n['up'] else 'down'}" for n in nodes))]
          if len(nodes := s.get("nodes") or []) > 1 else []),
    ]  # fmt: skip
    for label, value in rows:
        line(f"{label:<20} {value}")
    for warning in s.get("warnings", []):
        click.secho(printable(f"warning: {warning}"), fg="yellow")
