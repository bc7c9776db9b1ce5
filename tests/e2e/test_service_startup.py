"""A service that cannot start says why in one line on stderr and exits: never a traceback, never a second
service sharing a port, never a port other than the one asked for."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ServiceProcess, free_port

pytestmark = pytest.mark.any_database

SERVICES = [
    ("mreg.metadata_service", ["--database-url", "sqlite:///{tmp}/metadata.db"]),
    ("mreg.blob_service", ["--store", "{tmp}/blobs"]),
]


def _start(module: str, args: list[str], tmp_path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """Runs the service until it exits (it must: each case here is one it cannot start with)."""
    return subprocess.run(
        [sys.executable, "-m", module, *[a.format(tmp=tmp_path) for a in args], *more],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# A line of gRPC's C core's own log ("E1129 03:32:19.691088 6866 add_port.cc:83] ..."), which it writes itself.
GRPC_CORE_LOG = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _one_error_line(result: subprocess.CompletedProcess[str], module: str) -> str:
    errors = [
        line
        for line in result.stderr.splitlines()
        if " INFO " not in line and " WARNING " not in line and not GRPC_CORE_LOG.match(line)
    ]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"python -m {module}: error: "), result.stderr
    return errors[0]


@pytest.mark.parametrize(("module", "args"), SERVICES)
def test_a_port_beyond_65535_is_refused_rather_than_taken_modulo_65536(
    module: str, args: list[str], tmp_path: Path
) -> None:
    # gRPC bound 127.0.0.1:70000 as port 4464 and the service ran there.
    for flag in ("--listen", "--metrics-listen"):
        more = [flag, "127.0.0.1:70000"] + (["--listen", "127.0.0.1:0"] if flag != "--listen" else [])
        result = _start(module, args, tmp_path, *more)
        assert result.returncode == 2, result.stderr
        assert "70000" in _one_error_line(result, module) and "65535" in result.stderr


@pytest.mark.parametrize(("module", "args"), SERVICES)
def test_a_second_service_on_a_port_in_use_exits_instead_of_sharing_it(
    module: str, args: list[str], tmp_path: Path
) -> None:
    # gRPC sets SO_REUSEPORT: a second service bound the same port and the kernel split the connections
    # between two services on different stores.
    first = ServiceProcess(module, [a.format(tmp=tmp_path / "first") for a in args]).start()
    try:
        (tmp_path / "second").mkdir()
        result = _start(module, args, tmp_path / "second", "--listen", first.address)
        assert result.returncode == 1, result.stderr
        line = _one_error_line(result, module)
        assert f"cannot listen on {first.address}" in line and "in use" in line, line
    finally:
        first.stop()


@pytest.mark.parametrize(("module", "args"), SERVICES)
def test_a_metrics_port_in_use_is_one_line(module: str, args: list[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _start(module, args, tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", address)
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on {address}" in _one_error_line(result, module)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:secret@127.0.0.1:1/nowhere",
        "sqlite:////proc/no-such-directory/metadata.db",
        "postgresql://postgres:secret@127.0.0.1:port/nowhere",
        "not a url with a secret",
    ],
)
def test_a_database_the_metadata_service_cannot_reach_is_one_line_without_its_password(
    url: str, tmp_path: Path
) -> None:
    result = _start("mreg.metadata_service", ["--database-url", url], tmp_path, "--listen", "127.0.0.1:0")
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result, "mreg.metadata_service")
    assert "cannot use the database" in line and "secret" not in result.stderr, line


def test_a_malformed_blob_address_is_refused_before_the_database_is_tried(tmp_path: Path) -> None:
    result = _start(
        "mreg.metadata_service",
        ["--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"],
        tmp_path,
        "--listen",
        "127.0.0.1:0",
        "--blob-addr",
        "127.0.0.1:7001,,x",
    )
    assert result.returncode == 2, result.stderr
    assert "--blob-addr" in _one_error_line(result, "mreg.metadata_service") and "database" not in result.stderr
