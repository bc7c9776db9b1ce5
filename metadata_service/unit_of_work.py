"""Transactions: one unit of work per RPC, rolled back unless committed.

``Database.run`` executes a function inside a unit of work and retries it when the
database reports a transient conflict (a PostgreSQL serialization failure or deadlock,
an SQLite lock that outlived the busy timeout), so callers never see those.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mreg.metadata_service.db import WRITE_OPTION
from mreg.metadata_service.domain import PendingEvent, PendingRequest
from mreg.metadata_service.errors import Reason, ResourceExhausted, Unavailable
from mreg.metadata_service.repository import DriverReads, Repository

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE_PG_CODES = {"40001": "serialization", "40P01": "deadlock"}
_PG_DISK_FULL = "53100"
_SQLITE_FULL = 13
MAX_ATTEMPTS = 8


class RequestAlreadyRecorded(Exception):
    """Raised by a commit, which is then rolled back: an earlier request with the mutation's id is recorded."""


class UnitOfWork:
    """A session and its repository; leaving the block without commit() rolls back.

    Changes are described with ``record`` as they are made; commit() appends them to
    the event log in the same transaction, so the log never disagrees with the data.
    """

    def __init__(self, make_session: Callable[[], Session], actor: str = "") -> None:
        self._make_session = make_session
        self.actor = actor
        self.events: list[PendingEvent] = []

    def __enter__(self) -> UnitOfWork:
        self.session = self._make_session()
        self.repo = Repository(self.session)
        self.events = []
        self.requests: list[PendingRequest] = []
        return self

    def record(
        self,
        kind: str,
        resource: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        *,
        collection_id: int | None,
    ) -> None:
        """Describes a change; ``collection_id`` names the collection whose resolves it can change (a resolve
        answered from memory is checked against its collections' events), None only if it changes none."""
        self.events.append(PendingEvent(kind, resource, before, after, collection_id))

    def record_request_at_commit(self, request: PendingRequest) -> None:
        """Records a mutation's request id when the transaction commits, with its events (in the same
        statement on PostgreSQL); the commit raises RequestAlreadyRecorded if an earlier request holds it
        (or, for mutations run together, any of theirs)."""
        self.requests.append(request)

    def commit(self) -> None:
        # Last statement before COMMIT: the counter row lock is held only briefly, and sequence order
        # equals commit order, which Watch relies on.
        if (self.events or self.requests) and not self.repo.append_events(self.events, self.actor, self.requests):
            raise RequestAlreadyRecorded(", ".join(request.request_id for request in self.requests))
        self.session.commit()

    def __exit__(self, *exc_info: object) -> None:
        self.session.rollback()
        self.session.close()


def _sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)


def _is_disk_full(error: DBAPIError) -> bool:
    """SQLite's SQLITE_FULL, or PostgreSQL's disk_full."""
    return getattr(error.orig, "sqlite_errorcode", None) == _SQLITE_FULL or _sqlstate(error) == _PG_DISK_FULL


def _conflict(error: DBAPIError) -> str | None:
    """The kind of transient conflict ``error`` is ("serialization", "deadlock", "locked"), or None."""
    state = _sqlstate(error)
    if state in _RETRYABLE_PG_CODES:
        return _RETRYABLE_PG_CODES[state]
    if isinstance(error, OperationalError) and "database is locked" in str(error.orig):
        return "locked"
    return None


def _ignore(kind: str) -> None:
    pass


class Database:
    """Runs functions in units of work against one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # PostgreSQL reads at READ COMMITTED, where every statement takes its own snapshot anyway:
        # autocommit saves the BEGIN and ROLLBACK round trips, and keeps the statements psycopg has
        # prepared on the connection (a ROLLBACK makes it deallocate them all). SQLite keeps its
        # transaction, whose one snapshot spans all of a read's statements.
        reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
        )
        self._reader = sessionmaker(bind=reader, expire_on_commit=False)
        self._writer = sessionmaker(bind=engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        self._bare_reader = reader
        self._driver_reads = DriverReads(engine)
        self._commit_listeners: list[Callable[[], None]] = []
        # SQLite has one writer at a time, and a writer kept waiting sleeps in SQLite's busy handler, which
        # polls at growing intervals (up to 100 ms): a lock freed is not taken at once, and concurrent
        # commits queued mostly asleep. This process's writers queue on a lock of their own instead, handed
        # on the moment a transaction ends; the busy handler still covers other processes.
        self._one_writer: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        # Called with the conflict's kind before each retry (the service's metrics count them).
        self.on_retry: Callable[[str], None] = _ignore

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Calls ``listener`` after every transaction of this process that committed events."""
        self._commit_listeners.append(listener)

    def _notify_committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    def run(self, work: Callable[[UnitOfWork], T], *, write: bool, actor: str = "") -> T:
        """Runs ``work`` in a transaction, committing if ``write``; retries transient conflicts.

        Raises:
            Unavailable: the database cannot be reached, or conflicts persisted.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            committing = False
            try:
                with (
                    self._one_writer if write else contextlib.nullcontext(),
                    UnitOfWork(self._writer if write else self._reader, actor) as uow,
                ):
                    result = work(uow)
                    if write:
                        committing = True
                        uow.commit()
                        if uow.events:
                            self._notify_committed()
                    return result
            except DBAPIError as e:
                # A connection lost before COMMIT took nothing with it; one lost during COMMIT may
                # have committed, so that is the caller's to retry (with its request id).
                self._retry_or_raise(e, attempt, reconnect=not committing)
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Connection], T]) -> T:
        """Runs read-only ``work`` on a pooled connection without an ORM session, as ``run`` would.

        For the hottest reads (resolve): a session's set-up and identity map cost more than
        the queries. The connection's transaction is rolled back when ``work`` returns.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._bare_reader.connect() as connection:
                    return work(connection)
            except DBAPIError as e:
                self._retry_or_raise(e, attempt, reconnect=True)
        raise AssertionError("unreachable")

    def last_events(self, collection_ids: tuple[int, int]) -> tuple[int, int] | None:
        """``ResolveReads.last_events`` straight through the driver (the check of a resolve answered from
        memory); None if that failed, for the caller to ask again through ``read``."""
        return self._driver_reads.last_events(collection_ids)

    def close(self) -> None:
        """Closes every connection: the pool's and those the resolve check keeps apart from it."""
        self._driver_reads.close()
        self.engine.dispose()

    def _retry_or_raise(self, e: DBAPIError, attempt: int, *, reconnect: bool) -> None:
        """Returns to retry at once on a new connection, or after a pause from a transient conflict;
        otherwise raises the domain error.

        The pool does not test connections before use (a round trip on every call): the first
        use of one the database dropped (a restart or failover) fails, SQLAlchemy discards the
        whole pool, and ``reconnect`` lets the attempt run again on a fresh connection.
        """
        if e.connection_invalidated and reconnect and attempt < MAX_ATTEMPTS:
            log.warning("the metadata database dropped a connection, retrying on a new one: %s", e.orig)
            self.on_retry("reconnect")
            return
        conflict = _conflict(e)
        if conflict is not None and attempt < MAX_ATTEMPTS:
            self.on_retry(conflict)
            delay = min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5)
            log.info("transient database conflict (attempt %d), retrying: %s", attempt, e.orig)
            time.sleep(delay)
            return
        if _is_disk_full(e):
            raise ResourceExhausted(
                f"the metadata database has no room left ({e.orig}); nothing was changed. "
                "Free space on its disk (or grow it), then retry",
                Reason.STORAGE_FULL,
            ) from e
        if e.connection_invalidated or isinstance(e, OperationalError):
            raise Unavailable(f"the metadata database is unavailable: {e.orig}", Reason.DATABASE_UNAVAILABLE) from e
        raise e
