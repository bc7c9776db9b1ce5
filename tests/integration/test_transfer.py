"""Transfers on every blob store (local disk, moto_server, rclone serve s3): resumable,
verified, cached, garbage-collected."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.digests import Digest
from mreg.client import MregError, Registry
from mreg.client.cache import SMALL_ENTRY_BYTES, ContentCache, reflink
from mreg.client.channels import open_channel
from mreg.client.hashing import LocalFile
from mreg.client.transfer import (
    BATCH_COUNT,
    STREAM_WHILE_HASHING_MIN_BYTES,
    BlobTransfer,
    RemoteFile,
    StreamsWhileHashing,
)
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.helpers import (
    assert_same_tree,
    corrupt_blob,
    digest_of,
    make_checkpoint,
    new_upload,
    read_all,
    truncate_blob,
    write_requests,
)
from tests.processes import ServiceProcess, free_port
from tests.wire import Wire

CHUNK = 1 << 20


@dataclass
class Stack:
    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer

    def registry(self, cache_dir: Path | None = None, use_cache: bool = False) -> Registry:
        return Registry.connect(
            self.metadata.address,
            self.blob.address,
            entity="acme",
            project="transfer",
            cache_dir=cache_dir,
            use_cache=use_cache,
        )


def _start_stack(location: str, database: Path) -> Stack:
    """Both services on one blob store; the blob service renews use times on every lookup and keeps
    only a 1 s minimum grace (for GC tests)."""
    blob = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=location, touch_interval_seconds=0, min_gc_grace_seconds=1)
    )
    metadata = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{database}", blob_addr=blob.address)
    )
    return Stack(blob, metadata)


def _stop_stack(stack: Stack) -> None:
    stack.metadata.stop(grace=None)
    stack.blob.stop(grace=None)


@pytest.fixture(scope="module")
def stack(blob_store_location: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = _start_stack(blob_store_location, tmp_path_factory.mktemp("transfer-db") / "metadata.db")
    yield running
    _stop_stack(running)


@pytest.fixture
def fresh_stack(blob_store_location: str, tmp_path: Path) -> Iterator[Stack]:
    """A stack on an empty store of the same kind (a new directory or bucket)."""
    if blob_store_location.startswith("s3://"):
        location = re.sub(r"^s3://[^/]+", f"s3://fresh-{uuid.uuid4().hex[:8]}", blob_store_location)
    else:
        location = str(tmp_path / "fresh-blobs")
    running = _start_stack(location, tmp_path / "fresh.db")
    yield running
    _stop_stack(running)


def test_push_and_pull_are_byte_identical(stack, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(20 << 20) + 12345)
    with stack.registry() as registry:
        pushed = registry.push(checkpoint, "roundtrip")
        pulled = registry.pull("roundtrip", tmp_path / "out")
    assert pushed.uploaded_bytes == pushed.size_bytes == pulled.downloaded_bytes
    assert_same_tree(checkpoint, tmp_path / "out")


@pytest.mark.parametrize("as_ranges", [False, True], ids=["one-stream", "ranges"])
def test_corrupted_content_is_data_loss_and_the_file_is_absent(
    stack, as_ranges: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if as_ranges:
        request.getfixturevalue("small_ranges")
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(3 << 20) + 7)
    with stack.registry() as registry:
        pushed = registry.push(checkpoint, f"corrupt-{uuid.uuid4().hex[:6]}")
        weights = next(e for e in pushed.version.manifest if e.path == "weights.bin")
        corrupt_blob(stack.blob.store.storage, weights.sha256, weights.size_bytes)
        with pytest.raises(MregError) as error:
            registry.pull(pushed.version.name, tmp_path / "out")
    assert (error.value.code, error.value.reason) == ("DATA_LOSS", "BLOB_CORRUPT")
    assert not (tmp_path / "out" / "weights.bin").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if "mreg-partial" in p.name]


@pytest.mark.parametrize(
    ("as_ranges", "damaged"),
    [(False, "weights.bin"), (True, "weights.bin"), (False, "tokenizer/vocab.txt")],
    ids=["one-stream", "ranges", "batch"],
)
def test_a_blob_found_corrupt_at_rest_is_removed_so_the_next_push_repairs_it(
    stack, as_ranges: bool, damaged: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Pulls skip the server's verification (streams and batches alike), so the client is the one that
    # finds the damage; the same length keeps FindMissingBlobs saying "present", and only removal lets
    # a push upload it again.
    if as_ranges:
        request.getfixturevalue("small_ranges")
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(3 << 20) + 11)
    with stack.registry() as registry, Wire(stack.metadata.address, stack.blob.address) as wire:
        pushed = registry.push(checkpoint, name := f"heal-{uuid.uuid4().hex[:6]}")
        weights = next(e for e in pushed.version.manifest if e.path == damaged)
        corrupt_blob(stack.blob.store.storage, weights.sha256, weights.size_bytes)
        with pytest.raises(MregError) as error:
            registry.pull(pushed.version.name, tmp_path / "out")
        assert (error.value.code, error.value.reason) == ("DATA_LOSS", "BLOB_CORRUPT")
        assert "removed" in error.value.message and "push" in error.value.message

        blob = pb.Digest(hash=weights.sha256, size_bytes=weights.size_bytes)
        missing = wire.blobs.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[blob]))
        assert list(missing.missing_blob_digests) == [blob]
        repaired = registry.push(checkpoint, name)
        assert (repaired.created, repaired.uploaded_bytes) == (False, weights.size_bytes)
        registry.pull(pushed.version.name, tmp_path / "again")
    assert_same_tree(checkpoint, tmp_path / "again")


@pytest.mark.parametrize("damage", ["cut short", "gone"])
def test_a_pull_of_content_lost_at_rest_is_data_loss_saying_a_push_repairs_it(
    stack, damage: str, tmp_path: Path
) -> None:
    # A committed version's content is never missing by design: when the store lost it anyway (a torn
    # write, a copy removed as corrupt, a restore from an older backup), the pull says so, not NOT_FOUND.
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(1 << 20) + 3)
    with stack.registry() as registry:
        pushed = registry.push(checkpoint, name := f"lost-{uuid.uuid4().hex[:6]}")
        weights = next(e for e in pushed.version.manifest if e.path == "weights.bin")
        storage = stack.blob.store.storage
        if damage == "cut short":
            truncate_blob(storage, weights.sha256, weights.size_bytes, keep=100)
        else:
            storage.delete(Digest(weights.sha256, weights.size_bytes))
        with pytest.raises(MregError) as error:
            registry.pull(pushed.version.name, tmp_path / "out")
        assert error.value.code == "DATA_LOSS", error.value
        assert "weights.bin" in error.value.message and "push" in error.value.message
        assert not (tmp_path / "out" / "weights.bin").exists()

        repaired = registry.push(checkpoint, name)
        assert (repaired.created, repaired.uploaded_bytes) == (False, weights.size_bytes)
        registry.pull(pushed.version.name, tmp_path / "again")
    assert_same_tree(checkpoint, tmp_path / "again")


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> int:
    """Makes files over 1 MiB download as 2 MiB ranges (two 1 MiB chunks), so small test files take the ranged path."""
    from mreg.client import transfer

    monkeypatch.setattr(transfer, "RANGED_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(transfer, "RANGE_BYTES", 2 << 20)
    return 2 << 20


class _CountingReads(grpc.UnaryStreamClientInterceptor):
    """Counts Read calls and their ranges, and can break the n-th stream after its first chunk."""

    def __init__(self, break_stream: int | None = None) -> None:
        self.requests: list[pb.ReadRequest] = []
        self.lock = threading.Lock()
        self.break_stream = break_stream

    def intercept_unary_stream(self, continuation, client_call_details, request):
        with self.lock:
            self.requests.append(request)
            number = len(self.requests)
        call = continuation(client_call_details, request)
        if number != self.break_stream:
            return call
        return _BreakAfterFirst(call)


class _BrokenStream(grpc.RpcError, grpc.Call):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection broke (injected by the test)"

    def initial_metadata(self):  # type: ignore[no-untyped-def]
        return ()

    def trailing_metadata(self):  # type: ignore[no-untyped-def]
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:  # type: ignore[no-untyped-def]
        return False


class _BreakAfterFirst:
    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        self.call = call
        self.sent = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return self

    def __next__(self):  # type: ignore[no-untyped-def]
        if self.sent == 1:
            self.call.cancel()
            raise _BrokenStream()
        self.sent += 1
        return next(self.call)

    def cancel(self) -> bool:
        return self.call.cancel()


def _ranged_registry(stack: Stack, reads: _CountingReads, tmp_path: Path) -> Registry:
    metadata = open_channel(stack.metadata.address)
    blobs = grpc.intercept_channel(open_channel(stack.blob.address), reads)
    return Registry(metadata, blobs, entity="acme", project="transfer", cache_dir=tmp_path / "cache", use_cache=False)


def test_a_large_file_arrives_as_parallel_ranges_byte_identical(stack, small_ranges: int, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(5 << 20) + 12345)
    size = (checkpoint / "weights.bin").stat().st_size
    artifact = f"ranged-{uuid.uuid4().hex[:6]}"
    with stack.registry() as registry:
        registry.push(checkpoint, artifact)
    reads = _CountingReads()
    with _ranged_registry(stack, reads, tmp_path) as registry:
        registry.pull(artifact, tmp_path / "out")
    assert_same_tree(checkpoint, tmp_path / "out")
    ranges = sorted((r.read_offset, r.read_limit) for r in reads.requests)
    expected = [(start, min(small_ranges, size - start)) for start in range(0, size, small_ranges)]
    assert ranges == expected  # every byte asked for exactly once, as ranges
    assert all(r.skip_verification for r in reads.requests)  # the client hashes; the server need not


def test_a_broken_range_resumes_where_it_stopped(stack, small_ranges: int, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(5 << 20) + 99)  # ranges of 2, 2 and 1 MiB + 99
    artifact = f"ranged-cut-{uuid.uuid4().hex[:6]}"
    with stack.registry() as registry:
        registry.push(checkpoint, artifact)
    reads = _CountingReads(break_stream=3)
    with _ranged_registry(stack, reads, tmp_path) as registry:
        registry.pull(artifact, tmp_path / "out")
    assert_same_tree(checkpoint, tmp_path / "out")
    broken = reads.requests[2]
    resumed = [r for r in reads.requests if r.read_offset == broken.read_offset + CHUNK]
    # The retry asks for the rest of that range only, from the byte after the chunk it kept.
    assert [r.read_limit for r in resumed] == [broken.read_limit - CHUNK]
    assert len(reads.requests) == 3 + 1


@pytest.mark.parametrize("cut_after_chunks", [1, 5, 9, 17])
def test_upload_cut_by_the_client_resumes_to_an_identical_blob(blob_only, blob_stub, cut_after_chunks: int) -> None:
    data, digest, upload_id = new_upload(20 * CHUNK + 333)

    def cut_stream() -> Iterator[pb.WriteRequest]:
        for i, message in enumerate(write_requests(data, digest, upload_id)):
            if i == cut_after_chunks:
                raise ConnectionError("network cable pulled")
            yield message

    with pytest.raises(grpc.RpcError):
        blob_stub.Write(cut_stream())

    # The service keeps what it durably received (S3 stages whole parts); continue from there.
    offset = _settled_offset(blob_stub, upload_id, digest)
    assert 0 <= offset <= cut_after_chunks * CHUNK
    response = blob_stub.Write(write_requests(data, digest, upload_id, offset=offset))
    assert response.committed_size == len(data)
    assert hashlib.sha256(read_all(blob_stub, digest)).hexdigest() == digest.hash


def test_an_upload_holding_every_byte_but_never_finished_is_finished_by_the_next_push(stack, tmp_path: Path) -> None:
    """An upload whose stream ended with all its bytes stored but no finishing message handled (cut at that
    moment): the service holds every byte and no blob. The next push of that content resumes it with one
    finishing message, sending nothing again, rather than taking it for stored and uploading it anew."""
    data = os.urandom(16 << 20)  # two whole parts on S3, which keeps only whole parts of an unfinished upload
    digest = digest_of(data)
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / "weights.bin").write_bytes(data)
    with stack.registry(cache_dir=tmp_path / "cache", use_cache=True) as registry:
        # The id this client's push will resume, as a run interrupted at that moment left it.
        upload_id, _ = registry.hash_cache.claim_upload_id(digest.hash, len(data))
        stub = registry.blobs
        with contextlib.suppress(grpc.RpcError):
            stub.Write(write_requests(data, digest, upload_id, finish=False))
        assert _settled_offset(stub, upload_id, digest) == len(data)
        assert stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests

        pushed = registry.push(directory, f"unfinished-{uuid.uuid4().hex[:6]}")
        assert pushed.uploaded_bytes == 0
        assert hashlib.sha256(read_all(stub, digest)).hexdigest() == digest.hash
        registry.pull(pushed.version.name, tmp_path / "pulled")
        assert (tmp_path / "pulled" / "weights.bin").read_bytes() == data


@pytest.mark.parametrize("change", ["truncated", "rewritten"])
def test_a_file_changed_between_hashing_and_upload_is_refused_saying_so(stack, tmp_path: Path, change: str) -> None:
    """A checkpoint still being written when the push hashed it: its upload sends other bytes than were hashed.
    The push fails saying the file changed (not that the service lost data), and stores nothing of it."""
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    weights = directory / "weights.bin"
    weights.write_bytes(os.urandom(16 << 20))
    hashed = digest_of(weights.read_bytes())

    def changing_it(total: int):  # type: ignore[no-untyped-def]
        # The upload's progress starts once hashing is done, before any byte is sent.
        if change == "truncated":
            with open(weights, "r+b") as f:
                f.truncate(5 << 20)
        else:
            with open(weights, "r+b") as f:
                f.write(b"another epoch")
        return lambda sent: None

    with stack.registry() as registry, pytest.raises(MregError) as refused:
        registry.push(directory, f"changing-{uuid.uuid4().hex[:6]}", progress=changing_it)

    error = refused.value
    assert error.code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT"), error
    assert "weights.bin" in error.message and "changed while pushing" in error.message, error.message
    if change == "truncated":
        assert f"{5 << 20} bytes" in error.message and f"{16 << 20} when it was hashed" in error.message
    with stack.registry() as registry:
        missing = registry.blobs.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[hashed]))
    assert list(missing.missing_blob_digests) == [hashed]


def _settled_offset(stub, upload_id: str, digest: pb.Digest) -> int:
    """QueryWriteStatus once the broken stream's handler has finished with the upload."""
    previous, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = stub.QueryWriteStatus(pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
            current = status.committed_size
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            current = 0
        if current == previous:
            return current
        previous = current
        time.sleep(0.3)
    return previous


def test_upload_survives_a_sigkill_and_restart_of_the_blob_service(blob_store_location: str, tmp_path: Path) -> None:
    service = ServiceProcess("mreg.blob_service", ["--store", blob_store_location]).start()
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(96 << 20))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    file = LocalFile(source, "big.bin", sha, source.stat().st_size)
    sent = Counter[str]()
    killed = threading.Event()

    def on_progress(n: int) -> None:
        sent["bytes"] += n
        if sent["bytes"] >= 40 << 20 and not killed.is_set():
            killed.set()
            service.kill()
            threading.Thread(target=service.start, daemon=True).start()

    try:
        with grpc.insecure_channel(service.address) as channel:
            transfer = BlobTransfer(blob_service_pb2_grpc.BlobServiceStub(channel))
            transfer.upload([file], on_progress)
            assert killed.is_set()
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            digest = pb.Digest(hash=sha, size_bytes=file.size_bytes)
            assert hashlib.sha256(read_all(stub, digest)).hexdigest() == sha
        # It continued from what the killed service had kept instead of starting over.
        assert sent["bytes"] < 2 * file.size_bytes
    finally:
        service.stop()


def test_s3_server_stopped_mid_upload_is_unavailable_and_a_retry_succeeds(s3_server) -> None:
    running = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=s3_server.store_url(f"outage-{uuid.uuid4().hex[:8]}"))
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            data, digest, upload_id = new_upload(20 * CHUNK)

            def stream_that_outlives_s3() -> Iterator[pb.WriteRequest]:
                for i, message in enumerate(write_requests(data, digest, upload_id)):
                    if i == 10:  # one 8 MiB part is staged; the next one will not be
                        s3_server.stop()
                    yield message

            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                stub.Write(stream_that_outlives_s3(), timeout=120)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "S3" in error.value.details()
            assert time.monotonic() - started < 60  # a clear error, not a hang
            s3_server.start()
            offset = _settled_offset(stub, upload_id, digest)
            assert stub.Write(write_requests(data, digest, upload_id, offset=offset)).committed_size == len(data)
            assert read_all(stub, digest) == data
    finally:
        running.stop(grace=None)
        if s3_server.process is not None and s3_server.process.poll() is not None:
            s3_server.start()


def test_concurrent_uploads_of_the_same_blob_both_succeed(blob_only, blob_stub) -> None:
    data = os.urandom(24 * CHUNK)
    digest = digest_of(data)
    results: list[int] = []

    def upload() -> None:
        results.append(blob_stub.Write(write_requests(data, digest, uuid.uuid4().hex)).committed_size)

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [len(data)] * 3
    assert hashlib.sha256(read_all(blob_stub, digest)).hexdigest() == digest.hash


def test_small_files_travel_in_a_handful_of_batches(fresh_stack, tmp_path: Path) -> None:
    # S3 test servers answer a few hundred requests a second; disk takes the full load.
    count = 3000 if fresh_stack.blob.store.storage.__class__.__name__ == "DiskStorage" else 300
    root = tmp_path / "many"
    for i in range(count):
        (root / f"d{i % 30}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 30}" / f"f{i}.bin").write_bytes(os.urandom(512 + i % 2048))
    calls: Counter[str] = Counter()

    class Counting(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            calls[details.method.rsplit("/", 1)[1]] += 1
            return continuation(details, request)

        def intercept_stream_unary(self, continuation, details, request_iterator):
            calls[details.method.rsplit("/", 1)[1]] += 1
            return continuation(details, request_iterator)

    blob_channel = grpc.intercept_channel(grpc.insecure_channel(fresh_stack.blob.address), Counting())
    metadata_channel = grpc.insecure_channel(fresh_stack.metadata.address)
    registry = Registry(metadata_channel, blob_channel, entity="acme", project="transfer", use_cache=False)
    with registry:
        pushed = registry.push(root, f"many-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "out")
    assert pushed.files == count
    assert calls["Write"] == 0
    assert calls["BatchUpdateBlobs"] <= 5 and calls["BatchReadBlobs"] <= 5
    assert_same_tree(root, tmp_path / "out")


def test_the_content_to_upload_is_found_exactly_across_many_lookup_requests(stack, tmp_path: Path) -> None:
    # More digests than one FindMissingBlobs request takes (BATCH_COUNT), in more requests than are asked at
    # once: the answer is the union of every request's, whichever answers first.
    stored = [os.urandom(100 + i) for i in range(12)]
    on_disk = stack.blob.store.storage.__class__.__name__ == "DiskStorage"  # S3 test servers: fewer lookups
    with stack.registry() as registry:
        blob = registry.transfer
        blob.parallel = 2
        for data in stored:
            blob.stub.BatchUpdateBlobs(
                pb.BatchUpdateBlobsRequest(
                    requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data)]
                )
            )
        present = {(hashlib.sha256(d).hexdigest(), len(d)) for d in stored}
        count = (4 if on_disk else 1) * BATCH_COUNT + 3
        absent = {(hashlib.sha256(f"absent-{i}".encode()).hexdigest(), 7 + i) for i in range(count)}
        asked = sorted(absent | present)  # by hash, as a push asks: the stored ones fall anywhere
        assert blob.find_missing(asked) == absent


def test_repush_of_an_unchanged_checkpoint_reads_no_file_and_sends_nothing(stack, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=4 << 20)
    with stack.registry(cache_dir=tmp_path / "cache", use_cache=True) as registry:
        first = registry.push(checkpoint, name := f"cached-{uuid.uuid4().hex[:6]}")
        hits_before = registry.hash_cache.hits
        again = registry.push(checkpoint, name)
        assert registry.hash_cache.hits - hits_before == again.files == 4
        assert (again.uploaded_bytes, again.version.index, again.created) == (0, first.version.index, False)
        # A change of content (and so of mtime) is noticed.
        (checkpoint / "config.json").write_text('{"layers": 152}')
        changed = registry.push(checkpoint, name)
        assert changed.created and changed.uploaded_bytes == len('{"layers": 152}')


def test_pulling_cached_content_moves_no_bytes(stack, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=6 << 20)
    with stack.registry(cache_dir=tmp_path / "cache", use_cache=True) as registry:
        pushed = registry.push(checkpoint, f"pullcache-{uuid.uuid4().hex[:6]}")
        first = registry.pull(pushed.version.name, tmp_path / "one")
        second = registry.pull(pushed.version.name, tmp_path / "two")
    assert first.downloaded_bytes == pushed.size_bytes
    assert second.downloaded_bytes == 0
    assert_same_tree(checkpoint, tmp_path / "two")


def test_what_a_pull_cached_is_trusted_by_another_process_once_the_pull_returns(stack, tmp_path: Path) -> None:
    # Records of verified entries are written in batches; the end of a pull writes the rest.
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1 << 20)
    with stack.registry(cache_dir=tmp_path / "cache", use_cache=True) as registry:
        pushed = registry.push(checkpoint, f"trust-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "one")
        other = ContentCache(tmp_path / "cache")  # as another process opens it, while this client stays open
        try:
            for entry in pushed.version.manifest:
                assert other.entry(entry.sha256, entry.size_bytes) is not None, entry.path
            assert other.rehashed == 0
        finally:
            other.close()


def test_a_pull_copies_into_the_cache_only_files_it_can_reflink_or_that_are_small(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copying a checkpoint-sized file into the cache would write it twice on every pull.
    monkeypatch.setattr("mreg.client.registry.PULL_ADOPT_COPY_LIMIT", 1 << 20)
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    can_reflink = reflink(probe, tmp_path / "probe-clone")
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=3 << 20)
    large = (checkpoint / "weights.bin").stat().st_size
    with stack.registry(cache_dir=tmp_path / "cache", use_cache=True) as registry:
        pushed = registry.push(checkpoint, f"pullcopy-{uuid.uuid4().hex[:6]}")
        first = registry.pull(pushed.version.name, tmp_path / "one")
        second = registry.pull(pushed.version.name, tmp_path / "two")
    assert first.downloaded_bytes == pushed.size_bytes
    # The small files come from the cache either way; the large one only where the file system reflinks.
    assert second.downloaded_bytes == (0 if can_reflink else large)
    assert_same_tree(checkpoint, tmp_path / "two")
    # What the cache took in is whole and under its digest, files read-only, with no temporary file left behind;
    # the small files are rows of small.db, not a file each.
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.parent.name == "blobs"]
    assert all(p.name == hashlib.sha256(p.read_bytes()).hexdigest() for p in cached)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in cached)
    assert len(cached) == (1 if can_reflink else 0)
    with contextlib.closing(sqlite3.connect(tmp_path / "cache" / "small.db")) as db:
        rows = dict(db.execute("SELECT sha256, content FROM small"))
    small = {e.sha256 for e in pushed.version.manifest if e.size_bytes <= SMALL_ENTRY_BYTES}
    assert set(rows) == small and all(hashlib.sha256(c).hexdigest() == sha for sha, c in rows.items())


def test_gc_deletes_unreferenced_content_and_never_what_a_concurrent_commit_uses(fresh_stack, tmp_path: Path) -> None:
    with fresh_stack.registry() as registry, Wire(fresh_stack.metadata.address, fresh_stack.blob.address) as wire:
        name = f"gc-{uuid.uuid4().hex[:6]}"
        kept = registry.push(make_checkpoint(tmp_path / "kept", large_bytes=1 << 20, seed=1), name)
        dropped = registry.push(make_checkpoint(tmp_path / "dropped", large_bytes=1 << 20, seed=2), name)
        registry.delete_version(dropped.version.name)
        orphans = [os.urandom(2000) for _ in range(30)]
        wire.blobs.BatchUpdateBlobs(
            pb.BatchUpdateBlobsRequest(
                requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest_of(o), data=o) for o in orphans]
            )
        )
        time.sleep(4.5)  # older than the 3 s grace period (S3 servers keep whole seconds)

        # Commits that reuse the old orphans race garbage collection runs.
        committed: list[str] = []
        failures: list[Exception] = []
        stop = threading.Event()

        def commit_orphans() -> None:
            try:
                with fresh_stack.registry() as client:
                    for i, orphan in enumerate(orphans):
                        folder = tmp_path / f"reuse{i}"
                        folder.mkdir()
                        (folder / "blob.bin").write_bytes(orphan)
                        committed.append(client.push(folder, f"{name}-reuse").version.name)
            except Exception as e:  # asserted below
                failures.append(e)
            finally:
                stop.set()

        worker = threading.Thread(target=commit_orphans)
        worker.start()
        reports = []
        while not stop.is_set():
            reports.append(registry.collect_garbage(grace_seconds=3))
        worker.join()
        assert failures == []
        reports.append(registry.collect_garbage(grace_seconds=3))

        assert sum(r.deleted_blobs for r in reports) >= 1  # the deleted version's unique weights
        for ref in [*committed, kept.version.name]:
            registry.pull(ref, tmp_path / "check" / ref.replace("/", "_").replace(":", "_"))
        assert_same_tree(tmp_path / "kept", tmp_path / "check" / kept.version.name.replace("/", "_").replace(":", "_"))
        dropped_weights = next(e for e in dropped.version.manifest if e.path == "weights.bin")
        missing = registry.transfer.find_missing([(dropped_weights.sha256, dropped_weights.size_bytes)])
        assert missing == {(dropped_weights.sha256, dropped_weights.size_bytes)}
        assert registry.collect_garbage(grace_seconds=3, dry_run=True).deleted_blobs == 0


class _CountingCalls(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def intercept_unary_unary(self, continuation, details, request):
        self.calls[details.method.rsplit("/", 1)[1]] += 1
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        self.calls[details.method.rsplit("/", 1)[1]] += 1
        return continuation(details, request_iterator)


def _local_files(root: Path, sizes: list[int]) -> list[LocalFile]:
    root.mkdir(parents=True)
    files = []
    for i, size in enumerate(sizes):
        path = root / f"f{i}.bin"
        data = os.urandom(size)
        path.write_bytes(data)
        files.append(LocalFile(path, path.name, hashlib.sha256(data).hexdigest(), size))
    return files


def test_a_client_sizes_its_batches_from_a_server_with_a_small_batch_limit(tmp_path: Path) -> None:
    running = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), max_batch_total_size_bytes=64 << 10)
    )
    sizes = [300 + (i * 37) % 3000 for i in range(400)] + [200_000, 700_000, 0]
    files = _local_files(tmp_path / "src", sizes)
    counting = _CountingCalls()
    try:
        with grpc.intercept_channel(open_channel(running.address), counting) as channel:
            transfer = BlobTransfer(blob_service_pb2_grpc.BlobServiceStub(channel))
            transfer.upload(files)
            transfer.download([RemoteFile(f.path, f.sha256, f.size_bytes) for f in files], tmp_path / "out")
    finally:
        running.stop(grace=None)
    for f in files:
        assert (tmp_path / "out" / f.path).read_bytes() == f.source.read_bytes()
    small_bytes = sum(s for s in sizes if s <= 64 << 10)
    assert counting.calls["GetCapabilities"] == 1
    # Every batch fitted the 64 KiB limit (a larger one is refused), so there were many.
    assert counting.calls["BatchUpdateBlobs"] >= small_bytes // (64 << 10)
    assert counting.calls["Write"] == 2  # the two files over the batch limit


def test_batch_downloads_stay_under_the_clients_own_4_mib_receive_limit(tmp_path: Path) -> None:
    running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs")))
    files = _local_files(tmp_path / "src", [900_000 + i for i in range(12)])
    try:
        # gRPC's default receive limit (4 MiB), as a Go, Node or Java client has it.
        with grpc.insecure_channel(running.address) as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            transfer = BlobTransfer(stub, max_receive_message_bytes=4 << 20)
            transfer.upload(files)
            transfer.download([RemoteFile(f.path, f.sha256, f.size_bytes) for f in files], tmp_path / "out")
            # The server would have answered one 10 MiB batch, which this channel cannot receive.
            with pytest.raises(grpc.RpcError) as error:
                stub.BatchReadBlobs(
                    pb.BatchReadBlobsRequest(digests=[pb.Digest(hash=f.sha256, size_bytes=f.size_bytes) for f in files])
                )
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(grace=None)
    for f in files:
        assert (tmp_path / "out" / f.path).read_bytes() == f.source.read_bytes()


def test_a_unary_call_made_before_the_server_is_up_succeeds_once_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    started: list[blob_server.RunningBlobServer] = []

    def start_late() -> None:
        time.sleep(0.3)
        started.append(blob_server.start(BlobConfig(listen=f"127.0.0.1:{port}", store=str(tmp_path / "blobs"))))

    starter = threading.Thread(target=start_late)
    try:
        with open_channel(f"127.0.0.1:{port}") as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            starter.start()
            request = pb.FindMissingBlobsRequest(blob_digests=[digest_of(b"absent")])
            response = stub.FindMissingBlobs(request, timeout=60)
        assert [d.hash for d in response.missing_blob_digests] == [digest_of(b"absent").hash]
    finally:
        starter.join()
        for running in started:
            running.stop(grace=None)


class _UnavailableAtFirst(grpc.ServerInterceptor):
    """Answers the first ``failures`` calls of every method UNAVAILABLE, as a server going down would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[1]
        with self.lock:
            self.seen[method] += 1
            fail = self.seen[method] <= self.failures
        if not fail or handler is None or handler.unary_unary is None:
            return handler

        def unavailable(request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "going down")

        return grpc.unary_unary_rpc_method_handler(
            unavailable,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_the_retry_policy_retries_unary_calls_answered_unavailable(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mreg.blob_service.service import BlobStore
    from mreg.blob_service.servicer import BlobServicer, add_to_server
    from mreg.blob_service.storage import open_storage

    flaky = _UnavailableAtFirst(failures=2)
    server = grpc.server(ThreadPoolExecutor(4), interceptors=[flaky])
    add_to_server(BlobServicer(BlobStore(open_storage(str(tmp_path / "blobs")))), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = b"retried " + uuid.uuid4().bytes
    item = pb.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data)
    request = pb.BatchUpdateBlobsRequest(requests=[item])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError) as error:
            blob_service_pb2_grpc.BlobServiceStub(plain).FindMissingBlobs(pb.FindMissingBlobsRequest())
        with open_channel(f"127.0.0.1:{port}") as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            stored = stub.BatchUpdateBlobs(request)
            read = stub.BatchReadBlobs(pb.BatchReadBlobsRequest(digests=[digest_of(data)]))
    finally:
        server.stop(None)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE  # without the policy, the first refusal is final
    assert [r.status.code for r in stored.responses] == [0]
    assert read.responses[0].data == data
    assert flaky.seen["BatchUpdateBlobs"] == 3 and flaky.seen["BatchReadBlobs"] == 3


class WatchingWrites(grpc.StreamUnaryClientInterceptor, grpc.UnaryUnaryClientInterceptor):
    """Records each Write stream's first and last messages' digests; with ``announce_hash_at_finish``, answers
    GetCapabilities as a server with (True) or without (False) write_digest_at_finish would."""

    def __init__(self, announce_hash_at_finish: bool | None = None) -> None:
        self.announce = announce_hash_at_finish
        self.writes: list[list[Any]] = []  # per stream: first digest, last digest, bytes sent

    def intercept_stream_unary(self, continuation, details, request_iterator):
        if not details.method.endswith("/Write"):
            return continuation(details, request_iterator)

        def watched():
            record: list[Any] = []  # first digest, last digest, bytes sent: kept up to date, as a cancelled
            for request in request_iterator:  # stream's requests are never all taken
                if not record:
                    first = pb.Digest()
                    first.CopyFrom(request.digest)
                    record += [first, pb.Digest(), 0]
                    self.writes.append(record)
                record[1] = request.digest
                record[2] += len(request.data)
                yield request

        return continuation(details, watched())

    def intercept_unary_unary(self, continuation, details, request):
        response = continuation(details, request)
        if self.announce is not None and details.method.endswith("/GetCapabilities"):
            caps = pb.GetCapabilitiesResponse()
            caps.CopyFrom(response.result())
            caps.write_digest_at_finish = self.announce
            return _Answered(response, caps)
        return response


class _Answered:
    """The call an interceptor continued, whose ``result()`` is another response."""

    def __init__(self, call: Any, response: object) -> None:
        self._call = call
        self._response = response

    def result(self, timeout: float | None = None) -> object:
        return self._response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class BreakingWrites(WatchingWrites):
    """A WatchingWrites whose first ``breaks`` Write streams break after ``after`` messages, as a connection
    reset does: the service keeps what arrived, and the client is told UNAVAILABLE."""

    def __init__(
        self, breaks: int, after: int, pause: float = 0.0, announce_hash_at_finish: bool | None = None
    ) -> None:
        """``pause``: seconds between the messages of a stream that will break, so it lasts a while first."""
        super().__init__(announce_hash_at_finish)
        self.breaks = breaks
        self.after = after
        self.pause = pause

    def intercept_stream_unary(self, continuation, details, request_iterator):
        if not details.method.endswith("/Write") or self.breaks == 0:
            return super().intercept_stream_unary(continuation, details, request_iterator)
        self.breaks -= 1

        def cut() -> Iterator[pb.WriteRequest]:
            for i, request in enumerate(request_iterator):
                if i == self.after:
                    raise ConnectionResetError("connection reset by peer")
                time.sleep(self.pause)
                yield request

        return _Reset(super().intercept_stream_unary(continuation, details, cut()))


class _Reset(grpc.RpcError):
    """A call that broke: its ``result()`` raises UNAVAILABLE once the call has ended."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def result(self, timeout: float | None = None) -> object:
        with contextlib.suppress(grpc.RpcError):
            self._call.result(timeout)
        raise self

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset by peer"

    def cancel(self) -> bool:
        return self._call.cancel()


def large_file_directory(root: Path, extra_bytes: int) -> int:
    """A directory holding one new file just large enough to stream while hashed, as torch.save writes; its size."""
    root.mkdir()
    (root / "model.pt").write_bytes(os.urandom(STREAM_WHILE_HASHING_MIN_BYTES + extra_bytes))
    return (root / "model.pt").stat().st_size


def watched_registry(stack: Stack, watcher: WatchingWrites, cache_dir: Path, **options: Any) -> Registry:
    blob_channel = grpc.intercept_channel(grpc.insecure_channel(stack.blob.address), watcher)
    metadata_channel = grpc.insecure_channel(stack.metadata.address)
    return Registry(metadata_channel, blob_channel, entity="acme", project="transfer", cache_dir=cache_dir, **options)


def test_a_large_new_file_streams_while_it_is_hashed_and_arrives_identical(stack, tmp_path: Path) -> None:
    root = tmp_path / "one-file"
    size = large_file_directory(root, 12345)
    (root / "config.json").write_bytes(b'{"layers": 2}')
    name = f"streamed-{uuid.uuid4().hex[:6]}"
    # Announced on every store: an S3 service prefers the hash first but takes it at the end from a client that
    # gives it so.
    watcher = WatchingWrites(announce_hash_at_finish=True)

    with watched_registry(stack, watcher, tmp_path / "cache") as registry:
        pushed = registry.push(root, name)
        registry.pull(pushed.version.name, tmp_path / "out")

    assert_same_tree(root, tmp_path / "out")
    assert pushed.created and pushed.uploaded_bytes >= size
    [(first, last, sent)] = watcher.writes
    sha256 = next(f.sha256 for f in pushed.version.manifest if f.path == "model.pt")
    # The stream began before the file was hashed: size alone first, the whole digest with the last message.
    assert (first.hash, first.size_bytes) == ("", size)
    assert (last.hash, last.size_bytes, sent) == (sha256, size, size)


def test_a_large_new_file_is_streamed_while_hashed_only_where_the_service_prefers_it(
    stack, blob_store_location: str, tmp_path: Path
) -> None:
    """On disk an upload is renamed into place whether its hash comes first or last, so the client streams while
    it hashes. An S3 store sends an upload of known hash straight to the blob's key, where one whose hash comes
    last is staged apart and copied once more: its service says so, and the client hashes first."""
    root = tmp_path / "preferred"
    size = large_file_directory(root, 4321)
    watcher = WatchingWrites()

    with watched_registry(stack, watcher, tmp_path / "cache") as registry:
        pushed = registry.push(root, f"preferred-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "out")

    assert_same_tree(root, tmp_path / "out")
    [(first, _, sent)] = watcher.writes
    on_s3 = blob_store_location.startswith("s3://")
    assert (first.hash, first.size_bytes) == (pushed.version.manifest[0].sha256 if on_s3 else "", size)
    assert sent == size


def test_a_large_file_streamed_while_hashed_resumes_each_time_its_stream_breaks(
    stack, blob_store_location: str, tmp_path: Path
) -> None:
    """Four breaks in a row: the stream resumes after each from what the service holds, with the patience of any
    upload, rather than giving the file up to an upload from its first byte."""
    root = tmp_path / "flaky"
    size = large_file_directory(root, 777)
    watcher = BreakingWrites(breaks=4, after=8, announce_hash_at_finish=True)

    with watched_registry(stack, watcher, tmp_path / "cache") as registry:
        pushed = registry.push(root, f"flaky-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "out")

    assert_same_tree(root, tmp_path / "out")
    # Five streams of one upload, all named by the size alone: none began again under the whole digest.
    assert [(first.hash, first.size_bytes) for first, _, _ in watcher.writes] == [("", size)] * 5
    assert watcher.writes[-1][1].size_bytes == size and watcher.writes[-1][1].hash
    if not blob_store_location.startswith("s3://"):
        # Each stream continued from what the service held: of the 8 MiB each broken stream sent, only what was
        # still in flight when it broke went again (S3 keeps only whole 8 MiB parts, so no such bound there).
        assert sum(sent for _, _, sent in watcher.writes) <= size + 4 * (4 << 20)


def test_an_upload_that_breaks_once_after_streaming_longer_than_the_retry_window_resumes(stack, tmp_path: Path) -> None:
    """The retry window counts from the last progress, and a stream that sent bytes made progress: a break after a
    long stream is resumed, not taken for a service that stopped answering."""
    root = tmp_path / "long"
    root.mkdir()
    data = os.urandom(16 << 20)
    (root / "weights.bin").write_bytes(data)
    # The stream that breaks takes 12 x 0.05 s, longer than the 0.5 s of patience, and its 12 MiB leave at least
    # a whole 8 MiB part stored on S3.
    watcher = BreakingWrites(breaks=1, after=12, pause=0.05)

    with watched_registry(stack, watcher, tmp_path / "cache", retry_seconds=0.5) as registry:
        pushed = registry.push(root, f"long-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "out")

    assert (tmp_path / "out" / "weights.bin").read_bytes() == data
    assert len(watcher.writes) == 2 and watcher.writes[1][0].hash == digest_of(data).hash


def test_a_stream_whose_hash_comes_after_the_services_idle_timeout_waits_for_it_outside_the_stream(
    tmp_path: Path,
) -> None:
    """Hashing can lag the stream (many files hashed before this one, a slow disk). The stream then ends unfinished
    at its last chunk rather than sit silent in an open call until the service's idle timeout ends it; once the
    hash is known, one more stream sends that chunk with it. Nothing is sent twice."""
    blob = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), stream_idle_timeout_seconds=1)
    )
    source = tmp_path / "model.pt"
    data = os.urandom(STREAM_WHILE_HASHING_MIN_BYTES)
    source.write_bytes(data)
    try:
        with grpc.insecure_channel(blob.address) as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            streams = StreamsWhileHashing(BlobTransfer(stub), [(source, source.stat())])
            time.sleep(5)  # five idle timeouts: an open stream would have been cut again and again
            streams.hashed(0, digest_of(data).hash)
            not_stored, sent = streams.finish()
            assert not_stored == set()
            assert sent == len(data)
            assert hashlib.sha256(read_all(stub, digest_of(data))).hexdigest() == digest_of(data).hash
    finally:
        blob.stop(grace=None)


def test_a_large_file_the_service_holds_already_stops_streaming_once_hashed(
    stack, blob_store_location: str, tmp_path: Path
) -> None:
    root = tmp_path / "held"
    size = large_file_directory(root, 1)
    name = f"held-{uuid.uuid4().hex[:6]}"
    with stack.registry() as registry:
        first = registry.push(root, name)
    watcher = WatchingWrites(announce_hash_at_finish=True)

    # Another machine's push: its cache has never seen the file.
    with watched_registry(stack, watcher, tmp_path / "other-cache") as registry:
        again = registry.push(root, name)

    assert (again.created, again.version.uid) == (False, first.version.uid)
    assert again.uploaded_bytes < size  # ended once the hash showed the content is there
    # One stream, or more if it broke and resumed or reached the file's end before the hash (each ends
    # unfinished, without a hash): together short of the file, and only the last carrying the hash.
    *earlier, (_, last, _) = watcher.writes
    assert sum(sent for _, _, sent in watcher.writes) < size
    assert last.hash == first.version.manifest[0].sha256 and not any(digest.hash for _, digest, _ in earlier)
    # The stream's last message came early, and the service discarded what it had received.
    uploads = Path(blob_store_location) / "uploads"
    if uploads.is_dir():
        assert not [p for p in uploads.iterdir() if p.name.endswith(f".unhashed-{size}")]


@pytest.mark.parametrize("why", ["the server cannot take it", "the client is told not to"])
def test_without_hash_at_finish_a_large_file_is_hashed_first_and_sent_with_its_digest(
    stack, tmp_path: Path, why: str
) -> None:
    root = tmp_path / "digest-first"
    large_file_directory(root, 7)
    watcher = WatchingWrites(announce_hash_at_finish=False if why == "the server cannot take it" else None)
    options = {"stream_while_hashing": why != "the client is told not to"}

    with watched_registry(stack, watcher, tmp_path / "cache", **options) as registry:
        pushed = registry.push(root, f"older-{uuid.uuid4().hex[:6]}")
        registry.pull(pushed.version.name, tmp_path / "out")

    assert_same_tree(root, tmp_path / "out")
    assert [first.hash != "" for first, _, _ in watcher.writes] == [True]


def test_a_pulled_directory_pushed_again_after_an_edit_hashes_only_the_edited_file(stack, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=4 << 20)
    name = f"pulled-{uuid.uuid4().hex[:6]}"
    with stack.registry(cache_dir=tmp_path / "pusher-cache", use_cache=True) as registry:
        first = registry.push(checkpoint, name)
    # Another machine pulls it, edits one file and pushes the directory back.
    with stack.registry(cache_dir=tmp_path / "puller-cache", use_cache=True) as registry:
        registry.pull(first.version.name, tmp_path / "work")
        (tmp_path / "work" / "config.json").write_text('{"layers": 101}')
        hits_before = registry.hash_cache.hits
        edited = registry.push(tmp_path / "work", name)

    assert registry.hash_cache.hits - hits_before == first.files - 1
    assert edited.created and edited.uploaded_bytes == len('{"layers": 101}')
