"""Availability: streams never starve unary calls, and a full store is an answer, not an outage.

Each test starts servers of its own, because they change limits or fill a file system.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.digests import Digest
from mreg.blob_service.storage import DiskStorage
from mreg.client import Registry
from mreg.client.cli import main as cli_main
from mreg.client.errors import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.server_runtime.streams import StreamAdmission
from tests.helpers import assert_same_tree, digest_of
from tests.s3_server import S3Server
from tests.streams import STALLED_CONTENT, open_stalled_writes, open_streams, open_watch_streams

# Generous: the assertions are about succeeding at all, never about speed.
UNARY_DEADLINE = 5.0


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=UNARY_DEADLINE).status
        )


def wait_for_streams(admission: StreamAdmission, count: int) -> None:
    """Waits until the server serves ``count`` streams; a bounded number of looks."""
    for _ in range(300):
        if admission.active == count:
            return
        threading.Event().wait(0.05)
    assert admission.active == count


@pytest.fixture
def make_servers(database_url: str, tmp_path: Path) -> Iterator:
    started: list = []

    def make(
        blob: BlobConfig | None = None, metadata: MetadataConfig | None = None, store: Path | None = None
    ) -> tuple[blob_server.RunningBlobServer, metadata_server.RunningMetadataServer]:
        blob_config = blob or BlobConfig()
        blobs = blob_server.start(
            BlobConfig(**{**blob_config.__dict__, "listen": "127.0.0.1:0", "store": str(store or tmp_path / "blobs")})
        )
        started.append(blobs)
        metadata_config = metadata or MetadataConfig()
        meta = metadata_server.start(
            MetadataConfig(
                **{
                    **metadata_config.__dict__,
                    "listen": "127.0.0.1:0",
                    "database_url": database_url,
                    "blob_addr": blobs.address,
                }
            )
        )
        started.append(meta)
        return blobs, meta

    yield make
    for server in reversed(started):
        server.stop(grace=None)


def test_unary_calls_and_health_checks_succeed_while_500_watch_streams_and_100_stalled_uploads_are_open(
    make_servers, tmp_path: Path
) -> None:
    blobs, meta = make_servers()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"weights")
    with Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client:
        client.push(tmp_path / "model", "resnet")
    with open_streams() as streams:
        watch_results = open_watch_streams(streams, meta.address, 500)
        assert watch_results == [None] * 500, "every Watch stream within the default limit is served"
        writes = open_stalled_writes(streams, blobs.address, 100)
        wait_for_streams(blobs.admission, 100)
        assert meta.admission.active == 500

        with grpc.insecure_channel(meta.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            for _ in range(20):
                resolved = stub.ResolveReference(
                    pb.ResolveReferenceRequest(name="acme/vision/resnet:latest"), timeout=UNARY_DEADLINE
                )
                assert resolved.version.index == 0
                assert health(meta.address) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(blobs.address) as channel:
            blob_stub = blob_grpc.BlobServiceStub(channel)
            for _ in range(20):
                response = blob_stub.FindMissingBlobs(
                    blob_pb.FindMissingBlobsRequest(blob_digests=[digest_of(b"absent")]), timeout=UNARY_DEADLINE
                )
                assert len(response.missing_blob_digests) == 1
                assert health(blobs.address) == health_pb2.HealthCheckResponse.SERVING
        assert not any(w.done() for w in writes), "the stalled uploads were still open throughout"
        assert (meta.admission.active, blobs.admission.active) == (500, 100)


def test_every_open_watch_stream_receives_a_new_commit_in_order(make_servers, tmp_path: Path) -> None:
    blobs, meta = make_servers()
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    with Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client:
        streams = [client.watch(0, from_now=True, resource_prefix="acme/vision/fanout", timeout=60) for _ in range(100)]
        for stream in streams:
            assert next(stream).event is None  # live
        client.push(model, "fanout")
        client.set_alias("fanout:v0", "best")
        for stream in streams:
            kinds = []
            for message in stream:
                if message.event is not None:
                    kinds.append(message.event.kind)
                if len(kinds) == 3:
                    break
            assert kinds == ["collection.created", "version.committed", "alias.set"]
            stream.close()


def test_streams_beyond_the_configured_limit_are_refused_with_resource_exhausted_and_unary_calls_still_work(
    make_servers,
) -> None:
    blobs, meta = make_servers(BlobConfig(max_streams=3), MetadataConfig(max_streams=3))
    with open_streams() as streams:
        results = open_watch_streams(streams, meta.address, 5)
        refused = [r for r in results if r is not None]
        assert len(refused) == 2
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 3 concurrent streams" in error.details()
            assert "MREG_METADATA_MAX_STREAMS" in error.details()
            details = {d.type_url.rsplit("/", 1)[1]: d for d in rpc_status.from_call(error).details}
            info = error_details_pb2.ErrorInfo()
            details["google.rpc.ErrorInfo"].Unpack(info)
            assert (info.reason, info.domain) == ("STREAM_LIMIT_REACHED", "metadata.mreg.dev")
            assert "google.rpc.RetryInfo" in details, "the refusal tells clients to retry"
        assert health(meta.address) == health_pb2.HealthCheckResponse.SERVING

        writes = open_stalled_writes(streams, blobs.address, 5)
        # Three are admitted and wait for data; two are refused at once.
        refused_writes = [w.exception() for w in _first_finished(writes, 2)]
        for error in refused_writes:
            assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "MREG_BLOB_MAX_STREAMS" in error.details()
        with grpc.insecure_channel(blobs.address) as channel:
            blob_grpc.BlobServiceStub(channel).FindMissingBlobs(
                blob_pb.FindMissingBlobsRequest(blob_digests=[digest_of(b"absent")]), timeout=UNARY_DEADLINE
            )
        assert health(blobs.address) == health_pb2.HealthCheckResponse.SERVING


def test_a_push_refused_at_the_stream_limit_is_retried_and_succeeds_once_a_slot_frees(
    make_servers, tmp_path: Path
) -> None:
    blobs, meta = make_servers(BlobConfig(max_streams=1, stream_idle_timeout_seconds=1))
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(3 << 20))  # large enough to go through a Write stream
    with open_streams() as streams:
        (stalled,) = open_stalled_writes(streams, blobs.address, 1)
        wait_for_streams(blobs.admission, 1)
        with Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client:
            # The stalled upload holds the only slot until the idle timeout ends it.
            client.push(model, "patient")
            assert client.resolve("patient").version.index == 0
        assert stalled.exception(timeout=30).code() == grpc.StatusCode.ABORTED


def _first_finished(futures: list[grpc.Future], count: int) -> list[grpc.Future]:
    finished = threading.Semaphore(0)
    for future in futures:
        future.add_done_callback(lambda _f: finished.release())
    for _ in range(count):
        assert finished.acquire(timeout=30), "a refused stream was not answered"
    return [f for f in futures if f.done()]


def test_a_watch_stream_whose_client_went_away_gives_its_slot_back(make_servers) -> None:
    _, meta = make_servers(metadata=MetadataConfig(max_streams=1))
    with open_streams() as first:
        assert open_watch_streams(first, meta.address, 1) == [None]
    # The server notices the cancellation asynchronously; a bounded number of tries.
    for _ in range(50):
        with open_streams() as second:
            if open_watch_streams(second, meta.address, 1) == [None]:
                return
        threading.Event().wait(0.1)
    pytest.fail("the slot of a cancelled Watch stream was never released")


@pytest.mark.any_database
def test_a_stalled_upload_is_ended_with_aborted_keeps_its_bytes_and_frees_its_slot(make_servers) -> None:
    blobs, _ = make_servers(BlobConfig(max_streams=1, stream_idle_timeout_seconds=0.5))
    content = b"y" * 1000
    upload_ids: list[str] = []
    with open_streams() as streams:
        (stalled,) = open_stalled_writes(streams, blobs.address, 1, upload_ids)
        error = stalled.exception(timeout=30)
        assert error is not None and error.code() == grpc.StatusCode.ABORTED
        assert "sent nothing for 0.5 s" in error.details() and "QueryWriteStatus" in error.details()
    with grpc.insecure_channel(blobs.address) as channel:
        stub = blob_grpc.BlobServiceStub(channel)
        status = stub.QueryWriteStatus(
            blob_pb.QueryWriteStatusRequest(upload_id=upload_ids[0], digest=digest_of(STALLED_CONTENT))
        )
        assert (status.committed_size, status.complete) == (10, False)
        # The slot is free again: a whole upload goes through.
        response = stub.Write(
            iter([blob_pb.WriteRequest(upload_id="whole", digest=digest_of(content), data=content, finish_write=True)]),
            timeout=UNARY_DEADLINE,
        )
        assert response.committed_size == len(content)


# Disk full ----------------------------------------------------------------------------------


@pytest.fixture
def small_store(small_tmpfs) -> Path:
    """An 8 MiB tmpfs to fill; unmounted after the servers using it have stopped."""
    return small_tmpfs("small-store", "8m")


def _model(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _partial_uploads(store: Path) -> list[str]:
    """Uploads in progress, and small blobs being stored (beside their names, in the fan-out directories)."""
    return sorted([p.name for p in (store / "uploads").iterdir()] + [p.name for p in store.glob("blobs/*/.put-*")])


@pytest.mark.any_database
def test_a_push_into_a_full_store_gets_resource_exhausted_releases_its_bytes_and_reads_keep_working(
    small_store: Path, make_servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    blobs, meta = make_servers(store=small_store)
    kept = _model(tmp_path / "kept", {"weights.bin": os.urandom(2 << 20), "config.json": b"{}"})
    too_big = _model(tmp_path / "too-big", {"weights.bin": os.urandom(7 << 20)})
    with Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client:
        client.push(kept, "kept")

        with pytest.raises(MregError) as raised:
            client.push(too_big, "big")
        assert (raised.value.code, raised.value.reason) == ("RESOURCE_EXHAUSTED", "STORAGE_FULL")
        assert str(small_store) in raised.value.message and str(7 << 20) in raised.value.message
        assert _partial_uploads(small_store) == [], "the failed upload's bytes were released"

        # The same through the CLI: one line, exit 1.
        monkeypatch.setenv("MREG_METADATA_ADDR", meta.address)
        monkeypatch.setenv("MREG_BLOB_ADDR", blobs.address)
        capsys.readouterr()
        assert cli_main(["push", str(too_big), "acme/vision/big"]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("mreg: error: RESOURCE_EXHAUSTED: "), error
        assert "is full" in error[0]

        # Reads keep working, verified.
        client.pull("kept", tmp_path / "pulled")
        assert_same_tree(kept, tmp_path / "pulled")

        # Space was released, so a small push goes through.
        client.push(_model(tmp_path / "small", {"notes.txt": b"x" * 50}), "small")


@pytest.mark.any_database
def test_a_batch_upload_into_a_full_store_gets_resource_exhausted_per_blob_and_leaves_no_temp_files(
    small_store: Path, make_servers
) -> None:
    blobs, _ = make_servers(store=small_store)
    ballast = small_store / "ballast"
    with open(ballast, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (64 << 10))
    data = os.urandom(512 << 10)
    with grpc.insecure_channel(blobs.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = blob_grpc.BlobServiceStub(channel)
        response = stub.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data)]
            )
        )
        (result,) = response.responses
        assert result.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "is full" in result.status.message and str(512 << 10) in result.status.message
        assert _partial_uploads(small_store) == []
        ballast.unlink()
        retried = stub.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data)]
            )
        )
        assert retried.responses[0].status.code == 0


@contextlib.contextmanager
def _immutable(paths: list[Path]) -> Iterator[None]:
    """Makes ``paths`` immutable (chattr +i), which refuses writes even to root, as a read-only mount would."""
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make the store refuse writes (root ignores permissions)")
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this file system does not take chattr +i: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


@pytest.mark.any_database
def test_a_store_that_refuses_writes_gets_unavailable_storage_unavailable_on_every_upload_path(
    make_servers, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    blobs, meta = make_servers(store=store)
    small, large = os.urandom(4000), os.urandom(3 << 20)
    model = _model(tmp_path / "model", {"small.txt": small, "large.bin": large})
    with _immutable([store / "uploads", *sorted((store / "blobs").iterdir())]):
        with (
            Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client,
            pytest.raises(MregError) as raised,
        ):
            client.push(model, "read-only")
        assert (raised.value.code, raised.value.reason) == ("UNAVAILABLE", "STORAGE_UNAVAILABLE"), raised.value
        assert str(store) in raised.value.message

        with grpc.insecure_channel(blobs.address) as channel:
            stub = blob_grpc.BlobServiceStub(channel)
            batch = stub.BatchUpdateBlobs(
                blob_pb.BatchUpdateBlobsRequest(
                    requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(small), data=small)]
                )
            )
            (result,) = batch.responses
            assert result.status.code == grpc.StatusCode.UNAVAILABLE.value[0], result.status
            first = blob_pb.WriteRequest(upload_id=uuid.uuid4().hex, digest=digest_of(large), data=large[: 1 << 20])
            with pytest.raises(grpc.RpcError) as write_error:
                stub.Write(iter([first]))
            assert write_error.value.code() == grpc.StatusCode.UNAVAILABLE, write_error.value.details()
            status = rpc_status.from_call(write_error.value)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert any(d.Unpack(info) for d in status.details) and info.reason == "STORAGE_UNAVAILABLE"

    # Once the store takes writes again, the same push goes through.
    with Registry.connect(meta.address, blobs.address, entity="acme", project="vision") as client:
        client.push(model, "read-only")


@pytest.mark.any_database
def test_a_blob_the_store_cannot_read_gets_unavailable_storage_unavailable(make_servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    blobs, _ = make_servers(store=store)
    data = os.urandom(3000)
    digest = digest_of(data)
    with grpc.insecure_channel(blobs.address) as channel:
        stub = blob_grpc.BlobServiceStub(channel)
        stub.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)]
            )
        )
        # A blob's file that can no longer be opened: a directory left in its place (as root, permissions
        # would not stop the service).
        path = store / "blobs" / digest.hash[:2] / digest.hash
        path.unlink()
        path.mkdir()
        with pytest.raises(grpc.RpcError) as read_error:
            list(stub.Read(blob_pb.ReadRequest(digest=digest)))
        assert read_error.value.code() == grpc.StatusCode.UNAVAILABLE, read_error.value.details()
        assert str(path) in read_error.value.details()


# Abandoned uploads --------------------------------------------------------------------------


def _assert_abandoned_uploads_are_reclaimed(store: str) -> None:
    blobs = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=store, upload_expiry_seconds=1, janitor_interval_seconds=0.2)
    )
    try:
        with grpc.insecure_channel(blobs.address) as channel:
            stub = blob_grpc.BlobServiceStub(channel)
            kept = os.urandom(1000)
            stub.Write(
                iter(
                    [
                        blob_pb.WriteRequest(
                            upload_id=uuid.uuid4().hex, digest=digest_of(kept), data=kept, finish_write=True
                        )
                    ]
                )
            )
            abandoned, upload_id = os.urandom(1000), uuid.uuid4().hex
            response = stub.Write(
                iter([blob_pb.WriteRequest(upload_id=upload_id, digest=digest_of(abandoned), data=abandoned[:100])])
            )
            assert response.committed_size == 100
            status_request = blob_pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest_of(abandoned))
            # The janitor runs in the background; a bounded number of looks.
            for _ in range(150):
                try:
                    stub.QueryWriteStatus(status_request)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND
                    break
                threading.Event().wait(0.1)
            else:
                pytest.fail("an upload abandoned for longer than the expiry was never reclaimed")
            read = b"".join(r.data for r in stub.Read(blob_pb.ReadRequest(digest=digest_of(kept))))
            assert read == kept, "the janitor leaves stored blobs alone"
    finally:
        blobs.stop(grace=None)


def test_uploads_abandoned_longer_than_the_expiry_are_reclaimed_on_disk(tmp_path: Path) -> None:
    _assert_abandoned_uploads_are_reclaimed(str(tmp_path / "blobs"))


def test_uploads_abandoned_longer_than_the_expiry_are_reclaimed_on_s3(s3_server) -> None:
    _assert_abandoned_uploads_are_reclaimed(s3_server.store_url(f"janitor-{uuid.uuid4().hex[:8]}"))


def test_an_upload_a_stream_is_writing_is_never_reclaimed_however_old(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path / "blobs")
    content = b"z" * 100
    upload = storage.begin_write("busy", Digest.parse(digest_of(content).hash, len(content)))
    upload.append(content[:10])
    future = datetime.now(UTC) + timedelta(days=1)
    assert storage.remove_stale_uploads(future) == 0
    upload.close()
    assert storage.remove_stale_uploads(future) == 1


def test_an_s3_store_out_of_space_answers_a_code_to_act_on_discards_the_upload_and_keeps_serving_reads(
    small_store: Path, s3_credentials
) -> None:
    """rclone serving a full tmpfs answers an error status (it cannot say "full" as MinIO's 507 does)."""
    s3 = S3Server("rclone", small_store).start()
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=s3.store_url("full")))
    try:
        with grpc.insecure_channel(blobs.address) as channel:
            stub = blob_grpc.BlobServiceStub(channel)
            kept = os.urandom(1 << 20)
            stub.BatchUpdateBlobs(
                blob_pb.BatchUpdateBlobsRequest(
                    requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(kept), data=kept)]
                )
            )
            too_big = os.urandom(12 << 20)
            digest = digest_of(too_big)
            requests = (
                blob_pb.WriteRequest(
                    upload_id="too-big" if offset == 0 else "",
                    digest=digest if offset == 0 else None,
                    write_offset=offset,
                    finish_write=offset + (1 << 20) >= len(too_big),
                    data=too_big[offset : offset + (1 << 20)],
                )
                for offset in range(0, len(too_big), 1 << 20)
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.Write(requests, timeout=120)
            assert refused.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)

            read = b"".join(r.data for r in stub.Read(blob_pb.ReadRequest(digest=digest_of(kept)), timeout=60))
            assert read == kept
            # The staged parts of the refused upload were discarded, so a small write fits again.
            small = os.urandom(2 << 20)
            response = stub.BatchUpdateBlobs(
                blob_pb.BatchUpdateBlobsRequest(
                    requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(small), data=small)]
                )
            )
            assert response.responses[0].status.code == 0, response.responses[0].status.message
    finally:
        blobs.stop(grace=None)
        s3.stop()


@pytest.mark.any_database
def test_a_reader_that_stops_reading_is_ended_with_aborted_and_frees_its_slot(make_servers) -> None:
    blobs, _ = make_servers(BlobConfig(max_streams=1, stream_idle_timeout_seconds=0.5))
    content = os.urandom(64 << 20)  # far more than flow control lets through unread
    digest = digest_of(content)
    chunk = 1 << 20
    with grpc.insecure_channel(blobs.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = blob_grpc.BlobServiceStub(channel)
        stub.Write(
            blob_pb.WriteRequest(
                upload_id="big" if i == 0 else "",
                digest=digest if i == 0 else None,
                write_offset=i,
                data=content[i : i + chunk],
                finish_write=i + chunk >= len(content),
            )
            for i in range(0, len(content), chunk)
        )
        stalled = stub.Read(blob_pb.ReadRequest(digest=digest))
        next(stalled)  # the stream is live; the client reads nothing more
        wait_for_streams(blobs.admission, 1)
        wait_for_streams(blobs.admission, 0)  # the idle timeout ended it
        received = 1
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stalled:  # what was in flight, then the status
                received += 1
        assert received < len(content) // chunk
        assert ended.value.code() == grpc.StatusCode.ABORTED
        assert "took no data for 0.5 s" in ended.value.details()
        head = stub.Read(blob_pb.ReadRequest(digest=digest, read_limit=10))
        assert b"".join(r.data for r in head) == content[:10]
