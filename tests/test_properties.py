"""Random operation sequences keep the books exact: cache:bytes is the sum of tracked sizes,
every tracked path exists on disk, and nothing pinned is deleted."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemgr import CacheError, DiskCache, Settings
from cachemgr.cleanup import cleanup
from cachemgr.passes import enforce_quota
from cachemgr.reconcile import reconcile
from tests.conftest import REDIS_URL, cleanup_prefix, make_tree

NAMES = [f"d{i}" for i in range(6)]
op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), st.integers(1, 4)),
    st.tuples(st.just("register"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("access"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("pin"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("evict"), st.just(""), st.just(0)),
    st.tuples(st.just("cleanup"), st.just(""), st.just(0)),
    st.tuples(st.just("reconcile"), st.just(""), st.just(0)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(op, max_size=25))
def test_books_stay_exact(redis_client, ops):
    root = Path(tempfile.mkdtemp())
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    s = Settings(
        disk_cache_root=str(root),
        redis_url=REDIS_URL,
        disk_cache_key_prefix=prefix,
        disk_cache_max_bytes=8 * 4096,
    ).validate()
    cache = DiskCache(s, redis_client)
    pinned: set[str] = set()  # on disk when pinned for 60 s: nothing may delete them meanwhile
    try:
        for kind, name, arg in ops:
            try:
                if kind == "create":
                    make_tree(root, name, files=arg)
                elif kind == "register":
                    cache.register(name)
                elif kind == "access":
                    cache.access(name)
                elif kind == "remove":
                    cache.remove(name, remove_files=bool(arg))
                elif kind == "pin":
                    cache.pin(name, 60)
                    if (root / name).is_dir():
                        pinned.add(name)
                elif kind == "evict":
                    enforce_quota(cache)
                elif kind == "cleanup":
                    cleanup(cache)
                else:
                    reconcile(cache)
            except CacheError:
                pass
        records = cache.store.all_records()
        assert cache.store.total_bytes() == sum(r[0] for r in records.values())
        for path in records:
            assert (root / path).is_dir(), path
        for path in pinned:
            assert (root / path).is_dir(), f"pinned {path} was deleted"
    finally:
        cleanup_prefix(redis_client, prefix)
        shutil.rmtree(root, ignore_errors=True)
