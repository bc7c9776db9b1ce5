"""Benchmarks: `make bench` (python -m tests.bench). Prints progress, then one JSON line last.

Every figure comes with a baseline measured in the same run on the same machine, and a
ratio to it, because absolute numbers on a shared machine mean little.

metadata: commits/s with 1 and 16 concurrent clients on one artifact, and reference
resolutions/s with p50/p99 latency, on SQLite and PostgreSQL; the baseline is a gRPC
health check round trip to the same server (the cost of the transport alone).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.metadata.v1 import metadata_service_pb2 as pb

from mreg.client import Registry
from tests.helpers import digest_of
from tests.processes import ServiceProcess

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
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - began), latencies


def bench_metadata_on(database_url: str, blob_address: str, label: str, commits: int) -> dict[str, Any]:
    service = ServiceProcess("mreg.metadata_service", ["--database-url", database_url, "--blob-addr", blob_address]).start()
    try:
        registry = Registry.connect(service.address, blob_address, entity="bench", project="metadata", parallel=4)
        content = b"bench blob"
        digest = digest_of(content)
        registry.blobs.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)]
            )
        )

        def commit_to(artifact: str) -> Callable[[int], Any]:
            def commit(i: int) -> None:
                create = pb.CreateVersionRequest(artifact=artifact, type="model")
                create.metadata.update({"step": i})
                pending = registry._call(registry.metadata.CreateVersion, create).version
                # A distinct path per commit makes every manifest new.
                manifest = [pb.ManifestEntry(path=f"step-{i}/weights.bin", digest=digest)]
                registry._call(
                    registry.metadata.CommitVersion, pb.CommitVersionRequest(uid=pending.uid, manifest=manifest)
                )

            return commit

        results: dict[str, Any] = {}
        for clients in (1, 16):
            artifact = f"{label}-{clients}-{uuid.uuid4().hex[:6]}"
            rate, latencies = timed_calls(commit_to(artifact), commits, clients)
            last = registry.resolve(artifact).version.index
            assert last == commits - 1, f"expected v{commits - 1}, got v{last}"
            results[f"commits_per_s_{clients}_clients"] = round(rate, 1)
            results[f"commit_p50_ms_{clients}_clients"] = round(1000 * statistics.median(latencies), 2)
            log(f"  {label}: {rate:.0f} commits/s with {clients} clients")

        references = [f"{artifact}:v{i % commits}" for i in range(50)] + [artifact]
        rate, latencies = timed_calls(lambda i: registry.resolve(references[i % len(references)]), 2000, 8)
        results["resolves_per_s"] = round(rate, 1)
        results["resolve_p50_ms"] = round(1000 * percentile(latencies, 0.5), 2)
        results["resolve_p99_ms"] = round(1000 * percentile(latencies, 0.99), 2)

        with grpc.insecure_channel(service.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            baseline, _ = timed_calls(lambda i: health.Check(health_pb2.HealthCheckRequest()), 2000, 8)
        results["baseline_grpc_roundtrips_per_s"] = round(baseline, 1)
        results["resolve_to_roundtrip_ratio"] = round(rate / baseline, 3)
        log(
            f"  {label}: {results['resolves_per_s']:.0f} resolves/s (p99 {results['resolve_p99_ms']} ms); "
            f"bare gRPC {baseline:.0f}/s"
        )
        registry.close()
        return results
    finally:
        service.stop()


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


def bench_availability(work: Path, calls: int = 2000) -> dict[str, Any]:
    """Unary latency with no streams open, then with 500 idle Watch streams and 100 stalled uploads.

    The servers run as their own processes with default limits; the streams are held by
    this process, as slow or idle clients would hold them.
    """
    from tests.streams import open_stalled_writes, open_streams, open_watch_streams

    blobs = ServiceProcess("mreg.blob_service", ["--store", str(work / "availability-blobs")]).start()
    metadata = ServiceProcess("mreg.metadata_service", ["--database-url", f"sqlite:///{work / 'availability.db'}", "--blob-addr", blobs.address]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["metadata", "transfer", "availability"], help="run one section")
    parser.add_argument("--commits", type=int, default=400, help="commits per metadata measurement")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mreg-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "metadata"):
            log("metadata benchmark")
            results["metadata"] = bench_metadata(work, args.commits)
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
