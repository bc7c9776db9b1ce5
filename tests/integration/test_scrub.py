"""The scrub: blobs whose bytes rotted at rest are found, removed, reported missing, and healed by a push.

Blobs are stored through the real blob service over gRPC, on disk and on both S3 servers, and corrupted
behind its back (a flipped byte in a file, an object overwritten with other bytes of the same or another
length); the scrub then runs as the domain function, and once as the service's periodic thread.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc as pb_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.digests import Digest
from mreg.blob_service.scrub import LEASE_NAME, LEASE_SECONDS, Scrubber
from mreg.blob_service.storage import BlobReader, BlobStorage, DiskStorage, open_storage
from mreg.blob_service.storage.s3 import S3Storage
from tests.helpers import CHUNK, corrupt_blob, digest_of, read_all, write_requests


def _fresh(location: str) -> str:
    """A store of this test's own beside the session's: a new directory, or a new prefix in its bucket."""
    name = f"scrub-{uuid.uuid4().hex[:8]}"
    if location.startswith("s3://"):
        return location.replace("/mreg?", f"/{name}?", 1)
    return str(Path(location) / name)


class Service:
    def __init__(self, running: blob_server.RunningBlobServer) -> None:
        self.running = running
        self.storage = running.store.storage
        self.channel = grpc.insecure_channel(running.address)
        self.stub = pb_grpc.BlobServiceStub(self.channel)

    def put(self, data: bytes) -> pb.Digest:
        digest = digest_of(data)
        assert self.stub.Write(write_requests(data, digest, uuid.uuid4().hex)).committed_size == len(data)
        return digest

    def missing(self, *digests: pb.Digest) -> list[pb.Digest]:
        return list(self.stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=digests)).missing_blob_digests)

    def metric(self, name: str, **labels: str) -> float:
        endpoint = self.running.metrics_endpoint
        assert endpoint is not None
        with urllib.request.urlopen(f"http://{endpoint.address}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0


@pytest.fixture
def service(blob_store_location: str) -> Iterator[Service]:
    running = blob_server.start(
        BlobConfig(
            listen="127.0.0.1:0",
            store=_fresh(blob_store_location),
            metrics_listen="127.0.0.1:0",
            scrub_interval_seconds=0,
        )
    )
    service = Service(running)
    yield service
    service.channel.close()
    running.stop(grace=None)


def _overwrite(storage: BlobStorage, digest: pb.Digest, data: bytes) -> None:
    """Replaces a stored blob's bytes behind the service's back, as rot or a stray writer would."""
    if isinstance(storage, DiskStorage):
        storage.blob_path(Digest(digest.hash, digest.size_bytes)).write_bytes(data)
        return
    assert isinstance(storage, S3Storage)
    storage.client.put_object(storage.bucket, storage.key(f"blobs/{digest.hash}"), io.BytesIO(data), len(data))


def _stored_hashes(storage: BlobStorage) -> set[str]:
    return {blob.digest.hash for blob in storage.iter_blobs()}


def test_scrub_removes_exactly_the_blobs_whose_bytes_changed_and_the_next_push_heals_them(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    contents = [os.urandom(2 * CHUNK + 4321), os.urandom(CHUNK + 1), os.urandom(70_000), os.urandom(5)]
    flipped, resized, intact, tiny = (service.put(data) for data in contents)
    corrupt_blob(service.storage, flipped.hash, flipped.size_bytes)  # one byte flipped, same length
    _overwrite(service.storage, resized, os.urandom(resized.size_bytes + 10))  # other bytes, other length
    assert service.missing(flipped, resized, intact, tiny) == [resized]  # a size change shows; a flip does not

    with caplog.at_level(logging.WARNING, logger="mreg.blob_service.scrub"):
        report = service.running.scrubber.scrub()

    assert sorted(d.hash for d in report.corrupt) == sorted([flipped.hash, resized.hash])
    # One structured warning per removed blob, with what was expected and what was found.
    removed = {r.scrub["expected_sha256"]: r.scrub for r in caplog.records if hasattr(r, "scrub")}
    assert removed.keys() == {flipped.hash, resized.hash}
    assert removed[flipped.hash]["found_size"] == flipped.size_bytes
    assert removed[flipped.hash]["found_sha256"] != flipped.hash
    assert removed[resized.hash]["found_size"] == resized.size_bytes + 10
    assert report.examined_blobs == 4 and report.read_errors == 0 and not report.stopped
    assert report.examined_bytes == sum(len(c) for c in contents) + 10
    assert service.missing(flipped, resized, intact, tiny) == [flipped, resized]
    assert _stored_hashes(service.storage) == {intact.hash, tiny.hash}
    assert read_all(service.stub, intact) == contents[2]
    assert read_all(service.stub, tiny) == contents[3]
    assert service.metric("mreg_blob_scrub_examined_blobs_total") == 4
    assert service.metric("mreg_blob_scrub_examined_bytes_total") == report.examined_bytes
    assert service.metric("mreg_blob_scrub_corrupt_blobs_total") == 2
    assert service.metric("mreg_blob_scrub_read_errors_total") == 0

    # The next push uploads what FindMissingBlobs reports missing, and the blobs are whole again.
    service.put(contents[0])
    service.put(contents[1])
    assert service.missing(flipped, resized, intact, tiny) == []
    assert read_all(service.stub, flipped) == contents[0]
    assert read_all(service.stub, resized) == contents[1]
    again = service.running.scrubber.scrub()
    assert again.corrupt == [] and again.examined_blobs == 4
    assert service.metric("mreg_blob_scrub_corrupt_blobs_total") == 2


def test_blobs_stored_in_one_batch_rot_one_by_one_and_only_the_rotten_are_removed_and_healed(
    service: Service,
) -> None:
    # Forty small blobs in one BatchUpdateBlobs call: on disk, one pack file holds them all.
    contents = [os.urandom(1000 + 37 * i) for i in range(40)]
    digests = [digest_of(data) for data in contents]
    stored = service.stub.BatchUpdateBlobs(
        pb.BatchUpdateBlobsRequest(
            requests=[
                pb.BatchUpdateBlobsRequest.Request(digest=d, data=c) for d, c in zip(digests, contents, strict=True)
            ]
        )
    )
    assert [r.status.code for r in stored.responses] == [0] * 40
    if isinstance(service.storage, DiskStorage):
        assert len(list((service.storage.root / "packs").glob("*.pack"))) == 1
    read_rotten, scrubbed_rotten = digests[5], digests[30]
    corrupt_blob(service.storage, read_rotten.hash, read_rotten.size_bytes)
    corrupt_blob(service.storage, scrubbed_rotten.hash, scrubbed_rotten.size_bytes)

    # A verified read refuses the rotten blob, removes it, and serves its neighbours.
    answer = service.stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=digests[:10]))
    codes = {r.digest.hash: r.status.code for r in answer.responses}
    assert codes.pop(read_rotten.hash) == grpc.StatusCode.DATA_LOSS.value[0]
    assert set(codes.values()) == {0}
    assert [r.data for r in answer.responses if r.digest.hash != read_rotten.hash] == contents[:5] + contents[6:10]
    assert service.missing(*digests) == [read_rotten]

    report = service.running.scrubber.scrub()
    assert [d.hash for d in report.corrupt] == [scrubbed_rotten.hash]
    assert service.missing(*digests) == [read_rotten, scrubbed_rotten]
    assert _stored_hashes(service.storage) == {d.hash for d in digests} - {read_rotten.hash, scrubbed_rotten.hash}

    # The next push uploads only what is missing, and everything reads whole.
    service.put(contents[5])
    service.put(contents[30])
    assert service.missing(*digests) == []
    answer = service.stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=digests))
    assert [r.data for r in answer.responses] == contents
    assert service.running.scrubber.scrub().corrupt == []


def test_a_good_copy_published_after_the_scrub_read_a_bad_one_is_kept(service: Service) -> None:
    data = os.urandom(CHUNK + 99)
    digest = service.put(data)
    corrupt_blob(service.storage, digest.hash, digest.size_bytes)
    as_listed = Digest(digest.hash, digest.size_bytes)
    with service.storage.open_read(as_listed) as reader:
        bad = reader.identity
        reader.read(1 << 30)
    service.storage.put_verified(as_listed, data)  # a good copy lands between the scrub's read and removal

    assert not service.storage.delete_if_same(as_listed, bad)

    assert read_all(service.stub, digest) == data
    assert service.running.scrubber.scrub().corrupt == []


class _FailingReads(DiskStorage):
    """A disk store whose reads of some blobs fail the way a bad sector does."""

    def __init__(self, root: Path, unreadable: set[str]) -> None:
        super().__init__(root)
        self.unreadable = unreadable

    def open_read(self, digest: Digest, offset: int = 0, length: int = 0) -> BlobReader:
        reader = super().open_read(digest, offset, length)
        if digest.hash not in self.unreadable:
            return reader
        reader.close()
        raise OSError(errno.EIO, "Input/output error")


def test_a_blob_that_cannot_be_read_is_counted_and_left_alone(tmp_path: Path) -> None:
    storage = _FailingReads(tmp_path, set())
    good, unreadable = os.urandom(1000), os.urandom(2000)
    for data in (good, unreadable):
        d = digest_of(data)
        storage.put_verified(Digest(d.hash, d.size_bytes), data)
    storage.unreadable.add(digest_of(unreadable).hash)

    report = Scrubber(storage).scrub()

    assert report.read_errors == 1 and report.examined_blobs == 1 and report.corrupt == []
    assert _stored_hashes(storage) == {digest_of(good).hash, digest_of(unreadable).hash}


def _disk_store_of(total: int, tmp_path: Path, blob_bytes: int = 3 * CHUNK + 7) -> DiskStorage:
    storage = DiskStorage(tmp_path)
    while total > 0:
        data = os.urandom(min(blob_bytes, total))
        d = digest_of(data)
        storage.put_verified(Digest(d.hash, d.size_bytes), data)
        total -= len(data)
    return storage


def test_the_rate_limit_paces_reads_to_the_bytes_per_second_it_sets(tmp_path: Path) -> None:
    storage = _disk_store_of(10 * CHUNK, tmp_path)
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    report = Scrubber(storage, bytes_per_second=2_000_000, clock=lambda: now[0], sleep=sleep).scrub()

    assert report.examined_bytes == 10 * CHUNK
    assert sum(sleeps) == pytest.approx(10 * CHUNK / 2_000_000)
    assert len(sleeps) >= 10  # between blocks, not once at the end
    unlimited: list[float] = []
    Scrubber(storage, bytes_per_second=0, clock=lambda: now[0], sleep=unlimited.append).scrub()
    assert unlimited == []


def test_a_stop_request_ends_a_slow_scrub_promptly_and_removes_nothing(tmp_path: Path) -> None:
    storage = _disk_store_of(8 * CHUNK, tmp_path)
    stopping = threading.Event()
    reports = []
    # At 1 MB/s this scrub would take 8 s; the stop must end it mid-wait, mid-blob.
    worker = threading.Thread(
        target=lambda: reports.append(Scrubber(storage, bytes_per_second=1_000_000).scrub(stopping))
    )
    worker.start()
    time.sleep(0.3)
    asked = time.monotonic()
    stopping.set()
    worker.join(timeout=5)

    assert not worker.is_alive()
    assert time.monotonic() - asked < 1.0
    assert reports[0].stopped and reports[0].corrupt == []
    assert reports[0].examined_bytes < 8 * CHUNK
    assert len(_stored_hashes(storage)) == 3


def test_the_service_scrubs_periodically_and_its_metrics_show_the_run(tmp_path: Path) -> None:
    running = blob_server.start(
        BlobConfig(
            listen="127.0.0.1:0",
            store=str(tmp_path / "blobs"),
            metrics_listen="127.0.0.1:0",
            scrub_interval_seconds=0.3,
        )
    )
    service = Service(running)
    try:
        assert service.metric("mreg_blob_scrub_runs_total", result="completed") == 0  # declared before any run
        intact = service.put(os.urandom(5000))
        rotten = service.put(os.urandom(6000))
        corrupt_blob(service.storage, rotten.hash, rotten.size_bytes)

        deadline = time.monotonic() + 15
        while service.metric("mreg_blob_scrub_corrupt_blobs_total") < 1:
            assert time.monotonic() < deadline, "the periodic scrub did not remove the corrupt blob in time"
            time.sleep(0.1)
        while service.metric("mreg_blob_scrub_runs_total", result="completed") < 1:
            assert time.monotonic() < deadline, "the periodic scrub did not complete in time"
            time.sleep(0.1)

        assert service.missing(intact, rotten) == [rotten]
        assert service.metric("mreg_blob_scrub_examined_blobs_total") >= 2
        assert abs(service.metric("mreg_blob_scrub_last_run_timestamp_seconds") - time.time()) < 60
        assert service.metric("mreg_blob_scrub_runs_total", result="failed") == 0
        lease = json.loads(service.storage.read_state(LEASE_NAME) or b"{}")
        assert lease["owner"] == running.scrubber.owner and lease["last_completed"] is not None
    finally:
        service.channel.close()
        running.stop(grace=None)


def test_replicas_sharing_a_store_scrub_it_once_per_interval_and_take_over_a_dead_holders_lease(
    blob_store_location: str,
) -> None:
    location = _fresh(blob_store_location)
    clock = [1_000_000.0]
    first, second = (
        Scrubber(open_storage(location), wall_clock=lambda: clock[0], lease_settle_seconds=0) for _ in range(2)
    )
    data = os.urandom(3000)
    d = digest_of(data)
    first.storage.put_verified(Digest(d.hash, d.size_bytes), data)

    assert first.run_if_due(3600) is not None
    assert second.run_if_due(3600) is None  # completed within the interval, by the other replica
    clock[0] += 3601
    assert second.run_if_due(3600) is not None
    assert first.run_if_due(3600) is None

    # A holder that died mid-run keeps the others off until its lease lapses, then one takes over.
    clock[0] += 3601
    lease = json.loads(first.storage.read_state(LEASE_NAME) or b"{}")
    held = {**lease, "owner": "dead-replica", "run": "r", "expires": clock[0] + LEASE_SECONDS}
    first.storage.write_state(LEASE_NAME, json.dumps(held).encode())
    assert first.run_if_due(3600) is None and second.run_if_due(3600) is None
    clock[0] += LEASE_SECONDS + 1
    report = first.run_if_due(3600)
    assert report is not None and report.examined_blobs == 1


class _RacedLease(DiskStorage):
    """A store where another replica's lease write lands just after this replica's first one."""

    def write_state(self, name: str, data: bytes) -> None:
        super().write_state(name, data)
        if not getattr(self, "raced", False):
            self.raced = True
            other = {"owner": "other-replica", "run": "theirs", "expires": time.time() + LEASE_SECONDS}
            super().write_state(name, json.dumps(other).encode())


def test_a_replica_whose_lease_write_was_overwritten_by_another_stands_down(tmp_path: Path) -> None:
    storage = _RacedLease(tmp_path)
    data = os.urandom(100)
    d = digest_of(data)
    storage.put_verified(Digest(d.hash, d.size_bytes), data)
    scrubber = Scrubber(storage, lease_settle_seconds=0.01)

    assert scrubber.run_if_due(3600) is None
    assert json.loads(storage.read_state(LEASE_NAME) or b"{}")["owner"] == "other-replica"  # theirs, untouched
