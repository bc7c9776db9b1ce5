"""The metadata service's view of the blob service: which content is stored, and garbage collection."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.client.channels import BearerToken, replica_channel
from mreg.client.errors import MregError
from mreg.metadata_service.errors import FailedPrecondition, Reason, Unavailable
from mreg.server_runtime.transport import TransportConfigError

# FindMissingBlobs requests are kept well under gRPC's default 4 MiB message limit.
_BATCH = 10_000
# Shorter than the garbage collector's lease (service.GC_LEASE); the blob service stops
# deleting when it passes.
DELETE_TIMEOUT = 300.0
T = TypeVar("T")


class BlobServiceClient:
    """Asks a blob service over gRPC which digests it lacks, and deletes unused ones.

    ``credentials`` (``server_runtime.transport.channel_credentials``) make the channel TLS;
    None connects in plaintext. ``token`` is the secret the two services share, sent as a
    bearer token when authentication is on.
    """

    def __init__(
        self,
        address: str,
        timeout: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        # Several blob replicas (a comma-separated list or a DNS name) are balanced as the client balances them:
        # a replica that is down is skipped at once. No transport retries: the callers of the metadata service
        # retry UNAVAILABLE themselves, and retrying here as well would multiply their wait. A malformed list is
        # refused here, at start-up, not at the first commit.
        try:
            channel = replica_channel(address, credentials, retries=False)
        except MregError as e:
            raise TransportConfigError(f"--blob-addr {address!r}: {e.message}") from None
        self._channel = grpc.intercept_channel(channel, BearerToken(token)) if token else channel
        self._stub = blob_grpc.BlobServiceStub(self._channel)
        self._timeout = timeout

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        missing: list[tuple[str, int]] = []
        for start in range(0, len(digests), _BATCH):
            request = blob_pb.FindMissingBlobsRequest(
                blob_digests=[blob_pb.Digest(hash=h, size_bytes=s) for h, s in digests[start : start + _BATCH]]
            )
            try:
                response = self._stub.FindMissingBlobs(request, timeout=self._timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise FailedPrecondition(
                        f"the blob service rejected the manifest: {e.details()}", reason=Reason.MANIFEST_INVALID
                    ) from e
                raise Unavailable(
                    f"cannot verify content with the blob service at {self.address}: {code.name} {e.details()}",
                    Reason.BLOB_SERVICE_UNAVAILABLE,
                ) from e
            missing.extend((d.hash, d.size_bytes) for d in response.missing_blob_digests)
        return missing

    def close(self) -> None:
        self._channel.close()

    def _rpc(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except grpc.RpcError as e:
            raise Unavailable(
                f"the blob service at {self.address} failed: {e.code().name} {e.details()}",
                Reason.BLOB_SERVICE_UNAVAILABLE,
            ) from e

    def list_unused(self, unused_before: datetime) -> Iterator[list[tuple[str, int]]]:
        """Batches of (sha256, size) of blobs unused since ``unused_before``."""
        request = blob_pb.ListBlobsRequest(unused_before=_timestamp(unused_before))
        try:
            for response in self._stub.ListBlobs(request, timeout=3600):
                yield [(d.hash, d.size_bytes) for d in response.digests]
        except grpc.RpcError as e:
            raise Unavailable(
                f"the blob service at {self.address} failed: {e.code().name} {e.details()}",
                Reason.BLOB_SERVICE_UNAVAILABLE,
            ) from e

    def delete_unused(
        self, digests: Sequence[tuple[str, int]], unused_before: datetime, remove_stale_uploads: bool
    ) -> tuple[list[tuple[str, int]], int]:
        request = blob_pb.DeleteBlobsRequest(
            digests=[blob_pb.Digest(hash=h, size_bytes=s) for h, s in digests],
            unused_before=_timestamp(unused_before),
            remove_stale_uploads=remove_stale_uploads,
        )
        response = self._rpc(lambda: self._stub.DeleteBlobs(request, timeout=DELETE_TIMEOUT))
        return [(d.hash, d.size_bytes) for d in response.deleted_digests], response.removed_upload_parts


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
