"""Garbage collection of blob content, and the protocol that keeps it from racing commits.

Commits and sweeps never race, at any grace period:

- A commit reads the GC epoch (:class:`EpochReader`), then asks the blob service whether its
  content is stored, then in its transaction (share-locking the GC state row) refuses with
  MISSING_BLOB any blob that a sweep is deleting now or deleted after that epoch
  (:func:`refuse_collected_content`). An epoch read by an earlier commit of the same process
  serves too, only more strictly (epochs only grow): a commit refused with one reads the
  epoch afresh and tries once more before it refuses.
- A sweep, in a transaction holding that row exclusively, finds which listed blobs no
  committed version references and records them as condemned; only then does it ask the
  blob service to delete them; afterwards it records the deleted ones in a new epoch and
  releases the ones the blob service kept (used again since).

So a commit either lands before the condemnation (the sweep sees its references and
keeps the content) or after it (and refuses; the client uploads again). A lease on the
state row keeps sweeps to one replica at a time; a sweep that died leaves condemnations
open, which the next sweep finishes before anything else. The blob service also keeps
content written or looked up within its own minimum grace period, which protects uploads
that are not committed yet.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mreg.metadata_service.catalog.common import BlobService
from mreg.metadata_service.errors import MISSING_BLOB, FailedPrecondition, InvalidArgument, Reason
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.models import utcnow
from mreg.metadata_service.repository import Repository, read_gc_epoch
from mreg.metadata_service.unit_of_work import Database, UnitOfWork

# How long content the blob service said it holds is trusted by commits without asking it again (SeenContent).
DEFAULT_CONTENT_CHECK_CACHE = timedelta(seconds=60)

log = logging.getLogger(__name__)

DEFAULT_GC_GRACE = timedelta(days=1)
# A sweep's lease on the GC state row, renewed every batch. It must outlast the blob
# service's DeleteBlobs deadline (blob_client.DELETE_TIMEOUT), so a sweep that lost its
# lease can have no deletion still under way when another sweep starts.
GC_LEASE = timedelta(minutes=30)
GC_BATCH = 1000
# How long deletions are remembered for commits in flight; a commit slower than this
# between its content check and its transaction is refused and retried by the client.
CONDEMNATION_MEMORY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class GarbageReport:
    examined_blobs: int = 0
    referenced_blobs: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    removed_upload_parts: int = 0


class EpochReader:
    """The GC epoch a commit reads before it asks the blob service about its content.

    Reading it costs a round trip to the database on every commit, so the largest epoch
    this process has read is kept: any epoch read earlier is at most the current one, and
    checking content against an older epoch refuses more, never less (what a sweep deleted
    since then is refused too, even if it was uploaded again). A commit that such an epoch
    refuses reads it afresh and asks again (:class:`StaleEpoch`).
    """

    def __init__(self, database: Database) -> None:
        self.db = database
        self._seen: int | None = None

    def recent(self) -> tuple[int, bool]:
        """An epoch to check content against, and whether it was read just now."""
        seen = self._seen
        return (seen, False) if seen is not None else (self.fresh(), True)

    def fresh(self) -> int:
        epoch = self.db.read(read_gc_epoch)
        # Several commits may read at once; keeping the largest keeps the value current enough.
        self._seen = max(epoch, self._seen or 0)
        return epoch


class SeenContent:
    """Blobs the blob service said it holds, each with the GC epoch read before it said so, for ``ttl`` seconds.

    A commit whose every blob was seen within ``ttl`` does not ask the blob service again: it checks its
    content in its transaction against the oldest of those epochs (refuse_collected_content), which refuses
    whatever a sweep deleted since any of them was seen, as if it had asked then. Such a commit counts as
    checked against a kept epoch, so a refusal makes it ask afresh (StaleEpoch) before it refuses.

    A blob removed outside the sweep protocol (the scrub removing a copy damaged at rest, an operator) is
    not seen here: for up to ``ttl`` a commit may still name it, as one committed just before the removal
    does. A push repairs it: the client asks the blob service itself and uploads what is missing. A ``ttl``
    of 0 remembers nothing: every commit asks.
    """

    def __init__(self, ttl: float, limit: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # (sha256, size) -> (epoch read before the blob service said it holds the blob, when it said so)
        self._seen: OrderedDict[tuple[str, int], tuple[int, float]] = OrderedDict()

    def epoch_if_all_seen(self, blobs: Sequence[tuple[str, int]]) -> int | None:
        """The oldest epoch under which every one of ``blobs`` was seen within ``ttl``; None if one was not."""
        if self._ttl <= 0:
            return None
        oldest_allowed = self._clock() - self._ttl
        epoch: int | None = None
        with self._lock:
            for blob in blobs:
                seen = self._seen.get(blob)
                if seen is None or seen[1] < oldest_allowed:
                    return None
                epoch = seen[0] if epoch is None else min(epoch, seen[0])
        return epoch

    def saw(self, blobs: Sequence[tuple[str, int]], epoch: int) -> None:
        """Remembers that the blob service holds ``blobs``, as it said after ``epoch`` was read."""
        if self._ttl <= 0:
            return
        now = self._clock()
        with self._lock:
            for blob in blobs:
                self._seen[blob] = (epoch, now)
                self._seen.move_to_end(blob)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)


class StaleEpoch(Exception):
    """A commit checked against a kept epoch was refused: it rolls back and tries with a fresh one."""


def refuse_collected_content(repo: Repository, entries: Sequence[FileEntry], epoch: int, *, fresh: bool) -> None:
    """Refuses a commit naming content a sweep is deleting, or deleted after ``epoch`` was read.

    Raises:
        FailedPrecondition: MISSING_BLOB, for the blobs the sweep took.
        StaleEpoch: it would refuse, but ``epoch`` was not read for this commit (see EpochReader).
    """
    if not entries:
        return
    sizes = {e.digest: e.size_bytes for e in entries}
    pruned_through, condemned = repo.share_gc_state_and_condemned_since(sorted(sizes), epoch)
    taken = sorted(sizes) if epoch < pruned_through else sorted(condemned)
    if taken and not fresh:
        raise StaleEpoch
    if taken:
        raise FailedPrecondition(
            f"garbage collection deleted or is deleting {len(taken)} of the manifest's blobs while this commit "
            f"was in flight (e.g. {taken[0]}): upload what FindMissingBlobs reports missing and commit again",
            violations=[(MISSING_BLOB, f"blobs/{h}/{sizes[h]}", "collected during the commit") for h in taken],
            reason=Reason.MISSING_BLOB,
        )


class GarbageCollector:
    """Sweeps of the blob service for content no committed version references."""

    def __init__(self, database: Database, content: BlobService) -> None:
        self.db = database
        self.content = content
        # Called with the report of every completed sweep, not dry runs (the service's metrics count them).
        self.on_sweep: Callable[[GarbageReport], None] | None = None

    def collect(self, grace: timedelta = DEFAULT_GC_GRACE, dry_run: bool = False) -> GarbageReport:
        """Deletes blobs no committed version references and nobody used for ``grace``.

        Raises:
            InvalidArgument: a negative grace period.
            FailedPrecondition: another sweep holds the lease.
        """
        if grace < timedelta(0):
            raise InvalidArgument(
                "grace_period_seconds must not be negative", Reason.FIELD_INVALID, {"field": "grace_period_seconds"}
            )
        unused_before = utcnow() - grace
        owner = uuid.uuid4().hex
        examined = referenced = deleted = deleted_bytes = removed = 0
        if not dry_run:
            self.db.run(lambda uow: _take_lease(uow.repo, owner), write=True)
        try:
            if not dry_run:
                self._finish_interrupted_sweeps(unused_before)
            for batch in self.content.list_unused(unused_before):
                examined += len(batch)
                garbage = self.db.run(
                    lambda uow: _condemn_unreferenced(uow.repo, batch, owner, dry_run),  # noqa: B023
                    write=not dry_run,
                )
                referenced += len(batch) - len(garbage)
                if garbage and not dry_run:
                    garbage = self._delete_condemned(garbage, unused_before, precise=True)
                deleted += len(garbage)
                deleted_bytes += sum(s for _, s in garbage)
            if not dry_run:
                removed = self.content.delete_unused([], unused_before, remove_stale_uploads=True)[1]
        finally:
            if not dry_run:
                self.db.run(lambda uow: _release_lease(uow.repo, owner), write=True)
        report = GarbageReport(examined, referenced, deleted, deleted_bytes, removed)
        log.info("garbage collection: %s%s", report, " (dry run)" if dry_run else "")
        if not dry_run and self.on_sweep is not None:
            self.on_sweep(report)
        return report

    def _delete_condemned(
        self, condemned: list[tuple[str, int]], unused_before: datetime, *, precise: bool
    ) -> list[tuple[str, int]]:
        """Deletes condemned blobs and closes their condemnation; returns those deleted.

        Deleted blobs are closed in a new epoch: a commit that read an older epoch may have
        seen them before the deletion. With ``precise``, the blobs the blob service kept
        (used again since the sweep listed them, so present) are released at once, as if
        never condemned. A sweep finishing another's condemnations cannot tell whether the
        dead sweep deleted them already, so it closes them all in the new epoch.
        """
        gone, _ = self.content.delete_unused(condemned, unused_before, remove_stale_uploads=False)
        gone_hashes = {h for h, _ in gone}
        kept = {h for h, _ in condemned if h not in gone_hashes} if precise else set()
        closed = [h for h, _ in condemned if h not in kept]

        def close(uow: UnitOfWork) -> None:
            state = uow.repo.lock_gc_state()
            uow.repo.close_condemnation(state, closed, released=sorted(kept))

        self.db.run(close, write=True)
        return gone

    def _finish_interrupted_sweeps(self, unused_before: datetime) -> None:
        """Completes condemnations a sweep that died left open, so commits of that content proceed."""

        def prune_and_find(uow: UnitOfWork) -> list[tuple[str, int]]:
            state = uow.repo.lock_gc_state()
            uow.repo.prune_condemned(state, utcnow() - CONDEMNATION_MEMORY)
            return uow.repo.condemned_in_progress()

        leftover = self.db.run(prune_and_find, write=True)
        for start in range(0, len(leftover), GC_BATCH):
            self._delete_condemned(leftover[start : start + GC_BATCH], unused_before, precise=False)
        if leftover:
            log.warning("garbage collection finished %d blob deletions an interrupted sweep left open", len(leftover))


def _take_lease(repo: Repository, owner: str) -> None:
    state = repo.lock_gc_state()
    now = utcnow()
    if state.lease_owner and state.lease_until is not None and state.lease_until > now:
        raise FailedPrecondition(
            f"another garbage collection is running (its lease lasts until {state.lease_until.isoformat()}); "
            "wait for it to finish",
            reason=Reason.GC_IN_PROGRESS,
        )
    state.lease_owner, state.lease_until = owner, now + GC_LEASE


def _release_lease(repo: Repository, owner: str) -> None:
    state = repo.lock_gc_state()
    if state.lease_owner == owner:
        state.lease_owner, state.lease_until = None, None


def _condemn_unreferenced(
    repo: Repository, batch: list[tuple[str, int]], owner: str, dry_run: bool
) -> list[tuple[str, int]]:
    """The blobs of ``batch`` no committed version references, condemned unless ``dry_run``."""
    if not dry_run:
        state = repo.lock_gc_state()
        if state.lease_owner != owner:
            raise FailedPrecondition(
                "this garbage collection lost its lease to another one; it stopped", reason=Reason.GC_IN_PROGRESS
            )
        state.lease_until = utcnow() + GC_LEASE
    live = repo.referenced_digests([h for h, _ in batch])
    garbage = [(h, s) for h, s in batch if h not in live]
    if not dry_run:
        repo.condemn(garbage)
    return garbage
