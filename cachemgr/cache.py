"""DiskCache: the operations of one cache node, over the books (store.py) and the disk."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from cachemgr import (
    checks,
    deletion,
    listing,
    marker,
    paths,
    pins,
    quota,
    recheck,
    scanner,
    stats,
)
from cachemgr.errors import (
    NotOnDisk,
    NotTracked,
    Overlap,
    RecordCollision,
)
from cachemgr.keys import Keys
from cachemgr.locks import Lock
from cachemgr.nodes import NodeRegistry, differing, enforced, own_entry
from cachemgr.records import Entry, iso, record_id
from cachemgr.settings import Settings
from cachemgr.store import Store
from cachemgr.switch import switched

log = logging.getLogger("cachemgr")


# A pin is a lease its holder renews while it needs the directory: a week at most, so that a
# forgotten pin cannot keep a directory (and its bytes) forever.
MAX_PIN_SECONDS = 7 * 86400


def check_pin_ttl(ttl_seconds: float) -> None:
    hint = " (a week: renew a pin rather than make it long)"
    checks.seconds("ttl_seconds", ttl_seconds, high=MAX_PIN_SECONDS, hint=hint)


# The time a registration books: now (None), a given time, or one read off the scan.
Booking = float | Callable[[scanner.ScanResult], float] | None
# How long a registration waits, in steps, for its directory, or one above it, to be
# registered or deleted: a scan of an album takes well under a second.
REGISTER_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


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

    @property
    def registry(self) -> NodeRegistry:
        return NodeRegistry(self.client, self.settings.disk_cache_cluster)

    def check_root(self, *, allow_empty: bool = False, force: bool = False) -> None:
        marker.check_root(self, allow_empty=allow_empty, force=force)

    def lock(self, path: str) -> Lock:
        return Lock(
            self.client, self.keys.lock(path), self.settings.disk_cache_lock_timeout_seconds * 1000
        )

    # -- registration ---------------------------------------------------------------------
    @switched
    def register(self, path: str, at: Booking = None) -> dict[str, Any]:
        """Scan a directory under the root and put it on the books (idempotent). `at`: the
        access (and registration) time to book, or how to work it out from the scan, for a
        reconcile; else now."""
        rel = paths.normalize(path)
        lock = self.lock(rel)
        # Held by a reconcile booking it, or a twin registration: theirs may be a scan of a
        # download still being written, so this one scans again once they are done.
        if not lock.acquire_within(REGISTER_WAITS):
            self.store.count("skipped_locked")
            return {"status": "skipped", "reason": "locked", "path": rel}
        try:
            if at is not None and self.store.tracked([rel])[0]:
                at = None  # registered meanwhile (the pipeline, during a rebuild): now it is
            for pause in (*REGISTER_WAITS, None):
                # Scanned again after each wait: a deletion above may have taken it meanwhile.
                try:
                    found, outcome = self._scan_and_book(rel, lock.token, at)
                except NotOnDisk as exc:
                    raise NotOnDisk(f"{exc}{self._vanished(rel, lock.token)}") from None
                if outcome[0] != "busy" or pause is None:
                    break
                time.sleep(pause)  # a directory above is being registered or deleted
        finally:
            lock.release()
        if outcome[0] == "lock_lost":
            # The scan outlived the lock and another worker may have acted meanwhile.
            return {"status": "skipped", "reason": "lock lost during the scan", "path": rel}
        if outcome[0] == "busy":
            self.store.count("skipped_locked")
            reason = f"{outcome[1]!r} above it is still being registered or deleted"
            return {"status": "skipped", "reason": reason, "path": rel}
        if outcome[0] == "overlap":
            raise Overlap(f"{rel!r} overlaps {outcome[1]!r}, which is tracked on its own")
        if outcome[0] == "collision":
            raise RecordCollision(
                f"{rel!r} cannot be tracked: its record id {record_id(rel)} is another tracked "
                "directory's (a 72-bit SHA-1 prefix collision); rename one of them"
            )
        total = int(outcome[3])  # the script's own INCRBY: no extra round trip
        log.info(
            "registered %s: %d bytes, %d files (cache total %d bytes)",
            rel,
            found.size_bytes,
            found.file_count,
            total,
            extra={"event": "registered", "path": rel, "size_bytes": found.size_bytes},
        )
        reply = {
            "status": "registered",
            "path": rel,
            "new": bool(int(outcome[1])),
            "size_bytes": found.size_bytes,
            "file_count": found.file_count,
            "delta_bytes": int(outcome[2]),
            "total_bytes": total,
            "over_threshold": total > self.settings.threshold_bytes,
            "low_disk": self.free_space_short() > 0,
        }
        notes = []
        depth = self.settings.disk_cache_entry_depth
        if rel.count("/") + 1 != depth:
            # Booked all the same (the pipeline decides what a download is), but reconcile
            # walks the entry depth only: after a loss of the books, its siblings go uncounted.
            notes.append((
                "depth_mismatch",
                f"{rel!r} is {rel.count('/') + 1} level(s) deep, DISK_CACHE_ENTRY_DEPTH is "
                f"{depth}: reconcile only finds directories at that depth; set it to match",
            ))  # fmt: skip
        target = self.settings.target_bytes
        if found.size_bytes > target:
            # The quota too small for the downloads: the next pass evicts it at once.
            notes.append((
                "larger_than_quota",
                f"{rel!r} holds {found.size_bytes} bytes, more than the eviction target "
                f"({target} bytes of DISK_CACHE_MAX_BYTES {self.settings.disk_cache_max_bytes}): "
                "no quota pass can bring usage under the target while it stays, and the next "
                "evicts the other directories, then it (unless pinned or young); raise the quota",
            ))  # fmt: skip
        unreadable = [paths.shown(name) for name in found.unreadable[:10]]
        if unreadable:
            notes.append((
                "unreadable",
                f"{len(found.unreadable)} subdirectory(ies) of {rel!r} could not be read (e.g. "
                f"{unreadable[0]!r}: permissions?): its size counts only what could be; "
                "make them readable to the workers and register it again",
            ))  # fmt: skip
        for event, note in notes:
            log.warning("registration of %s: %s", rel, note, extra={"event": event, "path": rel})
        if notes:
            reply["warning"] = "; ".join(note for _, note in notes)
        if unreadable:
            reply["unreadable"] = unreadable
        return reply

    def _vanished(self, rel: str, token: str) -> str:
        """A registration of a tracked directory gone from disk: the books counted it still
        (a hit for every access, bytes never there): off them now, as reconcile would, once
        the root is known to be mounted (RootMissing otherwise: nothing is untracked)."""
        self.check_root()
        if paths.kind_at(self.root, rel) != "missing":  # back already (a download replaced)
            return ""
        taken = self.store.claim(
            rel, "vanished", now=self.clock(), honour_pins=False, deleting_files=False,
            lock_token=token,
        )  # fmt: skip
        if taken[0] != "ok":
            return ""
        log.warning("%s was tracked but is gone from disk: counted as vanished", rel)
        return "; it was tracked: taken off the books (counted as vanished)"

    def free_space_short(self) -> int:
        return quota.free_space_short(self.settings)

    def _scan_and_book(
        self, rel: str, token: str, at: Booking = None
    ) -> tuple[scanner.ScanResult, Any]:
        marker.check_registering(self)
        location = paths.existing_directory(self.root, rel)
        try:
            found = scanner.scan(location, collect_subdirs=True)
        except scanner.TooDeep as exc:
            raise paths.PathError(f"{rel!r} cannot be sized: {exc.strerror}") from None
        except PermissionError as exc:
            raise paths.PathError(scanner.cannot_read(rel, exc)) from None
        except OSError as exc:  # replaced by a symlink or removed since the check
            raise paths.PathError(f"{rel!r} changed while it was scanned: {exc}") from None
        # A subdirectory whose name is not UTF-8 can never be tracked (no Redis key names it):
        # it cannot overlap, and sending it would fail the registration.
        subdirs = [s for s in found.subdirs if paths.encodable(s)]
        others = paths.ancestors(rel) + [f"{rel}/{sub}" for sub in subdirs]
        booked = self.clock() if at is None else at(found) if callable(at) else at
        book = functools.partial(
            self.store.register,
            rel,
            found.size_bytes,
            found.file_count,
            now=booked,
            must_not_be_tracked=others,
            lock_token=token,
        )
        pipe = self.client.pipeline(transaction=False)  # one round trip for both
        book(queued=pipe)
        recheck.remember(self, rel, booked, pipe)
        try:
            return found, self.store.named_if_first(pipe.execute()[0])
        except redis.exceptions.NoScriptError:
            # The script not loaded yet (a new or restarted Redis): the registration did not
            # run; alone, the call loads it.
            outcome = book()
            recheck.remember(self, rel, booked, self.client)
            return found, outcome

    @switched
    def register_latest(self) -> dict[str, Any]:
        """The seed's DownloadService.register_completed_download(): the newest directory."""
        blocked: list[str] = []
        passed: list[str] = []
        depth = self.settings.disk_cache_entry_depth
        newest = scanner.newest_directory(self.root, depth, blocked=blocked, passed_over=passed)
        notes = []
        if passed:  # an older one is booked again (as just played): said, not in silence
            notes.append(
                f"the newest directory, '{paths.shown(passed[0])}', has a name that is not "
                "UTF-8 and cannot be booked: rename it"
            )
        if blocked:  # the newest may be in there
            notes.append(
                f"{len(blocked)} directory(ies) above the entry depth cannot be listed, e.g. "
                f"'{paths.shown(blocked[0])}': the newest download may be inside; register it "
                "by its path"
            )
        for note in notes:
            log.warning("register_completed_download: %s", note, extra={"event": "latest"})
        if newest is None:
            said = "".join(f"; {note}" for note in notes)
            raise NotOnDisk(f"no download directory under the cache root {str(self.root)!r}{said}")
        done = self.register(newest)
        if notes:
            done["warning"] = "; ".join([*filter(None, [done.get("warning")]), *notes])
        return done

    # -- access ---------------------------------------------------------------------------
    @switched
    def access(self, path: str, *, miss_bytes: int = 0) -> dict[str, Any]:
        """A hit renews the directory; a miss counts `miss_bytes`, what the pipeline had to
        fetch (0 when it does not know)."""
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
        rel = paths.normalize(path)
        check_pin_ttl(ttl_seconds)
        who = checks.holder(holder)
        target = self.store.covering(rel)
        # A pin may precede the directory (a download about to be written), but never names
        # a file or a symlink of its own; a track inside a tracked album pins the album, as
        # the pipeline client's pin_now does.
        if target == rel and paths.kind(paths.resolve(self.root, rel)) == "other":
            raise paths.PathError(f"path is not a directory: {rel!r}")
        # The lease in force: another holder's later one stands, and is the answer.
        now = self.clock()
        until = float(self.store.pin(target, now + ttl_seconds, who, now=now))
        return {"path": target, "pinned_until": iso(until)}

    @switched
    def unpin(self, path: str, holder: str | None = None) -> dict[str, Any]:
        """Ends `holder`'s lease, or, with none named, every lease on that very directory;
        `pinned_until` is the lease still in force (other holders'). A named holder's lease
        made through a path inside a tracked directory is on that directory, and ended
        there; a lease that named no holder is not ended through a path inside (it may be
        another's too): it lapses."""
        rel, who = paths.normalize(path), checks.holder(holder)
        target, had, rest = pins.end_lease(self.store, rel, who, self.clock())
        return {"path": target, "unpinned": had, "pinned_until": iso(rest)}

    # -- reads ----------------------------------------------------------------------------
    def info(self, path: str) -> Entry:
        """One tracked directory, with the leases in force around it and its expiry by the TTL
        the node's workers published (listing.directory)."""
        rel = paths.normalize(path)
        entry = listing.directory(self.store, rel, self.clock())
        if entry is None:
            raise NotTracked(f"directory is not tracked: {rel!r}")
        return entry

    def stats(self, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        return stats.node_stats(self, snap)

    def reset_stats(self) -> dict[str, Any]:
        return stats.reset_stats(self)

    def publish_config(self, queue: str | None = None, worker: str = "") -> None:
        """Let pipeline clients and the control plane, which read no settings, see this node
        (and `queue`, the one its workers consume); `worker`: the one publishing, whose
        settings stand until it stops (nodes.NodeRegistry.publisher_gone)."""
        self.registry.publish(self.settings, queue=queue)
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
            names = ", ".join(repr(n) for n in sorted(known)) or "none"
            raise NotTracked(
                f"unknown node {node!r}: no worker of it has started, or it was forgotten "
                f"(`cachemgr forget-node`); known nodes: {names}"
            )
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

    def enforcing(self) -> DiskCache:
        """This node's cache with the settings its workers published (theirs decide expiry,
        the quota and the policy): a shell whose DISK_CACHE_TTL_SECONDS differs showed expiry
        times of its own. Itself when they agree or have published nothing."""
        theirs = enforced(self.settings, own_entry(self.registry.entries(), self.settings))
        if theirs is self.settings:
            return self
        other = DiskCache(theirs, self.client, clock=self.clock)
        other.local = self.local
        return other

    def acting(self) -> tuple[DiskCache, list[tuple[str, Any, Any]]]:
        """The cache a write or plan made in this process acts on, and where this process's
        settings differ from the workers' ones it takes (`nodes.differing`). Switched off
        here, nothing is done here, whatever the workers say: itself."""
        if not self.settings.enable_disk_cache_management:
            return self, []
        theirs = self.enforcing()
        return theirs, differing(self.settings, theirs.settings)

    def cluster_stats(self) -> dict[str, Any]:
        return stats.cluster_stats(self)

    # -- the scheduler switch -------------------------------------------------------------
    def scheduler_running(self) -> bool:
        return self.client.get(self.keys.scheduler) != "stopped"

    def set_scheduler(self, running: bool) -> dict[str, Any]:
        # Started: when (beat's runs were skipped while stopped; the next is an interval away).
        value = f"running {self.clock():.3f}" if running else "stopped"
        self.client.set(self.keys.scheduler, value)
        log.info("scheduler %s", "started" if running else "stopped")
        return {"scheduler_running": running}
