"""Large uploads to an S3 store, sent as S3 multipart uploads of the blob's own key.

Each byte goes to the store once and the blob appears, complete, when the service completes the multipart
upload after verifying its digest. The parts cannot be read back before that, so an upload is continued (on
another replica, or after a restart) from its record: its parts and the hash state after them. These tests
run two blob services on one bucket of a real S3 server (moto, rclone).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.digests import Digest
from mreg.blob_service.storage.s3 import _RECORD, S3Storage, _Record, _S3Upload
from tests.helpers import digest_of, new_upload, read_all, store_requests, write_requests
from tests.s3_faults import Fault, FaultyS3Proxy
from tests.s3_server import S3Server

MiB = 1 << 20


@dataclass
class Replica:
    running: blob_server.RunningBlobServer
    stub: pb_grpc.BlobServiceStub

    @property
    def storage(self) -> S3Storage:
        storage = self.running.store.storage
        assert isinstance(storage, S3Storage)
        return storage

    def requests(self) -> dict[str, float]:
        endpoint = self.running.metrics_endpoint
        assert endpoint is not None
        return store_requests(endpoint)


@pytest.fixture
def replicas(s3_server: S3Server) -> Iterator[tuple[Replica, Replica]]:
    store = s3_server.store_url(f"multipart-{uuid.uuid4().hex[:8]}")
    started: list[tuple[blob_server.RunningBlobServer, grpc.Channel]] = []
    for _ in range(2):
        running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=store, metrics_listen="127.0.0.1:0"))
        started.append((running, grpc.insecure_channel(running.address)))
    yield tuple(Replica(running, pb_grpc.BlobServiceStub(channel)) for running, channel in started)  # type: ignore[misc]
    for running, channel in started:
        channel.close()
        running.stop(grace=None)


def send_part_of(stub: pb_grpc.BlobServiceStub, data: bytes, digest: pb.Digest, upload_id: str, mib: int) -> int:
    """Sends the first ``mib`` MiB of an upload in a stream that ends unfinished; returns the committed size."""
    requests = itertools.islice(write_requests(data, digest, upload_id, finish=False), mib)
    return stub.Write(requests).committed_size


def committed(stub: pb_grpc.BlobServiceStub, upload_id: str, digest: pb.Digest) -> int | None:
    try:
        return stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest)).committed_size
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
        return None


def record_of(replica: Replica, upload_id: str, digest: pb.Digest) -> _Record | None:
    return replica.storage._read_record(replica.storage.key(f"uploads/{upload_id}.{digest.hash}/"))


def test_a_large_upload_sends_each_part_once_and_is_published_without_a_copy(
    replicas: tuple[Replica, Replica],
) -> None:
    one, _ = replicas
    data = os.urandom(16 * MiB + 12345)
    digest = digest_of(data)
    before = one.requests()
    assert one.stub.Write(write_requests(data, digest, uuid.uuid4().hex)).committed_size == len(data)
    made = {method: int(count - before.get(method, 0)) for method, count in one.requests().items()}
    made = {method: count for method, count in made.items() if count}
    # Three parts, each PUT once, and a record saved after the upload began and after each whole part; one
    # multipart upload begun and completed (POST); no part read back or copied. The service looks for the
    # blob before and after receiving it, checks what the completion made, and looks at its date (HEAD); it
    # looks for an upload to continue (its record, then staged parts: GET).
    assert made == {"PUT": 3 + 3, "POST": 2, "HEAD": 4, "GET": 2, "DELETE": 1}
    assert read_all(one.stub, digest) == data


def test_an_upload_cut_on_one_replica_continues_on_the_other_from_the_last_byte_it_received(
    replicas: tuple[Replica, Replica],
) -> None:
    one, other = replicas
    data, digest, upload_id = new_upload(20 * MiB + 777)
    # 12 MiB: one whole 8 MiB part sent to the store, the 4 MiB after it kept in the upload's record.
    assert send_part_of(one.stub, data, digest, upload_id, mib=12) == 12 * MiB
    assert committed(other.stub, upload_id, digest) == 12 * MiB

    response = other.stub.Write(write_requests(data, digest, upload_id, offset=12 * MiB))

    assert response.committed_size == len(data)
    assert read_all(one.stub, digest) == data and read_all(other.stub, digest) == data
    assert record_of(one, upload_id, digest) is None  # nothing of the upload is left behind


def test_bytes_changed_after_the_cut_are_refused_whole_by_the_replica_that_continues(
    replicas: tuple[Replica, Replica],
) -> None:
    one, other = replicas
    data, digest, upload_id = new_upload(20 * MiB)
    send_part_of(one.stub, data, digest, upload_id, mib=10)
    changed = data[: 15 * MiB] + bytes([data[15 * MiB] ^ 0xFF]) + data[15 * MiB + 1 :]  # always another byte

    with pytest.raises(grpc.RpcError) as error:
        other.stub.Write(write_requests(changed, digest, upload_id, offset=10 * MiB))

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match" in (error.value.details() or "")
    found = other.stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests
    assert list(found) == [digest]
    assert committed(one.stub, upload_id, digest) is None


def test_an_upload_the_store_lost_is_reported_gone_and_starts_again(
    replicas: tuple[Replica, Replica], s3_server: S3Server
) -> None:
    """A server that keeps uploads in memory restarted, or a lifecycle rule aborted the upload: its parts are
    gone, so no replica may report them as held."""
    one, other = replicas
    data, digest, upload_id = new_upload(18 * MiB)
    send_part_of(one.stub, data, digest, upload_id, mib=9)
    record = record_of(one, upload_id, digest)
    assert record is not None and record.s3_upload is not None and len(record.parts) == 1
    s3_server.client()._abort_multipart_upload(one.storage.bucket, one.storage._hash_key(digest.hash), record.s3_upload)

    assert committed(other.stub, upload_id, digest) is None
    with pytest.raises(grpc.RpcError) as error:
        other.stub.Write(write_requests(data, digest, upload_id, offset=9 * MiB))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert dict(error.value.trailing_metadata() or ()).get("committed_size") in (None, "0")
    assert other.stub.Write(write_requests(data, digest, upload_id)).committed_size == len(data)
    assert read_all(one.stub, digest) == data


def test_the_janitor_aborts_an_abandoned_upload_and_its_parts_with_it(
    replicas: tuple[Replica, Replica], s3_server: S3Server
) -> None:
    one, other = replicas
    data, digest, upload_id = new_upload(17 * MiB)
    send_part_of(one.stub, data, digest, upload_id, mib=17)
    record = record_of(one, upload_id, digest)
    assert record is not None and record.s3_upload is not None and len(record.parts) == 2

    removed = other.storage.remove_stale_uploads(datetime.now(UTC) + timedelta(days=1))

    assert removed == 1 + 2  # the record, and the two parts of the upload it names
    assert record_of(one, upload_id, digest) is None
    assert not one.storage.holds_multipart_upload(one.storage._hash_key(digest.hash), record.s3_upload)
    assert committed(one.stub, upload_id, digest) is None


def test_an_upload_staged_by_an_earlier_version_is_continued_as_it_was_begun(
    replicas: tuple[Replica, Replica],
) -> None:
    """Uploads in progress when the service is upgraded: staged as objects of their own, they still finish."""
    one, other = replicas
    data, digest, upload_id = new_upload(12 * MiB + 5)
    staged = _S3Upload(one.storage, upload_id, Digest(digest.hash, digest.size_bytes))
    staged.append(data[: 9 * MiB])
    staged.close()
    assert committed(other.stub, upload_id, digest) == 9 * MiB

    assert other.stub.Write(write_requests(data, digest, upload_id, offset=9 * MiB)).committed_size == len(data)
    assert read_all(one.stub, digest) == data
    assert one.storage.staged_parts(one.storage.key(f"uploads/{upload_id}.{digest.hash}/")) == []


def test_a_hash_state_saved_by_another_build_starts_the_upload_again(replicas: tuple[Replica, Replica]) -> None:
    one, other = replicas
    data, digest, upload_id = new_upload(10 * MiB)
    send_part_of(one.stub, data, digest, upload_id, mib=9)
    prefix = one.storage.key(f"uploads/{upload_id}.{digest.hash}/")
    record = one.storage._read_record(prefix)
    assert record is not None and record.hash_state is not None
    record.hash_state = b"sha256-ctx-v0-elsewhere:" + bytes(112)
    one.storage.put(f"{prefix}{_RECORD}", record.encode(record.tail))

    with pytest.raises(grpc.RpcError) as error:
        other.stub.Write(write_requests(data, digest, upload_id, offset=9 * MiB))

    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "start it again at offset 0" in (error.value.details() or "")
    assert committed(one.stub, upload_id, digest) is None
    assert other.stub.Write(write_requests(data, digest, upload_id)).committed_size == len(data)
    assert hashlib.sha256(read_all(one.stub, digest)).hexdigest() == digest.hash


def test_a_blob_published_from_an_upload_begun_long_before_is_dated_when_published(
    s3_server: S3Server,
) -> None:
    """Some S3 servers date an object made by a multipart upload when the upload began (rclone does; AWS is
    reported to): a blob from an upload begun hours earlier would look unused that long, and garbage collection
    could take it before its version is committed. Here the minimum grace is 3 s, so renewal is due after 1 s."""
    store = s3_server.store_url(f"dated-{uuid.uuid4().hex[:8]}")
    running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=store, min_gc_grace_seconds=3))
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.BlobServiceStub(channel)
            data, digest, upload_id = new_upload(10 * MiB)
            send_part_of(stub, data, digest, upload_id, mib=9)  # the multipart upload begins with its first part
            threading.Event().wait(2.5)
            finishing = datetime.now(UTC).replace(microsecond=0)  # S3 dates have one-second resolution
            stub.Write(write_requests(data, digest, upload_id, offset=9 * MiB))
            last_used = running.store.storage.last_used(Digest(digest.hash, digest.size_bytes))
            assert last_used is not None and last_used >= finishing
    finally:
        running.stop(grace=None)


@pytest.fixture
def faulty(s3_server: S3Server) -> Iterator[tuple[FaultyS3Proxy, pb_grpc.BlobServiceStub]]:
    """A blob service whose S3 store answers through a proxy that fails the requests a test picks."""
    proxy = FaultyS3Proxy(s3_server.port).start()
    running = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=proxy.store_url(f"faults-{uuid.uuid4().hex[:8]}"))
    )
    channel = grpc.insecure_channel(running.address)
    yield proxy, pb_grpc.BlobServiceStub(channel)
    channel.close()
    running.stop(grace=None)
    proxy.stop()


def resumed_until_stored(stub: pb_grpc.BlobServiceStub, data: bytes, digest: pb.Digest, upload_id: str) -> None:
    """What a client does after a broken Write: asks what the service holds and continues from there."""
    offset = committed(stub, upload_id, digest) or 0
    assert offset <= len(data), f"the service says it holds {offset} bytes of a {len(data)}-byte blob"
    assert stub.Write(write_requests(data, digest, upload_id, offset=offset)).committed_size == len(data)
    assert read_all(stub, digest) == data


# urllib3 tries a PUT answered 503 three times in all, and a POST (not idempotent) once: faults of that many
# answers fail the request for the service.
PUT_FAILED_FOR_GOOD, POST_FAILED_FOR_GOOD = 3, 1


def test_a_part_the_store_fails_leaves_the_upload_holding_what_the_store_holds(
    faulty: tuple[FaultyS3Proxy, pb_grpc.BlobServiceStub],
) -> None:
    proxy, stub = faulty
    data, digest, upload_id = new_upload(30 * MiB)
    proxy.fail(Fault("PUT", "partNumber=2&", PUT_FAILED_FOR_GOOD))

    with pytest.raises(grpc.RpcError) as error:
        stub.Write(write_requests(data, digest, upload_id))

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert proxy.failed, "the fault never happened"
    assert committed(stub, upload_id, digest) == 8 * MiB  # the first part; the second never reached the store
    resumed_until_stored(stub, data, digest, upload_id)


@pytest.mark.parametrize("answer", ["an error", "200 with an error in the body"])
def test_a_completion_the_store_fails_leaves_the_upload_to_be_completed_again(
    faulty: tuple[FaultyS3Proxy, pb_grpc.BlobServiceStub], answer: str
) -> None:
    """S3 may answer a completion 200 and put its error in the body: the blob is then not there, whatever the
    status said, and the Write must not report it stored."""
    proxy, stub = faulty
    data, digest, upload_id = new_upload(20 * MiB + 99)
    if answer == "an error":
        proxy.fail(Fault("POST", "uploadId=", POST_FAILED_FOR_GOOD))
    else:
        body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>x</Message></Error>"
        proxy.fail(Fault("POST", "uploadId=", 1, status=200, body=body))

    with pytest.raises(grpc.RpcError) as error:
        stub.Write(write_requests(data, digest, upload_id))

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    missing = stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests
    assert list(missing) == [digest]
    resumed_until_stored(stub, data, digest, upload_id)


def test_the_janitor_aborts_old_multipart_uploads_no_record_names_and_leaves_recorded_ones(
    replicas: tuple[Replica, Replica], s3_server: S3Server
) -> None:
    """A second stream of one upload, or a replica killed before it recorded its multipart upload, leaves one no
    record names: its parts would be kept (and billed) for good."""
    one, other = replicas
    data, digest, upload_id = new_upload(9 * MiB)
    send_part_of(one.stub, data, digest, upload_id, mib=9)
    record = record_of(one, upload_id, digest)
    assert record is not None and record.s3_upload is not None
    key = one.storage._hash_key(digest.hash)
    client = s3_server.client()
    unrecorded = client._create_multipart_upload(one.storage.bucket, key, {})

    def multipart_uploads() -> set[str]:
        listed = client._list_multipart_uploads(one.storage.bucket, prefix=one.storage.key("blobs/"))
        return {upload.upload_id for upload in listed.uploads if upload.upload_id}

    if not multipart_uploads():
        pytest.skip(f"{s3_server.kind} lists no multipart uploads (rclone keeps them in memory until it restarts)")
    assert {unrecorded, record.s3_upload} <= multipart_uploads()
    later = datetime.now(UTC) + timedelta(days=1)  # as if the upload expiry had passed since both began

    # Seen unrecorded once: it may be a stream that is about to record it, so it stays.
    other.storage._abort_unrecorded_multipart_uploads(later)
    assert {unrecorded, record.s3_upload} <= multipart_uploads()
    # Still unrecorded at the next run: abandoned. The recorded one stays.
    other.storage._abort_unrecorded_multipart_uploads(later)

    remaining = multipart_uploads()
    assert unrecorded not in remaining and record.s3_upload in remaining
    assert other.stub.Write(write_requests(data, digest, upload_id, offset=9 * MiB)).committed_size == len(data)


def test_a_blob_listing_the_store_answers_unreadably_is_unavailable(
    faulty: tuple[FaultyS3Proxy, pb_grpc.BlobServiceStub],
) -> None:
    """Every other request's unreadable answer is UNAVAILABLE (a store not serving properly); so is a listing's,
    which garbage collection and ListBlobs read."""
    proxy, stub = faulty
    data, digest, _ = new_upload(1000)
    stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    proxy.fail(Fault("GET", "list-type=2", 1, status=200, body=b"<ListBucketResult><Contents>"))
    listing = pb.ListBlobsRequest()
    listing.unused_before.GetCurrentTime()

    with pytest.raises(grpc.RpcError) as error:
        list(stub.ListBlobs(listing))

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, (error.value.code(), error.value.details())
    assert proxy.failed, "the fault never happened"
    list(stub.ListBlobs(listing))  # the next listing, answered properly, goes through
