"""Moving content to and from the blob service: parallel, verified, resumable.

Large files travel as Write/Read streams of 1 MiB chunks; small files are grouped into
BatchUpdateBlobs/BatchReadBlobs calls so thousands of them cost a handful of round
trips. Chunk and batch sizes come from the server's GetCapabilities, asked once per
BlobTransfer (so once per connection), and batches also stay under this client's own
receive limit. Transport retries of unary calls are the channel's retry policy
(client.channels); the loops here only resume broken streams: a broken upload continues
from the offset QueryWriteStatus reports, a broken download from the bytes already
received. Every downloaded file is hashed and
lands at its destination only by rename after its digest matched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.client.cache import HashCache, partial_path, replace_file, write_all
from mreg.client.channels import MAX_MESSAGE_BYTES
from mreg.client.errors import MregError, PushInterrupted, local_error
from mreg.client.hashing import LocalFile

CHUNK_SIZE = 1 << 20
# A file larger than this is downloaded as byte ranges of RANGE_BYTES, several at once, and hashed
# in order as they land: one Read stream of a large file cannot use more than one core's worth of
# either side. Smaller ranges arrive nearly in order, so hashing keeps pace instead of waiting.
RANGED_FILE_BYTES = 32 << 20
RANGE_BYTES = 16 << 20
# Hashing reads back what ranges wrote, this much per read (from the page cache).
HASH_READ_BYTES = 8 << 20
# Files up to this size travel in batches (if the server's batch limit allows).
SMALL_FILE_BYTES = 1 << 20
BATCH_COUNT = 2000
# The data this client puts in one batch, however much more the server takes. Each batch is one message that
# both sides build and copy whole, and one of 32 MiB lands in memory freshly mapped for it (page faults on
# every copy): pushing 10 000 files of 4-64 KiB cost the client 3.8-3.9 s of CPU in batches of 32 MiB, 2.7 s
# in batches of 8 MiB and 2.3-2.7 s in batches of 4 MiB. The disk store syncs each directory once per batch,
# so smaller batches sync more often (fsyncs per blob: 1.27 at 32 MiB, 1.65 at 8 MiB, 1.8 at 4 MiB).
BATCH_TARGET_BYTES = 8 << 20
# What a batch message holds beyond its data: per blob a digest, a status and field tags
# (about 100 bytes), and a little for the message itself.
PER_BLOB_FRAMING = 128
FIXED_FRAMING = 64 << 10
# What a server that predates GetCapabilities is assumed to allow.
FALLBACK_CAPABILITIES = pb.GetCapabilitiesResponse(
    digest_function=pb.DIGEST_FUNCTION_SHA256,
    max_batch_total_size_bytes=4 << 20,
    max_batch_blobs=10_000,
    max_receive_message_size_bytes=64 << 20,
    read_chunk_size_bytes=CHUNK_SIZE,
    write_chunk_size_bytes=CHUNK_SIZE,
)
# The blob service's reason for uploaded bytes that do not hash to the digest they were sent under.
DIGEST_MISMATCH = "DIGEST_MISMATCH"
# Streams that broke are resumed, not retried by the channel: codes worth resuming after.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
# Failures in a row a stream retries, with backoff capped at 2 s: enough to ride out a blob service restart.
ATTEMPTS = 9
# How long a stream keeps retrying a blob service that stopped answering, from its last progress.
DEFAULT_RETRY_SECONDS = 30.0

# After Ctrl-C, how long workers get to notice the cancellation and clean up their temp files.
CANCEL_GRACE_SECONDS = 1.0
# Files at least this large, whose digest is not known yet, are streamed while they are hashed
# (StreamsWhileHashing): hashing one then costs a push no time of its own.
STREAM_WHILE_HASHING_MIN_BYTES = 64 << 20
# Such streams at once. A stream sends bytes before its file's hash can show the blob service has them (a
# copied checkpoint the hash cache does not know): few at once leave the cores to hashing, and a file whose
# hash shows it stored before its turn is never streamed at all.
STREAMS_WHILE_HASHING = 2

ProgressCallback = Callable[[int], None]
FileT = TypeVar("FileT", LocalFile, "RemoteFile")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file to download: its manifest path and digest."""

    path: str
    sha256: str
    size_bytes: int


# Called with each file once it is verified and in place: the file, where it is, and its bytes where they
# arrived whole in one message (small files), else None.
OnVerified = Callable[[RemoteFile, Path, bytes | None], None]


def _digest(sha256: str, size: int) -> pb.Digest:
    return pb.Digest(hash=sha256, size_bytes=size)


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class _Upload:
    """A file's content to store with Write streams, resumable under an upload id the hash cache keeps by
    ``key`` (the content's sha256, or for a file streamed while it is hashed, the file's identity)."""

    source: Path
    size: int
    key: str
    # What each stream's first message names the upload by: the whole digest, or only the size when the hash
    # comes at the finish.
    opening: pb.Digest
    # With the hash at the finish: the whole digest, waited for (None if the transfer was cancelled meanwhile),
    # and whether it is known yet.
    final_digest: Callable[[], pb.Digest | None] | None = None
    digest_known: Callable[[], bool] = _never
    # Whether the blob service is known to hold the content already: the stream then finishes at once.
    stored_already: Callable[[], bool] = _never


def _changed_while_pushing(upload: _Upload, name: str) -> MregError | None:
    """The error for a file whose size is no longer the one hashed (or that is gone); None if it is unchanged."""
    try:
        size = os.stat(upload.source).st_size
    except OSError as e:
        return local_error(e, name)
    if size == upload.size:
        return None
    return MregError(
        "FAILED_PRECONDITION",
        f"{name}: the file changed while pushing: it has {size} bytes, {upload.size} when it was hashed; "
        "push it again once it is written",
    )


@dataclass(slots=True)
class _Attempt:
    """What one Write stream of an upload did: the bytes it sent, and whether it ended unfinished on purpose, at
    its last chunk, because the file's hash was not known yet (no stream is held open waiting for it: the
    service ends one that sends nothing for its idle timeout)."""

    sent: int = 0
    awaiting_hash: bool = False


class _Cancelled(Exception):
    """Raised in a worker whose transfer was cancelled (Ctrl-C); never leaves BlobTransfer."""


def _transient(error: grpc.RpcError) -> bool:
    """True for failures worth retrying: the transient codes, and any refusal carrying google.rpc.RetryInfo
    (a server at its stream limit says RESOURCE_EXHAUSTED with it; a full store says it without)."""
    if error.code() in RETRYABLE:
        return True
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


class _Patience:
    """When a stream that keeps failing gives up: after ATTEMPTS failures in a row or ``seconds`` without
    progress, whichever comes first. Progress starts both over, so a long transfer over a flaky link goes on
    while a blob service that is gone fails the transfer within ``seconds``, not after every retry's backoff."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.progressed()

    def progressed(self) -> None:
        self.failures = 0
        self.since = time.monotonic()

    def another_try(self) -> bool:
        """Counts a failure; whether to try again."""
        self.failures += 1
        return self.failures < ATTEMPTS and self.remaining() > 0

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.since)


class _Operation:
    """One upload() or download(): its cancel flag, its in-flight calls, what it finished.

    Per call rather than per BlobTransfer, so threads sharing a Registry never cancel
    each other's transfers.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.calls: set[Any] = set()  # in-flight grpc calls and futures, cancelled on Ctrl-C
        self.streaming: dict[str, pb.Digest] = {}  # upload_id -> digest of Write streams under way
        self.completed_bytes = 0  # content whose upload finished
        self.sent_bytes = 0  # what this operation sent: a resumed upload's bytes stored before are not counted

    def cancel(self) -> None:
        """Workers see the flag at their next step; in-flight calls end at once."""
        self.cancelled.set()
        with self.lock:
            calls = list(self.calls)
        for call in calls:
            call.cancel()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()

    def track(self, call: Any) -> None:
        with self.lock:
            self.calls.add(call)
        if self.cancelled.is_set():
            call.cancel()

    def untrack(self, call: Any) -> None:
        with self.lock:
            self.calls.discard(call)

    def wait(self, future: Any) -> Any:
        """The result of a call started with ``.future()``; cancellable by cancel()."""
        self.track(future)
        try:
            return future.result()
        except (grpc.FutureCancelledError, grpc.RpcError):
            self.check()
            raise
        finally:
            self.untrack(future)

    def sleep(self, attempt: int) -> None:
        """Backs off before a retry; cut short by cancel()."""
        if self.cancelled.wait(min(2.0, 0.1 * 2**attempt)):
            raise _Cancelled()


@dataclass(frozen=True, slots=True)
class TransferLimits:
    """Sizes this client uses with one server, from its capabilities and this client's receive limit."""

    batch_bytes: int  # data per BatchUpdateBlobs/BatchReadBlobs
    batch_count: int  # blobs per batch, and digests per FindMissingBlobs
    small_file_bytes: int  # files up to this size travel in batches
    chunk_bytes: int  # data per WriteRequest
    min_gc_grace_seconds: int = 0  # content used more recently is never deleted, whatever grace GC is given
    write_digest_at_finish: bool = False  # a Write may give its hash in its last message (StreamsWhileHashing)

    @classmethod
    def from_capabilities(cls, caps: pb.GetCapabilitiesResponse, max_receive_message_bytes: int) -> TransferLimits:
        """Batches stay under the server's batch limit, and their messages under both sides' receive limits.

        Raises:
            MregError: FAILED_PRECONDITION if the server names blobs with another hash than SHA-256.
        """
        if caps.digest_function != pb.DIGEST_FUNCTION_SHA256:
            raise MregError(
                "FAILED_PRECONDITION",
                f"the blob service uses digest function {caps.digest_function}; this client supports only SHA-256",
            )
        server_receive = caps.max_receive_message_size_bytes or FALLBACK_CAPABILITIES.max_receive_message_size_bytes
        count = max(1, min(BATCH_COUNT, caps.max_batch_blobs or BATCH_COUNT))
        framing = FIXED_FRAMING + count * PER_BLOB_FRAMING
        batch = min(
            BATCH_TARGET_BYTES,
            caps.max_batch_total_size_bytes or FALLBACK_CAPABILITIES.max_batch_total_size_bytes,
            max_receive_message_bytes - framing,
            server_receive - framing,
        )
        chunk = min(caps.write_chunk_size_bytes or CHUNK_SIZE, server_receive - FIXED_FRAMING)
        return cls(
            batch_bytes=max(0, batch),
            batch_count=count,
            small_file_bytes=max(0, min(SMALL_FILE_BYTES, batch)),
            chunk_bytes=max(1, chunk),
            min_gc_grace_seconds=caps.min_gc_grace.seconds,
            write_digest_at_finish=caps.write_digest_at_finish,
        )


def _batches(items: Sequence[FileT], limits: TransferLimits) -> Iterator[list[FileT]]:
    batch: list[FileT] = []
    size = 0
    for item in items:
        if batch and (size + item.size_bytes > limits.batch_bytes or len(batch) >= limits.batch_count):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size_bytes
    if batch:
        yield batch


# How long the blob service may take to hash a whole blob to check it after a client found it damaged.
VERIFY_TIMEOUT_SECONDS = 600


class BlobTransfer:
    """Uploads and downloads through one blob service stub."""

    def __init__(
        self,
        stub: pb_grpc.BlobServiceStub,
        parallel: int = 8,
        upload_ids: HashCache | None = None,
        max_receive_message_bytes: int = MAX_MESSAGE_BYTES,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        """``upload_ids`` keeps each blob's upload id across runs, so a re-run resumes an interrupted upload.

        ``max_receive_message_bytes`` is the receive limit of the channel ``stub`` uses:
        BatchReadBlobs answers are kept under it. A stream that keeps failing is retried for ``retry_seconds``
        from its last progress.
        """
        self.stub = stub
        self.retry_seconds = retry_seconds
        self.parallel = max(1, parallel)
        self.upload_ids = upload_ids
        self.max_receive_message_bytes = max_receive_message_bytes
        self._limits: TransferLimits | None = None
        self._limits_lock = threading.Lock()

    def limits(self) -> TransferLimits:
        """The server's capabilities turned into sizes; asked once (GetCapabilities), then remembered."""
        with self._limits_lock:
            if self._limits is None:
                try:
                    caps = self.stub.GetCapabilities(pb.GetCapabilitiesRequest())
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise MregError.from_rpc(e, "the blob service") from e
                    caps = FALLBACK_CAPABILITIES
                self._limits = TransferLimits.from_capabilities(caps, self.max_receive_message_bytes)
            return self._limits

    def _run(self, op: _Operation, submit: Callable[[ThreadPoolExecutor], list[Future[None]]]) -> None:
        """Runs jobs on a pool; on Ctrl-C (or any failure) cancels the rest instead of waiting for them."""
        pool = ThreadPoolExecutor(self.parallel)
        jobs: list[Future[None]] = []
        try:
            jobs = submit(pool)
            for job in jobs:
                job.result()
        except BaseException:
            op.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            # Workers stop within moments once their calls are cancelled; waiting that long
            # lets them remove their temporary files.
            wait_futures(jobs, timeout=CANCEL_GRACE_SECONDS)
            raise
        pool.shutdown(wait=True)

    def _unary(self, op: _Operation, method: Any, request: Any) -> Any:
        """Runs a unary call, cancellable; the channel's retry policy retries it (client.channels)."""
        op.check()
        try:
            return op.wait(method.future(request))
        except grpc.RpcError as e:
            raise MregError.from_rpc(e, "the blob service") from e

    def _stored(self, op: _Operation, timeout: float = CANCEL_GRACE_SECONDS) -> int:
        """Bytes the blob service holds of a cancelled upload: finished blobs plus partial streams.

        Partial streams are asked with QueryWriteStatus, all at once and bounded by
        ``timeout``; one that does not answer counts as nothing stored.
        """
        with op.lock:
            streaming = list(op.streaming.items())
        futures = [
            self.stub.QueryWriteStatus.future(
                pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest), timeout=timeout
            )
            for upload_id, digest in streaming
        ]
        partial = 0
        for future, (_, digest) in zip(futures, streaming, strict=True):
            try:
                status = future.result()
            except grpc.RpcError:
                continue
            partial += digest.size_bytes if status.complete else status.committed_size
        return op.completed_bytes + partial

    # Uploads ---------------------------------------------------------------------------

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        missing: set[tuple[str, int]] = set()
        step = max(1, self.limits().batch_count)
        # All the requests at once, up to ``parallel``: the service looks each batch up on its own I/O pool.
        requests = [
            pb.FindMissingBlobsRequest(blob_digests=[_digest(h, s) for h, s in digests[start : start + step]])
            for start in range(0, len(digests), step)
        ]
        for first in range(0, len(requests), self.parallel):
            calls = [self.stub.FindMissingBlobs.future(r) for r in requests[first : first + self.parallel]]
            try:
                for call in calls:
                    missing.update((d.hash, d.size_bytes) for d in call.result().missing_blob_digests)
            except grpc.RpcError as e:
                for call in calls:
                    call.cancel()
                raise MregError.from_rpc(e, "the blob service") from e
        return missing

    def upload(self, files: Sequence[LocalFile], progress: ProgressCallback | None = None) -> int:
        """Uploads the content of ``files`` (one copy per distinct digest); returns the bytes this call sent (an
        upload resumed from an earlier, interrupted call's bytes does not send those again).

        Raises:
            PushInterrupted: on Ctrl-C, within about a second, with the bytes of these files
                the blob service holds (uploads resume from there on the next call).
        """
        unique = list({(f.sha256, f.size_bytes): f for f in files}.values())
        limits = self.limits()
        small = [f for f in unique if f.size_bytes <= limits.small_file_bytes]
        large = sorted((f for f in unique if f.size_bytes > limits.small_file_bytes), key=lambda f: -f.size_bytes)
        report = progress or (lambda n: None)
        op = _Operation()

        def submit(pool: ThreadPoolExecutor) -> list[Future[None]]:
            jobs = [pool.submit(self._upload_stream, op, f, report) for f in large]
            return jobs + [pool.submit(self._upload_batch, op, batch, report) for batch in _batches(small, limits)]

        total = sum(f.size_bytes for f in unique)
        try:
            self._run(op, submit)
        except KeyboardInterrupt:
            raise PushInterrupted(self._stored(op), total) from None
        return op.sent_bytes

    def _upload_batch(self, op: _Operation, files: list[LocalFile], report: ProgressCallback) -> None:
        requests = []
        op.check()
        for f in files:
            requests.append(
                pb.BatchUpdateBlobsRequest.Request(digest=_digest(f.sha256, f.size_bytes), data=f.source.read_bytes())
            )
        response = self._unary(op, self.stub.BatchUpdateBlobs, pb.BatchUpdateBlobsRequest(requests=requests))
        for f, result in zip(files, response.responses, strict=True):
            if result.status.code != 0:
                raise MregError.from_status(
                    result.status,
                    f"{f.path}: {result.status.message} (did the file change while pushing?)",
                )
            report(f.size_bytes)
        sent = sum(f.size_bytes for f in files)
        with op.lock:
            op.completed_bytes += sent
            op.sent_bytes += sent

    def _upload_stream(self, op: _Operation, file: LocalFile, report: ProgressCallback) -> None:
        digest = _digest(file.sha256, file.size_bytes)
        self._stream_upload(op, _Upload(file.source, file.size_bytes, file.sha256, digest), report, file.path)

    def _stream_upload(self, op: _Operation, upload: _Upload, report: ProgressCallback, name: str) -> None:
        """Stores ``upload`` with Write streams, resuming each one that broke from what the blob service holds;
        returns once the service answers that the content is stored.

        Raises:
            MregError: refused, or no progress for ``retry_seconds``; ``name`` leads the message. The upload
                id is kept for the next push to resume, unless the bytes did not match the digest (the service
                then discarded them).
            _Cancelled: cancelled; what was sent stays resumable.
        """
        if self.upload_ids is not None:
            # The same id as an interrupted earlier run: continue where it stopped.
            upload_id, new = self.upload_ids.claim_upload_id(upload.key, upload.size)
            # A new id has nothing to resume: asking would only earn a NOT_FOUND (and a failure log line).
            offset, complete = (0, False) if new else self._resume_offset(op, upload_id, upload.opening)
            report(max(offset, 0))
        else:
            upload_id, offset, complete = uuid.uuid4().hex, 0, False
        with op.lock:
            op.streaming[upload_id] = upload.opening
        patience = _Patience(self.retry_seconds)
        stored = max(offset, 0)
        while not complete:
            op.check()
            attempt = _Attempt()
            try:
                requests = self._write_requests(op, upload, upload_id, offset, report, attempt)
                response = op.wait(self.stub.Write.future(requests))
                if response.committed_size == upload.size:
                    break
                op.check()
                if attempt.awaiting_hash:
                    if upload.final_digest is None or upload.final_digest() is None:
                        raise _Cancelled()
                    offset = stored = response.committed_size
                    patience.progressed()
                    continue
                raise _changed_while_pushing(upload, name) or MregError(
                    "DATA_LOSS", f"{name}: the blob service stored only part of the file"
                )
            except grpc.RpcError as e:
                resumable = _transient(e) or e.code() == grpc.StatusCode.OUT_OF_RANGE
                if resumable and attempt.sent:
                    # A stream that sent bytes may have moved the upload on, however long it ran: what the service
                    # holds says whether it did, before the time since the last progress is judged.
                    held, complete = self._resume_offset(op, upload_id, upload.opening, timeout=CANCEL_GRACE_SECONDS)
                    if held > stored:
                        offset = stored = held
                        patience.progressed()
                if not resumable or not patience.another_try():
                    error = MregError.from_rpc(e, "the blob service")
                    if error.reason == DIGEST_MISMATCH and self.upload_ids is not None:
                        # The service discarded what the upload held: nothing is left to resume.
                        self.upload_ids.forget_upload(upload.key, upload.size)
                    if error.reason == DIGEST_MISMATCH:
                        # The bytes sent are not those hashed: the file is being written (or was) meanwhile.
                        raise _changed_while_pushing(upload, name) or error.with_message(
                            f"{name}: {error.message}; the file changed while pushing: push it again once it is written"
                        ) from e
                    raise error.with_message(f"{name}: {error.message}") from e
                op.sleep(patience.failures - 1)
                if e.code() == grpc.StatusCode.ABORTED and patience.failures >= 3:
                    # Another stream (a concurrent push of the same content from this machine)
                    # holds this upload: upload under an id of our own rather than wait for it.
                    with op.lock:
                        op.streaming.pop(upload_id, None)
                        upload_id = uuid.uuid4().hex
                        op.streaming[upload_id] = upload.opening
                timeout = max(1.0, patience.remaining())
                offset, complete = self._resume_offset(op, upload_id, upload.opening, timeout=timeout)
                if offset > stored:
                    stored = offset
                    patience.progressed()
        with op.lock:
            op.streaming.pop(upload_id, None)
            op.completed_bytes += upload.size
        if self.upload_ids is not None:
            self.upload_ids.forget_upload(upload.key, upload.size)

    def _resume_offset(
        self, op: _Operation, upload_id: str, digest: pb.Digest, timeout: float | None = None
    ) -> tuple[int, bool]:
        """Where an upload stands: the bytes the blob service holds of it (-1 if it could not say now), and
        whether it is complete. All the bytes held is not complete: the message finishing it is still due."""
        try:
            status = op.wait(
                self.stub.QueryWriteStatus.future(
                    pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest), timeout=timeout
                )
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return 0, False
            if _transient(e):
                return -1, False  # unknown yet; the next Write attempt will be told the right offset
            raise MregError.from_rpc(e, "the blob service") from e
        return (digest.size_bytes, True) if status.complete else (status.committed_size, False)

    def _write_requests(
        self,
        op: _Operation,
        upload: _Upload,
        upload_id: str,
        offset: int,
        report: ProgressCallback,
        attempt: _Attempt,
    ) -> Iterator[pb.WriteRequest]:
        """One Write stream's messages from ``offset``: the first names the upload, the last finishes it. For a
        digest at finish, a stream that reaches the last chunk before the file's hash is known ends there,
        unfinished (``attempt.awaiting_hash``), and the last chunk is left out if the hash shows the content
        stored already."""
        offset = max(offset, 0)
        chunk = self.limits().chunk_bytes
        first = True
        with open(upload.source, "rb", buffering=0) as f:
            f.seek(offset)
            while not op.cancelled.is_set():
                data = b"" if upload.stored_already() else f.read(chunk)
                last = not data or offset + len(data) >= upload.size
                digest = upload.opening if first else None
                if last and upload.final_digest is not None:
                    if first:
                        # Named as every stream of this upload was, by its size: the whole digest comes only with
                        # the finish, in a message of its own.
                        yield pb.WriteRequest(upload_id=upload_id, digest=upload.opening, write_offset=offset)
                        first = False
                    if not upload.digest_known():
                        attempt.awaiting_hash = True
                        return
                    digest = upload.final_digest()
                    if digest is None:
                        return  # cancelled
                    if upload.stored_already():
                        # The service then discards what this upload holds and answers that the blob is stored.
                        data = b""
                yield pb.WriteRequest(
                    upload_id=upload_id if first else "",
                    digest=digest,
                    write_offset=offset,
                    finish_write=last,
                    data=data,
                )
                first = False
                offset += len(data)
                attempt.sent += len(data)
                with op.lock:
                    op.sent_bytes += len(data)
                report(len(data))
                if last:
                    return

    # Downloads -------------------------------------------------------------------------

    def download(
        self,
        files: Sequence[RemoteFile],
        dest: Path,
        progress: ProgressCallback | None = None,
        on_verified: OnVerified | None = None,
        targets: Mapping[str, Path] | None = None,
    ) -> int:
        """Downloads files under ``dest``, verified; returns the bytes received.

        ``on_verified(file, path, content)`` runs in the worker after each file landed at ``path``;
        ``content`` is the file's bytes where they arrived whole in one message (small files), else None.
        ``targets`` maps manifest paths to destinations ``prepare_destination`` already
        checked, so they are not resolved again (a realpath per file is much of the cost of
        many small files).
        """
        known = targets or {}
        where = {f.path: known.get(f.path) or safe_destination(dest, f.path) for f in files}
        # Directories are made once each, here, rather than once per file as it lands (a failed mkdir
        # and a stat per file); those of ``targets`` exist already.
        for target in {where[f.path].parent: where[f.path] for f in files if f.path not in known}.values():
            make_parents(target)
        report = progress or (lambda n: None)
        limits = self.limits()
        small = [f for f in files if f.size_bytes <= limits.small_file_bytes]
        large = sorted((f for f in files if f.size_bytes > limits.small_file_bytes), key=lambda f: -f.size_bytes)
        done = on_verified or (lambda f, p, content: None)
        op = _Operation()

        range_jobs: dict[_RangedFile, list[Future[None]]] = {}

        def submit(pool: ThreadPoolExecutor) -> list[Future[None]]:
            jobs: list[Future[None]] = []
            ranged_files: list[_RangedFile] = []
            streamed: list[RemoteFile] = []
            for f in large:
                if f.size_bytes > RANGED_FILE_BYTES and self.parallel > 1:
                    ranged_files.append(_RangedFile(where[f.path], f, RANGE_BYTES, done))
                    range_jobs[ranged_files[-1]] = []
                else:
                    streamed.append(f)
            # The ranges of several large files are taken in turn, so their files arrive side by side and
            # each is hashed (in order, by the worker whose range extends its prefix) on a core of its own,
            # where one file after another would leave one hash running at a time.
            for i in range(max((ranged.count for ranged in ranged_files), default=0)):
                for ranged in ranged_files:
                    if i < ranged.count:
                        range_jobs[ranged].append(pool.submit(self._download_range, op, ranged, i, report))
                        jobs.append(range_jobs[ranged][-1])
            jobs += [pool.submit(self._download_stream, op, f, where[f.path], report, done) for f in streamed]
            return jobs + [
                pool.submit(self._download_batch, op, batch, where, report, done) for batch in _batches(small, limits)
            ]

        try:
            self._run(op, submit)
        except BaseException:
            for ranged, started in range_jobs.items():
                # Ranges never submitted, or cancelled before they ran, will not let go of the file themselves.
                never_ran = ranged.count - sum(1 for job in started if not job.cancelled())
                if never_ran:
                    ranged.failed()
                    for _ in range(never_ran):
                        ranged.release()
            raise
        return sum(f.size_bytes for f in files)

    def _download_batch(
        self,
        op: _Operation,
        files: list[RemoteFile],
        where: Mapping[str, Path],
        report: ProgressCallback,
        done: OnVerified,
    ) -> None:
        # This client hashes every file it receives, so the service need not hash them too.
        request = pb.BatchReadBlobsRequest(
            digests=[_digest(f.sha256, f.size_bytes) for f in files], skip_verification=True
        )
        response = self._unary(op, self.stub.BatchReadBlobs, request)
        for f, result in zip(files, response.responses, strict=True):
            op.check()
            if result.status.code != 0:
                raise MregError.from_status(result.status, f"{f.path}: {result.status.message}")
            try:
                with _verified_target(where[f.path], f) as (out, hasher):
                    out.write(result.data)
                    hasher.update(result.data)
            except MregError as e:
                raise self._explain_corruption(op, f, e) from e
            report(f.size_bytes)
            done(f, where[f.path], result.data)

    def _download_stream(
        self,
        op: _Operation,
        file: RemoteFile,
        target: Path,
        report: ProgressCallback,
        done: OnVerified,
    ) -> None:
        try:
            with _verified_target(target, file) as (out, hasher):

                def keep(offset: int, data: bytes) -> None:
                    out.write(data)
                    hasher.update(data)

                self._read_resuming(op, file, 0, file.size_bytes, keep, report)
        except MregError as e:
            raise self._explain_corruption(op, file, e) from e
        done(file, target, None)

    def _download_range(self, op: _Operation, ranged: _RangedFile, index: int, report: ProgressCallback) -> None:
        """Fetches one byte range of a large file into place, resuming a broken stream where it stopped."""
        start, length = ranged.span(index)
        try:
            received = self._read_resuming(op, ranged.file, start, length, ranged.write, report)
            if received != length:
                raise MregError(
                    "DATA_LOSS",
                    f"{ranged.file.path}: bytes {start}-{start + length} came back {received} bytes long",
                    reason="BLOB_CORRUPT",
                )
            ranged.finished(index)
        except MregError as e:
            # One worker asks the service about the file, not every range that came back short.
            first = ranged.failed()
            raise (self._explain_corruption(op, ranged.file, e) if first else e) from e
        except BaseException:
            ranged.failed()
            raise
        finally:
            ranged.release()

    def _explain_corruption(self, op: _Operation, file: RemoteFile, error: MregError) -> MregError:
        """What content that failed this client's digest check means, asked of the blob service.

        Reads skip the server's verification, so the client is first to see a blob damaged at
        rest. A verified read (of one byte: the server still hashes the whole blob) makes the
        service check its copy; one it finds corrupt it removes, so FindMissingBlobs reports
        it missing and the next push of the content uploads it again. Content the service no
        longer holds at all is data loss too, for a version that names it.
        """
        if error.reason == "BLOB_NOT_FOUND":
            # A committed version's content is never collected, so the store lost it (a copy removed as
            # corrupt, a restore from an older backup): not a wrong name, as NOT_FOUND would have it.
            return MregError(
                "DATA_LOSS",
                f"{file.path}: the blob service no longer holds this version's content (blob "
                f"{file.sha256}/{file.size_bytes}): it was lost or removed as damaged; push the same file again "
                "to restore it",
                reason="BLOB_NOT_FOUND",
            )
        if error.reason != "BLOB_CORRUPT":
            return error
        request = pb.ReadRequest(digest=_digest(file.sha256, file.size_bytes), read_offset=0, read_limit=1)
        stream = self.stub.Read(request, timeout=VERIFY_TIMEOUT_SECONDS)
        op.track(stream)  # Ctrl-C cancels it like any transfer
        try:
            for _ in stream:
                pass
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DATA_LOSS:
                # The service's words say what became of its copy (removed, so a push repairs it).
                return MregError("DATA_LOSS", f"{file.path}: {e.details()}", reason="BLOB_CORRUPT")
            return error  # the service could not say (or the check was cancelled); the client's finding stands
        finally:
            op.untrack(stream)
        return error.with_message(
            f"{error.message}; the blob service's stored copy is intact, so it was damaged on the way: pull again"
        )

    def _read_resuming(
        self,
        op: _Operation,
        file: RemoteFile,
        start: int,
        length: int,
        keep: Callable[[int, bytes], None],
        report: ProgressCallback,
    ) -> int:
        """Reads bytes [start, start+length) of a blob, handing each chunk to ``keep(offset, data)``.

        A stream that breaks is resumed from the byte after the last one kept. The caller
        verifies the content, so the server is asked not to (``skip_verification``).
        Returns the bytes received.
        """
        received = 0
        patience = _Patience(self.retry_seconds)
        while True:
            op.check()
            if received == length:
                break  # the stream broke after its last byte: nothing is left to ask for
            before = received
            request = pb.ReadRequest(
                digest=_digest(file.sha256, file.size_bytes),
                read_offset=start + received,
                read_limit=length - received,
                skip_verification=True,
            )
            stream = self.stub.Read(request)
            op.track(stream)
            try:
                for chunk in stream:
                    keep(start + received, chunk.data)
                    received += len(chunk.data)
                    report(len(chunk.data))
                break
            except grpc.RpcError as e:
                op.check()
                if received > before:
                    patience.progressed()
                if not _transient(e) or not patience.another_try():
                    error = MregError.from_rpc(e, "the blob service")
                    raise error.with_message(f"{file.path}: {error.message}") from e
                op.sleep(patience.failures - 1)
            finally:
                op.untrack(stream)
        return received


class _RangedFile:
    """A large file arriving as byte ranges in any order: written in place, hashed in order, renamed when whole.

    Ranges are written with pwrite into a temporary file of the full size. Whichever worker
    completes the range that extends the in-order prefix hashes it (reading it back from the
    page cache), and the worker that hashes the last range checks the digest and renames the
    file into place. The file descriptor is closed only once no worker can write to it any
    more, and on any failure the temporary file is removed.
    """

    def __init__(self, target: Path, file: RemoteFile, range_bytes: int, done: OnVerified):
        self.file = file
        self.range_bytes = range_bytes
        self.count = -(-file.size_bytes // range_bytes)
        self.target = target
        self.temp = partial_path(self.target)
        self.on_done = done
        self.lock = threading.Lock()
        self.landed = [False] * self.count
        self.next_to_hash = 0
        self.hashing = False
        self.broken = False
        self.users = self.count  # workers that may still write
        self.hasher = hashlib.sha256()
        make_parents(self.target)
        try:
            # Not sized up front: the file grows as ranges land (sparse until then), so its size
            # says how far the download got.
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise local_error(e) from e

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.range_bytes
        return start, min(self.range_bytes, self.file.size_bytes - start)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def finished(self, index: int) -> None:
        """Marks a range landed, hashes whatever prefix is now complete, and completes the file after the last."""
        with self.lock:
            self.landed[index] = True
        while True:
            with self.lock:
                if self.hashing or self.broken or self.next_to_hash >= self.count:
                    return
                if not self.landed[self.next_to_hash]:
                    return
                self.hashing = True
                current = self.next_to_hash
            try:
                start, length = self.span(current)
                position = start
                while position < start + length:
                    block = os.pread(self.fd, min(HASH_READ_BYTES, start + length - position), position)
                    if not block:
                        break
                    self.hasher.update(block)
                    position += len(block)
                last = current == self.count - 1
            finally:
                with self.lock:
                    self.hashing = False
                    self.next_to_hash = current + 1
            if last:
                self._complete()
                return

    def _complete(self) -> None:
        actual = self.hasher.hexdigest()
        if actual != self.file.sha256:
            raise MregError(
                "DATA_LOSS",
                f"{self.file.path}: received content does not match its digest "
                f"(sha256 {actual}; expected {self.file.size_bytes} bytes, {self.file.sha256})",
                reason="BLOB_CORRUPT",
            )
        replace_file(self.temp, self.target)
        self.on_done(self.file, self.target, None)

    def failed(self) -> bool:
        """Marks the file broken; True for the first worker to say so."""
        with self.lock:
            first = not self.broken
            self.broken = True
            return first

    def release(self) -> None:
        """One worker is done with the file: the last one closes it, and removes it unless it was completed."""
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            os.close(self.fd)
            if self.broken:
                with contextlib.suppress(FileNotFoundError):
                    self.temp.unlink()


class StreamsWhileHashing:
    """Large files streamed to the blob service while a push is still hashing them (write_digest_at_finish).

    A push names content by its hash, and a multi-GB file takes seconds to hash on one core before its
    upload could start. Streamed meanwhile, with the hash in the stream's last message, its hashing costs
    the push no time of its own. A stream that reaches its file's last chunk before the hash ends there,
    unfinished, and another sends that chunk with the hash once it is known; if the hash shows the blob
    service holds that content already, the stream finishes at once, having cost only the bytes sent.
    Until its last message an upload is named by its id and the file's size, and the id is kept in the hash
    cache under the file's identity (path, mtime, inode), so a stream that broke, or a push interrupted,
    continues where it stopped, in this push or the next. A stream that still fails leaves its file to the
    push's usual upload; ``finish`` says which files those are.
    """

    def __init__(self, transfer: BlobTransfer, files: Sequence[tuple[Path, os.stat_result]]) -> None:
        """Starts streaming ``files``, as (path, the stat the push took), through ``transfer`` (which keeps
        their upload ids)."""
        self._transfer = transfer
        self._files = list(files)
        self._op = _Operation()
        self._digests: list[pb.Digest | None] = [None] * len(self._files)
        self._hashed = [threading.Event() for _ in self._files]
        # The blob service holds a file's content (its hash says so): its stream ends with its next message.
        self._stored_already = [False] * len(self._files)
        self._lock = threading.Lock()
        self._unreported = 0
        self._report: ProgressCallback | None = None
        self._pool = ThreadPoolExecutor(
            min(len(self._files), transfer.parallel, STREAMS_WHILE_HASHING), thread_name_prefix="mreg-stream"
        )
        self._streams = [self._pool.submit(self._stream, index) for index in range(len(self._files))]

    def hashed(self, index: int, sha256: str) -> None:
        """``files[index]`` is hashed: its stream may finish, or stop if the blob service has its content."""
        size = self._files[index][1].st_size
        self._digests[index] = pb.Digest(hash=sha256, size_bytes=size)
        # Asked before the stream may finish: one told the content is there ends at once. If asking fails, it
        # carries on, and the push asks again once everything is hashed.
        with contextlib.suppress(MregError):
            self._stored_already[index] = not self._transfer.find_missing([(sha256, size)])
        self._hashed[index].set()

    def report_to(self, report: ProgressCallback) -> None:
        """Sends the bytes streamed so far, and from now on, to ``report`` (an upload's progress)."""
        with self._lock:
            self._report, sent, self._unreported = report, self._unreported, 0
        report(sent)

    def finish(self) -> tuple[set[int], int]:
        """Waits for the streams; returns the indexes of the files whose content they did not store (the blob
        service may still hold it from elsewhere), and the bytes they sent."""
        not_stored = {index for index, stream in enumerate(self._streams) if not stream.result()}
        self._pool.shutdown()
        return not_stored, self._op.sent_bytes

    def stored_bytes(self) -> int:
        """The bytes of these files the blob service holds now: stored whole, or kept by an unfinished stream."""
        return self._transfer._stored(self._op)

    def cancel(self) -> None:
        """Stops every stream at once (the push failed or was interrupted); what they sent stays resumable."""
        self._op.cancel()
        for hashed in self._hashed:
            hashed.set()  # a stream waiting for its hash sees the cancellation
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _advance(self, n: int) -> None:
        with self._lock:
            report = self._report
            if report is None:
                self._unreported += n
        if report is not None:
            report(n)

    def _stream(self, index: int) -> bool:
        """Streams one file, resuming after a break; True if the blob service stored its content (or had it)."""
        path, info = self._files[index]
        if self._stored_already[index] or self._op.cancelled.is_set():
            return self._stored_already[index]  # found stored (or the push stopped) before its turn came
        upload = _Upload(
            path,
            info.st_size,
            HashCache.file_key(path, info),
            pb.Digest(size_bytes=info.st_size),
            final_digest=lambda: self._final_digest(index),
            digest_known=self._hashed[index].is_set,
            stored_already=lambda: self._stored_already[index],
        )
        try:
            self._transfer._stream_upload(self._op, upload, self._advance, str(path))
        except (MregError, _Cancelled, grpc.FutureCancelledError, OSError):
            # Refused (the file changed under the stream?), unreachable, unreadable or stopped: the push's usual
            # upload takes the file over, or the next push resumes what was sent.
            return False
        return True

    def _final_digest(self, index: int) -> pb.Digest | None:
        self._hashed[index].wait()
        return None if self._op.cancelled.is_set() else self._digests[index]


def safe_destination(dest: Path, path: str) -> Path:
    """The file ``path`` names under ``dest``; refuses anything that would land outside it."""
    target = (dest / path).resolve()
    root = dest.resolve()
    if target == root or root not in target.parents:
        raise _written_outside(dest, path)
    return target


def _written_outside(dest: Path, path: str) -> MregError:
    return MregError("INVALID_ARGUMENT", f"manifest path {path!r} would be written outside {dest}")


class _FileWriter:
    """Writes whole chunks straight to a file descriptor, counting the bytes: the chunks arrive whole,
    so Python's buffered file (an fstat, an ioctl and two seeks per file) would only add system calls."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)
        self.size += len(data)


@contextlib.contextmanager
def _verified_target(target: Path, file: RemoteFile) -> Iterator[tuple[_FileWriter, Any]]:
    """Yields (writer to a temporary file, hasher); on success the digest is checked and the file renamed into
    place.

    The directory above ``target`` must exist (``download`` makes it). On any failure the
    temporary file is removed, so no partial or unverified file is ever left at the destination.
    """
    temp = partial_path(target)
    hasher = hashlib.sha256()
    placed = False
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise local_error(e, str(target)) from e
    try:
        out = _FileWriter(fd)
        try:
            yield out, hasher
        finally:
            os.close(fd)
        if out.size != file.size_bytes or hasher.hexdigest() != file.sha256:
            raise MregError(
                "DATA_LOSS",
                f"{file.path}: received content does not match its digest "
                f"({out.size} bytes, sha256 {hasher.hexdigest()}; expected {file.size_bytes}, {file.sha256})",
                reason="BLOB_CORRUPT",
            )
        replace_file(temp, target)
        placed = True
    finally:
        if not placed:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def make_parents(target: Path) -> None:
    """Creates the directories above ``target``.

    Raises:
        MregError: FAILED_PRECONDITION naming the file that stands where the version has a
            directory; another code for other local failures.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.is_file() or p.is_symlink()), None)
        where = blocker if blocker is not None else target.parent
        raise MregError(
            "FAILED_PRECONDITION", f"{where} is a file, but the version has a directory there; move it away"
        ) from e
    except OSError as e:
        raise local_error(e, str(target.parent)) from e


def prepare_destination(dest: Path, paths: Sequence[str]) -> list[Path]:
    """Creates ``dest`` and the directories a version's files need; returns each file's target.

    Checks up front, before anything is transferred, that no directory stands where the
    version has a file and no file where it has a directory, so a pull fails at once with
    the path instead of after downloading.

    Each directory is resolved (symlinks followed) and checked to lie under ``dest`` once, and
    each file costs one lstat: resolving every file's whole path took a dozen system calls
    per file, in Python, before the first byte could be asked for.

    A symlink standing where the version has a file is that file's target itself: the file is
    renamed onto it, replacing the link, as ``git checkout`` and ``tar`` do. Written through, a
    link to another of the version's files left one of the two with the other's bytes, and a
    link to a file of the user's overwrote it.

    Raises:
        MregError: FAILED_PRECONDITION naming the conflicting path (two of the version's files
            led to one place by a symlinked directory among them), INVALID_ARGUMENT for a
            manifest path that would leave ``dest``.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise MregError(
            "FAILED_PRECONDITION", f"destination {dest} cannot be a directory: it or a directory above it is a file"
        ) from e
    except OSError as e:
        raise local_error(e, f"destination {dest}") from e
    root = dest.resolve()
    directories: dict[str, Path] = {}  # a manifest path's directory part -> that directory, resolved and made
    targets = []
    written: dict[Path, str] = {}  # target -> the manifest path that writes it
    for path in paths:
        folder, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            # Not a file's own name: the whole path is resolved, as every path once was, so "." and ".."
            # are refused by the same check.
            targets.append(safe_destination(dest, path))
            continue
        directory = directories.get(folder)
        if directory is None:
            directory = (dest / folder).resolve() if folder else root
            if directory != root and root not in directory.parents:
                raise _written_outside(dest, path)
            make_parents(directory / name)
            directories[folder] = directory
        target = directory / name
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            mode = 0
        except OSError as e:
            raise local_error(e, str(target)) from e
        if stat.S_ISDIR(mode):
            raise MregError(
                "FAILED_PRECONDITION", f"{target} is a directory, but the version has a file there; move it away"
            )
        other = written.setdefault(target, path)
        if other != path:
            raise MregError(
                "FAILED_PRECONDITION",
                f"the version's files {other} and {path} would both be written to {target}: a symlinked directory "
                f"in {dest} leads one path to the other; remove the link",
            )
        targets.append(target)
    return targets
