"""All SQL of the metadata service: one repository over one session.

Nothing outside this module builds queries. Methods return ORM rows; the service layer
turns them into views before the transaction ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from metadata_service.domain import CollectionKind, VersionState
from metadata_service.manifest import FileEntry
from metadata_service.models import Alias, Collection, Entity, Link, ManifestEntry, Project, Version, utcnow
from metadata_service.references import CollectionName, ProjectName


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._dialect = session.get_bind().dialect.name

    def _insert_ignoring_conflict(self, model: Any, values: dict[str, Any]) -> int | None:
        """INSERTs a row unless a unique key is taken; returns the new id, or None.

        This is how concurrent create-on-first-use stays free of integrity errors.
        """
        make_insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        statement = make_insert(model).values(**values).on_conflict_do_nothing().returning(model.id)
        return self.session.execute(statement).scalar_one_or_none()

    # Entities and projects -------------------------------------------------------------

    def find_project(self, name: ProjectName) -> Project | None:
        return self.session.scalars(
            select(Project)
            .join(Entity, Entity.id == Project.entity_id)
            .where(Entity.name == name.entity, Project.name == name.project)
        ).one_or_none()

    def ensure_project(self, name: ProjectName) -> Project:
        self._insert_ignoring_conflict(Entity, {"name": name.entity, "created_at": utcnow()})
        entity_id = self.session.scalars(select(Entity.id).where(Entity.name == name.entity)).one()
        self._insert_ignoring_conflict(Project, {"entity_id": entity_id, "name": name.project, "created_at": utcnow()})
        project = self.find_project(name)
        assert project is not None
        return project

    # Collections -------------------------------------------------------------------------

    def find_collection(self, name: CollectionName, *, for_update: bool = False) -> Collection | None:
        query = (
            select(Collection)
            .join(Project, Project.id == Collection.project_id)
            .join(Entity, Entity.id == Project.entity_id)
            .where(Entity.name == name.entity, Project.name == name.project, Collection.name == name.name)
        )
        if for_update:
            # Serializes commits, links and alias moves per collection (PostgreSQL row lock;
            # SQLite write transactions are already exclusive).
            query = query.with_for_update(of=Collection)
        return self.session.scalars(query).one_or_none()

    def lock_collection(self, collection_id: int) -> Collection:
        return self.session.scalars(select(Collection).where(Collection.id == collection_id).with_for_update()).one()

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
        if after_name is not None:
            query = query.where(Collection.name > after_name)
        return self.session.scalars(query.order_by(Collection.name).limit(limit)).all()

    def allocate_index(self, collection: Collection) -> int:
        """Takes the collection's next index (of a version or a link) and advances the counter."""
        self.session.execute(
            update(Collection).where(Collection.id == collection.id).values(next_index=Collection.next_index + 1)
        )
        self.session.refresh(collection, ["next_index"])
        return collection.next_index - 1

    # Versions ------------------------------------------------------------------------------

    def add_version(self, version: Version) -> Version:
        self.session.add(version)
        self.session.flush()
        return version

    def find_version_by_uid(self, uid: str, *, for_update: bool = False) -> Version | None:
        query = select(Version).where(Version.uid == uid)
        if for_update:
            query = query.with_for_update()
        return self.session.scalars(query).one_or_none()

    def find_version_by_index(self, artifact_id: int, index: int) -> Version | None:
        return self.session.scalars(
            select(Version).where(
                Version.artifact_id == artifact_id,
                Version.index == index,
                Version.state == VersionState.COMMITTED.value,
            )
        ).one_or_none()

    def latest_version(self, artifact_id: int) -> Version | None:
        return self.session.scalars(
            select(Version)
            .where(Version.artifact_id == artifact_id, Version.state == VersionState.COMMITTED.value)
            .order_by(Version.index.desc())
            .limit(1)
        ).one_or_none()

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

    def delete_pending_version(self, version: Version) -> None:
        self.session.execute(delete(Version).where(Version.id == version.id))

    def get_version(self, version_id: int) -> Version:
        return self.session.get_one(Version, version_id)

    def get_collection(self, collection_id: int) -> Collection:
        return self.session.get_one(Collection, collection_id)

    def collection_full_name(self, collection: Collection) -> CollectionName:
        entity, project = self.session.execute(
            select(Entity.name, Project.name)
            .join(Project, Project.entity_id == Entity.id)
            .where(Project.id == collection.project_id)
        ).one()
        return CollectionName(entity, project, collection.name)

    # Manifests ---------------------------------------------------------------------------

    def add_manifest(self, version_id: int, entries: Iterable[FileEntry]) -> None:
        rows = [
            {
                "version_id": version_id,
                "path": e.path,
                "digest": e.digest,
                "size_bytes": e.size_bytes,
                "metadata_doc": e.metadata,
            }
            for e in entries
        ]
        if rows:
            self.session.execute(insert(ManifestEntry), rows)

    def manifest(self, version_id: int) -> list[FileEntry]:
        rows = self.session.scalars(select(ManifestEntry).where(ManifestEntry.version_id == version_id)).all()
        entries = [FileEntry(r.path, r.digest, r.size_bytes, r.metadata_doc) for r in rows]
        entries.sort(key=lambda e: e.path.encode())
        return entries

    # Aliases -----------------------------------------------------------------------------

    def aliases(self, collection_id: int) -> dict[str, int]:
        rows = self.session.execute(
            select(Alias.name, Alias.target_index).where(Alias.collection_id == collection_id)
        ).all()
        return {name: index for name, index in rows}

    def set_alias(self, collection_id: int, name: str, index: int) -> int | None:
        """Points an alias at an index; returns the index it named before, if any."""
        existing = self.session.scalars(
            select(Alias).where(Alias.collection_id == collection_id, Alias.name == name).with_for_update()
        ).one_or_none()
        if existing is None:
            self.session.add(Alias(collection_id=collection_id, name=name, target_index=index))
            self.session.flush()
            return None
        previous = existing.target_index
        existing.target_index = index
        existing.updated_at = utcnow()
        self.session.flush()
        return previous

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

    def find_link_to_version(self, registered_model_id: int, version_id: int) -> Link | None:
        return self.session.scalars(
            select(Link).where(Link.registered_model_id == registered_model_id, Link.version_id == version_id)
        ).one_or_none()

    def find_link_by_index(self, registered_model_id: int, index: int) -> Link | None:
        return self.session.scalars(
            select(Link).where(Link.registered_model_id == registered_model_id, Link.index == index)
        ).one_or_none()

    def latest_link(self, registered_model_id: int) -> Link | None:
        return self.session.scalars(
            select(Link).where(Link.registered_model_id == registered_model_id).order_by(Link.index.desc()).limit(1)
        ).one_or_none()

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
