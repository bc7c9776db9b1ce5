"""Benchmarks: `make bench` (python -m tests.bench). Prints progress, then one JSON line last.

Every figure comes with a baseline measured in the same run on the same machine, and a
ratio to it, because absolute numbers on a shared machine mean little.

metadata: commits/s with 1 and 16 concurrent clients on one artifact (CreateVersion then
CommitVersion, and the same in one CommitVersion with new_version), and reference
resolutions/s with p50/p99 latency (also while another client commits 10 versions/s, to another
artifact and then to the resolved one, whose answers each commit makes the service read again), on
SQLite and PostgreSQL; the
baseline is a gRPC health check round trip to the same server (the cost of the transport alone).

metadata_auth: the same resolve and commit figures on SQLite with authentication on (a
writer token on every call), beside the same run's figures with it off.

replicas: commits/s from 16 clients on one artifact through 1 and through 3 metadata
replicas sharing one PostgreSQL database (clients spread over the replicas by the
client's round_robin); the baseline is the single replica.

availability: p50/p99 of unary calls (resolve, FindMissingBlobs, both health checks)
with no streams open, then with 500 idle Watch streams and 100 stalled uploads open;
the baseline is the first measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.client import Credentials, Registry
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import digest_of
from tests.processes import ServiceProcess, free_port

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_calls(call: Callable[[int], Any], total: int, concurrency: int) -> tuple[float, list[float]]:
    """Runs ``call(i)`` ``total`` times over ``concurrency`` threads; returns (calls/s, latencies in s)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        call(i)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)

    began = time.perf_counter()
    if concurrency == 1:
        # One sequential client calls from its own thread. A pool of one would leave this thread waiting on
        # each result, and its wake-ups contend for the GIL with the caller: 20-30% fewer calls/s measured.
        for i in range(total):
            one(i)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(total)))
    return total / (time.perf_counter() - began), latencies


def bench_metadata_on(database_url: str, blob_address: str, label: str, commits: int) -> dict[str, Any]:
    service = ServiceProcess(
        "mreg.metadata_service", ["--database-url", database_url, "--blob-addr", blob_address]
    ).start()
    try:
        return measure_metadata(service.address, blob_address, label, commits)
    finally:
        service.stop()


def measure_metadata(
    metadata_address: str,
    blob_address: str,
    label: str,
    commits: int,
    *,
    credentials: Credentials | None = None,
    clients: tuple[int, ...] = (1, 16),
) -> dict[str, Any]:
    """Commits/s and resolves/s through a running metadata service, and bare gRPC round trips to it.

    Resolves and the baseline run from one sequential client, as the goals are stated.
    """
    registry = Registry.connect(
        metadata_address, blob_address, entity="bench", project="metadata", parallel=4, credentials=credentials
    )
    content = b"bench blob"
    digest = digest_of(content)
    registry.blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)])
    )

    def commit_to(artifact: str) -> Callable[[int], Any]:
        def commit(i: int) -> None:
            create = pb.CreateVersionRequest(parent=artifact, type="model")
            create.metadata.update({"step": i})
            pending = registry._call(registry.metadata.CreateVersion, create).version
            # A distinct path per commit makes every manifest new.
            manifest = [pb.ManifestEntry(path=f"step-{i}/weights.bin", digest=digest)]
            registry._call(registry.metadata.CommitVersion, pb.CommitVersionRequest(uid=pending.uid, manifest=manifest))

        return commit

    def commit_in_one_call_to(artifact: str) -> Callable[[int], Any]:
        """The same version created and committed by one CommitVersion (new_version), as a push whose
        content is all stored already does."""

        def commit(i: int) -> None:
            request = pb.CommitVersionRequest(
                new_version=pb.CommitVersionRequest.NewVersion(parent=artifact, type="model"),
                manifest=[pb.ManifestEntry(path=f"step-{i}/weights.bin", digest=digest)],
            )
            request.new_version.metadata.update({"step": i})
            registry._call(registry.metadata.CommitVersion, request)

        return commit

    results: dict[str, Any] = {}
    artifact = ""
    for count in clients:
        for way, committer in (("", commit_to), ("one_call_", commit_in_one_call_to)):
            artifact = f"{label.split(',')[0]}-{way}{count}-{uuid.uuid4().hex[:6]}"
            rate, latencies = timed_calls(committer(artifact), commits, count)
            last = registry.resolve(artifact).version.index
            assert last == commits - 1, f"expected v{commits - 1}, got v{last}"
            results[f"{way}commits_per_s_{count}_clients"] = round(rate, 1)
            results[f"{way}commit_p50_ms_{count}_clients"] = round(1000 * statistics.median(latencies), 2)
            log(f"  {label}: {rate:.0f} commits/s with {count} clients{' in one call' if way else ''}")
        results[f"one_call_to_two_calls_commit_ratio_{count}_clients"] = round(
            results[f"one_call_commits_per_s_{count}_clients"] / results[f"commits_per_s_{count}_clients"], 3
        )

    references = [f"{artifact}:v{i % commits}" for i in range(50)] + [artifact]
    timed_calls(lambda i: registry.resolve(references[i % len(references)]), 200, 1)  # warm up
    rate, latencies = timed_calls(lambda i: registry.resolve(references[i % len(references)]), 2000, 1)
    results["resolves_per_s"] = round(rate, 1)
    results["resolve_p50_ms"] = round(1000 * percentile(latencies, 0.5), 2)
    results["resolve_p99_ms"] = round(1000 * percentile(latencies, 0.99), 2)
    # The same resolves from a bare stub, as a caller in another language makes them (no client library).
    full = [f"bench/metadata/{r}" for r in references]
    bare_resolve = registry.metadata.ResolveReference
    bare_rate, bare_latencies = timed_calls(
        lambda i: bare_resolve(pb.ResolveReferenceRequest(name=full[i % len(full)])),
        2000,
        1,
    )
    results["bare_stub_resolves_per_s"] = round(bare_rate, 1)
    results["bare_stub_resolve_p99_ms"] = round(1000 * percentile(bare_latencies, 0.99), 2)
    # The same resolves while another client commits 10 versions/s: to another artifact, which leaves
    # the service's kept answers standing; then to the resolved artifact itself, where each commit moves
    # `latest` and its answers are read from the database again.
    for suffix, target in (("", f"{artifact}-writes"), ("_to_the_same_artifact", artifact)):
        writing = threading.Event()
        written = commit_while(commit_to(target), writing, per_second=10)
        rate_now, latencies_now = timed_calls(lambda i: registry.resolve(references[i % len(references)]), 1000, 1)
        writing.set()
        results[f"resolves_per_s_with_10_commits_per_s{suffix}"] = round(rate_now, 1)
        results[f"resolve_p99_ms_with_10_commits_per_s{suffix}"] = round(1000 * percentile(latencies_now, 0.99), 2)
        results[f"commits_during_resolves{suffix}"] = written.result()
    written_rate = results["resolves_per_s_with_10_commits_per_s"]
    same_artifact_rate = results["resolves_per_s_with_10_commits_per_s_to_the_same_artifact"]

    # Promotion: one client moving an alias back and forth between two versions.
    def move_alias(i: int) -> None:
        registry.set_alias(f"{artifact}:v{i % 2}", "candidate")

    alias_rate, alias_latencies = timed_calls(move_alias, min(commits, 400), 1)
    results["set_alias_per_s"] = round(alias_rate, 1)
    results["set_alias_p50_ms"] = round(1000 * statistics.median(alias_latencies), 2)

    with grpc.insecure_channel(metadata_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        timed_calls(lambda i: health.Check(health_pb2.HealthCheckRequest()), 200, 1)
        baseline, _ = timed_calls(lambda i: health.Check(health_pb2.HealthCheckRequest()), 2000, 1)
    results["baseline_grpc_roundtrips_per_s"] = round(baseline, 1)
    results["resolve_to_roundtrip_ratio"] = round(rate / baseline, 3)
    results["resolve_with_10_commits_per_s_to_roundtrip_ratio"] = round(written_rate / baseline, 3)
    results["resolve_with_10_commits_per_s_to_the_same_artifact_to_roundtrip_ratio"] = round(
        same_artifact_rate / baseline, 3
    )
    results["bare_stub_resolve_to_roundtrip_ratio"] = round(bare_rate / baseline, 3)
    log(
        f"  {label}: {results['resolves_per_s']:.0f} resolves/s (p99 {results['resolve_p99_ms']} ms), "
        f"{bare_rate:.0f}/s from a bare stub, {written_rate:.0f}/s while another client commits 10/s elsewhere "
        f"and {same_artifact_rate:.0f}/s to the same artifact; "
        f"bare gRPC {baseline:.0f}/s; {alias_rate:.0f} alias moves/s"
    )
    registry.close()
    return results


def commit_while(commit: Callable[[int], Any], stop: threading.Event, per_second: float) -> Future[int]:
    """Calls ``commit`` ``per_second`` times a second on a thread of its own until ``stop``; the future counts them."""

    def steadily() -> int:
        count = 0
        while not stop.wait(1 / per_second):
            commit(count)
            count += 1
        return count

    pool = ThreadPoolExecutor(1)
    committed = pool.submit(steadily)
    pool.shutdown(wait=False)
    return committed


def bench_metadata(work: Path, commits: int) -> dict[str, Any]:
    import psycopg

    blobs = ServiceProcess("mreg.blob_service", ["--store", str(work / "blobs")]).start()
    database = f"mreg_bench_{uuid.uuid4().hex[:8]}"
    try:
        out = {"sqlite": bench_metadata_on(f"sqlite:///{work / 'bench.db'}", blobs.address, "sqlite", commits)}
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        try:
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            out["postgresql"] = bench_metadata_on(url, blobs.address, "postgresql", commits)
        finally:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        return out
    finally:
        blobs.stop()


def writer_token(metadata_address: str, admin_token_file: Path) -> str:
    """A writer token on the bench entity, made with the admin token the service wrote."""
    admin = Credentials(token=admin_token_file.read_text().strip())
    with Registry.connect(metadata_address, "127.0.0.1:1", credentials=admin, use_cache=False) as registry:
        return registry.create_token(f"bench-{uuid.uuid4().hex[:6]}", "writer", "bench").secret


def bench_metadata_auth(work: Path, commits: int) -> dict[str, Any]:
    """Resolve and commit figures on SQLite with authentication on (a writer token), then off, in the same run."""
    secrets = work / "auth"
    secrets.mkdir()
    service_token, admin_token = secrets / "service.token", secrets / "admin.token"
    blobs_port = free_port()
    # The metadata service writes the shared service secret; the blob service checks tokens through it.
    metadata = ServiceProcess(
        "mreg.metadata_service",
        [
            *("--database-url", f"sqlite:///{work / 'auth-on.db'}", "--blob-addr", f"127.0.0.1:{blobs_port}"),
            *("--auth", "--service-token-file", str(service_token), "--admin-token-file", str(admin_token)),
        ],
    ).start()
    blobs = ServiceProcess(
        "mreg.blob_service",
        [
            *("--store", str(work / "auth-blobs"), "--auth", "--service-token-file", str(service_token)),
            *("--metadata-addr", metadata.address),
        ],
        port=blobs_port,
    ).start()
    try:
        credentials = Credentials(token=writer_token(metadata.address, admin_token))
        on = measure_metadata(
            metadata.address, blobs.address, "sqlite, auth on", commits, credentials=credentials, clients=(1,)
        )
    finally:
        metadata.stop()
        blobs.stop()
    plain_blobs = ServiceProcess("mreg.blob_service", ["--store", str(work / "noauth-blobs")]).start()
    plain = ServiceProcess(
        "mreg.metadata_service",
        ["--database-url", f"sqlite:///{work / 'auth-off.db'}", "--blob-addr", plain_blobs.address],
    ).start()
    try:
        off = measure_metadata(plain.address, plain_blobs.address, "sqlite, auth off", commits, clients=(1,))
    finally:
        plain.stop()
        plain_blobs.stop()
    return {
        "auth_off": off,
        "auth_on": on,
        "resolve_auth_to_no_auth_ratio": round(on["resolves_per_s"] / off["resolves_per_s"], 3),
        "commit_auth_to_no_auth_ratio": round(on["commits_per_s_1_clients"] / off["commits_per_s_1_clients"], 3),
    }


def bench_replicas(work: Path, commits: int) -> dict[str, Any]:
    """Commits/s from 16 clients on one artifact through 1 and 3 metadata replicas on one PostgreSQL database."""
    import psycopg

    blobs = ServiceProcess("mreg.blob_service", ["--store", str(work / "replica-blobs")]).start()
    database = f"mreg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    replicas = [ServiceProcess("mreg.metadata_service", ["--database-url", url, "--blob-addr", blobs.address])]
    results: dict[str, Any] = {}
    content = b"replica bench blob"
    digest = digest_of(content)
    try:
        replicas[0].start()
        for count in (1, 3):
            while len(replicas) < count:
                replicas.append(
                    ServiceProcess("mreg.metadata_service", ["--database-url", url, "--blob-addr", blobs.address])
                )
                replicas[-1].start()
            addresses = ",".join(r.address for r in replicas)
            with Registry.connect(addresses, blobs.address, entity="bench", project="replicas") as registry:
                registry.blobs.BatchUpdateBlobs(
                    blob_pb.BatchUpdateBlobsRequest(
                        requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)]
                    )
                )
                artifact = f"replicas-{count}-{uuid.uuid4().hex[:6]}"

                def commit(i: int, registry: Registry = registry, artifact: str = artifact) -> None:
                    pending = registry._call(
                        registry.metadata.CreateVersion, pb.CreateVersionRequest(parent=artifact, type="model")
                    ).version
                    manifest = [pb.ManifestEntry(path=f"step-{i}/weights.bin", digest=digest)]
                    registry._call(
                        registry.metadata.CommitVersion, pb.CommitVersionRequest(uid=pending.uid, manifest=manifest)
                    )

                rate, latencies = timed_calls(commit, commits, 16)
                indexes = sorted(v.index or 0 for v in registry.list_versions(artifact))
                assert indexes == list(range(commits)), "versions are not contiguous"
            results[f"commits_per_s_{count}_replicas"] = round(rate, 1)
            results[f"commit_p50_ms_{count}_replicas"] = round(1000 * statistics.median(latencies), 2)
            log(f"  {count} metadata replicas on one PostgreSQL: {rate:.0f} commits/s from 16 clients")
        results["three_to_one_replica_ratio"] = round(
            results["commits_per_s_3_replicas"] / results["commits_per_s_1_replicas"], 3
        )
        return results
    finally:
        for replica in replicas:
            replica.stop()
        blobs.stop()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def bench_availability(work: Path, calls: int = 2000) -> dict[str, Any]:
    """Unary latency with no streams open, then with 500 idle Watch streams and 100 stalled uploads.

    The servers run as their own processes with default limits; the streams are held by
    this process, as slow or idle clients would hold them.
    """
    from tests.streams import open_stalled_writes, open_streams, open_watch_streams

    blobs = ServiceProcess("mreg.blob_service", ["--store", str(work / "availability-blobs")]).start()
    metadata = ServiceProcess(
        "mreg.metadata_service",
        ["--database-url", f"sqlite:///{work / 'availability.db'}", "--blob-addr", blobs.address],
    ).start()
    try:
        model = work / "availability-model"
        model.mkdir()
        (model / "weights.bin").write_bytes(b"weights")
        registry = Registry.connect(metadata.address, blobs.address, entity="bench", project="availability")
        registry.push(model, "model")
        absent = [digest_of(f"absent {i}".encode()) for i in range(4)]
        meta_channel = grpc.insecure_channel(metadata.address)
        blob_channel = grpc.insecure_channel(blobs.address)
        meta_health = health_pb2_grpc.HealthStub(meta_channel)
        blob_health = health_pb2_grpc.HealthStub(blob_channel)

        def unary(i: int) -> None:
            # A mix of what pushes and pulls ask: resolve, find missing, and both health checks.
            kind = i % 4
            if kind == 0:
                registry.resolve("model")
            elif kind == 1:
                registry.blobs.FindMissingBlobs(blob_pb.FindMissingBlobsRequest(blob_digests=absent), timeout=30)
            elif kind == 2:
                meta_health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            else:
                blob_health.Check(health_pb2.HealthCheckRequest(), timeout=30)

        def measure(label: str) -> dict[str, float]:
            rate, latencies = timed_calls(unary, calls, 8)
            figures = {
                "unary_per_s": round(rate, 1),
                "unary_p50_ms": round(1000 * percentile(latencies, 0.5), 2),
                "unary_p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            }
            log(f"  {label}: {figures['unary_per_s']:.0f} unary calls/s, p99 {figures['unary_p99_ms']} ms")
            return figures

        timed_calls(unary, 200, 8)  # warm up connections and caches before the baseline
        results: dict[str, Any] = {"baseline_no_streams": measure("no streams open")}
        with open_streams() as streams:
            watches = open_watch_streams(streams, metadata.address, 500)
            open_stalled_writes(streams, blobs.address, 100)
            results["watch_streams_open"] = sum(1 for w in watches if w is None)
            results["stalled_uploads_open"] = 100
            results["under_500_watches_100_stalled_uploads"] = measure("500 idle Watch streams + 100 stalled uploads")
            # open_watch_streams opened its streams first, before the stalled uploads.
            results["under_500_active_watches"] = measure_with_active_watches(
                streams.calls[: len(watches)], registry, model, measure, commits_per_s=10
            )
        results["p99_ratio_to_baseline"] = round(
            results["under_500_watches_100_stalled_uploads"]["unary_p99_ms"]
            / max(results["baseline_no_streams"]["unary_p99_ms"], 0.001),
            2,
        )
        registry.close()
        meta_channel.close()
        blob_channel.close()
        return results
    finally:
        metadata.stop()
        blobs.stop()


def measure_with_active_watches(
    watches: list[Any],
    registry: Registry,
    model: Path,
    measure: Callable[[str], dict[str, float]],
    commits_per_s: float,
) -> dict[str, Any]:
    """Unary latency while every open Watch stream receives events: a writer commits ``commits_per_s``
    versions a second and a thread per stream reads what it is sent."""
    delivered = [0] * len(watches)
    stop = threading.Event()

    def drain(i: int) -> None:
        try:
            for _ in watches[i]:
                delivered[i] += 1
        except grpc.RpcError:
            pass  # cancelled at the end

    def push_step(step: int) -> None:
        (model / "step.txt").write_text(str(step))
        registry.push(model, "active")

    drainers = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(len(watches))]
    for thread in drainers:
        thread.start()
    committed = commit_while(push_step, stop, commits_per_s)
    figures: dict[str, Any] = dict(measure(f"{len(watches)} Watch streams receiving {commits_per_s:.0f} commits/s"))
    stop.set()
    figures["commits_during_measurement"] = committed.result()
    figures["events_delivered"] = sum(delivered)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        choices=["metadata", "metadata_auth", "replicas", "transfer", "availability"],
        help="run one section",
    )
    parser.add_argument("--commits", type=int, default=400, help="commits per metadata measurement")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mreg-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "metadata"):
            log("metadata benchmark")
            results["metadata"] = bench_metadata(work, args.commits)
        if args.only in (None, "metadata_auth"):
            log("metadata benchmark with authentication on and off")
            results["metadata_auth"] = bench_metadata_auth(work, args.commits)
        if args.only in (None, "replicas"):
            log("metadata replicas benchmark")
            results["replicas"] = bench_replicas(work, args.commits)
        if args.only in (None, "transfer"):
            from tests.bench_transfer import bench_transfer

            log("transfer benchmark")
            results["transfer"] = bench_transfer(work)
        if args.only in (None, "availability"):
            log("availability benchmark")
            results["availability"] = bench_availability(work)
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
