"""The write statements the repository sends straight through the database driver (repository.DriverStatement).

They skip SQLAlchemy's execution, so these tests hold them to what it would have done: the same stored
values (defaults of the columns left out, JSON and timestamps encoded alike), the same errors, and the same
retry on a connection the database dropped.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mreg.metadata_service.db import create_database_engine
from mreg.metadata_service.domain import CollectionKind, VersionState
from mreg.metadata_service.models import Version
from mreg.metadata_service.references import ProjectName
from mreg.metadata_service.repository import Repository
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from tests.conftest import Servers


@pytest.fixture
def database(servers: Servers) -> Iterator[Database]:
    engine = create_database_engine(servers.database_url)
    yield Database(engine)
    engine.dispose()


def _new_artifact(uow: UnitOfWork) -> int:
    project = uow.repo.ensure_project(ProjectName("acme", "driver"))
    collection = uow.repo.create_collection(project, f"a-{uuid.uuid4().hex}", CollectionKind.ARTIFACT, "model", "")
    assert collection is not None
    return collection.id


def _version(artifact_id: int, **columns: Any) -> Version:
    return Version(uid=uuid.uuid4().hex, artifact_id=artifact_id, state=VersionState.PENDING.value, **columns)


_STORED = text(
    "SELECT created_at, tags, metadata, description, size_bytes, file_count, committed_at FROM versions WHERE id = :id"
)


def test_a_version_inserted_through_the_driver_is_stored_as_the_orm_stores_it(database: Database) -> None:
    created = datetime(2026, 11, 28, 5, 6, 7, 891011, tzinfo=UTC)
    tags = ["größe", 'quote"d', ""]
    metadata = {"step": 3, "loss": 0.125, "nested": {"list": [1, None, "x"]}, "empty": {}, "none": None}

    def insert_both(uow: UnitOfWork) -> tuple[int, int]:
        artifact_id = _new_artifact(uow)
        # description, size_bytes and file_count are left to their columns' defaults in both.
        through_orm = _version(artifact_id, tags=tags, metadata_doc=metadata, created_at=created)
        uow.session.add(through_orm)
        uow.session.flush()
        through_driver = uow.repo.add_version(
            _version(artifact_id, tags=tags, metadata_doc=metadata, created_at=created)
        )
        return through_orm.id, through_driver.id

    orm_id, driver_id = database.run(insert_both, write=True)

    def stored(version_id: int) -> tuple[Any, ...]:
        return tuple(database.run(lambda uow: uow.session.execute(_STORED, {"id": version_id}).one(), write=False))

    assert stored(driver_id) == stored(orm_id)

    def loaded(uow: UnitOfWork) -> tuple[Any, ...]:
        version = uow.repo.get_version(driver_id)
        return (
            version.created_at,
            version.tags,
            version.metadata_doc,
            version.description,
            version.size_bytes,
            version.file_count,
            version.committed_at,
        )

    assert database.run(loaded, write=False) == (created, tags, metadata, "", 0, 0, None)


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it_and_nothing_stays_written(database: Database) -> None:
    artifact_id = database.run(_new_artifact, write=True)
    database.run(lambda uow: uow.repo.replace_alias(artifact_id, "best", 0, None), write=True)

    def insert_again(uow: UnitOfWork) -> None:
        uow.repo.replace_alias(artifact_id, "candidate", 1, None)
        uow.repo.replace_alias(artifact_id, "best", 2, None)  # the alias exists: a unique key is violated

    with pytest.raises(IntegrityError) as raised:
        database.run(insert_again, write=True)
    assert not raised.value.connection_invalidated
    assert database.run(lambda uow: uow.repo.aliases(artifact_id), write=False) == {"best": 0}


def test_a_connection_dropped_under_a_driver_statement_is_replaced_and_the_transaction_run_again(
    servers: Servers, database: Database
) -> None:
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL drops connections; SQLite has none to drop")
    url = make_url(servers.database_url)
    artifact_id = database.run(_new_artifact, write=True)
    attempts: list[int] = []

    def allocate(uow: UnitOfWork) -> int:
        collection = uow.repo.get_collection(artifact_id)
        attempts.append(int(uow.session.execute(text("SELECT pg_backend_pid()")).scalar_one()))
        if len(attempts) == 1:
            with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database) as c:
                c.execute("SELECT pg_terminate_backend(%s)", (attempts[0],))
        return uow.repo.allocate_index(collection)  # sent through the driver

    assert database.run(allocate, write=True) == 0
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert database.run(lambda uow: uow.repo.get_collection(artifact_id).next_index, write=False) == 1

    # The error itself says the connection was lost (the retry above would also follow the rollback's own
    # failure on the dead connection), and the connection is not handed out again.
    with Session(database.engine) as session:
        repo = Repository(session)
        collection = repo.get_collection(artifact_id)
        pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError) as raised:
            repo.allocate_index(collection)
        assert raised.value.connection_invalidated
        assert session.connection().invalidated


@pytest.mark.parametrize("count", [1, 3, 512, 700])
def test_a_commit_finds_exactly_the_condemned_blobs_among_any_number_of_its_own(database: Database, count: int) -> None:
    """The check is sent in chunks of a few compiled sizes, the last hash repeated to fill a chunk."""
    hashes = sorted(uuid.uuid4().hex * 2 for _ in range(count))
    in_progress, deleted_then = hashes[0], hashes[-1]
    deleted_before, stranger = hashes[count // 2] if count > 2 else None, uuid.uuid4().hex * 2

    def condemn(uow: UnitOfWork) -> int:
        state = uow.repo.lock_gc_state()
        epoch_before = state.epoch
        uow.repo.condemn([(h, 1) for h in {in_progress, deleted_then, stranger, deleted_before} if h])
        if deleted_before is not None:
            uow.repo.close_condemnation(state, [deleted_before])
            epoch_before = state.epoch
        uow.repo.close_condemnation(state, [deleted_then, stranger])
        return epoch_before

    epoch = database.run(condemn, write=True)
    try:
        pruned_through, taken = database.run(
            lambda uow: uow.repo.share_gc_state_and_condemned_since(hashes, epoch), write=True
        )
        assert sorted(taken) == sorted({in_progress, deleted_then})
        assert pruned_through <= epoch
    finally:
        database.run(lambda uow: uow.repo.close_condemnation(uow.repo.lock_gc_state(), [in_progress]), write=True)


def test_a_commit_that_waited_for_a_sweep_with_its_latest_digest_read_sees_what_the_sweep_condemned(
    servers: Servers, database: Database
) -> None:
    """On PostgreSQL a commit reads its artifact's latest digest and share-locks the sweep state in one statement
    (``latest_digest(share_gc_state=True)``). When that lock waits for a sweep, the check that follows must see
    the blobs the sweep condemned, and the digest must still be the latest."""
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time: the commit cannot start while the sweep is open")
    digest = uuid.uuid4().hex * 2

    def first_version(uow: UnitOfWork) -> int:
        artifact_id = _new_artifact(uow)
        version = _version(artifact_id, index=0, digest="d0")
        version.state = VersionState.COMMITTED.value
        uow.repo.add_version(version)
        return artifact_id

    artifact_id = database.run(first_version, write=True)
    epoch = database.run(lambda uow: uow.repo.lock_gc_state().epoch, write=False)
    sweep = Session(database.engine)
    sweeping = Repository(sweep)
    sweeping.lock_gc_state()  # held until the sweep commits
    seen: dict[str, Any] = {}

    def commit(uow: UnitOfWork) -> None:
        seen["latest"] = uow.repo.latest_digest(artifact_id, share_gc_state=True)  # waits for the sweep
        seen["checked"] = uow.repo.share_gc_state_and_condemned_since([digest], epoch)

    committer = threading.Thread(target=lambda: database.run(commit, write=True))
    try:
        committer.start()
        committer.join(0.5)
        assert committer.is_alive(), "the commit's share lock should wait for the sweep's exclusive lock"
        sweeping.condemn([(digest, 1)])
        sweep.commit()
        committer.join(10)
        assert not committer.is_alive()
        assert seen["latest"] == "d0"
        pruned_through, taken = seen["checked"]
        assert taken == [digest] and pruned_through <= epoch
    finally:
        sweep.close()
        database.run(lambda uow: uow.repo.close_condemnation(uow.repo.lock_gc_state(), [digest]), write=True)
