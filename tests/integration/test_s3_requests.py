"""What each blob operation costs an S3 store, in requests, counted by the service's own metric.

An object store bills and limits by request, and on a small blob each request costs as much as its bytes: a
small-file push or pull runs at the store's request rate divided by the requests per blob. The blob service
counts every request it makes (``mreg_blob_store_requests_total`` by HTTP method); these tests run it on real
S3 servers (moto, rclone) and check what each operation asks of them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from tests.helpers import digest_of, read_all, store_requests, write_requests
from tests.s3_server import S3Server

SMALL_BLOBS = 12


class CountedBlobService:
    """A blob service on an S3 bucket of its own, with its metrics endpoint."""

    def __init__(self, running: blob_server.RunningBlobServer) -> None:
        self.running = running
        self.channel = grpc.insecure_channel(running.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.BlobServiceStub(self.channel)

    def requests(self) -> dict[str, float]:
        """Requests made to the store so far, by HTTP method."""
        endpoint = self.running.metrics_endpoint
        assert endpoint is not None
        return store_requests(endpoint)

    def requests_made_by(self, operation: Any) -> dict[str, int]:
        """The requests, by method, that ``operation()`` made the service send its store."""
        before = self.requests()
        operation()
        after = self.requests()
        return {
            method: int(count - before.get(method, 0))
            for method, count in after.items()
            if count > before.get(method, 0)
        }


@pytest.fixture(scope="module")
def service(s3_server: S3Server) -> Iterator[CountedBlobService]:
    store = s3_server.store_url(f"requests-{uuid.uuid4().hex[:8]}")
    running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=store, metrics_listen="127.0.0.1:0"))
    counted = CountedBlobService(running)
    yield counted
    counted.channel.close()
    running.stop(grace=None)


def small_blobs() -> list[tuple[pb.Digest, bytes]]:
    contents = [os.urandom(1000 + 97 * i) for i in range(SMALL_BLOBS)]
    return [(digest_of(data), data) for data in contents]


def batch_update(stub: pb_grpc.BlobServiceStub, blobs: list[tuple[pb.Digest, bytes]]) -> None:
    request = pb.BatchUpdateBlobsRequest(
        requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data) for digest, data in blobs]
    )
    statuses = [response.status.code for response in stub.BatchUpdateBlobs(request).responses]
    assert statuses == [0] * len(blobs)


def test_storing_new_small_blobs_is_one_put_each_and_nothing_else(service: CountedBlobService) -> None:
    blobs = small_blobs()
    made = service.requests_made_by(lambda: batch_update(service.stub, blobs))
    assert made == {"PUT": SMALL_BLOBS}
    for digest, data in blobs:
        assert read_all(service.stub, digest) == data


def test_reading_small_blobs_is_one_get_each_and_nothing_else(service: CountedBlobService) -> None:
    blobs = small_blobs()
    batch_update(service.stub, blobs)
    request = pb.BatchReadBlobsRequest(digests=[digest for digest, _ in blobs], skip_verification=True)

    def read() -> None:
        responses = service.stub.BatchReadBlobs(request).responses
        assert [(r.status.code, r.data) for r in responses] == [(0, data) for _, data in blobs]

    assert service.requests_made_by(read) == {"GET": SMALL_BLOBS}
    # A ranged read of a blob is one GET too.
    digest, data = blobs[-1]
    ranged = pb.ReadRequest(digest=digest, read_offset=100, read_limit=500, skip_verification=True)
    got: list[bytes] = []
    assert service.requests_made_by(lambda: got.extend(r.data for r in service.stub.Read(ranged))) == {"GET": 1}
    assert b"".join(got) == data[100:600]


def test_finding_which_blobs_are_missing_is_one_head_each(service: CountedBlobService) -> None:
    blobs = small_blobs()
    batch_update(service.stub, blobs[: SMALL_BLOBS // 2])
    request = pb.FindMissingBlobsRequest(blob_digests=[digest for digest, _ in blobs])
    missing: list[pb.Digest] = []
    made = service.requests_made_by(lambda: missing.extend(service.stub.FindMissingBlobs(request).missing_blob_digests))
    assert made == {"HEAD": SMALL_BLOBS}
    assert missing == [digest for digest, _ in blobs[SMALL_BLOBS // 2 :]]


@pytest.mark.parametrize("offset", [0, 2500, 3500])
def test_a_read_by_a_larger_size_than_stored_is_not_found_wherever_it_starts(
    service: CountedBlobService, offset: int
) -> None:
    # The size comes from the GET's answer rather than a HEAD: a range past the end of the stored copy is
    # refused by the store (416), which must still read as "no blob of that size", not as an outage.
    data = os.urandom(3000)
    digest = digest_of(data)
    batch_update(service.stub, [(digest, data)])
    larger = pb.Digest(hash=digest.hash, size_bytes=4000)
    for skip_verification in (True, False):
        request = pb.ReadRequest(digest=larger, read_offset=offset, skip_verification=skip_verification)
        with pytest.raises(grpc.RpcError) as error:
            list(service.stub.Read(request))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND, error.value.details()
    assert read_all(service.stub, digest) == data


def test_a_large_blob_read_back_whole_is_one_get(service: CountedBlobService) -> None:
    data = os.urandom((8 << 20) + 12345)  # stored from two parts
    digest = digest_of(data)
    service.stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    assert service.requests_made_by(lambda: read_all(service.stub, digest)) == {"GET": 1}
