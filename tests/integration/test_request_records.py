"""A mutation's request id is recorded at commit, with its events (in one statement on PostgreSQL).

Of two transactions recording the same id, whichever commits second must find it taken, append
none of its events and leave the event counter where the first left it, so that its caller
replays the first result (catalog.idempotency) and Watch never shows a change that was undone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from mreg.metadata_service.db import create_database_engine
from mreg.metadata_service.domain import PendingRequest
from mreg.metadata_service.unit_of_work import Database, RequestAlreadyRecorded, UnitOfWork
from tests.conftest import Servers


@pytest.fixture
def database(servers: Servers) -> Iterator[Database]:
    engine = create_database_engine(servers.database_url)
    yield Database(engine)
    engine.dispose()


def _record(uow: UnitOfWork, request_id: str, resource: str, events: int = 2) -> None:
    for i in range(events):
        uow.record("test.changed", f"{resource}/{i}", None, {"i": i}, collection_id=None)
    uow.record_request_at_commit(PendingRequest(request_id, "Test", "fingerprint", {"resource": resource}))


def _last_sequence(database: Database) -> int:
    return int(database.run(lambda uow: uow.repo.last_event_sequence(), write=False))


def _recorded(database: Database, request_id: str) -> tuple[str, object] | None:
    def read(uow: UnitOfWork) -> tuple[str, object] | None:
        record = uow.repo.request_record(request_id)
        return None if record is None else (record.fingerprint, record.result)

    return database.run(read, write=False)


def _resources(database: Database, resource: str) -> list[str]:
    statement = text("SELECT resource FROM events WHERE resource LIKE :prefix ORDER BY sequence")
    return list(
        database.run(
            lambda uow: uow.session.execute(statement, {"prefix": f"{resource}/%"}).scalars().all(), write=False
        )
    )


def test_a_second_transaction_recording_a_taken_request_id_appends_nothing(database: Database) -> None:
    request_id, first, second = uuid.uuid4().hex, f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    database.run(lambda uow: _record(uow, request_id, first), write=True)
    after_first = _last_sequence(database)

    with pytest.raises(RequestAlreadyRecorded):
        database.run(lambda uow: _record(uow, request_id, second), write=True)

    assert _last_sequence(database) == after_first
    assert _resources(database, first) == [f"{first}/0", f"{first}/1"]
    assert _resources(database, second) == []
    assert _recorded(database, request_id) == ("fingerprint", {"resource": first})


def test_a_transaction_recording_an_id_another_is_recording_waits_and_then_finds_it_taken(
    servers: Servers, database: Database
) -> None:
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time: the second cannot start while the first is open")
    request_id, first, second = uuid.uuid4().hex, f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    first_appended, release_first = threading.Event(), threading.Event()

    def hold_open(uow: UnitOfWork) -> None:
        _record(uow, request_id, first)
        assert uow.repo.append_events(uow.events, uow.actor, uow.requests)
        uow.events, uow.requests = [], []  # appended already: commit only commits
        first_appended.set()
        assert release_first.wait(10)

    holder = threading.Thread(target=lambda: database.run(hold_open, write=True))
    holder.start()
    assert first_appended.wait(10)
    outcome: list[BaseException | None] = []

    def record_second() -> None:
        try:
            database.run(lambda uow: _record(uow, request_id, second), write=True)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    contender = threading.Thread(target=record_second)
    contender.start()
    time.sleep(0.5)
    assert outcome == []  # waiting on the first transaction's request id
    release_first.set()
    holder.join(10)
    contender.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RequestAlreadyRecorded)
    assert _resources(database, first) == [f"{first}/0", f"{first}/1"]
    assert _resources(database, second) == []


def test_a_request_recorded_without_events_is_recorded_alone(database: Database) -> None:
    request_id = uuid.uuid4().hex
    before = _last_sequence(database)
    database.run(
        lambda uow: uow.record_request_at_commit(PendingRequest(request_id, "Test", "fingerprint", {"n": 1})),
        write=True,
    )
    with pytest.raises(RequestAlreadyRecorded):
        database.run(
            lambda uow: uow.record_request_at_commit(PendingRequest(request_id, "Test", "other", {"n": 2})),
            write=True,
        )
    assert _last_sequence(database) == before
    assert _recorded(database, request_id) == ("fingerprint", {"n": 1})


def test_mutations_run_together_record_every_id_or_none_and_append_nothing_if_one_is_taken(
    database: Database,
) -> None:
    taken, free, together = uuid.uuid4().hex, uuid.uuid4().hex, f"together-{uuid.uuid4().hex}"
    database.run(lambda uow: _record(uow, taken, f"first-{taken}"), write=True)
    after_first = _last_sequence(database)

    def both(uow: UnitOfWork, first_id: str, second_id: str) -> None:
        _record(uow, first_id, together)
        uow.record_request_at_commit(PendingRequest(second_id, "Test", "fingerprint", {"resource": together}))

    with pytest.raises(RequestAlreadyRecorded):
        database.run(lambda uow: both(uow, free, taken), write=True)
    assert _last_sequence(database) == after_first
    assert _resources(database, together) == []
    assert _recorded(database, free) is None

    second_free = uuid.uuid4().hex
    database.run(lambda uow: both(uow, free, second_free), write=True)
    assert _resources(database, together) == [f"{together}/0", f"{together}/1"]
    assert _recorded(database, free) == ("fingerprint", {"resource": together})
    assert _recorded(database, second_free) == ("fingerprint", {"resource": together})
