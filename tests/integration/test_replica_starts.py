"""Replicas starting together on shared state: a new bucket, a new database.

Several blob services creating one new bucket at the same moment, and several metadata
services migrating one new database at the same moment, must all come up.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from mreg.blob_service.storage.s3 import S3Storage
from mreg.metadata_service.db import alembic_config, create_database_engine, upgrade_schema
from tests.conftest import DATABASES, _fresh_database
from tests.processes import ServiceProcess
from tests.s3_server import S3Server

ROUNDS = 10
REPLICAS = 4


def _start_together(count: int, start) -> list[BaseException | None]:
    """Runs ``start`` in ``count`` threads released at once; returns what each raised (None if nothing)."""
    barrier = threading.Barrier(count)
    outcomes: list[BaseException | None] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            start()
        except BaseException as e:  # reported by the test
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_blob_stores_starting_together_on_a_new_bucket_all_come_up(s3_server: S3Server) -> None:
    for _ in range(ROUNDS):
        bucket = f"race-{uuid.uuid4().hex[:10]}"
        url = s3_server.store_url(bucket)
        failures = [e for e in _start_together(REPLICAS, lambda: S3Storage.from_url(url)) if e is not None]  # noqa: B023
        assert failures == [], f"a replica failed to start on new bucket {bucket}: {failures[0]!r}"
        assert S3Storage.from_url(url).client.bucket_exists(bucket)


MIGRATION_ROUNDS = 3


@pytest.fixture(params=DATABASES)
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_metadata_services_starting_together_on_a_new_database_all_serve_at_the_head_revision(
    database_kind: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    for round_ in range(MIGRATION_ROUNDS):
        databases = _fresh_database(database_kind, tmp_path_factory)
        url = next(databases)
        replicas = [
            ServiceProcess(
                "mreg.metadata_service",
                ["--database-url", url, "--blob-addr", "127.0.0.1:9"],
                log_file=tmp_path / f"metadata-{round_}-{i}.log",
            )
            for i in range(REPLICAS - 1)
        ]
        try:
            for replica in replicas:
                replica.spawn()
            for replica in replicas:
                replica.wait_serving()
            engine = create_database_engine(url)
            with engine.connect() as connection:
                versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
                gc_rows = connection.execute(text("SELECT count(*) FROM gc_state")).scalar_one()
            engine.dispose()
            assert versions == [head], "alembic_version holds exactly one row, at the head revision"
            assert gc_rows == 1, "each migration ran once (its seeded rows exist once)"
        finally:
            for replica in replicas:
                replica.stop()
            next(databases, None)


def test_schema_upgrades_released_at_the_same_moment_migrate_once(
    database_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same race as above, tighter: upgrades released by a barrier rather than by process start-up."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    for _ in range(MIGRATION_ROUNDS):
        databases = _fresh_database(database_kind, tmp_path_factory)
        url = next(databases)
        engines = [create_database_engine(url) for _ in range(REPLICAS)]
        try:
            turns = iter(range(REPLICAS))
            outcomes = _start_together(REPLICAS, lambda: upgrade_schema(engines[next(turns)]))  # noqa: B023
            assert [e for e in outcomes if e is not None] == []
            engine = create_database_engine(url)
            with engine.connect() as connection:
                versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            engine.dispose()
            assert versions == [head]
        finally:
            for each in engines:
                each.dispose()
            next(databases, None)
