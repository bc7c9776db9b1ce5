"""gRPC servicer for mreg.blob.v1.BlobService: translates protos to the domain and back."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.blob_service import limits
from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import BlobError, InvalidArgument, Reason
from mreg.blob_service.metrics import BlobMetrics
from mreg.blob_service.service import BlobStore, Capabilities, WriteChunk, unhashed
from mreg.server_runtime.edge import Undecodable, add_servicer_to_server
from mreg.server_runtime.error_mapping import abort_on_domain_error, domain_status
from mreg.server_runtime.metrics import ServiceMetrics
from mreg.server_runtime.streams import IdleStreams

log = logging.getLogger(__name__)

LIST_BATCH = 1000
# gRPC's own default receive limit, for a servicer built without a server's configuration.
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 << 20


def _check(message: Any) -> Any:
    if isinstance(message, Undecodable):
        raise InvalidArgument(message.describe(), Reason.REQUEST_MALFORMED)
    limits.check_request(message)
    return message


def _checked(request: Any) -> Any:
    """The request checked, or for a request stream an iterator that checks each message."""
    if isinstance(request, Message | Undecodable):
        return _check(request)
    return (_check(message) for message in request)


# Checks requests against the edge bounds (a streamed request, Write, message by message as it is
# consumed) and maps domain errors to their gRPC status, in one place.
_abort_on_domain_error = abort_on_domain_error(BlobError, _checked)


def add_to_server(servicer: BlobServicer, server: grpc.Server) -> None:
    """Registers the servicer with deserializers that let it answer unparsable requests itself."""
    add_servicer_to_server(servicer, server, pb, "BlobService")


def _digest(message: pb.Digest) -> Digest:
    return Digest.parse(message.hash, message.size_bytes)


def _size_only(message: pb.Digest) -> Digest:
    """The digest of an upload whose hash comes with its last message: its size, and no hash yet."""
    if message.size_bytes <= 0:
        raise InvalidArgument(
            "a Write whose digest has no hash must give its size (size_bytes > 0); the hash then comes with "
            "finish_write",
            Reason.DIGEST_INVALID,
            {"field": "digest"},
        )
    return unhashed(message.size_bytes)


def _final_digest(message: pb.Digest, size_bytes: int) -> Digest:
    """The whole digest the last message of an upload begun without a hash must carry, of the size first given."""
    if not message.hash:
        raise InvalidArgument(
            "this upload began without the digest's hash: the message with finish_write must carry the whole digest",
            Reason.DIGEST_INVALID,
            {"field": "digest"},
        )
    digest = _digest(message)
    if digest.size_bytes != size_bytes:
        raise InvalidArgument(
            f"the digest with finish_write gives {digest.size_bytes} bytes, the first message {size_bytes}",
            Reason.DIGEST_INVALID,
            {"field": "digest"},
        )
    return digest


def _digest_pb(digest: Digest) -> pb.Digest:
    return pb.Digest(hash=digest.hash, size_bytes=digest.size_bytes)


def _status(error: BlobError | None) -> status_pb2.Status:
    if error is None:
        return status_pb2.Status(code=code_pb2.OK)
    # The same status, ErrorInfo included, as the error would end a whole call with.
    return domain_status(error)


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


class BlobServicer(pb_grpc.BlobServiceServicer):
    def __init__(
        self,
        store: BlobStore,
        idle_streams: IdleStreams | None = None,
        capabilities: Capabilities | None = None,
        metrics: BlobMetrics | None = None,
    ) -> None:
        self.store = store
        # Bytes in and out; a servicer built without a server counts into a registry nobody reads.
        self.metrics = metrics or BlobMetrics(ServiceMetrics("blob"))
        # Ends uploads and reads whose client stalls, so they give back their thread and stream slot.
        self.idle_streams = idle_streams
        self.capabilities = capabilities or store.capabilities(DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, None)

    @_abort_on_domain_error
    def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.GetCapabilitiesResponse:
        c = self.capabilities
        return pb.GetCapabilitiesResponse(
            digest_function=pb.DIGEST_FUNCTION_SHA256,
            max_batch_total_size_bytes=c.max_batch_total_size_bytes,
            max_batch_blobs=c.max_batch_blobs,
            max_receive_message_size_bytes=c.max_receive_message_size_bytes,
            read_chunk_size_bytes=c.read_chunk_size_bytes,
            write_chunk_size_bytes=c.write_chunk_size_bytes,
            min_gc_grace=_duration(c.min_gc_grace),
            upload_expiry=_duration(c.upload_expiry),
            stream_idle_timeout=_duration(c.stream_idle_timeout),
            write_digest_at_finish=c.write_digest_at_finish,
        )

    @_abort_on_domain_error
    def FindMissingBlobs(
        self, request: pb.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> pb.FindMissingBlobsResponse:
        missing = self.store.find_missing(_digest(d) for d in request.blob_digests)
        return pb.FindMissingBlobsResponse(missing_blob_digests=[_digest_pb(d) for d in missing])

    @_abort_on_domain_error
    def BatchUpdateBlobs(
        self, request: pb.BatchUpdateBlobsRequest, context: grpc.ServicerContext
    ) -> pb.BatchUpdateBlobsResponse:
        items = [(_digest(r.digest), r.data) for r in request.requests]
        self.metrics.batch_received.inc(sum(len(data) for _, data in items))
        errors = self.store.batch_update(items)
        return pb.BatchUpdateBlobsResponse(
            responses=[
                pb.BatchUpdateBlobsResponse.Response(digest=_digest_pb(d), status=_status(err))
                for (d, _), err in zip(items, errors, strict=True)
            ]
        )

    @_abort_on_domain_error
    def BatchReadBlobs(
        self, request: pb.BatchReadBlobsRequest, context: grpc.ServicerContext
    ) -> pb.BatchReadBlobsResponse:
        results = self.store.batch_read([_digest(d) for d in request.digests], verify=not request.skip_verification)
        self.metrics.batch_sent.inc(sum(len(r.data) for r in results if r.data))
        return pb.BatchReadBlobsResponse(
            responses=[
                pb.BatchReadBlobsResponse.Response(
                    digest=_digest_pb(r.digest), data=r.data or b"", status=_status(r.error)
                )
                for r in results
            ]
        )

    @_abort_on_domain_error
    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadResponse]:
        chunks: Iterator[bytes] = self.store.read(
            _digest(request.digest), request.read_offset, request.read_limit, verify=not request.skip_verification
        )
        if self.idle_streams is not None:
            chunks = self.idle_streams.watch_responses(
                chunks, context, "read again from the offset you reached (read_offset)"
            )
        sent = self.metrics.read_sent
        for data in chunks:
            yield pb.ReadResponse(data=data)
            sent.inc(len(data))  # once gRPC took it: a cancelled read counts what left

    @_abort_on_domain_error
    def Write(self, request_iterator: Iterator[pb.WriteRequest], context: grpc.ServicerContext) -> pb.WriteResponse:
        if self.idle_streams is not None:
            request_iterator = self.idle_streams.watch(
                request_iterator,
                context,
                "the bytes received are kept: call QueryWriteStatus and resume from committed_size",
            )
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument("the write stream carried no message", metadata={"field": "upload_id"})
        if not first.upload_id or not first.HasField("digest"):
            raise InvalidArgument(
                "the first WriteRequest must set upload_id and digest",
                metadata={"field": "digest" if first.upload_id else "upload_id"},
            )
        # No hash in the first message: it comes with the last (write_digest_at_finish).
        hash_at_finish = not first.digest.hash
        digest = _size_only(first.digest) if hash_at_finish else _digest(first.digest)
        received = self.metrics.write_received

        def chunks() -> Iterator[WriteChunk]:
            message = first
            while True:
                received.inc(len(message.data))
                final = None
                if hash_at_finish and message.finish_write:
                    final = _final_digest(message.digest, digest.size_bytes)
                if (message.upload_id and message.upload_id != first.upload_id) or (
                    final is None and message.HasField("digest") and message.digest != first.digest
                ):
                    raise InvalidArgument(
                        "upload_id and digest must not change within a write stream"
                        + (" (its hash comes with finish_write)" if hash_at_finish else ""),
                        metadata={"field": "digest" if message.upload_id == first.upload_id else "upload_id"},
                    )
                yield WriteChunk(message.write_offset, message.data, message.finish_write, final)
                if message.finish_write:
                    return
                next_message = next(request_iterator, None)
                if next_message is None:
                    return
                message = next_message

        committed = self.store.write(first.upload_id, digest, chunks())
        return pb.WriteResponse(committed_size=committed)

    @_abort_on_domain_error
    def QueryWriteStatus(
        self, request: pb.QueryWriteStatusRequest, context: grpc.ServicerContext
    ) -> pb.QueryWriteStatusResponse:
        # An upload begun without the hash is known by its size until it finishes (write_digest_at_finish).
        digest = _size_only(request.digest) if not request.digest.hash else _digest(request.digest)
        committed, complete = self.store.query_write_status(request.upload_id, digest)
        return pb.QueryWriteStatusResponse(committed_size=committed, complete=complete)

    @_abort_on_domain_error
    def ListBlobs(self, request: pb.ListBlobsRequest, context: grpc.ServicerContext) -> Iterator[pb.ListBlobsResponse]:
        batch: list[pb.Digest] = []
        for digest in self.store.unused_blobs(_time(request, "unused_before")):
            batch.append(_digest_pb(digest))
            if len(batch) == LIST_BATCH:
                yield pb.ListBlobsResponse(digests=batch)
                batch = []
        if batch:
            yield pb.ListBlobsResponse(digests=batch)

    @_abort_on_domain_error
    def DeleteBlobs(self, request: pb.DeleteBlobsRequest, context: grpc.ServicerContext) -> pb.DeleteBlobsResponse:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        deleted, removed = self.store.delete_unused(
            [_digest(d) for d in request.digests],
            _time(request, "unused_before"),
            request.remove_stale_uploads,
            deadline=deadline,
        )
        return pb.DeleteBlobsResponse(deleted_digests=[_digest_pb(d) for d in deleted], removed_upload_parts=removed)


def _time(request: Any, field: str) -> datetime:
    if not request.HasField(field):
        raise InvalidArgument(f"{field} must be set", metadata={"field": field})
    return getattr(request, field).ToDatetime(tzinfo=UTC)
