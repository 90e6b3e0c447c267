"""How long the S3-FIFO family's warm-up settle holds Redis: in one script vs in steps.

    python -m bench.settle [--n 100000] [--batch 200] [--policy NAME ...] [--json PATH]

For each policy of the family, two databases of a redis-server of the bench's own get the same
n registrations (none evicted yet, so all of them wait in the small queue). In one, the first
claim settles the warm-up itself, in one script (what an older cachemgr did); in the other,
Store.settle does it beforehand in steps of `batch`, as the quota pass does, and then the first
claim is made. Reported: the longest single call to Redis (wall time from the client, so an
upper bound on how long Redis was held) and the total, for each way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.infra import Processes, RedisServer
from cachemgr.keys import Keys
from cachemgr.policies import POLICIES
from cachemgr.store import Store

T0 = 1_800_000_000


def fill(store: Store, n: int, chunk: int = 2000) -> None:
    for start in range(0, n, chunk):
        pipe = store.client.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            path = f"/srv/cache/album-{i:08d}-{'x' * 20}"
            store.register(path, 10**6 + (i * 7919) % (10**8), 12, now=T0 + i, pipeline=pipe)
        pipe.execute()


def first_claim(store: Store) -> tuple[float, bool]:
    """Seconds until Redis answers again after the first claim, and whether it answered
    BUSY meanwhile (a script past lua-time-limit, 5 s: every client is refused)."""
    victim = store.victims(1)[0]
    started = time.perf_counter()
    try:
        taken = store.claim(victim.path, "evicted", deleting_files=False)
    except redis.ResponseError as exc:
        if not str(exc).startswith("BUSY"):
            raise
        while True:  # the script runs on to its end
            try:
                store.client.ping()
                return time.perf_counter() - started, True
            except redis.ResponseError:
                time.sleep(0.01)
    if taken[0] != "ok":
        raise RuntimeError(f"the first claim failed: {taken}")
    return time.perf_counter() - started, False


def stepwise(store: Store, batch: int) -> tuple[int, float, float]:
    """Calls, the longest call and the total (seconds)."""
    longest, last = 0.0, time.perf_counter()
    started = last

    def step() -> None:
        nonlocal longest, last
        now = time.perf_counter()
        longest, last = max(longest, now - last), now

    calls = store.settle(batch, step=step)
    step()  # the finishing call
    return calls, longest, time.perf_counter() - started


def run(n: int, batch: int, policies: list[str]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cachemgr-settle-") as tmp:
        procs = Processes()
        try:
            server = RedisServer(procs, Path(tmp))
            for db, name in enumerate(policies):
                # No socket timeout: redis-py 8 times out at 5 s and sends the call again.
                one, steps = (
                    Store(
                        redis.Redis(port=server.port, db=d, decode_responses=True,
                                    socket_timeout=None),
                        Keys(),
                        policy=name,
                    )
                    for d in (2 * db, 2 * db + 1)
                )  # fmt: skip
                fill(one, n)
                fill(steps, n)
                whole, busy = first_claim(one)
                calls, longest, total = stepwise(steps, batch)
                after, _ = first_claim(steps)
                rows.append(
                    {
                        "policy": name,
                        "n": n,
                        "one_script_s": whole,
                        "one_script_busy": busy,
                        "steps": calls,
                        "batch": batch,
                        "longest_step_s": longest,
                        "steps_total_s": total,
                        "first_claim_after_steps_s": after,
                    }
                )
        finally:
            procs.stop_all()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.settle", description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="directories registered")
    parser.add_argument("--batch", type=int, default=200, help="entries per settle call")
    family = [name for name in sorted(POLICIES) if POLICIES[name].settle]
    parser.add_argument("--policy", action="append", choices=family, help="default: all")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = run(args.n, args.batch, args.policy or family)
    print(f"{'policy':<10} {'n':>9} {'one script':>16} {'steps':>6} {'longest':>9} {'total':>8}")
    for r in rows:
        print(
            f"{r['policy']:<10} {r['n']:>9,} {r['one_script_s'] * 1e3:>9.0f}ms"
            f"{' BUSY' if r['one_script_busy'] else '     '} "
            f"{r['steps']:>6} {r['longest_step_s'] * 1e3:>7.1f}ms {r['steps_total_s']:>7.2f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
