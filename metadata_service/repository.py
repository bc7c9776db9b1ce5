"""All SQL of the metadata service: one repository over one session.

Nothing outside this module builds queries. Methods return ORM rows; the catalog
turns them into views before the transaction ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    Row,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal,
    not_,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from mreg.metadata_service import filters
from mreg.metadata_service.domain import CollectionKind, PendingEvent, PendingRequest, VersionState
from mreg.metadata_service.event_feed import EVENTS_CHANNEL, SEGMENT_ENDS
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.models import (
    Alias,
    Base,
    Collection,
    CondemnedBlob,
    Entity,
    Event,
    EventCounter,
    GcState,
    Link,
    ManifestEntry,
    Project,
    RequestRecord,
    RunInput,
    TaskLease,
    Token,
    Version,
    utcnow,
)
from mreg.metadata_service.references import LATEST, CollectionName, ProjectName

# The hot read paths, built once: constructing SQLAlchemy expressions costs more than
# running these indexed queries.
_FIND_COLLECTION = (
    select(Collection)
    .join(Project, Project.id == Collection.project_id)
    .join(Entity, Entity.id == Project.entity_id)
    .where(
        Entity.name == bindparam("entity"), Project.name == bindparam("project"), Collection.name == bindparam("name")
    )
)
_LOCK_VERSION_AND_ARTIFACT = (
    select(Version, Collection, Entity.name, Project.name)
    .join(Collection, Collection.id == Version.artifact_id)
    .join(Project, Project.id == Collection.project_id)
    .join(Entity, Entity.id == Project.entity_id)
    .where(Version.uid == bindparam("uid"))
    .with_for_update(of=(Version, Collection))
)
_LATEST_OF_ARTIFACT = aliased(Version)


def _latest_digest_of(artifact_id: Any) -> Any:
    """The digest of the artifact's latest committed version (NULL if none)."""
    return (
        select(_LATEST_OF_ARTIFACT.digest)
        .where(
            _LATEST_OF_ARTIFACT.artifact_id == artifact_id, _LATEST_OF_ARTIFACT.state == VersionState.COMMITTED.value
        )
        .order_by(_LATEST_OF_ARTIFACT.index.desc())
        .limit(1)
    )


_LATEST_DIGEST = _latest_digest_of(bindparam("artifact_id"))
_LOCK_VERSION_FOR_COMMIT = _LOCK_VERSION_AND_ARTIFACT.add_columns(
    _latest_digest_of(Collection.id).correlate(Collection).scalar_subquery()
)
_FIND_COLLECTION_FOR_UPDATE = _FIND_COLLECTION.with_for_update(of=Collection)
_LOCK_COLLECTION = _FIND_COLLECTION.with_only_columns(Collection.id).with_for_update(of=Collection)
_COMMITTED = Version.state == VersionState.COMMITTED.value
_VERSION_BY_INDEX = select(Version).where(
    Version.artifact_id == bindparam("artifact_id"), Version.index == bindparam("index"), _COMMITTED
)
_LATEST_VERSION = (
    select(Version)
    .where(Version.artifact_id == bindparam("artifact_id"), _COMMITTED)
    .order_by(Version.index.desc())
    .limit(1)
)
_MANIFEST = select(ManifestEntry).where(ManifestEntry.version_id == bindparam("version_id"))
_ALIASES = select(Alias.name, Alias.target_index).where(Alias.collection_id == bindparam("collection_id"))
_LINK_BY_INDEX = select(Link).where(Link.registered_model_id == bindparam("model_id"), Link.index == bindparam("index"))
_LATEST_LINK = (
    select(Link).where(Link.registered_model_id == bindparam("model_id")).order_by(Link.index.desc()).limit(1)
)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


@functools.cache
def _insert_or_nothing(dialect: str, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING the primary key, built once per table; values bind at execution.

    On the Table, not the mapped class: a Core statement skips the ORM's bulk-persistence layer.
    """
    make_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    key = next(iter(table.primary_key.columns))
    return make_insert(table).on_conflict_do_nothing().returning(key)


# The commit path's writes, as Core statements on the tables: the ORM's bulk INSERT and UPDATE
# cost several times the statements themselves.
_ALLOCATE_INDEX = (
    update(_table(Collection))
    .where(_table(Collection).c.id == bindparam("collection_id"))
    .values(next_index=_table(Collection).c.next_index + bindparam("count"))
    .returning(_table(Collection).c.next_index)
)
_SET_COLLECTION_TYPE = (
    update(_table(Collection))
    .where(_table(Collection).c.id == bindparam("typed_collection_id"))
    .values(type=bindparam("new_type"))
)
_INSERT_MANIFEST_ENTRY = insert(_table(ManifestEntry))
# Attribute name and column of every versions column but the id, which the INSERT returns.
_NEW_VERSION_COLUMNS = tuple(
    (attribute.key, attribute.columns[0]) for attribute in inspect(Version).column_attrs if attribute.key != "id"
)
_INSERT_VERSION = insert(_table(Version)).returning(_table(Version).c.id)
_TAKE_SEQUENCES = (
    update(_table(EventCounter))
    .where(_table(EventCounter).c.id == 1)
    .values(last_sequence=_table(EventCounter).c.last_sequence + bindparam("count"))
    .returning(_table(EventCounter).c.last_sequence)
)
_INSERT_EVENT = insert(_table(Event))
# The collection_id of an event that changes no collection's resolves (a run's inputs). NULL is left to
# events whose collection is unknown: written before migration 0006, or by a replica older than it while
# replicas are upgraded one by one; a resolve counts those as a change to every collection.
NO_COLLECTION = 0


def _collection_column(event: PendingEvent) -> int:
    return NO_COLLECTION if event.collection_id is None else event.collection_id


# PostgreSQL appends events in one statement (see append_events): it takes the counter row's lock and the
# sequence numbers (``taken``), queues the notification (``notified``) and inserts the events as below.
# ``->`` keeps a JSON null as JSON null, as the ORM stores None in these columns.
_INSERT_TAKEN_EVENTS = """
    INSERT INTO events (sequence, kind, resource, before, after, actor, created_at, collection_id)
    SELECT taken.last_sequence - :count + e.ordinal, e.event ->> 'kind', e.event ->> 'resource',
           e.event -> 'before', e.event -> 'after', :actor, :created_at,
           CAST(e.event ->> 'collection_id' AS integer)
    FROM taken, notified, jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS e(event, ordinal)
"""
_APPEND_EVENTS_POSTGRESQL = text(
    f"""
    WITH taken AS (
        UPDATE event_counter SET last_sequence = last_sequence + :count WHERE id = 1 RETURNING last_sequence
    ), notified AS (
        SELECT pg_notify('{EVENTS_CHANNEL}', '')
    )
    {_INSERT_TAKEN_EVENTS}
    """
)
# The same, recording mutations' request ids first (catalog.idempotency) in the same round trip: the events
# are appended only if every id was free, and the statement answers how many were.
_APPEND_EVENTS_RECORDING_REQUESTS_POSTGRESQL = text(
    f"""
    WITH recorded AS (
        INSERT INTO request_records (request_id, method, fingerprint, result, created_at)
        SELECT r ->> 'request_id', r ->> 'method', r ->> 'fingerprint', r -> 'result', :created_at
        FROM jsonb_array_elements(CAST(:requests AS jsonb)) AS r
        ON CONFLICT DO NOTHING
        RETURNING request_id
    ), taken AS (
        UPDATE event_counter SET last_sequence = last_sequence + :count
        WHERE id = 1 AND (SELECT count(*) FROM recorded) = :request_count
        RETURNING last_sequence
    ), notified AS (
        SELECT pg_notify('{EVENTS_CHANNEL}', '') FROM taken
    ), appended AS ({_INSERT_TAKEN_EVENTS})
    SELECT count(*) FROM recorded
    """
)
_COMMIT_VERSION = (
    update(_table(Version))
    .where(_table(Version).c.id == bindparam("committed_version_id"))
    .values({column: bindparam(column) for column in ("index", "state", "digest", "size_bytes", "file_count")})
    .values(committed_at=bindparam("committed_at"), producer_run=bindparam("producer_run"))
)
_VERSION_BY_UID = select(Version).where(Version.uid == bindparam("uid"))
_ARTIFACT_OF_VERSION = select(_table(Version).c.artifact_id).where(_table(Version).c.uid == bindparam("uid"))
_VERSION_BY_UID_FOR_UPDATE = _VERSION_BY_UID.with_for_update()
_ALIAS_TARGET_FOR_UPDATE = (
    select(_table(Alias).c.target_index)
    .where(
        _table(Alias).c.collection_id == bindparam("alias_collection_id"),
        _table(Alias).c.name == bindparam("alias_name"),
    )
    .with_for_update()
)
_INSERT_ALIAS = insert(_table(Alias))
_MOVE_ALIAS = (
    update(_table(Alias))
    .where(
        _table(Alias).c.collection_id == bindparam("alias_collection_id"),
        _table(Alias).c.name == bindparam("alias_name"),
    )
    .values(target_index=bindparam("new_index"), updated_at=bindparam("moved_at"))
)
# A sweep locks the row exclusively (commits share-lock it), and must see its current values.
_LOCK_GC_STATE = select(GcState).where(GcState.id == 1).with_for_update().execution_options(populate_existing=True)
_SHARE_GC_STATE = select(_table(GcState).c.pruned_through).where(_table(GcState).c.id == 1).with_for_update(read=True)
# PostgreSQL: a commit's read of its artifact's latest digest, made under the artifact's lock, and the garbage
# collection state's share lock it takes next, in one statement. The digest may come from a snapshot older than
# a wait for a sweep: sweeps change no version, and the artifact's lock keeps out the commits that would.
_LATEST_DIGEST_SHARING_GC_STATE = (
    select(_table(GcState).c.pruned_through, _latest_digest_of(bindparam("artifact_id")).scalar_subquery())
    .where(_table(GcState).c.id == 1)
    .with_for_update(read=True, of=_table(GcState))
)
_CONDEMNED_CHUNK = 512


def _condemned_since_epoch(count: int) -> ColumnElement[bool]:
    """Whether a condemned blob is one of ``count`` hashes (bound one by one, ``hash_0``…, so the statement can be
    sent through the driver as compiled) that a sweep is deleting now or deleted after ``epoch``."""
    hashes: list[Any] = [bindparam(f"hash_{i}") for i in range(count)]
    return and_(
        _table(CondemnedBlob).c.digest.in_(hashes),
        or_(
            _table(CondemnedBlob).c.deleted_epoch.is_(None), _table(CondemnedBlob).c.deleted_epoch > bindparam("epoch")
        ),
    )


@functools.cache
def _condemned_since(count: int) -> Any:
    return select(_table(CondemnedBlob).c.digest).where(_condemned_since_epoch(count))


@functools.cache
def _share_gc_state_with_condemned(count: int) -> Any:
    return (
        select(_table(GcState).c.pruned_through, _table(CondemnedBlob).c.digest)
        .select_from(_table(GcState).outerjoin(_table(CondemnedBlob), _condemned_since_epoch(count)))
        .where(_table(GcState).c.id == 1)
        .with_for_update(read=True, of=_table(GcState))
    )


def _hash_parameters(chunk: Sequence[str]) -> tuple[int, dict[str, str]]:
    """A statement size for ``chunk`` (the next power of two, so few sizes are ever compiled) and its hashes as
    parameters; the last hash fills the places beyond the chunk, which changes nothing in an IN list."""
    count = 1 << (len(chunk) - 1).bit_length()
    return count, {f"hash_{i}": chunk[min(i, len(chunk) - 1)] for i in range(count)}


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._sql_dialect = session.get_bind().dialect
        self._dialect = self._sql_dialect.name
        # Full names of collections seen in this unit of work; they never change.
        self._names: dict[int, CollectionName] = {}
        self._connection: Connection | None = None
        # ``pruned_through`` of the garbage collection state, once this transaction holds its share lock.
        self._shared_gc_pruned_through: int | None = None

    def _send(
        self, statement: Any, values: dict[str, Any] | list[dict[str, Any]], *, rows_of_each: bool = False
    ) -> list[Any]:
        """Sends a Core statement straight through the driver (see DriverStatement), on this unit of work's
        connection and in its transaction; ``values`` as a list sends it once per item. Returns the rows
        (for a list, none; with ``rows_of_each``, PostgreSQL only, each item's rows).

        Unlike ``session.execute``, this does not flush the session first: the statements sent this way
        write or lock rows the session's pending changes never touch. The columns bound are the keys of
        ``values`` (of its first item), with the defaults of the columns an INSERT leaves out.
        """
        connection = self._statements()
        first = values[0] if isinstance(values, list) else values
        sendable = _driver_statement(statement, self._sql_dialect, tuple(first))
        cursor: Any = connection.connection.cursor()
        try:
            if not isinstance(values, list):
                cursor.execute(sendable.sql, sendable.parameters(values))
                return list(cursor.fetchall()) if cursor.description is not None else []
            parameters = [sendable.parameters(item) for item in values]
            if not rows_of_each:
                cursor.executemany(sendable.sql, parameters)
                return []
            cursor.executemany(sendable.sql, parameters, returning=True)  # psycopg's: each item's rows in turn
            rows = [list(cursor.fetchall())]
            while cursor.nextset():
                rows.append(list(cursor.fetchall()))
            return rows
        except self._sql_dialect.loaded_dbapi.Error as e:
            raise self._driver_failure(e, connection, cursor, sendable.sql) from e
        finally:
            cursor.close()

    def _send_each(self, statement: Any, values: list[dict[str, Any]]) -> list[list[Any]]:
        """``_send`` once per item of ``values``, with the rows of each: on PostgreSQL in one round trip
        (psycopg pipelines an executemany), on SQLite, in-process, one after another."""
        if self._dialect != "postgresql" or len(values) == 1:
            return [self._send(statement, item) for item in values]
        return self._send(statement, values, rows_of_each=True)

    def _statements(self) -> Connection:
        """This unit of work's connection, for statements that bypass the ORM; the first call begins the
        transaction, as the session's first statement would."""
        if self._connection is None:
            self._connection = self.session.connection()
        return self._connection

    def _send_for_value(self, statement: Any, values: dict[str, Any]) -> Any:
        """``_send`` for the first column of the first row; None if there is no row."""
        rows = self._send(statement, values)
        return rows[0][0] if rows else None

    def _driver_failure(self, error: Any, connection: Connection, cursor: Any, sql: str) -> Exception:
        """The error SQLAlchemy would raise for a driver's ``error``, with the connection invalidated if it
        was lost, so the unit of work retries or reports it as it does every database error."""
        dialect = self._sql_dialect
        lost = dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor)
        if lost:
            connection.invalidate(error)
        return DBAPIError.instance(
            sql, None, error, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
        )

    def _insert_ignoring_conflict(self, model: Any, values: dict[str, Any]) -> Any | None:
        """INSERTs a row unless a unique key is taken; returns the new row's primary key, or None.

        This is how concurrent create-on-first-use and request-id claims stay free of
        integrity errors: a concurrent insert of the same key waits for the other
        transaction and then finds the key taken.
        """
        return self._send_for_value(_insert_or_nothing(self._dialect, _table(model)), values)

    # Entities and projects -------------------------------------------------------------

    def find_project(self, name: ProjectName) -> Project | None:
        return self.session.scalars(
            select(Project)
            .join(Entity, Entity.id == Project.entity_id)
            .where(Entity.name == name.entity, Project.name == name.project)
        ).one_or_none()

    def list_projects(self, entity: str, after_name: str | None, limit: int) -> Sequence[Project]:
        """An entity's projects holding a visible collection (a registered model, or an artifact with a
        committed version), by name, after a keyset position."""
        visible = exists(
            select(Collection.id).where(
                Collection.project_id == Project.id,
                or_(Collection.kind == CollectionKind.REGISTERED_MODEL.value, Collection.next_index > 0),
            )
        )
        query = select(Project).join(Entity, Entity.id == Project.entity_id).where(Entity.name == entity, visible)
        if after_name is not None:
            query = query.where(Project.name > after_name)
        return self.session.scalars(query.order_by(Project.name).limit(limit)).all()

    def ensure_project(self, name: ProjectName) -> Project:
        self._insert_ignoring_conflict(Entity, {"name": name.entity, "created_at": utcnow()})
        entity_id = self.session.scalars(select(Entity.id).where(Entity.name == name.entity)).one()
        self._insert_ignoring_conflict(Project, {"entity_id": entity_id, "name": name.project, "created_at": utcnow()})
        project = self.find_project(name)
        assert project is not None
        return project

    # Collections -------------------------------------------------------------------------

    def resolve_reads(self) -> ResolveReads:
        """A resolve's reads, on this unit of work's connection and transaction."""
        return ResolveReads(self._statements())

    def find_collection(self, name: CollectionName, *, for_update: bool = False) -> Collection | None:
        # Serializes commits, links and alias moves per collection (PostgreSQL row lock;
        # SQLite write transactions are already exclusive).
        query = _FIND_COLLECTION_FOR_UPDATE if for_update else _FIND_COLLECTION
        row = self.session.scalars(
            query, {"entity": name.entity, "project": name.project, "name": name.name}
        ).one_or_none()
        if row is not None:
            self._names[row.id] = name
        return row

    def find_collection_to_commit_to(self, name: CollectionName) -> Collection | None:
        """The collection ``name``, locked as ``find_collection(for_update=True)`` locks it, read without the
        ORM's loading: a transient row, never added to the session, for a commit, which only reads it
        (``set_collection_type`` changes its type)."""
        found = (
            self._statements()
            .execute(_FIND_COLLECTION_FOR_UPDATE, {"entity": name.entity, "project": name.project, "name": name.name})
            .one_or_none()
        )
        if found is None:
            return None
        self._names[found.id] = name
        return Collection(**found._mapping)

    def set_collection_type(self, collection: Collection, type_: str) -> None:
        """Changes a collection's type, on the row and on ``collection`` (loaded or transient)."""
        self._send(_SET_COLLECTION_TYPE, {"typed_collection_id": collection.id, "new_type": type_})
        set_committed_value(collection, "type", type_)

    def lock_collection(self, name: CollectionName) -> None:
        """Takes the collection's row lock, as ``find_collection(for_update=True)`` does, without loading it:
        for a change that reads the collection afterwards (PostgreSQL; SQLite's write transaction is
        exclusive from its first statement, so there is nothing to send)."""
        if self._dialect == "postgresql":
            self._send(_LOCK_COLLECTION, {"entity": name.entity, "project": name.project, "name": name.name})

    def lock_version_for_commit(
        self, uid: str, *, share_gc_state: bool = False, latest_digest: bool = True
    ) -> tuple[Version, Collection, str | None] | None:
        """A version by uid and its artifact, both locked, with the artifact's full name and the digest of
        its latest committed version (None if it has none): what a commit reads, in one statement.

        ``share_gc_state``: as ``latest_digest``'s. Without ``latest_digest`` (commits run together, which
        know it), PostgreSQL skips that read and the digest is None.
        """
        if self._dialect != "postgresql":
            # The write transaction began holding SQLite's write lock: its reads are already current.
            found = self.session.execute(_LOCK_VERSION_FOR_COMMIT, {"uid": uid}).one_or_none()
            if found is None:
                return None
            version, artifact, entity, project, digest = found
        else:
            # A row lock PostgreSQL had to wait for re-reads the locked rows, but a subquery in the same
            # statement keeps the snapshot from before the wait, which may predate the commit it waited for.
            found = self.session.execute(_LOCK_VERSION_AND_ARTIFACT, {"uid": uid}).one_or_none()
            if found is None:
                return None
            version, artifact, entity, project = found
            digest = self.latest_digest(artifact.id, share_gc_state=share_gc_state) if latest_digest else None
        self._names[artifact.id] = CollectionName(entity, project, artifact.name)
        return version, artifact, digest

    def create_collection(
        self, project: Project, name: str, kind: CollectionKind, type_: str, description: str
    ) -> Collection | None:
        """Creates a collection; returns None if the name is already taken."""
        new_id = self._insert_ignoring_conflict(
            Collection,
            {
                "project_id": project.id,
                "name": name,
                "kind": kind.value,
                "type": type_,
                "description": description,
                "next_index": 0,
                "created_at": utcnow(),
            },
        )
        if new_id is None:
            return None
        return self.session.get_one(Collection, new_id)

    def list_collections(
        self, project: Project, kind: CollectionKind, after_name: str | None, limit: int
    ) -> Sequence[Collection]:
        query = select(Collection).where(Collection.project_id == project.id, Collection.kind == kind.value)
        if kind is CollectionKind.ARTIFACT:
            query = query.where(Collection.next_index > 0)  # unborn artifacts are invisible
        if after_name is not None:
            query = query.where(Collection.name > after_name)
        return self.session.scalars(query.order_by(Collection.name).limit(limit)).all()

    def allocate_index(self, collection: Collection, count: int = 1) -> int:
        """Takes the collection's next ``count`` indexes (of versions or links) and advances the counter;
        returns the first."""
        next_index = int(self._send_for_value(_ALLOCATE_INDEX, {"collection_id": collection.id, "count": count}))
        # The Core UPDATE leaves the loaded row alone: bring it up to date without marking it changed.
        set_committed_value(collection, "next_index", next_index)
        return next_index - count

    # Versions ------------------------------------------------------------------------------

    def add_version(self, version: Version) -> Version:
        """INSERTs a new version row; ``version`` (left out of the session) gets its id.

        Attributes left unset are left out, so the columns' defaults apply as an ORM flush would.
        """
        self.add_versions([version])
        return version

    def add_versions(self, versions: Sequence[Version]) -> None:
        """``add_version`` for each of ``versions``: in one round trip for those that set the same attributes
        (one statement is compiled for the columns it binds)."""
        values = [
            {
                column.name: value
                for attribute, column in _NEW_VERSION_COLUMNS
                if (value := getattr(version, attribute)) is not None
            }
            for version in versions
        ]
        alike: dict[tuple[str, ...], list[int]] = {}
        for position, row in enumerate(values):
            alike.setdefault(tuple(row), []).append(position)
        for positions in alike.values():
            inserted = self._send_each(_INSERT_VERSION, [values[i] for i in positions])
            for i, rows in zip(positions, inserted, strict=True):
                versions[i].id = int(rows[0][0])

    def artifact_of_version(self, uid: str) -> int | None:
        """The id of the artifact the version ``uid`` belongs to, without loading the version."""
        return self._send_for_value(_ARTIFACT_OF_VERSION, {"uid": uid})

    def find_version_by_uid(self, uid: str, *, for_update: bool = False) -> Version | None:
        query = _VERSION_BY_UID_FOR_UPDATE if for_update else _VERSION_BY_UID
        return self.session.scalars(query, {"uid": uid}).one_or_none()

    def find_version_by_index(self, artifact_id: int, index: int) -> Version | None:
        return self.session.scalars(_VERSION_BY_INDEX, {"artifact_id": artifact_id, "index": index}).one_or_none()

    def latest_version(self, artifact_id: int) -> Version | None:
        return self.session.scalars(_LATEST_VERSION, {"artifact_id": artifact_id}).one_or_none()

    def latest_digest(self, artifact_id: int, *, share_gc_state: bool = False) -> str | None:
        """The digest of the artifact's latest committed version (None if it has none), without loading it.

        ``share_gc_state``, for a commit holding the artifact's lock that checks its content against sweeps
        next: on PostgreSQL the same statement takes the share lock ``share_gc_state_and_condemned_since``
        needs, which then has only the condemned blobs to read (one round trip fewer).
        """
        if share_gc_state and self._dialect == "postgresql":
            pruned_through, digest = self._send(_LATEST_DIGEST_SHARING_GC_STATE, {"artifact_id": artifact_id})[0]
            self._shared_gc_pruned_through = int(pruned_through)
        else:
            digest = self._send_for_value(_LATEST_DIGEST, {"artifact_id": artifact_id})
        return None if digest is None else str(digest)

    def list_versions(self, artifact_id: int, before_index: int | None, limit: int) -> Sequence[Version]:
        query = select(Version).where(Version.artifact_id == artifact_id, Version.state == VersionState.COMMITTED.value)
        if before_index is not None:
            query = query.where(Version.index < before_index)
        return self.session.scalars(query.order_by(Version.index.desc()).limit(limit)).all()

    def count_versions(self, artifact_id: int) -> int:
        return self.session.scalars(
            select(func.count())
            .select_from(Version)
            .where(Version.artifact_id == artifact_id, Version.state == VersionState.COMMITTED.value)
        ).one()

    def mark_version_committed(self, version: Version, **committed: Any) -> None:
        """Sets the columns a commit fills in (index, state, digest…) on the row and on ``version``."""
        self.mark_versions_committed([(version, committed)])

    def mark_versions_committed(self, committed: Sequence[tuple[Version, dict[str, Any]]]) -> None:
        """``mark_version_committed`` for each (version, its columns), in one round trip."""
        updates = [(version, {"state": VersionState.COMMITTED.value, **columns}) for version, columns in committed]
        rows = [{"committed_version_id": version.id, **values} for version, values in updates]
        self._send(_COMMIT_VERSION, rows if len(rows) > 1 else rows[0])
        # One Core UPDATE instead of an ORM flush; the loaded rows are brought up to date unchanged-marked.
        for version, values in updates:
            for attribute, value in values.items():
                set_committed_value(version, attribute, value)

    def mark_version_deleted(self, version: Version) -> None:
        """Tombstones a version, flushed so later queries of this transaction see it deleted."""
        version.state = VersionState.DELETED.value
        self.session.flush()

    def delete_pending_version(self, version: Version) -> bool:
        """Deletes the version if it is still pending; False if it committed (or went) meanwhile.

        The state is checked by the DELETE itself: a commit that lands between the expiry's
        read and this statement keeps its version (PostgreSQL re-checks the condition on
        the row the commit left).
        """
        result = self.session.execute(
            delete(Version).where(Version.id == version.id, Version.state == VersionState.PENDING.value)
        )
        return bool(getattr(result, "rowcount", 0))

    def get_version(self, version_id: int) -> Version:
        return self.session.get_one(Version, version_id)

    def get_collection(self, collection_id: int) -> Collection:
        return self.session.get_one(Collection, collection_id)

    def find_collection_by_id(self, collection_id: int) -> Collection | None:
        return self.session.get(Collection, collection_id)

    def find_version_by_id(self, version_id: int) -> Version | None:
        return self.session.get(Version, version_id)

    def collection_full_name(self, collection: Collection) -> CollectionName:
        if collection.id not in self._names:
            entity, project = self.session.execute(
                select(Entity.name, Project.name)
                .join(Project, Project.entity_id == Entity.id)
                .where(Project.id == collection.project_id)
            ).one()
            self._names[collection.id] = CollectionName(entity, project, collection.name)
        return self._names[collection.id]

    # Manifests ---------------------------------------------------------------------------

    def add_manifest(self, version_id: int, entries: Iterable[FileEntry]) -> None:
        self.add_manifests([(version_id, entries)])

    def add_manifests(self, manifests: Iterable[tuple[int, Iterable[FileEntry]]]) -> None:
        """The manifests of several versions, by version id, in one round trip."""
        rows = [
            {
                "version_id": version_id,
                "path": e.path,
                "digest": e.digest,
                "size_bytes": e.size_bytes,
                "metadata": e.metadata,
            }
            for version_id, entries in manifests
            for e in entries
        ]
        if rows:
            self._send(_INSERT_MANIFEST_ENTRY, rows)

    def manifest(self, version_id: int) -> list[FileEntry]:
        rows = self.session.scalars(_MANIFEST, {"version_id": version_id}).all()
        entries = [FileEntry(r.path, r.digest, r.size_bytes, r.metadata_doc) for r in rows]
        entries.sort(key=lambda e: e.path.encode())
        return entries

    def manifest_page(self, version_id: int, after_path: str | None, limit: int) -> list[FileEntry]:
        """Up to ``limit`` manifest entries after ``after_path``, in UTF-8 byte order of their paths."""
        # Byte order on both databases: SQLite's default BINARY collation, PostgreSQL's "C".
        path = ManifestEntry.path.collate("C") if self._dialect == "postgresql" else ManifestEntry.path
        query = select(ManifestEntry).where(ManifestEntry.version_id == version_id)
        if after_path is not None:
            query = query.where(path > after_path)
        rows = self.session.scalars(query.order_by(path).limit(limit)).all()
        return [FileEntry(r.path, r.digest, r.size_bytes, r.metadata_doc) for r in rows]

    # Aliases -----------------------------------------------------------------------------

    def aliases(self, collection_id: int) -> dict[str, int]:
        rows = self.session.execute(_ALIASES, {"collection_id": collection_id}).all()
        return {name: index for name, index in rows}

    def set_alias(self, collection_id: int, name: str, index: int) -> int | None:
        """Points an alias at an index; returns the index it named before, if any."""
        key = {"alias_collection_id": collection_id, "alias_name": name}
        found = self._send_for_value(_ALIAS_TARGET_FOR_UPDATE, key)
        previous = None if found is None else int(found)
        self.replace_alias(collection_id, name, index, previous)
        return previous

    def replace_alias(self, collection_id: int, name: str, index: int, previous: int | None) -> None:
        """Points an alias at an index, given the index it names now (None: unset), read under the
        collection's lock."""
        if previous is None:
            row = {"collection_id": collection_id, "name": name, "target_index": index, "updated_at": utcnow()}
            self._send(_INSERT_ALIAS, row)
        else:
            key = {"alias_collection_id": collection_id, "alias_name": name}
            self._send(_MOVE_ALIAS, {**key, "new_index": index, "moved_at": utcnow()})

    def delete_alias(self, collection_id: int, name: str) -> int | None:
        existing = self.session.scalars(
            select(Alias).where(Alias.collection_id == collection_id, Alias.name == name)
        ).one_or_none()
        if existing is None:
            return None
        previous = existing.target_index
        self.session.delete(existing)
        self.session.flush()
        return previous

    # Links -------------------------------------------------------------------------------

    def find_link(self, link_id: int) -> Link | None:
        return self.session.get(Link, link_id)

    def find_link_to_version(self, registered_model_id: int, version_id: int) -> Link | None:
        return self.session.scalars(
            select(Link).where(Link.registered_model_id == registered_model_id, Link.version_id == version_id)
        ).one_or_none()

    def find_link_by_index(self, registered_model_id: int, index: int) -> Link | None:
        return self.session.scalars(_LINK_BY_INDEX, {"model_id": registered_model_id, "index": index}).one_or_none()

    def latest_link(self, registered_model_id: int) -> Link | None:
        return self.session.scalars(_LATEST_LINK, {"model_id": registered_model_id}).one_or_none()

    def add_link(self, link: Link) -> Link:
        self.session.add(link)
        self.session.flush()
        return link

    def list_links(self, registered_model_id: int, before_index: int | None, limit: int) -> Sequence[Link]:
        query = select(Link).where(Link.registered_model_id == registered_model_id)
        if before_index is not None:
            query = query.where(Link.index < before_index)
        return self.session.scalars(query.order_by(Link.index.desc()).limit(limit)).all()

    def count_links(self, registered_model_id: int) -> int:
        return self.session.scalars(
            select(func.count()).select_from(Link).where(Link.registered_model_id == registered_model_id)
        ).one()

    def delete_link(self, link: Link) -> None:
        self.session.execute(delete(Link).where(Link.id == link.id))

    def links_to_version(self, version_id: int) -> Sequence[Link]:
        return self.session.scalars(select(Link).where(Link.version_id == version_id).order_by(Link.id)).all()

    def delete_aliases_at(self, collection_id: int, index: int) -> list[str]:
        """Removes every alias naming ``index``; returns their names."""
        names = self.session.scalars(
            select(Alias.name).where(Alias.collection_id == collection_id, Alias.target_index == index)
        ).all()
        self.session.execute(delete(Alias).where(Alias.collection_id == collection_id, Alias.target_index == index))
        return sorted(names)

    def has_members(self, collection: Collection) -> bool:
        if collection.kind == CollectionKind.ARTIFACT.value:
            return self.count_versions(collection.id) > 0
        return self.count_links(collection.id) > 0

    def delete_collection(self, collection: Collection) -> None:
        """Deletes a collection with no committed versions or links, and its remaining rows."""
        # Only tombstones and pending versions remain, and deleting a version removed its links.
        version_ids = select(Version.id).where(Version.artifact_id == collection.id).scalar_subquery()
        self.session.execute(delete(RunInput).where(RunInput.version_id.in_(version_ids)))
        self.session.execute(delete(ManifestEntry).where(ManifestEntry.version_id.in_(version_ids)))
        self.session.execute(delete(Version).where(Version.artifact_id == collection.id))
        self.session.execute(delete(Alias).where(Alias.collection_id == collection.id))
        self.session.execute(delete(Link).where(Link.registered_model_id == collection.id))
        self.session.execute(delete(Collection).where(Collection.id == collection.id))

    def versions_beyond(self, artifact_id: int, keep_last: int) -> Sequence[Version]:
        """Committed versions older than the newest ``keep_last``."""
        return self.session.scalars(
            select(Version)
            .where(Version.artifact_id == artifact_id, Version.state == VersionState.COMMITTED.value)
            .order_by(Version.index.desc())
            .offset(keep_last)
        ).all()

    def is_linked(self, version_id: int) -> bool:
        return self.session.scalars(select(Link.id).where(Link.version_id == version_id).limit(1)).first() is not None

    def has_pending_versions(self, artifact_id: int) -> bool:
        return (
            self.session.scalars(
                select(Version.id)
                .where(Version.artifact_id == artifact_id, Version.state == VersionState.PENDING.value)
                .limit(1)
            ).first()
            is not None
        )

    def delete_unborn_artifacts(self, artifact_ids: Iterable[int]) -> None:
        """Deletes those of the artifacts that never committed a version and have no pending one left."""
        ids = list(artifact_ids)
        if not ids:
            return
        self.session.flush()
        self.session.execute(
            delete(Collection).where(
                Collection.id.in_(ids),
                Collection.kind == CollectionKind.ARTIFACT.value,
                Collection.next_index == 0,
                ~exists(select(Version.id).where(Version.artifact_id == Collection.id)),
            )
        )

    def expired_pending_versions(self, older_than: datetime) -> Sequence[Version]:
        return self.session.scalars(
            select(Version)
            .where(Version.state == VersionState.PENDING.value, Version.created_at < older_than)
            .order_by(Version.id)  # one order on every replica: concurrent expiries queue, not deadlock
        ).all()

    def referenced_digests(self, hashes: Sequence[str]) -> set[str]:
        """The hashes, out of those given, that a committed or pending version's manifest names."""
        live: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            live.update(
                self.session.scalars(
                    select(ManifestEntry.digest)
                    .join(Version, Version.id == ManifestEntry.version_id)
                    .where(
                        ManifestEntry.digest.in_(chunk),
                        Version.state.in_([VersionState.COMMITTED.value, VersionState.PENDING.value]),
                    )
                    .distinct()
                ).all()
            )
        return live

    # Garbage collection ------------------------------------------------------------------
    # The protocol is explained in metadata_service.catalog.garbage.

    def lock_gc_state(self) -> GcState:
        """The garbage collection state row, locked exclusively, as sweeps take it (commits share-lock it)."""
        return self.session.scalars(_LOCK_GC_STATE).one()

    def share_gc_state_and_condemned_since(self, hashes: Sequence[str], epoch: int) -> tuple[int, list[str]]:
        """Share-locks the garbage collection state row (as every commit does; a sweep locks it exclusively)
        and returns its ``pruned_through`` with the hashes, out of those given, that a sweep is deleting now
        or deleted after ``epoch``."""
        chunks = [hashes[start : start + _CONDEMNED_CHUNK] for start in range(0, len(hashes), _CONDEMNED_CHUNK)]
        taken: list[str] = []
        if self._dialect != "postgresql" and chunks:
            # The write transaction began holding SQLite's write lock, so no sweep can come in between:
            # the lock and the first chunk of hashes take one statement.
            count, parameters = _hash_parameters(chunks.pop(0))
            rows = self._send(_share_gc_state_with_condemned(count), {**parameters, "epoch": epoch})
            pruned_through = int(rows[0][0])
            taken.extend(digest for _, digest in rows if digest is not None)
        elif self._shared_gc_pruned_through is not None:
            pruned_through = self._shared_gc_pruned_through  # share-locked with the latest digest
        else:
            # A share lock that waited for a sweep's transaction must be followed by a read with a new
            # snapshot, or the blobs that sweep condemned stay invisible (see lock_version_for_commit).
            pruned_through = int(self._send_for_value(_SHARE_GC_STATE, {}))
        for chunk in chunks:
            count, parameters = _hash_parameters(chunk)
            taken.extend(digest for (digest,) in self._send(_condemned_since(count), {**parameters, "epoch": epoch}))
        return pruned_through, taken

    def condemn(self, blobs: Sequence[tuple[str, int]]) -> None:
        """Marks blobs as being deleted; commits naming them are refused until the sweep finishes."""
        if not blobs:
            return
        make_insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        statement = make_insert(CondemnedBlob)
        statement = statement.on_conflict_do_update(
            index_elements=[CondemnedBlob.digest],
            set_={"deleted_epoch": None, "condemned_at": statement.excluded.condemned_at},
        )
        now = utcnow()
        self.session.execute(
            statement, [{"digest": h, "size_bytes": s, "deleted_epoch": None, "condemned_at": now} for h, s in blobs]
        )

    def condemned_in_progress(self) -> list[tuple[str, int]]:
        return [
            (row.digest, row.size_bytes)
            for row in self.session.execute(
                select(CondemnedBlob.digest, CondemnedBlob.size_bytes).where(CondemnedBlob.deleted_epoch.is_(None))
            )
        ]

    def close_condemnation(self, state: GcState, deleted: Sequence[str], released: Sequence[str] = ()) -> int:
        """Records in a new epoch that these blobs were deleted, and forgets the condemnation of
        ``released`` ones, which were not (the caller holds the lock)."""
        state.epoch += 1
        for start in range(0, len(deleted), 500):
            self.session.execute(
                update(CondemnedBlob)
                .where(CondemnedBlob.digest.in_(list(deleted[start : start + 500])))
                .values(deleted_epoch=state.epoch)
            )
        for start in range(0, len(released), 500):
            self.session.execute(
                delete(CondemnedBlob).where(
                    CondemnedBlob.digest.in_(list(released[start : start + 500])),
                    CondemnedBlob.deleted_epoch.is_(None),
                )
            )
        return state.epoch

    def prune_condemned(self, state: GcState, older_than: datetime) -> None:
        """Forgets deletions condemned before ``older_than``; commits older than them are refused."""
        newest = self.session.execute(
            select(func.max(CondemnedBlob.deleted_epoch)).where(
                CondemnedBlob.deleted_epoch.is_not(None), CondemnedBlob.condemned_at < older_than
            )
        ).scalar_one_or_none()
        if newest is None:
            return
        self.session.execute(delete(CondemnedBlob).where(CondemnedBlob.deleted_epoch <= newest))
        state.pruned_through = max(state.pruned_through, newest)

    # Idempotency ---------------------------------------------------------------------------

    def record_request(self, request: PendingRequest) -> bool:
        """Records a mutation's request id with its result; False if the id is already recorded.

        A concurrent transaction recording the same id makes this wait until it ends.
        """
        record = {
            "request_id": request.request_id,
            "method": request.method,
            "fingerprint": request.fingerprint,
            "result": request.result,
            "created_at": utcnow(),
        }
        return self._insert_ignoring_conflict(RequestRecord, record) is not None

    def request_record(self, request_id: str) -> RequestRecord | None:
        return self.session.get(RequestRecord, request_id)

    def forget_requests(self, older_than: datetime) -> int:
        result = self.session.execute(delete(RequestRecord).where(RequestRecord.created_at < older_than))
        return int(getattr(result, "rowcount", 0))

    # Periodic task leases ---------------------------------------------------------------
    # How the janitors of several replicas share work: see metadata_service.catalog.tasks.

    def take_task_lease(self, name: str, owner: str, now: datetime, until: datetime) -> bool:
        """Gives ``owner`` the lease on task ``name`` until ``until`` if it is free (or lapsed) and due.

        One conditional UPDATE decides, so of replicas asking at once exactly one wins: on
        PostgreSQL the others wait for its row lock and then find the condition false; on
        SQLite write transactions are exclusive.
        """
        self._insert_ignoring_conflict(TaskLease, {"name": name})
        result = self.session.execute(
            update(TaskLease)
            .where(
                TaskLease.name == name,
                or_(TaskLease.owner.is_(None), TaskLease.lease_until.is_(None), TaskLease.lease_until < now),
                or_(TaskLease.next_run_at.is_(None), TaskLease.next_run_at <= now),
            )
            .values(owner=owner, lease_until=until)
        )
        return bool(getattr(result, "rowcount", 0))

    def release_task_lease(self, name: str, owner: str, next_run_at: datetime) -> bool:
        """Frees the lease if ``owner`` still holds it, and sets when the task is next due."""
        result = self.session.execute(
            update(TaskLease)
            .where(TaskLease.name == name, TaskLease.owner == owner)
            .values(owner=None, lease_until=None, next_run_at=next_run_at)
        )
        return bool(getattr(result, "rowcount", 0))

    def schedule_task(self, name: str, next_run_at: datetime) -> bool:
        """Sets when task ``name`` is first due, unless it has a schedule already; True if this set it."""
        self._insert_ignoring_conflict(TaskLease, {"name": name})
        result = self.session.execute(
            update(TaskLease)
            .where(TaskLease.name == name, TaskLease.next_run_at.is_(None), TaskLease.owner.is_(None))
            .values(next_run_at=next_run_at)
        )
        return bool(getattr(result, "rowcount", 0))

    def task_lease(self, name: str) -> TaskLease | None:
        return self.session.get(TaskLease, name, populate_existing=True)

    # Events --------------------------------------------------------------------------------

    def append_events(
        self, events: Sequence[PendingEvent], actor: str, requests: Sequence[PendingRequest] = ()
    ) -> bool:
        """Appends the transaction's events, after recording ``requests``; False (and nothing appended) if
        an earlier request holds one of their ids."""
        # Changes still pending in the session go first: the counter row's lock, taken here, is
        # then held only until the COMMIT that follows.
        self.session.flush()
        now = utcnow()
        if self._dialect == "postgresql" and events:
            # One round trip records the request id, takes the counter row's lock and the sequence
            # numbers, inserts the events and queues the notification that every replica LISTENing
            # (db.follow_commits) gets at commit, so their Watch streams see the events now rather than
            # at their next poll.
            described = [
                {
                    "kind": e.kind,
                    "resource": e.resource,
                    "before": e.before,
                    "after": e.after,
                    "collection_id": _collection_column(e),
                }
                for e in events
            ]
            appended = {"count": len(events), "events": json.dumps(described), "actor": actor, "created_at": now}
            if not requests:
                self._send(_APPEND_EVENTS_POSTGRESQL, appended)
                return True
            recording = {
                "requests": json.dumps(
                    [
                        {
                            "request_id": request.request_id,
                            "method": request.method,
                            "fingerprint": request.fingerprint,
                            "result": request.result,
                        }
                        for request in requests
                    ]
                ),
                "request_count": len(requests),
            }
            recorded = self._send_for_value(_APPEND_EVENTS_RECORDING_REQUESTS_POSTGRESQL, appended | recording)
            return recorded == len(requests)
        if not all(self.record_request(request) for request in requests):
            return False
        if not events:
            return True
        # One statement takes the counter row's lock and the sequence numbers.
        last = self._send_for_value(_TAKE_SEQUENCES, {"count": len(events)})
        first = int(last) - len(events) + 1
        self._send(
            _INSERT_EVENT,
            [
                {
                    "sequence": first + i,
                    "kind": e.kind,
                    "resource": e.resource,
                    "before": e.before,
                    "after": e.after,
                    "actor": actor,
                    "created_at": now,
                    "collection_id": _collection_column(e),
                }
                for i, e in enumerate(events)
            ],
        )
        return True

    def events_after(self, sequence: int, resource_prefix: str, limit: int) -> Sequence[Event]:
        query = select(Event).where(Event.sequence > sequence)
        if resource_prefix:
            # Whole path segments, case-sensitive on every database (SQLite's LIKE is not), as
            # Watch's in-memory feed compares: see event_feed.matches_prefix.
            starts = func.substr(Event.resource, 1, len(resource_prefix)) == resource_prefix
            if not resource_prefix.endswith(SEGMENT_ENDS):
                following = func.substr(Event.resource, len(resource_prefix) + 1, 1)
                starts = and_(starts, or_(Event.resource == resource_prefix, following.in_(SEGMENT_ENDS)))
            query = query.where(starts)
        return self.session.scalars(query.order_by(Event.sequence).limit(limit)).all()

    def last_event_sequence(self) -> int:
        return self.session.scalars(select(EventCounter.last_sequence).where(EventCounter.id == 1)).one()

    def resource_events(self, resource: str, before_sequence: int | None, limit: int) -> Sequence[Event]:
        query = select(Event).where(Event.resource == resource)
        if before_sequence is not None:
            query = query.where(Event.sequence < before_sequence)
        return self.session.scalars(query.order_by(Event.sequence.desc()).limit(limit)).all()

    # Lineage -------------------------------------------------------------------------------

    def add_run_input(self, run: str, version_id: int) -> None:
        self._insert_ignoring_conflict(RunInput, {"run": run, "version_id": version_id, "created_at": utcnow()})

    def consumer_runs(self, version_id: int) -> list[str]:
        return sorted(set(self.session.scalars(select(RunInput.run).where(RunInput.version_id == version_id)).all()))

    def links_to(self, version_id: int) -> list[tuple[str, str, str, int]]:
        """The links to a version, as (entity, project, registered model, link index)."""
        rows = self.session.execute(
            select(Entity.name, Project.name, Collection.name, Link.index)
            .join(Collection, Collection.id == Link.registered_model_id)
            .join(Project, Project.id == Collection.project_id)
            .join(Entity, Entity.id == Project.entity_id)
            .where(Link.version_id == version_id)
        ).all()
        return sorted((entity, project, model, index) for entity, project, model, index in rows)

    def run_inputs(self, run: str) -> Sequence[Version]:
        return self.session.scalars(
            select(Version).join(RunInput, RunInput.version_id == Version.id).where(RunInput.run == run)
        ).all()

    def run_outputs(self, run: str) -> Sequence[Version]:
        return self.session.scalars(
            select(Version).where(Version.producer_run == run, Version.state == VersionState.COMMITTED.value)
        ).all()

    # Tokens --------------------------------------------------------------------------------

    def create_token(self, values: dict[str, Any]) -> Token | None:
        """Stores a token; returns None if its name (or, never in practice, its hash) is taken."""
        new_id = self._insert_ignoring_conflict(Token, values)
        return None if new_id is None else self.session.get_one(Token, new_id)

    def find_token_by_hash(self, secret_hash: str) -> Token | None:
        return self.session.scalars(select(Token).where(Token.secret_hash == secret_hash)).one_or_none()

    def find_token(self, name: str, *, for_update: bool = False) -> Token | None:
        query = select(Token).where(Token.name == name)
        if for_update:
            query = query.with_for_update()
        return self.session.scalars(query).one_or_none()

    def list_tokens(self, after_name: str | None, limit: int) -> Sequence[Token]:
        query = select(Token)
        if after_name is not None:
            query = query.where(Token.name > after_name)
        return self.session.scalars(query.order_by(Token.name).limit(limit)).all()

    def has_tokens(self) -> bool:
        return self.session.scalars(select(Token.id).limit(1)).first() is not None

    # Search --------------------------------------------------------------------------------

    def _json_value(self, column: Any, path: tuple[str, ...], kind: str) -> ColumnElement[Any]:
        """A typed JSON value at ``path``, or NULL where the value has another type.

        The type guard keeps comparisons honest: on SQLite any text sorts above any
        number, and on PostgreSQL casting text to a number would fail the query.
        """
        if self._dialect == "postgresql":
            node = func.jsonb_extract_path(column, *path)
            json_type = {"number": "number", "text": "string", "bool": "boolean"}[kind]
            text_value = func.jsonb_extract_path_text(column, *path)
            typed: ColumnElement[Any] = {
                "number": cast(text_value, Float),
                "text": text_value,
                "bool": cast(text_value, Boolean),
            }[kind]
            return case((func.jsonb_typeof(node) == json_type, typed), else_=null())
        json_path = "$" + "".join(f'."{key}"' for key in path)
        sqlite_types = {"number": ("integer", "real"), "text": ("text",), "bool": ("true", "false")}[kind]
        return case(
            (func.json_type(column, json_path).in_(sqlite_types), func.json_extract(column, json_path)),
            else_=null(),
        )

    def _json_list_contains(self, column: Any, value: str) -> ColumnElement[bool]:
        if self._dialect == "postgresql":
            return column.op("@>", is_comparison=True)(func.jsonb_build_array(value))
        items = func.json_each(column).table_valued("value")
        return exists(select(literal(1)).select_from(items).where(items.c.value == value))

    def _compile(self, node: filters.Node, artifact_id: int) -> ColumnElement[bool]:
        if isinstance(node, filters.And):
            return and_(*(self._compile(item, artifact_id) for item in node.items))
        if isinstance(node, filters.Or):
            return or_(*(self._compile(item, artifact_id) for item in node.items))
        if isinstance(node, filters.Not):
            return not_(self._compile(node.item, artifact_id))
        expression = self._compile_comparison(node, artifact_id)
        return expression

    def _compile_comparison(self, node: filters.Comparison, artifact_id: int) -> ColumnElement[bool]:
        field, op, value = node.field, node.op, node.value
        if field == "alias":
            if value == "latest":
                newest = (
                    select(func.max(Version.index))
                    .where(Version.artifact_id == artifact_id, Version.state == VersionState.COMMITTED.value)
                    .scalar_subquery()
                )
                matched: ColumnElement[bool] = Version.index == newest
            else:
                matched = exists(
                    select(Alias.id).where(
                        Alias.collection_id == artifact_id, Alias.name == value, Alias.target_index == Version.index
                    )
                )
            return matched if op == "=" else not_(matched)
        if field == "tag":
            contained = self._json_list_contains(Version.tags, str(value))
            return contained if op == "=" else not_(contained)
        if field == "state":
            return _compare(Version.state, op, value)
        if field == "run":
            return _compare(Version.producer_run, op, value)
        columns = {
            "index": Version.index,
            "size_bytes": Version.size_bytes,
            "file_count": Version.file_count,
            "create_time": Version.created_at,
            "commit_time": Version.committed_at,
        }
        if field in columns:
            return _compare(columns[field], op, value)
        kind = "bool" if isinstance(value, bool) else "number" if isinstance(value, float) else "text"
        return _compare(self._json_value(Version.metadata_doc, node.path, kind), op, value)

    def _order_column(self, key: filters.OrderKey) -> ColumnElement[Any]:
        if key.field == "metadata":
            return self._json_value(Version.metadata_doc, key.path, "number")
        columns: dict[str, Any] = {
            "index": Version.index,
            "create_time": Version.created_at,
            "size_bytes": Version.size_bytes,
        }
        return columns[key.field]

    def search_versions(
        self,
        artifact_id: int,
        where: filters.Node | None,
        order: filters.OrderKey,
        after: tuple[Any, int] | None,
        limit: int,
    ) -> list[tuple[Version, Any]]:
        """Versions matching a filter, in order, after a keyset position; with each row's sort value.

        Rows whose sort value is NULL (a missing metadata key) come last in either
        direction; ties go by index, newest first.
        """
        sort = self._order_column(order)
        query = select(Version, sort.label("sort_value")).where(
            Version.artifact_id == artifact_id, Version.state != VersionState.PENDING.value
        )
        if not filters.mentions_state(where):
            query = query.where(Version.state == VersionState.COMMITTED.value)
        if where is not None:
            query = query.where(self._compile(where, artifact_id))
        if after is not None:
            last_value, last_index = after
            if order.field == "create_time" and last_value is not None:
                last_value = datetime.fromisoformat(last_value)
            if last_value is None:
                query = query.where(sort.is_(None), Version.index < last_index)
            else:
                beyond = sort < last_value if order.descending else sort > last_value
                query = query.where(or_(beyond, and_(sort == last_value, Version.index < last_index), sort.is_(None)))
        direction = sort.desc() if order.descending else sort.asc()
        query = query.order_by(sort.is_(None), direction, Version.index.desc()).limit(limit)
        return [(row[0], row[1]) for row in self.session.execute(query).all()]

    def search_collections(
        self,
        project: Project,
        kind: CollectionKind,
        where: filters.Node | None,
        after: str | None,
        limit: int,
    ) -> Sequence[Collection]:
        """The project's collections of one kind matching a filter, by name, after a keyset position."""
        query = select(Collection).where(Collection.project_id == project.id, Collection.kind == kind.value)
        if kind is CollectionKind.ARTIFACT:
            query = query.where(Collection.next_index > 0)  # unborn artifacts are invisible
        if where is not None:
            query = query.where(self._compile_collection_filter(where))
        if after is not None:
            query = query.where(Collection.name > after)
        return self.session.scalars(query.order_by(Collection.name).limit(limit)).all()

    def _compile_collection_filter(self, node: filters.Node) -> ColumnElement[bool]:
        if isinstance(node, filters.And):
            return and_(*(self._compile_collection_filter(item) for item in node.items))
        if isinstance(node, filters.Or):
            return or_(*(self._compile_collection_filter(item) for item in node.items))
        if isinstance(node, filters.Not):
            return not_(self._compile_collection_filter(node.item))
        field, op, value = node.field, node.op, node.value
        if field == "tag":
            contained = self._json_list_contains(Collection.tags, str(value))
            return contained if op == "=" else not_(contained)
        if field == "name" and op in ("=", "!=") and isinstance(value, str) and value.endswith("*"):
            # AIP-160's wildcard: name = "res*" matches every name starting with "res".
            prefixed = Collection.name.startswith(value[:-1], autoescape=True)
            return prefixed if op == "=" else not_(prefixed)
        columns = {"name": Collection.name, "type": Collection.type, "create_time": Collection.created_at}
        return _compare(columns[field], op, value)


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    operators: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return operators[op](column, value)


# Resolve, the hottest read, on a bare connection -----------------------------------------
# ORM sessions, identity maps and one statement per relation cost more than the indexed
# lookups themselves; these statements fetch a resolve's rows in one round trip (three for a link).

_VERSION_COLUMNS = (
    Version.id.label("id"),
    Version.uid.label("uid"),
    Version.index.label("index"),
    Version.state.label("state"),
    Version.digest.label("digest"),
    Version.size_bytes.label("size_bytes"),
    Version.file_count.label("file_count"),
    Version.description.label("description"),
    Version.tags.label("tags"),
    Version.metadata_doc.label("metadata_doc"),
    Version.created_at.label("created_at"),
    Version.committed_at.label("committed_at"),
    Version.producer_run.label("producer_run"),
)
_LATEST_MEMBER = case(
    (
        Collection.kind == CollectionKind.ARTIFACT.value,
        select(func.max(Version.index))
        .where(Version.artifact_id == Collection.id, _COMMITTED)
        .correlate(Collection)
        .scalar_subquery(),
    ),
    else_=select(func.max(Link.index))
    .where(Link.registered_model_id == Collection.id)
    .correlate(Collection)
    .scalar_subquery(),
)
# One row per alias (or one row with NULL alias columns): the collection, its latest index and aliases.
_CONTEXT_COLUMNS = select(
    Collection.id.label("id"),
    Collection.kind.label("kind"),
    Collection.type.label("type"),
    Collection.name.label("name"),
    Collection.next_index.label("next_index"),
    Collection.protected_aliases.label("protected_aliases"),
    Project.name.label("project"),
    Entity.name.label("entity"),
    _LATEST_MEMBER.label("latest"),
    Alias.name.label("alias"),
    Alias.target_index.label("alias_target"),
).select_from(
    Collection.__table__.join(Project.__table__, Project.id == Collection.project_id)
    .join(Entity.__table__, Entity.id == Project.entity_id)
    .outerjoin(Alias.__table__, Alias.collection_id == Collection.id)
)
_CONTEXT_BY_NAME = _CONTEXT_COLUMNS.where(
    Entity.name == bindparam("entity"), Project.name == bindparam("project"), Collection.name == bindparam("name")
)
_CONTEXT_BY_ID = _CONTEXT_COLUMNS.where(Collection.id == bindparam("collection_id"))
# An artifact's resolve in one statement: the context rows above, each carrying the columns
# (prefixed "v_") of the committed version the reference selects, NULL if it selects none.
_SELECTED_ALIAS = Alias.__table__.alias("selected_alias")
_SELECTED_VERSION = Version.__table__.alias("selected_version")
_INDEX_PARAM = bindparam("index", type_=Integer)
_SELECTED_INDEX = case(
    (_INDEX_PARAM.is_not(None), _INDEX_PARAM),
    (bindparam("alias", type_=String) == LATEST, _LATEST_MEMBER),
    else_=select(_SELECTED_ALIAS.c.target_index)
    .where(_SELECTED_ALIAS.c.collection_id == Collection.id, _SELECTED_ALIAS.c.name == bindparam("alias"))
    .correlate(Collection)
    .scalar_subquery(),
)
_CONTEXT_AND_VERSION_BY_NAME = _CONTEXT_BY_NAME.add_columns(
    *(_SELECTED_VERSION.c[column.element.name].label(f"v_{column.name}") for column in _VERSION_COLUMNS)
).outerjoin(
    _SELECTED_VERSION,
    and_(
        _SELECTED_VERSION.c.artifact_id == Collection.id,
        _SELECTED_VERSION.c.state == VersionState.COMMITTED.value,
        _SELECTED_VERSION.c["index"] == _SELECTED_INDEX,
    ),
)
# The same rows on PostgreSQL, the version found by a LATERAL subquery: an index probe per
# collection row, whatever the statistics say. From the outer join above, PostgreSQL's generic
# plan (the one a statement prepared by psycopg runs after its fifth use) may hash every committed
# version of every artifact instead, and does whenever the versions table's statistics are stale
# or missing, as on a new or fast-growing database: then each resolve reads the whole table.
# LIMIT 1 (at most one row matches anyway) keeps the planner from flattening the subquery back
# into that join. SQLite has no LATERAL, and its planner only nests loops.
_SELECTED_VERSION_LATERAL = (
    select(*(_SELECTED_VERSION.c[column.element.name].label(f"v_{column.name}") for column in _VERSION_COLUMNS))
    .where(
        _SELECTED_VERSION.c.artifact_id == Collection.id,
        _SELECTED_VERSION.c.state == VersionState.COMMITTED.value,
        _SELECTED_VERSION.c["index"] == _SELECTED_INDEX,
    )
    .correlate(Collection)
    .limit(1)
    .lateral("selected")
)
_CONTEXT_AND_VERSION_BY_NAME_LATERAL = _CONTEXT_BY_NAME.add_columns(*_SELECTED_VERSION_LATERAL.c).outerjoin(
    _SELECTED_VERSION_LATERAL, true()
)
_LINKED_VERSION_BY_INDEX = (
    select(
        Link.index.label("link_index"),
        Link.created_at.label("link_created_at"),
        Version.artifact_id.label("artifact_id"),
        *_VERSION_COLUMNS,
    )
    .join(Version, Version.id == Link.version_id)
    .where(Link.registered_model_id == bindparam("model_id"), Link.index == bindparam("index"))
)
_MANIFEST_ROWS = select(
    ManifestEntry.path, ManifestEntry.digest, ManifestEntry.size_bytes, ManifestEntry.metadata_doc
).where(ManifestEntry.version_id == bindparam("version_id"))

_LAST_EVENT_SEQUENCE = select(_table(EventCounter).c.last_sequence).where(_table(EventCounter).c.id == 1)


_events = _table(Event)


def _last_event_where(condition: Any) -> Any:
    """The sequence of the last event meeting ``condition`` (NULL if none): one step down an index."""
    return select(_events.c.sequence).where(condition).order_by(_events.c.sequence.desc()).limit(1).scalar_subquery()


_LAST_EVENTS = select(
    _LAST_EVENT_SEQUENCE.scalar_subquery().label("last"),
    _last_event_where(_events.c.collection_id == bindparam("first")).label("first"),
    _last_event_where(_events.c.collection_id == bindparam("second")).label("second"),
    _last_event_where(_events.c.collection_id.is_(None)).label("unknown"),
)
_GC_EPOCH = select(_table(GcState).c.epoch).where(_table(GcState).c.id == 1)


def read_gc_epoch(connection: Connection) -> int:
    """The garbage collector's epoch, on a bare connection (see metadata_service.catalog.garbage)."""
    return int(connection.execute(_GC_EPOCH).scalar_one())


def _last_events_of(row: Any) -> tuple[int, int]:
    """The last sequence, and the latest of the three last events, from a row of ``_LAST_EVENTS``."""
    last, first, second, unknown = row
    return int(last), max(first or 0, second or 0, unknown or 0)


class DriverStatement:
    """A Core statement compiled once for one dialect, sent straight through the database driver with what
    SQLAlchemy's execution would add: the columns' Python-side defaults (an INSERT's or UPDATE's columns
    left out) and the types' bind processing (JSON, timestamps).

    For the statements every mutation sends: through a session, each costs about 85 µs of Python on SQLite
    against 6 µs through the driver's cursor (an UPDATE … RETURNING, measured in-process). Result rows come
    back as the driver gives them, so only statements returning integers and strings go this way.
    """

    def __init__(self, statement: Any, dialect: Any, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        self.sql = str(compiled)
        # A statement whose parameters SQLAlchemy expands at execution ("POSTCOMPILE") cannot be sent as compiled.
        assert "POSTCOMPILE" not in self.sql, f"not sendable through the driver as compiled: {self.sql}"
        self._constants = {name: bind.value for name, bind in compiled.binds.items() if bind.value is not None}
        self._generated = [
            (column.key, default.arg)
            for columns, kind in ((compiled.insert_prefetch, "default"), (compiled.update_prefetch, "onupdate"))
            for column in columns
            if (default := getattr(column, kind)) is not None
        ]
        self._processors = [
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        self._order = list(compiled.positiontup) if compiled.positiontup is not None else None

    def parameters(self, values: dict[str, Any]) -> Any:
        """The driver's parameters for ``values`` (by bind name): a sequence or a mapping, as its paramstyle asks."""
        merged = self._constants | values
        for name, default in self._generated:
            if name not in values:
                merged[name] = default(None) if callable(default) else default
        for name, process in self._processors:
            if name in merged:
                merged[name] = process(merged[name])
        return merged if self._order is None else [merged[name] for name in self._order]


@functools.cache
def _driver_statement(statement: Any, dialect: Any, column_keys: tuple[str, ...] | None = None) -> DriverStatement:
    return DriverStatement(statement, dialect, column_keys)


class DriverReads:
    """The check a resolve answered from memory makes (``ResolveReads.last_events``), sent straight through
    the database driver on a connection of its own.

    It is the only statement such a resolve sends, and SQLAlchemy's connection, transaction and result
    handling around it cost more than the statement: 156 µs against 34 on SQLite, 345 against 140 on
    PostgreSQL (one statement per call, measured in-process). Borrowing a connection from the pool and
    giving it back (checkout, reset, return) still cost as much again in the service, so the check keeps
    up to ``KEPT_CONNECTIONS`` driver connections apart from the pool, in autocommit, each used by one
    check at a time; checks beyond those borrow from the pool. The statement is compiled once for the
    engine's dialect. A driver error closes the connection and answers None, so the caller takes the
    regular path, which reconnects, retries and reports the error as every other read does.
    """

    # Concurrent checks are bounded by the cores more than by the threads: a few connections serve them.
    KEPT_CONNECTIONS = 4

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._statement = DriverStatement(_LAST_EVENTS, engine.dialect)
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # Autocommit on PostgreSQL, as the regular reader's connections: no BEGIN and ROLLBACK round trips.
        # SQLite's connections already leave transactions to explicit BEGINs (metadata_service.db).
        self._autocommit = engine.dialect.name == "postgresql"
        # Idle kept connections; list.pop and list.append are atomic, so checks take and return them unlocked.
        self._idle: list[Any] = []
        self._kept = 0
        self._kept_lock = threading.Lock()

    def last_events(self, collection_ids: tuple[int, int]) -> tuple[int, int] | None:
        """As ``ResolveReads.last_events``; None if the driver failed (the connection is closed)."""
        try:
            driver = self._idle.pop()
        except IndexError:
            driver = self._keep_another()
        if driver is None:
            return self._through_the_pool(collection_ids)
        try:
            row = self._select(driver, collection_ids)
        except self._driver_error:
            self._forget(driver)
            return None
        except BaseException:
            self._forget(driver)  # in a state not known: never used again
            raise
        self._idle.append(driver)
        return _last_events_of(row)

    def _keep_another(self) -> Any:
        """A new driver connection in autocommit, or None if ``KEPT_CONNECTIONS`` are open already (or
        the database cannot be reached: the pool's path then reports it)."""
        with self._kept_lock:
            if self._kept >= self.KEPT_CONNECTIONS:
                return None
            self._kept += 1
        try:
            # Made by the engine, so its connect hooks (SQLite's pragmas) have run, then taken out of the pool.
            pooled = self._engine.raw_connection()
            driver: Any = pooled.driver_connection
            pooled.detach()
            if self._autocommit:
                driver.autocommit = True
            return driver
        except (DBAPIError, self._driver_error):
            self._release_place()
            return None

    def _forget(self, driver: Any) -> None:
        self._release_place()
        with contextlib.suppress(Exception):
            driver.close()

    def _release_place(self) -> None:
        with self._kept_lock:
            self._kept -= 1

    def _select(self, driver: Any, collection_ids: tuple[int, int]) -> Any:
        cursor = driver.cursor()
        try:
            first, second = collection_ids
            cursor.execute(self._statement.sql, self._statement.parameters({"first": first, "second": second}))
            return cursor.fetchone()  # one row: the statement selects scalar subqueries only
        finally:
            cursor.close()

    def _through_the_pool(self, collection_ids: tuple[int, int]) -> tuple[int, int] | None:
        """The check on a pooled connection, while every kept one is busy."""
        try:
            connection = self._engine.raw_connection()
        except (DBAPIError, self._driver_error):
            return None
        try:
            driver: Any = connection.driver_connection
            if self._autocommit:
                driver.autocommit = True
            row = self._select(driver, collection_ids)
            if self._autocommit:
                driver.autocommit = False
        except self._driver_error:
            connection.invalidate()
            return None
        except BaseException:
            connection.invalidate()  # in a state not known (autocommit left on?): never back into the pool
            raise
        finally:
            connection.close()
        return _last_events_of(row)

    def close(self) -> None:
        """Closes the kept connections; once no check runs (a server stops after its calls have ended), as a
        check in flight would put its connection back afterwards."""
        while self._idle:
            self._forget(self._idle.pop())


class ResolveReads:
    """The reads a resolve makes, as Core statements on one connection (no ORM session).

    Rows come back as named tuples whose fields carry the ORM attributes' names
    (``uid``, ``metadata_doc``…), so the views built from ORM rows accept them too.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def context_and_version_by_name(
        self, name: CollectionName, index: int | None, alias: str | None
    ) -> Sequence[Row[Any]]:
        """A collection with its latest index, one row per alias (none if there is no such collection),
        each with the committed version the selector names (``v_*`` columns, NULL if there is none or the
        collection is a registered model): an artifact's resolve in one round trip."""
        statement = (
            _CONTEXT_AND_VERSION_BY_NAME_LATERAL
            if self.connection.dialect.name == "postgresql"
            else _CONTEXT_AND_VERSION_BY_NAME
        )
        return self.connection.execute(
            statement,
            {"entity": name.entity, "project": name.project, "name": name.name, "index": index, "alias": alias},
        ).all()

    def last_event_sequence(self) -> int:
        """The event log's last sequence number: it moves with every transaction that changes what a resolve shows."""
        return int(self.connection.execute(_LAST_EVENT_SEQUENCE).scalar_one())

    def last_events(self, collection_ids: tuple[int, int]) -> tuple[int, int]:
        """The event log's last sequence number, and that of the last event which changed either of two
        collections, or whose collection is unknown (0 if none), read together in one statement."""
        row = self.connection.execute(_LAST_EVENTS, {"first": collection_ids[0], "second": collection_ids[1]}).one()
        return _last_events_of(row)

    def context_by_id(self, collection_id: int) -> Sequence[Row[Any]]:
        """A collection with its latest index, one row per alias; empty if there is no such collection."""
        return self.connection.execute(_CONTEXT_BY_ID, {"collection_id": collection_id}).all()

    def linked_version(self, model_id: int, index: int) -> Row[Any] | None:
        """A registered model's link by index, with the version it links."""
        return self.connection.execute(_LINKED_VERSION_BY_INDEX, {"model_id": model_id, "index": index}).one_or_none()

    def manifest(self, version_id: int) -> list[FileEntry]:
        rows = self.connection.execute(_MANIFEST_ROWS, {"version_id": version_id}).all()
        entries = [FileEntry(path, digest, size, metadata) for path, digest, size, metadata in rows]
        entries.sort(key=lambda e: e.path.encode())
        return entries
