"""Collections: artifacts and registered models as wholes (getting, listing, creating, deleting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mreg.metadata_service import filters
from mreg.metadata_service.catalog.common import Caller, find_collection, validate_tags
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import collection_replayed, collection_view_of
from mreg.metadata_service.domain import CollectionKind, CollectionView, Page, ProjectView
from mreg.metadata_service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Reason
from mreg.metadata_service.pagination import decode_token, encode_token, name_key, page_size
from mreg.metadata_service.references import parse_collection, parse_project, validate_name, validate_type
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.principals import Role

DEFAULT_REGISTERED_MODEL_TYPE = "model"


class Collections:
    """Artifacts and registered models. Artifacts are created by their first commit, models explicitly."""

    def __init__(self, database: Database, mutations: Mutations) -> None:
        self.db = database
        self.mutations = mutations

    def get(self, caller: Caller, name: str, kind: CollectionKind) -> CollectionView:
        parsed = parse_collection(name, caller.defaults, kind.label)

        def work(uow: UnitOfWork) -> CollectionView:
            return collection_view_of(uow.repo, find_collection(uow.repo, parsed, kind))

        return self.db.run(work, write=False)

    def search(
        self,
        caller: Caller,
        parent: str,
        kind: CollectionKind,
        size: int,
        token: str,
        filter_text: str = "",
    ) -> Page[CollectionView]:
        """A page of a project's collections of ``kind``, by name, that match a filter."""
        project_name = parse_project(parent, caller.defaults)
        limit = page_size(size)
        where = filters.parse_filter(filter_text, filters.COLLECTIONS)
        listing = f"{kind.value}s:{project_name}:{filter_text}"
        after = decode_token(token, listing, name_key)

        def work(uow: UnitOfWork) -> Page[CollectionView]:
            project = uow.repo.find_project(project_name)
            if project is None:
                raise NotFound(
                    f"project {project_name} does not exist", Reason.PROJECT_NOT_FOUND, {"resource": str(project_name)}
                )
            rows = uow.repo.search_collections(project, kind, where, after, limit + 1)
            views = tuple(collection_view_of(uow.repo, r) for r in rows[:limit])
            tokens = tuple(encode_token(listing, r.name) for r in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    def projects(self, caller: Caller, parent: str, size: int, token: str) -> Page[ProjectView]:
        """A page of an entity's projects that hold something, limited to those the caller may read."""
        if not (parent or caller.defaults.entity):
            raise InvalidArgument(
                "name the entity whose projects to list (parent, or the mreg-entity header)",
                Reason.REFERENCE_INVALID,
                {"field": "parent"},
            )
        entity = validate_name(parent or caller.defaults.entity or "", "entity")
        limit = page_size(size)
        listing = f"projects:{entity}"
        after = decode_token(token, listing, name_key)

        def work(uow: UnitOfWork) -> Page[ProjectView]:
            rows = uow.repo.list_projects(entity, after, limit + 1)
            readable = [row for row in rows[:limit] if caller.principal.allows(Role.READER, entity, row.name)]
            views = tuple(ProjectView(f"{entity}/{row.name}", row.created_at) for row in readable)
            tokens = tuple(encode_token(listing, row.name) for row in readable)
            # The next page continues after the last row read, shown or not.
            next_token = encode_token(listing, rows[limit - 1].name) if len(rows) > limit else ""
            return Page(views, next_token, tokens)

        return self.db.run(work, write=False)

    def create_registered_model(
        self,
        caller: Caller,
        name: str,
        type_: str = "",
        description: str = "",
        tags: Sequence[str] = (),
        request_id: str = "",
    ) -> CollectionView:
        parsed = parse_collection(name, caller.defaults, "registered model")
        type_ = validate_type(type_ or DEFAULT_REGISTERED_MODEL_TYPE)
        clean_tags = validate_tags(tags)

        def work(uow: UnitOfWork) -> tuple[CollectionView, dict[str, Any]]:
            project = uow.repo.ensure_project(parsed.project_name)
            row = uow.repo.create_collection(project, parsed.name, CollectionKind.REGISTERED_MODEL, type_, description)
            if row is None:
                existing = uow.repo.find_collection(parsed)
                kind = CollectionKind(existing.kind).label if existing else "collection"
                raise AlreadyExists(
                    f"{kind} {parsed} already exists", Reason.COLLECTION_EXISTS, {"resource": str(parsed)}
                )
            row.tags = clean_tags
            uow.record(
                "collection.created",
                str(parsed),
                after={"kind": "registered_model", "type": type_},
                collection_id=row.id,
            )
            return collection_view_of(uow.repo, row), {"id": row.id}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> CollectionView:
            return collection_view_of(uow.repo, collection_replayed(uow.repo, key["id"]))

        arguments = (str(parsed), type_, description, clean_tags)
        return self.mutations.run(caller, "CreateRegisteredModel", request_id, arguments, work, replay)

    def delete(self, caller: Caller, name: str, request_id: str = "") -> None:
        """Deletes a collection that has no committed versions (an artifact) or no links (a model)."""
        parsed = parse_collection(name, caller.defaults)

        def work(uow: UnitOfWork) -> tuple[None, dict[str, Any]]:
            row = find_collection(uow.repo, parsed, None, for_update=True)
            kind = CollectionKind(row.kind)
            if uow.repo.has_members(row):
                member = "committed versions" if kind is CollectionKind.ARTIFACT else "links"
                raise FailedPrecondition(
                    f"{kind.label} {parsed} still has {member}; delete them first",
                    reason=Reason.COLLECTION_NOT_EMPTY,
                    metadata={"resource": str(parsed)},
                )
            uow.repo.delete_collection(row)
            uow.record(
                "collection.deleted", str(parsed), before={"kind": kind.value, "type": row.type}, collection_id=row.id
            )
            return None, {}

        self.mutations.run(caller, "DeleteCollection", request_id, (str(parsed),), work, lambda uow, key: None)
