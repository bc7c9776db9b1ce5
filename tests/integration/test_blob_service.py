"""The blob service over gRPC on the local-disk backend."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from tests.helpers import CHUNK, corrupt_blob, digest_of, read_all, truncate_blob, write_requests


def test_find_missing_blobs_names_every_absent_digest_of_a_large_request_once_in_request_order(blob_stub) -> None:
    # Lookups run side by side in runs of digests: none may be lost, repeated or reordered across runs.
    contents = [f"present {i} {uuid.uuid4()}".encode() for i in range(0, 1001, 3)]
    blob_stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(
            requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest_of(c), data=c) for c in contents]
        )
    )
    present = iter(digest_of(c) for c in contents)
    asked = [next(present) if i % 3 == 0 else digest_of(f"absent {i} {uuid.uuid4()}".encode()) for i in range(1001)]
    asked += asked[:50]  # asked twice: reported once

    missing = list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=asked)).missing_blob_digests)

    assert missing == [d for i, d in enumerate(asked[:1001]) if i % 3 != 0]


def test_written_blob_reads_back_byte_identical_and_is_no_longer_missing(blob_stub) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    digest = digest_of(data)
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests) == [
        digest
    ]

    response = blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))

    assert response.committed_size == len(data)
    assert not blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests
    assert read_all(blob_stub, digest) == data


def test_read_honours_offset_and_limit(blob_stub) -> None:
    data = os.urandom(2 * CHUNK + 77)
    digest = digest_of(data)
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))

    assert read_all(blob_stub, digest, offset=CHUNK - 5, limit=CHUNK + 10) == data[CHUNK - 5 : 2 * CHUNK + 5]
    assert read_all(blob_stub, digest, offset=len(data) - 3) == data[-3:]
    assert read_all(blob_stub, digest, offset=len(data)) == b""
    with pytest.raises(grpc.RpcError) as error:
        read_all(blob_stub, digest, offset=len(data) + 1)
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_write_with_wrong_digest_is_rejected_and_stores_nothing(blob_stub) -> None:
    data = os.urandom(CHUNK + 10)
    claimed = digest_of(b"something else" + data[14:])
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(write_requests(data, claimed, uuid.uuid4().hex))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match" in error.value.details()
    assert list(
        blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[claimed])).missing_blob_digests
    ) == [claimed]
    with pytest.raises(grpc.RpcError) as error:
        read_all(blob_stub, claimed)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_write_longer_than_the_digest_size_is_rejected(blob_stub) -> None:
    data = b"x" * 100
    digest = pb.Digest(hash=digest_of(data).hash, size_bytes=50)
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_writing_existing_content_succeeds_at_once(blob_stub) -> None:
    data = os.urandom(2 * CHUNK)
    digest = digest_of(data)
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    # A second upload that sends only its first chunk is still told the blob is complete.
    only_first = write_requests(data[:CHUNK], digest, uuid.uuid4().hex, finish=False)
    assert blob_stub.Write(only_first).committed_size == len(data)


def test_broken_upload_resumes_from_the_committed_offset(blob_stub) -> None:
    data = os.urandom(3 * CHUNK + 999)
    digest = digest_of(data)
    upload_id = uuid.uuid4().hex
    # The client sends two chunks, then its stream ends without finishing.
    partial = blob_stub.Write(write_requests(data[: 2 * CHUNK], digest, upload_id, finish=False))
    assert partial.committed_size == 2 * CHUNK

    status = blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
    assert (status.committed_size, status.complete) == (2 * CHUNK, False)

    with pytest.raises(grpc.RpcError) as error:  # continuing from the wrong offset is refused
        blob_stub.Write(write_requests(data, digest, upload_id, offset=CHUNK))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE

    done = blob_stub.Write(write_requests(data, digest, upload_id, offset=status.committed_size))
    assert done.committed_size == len(data)
    assert read_all(blob_stub, digest) == data
    status = blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
    assert status.complete


def test_query_of_unknown_upload_is_not_found(blob_stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id="nope", digest=digest_of(b"nope")))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reading_a_missing_blob_is_not_found(blob_stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        read_all(blob_stub, digest_of(os.urandom(16)))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reading_stored_content_under_a_wrong_size_is_not_found_not_data_loss(blob_stub) -> None:
    data = os.urandom(3000)
    digest = digest_of(data)
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    for size in (2999, 3001, 0):
        wrong = pb.Digest(hash=digest.hash, size_bytes=size)
        with pytest.raises(grpc.RpcError) as error:
            read_all(blob_stub, wrong)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        batch = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[wrong]))
        assert batch.responses[0].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert read_all(blob_stub, digest) == data


@pytest.mark.parametrize(
    "digest",
    [
        pb.Digest(hash="abc", size_bytes=1),
        pb.Digest(hash="A" * 64, size_bytes=1),
        pb.Digest(hash="a" * 64, size_bytes=-1),
    ],
)
def test_malformed_digests_are_invalid_argument(blob_stub, digest: pb.Digest) -> None:
    for call in (
        lambda: blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])),
        lambda: read_all(blob_stub, digest),
        lambda: blob_stub.Write(iter([pb.WriteRequest(upload_id="u1", digest=digest, finish_write=True)])),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_write_without_upload_id_is_invalid_argument(blob_stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(iter([pb.WriteRequest(digest=digest_of(b"a"), data=b"a", finish_write=True)]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(iter([pb.WriteRequest(upload_id="../../etc", digest=digest_of(b"a"), data=b"a")]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_corrupted_blob_is_data_loss_and_its_content_is_never_delivered_whole(blob_only, blob_stub) -> None:
    data = os.urandom(2 * CHUNK + 5)
    digest = digest_of(data)
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    corrupt_blob(blob_only.store.storage, digest.hash, digest.size_bytes)

    received = bytearray()
    with pytest.raises(grpc.RpcError) as error:
        for response in blob_stub.Read(pb.ReadRequest(digest=digest)):
            received += response.data
    assert error.value.code() == grpc.StatusCode.DATA_LOSS
    assert "removed" in (error.value.details() or "")
    assert len(received) < len(data)

    # The corrupt copy is gone: reported missing, so the next upload of the content stores it again.
    missing = blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest]))
    assert list(missing.missing_blob_digests) == [digest]
    batch = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest]))
    assert batch.responses[0].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    assert b"".join(r.data for r in blob_stub.Read(pb.ReadRequest(digest=digest))) == data


def test_a_corrupt_small_blob_read_in_a_batch_is_data_loss_and_removed(blob_only, blob_stub) -> None:
    data = os.urandom(3000)
    digest = digest_of(data)
    blob_stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    corrupt_blob(blob_only.store.storage, digest.hash, digest.size_bytes)
    batch = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest]))
    assert batch.responses[0].status.code == grpc.StatusCode.DATA_LOSS.value[0]
    assert batch.responses[0].data == b""
    missing = blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest]))
    assert list(missing.missing_blob_digests) == [digest]


@pytest.mark.parametrize("how", ["Read", "BatchReadBlobs"])
def test_a_stored_copy_cut_short_is_data_loss_not_a_wrong_size_and_is_removed_when_the_service_verifies(
    blob_only, blob_stub, how: str
) -> None:
    data = os.urandom(3000)
    digest = digest_of(data)
    blob_stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    truncate_blob(blob_only.store.storage, digest.hash, digest.size_bytes, keep=5)

    def read(skip_verification: bool) -> tuple[int, str]:
        if how == "Read":
            try:
                list(blob_stub.Read(pb.ReadRequest(digest=digest, skip_verification=skip_verification)))
            except grpc.RpcError as e:
                return e.code().value[0], e.details() or ""
            return 0, ""
        request = pb.BatchReadBlobsRequest(digests=[digest], skip_verification=skip_verification)
        (response,) = blob_stub.BatchReadBlobs(request).responses
        return response.status.code, response.status.message

    def missing() -> list[pb.Digest]:
        return list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests)

    # The caller verifies what it reads: told of the damage, and the copy stays (the proto's promise).
    code, message = read(skip_verification=True)
    assert code == grpc.StatusCode.DATA_LOSS.value[0], message
    assert "shorter" in message
    assert blob_only.store.storage.stored_size(digest.hash) == 5

    code, message = read(skip_verification=False)
    assert code == grpc.StatusCode.DATA_LOSS.value[0], message
    assert "removed" in message
    assert missing() == [digest]
    blob_stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    assert b"".join(r.data for r in blob_stub.Read(pb.ReadRequest(digest=digest))) == data


def test_a_batch_read_the_caller_verifies_serves_the_stored_bytes_unhashed(blob_only, blob_stub) -> None:
    data = os.urandom(3000)
    digest = digest_of(data)
    blob_stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    absent = digest_of(b"never stored")
    request = pb.BatchReadBlobsRequest(digests=[digest, absent], skip_verification=True)
    intact, missing = blob_stub.BatchReadBlobs(request).responses
    assert (intact.status.code, intact.data) == (0, data)
    assert missing.status.code == grpc.StatusCode.NOT_FOUND.value[0]

    # Damage at rest is the caller's hash to find: the bytes come back as stored, and the copy stays.
    corrupt_blob(blob_only.store.storage, digest.hash, digest.size_bytes)
    served = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest], skip_verification=True))
    assert served.responses[0].status.code == 0
    assert len(served.responses[0].data) == len(data) and served.responses[0].data != data
    assert (
        list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests) == []
    )
    # Without skip_verification the service still hashes, refuses and removes it.
    checked = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest]))
    assert checked.responses[0].status.code == grpc.StatusCode.DATA_LOSS.value[0]


def test_a_read_the_caller_verifies_serves_exactly_its_range_as_stored(blob_only, blob_stub) -> None:
    data = os.urandom(3 * CHUNK + 11)
    digest = digest_of(data)
    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))

    def read(offset: int, limit: int) -> bytes:
        request = pb.ReadRequest(digest=digest, read_offset=offset, read_limit=limit, skip_verification=True)
        return b"".join(r.data for r in blob_stub.Read(request))

    assert read(0, 0) == data
    assert read(CHUNK + 5, CHUNK) == data[CHUNK + 5 : 2 * CHUNK + 5]
    assert read(3 * CHUNK, 0) == data[3 * CHUNK :]
    assert read(len(data), 0) == b""

    # The caller said it checks the content itself: a corrupt blob is served as stored, and the
    # caller's hash is what finds it (the mreg client raises DATA_LOSS, BLOB_CORRUPT).
    corrupt_blob(blob_only.store.storage, digest.hash, digest.size_bytes)
    served = read(0, 0)
    assert len(served) == len(data) and served != data
    with pytest.raises(grpc.RpcError) as error:
        b"".join(r.data for r in blob_stub.Read(pb.ReadRequest(digest=digest)))
    assert error.value.code() == grpc.StatusCode.DATA_LOSS  # without skip_verification, as before


def test_batch_update_and_read_report_per_blob_status(blob_stub) -> None:
    good = [os.urandom(100 + i) for i in range(20)]
    bad_data = b"not what the digest says"
    requests = [pb.BatchUpdateBlobsRequest.Request(digest=digest_of(d), data=d) for d in good]
    requests.append(pb.BatchUpdateBlobsRequest.Request(digest=digest_of(b"other"), data=bad_data))

    response = blob_stub.BatchUpdateBlobs(pb.BatchUpdateBlobsRequest(requests=requests))

    codes = [r.status.code for r in response.responses]
    assert codes == [0] * 20 + [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    missing_digest = digest_of(os.urandom(8))
    read = blob_stub.BatchReadBlobs(
        pb.BatchReadBlobsRequest(digests=[digest_of(d) for d in good] + [digest_of(b"other"), missing_digest])
    )
    assert [r.data for r in read.responses[:20]] == good
    assert [r.status.code for r in read.responses[20:]] == [grpc.StatusCode.NOT_FOUND.value[0]] * 2


def test_empty_blob_can_be_written_and_read(blob_stub) -> None:
    digest = digest_of(b"")
    response = blob_stub.Write(iter([pb.WriteRequest(upload_id="empty1", digest=digest, finish_write=True)]))
    assert response.committed_size == 0
    assert read_all(blob_stub, digest) == b""


def test_the_empty_blob_is_always_present_without_being_uploaded(blob_stub) -> None:
    empty = digest_of(b"")
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[empty])).missing_blob_digests) == []
    assert b"".join(r.data for r in blob_stub.Read(pb.ReadRequest(digest=empty))) == b""
    (result,) = blob_stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[empty])).responses
    assert (result.status.code, result.data) == (0, b"")
    status = blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id="never-started", digest=empty))
    assert status.complete


def test_capabilities_report_the_servers_configuration(tmp_path) -> None:
    config = BlobConfig(
        listen="127.0.0.1:0",
        store=str(tmp_path / "blobs"),
        max_batch_total_size_bytes=100_000,
        min_gc_grace_seconds=7200,
        upload_expiry_seconds=5000,
        stream_idle_timeout_seconds=30,
        janitor_interval_seconds=0,
    )
    running = blob_server.start(config)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.BlobServiceStub(channel)
            caps = stub.GetCapabilities(pb.GetCapabilitiesRequest())
            data = b"x" * 60_000
            with pytest.raises(grpc.RpcError) as error:
                stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest_of(data), digest_of(data + b"y")]))
    finally:
        running.stop(grace=None)
    assert caps.digest_function == pb.DIGEST_FUNCTION_SHA256
    assert caps.max_batch_total_size_bytes == 100_000
    assert caps.max_batch_blobs == 10_000
    assert caps.max_receive_message_size_bytes == 64 << 20
    assert caps.read_chunk_size_bytes == caps.write_chunk_size_bytes == 1 << 20
    assert caps.min_gc_grace.ToSeconds() == 7200
    assert caps.upload_expiry.ToSeconds() == 5000
    assert caps.stream_idle_timeout.ToSeconds() == 30
    # The limit it reports is the one it enforces.
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100000-byte limit" in error.value.details()


def test_default_capabilities_allow_32_mib_batches_within_a_64_mib_message(blob_stub) -> None:
    caps = blob_stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert (caps.max_batch_total_size_bytes, caps.max_receive_message_size_bytes) == (32 << 20, 64 << 20)


def test_a_write_stream_that_ends_without_finish_write_keeps_its_bytes_and_publishes_nothing(blob_stub) -> None:
    data = os.urandom(3 * CHUNK)
    digest = digest_of(data)
    upload_id = uuid.uuid4().hex

    # The whole content, but the client half-closes without finish_write.
    response = blob_stub.Write(write_requests(data, digest, upload_id, finish=False))

    assert response.committed_size == len(data)
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests)
    status = blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
    assert (status.committed_size, status.complete) == (len(data), False)
    finish = pb.WriteRequest(upload_id=upload_id, digest=digest, write_offset=len(data), finish_write=True)
    assert blob_stub.Write(iter([finish])).committed_size == len(data)
    assert read_all(blob_stub, digest) == data
    # Reusing the upload id of a completed upload: already stored, nothing more is read.
    again = blob_stub.Write(write_requests(data, digest, upload_id))
    assert again.committed_size == len(data)


def hash_at_finish_requests(
    data: bytes, final: pb.Digest | None, upload_id: str, *, finish: bool = True
) -> list[pb.WriteRequest]:
    """A Write that begins with the size alone and gives the whole digest (``final``) with finish_write."""
    requests = list(write_requests(data, pb.Digest(size_bytes=len(data)), upload_id, finish=finish))
    if finish and final is not None:
        requests[-1].digest.CopyFrom(final)
    return requests


def partial_uploads(location: str) -> list[str]:
    """The partial uploads a disk store holds (none to look at on S3, whose tests rely on the answers)."""
    uploads = os.path.join(location, "uploads")
    return sorted(os.listdir(uploads)) if os.path.isdir(uploads) else []


def test_a_write_may_give_the_hash_with_its_last_message_on_any_store(blob_stub, blob_store_location: str) -> None:
    # Announced where such an upload is kept as cheaply as one whose hash comes first (disk, not S3), taken on all.
    announced = blob_stub.GetCapabilities(pb.GetCapabilitiesRequest()).write_digest_at_finish
    assert announced == (not blob_store_location.startswith("s3://"))
    data = os.urandom(3 * CHUNK + 4321)
    digest = digest_of(data)

    response = blob_stub.Write(iter(hash_at_finish_requests(data, digest, uuid.uuid4().hex)))

    assert response.committed_size == len(data)
    assert not blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests
    assert read_all(blob_stub, digest) == data
    # The same content again that way: already stored, and still one blob.
    assert blob_stub.Write(iter(hash_at_finish_requests(data, digest, uuid.uuid4().hex))).committed_size == len(data)
    assert read_all(blob_stub, digest) == data


def test_a_hash_given_at_the_end_that_does_not_match_stores_nothing(blob_stub) -> None:
    data = os.urandom(2 * CHUNK + 5)
    claimed = digest_of(data[:-1] + bytes([data[-1] ^ 0xFF]))  # always another last byte (b"?" was 1 in 256)
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(iter(hash_at_finish_requests(data, claimed, uuid.uuid4().hex)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match" in error.value.details()
    missing = blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[claimed, digest_of(data)]))
    assert len(missing.missing_blob_digests) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no hash at the end", "must carry the whole digest"),
        ("another size at the end", "gives"),
        ("no size at the start", "must give its size"),
        ("a hash in the middle", "must not change"),
    ],
)
def test_an_upload_begun_without_the_hash_is_refused_unless_its_last_message_brings_the_whole_digest(
    blob_stub, change: str, message: str
) -> None:
    data = os.urandom(2 * CHUNK + 9)
    digest = digest_of(data)
    requests = hash_at_finish_requests(data, digest, uuid.uuid4().hex)
    if change == "no hash at the end":
        requests[-1].digest.hash = ""
    elif change == "another size at the end":
        requests[-1].digest.size_bytes += 1
    elif change == "no size at the start":
        requests[0].digest.size_bytes = 0
    else:
        requests[1].digest.CopyFrom(digest)
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(iter(requests))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests)


def test_an_upload_begun_without_the_hash_resumes_under_its_size_until_its_last_message(blob_stub) -> None:
    data = os.urandom(3 * CHUNK + 17)
    digest = digest_of(data)
    upload_id = uuid.uuid4().hex
    size_only = pb.Digest(size_bytes=len(data))

    first_two = hash_at_finish_requests(data, None, upload_id, finish=False)[:2]
    partial = blob_stub.Write(iter(first_two))

    assert partial.committed_size == 2 * CHUNK
    status = blob_stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=size_only))
    assert (status.committed_size, status.complete) == (2 * CHUNK, False)
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests)
    # Another size is another upload.
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.QueryWriteStatus(
            pb.QueryWriteStatusRequest(upload_id=upload_id, digest=pb.Digest(size_bytes=len(data) + 1))
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    rest = [r for r in hash_at_finish_requests(data, digest, upload_id) if r.write_offset >= status.committed_size]
    rest[0].upload_id, rest[0].digest.hash = upload_id, ""
    rest[0].digest.size_bytes = len(data)
    if rest[-1] is not rest[0]:
        rest[-1].digest.CopyFrom(digest)

    assert blob_stub.Write(iter(rest)).committed_size == len(data)
    assert read_all(blob_stub, digest) == data


def test_an_upload_begun_without_the_hash_may_finish_early_once_the_content_is_stored(
    blob_store_location, blob_stub
) -> None:
    data = os.urandom(3 * CHUNK)
    digest = digest_of(data)
    upload_id = uuid.uuid4().hex
    begun = hash_at_finish_requests(data, None, upload_id, finish=False)[:1]
    early_finish = pb.WriteRequest(write_offset=CHUNK, finish_write=True, digest=digest)

    # Not stored: finishing with a chunk of three is a mismatch, and stores nothing.
    with pytest.raises(grpc.RpcError) as error:
        blob_stub.Write(iter([*begun, early_finish]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(blob_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests)

    blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex))
    # Stored (by another upload): the same early finish succeeds and leaves nothing of this upload behind.
    before = partial_uploads(blob_store_location)
    assert blob_stub.Write(iter([*begun, early_finish])).committed_size == len(data)
    assert partial_uploads(blob_store_location) == before
    assert read_all(blob_stub, digest) == data
