"""Scale-out: three metadata replicas and two blob replicas on one PostgreSQL and one S3 server.

The services keep no state of their own, so any replica serves any request: commits
through all of them number versions without gaps, a compare-and-set has one winner, an
upload cut on one blob replica resumes on the other, a Watch on one replica sees what the
others commit, and killing a replica loses nothing it acknowledged. Every process is a
real subprocess (started together, as a deployment starts them); PostgreSQL only, as SQLite
is one process's database.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service.storage.s3 import PART_SIZE
from mreg.client import MregError, Registry
from tests.conftest import DATABASES, _fresh_database
from tests.helpers import CHUNK, assert_same_tree, digest_of, read_all, write_requests
from tests.processes import ServiceProcess
from tests.s3_server import S3Server

pytestmark = pytest.mark.skipif(
    "postgresql" not in DATABASES, reason="replicas share a PostgreSQL database; SQLite serves one process"
)

METADATA_REPLICAS = 3
BLOB_REPLICAS = 2
PROJECT = "acme/replicas"
BLOB_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


@dataclass
class Cluster:
    metadata: list[ServiceProcess]
    blobs: list[ServiceProcess]

    def blob_of(self, replica: int) -> ServiceProcess:
        """The blob replica metadata replica ``replica`` uses (--blob-addr), and its clients with it."""
        return self.blobs[replica % BLOB_REPLICAS]

    def registry(self, replica: int) -> Registry:
        return Registry.connect(
            self.metadata[replica].address, self.blob_of(replica).address, entity="acme", project="replicas"
        )


def _start_together(processes: list[ServiceProcess]) -> None:
    for process in processes:
        process.spawn()
    for process in processes:
        process.wait_serving()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_credentials: None) -> Iterator[Cluster]:
    databases = _fresh_database("postgresql", tmp_path_factory)
    database_url = next(databases)
    logs = tmp_path_factory.mktemp("replica-logs")
    s3 = S3Server("rclone", tmp_path_factory.mktemp("replicas-s3")).start()
    store = s3.store_url(f"replicas-{uuid.uuid4().hex[:8]}")
    blobs = [
        ServiceProcess("mreg.blob_service", ["--store", store], log_file=logs / f"blob-{i}.log")
        for i in range(BLOB_REPLICAS)
    ]
    metadata = [
        ServiceProcess(
            "mreg.metadata_service",
            ["--database-url", database_url, "--blob-addr", blobs[i % BLOB_REPLICAS].address],
            log_file=logs / f"metadata-{i}.log",
        )
        for i in range(METADATA_REPLICAS)
    ]
    try:
        _start_together(blobs)  # on a new bucket
        _start_together(metadata)  # on a new database
        yield Cluster(metadata, blobs)
    finally:
        for process in [*metadata, *blobs]:
            process.stop()
        s3.stop()
        next(databases, None)


def _small_model(root: Path, label: str) -> Path:
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(label.encode() + os.urandom(256))
    (root / "config.json").write_text(f'{{"label": "{label}"}}')
    return root


def _run_threads(count: int, target) -> None:  # type: ignore[no-untyped-def]
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_pushes_through_every_replica_at_once_number_versions_without_gaps_or_duplicates(
    cluster: Cluster, tmp_path: Path
) -> None:
    artifact = f"{PROJECT}/burst"
    pushes_per_replica = 10
    indexes: list[int] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(METADATA_REPLICAS)

    def pusher(replica: int) -> None:
        with cluster.registry(replica) as registry:
            barrier.wait()
            for i in range(pushes_per_replica):
                try:
                    result = registry.push(_small_model(tmp_path / f"r{replica}-{i}", f"r{replica}-{i}"), artifact)
                except MregError as e:
                    failures.append(e)
                    return
                assert result.created and result.version.index is not None
                indexes.append(result.version.index)

    _run_threads(METADATA_REPLICAS, pusher)

    total = METADATA_REPLICAS * pushes_per_replica
    assert failures == []
    assert sorted(indexes) == list(range(total)), "each push got its own index, v0 to v29"
    for replica in range(METADATA_REPLICAS):
        with cluster.registry(replica) as registry:
            listed = sorted(v.index for v in registry.list_versions(artifact) if v.index is not None)
        assert listed == list(range(total)), f"replica {replica} lists v0..v{total - 1}"


def test_compare_and_set_of_an_alias_from_every_replica_at_once_has_exactly_one_winner(
    cluster: Cluster, tmp_path: Path
) -> None:
    artifact = f"{PROJECT}/promoted"
    with cluster.registry(0) as registry:
        for i in range(METADATA_REPLICAS + 1):
            registry.push(_small_model(tmp_path / f"v{i}", f"promoted-{i}"), artifact)
        registry.set_alias(f"{artifact}:v0", "prod", expect_unset=True)
    current = 0
    for _ in range(5):  # five rounds of the same race
        outcomes: list[int | MregError] = [0] * METADATA_REPLICAS
        barrier = threading.Barrier(METADATA_REPLICAS)
        expected = current
        # Each replica moves the alias to another version, none to where it is (that would be a no-op).
        targets = [index for index in range(METADATA_REPLICAS + 1) if index != expected]

        def promote(replica: int) -> None:
            target = targets[replica]  # noqa: B023 - the threads end within the round
            with cluster.registry(replica) as registry:
                barrier.wait()  # noqa: B023
                try:
                    registry.set_alias(f"{artifact}:v{target}", "prod", expected_index=expected)  # noqa: B023
                    outcomes[replica] = target  # noqa: B023
                except MregError as e:
                    outcomes[replica] = e  # noqa: B023

        _run_threads(METADATA_REPLICAS, promote)

        winners = [o for o in outcomes if isinstance(o, int)]
        losers = [o for o in outcomes if isinstance(o, MregError)]
        assert len(winners) == 1, f"one compare-and-set wins: {outcomes}"
        assert [(e.code, e.reason) for e in losers] == [("FAILED_PRECONDITION", "ALIAS_EXPECTATION_FAILED")] * (
            METADATA_REPLICAS - 1
        )
        current = winners[0]
        with cluster.registry(2) as registry:
            assert registry.resolve(f"{artifact}:prod").version.index == current


def test_an_upload_cut_on_one_blob_replica_resumes_on_the_other_from_the_committed_offset(cluster: Cluster) -> None:
    content = os.urandom(PART_SIZE + 4 * CHUNK)
    digest = digest_of(content)
    upload_id = uuid.uuid4().hex
    first, second = cluster.blobs
    sent_enough = threading.Event()
    hold = threading.Event()

    def cut_stream() -> Iterator[blob_pb.WriteRequest]:
        for request in write_requests(content, digest, upload_id, finish=False):
            yield request
            if request.write_offset + len(request.data) >= PART_SIZE + 2 * CHUNK:
                break
        sent_enough.set()
        hold.wait(60)  # the stream stays open, mid-upload, until its replica dies

    with grpc.insecure_channel(first.address, options=BLOB_OPTIONS) as channel:
        call = blob_grpc.BlobServiceStub(channel).Write.future(cut_stream())
        try:
            assert sent_enough.wait(60)
            with grpc.insecure_channel(second.address, options=BLOB_OPTIONS) as other:
                status = blob_grpc.BlobServiceStub(other).QueryWriteStatus
                request = blob_pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest)
                # The first part is staged once the replica has received it: a bounded number of looks.
                for _ in range(200):
                    try:
                        if status(request).committed_size >= PART_SIZE:
                            break
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.NOT_FOUND
                    threading.Event().wait(0.05)
                first.kill()  # cut midway: what it buffered beyond the staged part is lost
        finally:
            hold.set()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=60)

    try:
        with grpc.insecure_channel(second.address, options=BLOB_OPTIONS) as channel:
            stub = blob_grpc.BlobServiceStub(channel)
            status = stub.QueryWriteStatus(blob_pb.QueryWriteStatusRequest(upload_id=upload_id, digest=digest))
            assert (status.committed_size, status.complete) == (PART_SIZE, False)
            response = stub.Write(write_requests(content, digest, upload_id, offset=status.committed_size))
            assert response.committed_size == len(content)
            assert read_all(stub, digest) == content
    finally:
        first.start()  # the other tests need both replicas
    with grpc.insecure_channel(first.address, options=BLOB_OPTIONS) as channel:
        assert read_all(blob_grpc.BlobServiceStub(channel), digest) == content, "every replica serves the blob"


def test_a_watch_on_one_replica_sees_every_commit_made_through_the_others_in_order(
    cluster: Cluster, tmp_path: Path
) -> None:
    artifact = f"{PROJECT}/watched"
    pushes_per_replica = 5
    expected_commits = (METADATA_REPLICAS - 1) * pushes_per_replica
    live = threading.Event()
    updates: list = []

    def watch() -> None:
        with cluster.registry(0) as registry:
            committed = 0
            for update in registry.watch(from_now=True, timeout=120):
                updates.append(update)
                live.set()
                if update.event is not None and update.event.kind == "version.committed":
                    committed += 1
                    if committed == expected_commits:
                        return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert live.wait(60), "the watch stream never became live"

    def pusher(i: int) -> None:
        with cluster.registry(1 + i) as registry:
            for n in range(pushes_per_replica):
                registry.push(_small_model(tmp_path / f"w{i}-{n}", f"w{i}-{n}"), artifact)

    _run_threads(METADATA_REPLICAS - 1, pusher)
    watcher.join(timeout=150)

    start = updates[0].sequence
    sequences = [u.event.sequence for u in updates if u.event is not None]
    assert sequences == list(range(start + 1, start + 1 + len(sequences))), "every event, in order, none twice"
    commits = [u.event.resource for u in updates if u.event is not None and u.event.kind == "version.committed"]
    assert commits == [f"{artifact}:v{i}" for i in range(expected_commits)]


def test_killing_a_metadata_replica_mid_burst_loses_no_acknowledged_version(cluster: Cluster, tmp_path: Path) -> None:
    artifact = f"{PROJECT}/survivor"
    pushes_per_replica = 8
    acknowledged: list[tuple[str, Path]] = []
    lock = threading.Lock()
    three_acknowledged_by_victim = threading.Event()
    victim_cut = threading.Event()

    def pusher(replica: int) -> None:
        with cluster.registry(replica) as registry:
            for i in range(pushes_per_replica):
                source = _small_model(tmp_path / f"k{replica}-{i}", f"k{replica}-{i}")
                try:
                    result = registry.push(source, artifact)
                except MregError as e:
                    assert replica == 0 and e.code == "UNAVAILABLE", e  # only the killed replica fails
                    victim_cut.set()
                    return
                with lock:
                    acknowledged.append((result.version.name, source))
                if replica == 0 and i == 2:
                    three_acknowledged_by_victim.set()

    victim = threading.Thread(target=pusher, args=(0,))
    others = [threading.Thread(target=pusher, args=(r,)) for r in range(1, METADATA_REPLICAS)]
    for thread in [victim, *others]:
        thread.start()
    assert three_acknowledged_by_victim.wait(120)
    cluster.metadata[0].kill()
    for thread in [victim, *others]:
        thread.join()

    assert victim_cut.is_set(), "the replica died while its client was still pushing"
    assert len(acknowledged) >= 3 + (METADATA_REPLICAS - 1) * pushes_per_replica
    with cluster.registry(1) as registry, cluster.registry(2) as other:
        listed = sorted(v.index for v in registry.list_versions(artifact) if v.index is not None)
        assert listed == list(range(len(listed))), "no gaps"
        for name, source in acknowledged:
            pulled = tmp_path / "pulled" / name.rsplit(":", 1)[1]
            registry.pull(name, pulled)
            assert_same_tree(source, pulled)
            assert other.resolve(name).version.digest == registry.resolve(name).version.digest
