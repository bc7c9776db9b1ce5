"""Moving content to and from the blob service: parallel, verified, resumable.

Large files travel as Write/Read streams of 1 MiB chunks; small files are grouped into
BatchUpdateBlobs/BatchReadBlobs calls so thousands of them cost a handful of round
trips. A broken upload continues from the offset QueryWriteStatus reports; a broken
download continues from the bytes already received. Every downloaded file is hashed and
lands at its destination only by rename after its digest matched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc

from client.errors import MregError
from client.hashing import LocalFile

CHUNK_SIZE = 1 << 20
# Files up to this size travel in batches; the batch limit stays under the server's.
SMALL_FILE_BYTES = 1 << 20
BATCH_BYTES = 8 << 20
BATCH_COUNT = 2000
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
# Enough attempts, with backoff capped at 2 s, to ride out a blob service restart.
ATTEMPTS = 9

ProgressCallback = Callable[[int], None]
FileT = TypeVar("FileT", LocalFile, "RemoteFile")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file to download: its manifest path and digest."""

    path: str
    sha256: str
    size_bytes: int


def _digest(sha256: str, size: int) -> pb.Digest:
    return pb.Digest(hash=sha256, size_bytes=size)


def _code_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), f"CODE_{code}")


def _transient(error: grpc.RpcError) -> bool:
    """True for failures worth retrying: the transient codes, and any refusal carrying google.rpc.RetryInfo
    (a server at its stream limit says RESOURCE_EXHAUSTED with it; a full store says it without)."""
    if error.code() in RETRYABLE:
        return True
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def _backoff(attempt: int) -> None:
    time.sleep(min(2.0, 0.1 * 2**attempt))


def _retrying(call: Callable[[], T]) -> T:
    """Runs a unary call, retrying transient failures with backoff."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except grpc.RpcError as e:
            if not _transient(e) or attempt == ATTEMPTS - 1:
                raise MregError.from_rpc(e, "the blob service") from e
            _backoff(attempt)
    raise AssertionError("unreachable")


def _batches(items: Sequence[FileT]) -> Iterator[list[FileT]]:
    batch: list[FileT] = []
    size = 0
    for item in items:
        if batch and (size + item.size_bytes > BATCH_BYTES or len(batch) >= BATCH_COUNT):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size_bytes
    if batch:
        yield batch


class BlobTransfer:
    """Uploads and downloads through one blob service stub."""

    def __init__(self, stub: pb_grpc.BlobServiceStub, parallel: int = 8) -> None:
        self.stub = stub
        self.parallel = max(1, parallel)

    # Uploads ---------------------------------------------------------------------------

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        missing: set[tuple[str, int]] = set()
        for start in range(0, len(digests), 10_000):
            request = pb.FindMissingBlobsRequest(
                blob_digests=[_digest(h, s) for h, s in digests[start : start + 10_000]]
            )
            try:
                response = self.stub.FindMissingBlobs(request)
            except grpc.RpcError as e:
                raise MregError.from_rpc(e, "the blob service") from e
            missing.update((d.hash, d.size_bytes) for d in response.missing_blob_digests)
        return missing

    def upload(self, files: Sequence[LocalFile], progress: ProgressCallback | None = None) -> int:
        """Uploads the content of ``files`` (one copy per distinct digest); returns bytes sent."""
        unique = list({(f.sha256, f.size_bytes): f for f in files}.values())
        small = [f for f in unique if f.size_bytes <= SMALL_FILE_BYTES]
        large = sorted((f for f in unique if f.size_bytes > SMALL_FILE_BYTES), key=lambda f: -f.size_bytes)
        report = progress or (lambda n: None)
        with ThreadPoolExecutor(self.parallel) as pool:
            jobs = [pool.submit(self._upload_stream, f, report) for f in large]
            jobs += [pool.submit(self._upload_batch, batch, report) for batch in _batches(small)]
            for job in jobs:
                job.result()
        return sum(f.size_bytes for f in unique)

    def _upload_batch(self, files: list[LocalFile], report: ProgressCallback) -> None:
        requests = []
        for f in files:
            requests.append(
                pb.BatchUpdateBlobsRequest.Request(digest=_digest(f.sha256, f.size_bytes), data=f.source.read_bytes())
            )
        response = _retrying(lambda: self.stub.BatchUpdateBlobs(pb.BatchUpdateBlobsRequest(requests=requests)))
        for f, result in zip(files, response.responses, strict=True):
            if result.status.code != 0:
                raise MregError(
                    _code_name(result.status.code),
                    f"{f.path}: {result.status.message} (did the file change while pushing?)",
                )
            report(f.size_bytes)

    def _upload_stream(self, file: LocalFile, report: ProgressCallback) -> None:
        upload_id = uuid.uuid4().hex
        digest = _digest(file.sha256, file.size_bytes)
        offset = 0
        for attempt in range(ATTEMPTS):
            try:
                response = self.stub.Write(self._write_requests(file, upload_id, digest, offset, report))
                if response.committed_size == file.size_bytes:
                    return
                raise MregError("DATA_LOSS", f"{file.path}: the blob service stored only part of the file")
            except grpc.RpcError as e:
                if not (_transient(e) or e.code() == grpc.StatusCode.OUT_OF_RANGE) or attempt == ATTEMPTS - 1:
                    error = MregError.from_rpc(e, "the blob service")
                    raise MregError(error.code, f"{file.path}: {error.message}") from e
                _backoff(attempt)
                offset = self._resume_offset(upload_id, digest)
                if offset == file.size_bytes:
                    return

    def _resume_offset(self, upload_id: str, digest: pb.Digest) -> int:
        try:
            status = self.stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            if e.code() in RETRYABLE:
                return -1  # unknown yet; the next Write attempt will be told the right offset
            raise MregError.from_rpc(e, "the blob service") from e
        return digest.size_bytes if status.complete else status.committed_size

    def _write_requests(
        self, file: LocalFile, upload_id: str, digest: pb.Digest, offset: int, report: ProgressCallback
    ) -> Iterator[pb.WriteRequest]:
        offset = max(offset, 0)
        with open(file.source, "rb", buffering=0) as f:
            f.seek(offset)
            first = True
            while True:
                data = f.read(CHUNK_SIZE)
                finish = offset + len(data) >= file.size_bytes
                yield pb.WriteRequest(
                    upload_id=upload_id if first else "",
                    digest=digest if first else None,
                    write_offset=offset,
                    finish_write=finish,
                    data=data,
                )
                first = False
                offset += len(data)
                report(len(data))
                if finish or not data:
                    return

    # Downloads -------------------------------------------------------------------------

    def download(self, files: Sequence[RemoteFile], dest: Path, progress: ProgressCallback | None = None) -> int:
        """Downloads files under ``dest``, verified; returns the bytes received."""
        report = progress or (lambda n: None)
        small = [f for f in files if f.size_bytes <= SMALL_FILE_BYTES]
        large = sorted((f for f in files if f.size_bytes > SMALL_FILE_BYTES), key=lambda f: -f.size_bytes)
        with ThreadPoolExecutor(self.parallel) as pool:
            jobs = [pool.submit(self._download_stream, f, dest, report) for f in large]
            jobs += [pool.submit(self._download_batch, batch, dest, report) for batch in _batches(small)]
            for job in jobs:
                job.result()
        return sum(f.size_bytes for f in files)

    def _download_batch(self, files: list[RemoteFile], dest: Path, report: ProgressCallback) -> None:
        request = pb.BatchReadBlobsRequest(digests=[_digest(f.sha256, f.size_bytes) for f in files])
        response = _retrying(lambda: self.stub.BatchReadBlobs(request))
        for f, result in zip(files, response.responses, strict=True):
            if result.status.code != 0:
                raise MregError(_code_name(result.status.code), f"{f.path}: {result.status.message}")
            with _verified_target(dest, f) as (out, hasher):
                out.write(result.data)
                hasher.update(result.data)
            report(f.size_bytes)

    def _download_stream(self, file: RemoteFile, dest: Path, report: ProgressCallback) -> None:
        with _verified_target(dest, file) as (out, hasher):
            received = 0
            for attempt in range(ATTEMPTS):
                try:
                    request = pb.ReadRequest(digest=_digest(file.sha256, file.size_bytes), read_offset=received)
                    for chunk in self.stub.Read(request):
                        out.write(chunk.data)
                        hasher.update(chunk.data)
                        received += len(chunk.data)
                        report(len(chunk.data))
                    return
                except grpc.RpcError as e:
                    if not _transient(e) or attempt == ATTEMPTS - 1:
                        error = MregError.from_rpc(e, "the blob service")
                        raise MregError(error.code, f"{file.path}: {error.message}") from e
                    _backoff(attempt)


def safe_destination(dest: Path, path: str) -> Path:
    """The file ``path`` names under ``dest``; refuses anything that would land outside it."""
    target = (dest / path).resolve()
    root = dest.resolve()
    if target == root or root not in target.parents:
        raise MregError("INVALID_ARGUMENT", f"manifest path {path!r} would be written outside {dest}")
    return target


@contextlib.contextmanager
def _verified_target(dest: Path, file: RemoteFile) -> Iterator[tuple[BinaryIO, Any]]:
    """Yields (temp file, hasher); on success the digest is checked and the file renamed into place.

    On any failure the temporary file is removed, so no partial or unverified file is
    ever left at the destination.
    """
    target = safe_destination(dest, file.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.mreg-partial-{uuid.uuid4().hex[:8]}"
    hasher = hashlib.sha256()
    try:
        with open(temp, "wb") as out:
            yield out, hasher
        actual_size = temp.stat().st_size
        if actual_size != file.size_bytes or hasher.hexdigest() != file.sha256:
            raise MregError(
                "DATA_LOSS",
                f"{file.path}: received content does not match its digest "
                f"({actual_size} bytes, sha256 {hasher.hexdigest()}; expected {file.size_bytes}, {file.sha256})",
            )
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
