"""The metrics endpoint as operators start it: `mreg serve --metrics-port`, and the services' loopback rule."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.processes import free_port, mreg_serve


def test_mreg_serve_metrics_port_shows_both_services_on_one_endpoint(tmp_path: Path) -> None:
    metadata_port, blob_port, metrics_port = free_port(), free_port(), free_port()
    with mreg_serve(tmp_path / "data", metadata_port, blob_port, "--metrics-port", str(metrics_port)) as banner:
        assert any(line.startswith("mreg blob service listening") for line in banner), banner
        with grpc.insecure_channel(f"127.0.0.1:{metadata_port}") as channel, pytest.raises(grpc.RpcError):
            pb_grpc.MetadataServiceStub(channel).GetVersion(
                pb.GetVersionRequest(name="acme/vision/absent:v0"), timeout=10
            )
        with grpc.insecure_channel(f"127.0.0.1:{blob_port}") as channel:
            blob_grpc.BlobServiceStub(channel).GetCapabilities(blob_pb.GetCapabilitiesRequest(), timeout=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}

    handled = {
        (s.labels["server"], s.labels["method"], s.labels["code"]): s.value
        for s in families["mreg_rpc_handled"].samples
        if s.name == "mreg_rpc_handled_total"
    }
    assert handled[("metadata", "GetVersion", "NOT_FOUND")] == 1
    assert handled[("blob", "GetCapabilities", "OK")] == 1
    assert "mreg_blob_received_bytes" in families and "mreg_db_pool_size_connections" in families


@pytest.mark.parametrize(
    ("module", "args", "insecure_env"),
    [
        ("mreg.metadata_service", ["--database-url", "sqlite:///{tmp}/metadata.db"], "MREG_METADATA_INSECURE"),
        ("mreg.blob_service", ["--store", "{tmp}/blobs"], "MREG_BLOB_INSECURE"),
    ],
)
def test_a_service_refuses_metrics_on_a_non_loopback_address_without_insecure(
    module: str, args: list[str], insecure_env: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", module, "--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"),
            *[a.format(tmp=tmp_path) for a in args],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"python -m {module}: error: refusing to serve metrics on 0.0.0.0:0"), result.stderr
    assert insecure_env in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be created before the refusal"


def test_a_service_says_where_it_listens_as_it_was_told(tmp_path: Path) -> None:
    """The banner named 127.0.0.1 whatever --listen said, so a service on [::1] sent its users elsewhere."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mreg.blob_service", "--listen", "[::1]:0", "--store", str(tmp_path / "blobs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline().strip()
        assert banner.startswith("blob service listening on [::1]:"), banner
        with grpc.insecure_channel(banner.rsplit(" ", 1)[1]) as channel:
            blob_grpc.BlobServiceStub(channel).GetCapabilities(blob_pb.GetCapabilitiesRequest(), timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=30)
