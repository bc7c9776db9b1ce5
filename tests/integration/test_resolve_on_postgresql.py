"""Resolves on PostgreSQL stay index lookups on one warm connection, however the database got there.

PostgreSQL only: the plan a prepared statement settles on, and which pooled connection (one
server process each) a read takes, are PostgreSQL's; SQLite has neither.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from mreg.client import Registry
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.db import create_database_engine
from mreg.metadata_service.unit_of_work import Database
from tests.conftest import Servers, _fresh_database


def _require_postgresql(servers: Servers) -> None:
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's plans and server processes; SQLite has neither")


@pytest.fixture
def new_database_server(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[metadata_server.RunningMetadataServer, str]]:
    """A metadata server on a database created just now, whose tables PostgreSQL has not analyzed yet."""
    _require_postgresql(servers)
    database = _fresh_database("postgresql", tmp_path_factory)
    url = next(database)
    server = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=url, blob_addr=servers.blob.address)
    )
    yield server, url
    server.stop(grace=None)
    server.engine.dispose()
    next(database, None)


def _generic_plan(url: str, statement: str, parameters: dict[str, Any]) -> list[str]:
    """The plan PostgreSQL settles on for ``statement`` once prepared (psycopg prepares after five runs)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", number, statement)
    target = make_url(url)
    with psycopg.connect(
        host=target.host, port=target.port or 5432, user=target.username, dbname=target.database, autocommit=True
    ) as connection:
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute(sql.SQL("PREPARE resolve AS {}").format(sql.SQL(numbered)))
        arguments = sql.SQL(", ").join(sql.Literal(parameters[name]) for name in names)
        rows = connection.execute(sql.SQL("EXPLAIN EXECUTE resolve ({})").format(arguments)).fetchall()
    return [row[0] for row in rows]


def test_a_resolve_on_a_new_database_probes_the_versions_index_rather_than_reading_every_version(
    servers: Servers, new_database_server: tuple[metadata_server.RunningMetadataServer, str], tmp_path: Path
) -> None:
    server, url = new_database_server
    with Registry.connect(server.address, servers.blob.address, entity="acme", project="vision") as registry:
        for content in (b"zero", b"one", b"two"):
            folder = tmp_path / content.decode()
            folder.mkdir()
            (folder / "weights.bin").write_bytes(content)
            registry.push(folder, "plans")
        registry.set_alias("plans:v1", "best")

        sent: list[tuple[str, dict[str, Any]]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            sent.append((statement, dict(parameters)))

        event.listen(server.engine, "before_cursor_execute", capture)
        try:
            for reference in ("plans:v2", "plans:latest", "plans:best"):
                sent.clear()
                assert registry.resolve(reference).version.digest
                # After the event sequence: the collection, its aliases and the version (then the manifest).
                statement, parameters = next((s, p) for s, p in sent if "versions" in s)
                plan = _generic_plan(url, statement, parameters)
                scans = [line for line in plan if " on versions" in line]
                assert scans, plan
                assert all("Index" in line for line in scans), "\n".join(plan)
        finally:
            event.remove(server.engine, "before_cursor_execute", capture)


def test_reads_after_a_burst_take_the_connection_used_last(servers: Servers) -> None:
    _require_postgresql(servers)
    engine = create_database_engine(servers.database_url)
    database = Database(engine)
    try:
        together = threading.Barrier(4)

        def backend_while_others_wait(_: int) -> int:
            def work(connection: Any) -> int:
                together.wait(timeout=10)
                return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

            return database.read(work)

        with ThreadPoolExecutor(4) as pool:
            assert len(set(pool.map(backend_while_others_wait, range(4)))) == 4

        backends = {
            database.read(lambda connection: int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
            for _ in range(8)
        }
        assert len(backends) == 1
    finally:
        engine.dispose()


def test_reads_keep_the_statements_psycopg_prepared_on_their_connection(servers: Servers) -> None:
    # A read that ended in ROLLBACK made psycopg deallocate every statement it had prepared on
    # the connection, so each statement was planned afresh for its next five runs.
    _require_postgresql(servers)
    engine = create_database_engine(servers.database_url)
    database = Database(engine)
    try:
        for _ in range(8):
            database.run(lambda uow: uow.repo.last_event_sequence(), write=False)
        prepared = database.run(
            lambda uow: uow.session.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one(),
            write=False,
        )
        assert prepared >= 1
    finally:
        engine.dispose()
