"""Edits after push: what describes a version or a registered model changes; files never do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

# The client predicts what an update does with the very same patch function.
from mreg.client.editing import merge_patch
from mreg.metadata_service.catalog.common import (
    Caller,
    find_collection,
    resolve_version_row,
    validate_metadata,
    validate_tags,
)
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import (
    collection_context,
    collection_replayed,
    collection_view_of,
    version_view,
    view_by_uid,
)
from mreg.metadata_service.domain import CollectionKind, CollectionView, VersionView
from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.limits import quote
from mreg.metadata_service.references import parse_collection, parse_reference


class Edits:
    """UpdateVersion and UpdateRegisteredModel: each records one ``*.updated`` event with what changed."""

    def __init__(self, mutations: Mutations) -> None:
        self.mutations = mutations

    def update_version(
        self,
        caller: Caller,
        reference: str,
        *,
        description: str | None = None,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
        request_id: str = "",
    ) -> VersionView:
        """Edits a committed version's description, tags and metadata.

        ``metadata`` is a JSON merge patch (RFC 7386) unless ``replace_metadata``. A
        request that changes nothing records no event.
        """
        ref = parse_reference(reference, caller.defaults)
        added, removed = _tag_changes(add_tags, remove_tags)
        patch = validate_metadata(metadata) if metadata is not None else None

        def work(uow: Any) -> tuple[VersionView, dict[str, Any]]:
            found, artifact = resolve_version_row(uow.repo, ref)
            version = uow.repo.find_version_by_uid(found.uid, for_update=True)
            before: dict[str, Any] = {
                "description": version.description,
                "tags": list(version.tags),
                "metadata": version.metadata_doc,
            }
            after = dict(before)
            if description is not None:
                after["description"] = description
            after["tags"] = sorted((set(version.tags) | set(added)) - set(removed))
            if patch is not None:
                merged = patch if replace_metadata else merge_patch(version.metadata_doc or {}, patch)
                after["metadata"] = validate_metadata(merged)
            changed = [key for key in before if before[key] != after[key]]
            context = collection_context(uow.repo, artifact)
            if changed:
                validate_tags(after["tags"])
                version.description = after["description"]
                version.tags = after["tags"]
                version.metadata_doc = after["metadata"]
                uow.record(
                    "version.updated",
                    f"{context.name}:v{version.index}",
                    before={key: before[key] for key in changed},
                    after={key: after[key] for key in changed},
                    collection_id=artifact.id,
                )
            return version_view(uow.repo, version, context, with_manifest=False), {"uid": version.uid}

        def replay(uow: Any, key: dict[str, Any]) -> VersionView:
            return replace(view_by_uid(uow.repo, key["uid"]), manifest=())

        arguments = (str(ref), description, added, removed, patch, replace_metadata)
        return self.mutations.run(caller, "UpdateVersion", request_id, arguments, work, replay)

    def update_registered_model(
        self,
        caller: Caller,
        name: str,
        *,
        description: str | None = None,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        request_id: str = "",
    ) -> CollectionView:
        """Edits a registered model's description (its model card, Markdown) and tags."""
        parsed = parse_collection(name, caller.defaults, "registered model")
        added, removed = _tag_changes(add_tags, remove_tags)

        def work(uow: Any) -> tuple[CollectionView, dict[str, Any]]:
            row = find_collection(uow.repo, parsed, CollectionKind.REGISTERED_MODEL, for_update=True)
            before: dict[str, Any] = {"description": row.description, "tags": list(row.tags or [])}
            after: dict[str, Any] = {
                "description": before["description"] if description is None else description,
                "tags": sorted((set(before["tags"]) | set(added)) - set(removed)),
            }
            changed = [key for key in before if before[key] != after[key]]
            if changed:
                validate_tags(after["tags"])
                row.description = after["description"]
                row.tags = after["tags"]
                uow.record(
                    "registered_model.updated",
                    str(parsed),
                    before={key: before[key] for key in changed},
                    after={key: after[key] for key in changed},
                    collection_id=row.id,
                )
            return collection_view_of(uow.repo, row), {"id": row.id}

        def replay(uow: Any, key: dict[str, Any]) -> CollectionView:
            return collection_view_of(uow.repo, collection_replayed(uow.repo, key["id"]))

        arguments = (str(parsed), description, added, removed)
        return self.mutations.run(caller, "UpdateRegisteredModel", request_id, arguments, work, replay)


def _tag_changes(add_tags: Sequence[str], remove_tags: Sequence[str]) -> tuple[list[str], list[str]]:
    added, removed = validate_tags(add_tags), validate_tags(remove_tags)
    if both := set(added) & set(removed):
        raise InvalidArgument(
            f"tag {quote(min(both))} is both added and removed; name it in one list",
            Reason.FIELD_INVALID,
            {"field": "remove_tags"},
        )
    return added, removed
