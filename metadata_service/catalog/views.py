"""Turning rows into the views the catalog returns, and the collection context they need.

Everything here reads; nothing changes the database. Views are built before the
transaction ends, so callers never see ORM rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mreg.metadata_service.domain import CollectionKind, CollectionView, EventView, LinkView, VersionState, VersionView
from mreg.metadata_service.errors import NotFound, Reason
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.models import Collection, Event, Link, Version
from mreg.metadata_service.references import LATEST, CollectionName
from mreg.metadata_service.repository import Repository


@dataclass
class CollectionContext:
    """A collection with what its member views need: full name, aliases and latest index."""

    row: Collection
    name: CollectionName
    aliases: dict[str, int]
    latest_index: int | None

    def aliases_of(self, index: int | None) -> tuple[str, ...]:
        if index is None:
            return ()
        names = sorted(name for name, target in self.aliases.items() if target == index)
        return (LATEST, *names) if index == self.latest_index else tuple(names)

    def alias_pairs(self) -> tuple[tuple[str, int], ...]:
        pairs = sorted(self.aliases.items())
        if self.latest_index is not None:
            pairs.insert(0, (LATEST, self.latest_index))
        return tuple(pairs)


def collection_context(repo: Repository, row: Collection) -> CollectionContext:
    if row.kind == CollectionKind.ARTIFACT.value:
        latest_version = repo.latest_version(row.id)
        latest = latest_version.index if latest_version else None
    else:
        latest_link = repo.latest_link(row.id)
        latest = latest_link.index if latest_link else None
    return CollectionContext(row, repo.collection_full_name(row), repo.aliases(row.id), latest)


def version_view(repo: Repository, version: Version, context: CollectionContext, *, with_manifest: bool) -> VersionView:
    manifest = tuple(repo.manifest(version.id)) if with_manifest else ()
    return build_version_view(version, context, manifest)


def build_version_view(version: Any, context: CollectionContext, manifest: tuple[FileEntry, ...]) -> VersionView:
    """The view of ``version``: a ``Version`` row, or a Core row with the same attribute names."""
    name = f"{context.name}:v{version.index}" if version.index is not None else f"{context.name}@{version.uid}"
    return VersionView(
        name=name,
        uid=version.uid,
        artifact=str(context.name),
        type=context.row.type,
        index=version.index,
        state=VersionState(version.state),
        digest=version.digest or "",
        size_bytes=version.size_bytes,
        file_count=version.file_count,
        aliases=context.aliases_of(version.index),
        description=version.description,
        tags=tuple(version.tags or ()),
        metadata=dict(version.metadata_doc or {}),
        created_at=version.created_at,
        committed_at=version.committed_at,
        manifest=manifest,
        run=version.producer_run or "",
    )


def context_of_rows(rows: Sequence[Any]) -> CollectionContext | None:
    """A collection's context from ``ResolveReads`` context rows (one per alias); None if there are none."""
    if not rows:
        return None
    first = rows[0]
    # A transient row, never added to a session: what the context and its checks read of a collection.
    row = Collection(
        id=first.id,
        kind=first.kind,
        type=first.type,
        name=first.name,
        next_index=first.next_index,
        protected_aliases=first.protected_aliases,
    )
    aliases = {r.alias: r.alias_target for r in rows if r.alias is not None}
    return CollectionContext(row, CollectionName(first.entity, first.project, first.name), aliases, first.latest)


def version_view_of(repo: Repository, version: Version, *, with_manifest: bool) -> VersionView:
    """The view of a version, with the context of its own artifact."""
    artifact = repo.get_collection(version.artifact_id)
    return version_view(repo, version, collection_context(repo, artifact), with_manifest=with_manifest)


def collection_replayed(repo: Repository, collection_id: int) -> Collection:
    """The collection a recorded request made or changed, for its replay.

    Raises:
        NotFound: it has been deleted since, so the first answer cannot be rebuilt.
    """
    row = repo.find_collection_by_id(collection_id)
    if row is None:
        raise _gone_since_carried_out("what it made or changed", Reason.COLLECTION_NOT_FOUND)
    return row


def version_replayed(repo: Repository, version_id: int) -> Version:
    """The version a recorded commit committed (or found), for its replay.

    Raises:
        NotFound: it has been deleted since, with its artifact.
    """
    version = repo.find_version_by_id(version_id)
    if version is None:
        raise _gone_since_carried_out("its version (with its artifact)", Reason.VERSION_NOT_FOUND)
    return version


def _gone_since_carried_out(what: str, reason: Reason) -> NotFound:
    return NotFound(
        f"this request_id's request was carried out, but {what} has since been deleted, so its answer "
        "cannot be given again",
        reason,
    )


def view_by_uid(repo: Repository, uid: str) -> VersionView:
    version = repo.find_version_by_uid(uid)
    if version is None:
        raise NotFound(f"version {uid} no longer exists", Reason.VERSION_NOT_FOUND, {"resource": uid})
    return version_view_of(repo, version, with_manifest=True)


def link_view(
    repo: Repository, link: Link, rm_context: CollectionContext, *, with_manifest: bool
) -> tuple[VersionView, LinkView]:
    version_ = version_view_of(repo, repo.get_version(link.version_id), with_manifest=with_manifest)
    return version_, build_link_view(rm_context, link.index, link.created_at, version_)


def build_link_view(rm_context: CollectionContext, index: int, created_at: datetime, version: VersionView) -> LinkView:
    return LinkView(
        name=f"{rm_context.name}:v{index}",
        registered_model=str(rm_context.name),
        index=index,
        aliases=rm_context.aliases_of(index),
        version=version,
        created_at=created_at,
    )


def link_view_by_id(repo: Repository, link_id: int) -> LinkView:
    link = repo.find_link(link_id)
    if link is None:
        raise NotFound("the link this request created has since been deleted", Reason.VERSION_NOT_FOUND)
    rm = repo.get_collection(link.registered_model_id)
    return link_view(repo, link, collection_context(repo, rm), with_manifest=False)[1]


def collection_view(repo: Repository, context: CollectionContext) -> CollectionView:
    row = context.row
    kind = CollectionKind(row.kind)
    count = repo.count_versions(row.id) if kind is CollectionKind.ARTIFACT else repo.count_links(row.id)
    return CollectionView(
        name=str(context.name),
        kind=kind,
        type=row.type,
        description=row.description,
        member_count=count,
        aliases=context.alias_pairs(),
        created_at=row.created_at,
        tags=tuple(row.tags or ()),
        protected_aliases=tuple(row.protected_aliases or ()),
        retention_keep_last=row.retention_keep_last,
    )


def collection_view_of(repo: Repository, row: Collection) -> CollectionView:
    return collection_view(repo, collection_context(repo, row))


def event_view(event: Event) -> EventView:
    return EventView(
        sequence=event.sequence,
        kind=event.kind,
        resource=event.resource,
        before=event.before,
        after=event.after,
        actor=event.actor,
        created_at=event.created_at,
    )


def version_name(repo: Repository, version: Version) -> str:
    return f"{repo.collection_full_name(repo.get_collection(version.artifact_id))}:v{version.index}"


def link_name(repo: Repository, link: Link) -> str:
    return f"{repo.collection_full_name(repo.get_collection(link.registered_model_id))}:v{link.index}"
