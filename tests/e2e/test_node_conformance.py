"""The contract as another language sees it: tests/node/conformance.mjs against real servers.

The Node script loads only protos/ (with @grpc/grpc-js and @grpc/proto-loader, pinned in
tests/node/package-lock.json) and runs the whole flow, error details included. It runs on
every database of the `servers` fixture, and once more over mutual TLS (the script's
MREG_CA_CERT, MREG_CLIENT_CERT and MREG_CLIENT_KEY, as the Python client reads them). A missing
node or node_modules fails the test: `make install` installs them (`npm ci --prefix tests/node`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _repo_root() -> Path:
    for directory in Path(__file__).resolve().parents:
        if (directory / "protos").is_dir() and (directory / "tests" / "node").is_dir():
            return directory
    raise RuntimeError(f"no repository root (with protos/ and tests/node/) above {__file__}")


NODE_DIR = _repo_root() / "tests" / "node"
SCRIPT = NODE_DIR / "conformance.mjs"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20 or later, then run `make install`")
    dependencies = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    missing = [name for name in dependencies if not (NODE_DIR / "node_modules" / name / "package.json").is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed in {NODE_DIR / 'node_modules'}: run `make install`")
    return node


def _run_conformance(addresses: dict[str, str]) -> None:
    node = _node()
    client_env = ("MREG_CA_CERT", "MREG_CLIENT_CERT", "MREG_CLIENT_KEY", "MREG_TLS", "MREG_TOKEN")
    env = {**{k: v for k, v in os.environ.items() if k not in client_env}, **addresses}
    result = subprocess.run(
        [node, str(SCRIPT)], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, f"node {SCRIPT.name} exited {result.returncode}\n{output}"


def test_node_client_runs_the_whole_flow_from_protos_alone(servers) -> None:
    _run_conformance({"MREG_BLOB_ADDR": servers.blob.address, "MREG_METADATA_ADDR": servers.metadata.address})


def test_node_client_runs_the_whole_flow_over_mutual_tls(mtls_servers) -> None:
    pki = mtls_servers.pki
    _run_conformance(
        {
            "MREG_BLOB_ADDR": mtls_servers.blob.address,
            "MREG_METADATA_ADDR": mtls_servers.metadata.address,
            "MREG_CA_CERT": str(pki.ca_cert),
            "MREG_CLIENT_CERT": str(pki.client_cert),
            "MREG_CLIENT_KEY": str(pki.client_key),
        }
    )


def test_node_client_runs_the_whole_flow_over_mutual_tls_with_a_token(secured_mtls_servers) -> None:
    servers = secured_mtls_servers
    pki = servers.pki
    _run_conformance(
        {
            "MREG_BLOB_ADDR": servers.blob.address,
            "MREG_METADATA_ADDR": servers.metadata.address,
            "MREG_CA_CERT": str(pki.ca_cert),
            "MREG_CLIENT_CERT": str(pki.client_cert),
            "MREG_CLIENT_KEY": str(pki.client_key),
            "MREG_TOKEN": servers.create_token("node-writer", "writer", "node-conformance"),
        }
    )
