"""Retention: an artifact keeps its newest N versions plus every version an alias or a link names."""

from __future__ import annotations

from typing import Any

from mreg.metadata_service.catalog.common import Caller, find_collection, tombstone
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import collection_view_of
from mreg.metadata_service.domain import CollectionKind, CollectionView
from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.models import Collection
from mreg.metadata_service.references import CollectionName, parse_collection
from mreg.metadata_service.unit_of_work import UnitOfWork


def apply_retention(uow: UnitOfWork, artifact: Collection, name: CollectionName) -> tuple[int, ...]:
    """Deletes committed versions past the newest N that have no alias and no link; returns their indexes."""
    keep_last = artifact.retention_keep_last
    assert keep_last is not None
    aliased = set(uow.repo.aliases(artifact.id).values())
    deleted = []
    for version in uow.repo.versions_beyond(artifact.id, keep_last):
        if version.index in aliased or uow.repo.is_linked(version.id):
            continue
        tombstone(uow, version, f"{name}:v{version.index}")
        assert version.index is not None
        deleted.append(version.index)
    return tuple(sorted(deleted))


class Retention:
    """Setting an artifact's retention policy (which applies it at once)."""

    def __init__(self, mutations: Mutations) -> None:
        self.mutations = mutations

    def set_policy(
        self, caller: Caller, artifact: str, keep_last: int | None, request_id: str = ""
    ) -> tuple[CollectionView, tuple[int, ...]]:
        """Keeps the last ``keep_last`` versions (None: all); returns the artifact and the indexes deleted now."""
        name = parse_collection(artifact, caller.defaults, "artifact")
        if keep_last is not None and keep_last < 1:
            raise InvalidArgument(
                f"keep_last must be at least 1 (got {keep_last}): the latest version is always kept; "
                "unset the policy to keep everything",
                Reason.FIELD_INVALID,
                {"field": "keep_last"},
            )

        def work(uow: UnitOfWork) -> tuple[tuple[CollectionView, tuple[int, ...]], dict[str, Any]]:
            row = find_collection(uow.repo, name, CollectionKind.ARTIFACT, for_update=True)
            before = row.retention_keep_last
            row.retention_keep_last = keep_last
            uow.record("retention.set", str(name), before={"keep_last": before}, after={"keep_last": keep_last})
            deleted = apply_retention(uow, row, name) if keep_last is not None else ()
            return (collection_view_of(uow.repo, row), deleted), {"id": row.id, "deleted": list(deleted)}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[CollectionView, tuple[int, ...]]:
            return collection_view_of(uow.repo, uow.repo.get_collection(key["id"])), tuple(key["deleted"])

        return self.mutations.run(caller, "SetRetentionPolicy", request_id, (str(name), keep_last), work, replay)
