"""Garbage collection never deletes content that a committed version, or a commit in flight, references.

These run garbage collection at the smallest grace period the services accept while
clients push, on both databases, and then pull every version a push acknowledged.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import insert, update

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob.v1 import blob_service_pb2_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import MregError, Registry
from mreg.metadata.v1 import metadata_service_pb2 as metadata_pb
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.models import CondemnedBlob, GcState
from tests.helpers import digest_of
from tests.wire import Wire

PUSHERS = 4
PUSHES_EACH = 20


@dataclass
class GcStack:
    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer

    def registry(self) -> Registry:
        return Registry.connect(
            self.metadata.address, self.blob.address, entity="acme", project="gc", use_cache=False, parallel=2
        )


@pytest.fixture
def gc_stack(database_url: str, tmp_path: Path) -> Iterator[GcStack]:
    """Both services with no minimum grace at all: only the commit/sweep protocol protects content."""
    blob = blob_server.start(
        BlobConfig(
            listen="127.0.0.1:0", store=str(tmp_path / "blobs"), touch_interval_seconds=0, min_gc_grace_seconds=0
        )
    )
    metadata = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=database_url, blob_addr=blob.address, gc_interval_seconds=0)
    )
    yield GcStack(blob, metadata)
    metadata.stop(grace=None)
    blob.stop(grace=None)


def _commit_in_one_call(
    wire: Wire, artifact: str, folder: Path, aliases: Sequence[str] = ()
) -> metadata_pb.CommitVersionResponse:
    """Commits the files of ``folder`` as a client that skips its own FindMissingBlobs does: nothing is uploaded,
    so only the service's own check stands between the commit and content that is gone."""
    manifest = [
        metadata_pb.ManifestEntry(path=path.name, digest=digest_of(path.read_bytes()))
        for path in sorted(folder.iterdir())
    ]
    return wire.call(
        wire.metadata.CommitVersion,
        metadata_pb.CommitVersionRequest(
            new_version=metadata_pb.CommitVersionRequest.NewVersion(parent=artifact, type="model"),
            manifest=manifest,
            aliases=list(aliases),
        ),
    )


def _checkpoint(root: Path, shared: bytes) -> Path:
    """Three small files: two unique to this push, one shared by every push (deduplicated)."""
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(3000))
    (root / "optimizer.bin").write_bytes(os.urandom(1500))
    (root / "config.json").write_bytes(shared)
    return root


def test_gc_at_zero_grace_never_loses_an_acknowledged_version_under_concurrent_pushes(
    gc_stack: GcStack, tmp_path: Path
) -> None:
    name = f"race-{uuid.uuid4().hex[:6]}"
    shared = b'{"layers": 50}'
    acknowledged: dict[str, Path] = {}
    refused: list[MregError] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()

    def push_many(worker: int) -> None:
        try:
            with gc_stack.registry() as client:
                for i in range(PUSHES_EACH):
                    folder = _checkpoint(tmp_path / f"w{worker}-{i}", shared)
                    try:
                        pushed = client.push(folder, name)
                    except MregError as e:  # a push may be refused; it must never be acknowledged and lost
                        refused.append(e)
                        continue
                    with lock:
                        acknowledged[pushed.version.name] = folder
        except BaseException as e:
            unexpected.append(e)

    workers = [threading.Thread(target=push_many, args=(w,)) for w in range(PUSHERS)]
    for worker in workers:
        worker.start()

    sweeps = 0

    def collect() -> None:
        nonlocal sweeps
        with gc_stack.registry() as admin:
            while not done.is_set():
                admin.collect_garbage(grace_seconds=0)
                sweeps += 1

    collector = threading.Thread(target=collect)
    collector.start()
    for worker in workers:
        worker.join()
    done.set()
    collector.join()
    assert unexpected == []

    lost = []
    with gc_stack.registry() as client:
        client.collect_garbage(grace_seconds=0)
        for ref, folder in acknowledged.items():
            out = tmp_path / "pulled" / ref.rsplit(":", 1)[1]
            try:
                client.pull(ref, out)
            except MregError as e:
                lost.append((ref, e.code))
                continue
            for file in folder.iterdir():
                assert (out / file.name).read_bytes() == file.read_bytes(), (ref, file.name)
    print(
        f"GC race: {len(acknowledged)} acknowledged, {len(acknowledged) - len(lost)} pullable, "
        f"{len(refused)} refused, {sweeps} sweeps"
    )
    assert lost == []
    assert sweeps > 0
    # The protocol may refuse a commit whose content a sweep took, but pushes retry, so most land.
    assert len(acknowledged) >= PUSHERS * PUSHES_EACH // 2


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_delete_blobs_with_a_cutoff_in_the_future_keeps_content_used_within_the_minimum_grace(tmp_path: Path) -> None:
    blob = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), min_gc_grace_seconds=3600))
    try:
        with grpc.insecure_channel(blob.address) as channel:
            stub = blob_service_pb2_grpc.BlobServiceStub(channel)
            data = b"weights of a committed version"
            digest = digest_of(data)
            stub.BatchUpdateBlobs(
                pb.BatchUpdateBlobsRequest(requests=[pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
            )
            future = _stamp(datetime.now(UTC) + timedelta(days=365))

            listed = [d for r in stub.ListBlobs(pb.ListBlobsRequest(unused_before=future)) for d in r.digests]
            deleted = stub.DeleteBlobs(pb.DeleteBlobsRequest(digests=[digest], unused_before=future))

            assert listed == []
            assert list(deleted.deleted_digests) == []
            assert stub.FindMissingBlobs(pb.FindMissingBlobsRequest(blob_digests=[digest])).missing_blob_digests == []
    finally:
        blob.stop(grace=None)


def test_a_sweep_that_died_mid_deletion_blocks_that_content_until_the_next_sweep_finishes_it(
    gc_stack: GcStack, tmp_path: Path
) -> None:
    folder = _checkpoint(tmp_path / "ck", b"{}")
    weights = digest_of((folder / "weights.bin").read_bytes())
    with gc_stack.registry() as client, Wire(gc_stack.metadata.address, gc_stack.blob.address) as wire:
        wire.blobs.BatchUpdateBlobs(
            pb.BatchUpdateBlobsRequest(
                requests=[
                    pb.BatchUpdateBlobsRequest.Request(digest=weights, data=(folder / "weights.bin").read_bytes())
                ]
            )
        )
        # What a sweep that crashed between condemning and deleting leaves behind.
        with gc_stack.metadata.engine.begin() as connection:
            connection.execute(
                insert(CondemnedBlob).values(
                    digest=weights.hash,
                    size_bytes=weights.size_bytes,
                    deleted_epoch=None,
                    condemned_at=datetime.now(UTC),
                )
            )

        with pytest.raises(MregError) as refused:
            client.push(folder, "crashed-sweep")
        assert (refused.value.code, refused.value.reason) == ("FAILED_PRECONDITION", "MISSING_BLOB")
        assert ("MISSING_BLOB", f"blobs/{weights.hash}/{weights.size_bytes}") in refused.value.violations

        client.collect_garbage(grace_seconds=0)
        pushed = client.push(folder, "crashed-sweep")
        client.pull(pushed.version.name, tmp_path / "out")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()


def test_content_a_sweep_deleted_commits_again_once_uploaded_again(gc_stack: GcStack, tmp_path: Path) -> None:
    # The service checks a commit against the GC epoch it last read, which here predates the sweep:
    # a refusal from that stale epoch must be retried with a fresh one, not returned.
    folder = _checkpoint(tmp_path / "ck", uuid.uuid4().bytes)  # no other test's version references it
    with gc_stack.registry() as client:
        first = client.push(folder, "collected")
        client.delete_version(first.version.name, force=True)
        report = client.collect_garbage(grace_seconds=0)
        assert report.deleted_blobs == 3

        again = client.push(folder, "collected")
        client.pull(again.version.name, tmp_path / "out")
    for name in ("weights.bin", "optimizer.bin", "config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes()


def test_content_the_service_saw_moments_before_a_sweep_deleted_it_is_refused_not_committed(
    gc_stack: GcStack, tmp_path: Path
) -> None:
    # The service does not ask the blob service again about content it saw lately (garbage.SeenContent): the
    # sweep's deletion must still refuse a commit naming that content, as a client skipping its own
    # FindMissingBlobs sends it.
    folder = _checkpoint(tmp_path / "ck", uuid.uuid4().bytes)
    with gc_stack.registry() as client, Wire(gc_stack.metadata.address, gc_stack.blob.address, project="gc") as wire:
        first = client.push(folder, "seen-then-collected")

        def commit() -> metadata_pb.CommitVersionResponse:
            # The content is the latest version's: the call only moves an alias.
            return _commit_in_one_call(wire, "seen-then-collected", folder, aliases=["again"])

        assert commit().version.index == first.version.index  # seen, and the same content: nothing new
        client.delete_version(first.version.name, force=True)
        assert client.collect_garbage(grace_seconds=0).deleted_blobs == 3

        with pytest.raises(MregError) as refused:
            commit()
        assert (refused.value.code, refused.value.reason) == ("FAILED_PRECONDITION", "MISSING_BLOB")
        assert list(client.list_versions("seen-then-collected")) == []


@pytest.mark.parametrize("content_check_cache_seconds", [0, 60])
def test_a_blob_removed_outside_the_sweep_is_refused_at_once_when_commits_always_ask(
    database_url: str, tmp_path: Path, content_check_cache_seconds: float
) -> None:
    # A blob an operator (or the scrub) removed by hand is not seen by the commit/sweep protocol. With
    # --content-check-cache-seconds 0 the service asks the blob service on every commit and refuses such a
    # commit at once; with the default it trusts what it was told for up to a minute, as documented.
    blob = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs")))
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=database_url,
            blob_addr=blob.address,
            gc_interval_seconds=0,
            content_check_cache_seconds=content_check_cache_seconds,
        )
    )
    try:
        folder = _checkpoint(tmp_path / "ck", uuid.uuid4().bytes)
        with (
            Registry.connect(metadata.address, blob.address, entity="acme", project="gc") as client,
            Wire(metadata.address, blob.address, project="gc") as wire,
        ):
            client.push(folder, "hand-removed")  # its commit makes the service ask about the three blobs
            removed = digest_of((folder / "weights.bin").read_bytes()).hash
            (tmp_path / "blobs" / "blobs" / removed[:2] / removed).unlink()

            def commit() -> metadata_pb.CommitVersionResponse:
                return _commit_in_one_call(wire, "elsewhere", folder)

            if content_check_cache_seconds == 0:
                with pytest.raises(MregError) as refused:
                    commit()
                assert (refused.value.code, refused.value.reason) == ("FAILED_PRECONDITION", "MISSING_BLOB")
                assert removed in refused.value.message
                with pytest.raises(MregError) as absent:  # nothing was created, not even the artifact
                    list(client.list_versions("elsewhere"))
                assert absent.value.code == "NOT_FOUND"
            else:
                assert commit().version.index == 0
    finally:
        metadata.stop(grace=None)
        blob.stop(grace=None)


def test_only_one_sweep_runs_at_a_time(gc_stack: GcStack) -> None:
    with gc_stack.metadata.engine.begin() as connection:
        connection.execute(
            update(GcState).values(lease_owner="another-replica", lease_until=datetime.now(UTC) + timedelta(minutes=5))
        )
    with gc_stack.registry() as client:
        with pytest.raises(MregError) as busy:
            client.collect_garbage(grace_seconds=0)
        assert (busy.value.code, busy.value.reason) == ("FAILED_PRECONDITION", "GC_IN_PROGRESS")
        assert "another garbage collection is running" in busy.value.message
        # A dry run only reads, so it does not wait for the lease.
        assert client.collect_garbage(grace_seconds=0, dry_run=True).deleted_blobs == 0
