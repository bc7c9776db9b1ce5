"""The metadata service's view of the blob service: which manifest content is stored."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc

from metadata_service.errors import FailedPrecondition, Unavailable

# FindMissingBlobs requests are kept well under gRPC's default 4 MiB message limit.
_BATCH = 10_000


class BlobContentChecker:
    """Asks a blob service over gRPC which digests it lacks."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address)
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
                    raise FailedPrecondition(f"the blob service rejected the manifest: {e.details()}") from e
                raise Unavailable(
                    f"cannot verify content with the blob service at {self.address}: {code.name} {e.details()}"
                ) from e
            missing.extend((d.hash, d.size_bytes) for d in response.missing_blob_digests)
        return missing

    def close(self) -> None:
        self._channel.close()
