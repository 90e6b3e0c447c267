"""Figures on the books in Redis: flatness of access, sweep and eviction, memory, the seed's walk.

Each size lives in its own Redis database of the bench's server, so that the small side's
keyspace is really small, and both sides are measured in alternating rounds.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core import (
    Sizes,
    commandstats,
    commandstats_delta,
    evalsha_payload,
    full_walk_calls,
    median,
    path40,
    rate,
    ratio,
    side_by_side,
    timed,
)
from bench.infra import RedisServer, pipe_commands
from cachemgr import DiskCache, Settings, connect, passes
from workers.client import CacheClient

TTL = 86400
SIZE = 4096  # booked bytes of every bench entry: the eviction takes exactly `batch` of them
FILL_CHUNK = 50_000


@dataclass
class Side:
    """One size of cache: its database, its DiskCache and how many filler entries it holds."""

    name: str
    db: int
    n: int
    cache: DiskCache
    url: str
    planted: int = 0  # rounds of planted entries so far, for unique paths

    def tag(self, kind: str) -> str:
        self.planted += 1
        return f"{kind}{self.planted}"


@dataclass
class Findings:
    figures: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    walks: dict[str, int] = field(default_factory=dict)  # phase -> KEYS/SCAN calls seen
    slowlog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # phase -> entries

    def take_slowlog(self, phase: str, client: Any) -> None:
        """Keep the SLOWLOG (commands over 10 ms) of a phase, and start the next one empty."""
        entries = []
        for e in client.slowlog_get(128):
            command = e["command"]
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            entries.append({"ms": e["duration"] / 1000, "command": str(command)[:100]})
        client.slowlog_reset()
        self.slowlog[phase] = entries


def make_cache(url: str, root: Path, client: Any = None, **changes: Any) -> DiskCache:
    values: dict[str, Any] = {
        "disk_cache_root": str(root),
        "redis_url": url,
        "disk_cache_ttl_seconds": TTL,
        "disk_cache_max_bytes": 1 << 50,
        **changes,
    }
    settings = Settings(**values).validate()
    return DiskCache(settings, client if client is not None else connect(url))


def fill(redis_server: RedisServer, side: Side, *, now: float) -> float:
    """Register `side.n` entries (last access spread over the past TTL/2) via redis-cli --pipe.

    Returns the seconds it took. Each command is the one Store.register sends.
    """
    store = side.cache.store

    def send(client: Any, path: str, size: int, files: int, when: float) -> Any:
        return store.register(path, size, files, now=when, pipeline=client)

    store.register(path40("f", 0), SIZE, 2, now=now - TTL / 2)  # loads the script (its SHA)
    started = time.perf_counter()
    span = TTL / 2
    for lo in range(0, side.n, FILL_CHUNK):
        hi = min(side.n, lo + FILL_CHUNK)
        items = (
            (path40("f", i), SIZE, 2, now - span + span * i / side.n) for i in range(lo, hi)
        )
        replies = pipe_commands(redis_server.port, side.db, evalsha_payload(send, items))
        if replies != hi - lo:
            raise RuntimeError(f"fill: {replies} replies for {hi - lo} registrations")
    seconds = time.perf_counter() - started
    tracked = store.count_entries()
    if tracked != side.n:  # a script that refused (e.g. a new argument) still replies
        raise RuntimeError(f"fill: {tracked} entries tracked after {side.n} registrations")
    return seconds


def plant(side: Side, tag: str, count: int, when: Callable[[int], float]) -> list[str]:
    """`count` real (empty) directories on disk, registered with last access `when(i)`."""
    store = side.cache.store
    pipe = side.cache.client.pipeline(transaction=False)
    made = []
    for i in range(count):
        rel = path40(tag, i)
        os.makedirs(side.cache.root / rel, exist_ok=True)
        store.register(rel, SIZE, 0, now=when(i), pipeline=pipe)
        made.append(rel)
    pipe.execute()
    return made


def memory_breakdown(side: Side, sample: int = 200) -> dict[str, float]:
    """Bytes per entry of each key family, from MEMORY USAGE on samples."""
    c = side.cache.client
    k = side.cache.keys
    rng = random.Random(7)
    picks = [path40("f", rng.randrange(side.n)) for _ in range(sample)]
    pipe = c.pipeline(transaction=False)
    for p in picks:
        pipe.memory_usage(k.dir(p), samples=0)
    per_dir = median(float(x or 0) for x in pipe.execute())
    lru = float(c.memory_usage(k.lru, samples=5000) or 0) / side.n
    entries = float(c.memory_usage(k.entries, samples=5000) or 0) / side.n
    return {
        "dir:{path} string with TTL (per key)": per_dir,
        "cache:lru zset (per member)": lru,
        "cache:entries hash (per field)": entries,
    }


def _server_usec(client: Any) -> dict[str, dict[str, float]]:
    return commandstats(client.info("commandstats"))


def access_figures(sides: dict[str, Side], sizes: Sizes, found: Findings) -> None:
    """access_flatness, access_vs_raw_zadd, access_pipelined_per_s."""
    rng = random.Random(11)
    server: dict[str, list[float]] = {name: [] for name in sides}

    def one_round(side: Side) -> Callable[[], float]:
        def run() -> float:
            paths = [path40("f", rng.randrange(side.n)) for _ in range(sizes.access_calls)]
            store = side.cache.store
            before = _server_usec(side.cache.client)
            started = time.perf_counter()
            for p in paths:
                store.access(p)
            spent = (time.perf_counter() - started) / len(paths)
            d = commandstats_delta(before, _server_usec(side.cache.client)).get("evalsha")
            if d:
                server[side.name].append(d["usec"] / d["calls"])
            return spent

        return run

    for side in sides.values():  # load the script, warm the connection
        side.cache.store.access(path40("f", 0))
    rounds = side_by_side({name: one_round(s) for name, s in sides.items()}, sizes.rounds)
    small, big = median(rounds["small"]), median(rounds["big"])
    found.figures["access_flatness"] = ratio(big, small)
    found.baselines["access_flatness"] = (
        f"{big * 1e6:.0f} µs at {sides['big'].n:,} vs {small * 1e6:.0f} µs at "
        f"{sides['small'].n:,}; in Redis {median(server['big']):.1f} vs "
        f"{median(server['small']):.1f} µs"
    )
    found.details["access_us"] = {"small": small * 1e6, "big": big * 1e6}
    found.details["access_server_us"] = {k: median(v) for k, v in server.items()}

    # One client, one connection: the pipeline client's direct path against plain ZADDs.
    big_side = sides["big"]
    big_side.cache.publish_config()
    cc = CacheClient(big_side.url, redis_url=big_side.url, backend=big_side.url)
    try:
        raw = cc.store.client
        chunk = [path40("f", rng.randrange(big_side.n)) for _ in range(200)]
        batch = [path40("f", rng.randrange(big_side.n)) for _ in range(1000)]

        def direct() -> int:
            for p in chunk:
                cc.access(p)
            return len(chunk)

        def zadd() -> int:
            for p in chunk:
                raw.zadd("bench:raw", {p: time.time()})
            return len(chunk)

        def batched() -> int:
            cc.access_many(batch)
            return len(batch)

        def zadd_batched() -> int:
            pipe = raw.pipeline(transaction=False)
            now = time.time()
            for p in batch:
                pipe.zadd("bench:raw", {p: now})
            pipe.execute()
            return len(batch)

        secs = sizes.rate_seconds
        rates = side_by_side(
            {
                "direct": lambda: rate(direct, secs),
                "zadd": lambda: rate(zadd, secs),
                "batched": lambda: rate(batched, secs),
                "zadd_batched": lambda: rate(zadd_batched, secs),
            },
            sizes.rounds,
        )
    finally:
        cc.close()
        big_side.cache.client.delete("bench:raw")
    r = {k: median(v) for k, v in rates.items()}
    found.figures["access_vs_raw_zadd"] = ratio(r["direct"], r["zadd"])
    found.baselines["access_vs_raw_zadd"] = f"{r['direct']:,.0f}/s vs ZADD {r['zadd']:,.0f}/s"
    found.figures["access_pipelined_per_s"] = r["batched"]
    found.baselines["access_pipelined_per_s"] = (
        f"batches of 1,000; pipelined ZADD {r['zadd_batched']:,.0f}/s "
        f"(x{ratio(r['batched'], r['zadd_batched']):.2f})"
    )
    found.details["access_rates"] = r


def _sweep_round(side: Side, batch: int) -> Callable[[], float]:
    def run() -> float:
        old = time.time() - TTL - 3600
        plant(side, side.tag("s"), batch, lambda i: old + i * 1e-3)
        result: Any = None

        def go() -> None:
            nonlocal result
            result = passes.sweep(side.cache)

        spent = timed(go)
        if len(result.removed) != batch:
            raise RuntimeError(f"sweep took {len(result.removed)} of {batch} on {side.name}")
        return spent

    return run


def _evict_round(side: Side, batch: int) -> Callable[[], float]:
    def run() -> float:
        older = time.time() - TTL / 2 - 3600  # older than every filler, not yet expired
        plant(side, side.tag("e"), batch, lambda i: older + i * 1e-3)
        total = side.cache.store.total_bytes()
        # Threshold = target = the quota, and the quota `batch` entries short: exactly those go.
        cache = make_cache(
            side.url,
            side.cache.root,
            side.cache.client,
            disk_cache_max_bytes=total - batch * SIZE,
            disk_cache_lru_eviction_threshold=1.0,
            disk_cache_lru_eviction_target=1.0,
        )
        result: Any = None

        def go() -> None:
            nonlocal result
            result = passes.enforce_quota(cache)

        spent = timed(go)
        if len(result.removed) != batch:
            raise RuntimeError(f"eviction took {len(result.removed)} of {batch} on {side.name}")
        return spent

    return run


def cleanup_figures(sides: dict[str, Side], sizes: Sizes, found: Findings) -> None:
    """sweep_flatness, evict_flatness; with INFO commandstats around them."""
    client = sides["big"].cache.client
    for side in sides.values():  # load the scripts, make the trash folder
        _sweep_round(side, 10)()
        _evict_round(side, 10)()
    before = _server_usec(client)
    sweeps = side_by_side(
        {name: _sweep_round(s, sizes.batch) for name, s in sides.items()}, sizes.rounds
    )
    evicts = side_by_side(
        {name: _evict_round(s, sizes.batch) for name, s in sides.items()}, sizes.rounds
    )
    delta = commandstats_delta(before, _server_usec(client))
    found.walks["sweep+evict"] = full_walk_calls(delta)
    found.details["commandstats_sweep_evict"] = delta
    n_big, n_small = sides["big"].n, sides["small"].n
    for key, runs in (("sweep_flatness", sweeps), ("evict_flatness", evicts)):
        small, big = median(runs["small"]), median(runs["big"])
        found.figures[key] = ratio(big, small)
        found.baselines[key] = (
            f"{big * 1e3:.0f} ms among {n_big:,} vs {small * 1e3:.0f} ms among {n_small:,}"
        )
        found.details[key.replace("flatness", "ms")] = {"small": small * 1e3, "big": big * 1e3}


def seed_walk_figure(side: Side, sizes: Sizes, found: Findings) -> None:
    """seed_scan_vs_ours: the seed's ways of finding expired entries against ours, at n_big."""
    cache, client, keys = side.cache, side.cache.client, side.cache.keys
    old = time.time() - TTL - 3600
    planted = set(plant(side, side.tag("w"), sizes.batch, lambda i: old + i * 1e-3))
    cutoff = time.time() - TTL

    def scan_dir_keys() -> set[str]:
        # Walk every dir:* key with SCAN, reading each one's timestamp (pipelined per batch).
        found_paths: set[str] = set()
        prefix = keys.dir("")
        cursor = 0
        while True:
            cursor, batch = client.scan(cursor, match=f"{prefix}*", count=1000)
            if batch:
                pipe = client.pipeline(transaction=False)
                for key in batch:
                    pipe.get(key)
                for key, value in zip(batch, pipe.execute(), strict=True):
                    if value is not None and float(value) < cutoff:
                        found_paths.add(key[len(prefix) :])
            if cursor == 0:
                return found_paths

    def walk_lru() -> set[str]:
        # Every cache:lru member with its score, filtered by the client.
        members = client.zrange(keys.lru, 0, -1, withscores=True)
        return {m for m, s in members if s < cutoff}

    def ours() -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            page = cache.store.expired(cutoff, cache.settings.disk_cache_batch_size, offset)
            if not page:
                return out
            out.update(e.path for e in page)
            offset += len(page)

    results: dict[str, set[str]] = {}

    def keep(name: str, fn: Callable[[], set[str]]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            results[name] = fn()
            return time.perf_counter() - started

        return run

    seed_scan = keep("scan", scan_dir_keys)()
    seed_lru = keep("lru", walk_lru)()
    our_find = median(keep("ours", ours)() for _ in range(sizes.rounds))
    for name, got in results.items():
        if got != planted:
            raise RuntimeError(f"seed walk {name!r} found {len(got)}, expected {len(planted)}")
    our_sweep = _timed_sweep(side)
    seed = min(seed_scan, seed_lru)
    found.figures["seed_scan_vs_ours"] = ratio(seed, our_find)
    found.baselines["seed_scan_vs_ours"] = (
        f"seed {seed * 1e3:,.0f} ms (SCAN dir:* {seed_scan * 1e3:,.0f}, ZRANGE lru "
        f"{seed_lru * 1e3:,.0f}) vs ours {our_find * 1e3:.1f} ms; whole sweep "
        f"{our_sweep * 1e3:.0f} ms (x{ratio(seed, our_sweep):.1f})"
    )
    found.details["seed_walk_ms"] = {
        "scan_dir_keys": seed_scan * 1e3,
        "zrange_lru": seed_lru * 1e3,
        "ours_find": our_find * 1e3,
        "ours_whole_sweep": our_sweep * 1e3,
        "seed_vs_our_whole_sweep": ratio(seed, our_sweep),
    }


def _timed_sweep(side: Side) -> float:
    started = time.perf_counter()
    passes.sweep(side.cache)
    return time.perf_counter() - started


def memory_figure(
    redis_server: RedisServer, side: Side, used_before: int, found: Findings
) -> None:
    client = side.cache.client
    used_after = int(client.info("memory")["used_memory"])
    per_entry = (used_after - used_before) / side.n
    found.figures["redis_bytes_per_entry"] = per_entry
    parts = memory_breakdown(side)
    accounted = sum(parts.values())
    parts["keyspace and expires dicts, buckets (rest)"] = per_entry - accounted
    found.details["memory_per_entry_breakdown"] = parts
    found.details["used_memory"] = {"before": used_before, "after": used_after}
    found.baselines["redis_bytes_per_entry"] = (
        f"{(used_after - used_before) / 2**20:,.0f} MiB for {side.n:,}; "
        + ", ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in parts.items())
    )


def run_books(
    redis_server: RedisServer, workdir: Path, sizes: Sizes, found: Findings
) -> dict[str, Side]:
    """Fill both sides, then measure every figure on the books."""
    sides: dict[str, Side] = {}
    for name, db, n in (("small", 1, sizes.n_small), ("big", 2, sizes.n_big)):
        url = redis_server.url(db)
        root = workdir / f"root-{name}"
        root.mkdir(parents=True, exist_ok=True)
        sides[name] = Side(name, db, n, make_cache(url, root), url)
    now = time.time()
    fill(redis_server, sides["small"], now=now)
    used_before = int(sides["big"].cache.client.info("memory")["used_memory"])
    seconds = fill(redis_server, sides["big"], now=now)
    found.details["fill"] = {"entries": sides["big"].n, "seconds": seconds}
    memory_figure(redis_server, sides["big"], used_before, found)
    client = sides["big"].cache.client
    found.take_slowlog("fill (the 10^6 registrations)", client)

    before = _server_usec(client)
    access_figures(sides, sizes, found)
    delta = commandstats_delta(before, _server_usec(client))
    found.walks["access"] = full_walk_calls(delta)
    found.details["commandstats_access"] = delta
    cleanup_figures(sides, sizes, found)
    found.take_slowlog("steady state: access, sweep, eviction", client)
    seed_walk_figure(sides["big"], sizes, found)
    found.take_slowlog("the seed's walks (baseline, not cachemgr)", client)
    return sides
