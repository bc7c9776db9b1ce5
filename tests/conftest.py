"""Fixtures: real servers on free loopback ports, on SQLite and on PostgreSQL; the test layers.

The tests come in layers (tests/unit, tests/integration, tests/e2e), each marked by its folder, so
`pytest tests/unit` or `pytest -m unit` runs the fast layer alone. These fixtures serve every layer.

The metadata legs run on every database named in MREG_TEST_DATABASES (default
"sqlite,postgresql"). PostgreSQL is the one these machines run at 127.0.0.1:5432
(override with MREG_TEST_POSTGRES_URL); each test session gets a database of its own,
dropped at the end. An unreachable PostgreSQL fails the suite rather than skipping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from mreg.blob.v1 import blob_service_pb2_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import Credentials, Registry
from mreg.client.channels import open_channel
from mreg.client.cli import main as cli_main
from mreg.metadata.v1 import metadata_service_pb2_grpc
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.helpers import create_token
from tests.processes import start_authenticated
from tests.s3_server import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server
from tests.wire import Wire

POSTGRES_URL = os.environ.get("MREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASES = [d.strip() for d in os.environ.get("MREG_TEST_DATABASES", "sqlite,postgresql").split(",") if d.strip()]


LAYERS = {
    "unit": "fast tests of pure functions, grammars and the domain on a temporary SQLite; no servers",
    "integration": "over gRPC against real servers, on both databases and both S3 servers",
    "e2e": "the CLI end to end, packaging, and faults (availability, full disks)",
}


def pytest_configure(config: pytest.Config) -> None:
    for layer, description in LAYERS.items():
        config.addinivalue_line("markers", f"{layer}: {description}")
    config.addinivalue_line(
        "markers",
        "any_database: the metadata database plays no part in what the test checks (the client, the transport, "
        "the blob store), so it runs on the first database of MREG_TEST_DATABASES only",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with the layer its folder names, and runs `any_database` tests on one database."""
    tests_root = Path(__file__).parent
    kept, repeated = [], []
    for item in items:
        relative = item.path.relative_to(tests_root) if item.path.is_relative_to(tests_root) else None
        if relative is not None and len(relative.parts) > 1 and relative.parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, relative.parts[0]))
        callspec = getattr(item, "callspec", None)
        on_database = callspec.params.get("database_url") if callspec is not None else None
        if item.get_closest_marker("any_database") and on_database not in (None, DATABASES[0]):
            repeated.append(item)
        else:
            kept.append(item)
    if repeated:
        config.hook.pytest_deselected(items=repeated)
        items[:] = kept


def _admin_connect():
    import psycopg

    url = make_url(POSTGRES_URL)
    try:
        return psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, dbname=url.database, autocommit=True
        )
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL at {url.host}:{url.port} is unreachable ({e}); start it, or run only the SQLite leg "
            "with MREG_TEST_DATABASES=sqlite"
        )


@pytest.fixture(scope="session", autouse=True)
def isolated_client_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keeps the client's hash and content caches out of the user's home."""
    os.environ["MREG_CACHE_DIR"] = str(tmp_path_factory.mktemp("client-cache"))


@pytest.fixture(scope="session", autouse=True)
def isolated_client_profiles(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keeps the user's `mreg login` profiles (and MREG_PROFILE) out of the tests."""
    os.environ["MREG_CONFIG_DIR"] = str(tmp_path_factory.mktemp("client-config"))
    os.environ.pop("MREG_PROFILE", None)


def _fresh_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A new, empty database of ``kind`` (a SQLite file, or a PostgreSQL database dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'metadata.db'}"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database {kind!r} in MREG_TEST_DATABASES")
    name = f"mreg_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _fresh_database(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def secured_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the same kind as ``database_url`` for the authenticated servers alone (no token exists yet)."""
    yield from _fresh_database("sqlite" if database_url.startswith("sqlite") else "postgresql", tmp_path_factory)


@dataclass
class Servers:
    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer
    blob_dir: Path
    database_url: str

    def registry(self, entity: str | None = "acme", project: str | None = "vision", parallel: int = 4) -> Registry:
        return Registry.connect(
            self.metadata.address, self.blob.address, entity=entity, project=project, parallel=parallel
        )

    def cli_env(self) -> dict[str, str]:
        return {"MREG_METADATA_ADDR": self.metadata.address, "MREG_BLOB_ADDR": self.blob.address}


@pytest.fixture(scope="session")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    blob_dir = tmp_path_factory.mktemp("blobs")
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(blob_dir)))
    metadata = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=database_url, blob_addr=blobs.address)
    )
    yield Servers(blobs, metadata, blob_dir, database_url)
    metadata.stop(grace=None)
    blobs.stop(grace=None)


@dataclass
class SecuredServers:
    """Both services with authentication on, and the admin token their first start wrote."""

    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer
    root: Path
    admin_token: str
    service_token: str

    def channel(self, address: str, token: str | None) -> grpc.Channel:
        return open_channel(address, Credentials(token=token))

    def create_token(self, name: str, role: str, scope: str) -> str:
        """A new token's secret (named ``name`` plus a random suffix), created with the admin token."""
        with self.channel(self.metadata.address, self.admin_token) as channel:
            return create_token(channel, f"{name}-{uuid.uuid4().hex[:8]}", role, scope)

    def registry(self, token: str | None, entity: str = "acme", project: str = "secure") -> Registry:
        return Registry.connect(
            self.metadata.address,
            self.blob.address,
            entity=entity,
            project=project,
            parallel=4,
            credentials=Credentials(token=token),
        )


@pytest.fixture(scope="session")
def secured(secured_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServers]:
    """Servers with --auth, on their own database file or schema, caching token lookups for 1 s (not 30)."""
    root = tmp_path_factory.mktemp("secured")
    blobs, metadata, admin = start_authenticated(
        root, secured_database_url, {"auth_cache_seconds": 1}, {"auth_cache_seconds": 1}
    )
    yield SecuredServers(blobs, metadata, root, admin, (root / "service.token").read_text().strip())
    metadata.stop(grace=None)
    blobs.stop(grace=None)


@pytest.fixture(scope="session")
def s3_credentials() -> None:
    os.environ["MREG_S3_ACCESS_KEY"] = S3_ACCESS_KEY
    os.environ["MREG_S3_SECRET_KEY"] = S3_SECRET_KEY


@pytest.fixture(scope="session", params=["moto", "rclone"])
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_credentials
) -> Iterator[S3Server]:
    server = S3Server(request.param, tmp_path_factory.mktemp(f"{request.param}-data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["disk", "moto", "rclone"])
def blob_store_location(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_credentials
) -> Iterator[str]:
    """Where a blob service keeps its blobs: a directory or a bucket on a real S3 server."""
    if request.param == "disk":
        yield str(tmp_path_factory.mktemp("blob-disk"))
        return
    server = S3Server(request.param, tmp_path_factory.mktemp(f"{request.param}-blobs")).start()
    yield server.store_url(f"blobs-{uuid.uuid4().hex[:8]}")
    server.stop()


@pytest.fixture(scope="session")
def blob_only(blob_store_location: str) -> Iterator[blob_server.RunningBlobServer]:
    running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=blob_store_location))
    yield running
    running.stop(grace=None)


@pytest.fixture
def blob_stub(blob_only: blob_server.RunningBlobServer) -> Iterator[blob_service_pb2_grpc.BlobServiceStub]:
    channel = grpc.insecure_channel(blob_only.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    yield blob_service_pb2_grpc.BlobServiceStub(channel)
    channel.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts small tmpfs file systems to fill (``small_tmpfs("name", "8m")``); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs to fill needs root")
        root = tmp_path / name
        root.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(root)
        return root

    yield mount
    for root in mounted:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def short_ttl_server(servers: Servers) -> Iterator[metadata_server.RunningMetadataServer]:
    """A second metadata server on the same database whose pending versions expire after 1 s."""
    short_lived = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=servers.database_url,
            blob_addr=servers.blob.address,
            pending_ttl_seconds=1,
            janitor_interval_seconds=0.2,
            migrate=False,
        )
    )
    yield short_lived
    short_lived.stop(grace=None)


@pytest.fixture
def short_ttl_registry(servers: Servers, short_ttl_server: metadata_server.RunningMetadataServer) -> Iterator[Registry]:
    """A client of the short-TTL metadata server."""
    with Registry.connect(short_ttl_server.address, servers.blob.address, entity="acme", project="vision") as client:
        yield client


@pytest.fixture
def short_ttl_wire(servers: Servers, short_ttl_server: metadata_server.RunningMetadataServer) -> Iterator[Wire]:
    """Raw stubs to the short-TTL metadata server, for requests the client never builds."""
    with Wire(short_ttl_server.address, servers.blob.address) as raw:
        yield raw


@pytest.fixture
def metadata_stub(servers: Servers) -> Iterator[metadata_service_pb2_grpc.MetadataServiceStub]:
    channel = grpc.insecure_channel(servers.metadata.address)
    yield metadata_service_pb2_grpc.MetadataServiceStub(channel)
    channel.close()


@pytest.fixture
def wire(servers: Servers) -> Iterator[Wire]:
    """Raw stubs of both services with the client's acme/vision headers, for requests the client never builds."""
    with Wire(servers.metadata.address, servers.blob.address) as raw:
        yield raw


@pytest.fixture
def registry(servers: Servers) -> Iterator[Registry]:
    with servers.registry() as client:
        yield client


@pytest.fixture
def mreg(servers, monkeypatch, capsys):
    """Runs `mreg ARGS --json` in-process against the test servers; returns (exit code, parsed stdout, stderr)."""
    for key, value in servers.cli_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MREG_ENTITY", raising=False)
    monkeypatch.delenv("MREG_PROJECT", raising=False)

    def run(*args: str, json_output: bool = True):
        capsys.readouterr()
        code = cli_main([*args, "--json"] if json_output else list(args))
        captured = capsys.readouterr()
        parsed = json.loads(captured.out) if json_output and code == 0 else captured.out
        return code, parsed, captured.err

    return run


@pytest.fixture
def unique() -> str:
    """A fresh name suffix, so tests sharing a session's servers never collide."""
    return uuid.uuid4().hex[:10]
