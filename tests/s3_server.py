"""A real S3 server (moto_server or rclone serve s3) as a subprocess, for the tests and the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from minio import Minio

from tests.processes import free_port

S3_ACCESS_KEY = "mreg-test"
S3_SECRET_KEY = "mreg-test-secret"


class S3Server:
    """An S3 server subprocess on a free loopback port: moto_server or rclone serve s3."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.root = root
        bin_dir = Path(sys.executable).parent
        if kind == "moto":
            self.command = [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            self.command = [
                str(bin_dir / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", "--config", "/dev/null", str(root),
            ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} did not listen on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self) -> Minio:
        """A minio client of this server, for what a test or benchmark does to the store directly."""
        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            secure=False,
            region="us-east-1",
        )

    def store_url(self, bucket: str) -> str:
        return f"s3://{bucket}/mreg?endpoint=127.0.0.1:{self.port}&region=us-east-1"
