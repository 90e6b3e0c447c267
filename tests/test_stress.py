"""Stress: several workers (DiskCache instances sharing one Redis) and a disk-chaos thread
run random operations concurrently; then one cleanup and one reconcile, and the README's
invariants are checked (I1 bytes, I2 on disk, I3 pins/outside, I4 no overlap, I5 tracked).

Seeds: HUNT_SEEDS="1,2,3" (the default); HUNT_SECONDS (default 3); also HUNT_SLOW, HUNT_POLICY,
HUNT_SYMLINKS.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
import traceback
from pathlib import Path

import pytest

from cachemgr import CacheError, DiskCache, Settings
from cachemgr.cleanup import cleanup
from cachemgr.passes import enforce_quota, sweep
from cachemgr.reconcile import ReconcileBusy, reconcile
from tests.conftest import REDIS_URL, cleanup_prefix, make_tree

SYMLINKS = int(os.environ.get("HUNT_SYMLINKS", "0"))
SLOW = float(os.environ.get("HUNT_SLOW", "0.5"))
NAMES = ["a", "b", "c", "a/x", "a/x/y", "a/z", "b/x", "c/x/y"]
TOP = ["a", "b", "c"]
NESTED = ["a/x", "a/x/y", "a/z", "b/x", "c/x/y"]


class FakeClock:
    """Shared by the workers: real time, sped up, so a short TTL expires within a run."""

    def __init__(self, speed: float = 20.0) -> None:
        self.t0 = time.monotonic()
        self.base = 1_700_000_000.0
        self.speed = speed

    def __call__(self) -> float:
        return self.base + (time.monotonic() - self.t0) * self.speed


DISK = threading.Lock()  # the harness's own disk changes, one at a time


def _no_link(root: Path, name: str) -> bool:
    """No component of root/name is a symlink: the harness never writes through one."""
    p = root
    for part in name.split("/"):
        p = p / part
        if p.is_symlink():
            return False
    return True


def _lease_around(client, keys, path: str, now: float) -> list[str]:
    live = []
    for p, until in client.zrange(keys.pins, 0, -1, withscores=True):
        if until <= now:
            continue
        if p == path or path.startswith(p + "/") or p.startswith(path + "/"):
            live.append(f"{p}@{until:.1f}")
    return live


def run_hunt(redis_client, tmp: Path, seed: int, seconds: float, *, chaos: bool = True,
             policy: str = "lru", workers: int = 3) -> list[str]:
    rng_master = random.Random(seed)
    root = tmp / f"root{seed}"
    root.mkdir()
    outside = tmp / f"outside{seed}"
    outside.mkdir()
    (outside / "canary").write_text("keep")
    for sub in ("x", "x/y", "z"):
        make_tree(outside, sub, files=1)
    outside_files = sorted(str(p) for p in outside.rglob("*"))
    prefix = f"hunt{seed}x{os.getpid()}:"
    cleanup_prefix(redis_client, prefix)
    s = Settings(
        disk_cache_root=str(root),
        redis_url=REDIS_URL,
        disk_cache_key_prefix=prefix,
        disk_cache_max_bytes=10 * 4096,
        disk_cache_ttl_seconds=30,
        disk_cache_eviction_policy=policy,
        disk_cache_cluster=prefix.rstrip(":"),
    ).validate()
    clock = FakeClock()
    problems: list[str] = []
    log: list[str] = []
    log_lock = threading.Lock()

    def note(msg: str) -> None:
        with log_lock:
            log.append(f"{time.monotonic():.4f} {threading.current_thread().name} {msg}")

    caches = [DiskCache(s, redis_client, clock=clock) for _ in range(workers)]
    stop = time.monotonic() + seconds

    def make_hook(rng: random.Random, cache: DiskCache):
        def hook(path: str) -> None:
            # I3: the claim just took `path`; no live lease may be around it now (PIN refuses
            # one while it is in the journal, CLAIM refused one before).
            live = _lease_around(redis_client, cache.keys, path, clock())
            if live:
                problems.append(f"I3: {path} claimed for deletion while leases {live} live")
            note(f"deleting {path}")
            if rng.random() < SLOW:
                time.sleep(rng.random() * 0.02)  # a slow disk

        return hook

    def worker(idx: int) -> None:
        rng = random.Random(rng_master.random())
        cache = caches[idx]
        cache.before_delete = make_hook(rng, cache)
        while time.monotonic() < stop:
            op = rng.choice(
                ["register"] * 5 + ["access"] * 3 + ["pin", "unpin", "remove", "remove_files"]
                + ["evict", "sweep", "cleanup", "reconcile"] * 1 + ["mk"] * 3
            )
            name = rng.choice(NAMES if rng.random() < 0.5 else NESTED)
            try:
                if op == "register":
                    r = cache.register(name)
                    note(f"register {name} -> {r.get('status')} {r.get('size_bytes')}")
                elif op == "mk":
                    with DISK:
                        if _no_link(root, name):
                            make_tree(root, name, files=rng.randint(1, 3))
                    note(f"mk {name}")
                elif op == "access":
                    cache.access(name)
                elif op == "pin":
                    r = cache.pin(name, rng.choice([5, 30, 200]))
                    note(f"pin {name} -> {r}")
                elif op == "unpin":
                    cache.unpin(name)
                    note(f"unpin {name}")
                elif op == "remove":
                    r = cache.remove(name, missing_ok=True)
                    note(f"remove {name} -> {r.get('status')}")
                elif op == "remove_files":
                    r = cache.remove(name, remove_files=True, missing_ok=True)
                    note(f"remove_files {name} -> {r.get('status')} {r.get('reason', '')}")
                elif op in ("evict", "sweep"):
                    r = (enforce_quota if op == "evict" else sweep)(cache)
                    note(f"{op} -> {[x.path for x in r.removed]}")
                elif op == "cleanup":
                    r = cleanup(cache)
                    note(f"cleanup -> {r.get('status')}")
                elif op == "reconcile":
                    r = reconcile(cache)
                    note(f"reconcile -> reg {r['registered']} untr {r['untracked']}")
            except (CacheError, ReconcileBusy) as exc:
                note(f"{op} {name} -> {type(exc).__name__}: {exc}")
            except (FileNotFoundError, FileExistsError) as exc:  # make_tree racing a deletion
                note(f"{op} {name} -> {exc!r}")
            except Exception as exc:  # anything else is a finding
                problems.append(f"unexpected {op} {name}: {exc!r}\n{traceback.format_exc()}")
            time.sleep(rng.random() * 0.002)

    def chaos_thread() -> None:
        rng = random.Random(rng_master.random())
        while time.monotonic() < stop:
            name = rng.choice(NAMES if rng.random() < 0.5 else NESTED)
            op = rng.choice(["rm", "mv", "mvback", "mk", "mk"] + ["link"] * SYMLINKS)
            try:
              with DISK:
                if not _no_link(root, name.rsplit("/", 1)[0]) or (
                        op not in ("link", "rm") and not _no_link(root, name)):
                    continue
                if op == "rm":
                    if (root / name).is_symlink():
                        (root / name).unlink()
                    else:
                        shutil.rmtree(root / name)
                elif op == "mv":
                    other = rng.choice(NAMES)
                    if not _no_link(root, other):
                        continue
                    os.rename(root / name, root / (other + "_moved"))
                    name = f"{name}->{other}_moved"
                elif op == "link":
                    target = root / name
                    if target.is_symlink() or target.is_file():
                        target.unlink()
                    elif target.is_dir():
                        shutil.rmtree(target)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(outside, target)
                elif op == "mvback":
                    for p in list(root.rglob("*_moved")):
                        if not _no_link(root, str(p.relative_to(root))):
                            continue
                        os.rename(p, str(p)[: -len("_moved")])
                        break
                else:
                    make_tree(root, name, files=rng.randint(1, 2))
                note(f"chaos {op} {name}")
            except OSError:
                pass
            time.sleep(rng.random() * 0.003)

    threads = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(workers)]
    if chaos:
        threads.append(threading.Thread(target=chaos_thread, name="chaos"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # settle: drop the *_moved leftovers' names from the picture? keep them: they are dirs too
    main = caches[0]
    main.before_delete = None
    if not any(not e.name.startswith(".cachemgr") for e in os.scandir(root)):
        # Chaos removed every download: an empty root while directories are tracked is what
        # an unmounted disk looks like, and every pass refuses it (tested on its own). One
        # download keeps the settle below about the books, not about that refusal.
        make_tree(root, "settled", files=1)
        note("settle: the root was empty")
    try:
        cleanup(main)
        if not chaos:
            for p in main.store.all_records():
                if not (root / p).is_dir():
                    problems.append(f"I2 after cleanup: {p} tracked, not a directory on disk")
            ps = sorted(main.store.all_records())
            for p in ps:
                for q in ps:
                    if p != q and q.startswith(p + "/"):
                        problems.append(f"I4 after cleanup: {p} and {q} both tracked")
        rec = reconcile(main)
        if rec["errors"]:
            problems.append(f"final reconcile errors: {rec['errors']}")
    except CacheError as exc:
        problems.append(f"final cleanup/reconcile failed: {exc!r}")
    store = main.store
    records = store.all_records()
    total = store.total_bytes()
    if total != sum(r[0] for r in records.values()):
        problems.append(f"I1: cache:bytes {total} != sum {sum(r[0] for r in records.values())}")
    for p in records:
        if not (root / p).is_dir():
            problems.append(f"I2: {p} tracked, not a directory on disk")
    paths_ = sorted(records)
    for p in paths_:
        for q in paths_:
            if p != q and q.startswith(p + "/"):
                problems.append(f"I4: {p} and {q} both tracked")
    for p, rec in records.items():
        if (root / p).is_dir():
            from cachemgr import scanner

            real = scanner.scan(root / p).size_bytes
            if real != rec[0]:
                problems.append(f"size: {p} record {rec[0]} vs disk {real}")
    for d in os.listdir(root):
        if d.startswith(".cachemgr") or (root / d).is_symlink() or not (root / d).is_dir():
            continue
        if d not in records and not any(p.startswith(d + "/") for p in records):
            problems.append(f"I5: {d} on disk, untracked, holds nothing tracked")
    journal = redis_client.hgetall(main.keys.deleting)
    if journal:
        problems.append(f"journal left: {journal}")
    locks = list(redis_client.scan_iter(match=f"{prefix}lock:*"))
    if locks:
        problems.append(f"locks left: {locks}")
    if sorted(str(p) for p in outside.rglob("*")) != outside_files:
        problems.append("I3: files outside the root changed")
    if (outside / "canary").read_text() != "keep":
        problems.append("I3: canary outside the root touched")
    if problems:
        print(f"SEED {seed}: {len(problems)} problem(s)")
        for p in problems[:20]:
            print("  ", p)
    (tmp / f"operations-{seed}.log").write_text("\n".join(log))  # kept with the test's tmp
    cleanup_prefix(redis_client, prefix)
    return problems


def _seeds() -> list[int]:
    raw = os.environ.get("HUNT_SEEDS")
    return [int(x) for x in raw.split(",")] if raw else [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
def test_stress_concurrent(redis_client, tmp_path, seed):
    seconds = float(os.environ.get("HUNT_SECONDS", "3"))
    print(f"seed={seed}")
    policy = os.environ.get("HUNT_POLICY", "lru")
    problems = run_hunt(redis_client, tmp_path, seed, seconds, policy=policy)
    assert not problems, f"seed {seed}: " + "\n".join(problems[:10])


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
def test_stress_no_disk_chaos(redis_client, tmp_path, seed):
    """Only cachemgr's operations and downloads being written: I2 holds after a cleanup."""
    seconds = float(os.environ.get("HUNT_SECONDS", "3"))
    print(f"seed={seed}")
    policy = os.environ.get("HUNT_POLICY", "lru")
    problems = run_hunt(redis_client, tmp_path, seed, seconds, chaos=False, policy=policy)
    assert not problems, f"seed {seed}: " + "\n".join(problems[:10])
