"""What a user gets from `pip install .`: a client-only, namespaced `mreg` that works.

The package is built the way a user builds it (build isolation, from the tracked files only, so
no stubs generated earlier by `make` can help) and installed into a fresh virtual environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import assert_same_tree, make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY_DISTRIBUTIONS = {
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg-binary",
    "minio",
    "prometheus-client",
    "prometheus_client",
}


@dataclass
class ClientInstall:
    venv: Path
    distributions: set[str]

    @property
    def mreg(self) -> Path:
        return self.venv / "bin" / "mreg"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


# Session-wide: the database legs would otherwise tear a module fixture down and build the package again.
@pytest.fixture(scope="session")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientInstall]:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout.split(
        b"\0"
    )
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if path.is_file():
            (source / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name.decode())
    assert not (source / "protos" / "gen").exists()
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    distributions = {line.split("==")[0].lower() for line in listing.splitlines() if "==" in line}
    yield ClientInstall(venv, distributions)


def test_a_plain_install_pulls_no_server_libraries(client_install: ClientInstall) -> None:
    assert {"mreg", "grpcio", "protobuf", "click", "rich", "pydantic-settings"} <= client_install.distributions
    assert not client_install.distributions & SERVER_ONLY_DISTRIBUTIONS


def test_the_installed_package_lives_under_the_mreg_namespace_beside_a_users_own_client_module(
    client_install: ClientInstall, tmp_path: Path
) -> None:
    (tmp_path / "client.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "metadata_service.py").write_text("raise SystemExit('the user module was imported')\n")
    result = subprocess.run(
        [
            str(client_install.python),
            "-c",
            "import mreg.client, mreg.metadata.v1.metadata_service_pb2 as pb; import client; "
            "print(mreg.client.Registry.__name__, pb.DESCRIPTOR.package)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    # The user's own client.py wins for `import client`; mreg's stays reachable as mreg.client.
    assert result.returncode == 1 and "the user module was imported" in result.stderr
    result = subprocess.run(
        [str(client_install.python), "-c", "import mreg.client; print(mreg.client.Registry.__name__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Registry"


def test_serve_without_the_server_extra_says_what_to_install(client_install: ClientInstall, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(client_install.mreg), "serve", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "mreg[server]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.any_database
def test_the_client_only_install_pushes_and_pulls(client_install: ClientInstall, servers, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=100_000)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **servers.cli_env()}
    env["MREG_CACHE_DIR"] = str(tmp_path / "cache")
    push = subprocess.run(
        [str(client_install.mreg), "push", str(checkpoint), "acme/packaging/installed", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert push.returncode == 0, push.stderr
    pull = subprocess.run(
        [str(client_install.mreg), "pull", "acme/packaging/installed", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert pull.returncode == 0, pull.stderr
    assert_same_tree(checkpoint, tmp_path / "out")
