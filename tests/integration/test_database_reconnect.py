"""The metadata service rides out PostgreSQL dropping its connections (a restart or failover).

Every pooled connection dies at once; the calls that meet a dead connection must still
succeed, reads and writes alike, rather than return UNAVAILABLE until the pool refills.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from mreg.client import Registry
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.conftest import Servers


@pytest.fixture
def own_server(servers: Servers) -> Iterator[metadata_server.RunningMetadataServer]:
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL drops connections; SQLite has none to drop")
    server = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0", database_url=servers.database_url, blob_addr=servers.blob.address, migrate=False
        )
    )
    yield server
    server.stop(grace=None)


def _drop_every_connection(database_url: str) -> int:
    """Terminates every other backend on the test database, as a PostgreSQL restart would."""
    url = make_url(database_url)
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_reads_and_writes_succeed_after_postgresql_drops_every_connection(
    servers: Servers, own_server: metadata_server.RunningMetadataServer, tmp_path: Path, unique: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"before the restart")
    with Registry.connect(own_server.address, servers.blob.address, entity="acme", project="vision") as registry:
        registry.push(model, f"reconnect-{unique}")
        # Several calls at once leave several connections in the service's pool.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: registry.resolve(f"reconnect-{unique}"), range(32)))

        assert _drop_every_connection(servers.database_url) > 0

        # A bare channel, as a caller in another language has: no retry policy on the caller's side.
        bare = metadata_service_pb2_grpc.MetadataServiceStub(grpc.insecure_channel(own_server.address))
        resolve = bare.ResolveReference
        with ThreadPoolExecutor(8) as pool:
            resolved = list(
                pool.map(
                    lambda _: resolve(pb.ResolveReferenceRequest(name=f"acme/vision/reconnect-{unique}")), range(32)
                )
            )
        assert {r.version.index for r in resolved} == {0}

        _drop_every_connection(servers.database_url)
        bare.SetAlias(pb.SetAliasRequest(name=f"acme/vision/reconnect-{unique}:v0", alias="best"))

        _drop_every_connection(servers.database_url)
        (model / "weights.bin").write_bytes(b"after the restart")
        pushed = registry.push(model, f"reconnect-{unique}")
        assert pushed.version.index == 1
        assert registry.resolve(f"reconnect-{unique}:best").version.index == 0
        assert [v.index for v in registry.list_versions(f"reconnect-{unique}")] == [1, 0]
