"""The scrub: finds blobs whose stored bytes no longer match their digest, and removes them.

Reads may skip the server's verification (the client hashes what it receives), so bit rot
at rest would otherwise be found by the next client that needs the blob. The scrub walks
the store, re-reads every blob (streamed, a block at a time, paced to a byte rate so serving
keeps the disk or the bucket), hashes it with SHA-256 and compares hash and size with the
digest the blob is stored under.

A blob that does not match is removed, not quarantined: its name is its content's hash, so
the bad bytes can never be served or repaired, only replaced, and removing it is what lets
FindMissingBlobs report it missing and the next push upload it again (self-healing). A
warning line per removed blob records what was expected and what was found (stores keep no
record of a blob's size but the stored length itself, so a blob whose length changed shows
that length as expected, and is found out by its hash). It is removed
only if it is still the object that was read (``BlobStorage.delete_if_same``), so a good
copy uploaded meanwhile stays. Nothing is removed on a read error; a blob that vanished or
changed while the scrub ran is skipped (it was deleted, or written and verified, just now).

Several replicas on one bucket would each scrub it: harmless, since only mismatching blobs
are removed, but wasteful. A lease object in the store (owner, expiry, last completed run;
written, then read back after a pause) makes one replica scrub per interval *normally*. It
is for efficiency, not correctness: two replicas that both believe they hold it scrub the
same blobs twice, which changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import NotFound, Unavailable
from mreg.blob_service.storage.base import BlobStorage

log = logging.getLogger(__name__)

# The default pace: enough to scrub a terabyte in about three hours, far below a disk's or a
# bucket's capacity, so reads and writes of clients keep most of it.
DEFAULT_BYTES_PER_SECOND = 100_000_000
DEFAULT_INTERVAL_SECONDS = 24 * 3600.0
BLOCK_SIZE = 1 << 20
# At a low rate, blocks shrink to a tenth of a second's worth (not below this), so a paced reader
# never leaves a connection to the store idle long enough to time out (S3 reads: 120 s).
MIN_BLOCK_SIZE = 64 << 10
# Pacing lets a scrub that fell behind (slow storage) catch up by at most this much, not burst.
MAX_CREDIT_SECONDS = 1.0
# A run gives up after this many read errors in a row: the store is down, not a blob bad.
MAX_CONSECUTIVE_ERRORS = 20

LEASE_NAME = "scrub-lease.json"
# A holder renews its lease this often while it scrubs; a lease not renewed for LEASE_SECONDS
# (its holder died) is taken over.
LEASE_SECONDS = 600.0
LEASE_RENEW_SECONDS = 60.0
# After writing the lease, wait this long and read it back: a replica that read the lease
# free at the same moment and wrote after us has overwritten it by then, and we stand down.
LEASE_SETTLE_SECONDS = 1.0

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ScrubObserver(Protocol):
    """What a scrub reports as it goes (the service's metrics)."""

    def examined(self, size: int) -> None:
        """A blob of ``size`` bytes was read and hashed whole."""

    def corrupt(self) -> None:
        """A blob did not match its digest and was removed."""

    def read_error(self) -> None:
        """A blob could not be read; it was left alone."""


@dataclass
class ScrubReport:
    """What one scrub did."""

    examined_blobs: int = 0
    examined_bytes: int = 0
    # Blobs removed because their bytes do not match their digest, as listed (hash and stored size).
    corrupt: list[Digest] = field(default_factory=list)
    read_errors: int = 0
    # Blobs that vanished or were replaced while the scrub ran, or whose names are not digests.
    skipped: int = 0
    # The run ended early: the server is stopping, or another replica took the lease over.
    stopped: bool = False
    seconds: float = 0.0


class _Pace:
    """Sleeps as needed to keep reading at ``bytes_per_second`` on average (0: unlimited)."""

    def __init__(self, bytes_per_second: int, clock: Callable[[], float], sleep: Callable[[float], object]) -> None:
        self._rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def consumed(self, size: int) -> None:
        if self._rate <= 0:
            return
        now = self._clock()
        due = now if self._due is None else max(self._due, now - MAX_CREDIT_SECONDS)
        self._due = due + size / self._rate
        if self._due > now:
            self._sleep(self._due - now)


class Scrubber:
    """Scrubs one store.

    Args:
        storage: the backend whose blobs are checked.
        bytes_per_second: the most bytes read per second on average; 0 is unlimited.
        observer: told of each blob examined, removed or unreadable (metrics).
        clock: a monotonic clock in seconds, for pacing.
        sleep: how pacing waits; by default a wait on the scrub's stopping event, so a stop
            request ends the wait at once.
        wall_clock: seconds since the epoch, for the lease, which other hosts read.
    """

    def __init__(
        self,
        storage: BlobStorage,
        *,
        bytes_per_second: int = DEFAULT_BYTES_PER_SECOND,
        block_size: int = BLOCK_SIZE,
        observer: ScrubObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        wall_clock: Callable[[], float] = time.time,
        lease_settle_seconds: float = LEASE_SETTLE_SECONDS,
    ) -> None:
        if bytes_per_second < 0:
            raise ValueError(f"the scrub rate must not be negative, not {bytes_per_second}")
        self.storage = storage
        self.bytes_per_second = bytes_per_second
        self.block_size = block_size
        self.observer = observer
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._lease_settle_seconds = lease_settle_seconds
        # Who holds the lease: readable by an operator looking at the lease object.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def scrub(
        self, stopping: threading.Event | None = None, keep_going: Callable[[], bool] | None = None
    ) -> ScrubReport:
        """Checks every stored blob once; removes those whose bytes do not match their digest.

        Args:
            stopping: set to end the run promptly (checked between blocks, and it ends a pacing wait).
            keep_going: asked between blobs; False ends the run (the lease was lost).

        Raises:
            Unavailable (or another storage error): the store could not be listed, or
                ``MAX_CONSECUTIVE_ERRORS`` blobs in a row could not be read.
        """
        stopping = stopping if stopping is not None else threading.Event()
        pace = _Pace(self.bytes_per_second, self._clock, self._sleep or stopping.wait)
        block_size = self.block_size
        if self.bytes_per_second > 0:
            block_size = min(block_size, max(MIN_BLOCK_SIZE, self.bytes_per_second // 10))
        report = ScrubReport()
        started = time.monotonic()
        errors_in_a_row = 0
        try:
            for stored in self.storage.iter_blobs():
                if stopping.is_set() or (keep_going is not None and not keep_going()):
                    report.stopped = True
                    break
                if not _HEX64.fullmatch(stored.digest.hash):
                    report.skipped += 1  # not a blob this service wrote: leave it alone
                    continue
                outcome = self._check(stored.digest, block_size, pace, stopping, report)
                if outcome == "stopped":
                    report.stopped = True
                    break
                errors_in_a_row = errors_in_a_row + 1 if outcome == "error" else 0
                if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    raise Unavailable(f"{errors_in_a_row} blobs in a row could not be read from {self.storage!r}")
        finally:
            report.seconds = time.monotonic() - started
        level = logging.WARNING if report.corrupt or report.read_errors else logging.INFO
        log.log(
            level,
            "scrub %s: examined=%d bytes=%d corrupt_removed=%d read_errors=%d skipped=%d seconds=%.1f store=%r",
            "stopped" if report.stopped else "completed",
            report.examined_blobs,
            report.examined_bytes,
            len(report.corrupt),
            report.read_errors,
            report.skipped,
            report.seconds,
            self.storage,
        )
        return report

    def _check(
        self, digest: Digest, block_size: int, pace: _Pace, stopping: threading.Event, report: ScrubReport
    ) -> str:
        """Reads and hashes one blob: "ok", "corrupt", "skipped", "error" or "stopped"."""
        hasher = hashlib.sha256()
        size = 0
        try:
            with self.storage.open_read(digest) as reader:
                identity = reader.identity
                while block := reader.read(block_size):
                    hasher.update(block)
                    size += len(block)
                    pace.consumed(len(block))
                    if stopping.is_set():
                        return "stopped"
        except NotFound:
            report.skipped += 1  # deleted (garbage collection) or replaced since it was listed
            return "skipped"
        except Exception as e:  # a bad sector, a dropped connection: never a reason to remove
            report.read_errors += 1
            if self.observer is not None:
                self.observer.read_error()
            log.warning("scrub could not read blob %s (%s: %s); left alone", digest, type(e).__name__, e)
            return "error"
        report.examined_blobs += 1
        report.examined_bytes += size
        if self.observer is not None:
            self.observer.examined(size)
        found = hasher.hexdigest()
        if size == digest.size_bytes and found == digest.hash:
            return "ok"
        if not self.storage.delete_if_same(digest, identity):
            report.skipped += 1  # replaced by a verified copy, or deleted, after it was read
            log.info("scrub read a corrupt copy of blob %s, replaced or removed since; left alone", digest)
            return "skipped"
        report.corrupt.append(digest)
        if self.observer is not None:
            self.observer.corrupt()
        log.warning(
            "scrub removed corrupt blob: digest=%s expected_sha256=%s expected_size=%d found_sha256=%s "
            "found_size=%d store=%r; the next push of this content uploads it again",
            digest,
            digest.hash,
            digest.size_bytes,
            found,
            size,
            self.storage,
            extra={
                "scrub": {
                    "digest": str(digest),
                    "expected_sha256": digest.hash,
                    "expected_size": digest.size_bytes,
                    "found_sha256": found,
                    "found_size": size,
                }
            },
        )
        return "corrupt"

    # The lease ------------------------------------------------------------------------------

    def run_if_due(self, interval_seconds: float, stopping: threading.Event | None = None) -> ScrubReport | None:
        """Scrubs unless a scrub completed within ``interval_seconds`` or another replica holds the lease.

        Returns:
            The report of the run, or None when no run was due or the lease is another's.
        """
        stopping = stopping if stopping is not None else threading.Event()
        lease = self._read_lease()
        now = self._wall_clock()
        if lease.get("owner") not in (None, self.owner) and (_number(lease, "expires", None) or 0.0) > now:
            return None
        last = _number(lease, "last_completed", None)
        if last is not None and now - last < interval_seconds:
            return None
        run = uuid.uuid4().hex
        held: dict[str, object] = {
            "owner": self.owner,
            "run": run,
            "expires": now + LEASE_SECONDS,
            "last_completed": last,
        }
        self.storage.write_state(LEASE_NAME, json.dumps(held).encode())
        if self._lease_settle_seconds > 0 and stopping.wait(self._lease_settle_seconds):
            return None
        if self._read_lease().get("run") != run:
            return None  # another replica took it at the same moment, and its write came last
        renewed = self._wall_clock()

        def keep_going() -> bool:
            nonlocal renewed
            if self._wall_clock() - renewed < LEASE_RENEW_SECONDS:
                return True
            if self._read_lease().get("run") != run:
                log.info("another replica took the scrub lease over; stopping this scrub")
                return False
            renewed = self._wall_clock()
            held["expires"] = renewed + LEASE_SECONDS
            self.storage.write_state(LEASE_NAME, json.dumps(held).encode())
            return True

        report: ScrubReport | None = None
        try:
            report = self.scrub(stopping, keep_going)
            return report
        finally:
            # Release the lease (expired now), if still ours; a completed run starts the next interval.
            if self._read_lease().get("run") == run:
                held["expires"] = 0
                if report is not None and not report.stopped:
                    held["last_completed"] = self._wall_clock()
                self.storage.write_state(LEASE_NAME, json.dumps(held).encode())

    def _read_lease(self) -> dict[str, object]:
        data = self.storage.read_state(LEASE_NAME)
        if not data:
            return {}
        try:
            lease = json.loads(data)
        except ValueError:
            log.warning("the scrub lease in %r is unreadable; replacing it", self.storage)
            return {}
        return lease if isinstance(lease, dict) else {}


def _number(lease: dict[str, object], key: str, default: float | None) -> float | None:
    value = lease.get(key)
    return float(value) if isinstance(value, int | float) else default
