"""Fixtures: real servers on free loopback ports, on SQLite and on PostgreSQL.

The metadata legs run on every database named in MREG_TEST_DATABASES (default
"sqlite,postgresql"). PostgreSQL is the one these machines run at 127.0.0.1:5432
(override with MREG_TEST_POSTGRES_URL); each test session gets a database of its own,
dropped at the end. An unreachable PostgreSQL fails the suite rather than skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from mreg.blob.v1 import blob_service_pb2_grpc
from mreg.metadata.v1 import metadata_service_pb2_grpc
from sqlalchemy.engine import make_url

from blob_service import server as blob_server
from blob_service.config import BlobConfig
from client import Registry
from metadata_service import server as metadata_server
from metadata_service.config import MetadataConfig

POSTGRES_URL = os.environ.get("MREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASES = [d.strip() for d in os.environ.get("MREG_TEST_DATABASES", "sqlite,postgresql").split(",") if d.strip()]


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


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'metadata.db'}"
        return
    if request.param != "postgresql":
        raise ValueError(f"unknown database {request.param!r} in MREG_TEST_DATABASES")
    name = f"mreg_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(scope="session")
def blob_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[blob_server.RunningBlobServer]:
    running = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path_factory.mktemp("blob-only"))))
    yield running
    running.stop(grace=None)


@pytest.fixture
def blob_stub(blob_only: blob_server.RunningBlobServer) -> Iterator[blob_service_pb2_grpc.BlobServiceStub]:
    channel = grpc.insecure_channel(blob_only.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    yield blob_service_pb2_grpc.BlobServiceStub(channel)
    channel.close()


@pytest.fixture
def metadata_stub(servers: Servers) -> Iterator[metadata_service_pb2_grpc.MetadataServiceStub]:
    channel = grpc.insecure_channel(servers.metadata.address)
    yield metadata_service_pb2_grpc.MetadataServiceStub(channel)
    channel.close()


@pytest.fixture
def registry(servers: Servers) -> Iterator[Registry]:
    with servers.registry() as client:
        yield client


@pytest.fixture
def unique() -> str:
    """A fresh name suffix, so tests sharing a session's servers never collide."""
    return uuid.uuid4().hex[:10]
