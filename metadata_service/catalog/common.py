"""What every use case of the catalog shares: the caller, the blob service it checks content with, input
checks, and finding what a name refers to."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mreg.metadata_service.catalog.views import CollectionContext, collection_context
from mreg.metadata_service.domain import CollectionKind
from mreg.metadata_service.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason
from mreg.metadata_service.limits import MAX_INDEX, quote
from mreg.metadata_service.models import Collection, Link, Version
from mreg.metadata_service.references import LATEST, CollectionName, Defaults, Reference, validate_alias
from mreg.metadata_service.repository import Repository
from mreg.metadata_service.unit_of_work import UnitOfWork
from mreg.server_runtime.principals import ANONYMOUS, Principal, Role, denied

MAX_METADATA_BYTES = 1 << 20
MAX_TAGS = 64
MAX_TAG_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: their default entity/project, the actor name events record, and what they may do."""

    defaults: Defaults = field(default_factory=Defaults)
    actor: str = ""
    principal: Principal = ANONYMOUS

    def may(self, role: Role, entity: str, project: str | None) -> bool:
        """Whether the caller holds ``role`` over the project."""
        return self.principal.allows(role, entity, project)

    def require(self, role: Role, entity: str, project: str | None) -> None:
        """PERMISSION_DENIED unless the caller holds ``role`` over the project."""
        if not self.may(role, entity, project):
            scope = f"{entity}/{project}" if project else entity
            error = denied(self.principal, role, scope)
            raise PermissionDenied(str(error), Reason.PERMISSION_DENIED, error.metadata)


class BlobService(Protocol):
    """What the metadata service needs of the blob service."""

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Returns the (sha256, size) pairs not stored. Raises Unavailable if it cannot tell."""
        ...

    def list_unused(self, unused_before: datetime) -> Iterator[list[tuple[str, int]]]:
        """Batches of blobs neither written nor looked up since ``unused_before``."""
        ...

    def delete_unused(
        self, digests: Sequence[tuple[str, int]], unused_before: datetime, remove_stale_uploads: bool
    ) -> tuple[list[tuple[str, int]], int]:
        """Deletes those still unused since ``unused_before``; returns (deleted, stale upload parts removed)."""
        ...


def validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"metadata is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}",
            Reason.METADATA_INVALID,
            {"field": "metadata"},
        )
    return metadata


def validate_tags(tags: Sequence[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(
            f"{len(tags)} tags given; at most {MAX_TAGS} are allowed", Reason.FIELD_INVALID, {"field": "tags"}
        )
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or not tag.isprintable():
            raise InvalidArgument(
                f"tag {quote(tag)} is invalid: use 1-{MAX_TAG_LENGTH} printable characters",
                Reason.FIELD_INVALID,
                {"field": "tags"},
            )
    return sorted(set(tags))


def validate_aliases(aliases: Sequence[str]) -> list[str]:
    return sorted({validate_alias(a) for a in aliases})


# The NOT_FOUND reason for a collection looked up as a kind (None: either kind).
_NOT_FOUND = {
    CollectionKind.ARTIFACT: Reason.ARTIFACT_NOT_FOUND,
    CollectionKind.REGISTERED_MODEL: Reason.REGISTERED_MODEL_NOT_FOUND,
    None: Reason.COLLECTION_NOT_FOUND,
}


def is_unborn(row: Collection) -> bool:
    """An artifact none of whose versions has ever committed: only its pending pushes know it."""
    return row.kind == CollectionKind.ARTIFACT.value and row.next_index == 0


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def require_kind(row: Collection, name: CollectionName, kind: CollectionKind) -> None:
    if row.kind != kind.value:
        actual = CollectionKind(row.kind).label
        raise FailedPrecondition(
            f"{name} is {_a(actual)}, not {_a(kind.label)}",
            reason=Reason.COLLECTION_KIND_MISMATCH,
            metadata={"resource": str(name)},
        )


def find_collection(
    repo: Repository, name: CollectionName, kind: CollectionKind | None, *, for_update: bool = False
) -> Collection:
    """The collection ``name`` names (of ``kind``, if given); an unborn artifact does not count.

    Raises:
        NotFound: there is no such collection.
    """
    row = repo.find_collection(name, for_update=for_update)
    if row is None or is_unborn(row):
        raise collection_missing(name, kind)
    if kind is not None and row.kind != kind.value:
        # Still NOT_FOUND, as each method's contract says; the message names what the name is instead.
        raise collection_missing(name, kind, actual=CollectionKind(row.kind))
    return row


def collection_missing(
    name: CollectionName, kind: CollectionKind | None, *, actual: CollectionKind | None = None
) -> NotFound:
    """NOT_FOUND for ``name`` as a ``kind``; ``actual`` is the other kind when the name is taken by one."""
    label = kind.label if kind else "artifact or registered model"
    message = f"no {label} named {name}"
    metadata = {"resource": str(name)}
    if actual is not None:
        message += f": {name} is {_a(actual.label)}"
        # The name is taken by the other kind: creating one of this kind under it cannot help.
        metadata["actual_kind"] = actual.label
    return NotFound(message, _NOT_FOUND[kind], metadata)


def selected_index(context: CollectionContext, ref: Reference, member: str) -> int:
    if ref.index is not None:
        if ref.index > MAX_INDEX:
            # The grammar allows 18 digits; no stored index is that large.
            raise NotFound(
                f"{context.name} has no {member} v{ref.index}",
                Reason.VERSION_NOT_FOUND,
                {"resource": f"{context.name}:v{ref.index}"},
            )
        return ref.index
    if ref.alias == LATEST:
        if context.latest_index is None:
            raise NotFound(
                f"{context.name} has no {member}s yet, so it has no 'latest'",
                Reason.VERSION_NOT_FOUND,
                {"resource": f"{context.name}:latest"},
            )
        return context.latest_index
    assert ref.alias is not None
    if ref.alias not in context.aliases:
        raise NotFound(
            f"{context.name} has no alias {ref.alias!r}",
            Reason.ALIAS_NOT_FOUND,
            {"resource": f"{context.name}:{ref.alias}", "alias": ref.alias},
        )
    return context.aliases[ref.alias]


def select_version(repo: Repository, context: CollectionContext, ref: Reference) -> Version:
    index = selected_index(context, ref, "version")
    version = repo.find_version_by_index(context.row.id, index)
    if version is None:
        raise version_missing(context, index)
    return version


def version_missing(context: CollectionContext, index: int) -> NotFound:
    return NotFound(
        f"artifact {context.name} has no version v{index}",
        Reason.VERSION_NOT_FOUND,
        {"resource": f"{context.name}:v{index}"},
    )


def link_missing(context: CollectionContext, index: int) -> NotFound:
    return NotFound(
        f"registered model {context.name} has no link v{index}",
        Reason.VERSION_NOT_FOUND,
        {"resource": f"{context.name}:v{index}"},
    )


def select_link(repo: Repository, context: CollectionContext, ref: Reference) -> Link:
    index = selected_index(context, ref, "link")
    link = repo.find_link_by_index(context.row.id, index)
    if link is None:
        raise link_missing(context, index)
    return link


def resolve_version_row(repo: Repository, ref: Reference) -> tuple[Version, Collection]:
    """The version a reference names, through a registered model's link if need be."""
    row = find_collection(repo, ref.collection, None)
    context = collection_context(repo, row)
    if row.kind == CollectionKind.ARTIFACT.value:
        return select_version(repo, context, ref), row
    link = select_link(repo, context, ref)
    version = repo.get_version(link.version_id)
    return version, repo.get_collection(version.artifact_id)


def tombstone(uow: UnitOfWork, version: Version, resource: str) -> None:
    """Deletes a committed version (its row stays, marked deleted) and records the event."""
    uow.repo.mark_version_deleted(version)
    uow.record(
        "version.deleted",
        resource,
        before={"index": version.index, "digest": version.digest},
        collection_id=version.artifact_id,
    )
