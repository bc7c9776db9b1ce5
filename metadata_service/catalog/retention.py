"""Retention: an artifact keeps its newest N versions plus every version an alias or a link names."""

from __future__ import annotations

from typing import Any

from mreg.metadata_service.catalog.common import Caller, find_collection, tombstone
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import collection_replayed, collection_view_of
from mreg.metadata_service.domain import CollectionKind, CollectionView
from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.models import Collection, Version
from mreg.metadata_service.references import CollectionName, parse_collection
from mreg.metadata_service.unit_of_work import UnitOfWork


def retention_victims(uow: UnitOfWork, artifact: Collection, keep_last: int) -> list[Version]:
    """The committed versions past the newest ``keep_last`` that have no alias and no link."""
    aliased = set(uow.repo.aliases(artifact.id).values())
    return [
        version
        for version in uow.repo.versions_beyond(artifact.id, keep_last)
        if version.index not in aliased and not uow.repo.is_linked(version.id)
    ]


def apply_retention(uow: UnitOfWork, artifact: Collection, name: CollectionName) -> tuple[int, ...]:
    """Deletes committed versions past the newest N that have no alias and no link; returns their indexes."""
    keep_last = artifact.retention_keep_last
    assert keep_last is not None
    deleted = []
    for version in retention_victims(uow, artifact, keep_last):
        tombstone(uow, version, f"{name}:v{version.index}")
        assert version.index is not None
        deleted.append(version.index)
    return tuple(sorted(deleted))


class Retention:
    """Setting an artifact's retention policy (which applies it at once)."""

    def __init__(self, mutations: Mutations) -> None:
        self.mutations = mutations

    def set_policy(
        self,
        caller: Caller,
        artifact: str,
        keep_last: int | None,
        request_id: str = "",
        *,
        validate_only: bool = False,
    ) -> tuple[CollectionView, tuple[int, ...]]:
        """Keeps the last ``keep_last`` versions (None: all); returns the artifact and the indexes deleted now.

        With ``validate_only`` nothing changes: the indexes are those the policy would delete now.
        """
        name = parse_collection(artifact, caller.defaults, "artifact")
        if keep_last is not None and keep_last < 1:
            raise InvalidArgument(
                f"keep_last must be at least 1 (got {keep_last}): the latest version is always kept; "
                "unset the policy to keep everything",
                Reason.FIELD_INVALID,
                {"field": "keep_last"},
            )

        if validate_only:

            def plan(uow: UnitOfWork) -> tuple[CollectionView, tuple[int, ...]]:
                row = find_collection(uow.repo, name, CollectionKind.ARTIFACT)
                victims = retention_victims(uow, row, keep_last) if keep_last is not None else []
                return collection_view_of(uow.repo, row), tuple(sorted(v.index for v in victims if v.index is not None))

            return self.mutations.db.run(plan, write=False)

        def work(uow: UnitOfWork) -> tuple[tuple[CollectionView, tuple[int, ...]], dict[str, Any]]:
            row = find_collection(uow.repo, name, CollectionKind.ARTIFACT, for_update=True)
            before = row.retention_keep_last
            row.retention_keep_last = keep_last
            uow.record(
                "retention.set",
                str(name),
                before={"keep_last": before},
                after={"keep_last": keep_last},
                collection_id=row.id,
            )
            deleted = apply_retention(uow, row, name) if keep_last is not None else ()
            return (collection_view_of(uow.repo, row), deleted), {"id": row.id, "deleted": list(deleted)}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[CollectionView, tuple[int, ...]]:
            return collection_view_of(uow.repo, collection_replayed(uow.repo, key["id"])), tuple(key["deleted"])

        return self.mutations.run(caller, "SetRetentionPolicy", request_id, (str(name), keep_last), work, replay)
