"""Real service processes for tests that kill and restart them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no server became ready at {address}")
            time.sleep(0.1)


class ServiceProcess:
    """`python -m <module> --listen 127.0.0.1:PORT ARGS` that can be killed and started again on the same port."""

    def __init__(
        self, module: str, args: Sequence[str], port: int | None = None, *, log_file: Path | None = None
    ) -> None:
        self.module = module
        # Where the process's stderr goes (its logs), to explain a failed start; discarded if None.
        self.log_file = log_file
        self.args = list(args)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        return self.spawn().wait_serving()

    def spawn(self) -> ServiceProcess:
        """Starts the process without waiting for it to serve (to start several at the same moment)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--listen", self.address, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file.open("ab") if self.log_file is not None else subprocess.DEVNULL,
            env=dict(os.environ),
        )
        return self

    def wait_serving(self, timeout: float = 60.0) -> ServiceProcess:
        """Waits until the process serves; raises at once, with the end of its log if kept, if it exited."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                err = self.log_file.read_text(errors="replace")[-3000:] if self.log_file is not None else ""
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}: {err}")
            try:
                wait_serving(self.address, timeout=1.0)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def mreg_serve(
    data_dir: Path, metadata_port: int, blob_port: int, *options: str, until: str | None = None
) -> Iterator[list[str]]:
    """`mreg serve` as a real process on the given ports (0: any free one); yields its banner, stops it with
    SIGTERM and checks it exits cleanly.

    The banner is read until the line starting with ``until``; by default the line saying the blob
    service listens (and, with --auth, the line that follows it, naming the admin token file). What
    the process prints after it is read and dropped, so its pipe never fills. The web UI takes a free
    port unless the options say otherwise (its default, 8080, may be taken on a test machine).
    """
    if not any(option in ("--web-port", "--no-web") for option in options):
        options = (*options, "--web-port", "0")
    if until is None:
        until = "authentication is on" if "--auth" in options else "mreg blob service listening"
    server = subprocess.Popen(
        [
            *(str(Path(sys.executable).parent / "mreg"), "serve", "--data-dir", str(data_dir)),
            *("--metadata-port", str(metadata_port), "--blob-port", str(blob_port), *options),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(line.startswith(until) for line in banner):
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            banner.append(line)
        threading.Thread(target=server.stdout.read, name="mreg-serve-output", daemon=True).start()
        yield banner
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def start_authenticated(
    root: Path, database_url: str, blob_options: dict[str, Any], metadata_options: dict[str, Any]
) -> tuple[blob_server.RunningBlobServer, metadata_server.RunningMetadataServer, str]:
    """Both services in-process with --auth, sharing a service secret in ``root``; returns them and the admin token.

    The blob service is told where the metadata service listens once that one is up.
    """
    service_token = str(root / "service.token")
    blobs = blob_server.start(
        BlobConfig(
            listen="127.0.0.1:0",
            store=str(root / "blobs"),
            auth=True,
            service_token_file=service_token,
            **blob_options,
        )
    )
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=database_url,
            blob_addr=blobs.address,
            auth=True,
            admin_token_file=str(root / "admin.token"),
            service_token_file=service_token,
            **metadata_options,
        )
    )
    blobs.metadata_addr = metadata.address
    return blobs, metadata, (root / "admin.token").read_text().strip()
