"""Transfer benchmark (part of `make bench`), on local disk and on S3 (rclone serve s3).

Measured in one run on the same generated data:
  (a) push and pull of a 1 GiB checkpoint (2 large files + 200 small ones), MB/s, against
      two baselines: a raw gRPC stream of the same bytes into a file with sha256 and fsync
      (and back out), and `cp -r` + sync;
  (b) push and pull of many files of 4-64 KiB, files/s;
  (c) re-push of the unchanged checkpoint: seconds and bytes sent;
  (d) push of a copy with every tenth file changed: bytes sent against bytes changed;
  (e) push and pull of one 512 MiB file (as torch.save writes a checkpoint);
      on disk, (a) and (e) run three rounds, each beside a raw round of its own and with content new to the
      store, and each figure is the median of its rounds (each ratio, of the ratios within each round);
  (f) many jobs at once: 1, 8, 16 and 32 clients (processes, each its own connection) each
      pushing its own 128 MiB checkpoint at the same moment, aggregate MB/s against one
      client alone and against one client pushing the 32 jobs' bytes alone, with the CPU
      seconds per GB of the blob service and of the clients (disk only).
Pulls are also compared with the transport alone: the raw stream of the same bytes from
the server's page cache, discarded on arrival; and with SHA-256 on every core, the most a
pull that verifies every byte could reach; and with writing the same number of bytes into a
file on one thread (no fsync), which every pull must also do; and with the ceiling those three make
together: the MB/s every core could reach doing nothing but the transport's measured CPU per byte, one hash
and one file write of each byte (``pull_ceiling``). Small-file pushes are also compared with the
same files written durably (hash, temporary file, fsync, rename, directory fsync) by 16
threads: what the blob service must do for each blob it accepts.
On S3, transfers are also compared with what the S3 server takes and gives straight from its SDK, in the same
run: the checkpoint's files put as multipart uploads (8 files at once, as the client's 8 streams, each the
SDK's default of 3 parts in flight) and got back, and the small files put and got one request each by 16
threads (as the blob service's I/O pool). The S3 server runs on this machine's cores, so the SDK's put and
every push also report the CPU seconds per GB each process spent (the S3 server, the blob service, the metadata
service and the client) and the cores they kept busy together; while both keep every core busy,
``a_push_vs_s3_put_if_cpu_bound`` is the most a push can reach against that put, however well it overlaps its
work. The raw push and every disk push report the same CPU figures.
Every timed transfer and baseline starts right after writing and deleting a scratch file as large as what it
writes (``warm_memory``): on this virtual machine, memory the kernel left free for a few seconds costs a fault
per page when written again, which alone halved a pull depending on how long the run had paused before it.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from mreg.client import Registry
from mreg.client.registry import PushResult
from tests.processes import ServiceProcess, free_port, wait_serving
from tests.s3_server import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server

MB = 1e6
CHUNK = 1 << 20
ONE_FILE_BYTES = 512 << 20
JOB_CHECKPOINT_BYTES = 128 << 20
WARM_BLOCK = 4 << 20
# How long memory the guest freed stays its own before the balloon driver hands it back (see warm_memory).
IDLE_SECONDS = 8
# Rounds of (a) and (e) on disk, each beside a raw round of its own: the machine's speed drifts within a run (the
# raw pull was seen at 471 and at 993 MB/s in two runs an hour apart), so a figure is its rounds' median.
ROUNDS = 3
# The cores the baselines' all-core figures and the pull ceiling count on.
CORES = os.cpu_count() or 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_checkpoint(root: Path, total: int = 1 << 30, small_files: int = 200) -> None:
    rng = random.Random(7)
    root.mkdir(parents=True)
    small_total = 0
    for i in range(small_files):
        size = rng.randint(16 << 10, 256 << 10)
        (root / "shards").mkdir(exist_ok=True)
        (root / "shards" / f"shard-{i:03d}.bin").write_bytes(os.urandom(size))
        small_total += size
    large = (total - small_total) // 2
    for name in ("model-00001.safetensors", "model-00002.safetensors"):
        with open(root / name, "wb") as f:
            for _ in range(large // CHUNK):
                f.write(os.urandom(CHUNK))
            f.write(os.urandom(large % CHUNK))


def make_many_files(root: Path, count: int) -> None:
    rng = random.Random(11)
    for i in range(count):
        folder = root / f"part-{i // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"tensor-{i:05d}.bin").write_bytes(os.urandom(rng.randint(4 << 10, 64 << 10)))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def warm_memory(work: Path, nbytes: int) -> None:
    """Writes ``nbytes`` into a scratch file and deletes it, so the measurement that follows at once writes into
    pages the guest kernel has just freed.

    This machine is a KVM guest whose balloon driver reports memory the kernel has kept free for a few seconds
    back to the host; the next write into such memory costs the guest a fault per page. Writing 1 GiB into a new
    file took 3.0-3.6 s of kernel time after 6-10 s idle, against 0.22 s straight after another 1 GiB was freed,
    and a pull of the 1 GiB checkpoint ran at 170-215 MB/s against 460-490 MB/s. Which one a figure got depended
    on how long the benchmark had paused before it. A node whose memory is its own does not pay this, so every
    timed transfer and baseline starts warm; ``file_write_MBps_after_idle`` shows the cost when it does not.
    """
    scratch = work / "warm-memory.bin"
    block = bytes(WARM_BLOCK)
    with open(scratch, "wb", buffering=0) as f:
        for _ in range(-(-nbytes // WARM_BLOCK)):
            f.write(block)
    scratch.unlink()


def warm_for(work: Path, transferred: int) -> None:
    """Warms enough memory for a transfer of ``transferred`` bytes: its files, and the client's and service's
    buffers and cache copies."""
    warm_memory(work, transferred + transferred // 4 + (256 << 20))


def drop_page_cache_hint(root: Path) -> None:
    # Without root-only knobs, at least make every file's pages clean and equal for all runs.
    subprocess.run(["sync"], check=True)


# Raw gRPC baseline -------------------------------------------------------------------------


def raw_server(port: int, directory: str) -> None:
    """A bare gRPC server: Put streams bytes into a file with sha256 and fsync; Get streams a file back."""

    def put(request_iterator, context):  # type: ignore[no-untyped-def]
        hasher = hashlib.sha256()
        path = Path(directory) / uuid.uuid4().hex
        with open(path, "wb") as f:
            for chunk in request_iterator:
                hasher.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return hasher.hexdigest().encode() + b" " + path.name.encode()

    def get(request, context):  # type: ignore[no-untyped-def]
        with open(Path(directory) / request.decode(), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    identity = {"request_deserializer": None, "response_serializer": None}
    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Put": grpc.stream_unary_rpc_method_handler(put, **identity),
            "Get": grpc.unary_stream_rpc_method_handler(get, **identity),
        },
    )
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(4), options=options)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    from grpc_health.v1 import health, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.start()
    server.wait_for_termination()


class RawServer:
    """The bare gRPC server of the raw baselines (``raw_server``), in a process of its own, kept running so
    that its rounds can alternate with the registry's."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.directory = work / "raw"
        port = free_port()
        self.directory.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench_transfer", "--raw-server", str(port), str(self.directory)]
        )
        try:
            wait_serving(f"127.0.0.1:{port}")
        except BaseException:
            self.close()
            raise
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()
        self.close()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def measure(self, source: Path) -> dict[str, float]:
        """Streams every byte of ``source`` through one bare gRPC stream into a file with sha256 and fsync, back
        into a file the same way, and back once more to be discarded (the transport alone); with the CPU both
        ends spent per GB on the push and on the transport."""
        files = sorted(p for p in source.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        put = self.channel.stream_unary("/bench.Raw/Put")
        get = self.channel.unary_stream("/bench.Raw/Get")

        def chunks():  # type: ignore[no-untyped-def]
            for path in files:
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        yield chunk

        pulled = self.work / "raw-back.bin"
        cpu = CpuMeter({"raw_server": self.process.pid}, own="client")
        warm_for(self.work, total)
        cpu.start()
        started = time.perf_counter()
        stored = put(chunks()).split(b" ")[1]
        push_s = time.perf_counter() - started
        push_cpu = cpu.figures(total, push_s, "push_")
        try:
            warm_for(self.work, total)
            started = time.perf_counter()
            hasher = hashlib.sha256()
            with open(pulled, "wb") as out:
                for chunk in get(stored):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            pull_s = time.perf_counter() - started
            # The transport alone: the same bytes streamed from the server's page cache, discarded; with the
            # CPU both ends spent on it, which every pull spends too.
            warm_for(self.work, total)
            cpu.start()
            started = time.perf_counter()
            for _ in get(stored):
                pass
            transport_s = time.perf_counter() - started
            transport_cpu = cpu.figures(total, transport_s, "pull_transport_")
        finally:
            pulled.unlink(missing_ok=True)
            (self.directory / stored.decode()).unlink(missing_ok=True)
        return {
            "push_MBps": total / MB / push_s,
            **push_cpu,
            "pull_MBps": total / MB / pull_s,
            "pull_transport_MBps": total / MB / transport_s,
            **transport_cpu,
        }


def pull_ceiling(baseline: dict[str, float]) -> float:
    """MB/s a verified pull could reach here if every core did nothing but the work every pulled byte
    needs: crossing the transport (both ends' CPU, as measured), being hashed once and written into a file
    once. Nothing else (protobuf framing, the store's read, scheduling) is counted, so no pull reaches it."""
    cpu_s_per_MB = (
        baseline["pull_transport_cpu_s_per_GB"] / 1000
        + 1 / baseline["sha256_MBps_one_core"]
        + 1 / baseline["file_write_MBps_one_thread"]
    )
    return min(baseline["pull_transport_MBps"], CORES / cpu_s_per_MB)


def sha256_baseline() -> float:
    """MB/s of SHA-256 on one core, over 256 MiB in memory: every verified pull hashes every byte once."""
    data = os.urandom(64 << 20)
    hasher = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(4):
        hasher.update(data)
    return 4 * len(data) / MB / (time.perf_counter() - started)


def file_write_baseline(work: Path, total: int = 1 << 30, *, idle_seconds: float = 0) -> float:
    """MB/s of writing ``total`` bytes from memory into a new file, 4 MiB at a time, on one thread, without
    fsync: what every pull must do with every byte it receives besides receiving and hashing it.

    Into warm memory, as every transfer here is measured (``warm_memory``), or after ``idle_seconds`` without
    writing, which on this machine is what a transfer pays for memory handed back to the host."""
    data = os.urandom(4 << 20)
    target = work / "file-write-baseline.bin"
    subprocess.run(["sync"], check=True)
    if idle_seconds:
        time.sleep(idle_seconds)
    else:
        warm_for(work, total)
    started = time.perf_counter()
    with open(target, "wb", buffering=0) as f:
        for _ in range(total // len(data)):
            f.write(data)
    elapsed = time.perf_counter() - started
    target.unlink()
    return total / MB / elapsed


def durable_writes_baseline(source: Path, work: Path, threads: int = 16) -> float:
    """Files/s of what a store must do to keep each small file it accepts: hash it, write it to a temporary
    name, fsync it, rename it into a fan-out directory and fsync that directory; 16 threads, as the blob
    service's I/O pool, over the files of ``source`` read into memory first."""
    contents = [p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()]
    root = work / "durable-writes"
    for fan in range(256):
        (root / f"{fan:02x}").mkdir(parents=True)

    def keep(data: bytes) -> None:
        name = hashlib.sha256(data).hexdigest()
        directory = root / name[:2]
        temp = directory / f".{name}.tmp"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, directory / name)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    warm_for(work, sum(len(data) for data in contents))
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(keep, contents))
    elapsed = time.perf_counter() - started
    shutil.rmtree(root)
    return len(contents) / elapsed


def cp_baseline(source: Path, work: Path) -> float:
    target = work / "cp-copy"
    warm_for(work, tree_bytes(source))
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return tree_bytes(source) / MB / elapsed


def s3_baseline(s3: S3Server, checkpoint: Path, many: Path) -> dict[str, float]:
    """What the S3 server takes and gives through the minio SDK alone, on a bucket of its own (see the top),
    and the CPU its put costs the S3 server and the SDK per GB."""
    client = s3.client()
    bucket = "raw-baseline"
    client.make_bucket(bucket)
    large = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    large_bytes = sum(p.stat().st_size for p in large)
    small = [(p.name, p.read_bytes()) for p in sorted(many.rglob("*")) if p.is_file()]

    def put(path: Path) -> None:
        client.fput_object(bucket, f"large/{path.relative_to(checkpoint)}", str(path), part_size=8 << 20)

    def get(path: Path) -> None:
        response = client.get_object(bucket, f"large/{path.relative_to(checkpoint)}")
        try:
            for _ in response.stream(CHUNK):
                pass
        finally:
            response.close()
            response.release_conn()

    def put_small(item: tuple[str, bytes]) -> None:
        client.put_object(bucket, f"small/{item[0]}", io.BytesIO(item[1]), len(item[1]))

    def get_small(item: tuple[str, bytes]) -> None:
        response = client.get_object(bucket, f"small/{item[0]}")
        try:
            response.read()
        finally:
            response.close()
            response.release_conn()

    def timed(function: Any, items: list[Any], threads: int) -> float:
        started = time.perf_counter()
        with futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(function, items))
        return time.perf_counter() - started

    assert s3.process is not None
    cpu = CpuMeter({"s3_server": s3.process.pid}, own="sdk")
    cpu.start()
    put_s = timed(put, large, 8)
    return {
        "s3_put_MBps": large_bytes / MB / put_s,
        **cpu.figures(large_bytes, put_s, "s3_put_"),
        "s3_get_MBps": large_bytes / MB / timed(get, large, 8),
        "s3_small_puts_per_s": len(small) / timed(put_small, small, 16),
        "s3_small_gets_per_s": len(small) / timed(get_small, small, 16),
    }


def change_tenth_and_push(source: Path, copy: Path, client: Registry) -> tuple[int, int, int]:
    """Copies ``source``, changes one byte in every tenth file, pushes the copy; returns (sent, changed, total)."""
    shutil.copytree(source, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    changed_bytes = 0
    for path in files[::10]:
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        changed_bytes += len(data)
    with client:
        name = "checkpoint" if (source / "shards").exists() else "many-files"
        sent = client.push(copy, name).uploaded_bytes
    total = tree_bytes(copy)
    shutil.rmtree(copy)
    return sent, changed_bytes, total


# The registry ---------------------------------------------------------------------------------


def mark_round(root: Path, number: int) -> None:
    """Writes a marker naming round ``number`` over the first bytes of every file under ``root``: each round's
    content is then new to the store, at the same sizes."""
    marker = f"round-{number:03d}".encode()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "r+b") as f:
            f.write(marker)


def push_pull_figures(prefix: str, push_MBps: float, pull_MBps: float, baseline: dict[str, float]) -> dict[str, float]:
    """A push's and a pull's MB/s, and their ratios to the baselines, under names beginning with ``prefix``."""
    return {
        f"{prefix}push_MBps": push_MBps,
        f"{prefix}pull_MBps": pull_MBps,
        f"{prefix}push_vs_raw_grpc": push_MBps / baseline["push_MBps"],
        f"{prefix}pull_vs_raw_grpc": pull_MBps / baseline["pull_MBps"],
        f"{prefix}pull_vs_transport": pull_MBps / baseline["pull_transport_MBps"],
        f"{prefix}pull_vs_ceiling": pull_MBps / baseline["pull_ceiling_MBps"],
        # The ceiling of a pull that hashes every byte it receives, if hashing had every core to itself.
        f"{prefix}pull_vs_sha256_all_cores": pull_MBps / baseline["sha256_MBps_all_cores"],
        # Writing the bytes alone, on one thread: below the transport on some machines (page cache copies).
        f"{prefix}pull_vs_file_write_one_thread": pull_MBps / baseline["file_write_MBps_one_thread"],
        f"{prefix}push_vs_cp": push_MBps / baseline["cp_MBps"],
        f"{prefix}pull_vs_cp": pull_MBps / baseline["cp_MBps"],
    }


def median_of_rounds(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure's median over the rounds (a ratio's, of the ratios within each round); with several rounds
    each ratio's rounds too, which show how far the machine drifted during the run."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [figures[key] for figures in rounds]
        out[key] = rounded(key, statistics.median(values))
        if "_vs_" in key and len(rounds) > 1:
            out[f"{key}_rounds"] = [rounded(key, value) for value in values]
    return out


def bench_store(
    label: str,
    store: str,
    checkpoint: Path,
    big_file: Path,
    many: Path,
    work: Path,
    baseline: dict[str, float],
    raw: RawServer | None = None,
    store_server_pid: int | None = None,
) -> dict[str, Any]:
    """(a) to (e) on one store. With ``raw``, (a) and (e) run ``ROUNDS`` times, each round beside a raw round of
    its own, and report medians. Pushes report the CPU they cost each process per GB, the store's server's
    (``store_server_pid``) too."""
    blob = ServiceProcess("mreg.blob_service", ["--store", store]).start()
    metadata = ServiceProcess(
        "mreg.metadata_service", ["--database-url", f"sqlite:///{work / f'{label}.db'}", "--blob-addr", blob.address]
    ).start()
    assert blob.process is not None and metadata.process is not None
    processes = {"blob_service": blob.process.pid, "metadata_service": metadata.process.pid}
    if store_server_pid is not None:
        processes["s3_server"] = store_server_pid
    out: dict[str, Any] = {}
    try:

        def registry(cache: str) -> Registry:
            return Registry.connect(
                metadata.address,
                blob.address,
                entity="bench",
                project=label,
                cache_dir=work / f"{label}-{cache}",
                parallel=8,
            )

        def push_then_pull(
            source: Path, artifact: str, cache: str, prefix: str
        ) -> tuple[PushResult, float, float, dict[str, float]]:
            """Pushes ``source`` and pulls it back, each through a client with a fresh cache; returns seconds, and
            the push's CPU figures under ``prefix``."""
            size = tree_bytes(source)
            cpu = CpuMeter(processes, own="client")
            with registry(f"{cache}-push-cache") as client:
                warm_for(work, size)
                cpu.start()
                started = time.perf_counter()
                pushed = client.push(source, artifact)
                push_s = time.perf_counter() - started
                push_cpu = cpu.figures(size, push_s, prefix)
            with registry(f"{cache}-pull-cache") as client:
                warm_for(work, size)
                started = time.perf_counter()
                client.pull(artifact, work / f"{label}-{cache}-pulled")
                pull_s = time.perf_counter() - started
            shutil.rmtree(work / f"{label}-{cache}-pulled")
            return pushed, push_s, pull_s, push_cpu

        total = tree_bytes(checkpoint)
        big_total = tree_bytes(big_file)
        rounds = ROUNDS if raw is not None else 1
        figures: list[dict[str, float]] = []
        for number in range(rounds):
            # New content each round (the store would find the last round's), the same size and page-cache state.
            mark_round(checkpoint, number)
            mark_round(big_file, number)
            round_baseline = baseline
            if number and raw is not None:
                round_baseline = {**baseline, **raw.measure(checkpoint)}
                round_baseline["pull_ceiling_MBps"] = pull_ceiling(round_baseline)
            # The last round's push leaves its hash cache for the unchanged re-push of (c).
            cache = "checkpoint" if number == rounds - 1 else f"checkpoint-{number}"
            pushed, push_s, pull_s, push_cpu = push_then_pull(checkpoint, "checkpoint", cache, "a_push_")
            _, big_push_s, big_pull_s, big_push_cpu = push_then_pull(
                big_file, "one-big-file", f"big-{number}", "e_one_file_push_"
            )
            figures.append(
                push_pull_figures("a_", total / MB / push_s, total / MB / pull_s, round_baseline)
                | push_cpu
                # One big file, as torch.save writes a checkpoint.
                | push_pull_figures(
                    "e_one_file_", big_total / MB / big_push_s, big_total / MB / big_pull_s, round_baseline
                )
                | big_push_cpu
            )
            if raw is not None:
                log(
                    f"  {label}, round {number + 1} of {rounds}: raw gRPC push {round_baseline['push_MBps']:.0f} MB/s, "
                    f"pull {round_baseline['pull_MBps']:.0f}, transport {round_baseline['pull_transport_MBps']:.0f}; "
                    f"push {figures[-1]['a_push_MBps']:.0f}, pull {figures[-1]['a_pull_MBps']:.0f}; one file: push "
                    f"{figures[-1]['e_one_file_push_MBps']:.0f}, pull {figures[-1]['e_one_file_pull_MBps']:.0f}"
                )
                out.setdefault("baseline_rounds", []).append(
                    {key: round(round_baseline[key], 1) for key in ("push_MBps", "pull_MBps", "pull_transport_MBps")}
                )
        out.update(median_of_rounds(figures))
        log(
            f"  {label}: push {out['a_push_MBps']} MB/s, pull {out['a_pull_MBps']} MB/s "
            f"(uploaded {pushed.uploaded_bytes}); one {big_total >> 20} MiB file: push "
            f"{out['e_one_file_push_MBps']} MB/s, pull {out['e_one_file_pull_MBps']} MB/s"
            + (f" (medians of {rounds} rounds)" if rounds > 1 else "")
        )
        log(
            f"  {label}: the checkpoint's push costs CPU s per GB: "
            + ", ".join(f"{name} {out[f'a_push_cpu_s_per_GB_{name}']}" for name in (*processes, "client"))
            + f"; {out['a_push_cpu_s_per_GB']} in all, {out['a_push_cores_busy']} cores busy"
        )

        with registry("checkpoint-push-cache") as client:  # the hash cache is warm from the push above
            started = time.perf_counter()
            again = client.push(checkpoint, "checkpoint")
            out["c_repush_seconds"] = round(time.perf_counter() - started, 3)
            out["c_repush_bytes_sent"] = again.uploaded_bytes
            out["c_repush_seconds_per_GiB"] = round(out["c_repush_seconds"] / (total / (1 << 30)), 3)
        log(f"  {label}: unchanged re-push {out['c_repush_seconds']} s, {again.uploaded_bytes} bytes sent")

        sent, changed_bytes, _ = change_tenth_and_push(checkpoint, work / f"{label}-copy", registry("changed-cache"))
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
        out["d_files_changed"] = len(files[::10])
        out["d_files_total"] = len(files)
        out["d_bytes_sent"] = sent
        out["d_bytes_changed"] = changed_bytes
        out["d_sent_fraction_of_total"] = round(sent / total, 4)
        log(f"  {label}: 10% of files changed: sent {sent} of {total} bytes ({changed_bytes} changed)")

        count = sum(1 for p in many.rglob("*") if p.is_file())
        many_bytes = tree_bytes(many)
        with registry("many-push") as client:
            warm_for(work, many_bytes)
            started = time.perf_counter()
            client.push(many, "many-files")
            many_push_s = time.perf_counter() - started
        with registry("many-pull") as client:
            warm_for(work, 2 * many_bytes)  # each file is written twice: in place and into the content cache
            started = time.perf_counter()
            client.pull("many-files", work / f"{label}-many-pulled")
            many_pull_s = time.perf_counter() - started
            # Again into another directory: every file now comes from the content cache.
            warm_for(work, many_bytes)
            started = time.perf_counter()
            again = client.pull("many-files", work / f"{label}-many-pulled-again")
            many_repull_s = time.perf_counter() - started
        shutil.rmtree(work / f"{label}-many-pulled")
        shutil.rmtree(work / f"{label}-many-pulled-again")
        sent, changed_bytes, many_total = change_tenth_and_push(
            many, work / f"{label}-many-copy", registry("many-changed")
        )
        out["d_many_files_bytes_sent"] = sent
        out["d_many_files_bytes_changed"] = changed_bytes
        out["d_many_files_sent_fraction_of_total"] = round(sent / many_total, 4)
        out["b_files"] = count
        out["b_push_files_per_s"] = round(count / many_push_s, 1)
        out["b_pull_files_per_s"] = round(count / many_pull_s, 1)
        out["b_pull_from_cache_files_per_s"] = round(count / many_repull_s, 1)
        out["b_pull_from_cache_bytes_downloaded"] = again.downloaded_bytes
        if label == "disk":  # the baseline writes to this machine's disk, as the disk store does
            out["b_push_vs_durable_writes"] = round(
                out["b_push_files_per_s"] / baseline["durable_small_file_writes_per_s"], 3
            )
        if "s3_put_MBps" in baseline:  # against what the S3 server takes and gives through its SDK alone
            out["a_push_vs_s3_put"] = round(out["a_push_MBps"] / baseline["s3_put_MBps"], 3)
            # The S3 server shares this machine's cores: while the put and the push both keep every core busy
            # (their cores_busy), a push reaches at most the put's CPU per GB over its own, however it overlaps.
            out["a_push_vs_s3_put_if_cpu_bound"] = round(
                baseline["s3_put_cpu_s_per_GB"] / out["a_push_cpu_s_per_GB"], 3
            )
            out["a_pull_vs_s3_get"] = round(out["a_pull_MBps"] / baseline["s3_get_MBps"], 3)
            out["e_one_file_push_vs_s3_put"] = round(out["e_one_file_push_MBps"] / baseline["s3_put_MBps"], 3)
            out["b_push_vs_s3_small_puts"] = round(out["b_push_files_per_s"] / baseline["s3_small_puts_per_s"], 3)
            out["b_pull_vs_s3_small_gets"] = round(out["b_pull_files_per_s"] / baseline["s3_small_gets_per_s"], 3)
        log(
            f"  {label}: {count} small files: push {out['b_push_files_per_s']}/s, pull {out['b_pull_files_per_s']}/s, "
            f"again from the cache {out['b_pull_from_cache_files_per_s']}/s"
        )
        return out
    finally:
        metadata.stop()
        blob.stop()


def make_job_checkpoints(root: Path, jobs: int, size: int = JOB_CHECKPOINT_BYTES) -> list[Path]:
    """One checkpoint per job, 4 shards each, all of different content (nothing deduplicates).

    Each 1 MiB block is a shared random block behind a unique header, so generating 4 GiB
    for 32 jobs costs writing it, not a random number generator.
    """
    base = os.urandom(CHUNK - 64)
    shards = 4
    folders = []
    for job in range(jobs):
        folder = root / f"job-{job:02d}"
        folder.mkdir(parents=True)
        for shard in range(shards):
            with open(folder / f"shard-{shard}.safetensors", "wb") as f:
                for block in range(size // shards // CHUNK):
                    f.write(f"{root.name}/{job}/{shard}/{block}".encode().ljust(64, b"."))
                    f.write(base)
        folders.append(folder)
    return folders


def _push_job(metadata_address: str, blob_address: str, folder: str, artifact: str, ready: Any) -> tuple[float, float]:
    """One job of (f), in a process of its own: connects, waits for the others, pushes; returns the seconds the
    push took and the CPU seconds (user and system) it used."""
    with Registry.connect(
        metadata_address, blob_address, entity="bench", project="jobs", use_cache=False, parallel=4
    ) as client:
        next(client.list_projects("bench", limit=1), None)  # connected before the start line
        ready.wait()
        began, cpu_before = time.perf_counter(), _own_cpu_seconds()
        client.push(folder, artifact)
        return time.perf_counter() - began, _own_cpu_seconds() - cpu_before


def _own_cpu_seconds() -> float:
    """User and system CPU seconds this process has used."""
    times = os.times()
    return times.user + times.system


def _process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """The CPU a transfer cost: seconds per GB for each process taking part and for this one (named ``own``, if
    it takes part), and how many cores they kept busy together, which tells a CPU-bound transfer from one that
    waits."""

    def __init__(self, processes: dict[str, int], own: str | None = None) -> None:
        self.processes = processes
        self.own = own
        self.started: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: _process_cpu_seconds(pid) for name, pid in self.processes.items()}
        if self.own is not None:
            now[self.own] = _own_cpu_seconds()
        return now

    def start(self) -> None:
        self.started = self._now()

    def figures(self, transferred: int, seconds: float, prefix: str) -> dict[str, float]:
        """Since ``start``, for ``transferred`` bytes in ``seconds``: ``{prefix}cpu_s_per_GB_{name}`` for each,
        their sum as ``{prefix}cpu_s_per_GB``, and ``{prefix}cores_busy``."""
        spent = {name: cpu - self.started[name] for name, cpu in self._now().items()}
        gigabytes = transferred / 1e9
        return {f"{prefix}cpu_s_per_GB_{name}": cpu / gigabytes for name, cpu in spent.items()} | {
            f"{prefix}cpu_s_per_GB": sum(spent.values()) / gigabytes,
            f"{prefix}cores_busy": sum(spent.values()) / seconds,
        }


def rounded(key: str, value: float) -> float:
    """A figure rounded as the JSON reports it: ratios to 3 digits, CPU figures to 2, rates to 1."""
    return round(value, 3 if "_vs_" in key else 2 if "cpu_s_per_GB" in key or "cores_busy" in key else 1)


@dataclass(frozen=True)
class JobsAtOnce:
    """Jobs that pushed at once: aggregate throughput, and CPU seconds per GB written (the blob service's, and
    the jobs' own summed), which show whether a slower aggregate comes from more work per byte."""

    aggregate_MBps: float
    slowest_s: float
    service_cpu_s_per_GB: float
    clients_cpu_s_per_GB: float


def _push_at_once(
    work: Path, metadata: ServiceProcess, blob: ServiceProcess, name: str, jobs: int, job_bytes: int
) -> JobsAtOnce:
    folders = make_job_checkpoints(work / name, jobs, job_bytes)
    subprocess.run(["sync"], check=True)
    # Each job is its own process, as jobs on a cluster are: no client shares a GIL with another.
    context = multiprocessing.get_context("spawn")
    assert blob.process is not None
    with context.Manager() as manager, context.Pool(jobs) as pool:
        ready = manager.Barrier(jobs + 1)
        pending = pool.starmap_async(
            _push_job,
            [
                (metadata.address, blob.address, str(folder), f"{name}-{job}", ready)
                for job, folder in enumerate(folders)
            ],
        )
        warm_for(work, jobs * job_bytes)
        ready.wait()  # every job connected and waiting
        # The jobs measure their own CPU, each in its process: this one only waits for them.
        service = CpuMeter({"blob_service": blob.process.pid})
        service.start()
        began = time.perf_counter()
        outcomes = pending.get(timeout=1800)
        elapsed = time.perf_counter() - began
        service_cpu_s_per_GB = service.figures(jobs * job_bytes, elapsed, "")["cpu_s_per_GB"]
    shutil.rmtree(work / name)
    gigabytes = jobs * job_bytes / 1e9
    return JobsAtOnce(
        aggregate_MBps=round(jobs * job_bytes / MB / elapsed, 1),
        slowest_s=round(max(seconds for seconds, _ in outcomes), 2),
        service_cpu_s_per_GB=round(service_cpu_s_per_GB, 2),
        clients_cpu_s_per_GB=round(sum(cpu for _, cpu in outcomes) / gigabytes, 2),
    )


def bench_concurrent_pushers(
    work: Path, counts: tuple[int, ...] = (1, 8, 16, 32), raw_push_MBps: float | None = None
) -> dict[str, Any]:
    """(f): aggregate push throughput as clients grow, each job pushing its own checkpoint to its own artifact.

    Each count is compared with one job alone (the goal's divisor), and the largest count also with one job
    pushing as many bytes alone: one job's 128 MiB lands in the page cache in under a second, while 32 jobs
    write 4 GiB, past the kernel's dirty-page thresholds, where each byte written costs more. The same-bytes
    ratio is what concurrency alone costs. Each count is also compared with ``raw_push_MBps``, the raw gRPC
    upload into a file with sha256 and fsync measured in the same run."""
    blob = ServiceProcess("mreg.blob_service", ["--store", str(work / "jobs-blobs")]).start()
    metadata = ServiceProcess(
        "mreg.metadata_service", ["--database-url", f"sqlite:///{work / 'jobs.db'}", "--blob-addr", blob.address]
    ).start()
    out: dict[str, Any] = {}

    def report(prefix: str, jobs: JobsAtOnce) -> None:
        out.update({f"{prefix}_{field}": value for field, value in asdict(jobs).items()})

    try:
        for count in counts:
            jobs = _push_at_once(work, metadata, blob, f"jobs-{count}", count, JOB_CHECKPOINT_BYTES)
            report(f"f_{count}_clients", jobs)
            log(
                f"  {count} jobs pushing at once: {jobs.aggregate_MBps} MB/s aggregate; CPU s per GB: "
                f"blob service {jobs.service_cpu_s_per_GB}, clients {jobs.clients_cpu_s_per_GB}"
            )
        most = max(counts)
        alone = _push_at_once(work, metadata, blob, "one-job-same-bytes", 1, most * JOB_CHECKPOINT_BYTES)
        report("f_one_client_same_bytes", alone)
        log(
            f"  one job pushing the {most} jobs' bytes alone: {alone.aggregate_MBps} MB/s; CPU s per GB: "
            f"blob service {alone.service_cpu_s_per_GB}, client {alone.clients_cpu_s_per_GB}"
        )
        single = out[f"f_{counts[0]}_clients_aggregate_MBps"]
        for count in counts[1:]:
            out[f"f_{count}_clients_vs_one"] = round(out[f"f_{count}_clients_aggregate_MBps"] / single, 3)
        out[f"f_{most}_clients_vs_one_client_same_bytes"] = round(
            out[f"f_{most}_clients_aggregate_MBps"] / alone.aggregate_MBps, 3
        )
        if raw_push_MBps:
            for count in counts:
                out[f"f_{count}_clients_vs_raw_grpc_push"] = round(
                    out[f"f_{count}_clients_aggregate_MBps"] / raw_push_MBps, 3
                )
        return out
    finally:
        metadata.stop()
        blob.stop()


def bench_disk(
    work: Path, checkpoint: Path, big_file: Path, baseline: dict[str, float], raw: RawServer
) -> dict[str, Any]:
    """The other baselines (added to ``baseline``), then (a) to (e) on local disk."""
    baseline["cp_MBps"] = cp_baseline(checkpoint, work)
    baseline["sha256_MBps_one_core"] = sha256_baseline()
    baseline["sha256_MBps_all_cores"] = baseline["sha256_MBps_one_core"] * CORES
    baseline["file_write_MBps_one_thread"] = file_write_baseline(work)
    baseline["file_write_MBps_after_idle"] = file_write_baseline(work, idle_seconds=IDLE_SECONDS)
    baseline["durable_small_file_writes_per_s"] = durable_writes_baseline(work / "many-disk", work)
    baseline["pull_ceiling_MBps"] = pull_ceiling(baseline)
    # Below 0.6, the goal of a pull at 0.6 x the transport is beyond what this machine's cores can do.
    baseline["pull_ceiling_vs_transport"] = baseline["pull_ceiling_MBps"] / baseline["pull_transport_MBps"]
    log(
        f"  baselines: raw gRPC push {baseline['push_MBps']:.0f} MB/s ({baseline['push_cpu_s_per_GB']:.2f} CPU s "
        f"per GB, {baseline['push_cores_busy']:.2f} cores busy), pull {baseline['pull_MBps']:.0f} MB/s "
        f"(transport alone {baseline['pull_transport_MBps']:.0f} MB/s), cp -r {baseline['cp_MBps']:.0f} MB/s, "
        f"sha256 {baseline['sha256_MBps_one_core']:.0f} MB/s per core, "
        f"file writes {baseline['file_write_MBps_one_thread']:.0f} MB/s on one thread "
        f"({baseline['file_write_MBps_after_idle']:.0f} MB/s after {IDLE_SECONDS} s idle), "
        f"{baseline['durable_small_file_writes_per_s']:.0f} small files/s written durably; "
        f"the transport alone costs {baseline['pull_transport_cpu_s_per_GB']:.2f} CPU s per GB, so a verified pull "
        f"can reach at most {baseline['pull_ceiling_MBps']:.0f} MB/s here "
        f"({baseline['pull_ceiling_vs_transport']:.2f} x the transport)"
    )
    results: dict[str, Any] = {"baseline": {key: rounded(key, value) for key, value in baseline.items()}}
    results["disk"] = bench_store(
        "disk", str(work / "blobs"), checkpoint, big_file, work / "many-disk", work, baseline, raw
    )
    return results


def bench_transfer(work: Path, small_files_disk: int = 10_000, small_files_s3: int = 2_000) -> dict[str, Any]:
    checkpoint = work / "checkpoint"
    log("  generating 1 GiB checkpoint and small-file sets")
    make_checkpoint(checkpoint)
    big_file = work / "one-big-file"
    big_file.mkdir()
    with open(big_file / "model.pt", "wb") as f:
        rng = random.Random(11)
        for _ in range(ONE_FILE_BYTES // (16 << 20)):
            f.write(rng.randbytes(16 << 20))
    make_many_files(work / "many-disk", small_files_disk)
    make_many_files(work / "many-s3", small_files_s3)
    drop_page_cache_hint(work)
    with RawServer(work) as raw:
        baseline = raw.measure(checkpoint)
        results = bench_disk(work, checkpoint, big_file, baseline, raw)
    results["disk_concurrent_jobs"] = bench_concurrent_pushers(work, raw_push_MBps=baseline["push_MBps"])
    os.environ["MREG_S3_ACCESS_KEY"] = S3_ACCESS_KEY
    os.environ["MREG_S3_SECRET_KEY"] = S3_SECRET_KEY
    # rclone serve s3 rather than moto: a ranged GET costs moto about as much as the whole object
    # (a 256 MiB file pulled as 16 ranges: 105 MB/s on moto, 390 MB/s as one stream; rclone about
    # 330 MB/s either way), so a ranged pull through moto measures moto, not the registry.
    s3 = S3Server("rclone", work / "rclone").start()
    try:
        s3_raw = s3_baseline(s3, checkpoint, work / "many-s3")
        log(
            f"  S3 baselines (minio SDK alone): put {s3_raw['s3_put_MBps']:.0f} MB/s, get {s3_raw['s3_get_MBps']:.0f} "
            f"MB/s, small files put {s3_raw['s3_small_puts_per_s']:.0f}/s, got {s3_raw['s3_small_gets_per_s']:.0f}/s; "
            f"the put costs the S3 server {s3_raw['s3_put_cpu_s_per_GB_s3_server']:.2f} and the SDK "
            f"{s3_raw['s3_put_cpu_s_per_GB_sdk']:.2f} CPU s per GB, {s3_raw['s3_put_cores_busy']:.2f} cores busy"
        )
        results["baseline"].update({key: rounded(key, value) for key, value in s3_raw.items()})
        store = s3.store_url("bench")
        assert s3.process is not None
        results["s3_rclone"] = bench_store(
            "s3",
            store,
            checkpoint,
            big_file,
            work / "many-s3",
            work,
            {**baseline, **s3_raw},
            store_server_pid=s3.process.pid,
        )
    finally:
        s3.stop()
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-server":
        raw_server(int(sys.argv[2]), sys.argv[3])
