"""The blob service's domain logic: verified, content-addressed reads and writes.

The storage backend only keeps bytes; everything about integrity lives here. Writes are
hashed as they arrive and published only when the digest matches. Reads are hashed as
they are served, and the last chunk is held back until the hash is verified, so a
corrupt blob is reported as DATA_LOSS and never delivered whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import BlobError, DataLoss, InvalidArgument, NotFound, OutOfRange, Reason, StorageFull
from mreg.blob_service.limits import MAX_ITEMS, quote
from mreg.blob_service.sha256 import Sha256, StateRefused
from mreg.blob_service.storage.base import BlobReader, BlobStorage, PartialUpload

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CHUNK_SIZE = 1 << 20
# Concurrent storage operations within one batch RPC (stat calls, or requests to S3).
IO_PARALLELISM = 16
# Batch RPCs are for small blobs; larger content goes through the streaming RPCs.
MAX_BATCH_BYTES = 32 << 20

# A FindMissingBlobs hit renews a blob's use time when it is older than this (capped at a
# third of the minimum grace, so a looked-up blob always stays well inside it).
TOUCH_INTERVAL = timedelta(minutes=10)
# Garbage collection never deletes a blob written or looked up more recently than this,
# whatever cutoff a caller sends: it protects uploads whose commit has not landed yet.
MIN_GC_GRACE = timedelta(hours=1)
# Partial uploads that received nothing for this long are discarded (by the janitor and by
# garbage collection); younger ones never are, whatever cutoff a caller sends.
UPLOAD_EXPIRY = timedelta(days=1)
# While receiving an upload, check this often whether a concurrent upload has published it.
PUBLISHED_CHECK_EVERY = 64
# Chunks at least this large are written on another thread while the receiving thread hashes them, while
# fewer uploads are being received than the service has cores; below that size, handing the write over costs
# about what running it alongside the hash saves.
WRITE_ALONGSIDE_HASH_BYTES = 256 << 10

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# The hash of an upload's digest until its last message brings it (write_digest_at_finish), followed by its
# size: no SHA-256 reads so, and the backends name the upload's partial state after it.
_UNHASHED = "unhashed-"


def unhashed(size_bytes: int) -> Digest:
    """The digest naming an upload whose hash comes with its last message: (upload_id, size) names it until then."""
    return Digest(f"{_UNHASHED}{size_bytes}", size_bytes)


def is_unhashed(digest: Digest) -> bool:
    return digest.hash.startswith(_UNHASHED)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a server supports and the limits it enforces, as GetCapabilities reports them."""

    max_batch_total_size_bytes: int
    max_batch_blobs: int
    max_receive_message_size_bytes: int
    read_chunk_size_bytes: int
    write_chunk_size_bytes: int
    min_gc_grace: timedelta
    upload_expiry: timedelta
    stream_idle_timeout: timedelta | None
    write_digest_at_finish: bool


@dataclass(frozen=True, slots=True)
class WriteChunk:
    """One message of a write stream, already decoded."""

    offset: int
    data: bytes
    finish: bool
    # With finish, of an upload begun without the hash: the whole digest the content must match.
    final_digest: Digest | None = None


@dataclass(frozen=True, slots=True)
class BatchReadResult:
    digest: Digest
    data: bytes | None
    error: BlobError | None


def validate_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise InvalidArgument(
            f"upload_id {quote(upload_id)} is invalid: use 1-128 letters, digits, '-' or '_' (e.g. a UUID)",
            Reason.RESOURCE_NAME_INVALID,
            {"field": "upload_id"},
        )
    return upload_id


def _run_step(step: Callable[[], None]) -> Exception | None:
    try:
        step()
        return None
    except Exception as e:
        return e


def _no_room(digest: Digest, error: StorageFull, received: int | None = None) -> StorageFull:
    discarded = "" if received is None else f"; the {received} bytes received were discarded"
    return StorageFull(
        f"cannot store blob {digest}, {digest.size_bytes} bytes: {error}{discarded}. "
        "Free space (e.g. delete unused versions and run `mreg gc`) or grow the store, then push again"
    )


class BlobStore:
    """Verified access to a storage backend."""

    def __init__(
        self,
        storage: BlobStorage,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        touch_interval: timedelta = TOUCH_INTERVAL,
        min_gc_grace: timedelta = MIN_GC_GRACE,
        upload_expiry: timedelta = UPLOAD_EXPIRY,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if max_batch_bytes <= 0:
            raise ValueError(f"the batch limit must be positive, not {max_batch_bytes}")
        self.storage = storage
        self.chunk_size = chunk_size
        self.max_batch_bytes = max_batch_bytes
        self.min_gc_grace = min_gc_grace
        self.upload_expiry = upload_expiry
        self.touch_interval = min(touch_interval, min_gc_grace / 3)
        self._pool = ThreadPoolExecutor(IO_PARALLELISM, thread_name_prefix="blob-io")
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # Threads that write chunks alongside their hashing: one per upload that may have one (see below).
        self._chunk_writers = ThreadPoolExecutor(self._cores, thread_name_prefix="blob-chunk-writer")
        self._receiving = 0  # uploads whose chunks are being received now
        self._receiving_lock = threading.Lock()

    def capabilities(self, max_receive_message_bytes: int, stream_idle_timeout: timedelta | None) -> Capabilities:
        """This store's limits, with the transport's message limit and idle timeout the server applies."""
        return Capabilities(
            max_batch_total_size_bytes=self.max_batch_bytes,
            max_batch_blobs=MAX_ITEMS,
            max_receive_message_size_bytes=max_receive_message_bytes,
            read_chunk_size_bytes=self.chunk_size,
            write_chunk_size_bytes=self.chunk_size,
            min_gc_grace=self.min_gc_grace,
            upload_expiry=self.upload_expiry,
            stream_idle_timeout=stream_idle_timeout,
            write_digest_at_finish=self.storage.stores_hash_at_finish_as_cheaply,
        )

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Returns the digests not stored, in the order given, each once.

        Blobs found present are marked used (at most once per touch interval), so garbage
        collection, whose grace period must exceed that interval, keeps content a client
        is about to commit without uploading it.
        """
        unique = list(dict.fromkeys(digests))
        renew_before = datetime.now(UTC) - self.touch_interval

        def missing(digest: Digest) -> bool:
            return not digest.is_empty and not self._renewed_if_stored(digest, renew_before)

        # Lookups are I/O (a stat, or a HEAD request on S3): run them side by side.
        return [d for d, absent in zip(unique, self._side_by_side(missing, unique), strict=True) if absent]

    def _side_by_side(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``function`` of each item, on the I/O pool: as many at once as before, but in one run of items per
        thread rather than one pool task per item, whose cost is many times a local stat's."""
        if len(items) <= 1:
            return [function(item) for item in items]
        size = -(-len(items) // IO_PARALLELISM)
        runs = [items[start : start + size] for start in range(0, len(items), size)]
        return [result for run in self._pool.map(lambda run: [function(item) for item in run], runs) for result in run]

    def _bounded(self, unused_before: datetime, minimum_age: timedelta) -> datetime:
        """The cutoff actually applied: never later than this server's clock minus ``minimum_age``."""
        return min(unused_before, datetime.now(UTC) - minimum_age)

    def unused_blobs(self, unused_before: datetime) -> Iterator[Digest]:
        """Digests of stored blobs not written or found since ``unused_before`` (bounded by the minimum grace)."""
        cutoff = self._bounded(unused_before, self.min_gc_grace)
        for blob in self.storage.iter_blobs():
            if blob.last_used < cutoff:
                yield blob.digest

    def delete_unused(
        self,
        digests: Iterable[Digest],
        unused_before: datetime,
        remove_stale_uploads: bool = False,
        deadline: float | None = None,
    ) -> tuple[list[Digest], int]:
        """Deletes each blob still unused since ``unused_before``; returns (deleted, stale parts removed).

        The cutoff is bounded by this server's clock minus its minimum grace, so a cutoff in
        the future (or a skewed clock) cannot delete content in use. Nothing is deleted
        after ``deadline`` (a ``time.monotonic()`` value): a caller that gave up must be
        able to rely on the deletion having stopped.
        """
        cutoff = self._bounded(unused_before, self.min_gc_grace)
        deleted = []
        for digest in digests:
            if deadline is not None and time.monotonic() > deadline:
                break
            last_used = self.storage.last_used(digest)
            if last_used is not None and last_used < cutoff:
                self.storage.delete(digest)
                deleted.append(digest)
        stale_cutoff = self._bounded(unused_before, self.upload_expiry)
        removed = self.storage.remove_stale_uploads(stale_cutoff) if remove_stale_uploads else 0
        if deleted or removed:
            log.info("garbage collection deleted %d blobs and %d stale upload parts", len(deleted), removed)
        return deleted, removed

    def expire_uploads(self) -> int:
        """Discards partial uploads that received nothing for the upload expiry; returns how many parts went."""
        removed = self.storage.remove_stale_uploads(datetime.now(UTC) - self.upload_expiry)
        if removed:
            log.info("discarded %d parts of uploads abandoned for over %s", removed, self.upload_expiry)
        return removed

    def write(self, upload_id: str, digest: Digest, chunks: Iterator[WriteChunk]) -> int:
        """Receives an upload and publishes it if its content matches ``digest``.

        Returns:
            The committed size: ``digest.size_bytes`` once the blob is stored, or the
            bytes received so far when the stream ends without finishing.

        Raises:
            OutOfRange: a chunk's offset is not where the upload stands.
            InvalidArgument: more bytes than the digest's size, or a hash mismatch.
        """
        validate_upload_id(upload_id)
        hash_at_finish = is_unhashed(digest)
        if digest.is_empty:
            return 0
        if not hash_at_finish and self.storage.has(digest):
            self.storage.touch(digest)
            return digest.size_bytes
        try:
            upload = self.storage.begin_write(upload_id, digest)
        except StorageFull as e:
            raise _no_room(digest, e) from e
        with self._receiving_lock:
            self._receiving += 1
        try:
            hasher = self._restore_hash(upload)
            for received, chunk in enumerate(chunks, start=1):
                if chunk.offset != upload.committed_size:
                    raise OutOfRange(
                        f"write_offset {chunk.offset} does not continue upload {upload_id}, "
                        f"which has {upload.committed_size} bytes: resume from there",
                        Reason.WRITE_OFFSET_INVALID,
                        {"committed_size": str(upload.committed_size)},
                    )
                if upload.committed_size + len(chunk.data) > digest.size_bytes:
                    self.storage.abort_write(upload)
                    raise InvalidArgument(
                        f"upload {upload_id} sent more than the {digest.size_bytes} bytes of blob {digest}; "
                        "nothing was stored",
                        Reason.DIGEST_MISMATCH,
                    )
                self._hash_and_append(hasher, upload, chunk.data)
                if chunk.finish:
                    if chunk.final_digest is not None:
                        upload.digest = chunk.final_digest  # published under it; its partial state keeps its name
                        if self.storage.has(upload.digest):
                            # Stored meanwhile, or before (the client may finish early once its hash says so).
                            self.storage.abort_write(upload)
                            self.storage.touch(upload.digest)
                            return digest.size_bytes
                    return self._publish(upload, hasher)
                if not hash_at_finish and received % PUBLISHED_CHECK_EVERY == 0 and self.storage.has(digest):
                    # Another upload of the same content won: stop receiving.
                    self.storage.abort_write(upload)
                    return digest.size_bytes
            # The stream ended unfinished: once closed, the upload holds what it kept (a part it was still
            # sending may have failed), which is what the response reports. Closing again below is harmless.
            upload.close()
            return upload.committed_size
        except StorageFull as e:
            # Release what the upload holds: the next, smaller push must find the room.
            received = upload.committed_size
            self.storage.abort_write(upload)
            raise _no_room(digest, e, received) from e
        finally:
            with self._receiving_lock:
                self._receiving -= 1
            upload.close()

    def _hash_and_append(self, hasher: Sha256, upload: PartialUpload, data: bytes) -> None:
        """Hashes a chunk and appends it to the upload; both done when this returns.

        Both copy every byte and release the GIL while they do, so on a backend that allows it a large chunk
        is written on another thread while this one hashes it: one stream then keeps two cores busy (one
        512 MiB file was pushed 7-10% faster on two cores). Only while fewer uploads arrive than there
        are cores: once every core has a stream of its own, the hand-over is work that buys nothing (32 jobs
        pushing at once on two cores were 3% slower with it).
        """
        if not upload.appends_while_hashing or len(data) < WRITE_ALONGSIDE_HASH_BYTES or self._receiving >= self._cores:
            hasher.update(data)
            upload.append(data)
            return
        appended = self._chunk_writers.submit(upload.append, data)
        try:
            hasher.update(data)
        finally:
            appended.result()  # raises what the append raised; and nothing touches the upload until it is done

    def _restore_hash(self, upload: PartialUpload) -> Sha256:
        if upload.committed_size > upload.digest.size_bytes:
            self.storage.abort_write(upload)
            raise InvalidArgument(
                f"upload {upload.upload_id} holds more bytes than its digest; restart it", Reason.DIGEST_MISMATCH
            )
        try:
            state, rest = upload.resume_from()
            hasher = Sha256() if state is None else Sha256.restore(state)
        except StateRefused as e:
            # Saved by a replica of another build, or not saved at all: what it holds cannot be verified, so it
            # starts again.
            self.storage.abort_write(upload)
            raise OutOfRange(
                f"upload {upload.upload_id} cannot be continued here ({e}); start it again at offset 0",
                Reason.WRITE_OFFSET_INVALID,
                {"committed_size": "0"},
            ) from e
        for block in rest:
            hasher.update(block)
        upload.hash_with(hasher)
        return hasher

    def _publish(self, upload: PartialUpload, hasher: Sha256) -> int:
        digest = upload.digest
        actual = hasher.hexdigest()
        if upload.committed_size != digest.size_bytes or actual != digest.hash:
            self.storage.abort_write(upload)
            raise InvalidArgument(
                f"uploaded content does not match digest {digest}: received {upload.committed_size} bytes "
                f"with sha256 {actual}; nothing was stored",
                Reason.DIGEST_MISMATCH,
            )
        if self.storage.has(digest):
            # A concurrent upload of the same content won; ours is redundant.
            self.storage.abort_write(upload)
        else:
            self.storage.commit_write(upload)
            self._renew_if_dated_early(digest)
            log.debug("stored blob %s", digest)
        return digest.size_bytes

    def _renew_if_dated_early(self, digest: Digest) -> None:
        """Renews a blob just published whose use time is older than the touch interval.

        Some S3 servers date an object made by a multipart upload when the upload began, not when it was
        completed (rclone does; AWS is reported to): a blob whose upload began hours ago would look unused
        as long, and garbage collection could take it before the version naming it is committed. It is
        renewed as ``find_missing`` renews a blob it finds.
        """
        try:
            # On S3 a copy of the object onto itself: for a blob whose upload took this long, the cost is small
            # beside the upload.
            self._renewed_if_stored(digest, datetime.now(UTC) - self.touch_interval)
        except BlobError as e:  # the blob is published; only its date could not be renewed
            log.warning("could not renew the date of blob %s just published: %s", digest, e)

    def _renewed_if_stored(self, digest: Digest, renew_before: datetime) -> bool:
        """Whether the blob is stored; if it is, and last used before ``renew_before``, it is marked used now."""
        last_used = self.storage.last_used(digest)
        if last_used is None:
            return False
        if last_used < renew_before:
            self.storage.touch(digest)
        return True

    def query_write_status(self, upload_id: str, digest: Digest) -> tuple[int, bool]:
        """Returns (committed size, complete) for an upload.

        Raises:
            NotFound: no such upload is in progress and the blob is not stored.
        """
        validate_upload_id(upload_id)
        if digest.is_empty or (not is_unhashed(digest) and self.storage.has(digest)):
            return digest.size_bytes, True
        size = self.storage.upload_size(upload_id, digest)
        if size is None:
            raise NotFound(
                f"no upload {upload_id} of blob {digest} is in progress; start it at offset 0", Reason.UPLOAD_NOT_FOUND
            )
        return size, False

    def read(self, digest: Digest, offset: int = 0, limit: int = 0, *, verify: bool = True) -> Iterator[bytes]:
        """Yields the bytes [offset, offset+limit) of a blob in chunks, verifying all of it.

        Without ``verify`` (the caller hashes what it receives) only the range is read, as
        stored: a ranged read then costs its range, not the whole blob.

        Raises:
            NotFound, OutOfRange, DataLoss (the last chunk is never yielded then).
        """
        if offset < 0 or limit < 0:
            raise InvalidArgument(
                "read_offset and read_limit must not be negative",
                metadata={"field": "read_offset" if offset < 0 else "read_limit"},
            )
        if offset > digest.size_bytes:
            raise OutOfRange(f"read_offset {offset} is past the end of blob {digest}", Reason.READ_RANGE_INVALID)
        end = digest.size_bytes if limit == 0 else min(digest.size_bytes, offset + limit)
        if digest.is_empty:
            return iter(())
        # The generator body runs lazily; check existence now so NOT_FOUND comes first.
        if not verify:
            if offset == end:  # nothing to read (S3 refuses a range that starts at the end)
                if not self.storage.has(digest):
                    raise NotFound(f"blob {digest} is not stored")
                return iter(())
            return self._read_range(self._open(digest, offset, end - offset, verify=False), digest, end - offset)
        reader = self._open(digest, verify=True)
        return self._read_verified(reader, digest, offset, end)

    def _open(self, digest: Digest, offset: int = 0, length: int = 0, *, verify: bool) -> BlobReader:
        """``storage.open_read``; a copy of another size under the blob's hash is told apart first.

        Raises:
            NotFound: no copy, or one of another size whose bytes do hash to the name (the caller asked
                by the wrong size).
            DataLoss: a copy shorter than the digest says whose bytes do not hash to the name (truncated
                at rest); removed unless the caller verifies what it reads (``verify`` False).
        """
        try:
            return self.storage.open_read(digest, offset, length)
        except NotFound:
            stored = self.storage.stored_size(digest.hash)
            if stored is not None and stored < digest.size_bytes:
                self._refuse_if_damaged(Digest(digest.hash, stored), digest, remove=verify)
            raise

    def _refuse_if_damaged(self, stored: Digest, asked: Digest, *, remove: bool) -> None:
        """Raises DataLoss if the copy ``stored`` (the bytes under ``asked``'s hash) does not hash to its name."""
        hasher = hashlib.sha256()
        try:
            reader = self.storage.open_read(stored)
        except NotFound:
            return  # replaced or removed meanwhile
        with reader:
            while block := reader.read(self.chunk_size):
                hasher.update(block)
        if hasher.hexdigest() == stored.hash:
            return  # a blob of this content exists with that size: the caller asked by the wrong size
        removed = remove and reader.identity is not None and self.storage.delete_if_same(stored, reader.identity)
        log.error(
            "blob %s is corrupt on %r: %d bytes stored%s",
            asked,
            self.storage,
            stored.size_bytes,
            "; removed" if removed else "",
        )
        outcome = (
            "it was removed, so the next push of this content uploads it again"
            if removed
            else "push this content again to repair it"
        )
        raise DataLoss(
            f"stored content of blob {asked} is {stored.size_bytes} bytes, shorter than its size, and does not "
            f"match its digest; {outcome}"
        )

    def _read_range(self, reader: BlobReader, digest: Digest, length: int) -> Iterator[bytes]:
        remaining = length
        with reader:
            while remaining > 0 and (block := reader.read(min(self.chunk_size, remaining))):
                remaining -= len(block)
                yield block
        if remaining > 0:
            # Shorter than its digest says: the caller's hash would fail anyway; say why.
            raise DataLoss(f"stored content of blob {digest} ends {remaining} bytes before its size")

    def _read_verified(self, reader: BlobReader, digest: Digest, start: int, end: int) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        position = 0
        held: bytes | None = None
        with reader:
            while block := reader.read(self.chunk_size):
                hasher.update(block)
                block_start, position = position, position + len(block)
                if position > digest.size_bytes:
                    break
                lo, hi = max(start, block_start), min(end, position)
                if lo < hi:
                    if held is not None:
                        yield held
                    held = block[lo - block_start : hi - block_start]
        if position != digest.size_bytes or hasher.hexdigest() != digest.hash:
            raise self._corrupt(digest, reader.identity, position, hasher.hexdigest())
        if held is not None:
            yield held

    def _corrupt(self, digest: Digest, identity: object | None, size: int, sha256: str) -> DataLoss:
        """The error for a blob whose stored bytes (``size`` of them, hashing to ``sha256``) are not its digest's.

        The copy is removed, as the scrub would: FindMissingBlobs then reports it missing and the next push of
        this content uploads it again, instead of every reader failing until the next scrub. Only the copy
        read (``identity``) goes: a good one published meanwhile stays.
        """
        removed = identity is not None and self.storage.delete_if_same(digest, identity)
        log.error(
            "blob %s is corrupt on %r (%d bytes, sha256 %s)%s",
            digest,
            self.storage,
            size,
            sha256,
            "; removed" if removed else "",
        )
        outcome = (
            "it was removed, so the next push of this content uploads it again" if removed else "it was not served"
        )
        return DataLoss(
            f"stored content of blob {digest} does not match its digest ({size} bytes, sha256 {sha256}); {outcome}"
        )

    def batch_update(self, items: list[tuple[Digest, bytes]]) -> list[BlobError | None]:
        """Stores several small blobs; returns one error (or None) per item."""
        total = sum(len(data) for _, data in items)
        if total > self.max_batch_bytes:
            raise InvalidArgument(
                f"batch of {total} bytes exceeds the {self.max_batch_bytes}-byte limit "
                "(max_batch_total_size_bytes); use Write for large blobs",
                Reason.BATCH_TOO_LARGE,
            )

        def examine(item: tuple[Digest, bytes]) -> BlobError | bool:
            """The item's error, or whether it still needs storing."""
            digest, data = item
            try:
                if len(data) != digest.size_bytes or hashlib.sha256(data).hexdigest() != digest.hash:
                    raise InvalidArgument(
                        f"data does not match digest {digest}; nothing was stored", Reason.DIGEST_MISMATCH
                    )
                if digest.is_empty:
                    return False
                return not self.storage.looks_before_storing or self.storage.last_used(digest) is None
            except BlobError as e:
                return e

        examined = self._pool.map(examine, items)
        results: list[BlobError | None] = []
        to_store: dict[Digest, bytes] = {}  # each blob once, however often the batch carries it
        for (digest, data), outcome in zip(items, examined, strict=True):
            results.append(outcome if isinstance(outcome, BlobError) else None)
            if outcome is True:
                to_store[digest] = data
        if not to_store:
            return results
        try:
            if self.storage.put_verified_together(list(to_store.items())):
                return results
        except StorageFull as e:
            return [
                _no_room(d, e) if r is None and d in to_store else r for (d, _), r in zip(items, results, strict=True)
            ]

        stored: list[Digest] = []
        unexpected: list[Exception] = []

        def store(item: tuple[Digest, bytes]) -> BlobError | None:
            digest, data = item
            try:
                self.storage.put_verified(digest, data, defer_durability=True)
                stored.append(digest)
                return None
            except StorageFull as e:
                return _no_room(digest, e)
            except BlobError as e:
                return e
            except Exception as e:  # raised below, once every put of the batch has finished or failed
                unexpected.append(e)
                return None

        errors = dict(zip(to_store, self._pool.map(store, to_store.items()), strict=True))
        # The batch is answered once all it stored is kept for good, each storage step run once whatever fails.
        unexpected += [e for e in self._pool.map(_run_step, self.storage.durability_steps(stored)) if e is not None]
        if unexpected:
            raise unexpected[0]
        return [
            errors.get(digest) if result is None else result for (digest, _), result in zip(items, results, strict=True)
        ]

    def batch_read(self, digests: list[Digest], *, verify: bool = True) -> list[BatchReadResult]:
        """Reads several small blobs, verified unless the caller hashes them itself (``verify`` False);
        one result per digest."""
        total = sum(d.size_bytes for d in digests)
        if total > self.max_batch_bytes:
            raise InvalidArgument(
                f"batch of {total} bytes exceeds the {self.max_batch_bytes}-byte limit "
                "(max_batch_total_size_bytes); use Read for large blobs",
                Reason.BATCH_TOO_LARGE,
            )

        together = self.storage.read_together([d for d in digests if not d.is_empty])

        def load(digest: Digest) -> BatchReadResult:
            try:
                held = together.get(digest)
                if held is None:
                    return BatchReadResult(digest, b"".join(self.read(digest, verify=verify)), None)
                data, identity = held
                if verify:
                    found = hashlib.sha256(data).hexdigest()
                    if len(data) != digest.size_bytes or found != digest.hash:
                        raise self._corrupt(digest, identity, len(data), found)
                return BatchReadResult(digest, data, None)
            except BlobError as e:
                return BatchReadResult(digest, None, e)

        return list(self._pool.map(load, digests))
