"""The database schema, as SQLAlchemy ORM classes.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``; these classes must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Entity(Base):
    __tablename__ = "entities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("entity_id", "name", name="uq_projects_entity_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Collection(Base):
    """An artifact (kind 'artifact') or a registered model (kind 'registered_model').

    Both share one namespace per project and one numbering counter, ``next_index``:
    of versions for an artifact, of links for a registered model. Updating the counter
    is what serializes concurrent commits to one collection.
    """

    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_collections_project_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    tags: Mapped[list[str]] = mapped_column(JsonDocument, default=list, server_default="[]")
    protected_aliases: Mapped[list[str]] = mapped_column(JsonDocument, default=list, server_default="[]")
    retention_keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("artifact_id", "index", name="uq_versions_artifact_index"),
        Index("ix_versions_artifact_state_index", "artifact_id", "state", "index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("collections.id"))
    index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    metadata_doc: Mapped[dict[str, Any]] = mapped_column("metadata", JsonDocument, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    producer_run: Mapped[str | None] = mapped_column(String(400), nullable=True, index=True)


class ManifestEntry(Base):
    __tablename__ = "manifest_entries"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metadata_doc: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonDocument, nullable=True)


class Link(Base):
    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("registered_model_id", "index", name="uq_links_model_index"),
        UniqueConstraint("registered_model_id", "version_id", name="uq_links_model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registered_model_id: Mapped[int] = mapped_column(ForeignKey("collections.id"))
    index: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Alias(Base):
    """A user alias in a collection, naming a version index (artifact) or link index."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("collection_id", "name", name="uq_aliases_collection_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id"))
    name: Mapped[str] = mapped_column(String(64))
    target_index: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class RequestRecord(Base):
    """The outcome of an idempotent mutation, kept so a retry returns it instead of acting again."""

    __tablename__ = "request_records"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class EventCounter(Base):
    """One row holding the last event sequence; updating it orders events by commit."""

    __tablename__ = "event_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_collection_sequence", "collection_id", "sequence"),)

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(600), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    actor: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The collection the event changed: 0 for none (a run's inputs), NULL if unknown (written before this
    # column, or by an older replica). No foreign key: a deleted collection's events stay in the log.
    collection_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RunInput(Base):
    """A version a run used."""

    __tablename__ = "run_inputs"
    __table_args__ = (UniqueConstraint("run", "version_id", name="uq_run_inputs_run_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run: Mapped[str] = mapped_column(String(400), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GcState(Base):
    """One row coordinating garbage collection with commits.

    ``epoch`` counts completed deletion steps. A commit reads it before asking the blob
    service whether its content is stored, and in its transaction refuses content that a
    sweep condemned or deleted after that read. ``pruned_through`` is the newest epoch
    whose deletion records were forgotten; a commit older than that is refused too.
    ``lease_owner``/``lease_until`` keep sweeps to one replica at a time.
    """

    __tablename__ = "gc_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class TaskLease(Base):
    """Which replica runs a periodic task (``owner``, until ``lease_until``), and when it is next due.

    Every replica runs a janitor; a replica runs a task only while it holds the task's
    lease, so one runs it at a time, and another takes over once a dead holder's lease
    lapses. ``next_run_at`` makes a task run once per interval across all replicas.
    """

    __tablename__ = "task_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class CondemnedBlob(Base):
    """A blob a sweep is deleting (``deleted_epoch`` NULL) or deleted (at ``deleted_epoch``)."""

    __tablename__ = "condemned_blobs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    deleted_epoch: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    condemned_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Token(Base):
    """A token callers authenticate with. Only the SHA-256 of its secret is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(300))
    creator: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
