"""DiskCache: the operations of one cache node, over the books (store.py) and the disk."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from cachemgr import (
    cluster,
    deletion,
    journal,
    listing,
    marker,
    mounts,
    paths,
    pins,
    quota,
    registration,
    stats,
)
from cachemgr.keys import Keys
from cachemgr.locks import Lock
from cachemgr.nested import nested_root, this_root
from cachemgr.nodes import NodeRegistry, unknown_node
from cachemgr.published import differing, enforced, own_entry, root_elsewhere
from cachemgr.records import Entry
from cachemgr.registration import Booking
from cachemgr.settings import Settings
from cachemgr.store import Store
from cachemgr.switch import some_worker_on, switched

log = logging.getLogger("cachemgr")


class DiskCache:
    def __init__(
        self,
        settings: Settings,
        client: Any,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.root = settings.root
        self.keys = Keys(settings.key_prefix)
        self.client = client
        self.clock = clock
        # False for another node's cache (for_node): its root is a path on another host, so
        # this host's free space says nothing of it.
        self.local = True
        self.store = Store(
            client,
            self.keys,
            policy=settings.disk_cache_eviction_policy,
            ttl_seconds=settings.disk_cache_ttl_seconds,
            events_maxlen=settings.disk_cache_events_maxlen,
            access_log_maxlen=settings.disk_cache_access_log_maxlen,
        )
        # Called with a path right before its files go: tests pause or kill a worker here.
        self.before_delete: Callable[[str], None] | None = None
        # The books' root token as last read, and when to read it again (marker.py).
        self.root_token: tuple[str, float] = ("", float("-inf"))
        # The stats' last look at the root: until when it stands, for what books, what it
        # found (marker.refusal_seen).
        self.root_seen: tuple[float, Any, str | None] = (float("-inf"), None, None)
        # The stats' last look at Redis's memory settings, and until when it stands (health).
        self.memory_seen: tuple[float, str | None] = (float("-inf"), None)

    @property
    def registry(self) -> NodeRegistry:
        return NodeRegistry(self.client, self.settings.disk_cache_cluster)

    def not_a_download(self, rel: str, below: Iterable[str] = (), walk: bool = False) -> str | None:
        """Why a checked path can be no download of this cache (registered, it would be
        evicted): the root's own folder, or a disk's below it, or another cache's root, a
        path inside one, or one holding one (nested.nested_root), or this root seen again
        through a mount (nested.this_root); None for a download's."""
        depth = self.settings.disk_cache_entry_depth
        return (
            mounts.root_own(self.root, rel, depth)
            or nested_root(self.root, rel, self.keys.prefix, below, walk)
            or this_root(self.root, rel)
        )

    def check_root(self, *, allow_empty: bool = False, force: bool = False) -> None:
        marker.check_root(self, allow_empty=allow_empty, force=force)

    def lock(self, path: str) -> Lock:
        """A directory's lock. A holder killed mid-work on this machine is not waited for
        (5 minutes by default): its registration is done again, its deletion recovered."""
        timeout_ms = self.settings.disk_cache_lock_timeout_seconds * 1000
        return Lock(self.client, self.keys.lock(path), timeout_ms, from_dead=True)

    # -- registration (cachemgr/registration.py) ------------------------------------------
    @switched
    def register(self, path: str, at: Booking = None) -> dict[str, Any]:
        """Scan a directory under the root and put it on the books (idempotent). `at`: the
        access (and registration) time to book, or how to work it out from the scan, for a
        reconcile; else now."""
        return registration.register(self, path, at)

    @switched
    def register_latest(self) -> dict[str, Any]:
        """The seed's DownloadService.register_completed_download(): the newest directory."""
        return registration.register_latest(self)

    def free_space_short(self) -> int:
        return quota.free_space_short(self.settings)

    # -- access ---------------------------------------------------------------------------
    @switched
    def access(self, path: str, *, miss_bytes: int = 0) -> dict[str, Any]:
        """A hit renews the directory; a miss counts `miss_bytes`, what the pipeline had to
        fetch (0 when it does not know). A STALE_HIT (a worker of another policy than the
        books', in a rolling restart) is a hit: its record is booked, and the cleanups
        rebuild the policy in force from the records while such workers run
        (migrations.held), so there is nothing to read again here."""
        rel = paths.normalize(path)
        hit = bool(self.store.access(rel, now=self.clock(), miss_bytes=miss_bytes))
        return {"path": rel, "hit": hit}

    # -- removal (cachemgr/deletion.py) ---------------------------------------------------
    @switched
    def remove(
        self, path: str, *, remove_files: bool = False, missing_ok: bool = False
    ) -> dict[str, Any]:
        """Untrack a directory, and delete its files when asked (never a pinned one's).

        `missing_ok` makes a second removal of the same path (a redelivered task) a no-op.
        """
        return deletion.remove(self, path, remove_files=remove_files, missing_ok=missing_ok)

    def take(self, entry: Entry, reason: str, *, min_age_seconds: int = 0) -> str:
        """Delete a directory a cleanup chose if it is still what was chosen; `ok` or why not."""
        return deletion.take(self, entry, reason, min_age_seconds=min_age_seconds)

    # -- pins -----------------------------------------------------------------------------
    @switched
    def pin(self, path: str, ttl_seconds: float, holder: str | None = None) -> dict[str, Any]:
        """A lease: the directory is neither evicted nor expired until it lapses. A path inside
        a tracked directory pins that directory (`path` in the reply names it). A `holder`
        that names itself renews, shortens and ends its own lease only (pins.PIN)."""

        missing = False  # the path itself (no tracked directory holds it) is not on the disk

        def on_disk(rel: str, target: str) -> None:
            # A pin may precede the directory (a download about to be written), but never
            # names a file or a symlink of its own; a track inside a tracked album pins the
            # album, as the pipeline client's pin_now does.
            nonlocal missing
            if not self.local:  # another host's disk (?node=, --node): not looked at here
                return
            own = mounts.root_own(self.root, rel, self.settings.disk_cache_entry_depth)
            if own is not None:  # a disk's own lost+found below the root
                raise paths.PathError(own)
            location = paths.resolve(self.root, rel)
            if target != rel:
                return
            kind = paths.kind(location)
            if kind == "other":
                what = "a symlink" if location.is_symlink() else "a file"
                raise paths.PathError(f"path is {what}, not a directory: {rel!r}")
            missing = kind == "missing"

        reply = pins.grant(self.store, path, ttl_seconds, holder, self.clock(), on_disk)
        target = reply["path"]
        # A lease may precede its download; a misspelt path's lease protects nothing, and said
        # nothing: exit 0, counted among the pinned, listed nowhere. Looked up only then.
        if missing and not self.store.tracked([target])[0]:
            reply["warning"] = (
                f"{target!r} is neither tracked nor on the disk: the lease keeps a download of "
                "that name once it is registered (a misspelt path? `cachemgr unpin` ends it)"
            )
        return reply

    @switched
    def unpin(self, path: str, holder: str | None = None) -> dict[str, Any]:
        """Ends `holder`'s lease, or, with none named, every lease on that very directory;
        `pinned_until` is the lease still in force (other holders'). A named holder's lease
        made through a path inside a tracked directory is on that directory, and ended
        there; a lease that named no holder is not ended through a path inside (it may be
        another's too): it lapses."""
        return pins.end(self.store, path, holder, self.clock())

    # -- reads ----------------------------------------------------------------------------
    def info(self, path: str) -> Entry:
        """One tracked directory, with the leases in force around it and its expiry by the TTL
        the node's workers published (listing.directory)."""
        rel = paths.normalize(path)
        entry = listing.directory(self.store, rel, self.clock())
        if entry is None:
            raise journal.not_tracked(self.store, rel)
        return entry

    def stats(self, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        return stats.node_stats(self, snap)

    def reset_stats(self) -> dict[str, Any]:
        return stats.reset_stats(self)

    def publish_config(
        self, queue: str | None = None, worker: str = "", broker: str = ""
    ) -> None:
        """Let pipeline clients and the control plane, which read no settings, see this node
        (and `queue`, the one its workers consume, on `broker`); `worker`: the one publishing,
        whose settings stand until it stops (nodes.NodeRegistry.publisher_gone)."""
        self.registry.publish(self.settings, now=self.clock(), queue=queue, broker=broker)
        s = self.settings
        self.client.hset(
            self.keys.config,
            mapping={
                "ttl_seconds": s.disk_cache_ttl_seconds,
                "policy": s.disk_cache_eviction_policy,
                "root": str(self.root),
                "node": s.node,
                "access_log_maxlen": s.disk_cache_access_log_maxlen,
                "worker": worker,
            },
        )

    def for_node(
        self, node: str | None, entries: dict[str, dict[str, Any]] | None = None
    ) -> DiskCache:
        """This node's DiskCache, or another node's (built from what its workers published)."""
        if not node or node == self.settings.node:
            return self
        known = self.registry.entries() if entries is None else entries
        other = self.registry.settings_for(node, self.settings, known)
        if other is None:
            raise unknown_node(node, known)
        remote = DiskCache(other, self.client, clock=self.clock)
        remote.local = False
        return remote

    def with_policy(self, name: str) -> DiskCache:
        """This node's cache acting by another eviction policy (the one in force)."""
        other = DiskCache(
            self.settings.with_(disk_cache_eviction_policy=name), self.client, clock=self.clock
        )
        other.local, other.before_delete = self.local, self.before_delete
        return other

    def published_entry(self) -> dict[str, Any]:
        """This node's registry entry, as its workers published it ({} for none yet)."""
        return own_entry(self.registry.entries(), self.settings)

    def root_elsewhere(self) -> str | None:
        """The root this node's workers published, when this process's is another (a shell
        with none set, a container mounting the disk elsewhere): what is on the disk here is
        not theirs. None when it is the same or none is published, or for another node's
        cache (its root is always theirs)."""
        if not self.local:
            return None
        return root_elsewhere(self.settings, self.published_entry())

    def enforcing(self) -> DiskCache:
        """This node's cache with the settings its workers published (theirs decide expiry,
        the quota and the policy): a shell whose DISK_CACHE_TTL_SECONDS differs showed expiry
        times of its own. Itself when they agree or have published nothing."""
        theirs = enforced(self.settings, self.published_entry())
        if not theirs.enable_disk_cache_management and some_worker_on(
            self.registry.live_workers(self.keys)
        ):
            theirs = theirs.with_(enable_disk_cache_management=True)  # a worker still manages
        if theirs is self.settings:
            return self
        other = DiskCache(theirs, self.client, clock=self.clock)
        other.local = self.local
        return other

    def acting(self) -> tuple[DiskCache, list[tuple[str, Any, Any]]]:
        """The cache a write or plan made in this process acts on, and where this process's
        settings differ from the workers' ones it takes (`published.differing`). Switched off
        here, nothing is done here, whatever the workers say: itself."""
        if not self.settings.enable_disk_cache_management:
            return self, []
        theirs = self.enforcing()
        return theirs, differing(self.settings, theirs.settings)

    def cluster_stats(self) -> dict[str, Any]:
        return cluster.cluster_stats(self)

    # -- the scheduler switch -------------------------------------------------------------
    def scheduler_running(self) -> bool:
        return self.client.get(self.keys.scheduler) != "stopped"

    def set_scheduler(self, running: bool) -> dict[str, Any]:
        # Started: when (beat's runs were skipped while stopped; the next is an interval away).
        value = f"running {self.clock():.3f}" if running else "stopped"
        self.client.set(self.keys.scheduler, value)
        log.info("scheduler %s", "started" if running else "stopped")
        return {"scheduler_running": running}
