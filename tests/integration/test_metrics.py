"""What operators see: each service's Prometheus endpoint, and one JSON log line per failed RPC.

The services run in-process with ``--metrics-listen 127.0.0.1:0``; the tests call them over gRPC,
scrape the endpoints over HTTP and compare counts before and after (the servers are shared).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import MregError, Registry
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.server_runtime.metrics import RPC_LOGGER, MergedRegistries, serve_metrics
from mreg.server_runtime.runtime import JsonFormatter
from tests.helpers import Samples, make_checkpoint, metrics_text, scrape, upload
from tests.wire import Wire

METADATA = "mreg.metadata.v1.MetadataService"
BLOB = "mreg.blob.v1.BlobService"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(server: str, service: str, method: str, code: str | None = None) -> dict[str, str]:
    labels = {"server": server, "service": service, "method": method}
    if code is not None:
        labels["code"] = code
    return labels


@dataclass
class Observed:
    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer

    def registry(self) -> Registry:
        return Registry.connect(self.metadata.address, self.blob.address, entity="acme", project="metrics")

    def wire(self) -> Wire:
        return Wire(self.metadata.address, self.blob.address, entity="acme", project="metrics")

    def scrape(self) -> tuple[Samples, Samples]:
        assert self.metadata.metrics_endpoint is not None and self.blob.metrics_endpoint is not None
        return scrape(self.metadata.metrics_endpoint), scrape(self.blob.metrics_endpoint)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Both services with metrics on free loopback ports, on a database of their own.

    Not the session's database: a garbage collection another test leaves running there would refuse this
    module's. What is measured does not depend on the database, whose behaviour other modules test on each.
    """
    root = tmp_path_factory.mktemp("metrics")
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(root / "blobs"), metrics_listen="127.0.0.1:0"))
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{root / 'metadata.db'}",
            blob_addr=blobs.address,
            metrics_listen="127.0.0.1:0",
        )
    )
    yield Observed(blobs, metadata)
    metadata.stop(grace=None)
    blobs.stop(grace=None)


@pytest.fixture
def rpc_lines() -> Iterator[list[dict[str, Any]]]:
    """The ``mreg.rpc`` lines logged during the test, each as the JSON object the services write."""
    lines: list[dict[str, Any]] = []
    formatter = JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger(RPC_LOGGER)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def test_a_not_found_call_is_counted_timed_and_logged_once_as_json(
    observed: Observed, rpc_lines: list[dict[str, Any]]
) -> None:
    before, _ = observed.scrape()
    with observed.wire() as wire, pytest.raises(MregError) as refused:
        wire.call(wire.metadata.GetVersion, pb.GetVersionRequest(name="acme/metrics/never-pushed:v0"))
    assert refused.value.code == "NOT_FOUND"
    after, _ = observed.scrape()

    labels = rpc("metadata", METADATA, "GetVersion", "NOT_FOUND")
    assert value(after, "mreg_rpc_handled_total", **labels) - value(before, "mreg_rpc_handled_total", **labels) == 1
    assert (
        value(after, "mreg_rpc_duration_seconds_count", **labels)
        - value(before, "mreg_rpc_duration_seconds_count", **labels)
        == 1
    )
    assert value(after, "mreg_rpc_duration_seconds_sum", **labels) > value(
        before, "mreg_rpc_duration_seconds_sum", **labels
    )

    (line,) = [line for line in rpc_lines if line["method"] == "GetVersion"]
    assert line["logger"] == "mreg.rpc"
    assert line["service"] == METADATA
    assert line["code"] == "NOT_FOUND"
    assert line["reason"] == refused.value.reason == "COLLECTION_NOT_FOUND"
    assert "never-pushed" in line["message"]
    assert line["duration_ms"] >= 0
    assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert "principal" not in line  # authentication is off


def test_every_call_counts_the_message_bytes_it_received_and_sent(observed: Observed) -> None:
    """Bytes in and out by method on both services, as serialized messages (the blob service's content bytes
    are counted apart); the metadata service had none."""
    request = pb.GetVersionRequest(name="acme/metrics/never-pushed-either:v0")
    labels = rpc("metadata", METADATA, "GetVersion")
    resolve = rpc("metadata", METADATA, "ListProjects")
    before, _ = observed.scrape()
    with observed.wire() as wire:
        with pytest.raises(MregError):
            wire.call(wire.metadata.GetVersion, request)
        listed = wire.call(wire.metadata.ListProjects, pb.ListProjectsRequest(parent="acme"))
    after, _ = observed.scrape()

    def grew(name: str, series: dict[str, str]) -> float:
        return value(after, name, **series) - value(before, name, **series)

    assert grew("mreg_rpc_received_message_bytes_total", labels) == request.ByteSize()
    assert grew("mreg_rpc_sent_message_bytes_total", labels) == 0  # refused: no response message
    assert grew("mreg_rpc_sent_message_bytes_total", resolve) == listed.ByteSize()


def test_a_push_and_a_pull_count_their_calls_and_content_bytes(observed: Observed, tmp_path: Path) -> None:
    # Random content, new to the store and to the client's content cache: a large file travels in Write and
    # Read streams, a small one in batches.
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(os.urandom(3 << 20))
    (checkpoint / "config.json").write_bytes(os.urandom(2000))
    content_bytes = (3 << 20) + 2000
    before_meta, before_blob = observed.scrape()
    with observed.registry() as registry:
        pushed = registry.push(checkpoint, "pushed")
        registry.pull(pushed.version.name, tmp_path / "pulled")
    after_meta, after_blob = observed.scrape()

    def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for method in ("CreateVersion", "CommitVersion"):
        assert delta(before_meta, after_meta, "mreg_rpc_handled_total", **rpc("metadata", METADATA, method, "OK")) == 1
    assert delta(before_blob, after_blob, "mreg_rpc_handled_total", **rpc("blob", BLOB, "Write", "OK")) >= 1
    # Every byte of the checkpoint arrived through Write or BatchUpdateBlobs, and left through Read or
    # BatchReadBlobs when pulled.
    received = sum(
        delta(before_blob, after_blob, "mreg_blob_received_bytes_total", method=m)
        for m in ("Write", "BatchUpdateBlobs")
    )
    sent = sum(
        delta(before_blob, after_blob, "mreg_blob_sent_bytes_total", method=m) for m in ("Read", "BatchReadBlobs")
    )
    assert received == content_bytes
    assert sent == content_bytes


def test_a_successful_call_logs_nothing(observed: Observed, rpc_lines: list[dict[str, Any]], tmp_path: Path) -> None:
    with observed.registry() as registry:
        pushed = registry.push(make_checkpoint(tmp_path / "ck", 1000), "logged-nothing")
        rpc_lines.clear()  # a push asks QueryWriteStatus, which answers NOT_FOUND for an upload not begun
        before, _ = observed.scrape()
        registry.get_version(pushed.version.name)
    after, _ = observed.scrape()
    ok = rpc("metadata", METADATA, "GetVersion", "OK")
    assert value(after, "mreg_rpc_handled_total", **ok) - value(before, "mreg_rpc_handled_total", **ok) == 1
    assert rpc_lines == []


def test_an_open_watch_stream_is_a_gauge_and_its_whole_life_is_timed(
    observed: Observed, rpc_lines: list[dict[str, Any]]
) -> None:
    open_labels = rpc("metadata", METADATA, "Watch")
    ended = rpc("metadata", METADATA, "Watch", "CANCELLED")
    before, _ = observed.scrape()
    with observed.registry() as registry:
        stream = registry.watch(from_now=True)
        next(stream)  # the first heartbeat: the stream is live
        time.sleep(0.3)
        during, _ = observed.scrape()
        stream.close()
    assert (
        value(during, "mreg_rpc_open_streams", **open_labels) - value(before, "mreg_rpc_open_streams", **open_labels)
        == 1
    )

    def stream_ended() -> bool:
        now, _ = observed.scrape()
        return value(now, "mreg_rpc_handled_total", **ended) - value(before, "mreg_rpc_handled_total", **ended) == 1

    eventually(stream_ended)
    after, _ = observed.scrape()
    assert value(after, "mreg_rpc_open_streams", **open_labels) == value(before, "mreg_rpc_open_streams", **open_labels)
    # The stream's duration covers its life, not just its start.
    assert (
        value(after, "mreg_rpc_duration_seconds_sum", **ended) - value(before, "mreg_rpc_duration_seconds_sum", **ended)
        >= 0.3
    )
    assert [line for line in rpc_lines if line["method"] == "Watch"] == []  # a caller hanging up is no failure


def test_the_metadata_service_shows_its_pool_retries_and_garbage_collection(observed: Observed) -> None:
    before, _ = observed.scrape()
    with observed.registry() as registry:
        report = registry.collect_garbage(grace_seconds=0)
    after, _ = observed.scrape()
    assert value(after, "mreg_gc_runs_total") - value(before, "mreg_gc_runs_total") == 1
    assert value(after, "mreg_gc_examined_blobs_total") - value(before, "mreg_gc_examined_blobs_total") == (
        report.examined_blobs
    )
    assert value(after, "mreg_gc_deleted_blobs_total") - value(before, "mreg_gc_deleted_blobs_total") == (
        report.deleted_blobs
    )
    assert value(after, "mreg_gc_deleted_bytes_total") - value(before, "mreg_gc_deleted_bytes_total") == (
        report.deleted_bytes
    )
    assert abs(value(after, "mreg_gc_last_run_timestamp_seconds") - time.time()) < 60
    assert value(after, "mreg_db_pool_size_connections") == 16
    assert value(after, "mreg_db_pool_checked_out_connections") >= 0
    assert ("mreg_db_pool_overflow_connections", frozenset()) in after
    # Declared before any conflict happens, so a rate is defined from the first scrape.
    assert ("mreg_db_transaction_retries_total", frozenset({("kind", "serialization")})) in after


def test_pending_versions_the_janitor_expires_are_counted(observed: Observed) -> None:
    short_lived = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=observed.metadata.engine.url.render_as_string(hide_password=False),
            blob_addr=observed.blob.address,
            pending_ttl_seconds=0.5,
            janitor_interval_seconds=0.2,
            migrate=False,
            metrics_listen="127.0.0.1:0",
        )
    )
    try:
        assert short_lived.metrics_endpoint is not None
        with Wire(short_lived.address, observed.blob.address, entity="acme", project="metrics") as wire:
            wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent="never-committed", type="model"))

        def expired() -> bool:
            assert short_lived.metrics_endpoint is not None
            return value(scrape(short_lived.metrics_endpoint), "mreg_pending_versions_expired_total") >= 1

        eventually(expired)
    finally:
        short_lived.stop(grace=None)


def test_two_services_in_one_process_keep_separate_registries(observed: Observed, tmp_path: Path) -> None:
    metadata_samples, blob_samples = observed.scrape()
    assert observed.metadata.metrics.registry is not observed.blob.metrics.registry
    assert {dict(labels).get("server") for _, labels in metadata_samples} <= {"metadata", None}
    assert {dict(labels).get("server") for _, labels in blob_samples} <= {"blob", None}
    assert not any(name.startswith("mreg_blob_") for name, _ in metadata_samples)
    assert not any(name.startswith(("mreg_db_", "mreg_gc_")) for name, _ in blob_samples)

    # A second blob service in the same process registers the same metric names without a clash, and
    # counts only its own calls.
    other = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "other"), metrics_listen="127.0.0.1:0")
    )
    try:
        assert other.metrics_endpoint is not None
        with grpc.insecure_channel(other.address) as channel:
            blob_grpc.BlobServiceStub(channel).GetCapabilities(blob_pb.GetCapabilitiesRequest(), timeout=10)
        ok = rpc("blob", BLOB, "GetCapabilities", "OK")
        assert value(scrape(other.metrics_endpoint), "mreg_rpc_handled_total", **ok) == 1
        _, shared_after = observed.scrape()
        assert value(shared_after, "mreg_rpc_handled_total", **ok) == value(
            blob_samples, "mreg_rpc_handled_total", **ok
        )
    finally:
        other.stop(grace=None)


def test_one_endpoint_shows_both_services_apart_for_mreg_serve(observed: Observed) -> None:
    text = generate_latest(MergedRegistries(observed.metadata.metrics.registry, observed.blob.metrics.registry))
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    servers = {sample.labels["server"] for sample in families["mreg_rpc_handled"].samples}
    assert servers == {"metadata", "blob"}
    assert "mreg_db_pool_size_connections" in families and "mreg_blob_received_bytes" in families


def test_each_endpoint_shows_its_process_cpu_and_memory(observed: Observed) -> None:
    """What the benchmarks report of a service (CPU seconds per GB moved, resident memory under many streams),
    an operator reads off its endpoint: the standard process series, which do not depend on a service."""
    for samples in observed.scrape():
        assert value(samples, "process_cpu_seconds_total") > 0
        assert value(samples, "process_resident_memory_bytes") > 10 << 20
        assert value(samples, "process_open_fds") > 0
        assert value(samples, "process_max_fds") > 0


def test_one_endpoint_of_two_services_shows_its_process_once(observed: Observed) -> None:
    """``mreg serve`` runs both services in one process behind one endpoint: one set of process series."""
    endpoint = serve_metrics(
        "127.0.0.1:0", MergedRegistries(observed.metadata.metrics.registry, observed.blob.metrics.registry)
    )
    try:
        text = metrics_text(endpoint)
    finally:
        endpoint.stop()
    # Read as families, not through scrape(): a series shown twice would be one key there.
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert len(families["process_cpu_seconds"].samples) == 1
    assert len(families["process_resident_memory_bytes"].samples) == 1
    assert {sample.labels["server"] for sample in families["mreg_rpc_handled"].samples} == {"metadata", "blob"}


def test_a_failed_call_logs_its_principal_and_never_a_token(secured: Any, rpc_lines: list[dict[str, Any]]) -> None:
    def refusal_as(token: str) -> grpc.StatusCode:
        request = pb.GetVersionRequest(name="acme/secure/never-pushed:v0")
        with secured.channel(secured.metadata.address, token) as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.MetadataServiceStub(channel).GetVersion(request, timeout=10)
        return refused.value.code()

    reader = secured.create_token("metrics-reader", "reader", "acme/secure")
    assert refusal_as(reader) == grpc.StatusCode.NOT_FOUND
    bogus = "mreg_" + "x" * 43
    assert refusal_as(bogus) == grpc.StatusCode.UNAUTHENTICATED
    outsider = secured.create_token("metrics-outsider", "reader", "other-entity")
    assert refusal_as(outsider) == grpc.StatusCode.PERMISSION_DENIED

    found, refused_line, denied_line = [line for line in rpc_lines if line["method"] == "GetVersion"]
    assert found["code"] == "NOT_FOUND"
    assert found["principal"].startswith("metrics-reader-")
    assert refused_line["code"] == "UNAUTHENTICATED"
    assert refused_line["reason"]
    assert refused_line["principal"] is None
    # Identified, then refused: the log says who was refused.
    assert denied_line["code"] == "PERMISSION_DENIED"
    assert denied_line["principal"].startswith("metrics-outsider-")
    for line in (found, refused_line, denied_line):
        text = json.dumps(line)
        assert reader not in text and bogus not in text and outsider not in text


def test_commits_run_together_are_counted_by_group_and_by_commit(observed: Observed) -> None:
    before, _ = observed.scrape()
    name = f"grouped-{uuid.uuid4().hex[:8]}"
    with observed.wire() as wire:
        (content,) = upload(wire, b"grouped commits " + name.encode())

        def commit(i: int) -> int:
            request = pb.CommitVersionRequest(
                new_version=pb.CommitVersionRequest.NewVersion(parent=name, type="model"),
                manifest=[pb.ManifestEntry(path=f"step-{i}", digest=content)],
            )
            return wire.call(wire.metadata.CommitVersion, request).version.index

        with ThreadPoolExecutor(16) as pool:
            indexes = list(pool.map(commit, range(320)))
    after, _ = observed.scrape()

    assert sorted(indexes) == list(range(320))
    groups = value(after, "mreg_commit_groups_total") - value(before, "mreg_commit_groups_total")
    grouped = value(after, "mreg_commits_in_groups_total") - value(before, "mreg_commits_in_groups_total")
    # Sixteen clients on one artifact: commits queue behind one another, and those that queued run together.
    assert groups >= 1
    assert 2 * groups <= grouped <= 320


def test_only_streaming_methods_have_an_open_streams_gauge(observed: Observed) -> None:
    with observed.wire() as wire:
        with pytest.raises(MregError):
            wire.call(wire.metadata.GetVersion, pb.GetVersionRequest(name="acme/metrics/no-such-model:v0"))
        (content,) = upload(wire, b"open streams gauge")
        list(wire.blobs.Read(blob_pb.ReadRequest(digest=content)))
    metadata, blob = observed.scrape()

    def gauges(samples: Samples) -> set[str]:
        return {dict(labels)["method"] for name, labels in samples if name == "mreg_rpc_open_streams"}

    assert "GetVersion" not in gauges(metadata)
    assert {"BatchUpdateBlobs", "FindMissingBlobs"}.isdisjoint(gauges(blob))
    assert "Read" in gauges(blob)
