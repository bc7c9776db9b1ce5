"""The metadata service's domain logic: artifacts, versions, aliases, registered models, links.

Every public method is one transaction (``Database.run``). Methods take reference
strings and the caller's defaults, validate everything before touching the database,
and return views from ``domain``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from metadata_service.domain import (
    AliasChange,
    CollectionKind,
    CollectionView,
    CommitResult,
    LinkView,
    Page,
    Resolution,
    VersionState,
    VersionView,
)
from metadata_service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from metadata_service.manifest import FileEntry, build_manifest
from metadata_service.models import Collection, Link, Version, utcnow
from metadata_service.pagination import decode_token, encode_token, page_size
from metadata_service.references import (
    LATEST,
    CollectionName,
    Defaults,
    Reference,
    parse_collection,
    parse_project,
    parse_reference,
    validate_alias,
    validate_type,
)
from metadata_service.repository import Repository
from metadata_service.unit_of_work import Database, UnitOfWork

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 1 << 20
MAX_TAGS = 64
MAX_TAG_LENGTH = 128
DEFAULT_REGISTERED_MODEL_TYPE = "model"


class ContentChecker(Protocol):
    """Asks the blob service which content it lacks."""

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Returns the (sha256, size) pairs not stored. Raises Unavailable if it cannot tell."""
        ...


@dataclass(frozen=True, slots=True)
class LinkRequest:
    registered_model: str
    aliases: tuple[str, ...] = ()


def _validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}")
    return metadata


def _validate_tags(tags: Sequence[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{len(tags)} tags given; at most {MAX_TAGS} are allowed")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or not tag.isprintable():
            raise InvalidArgument(f"tag {tag[:200]!r} is invalid: use 1-{MAX_TAG_LENGTH} printable characters")
    return sorted(set(tags))


def _validate_aliases(aliases: Sequence[str]) -> list[str]:
    return sorted({validate_alias(a) for a in aliases})


@dataclass
class _CollectionContext:
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


class Registry:
    """The registry's operations; one instance serves all RPCs."""

    def __init__(self, database: Database, content: ContentChecker) -> None:
        self.db = database
        self.content = content

    # Versions ------------------------------------------------------------------------------

    def create_version(
        self,
        defaults: Defaults,
        artifact: str,
        type_: str,
        description: str = "",
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> VersionView:
        name = parse_collection(artifact, defaults, "artifact")
        validate_type(type_)
        clean_tags = _validate_tags(tags)
        clean_metadata = _validate_metadata(metadata or {})

        def work(uow: UnitOfWork) -> VersionView:
            project = uow.repo.ensure_project(name.project_name)
            row = uow.repo.find_collection(name) or uow.repo.create_collection(
                project, name.name, CollectionKind.ARTIFACT, type_, ""
            )
            row = row or uow.repo.find_collection(name)
            assert row is not None
            self._require_kind(row, name, CollectionKind.ARTIFACT)
            if row.type != type_:
                raise FailedPrecondition(
                    f"artifact {name} has type {row.type!r}; a version of type {type_!r} cannot join it"
                )
            version = uow.repo.add_version(
                Version(
                    uid=uuid.uuid4().hex,
                    artifact_id=row.id,
                    index=None,
                    state=VersionState.PENDING.value,
                    size_bytes=0,
                    file_count=0,
                    description=description,
                    tags=clean_tags,
                    metadata_doc=clean_metadata,
                    created_at=utcnow(),
                )
            )
            context = _CollectionContext(row, name, {}, None)
            return self._version_view(uow.repo, version, context, with_manifest=False)

        return self.db.run(work, write=True)

    def commit_version(
        self,
        defaults: Defaults,
        uid: str,
        entries: Sequence[FileEntry],
        aliases: Sequence[str] = (),
        links: Sequence[LinkRequest] = (),
    ) -> CommitResult:
        manifest = build_manifest(entries)
        clean_aliases = _validate_aliases(aliases)
        link_targets = [
            (
                parse_collection(link.registered_model, defaults, "registered model"),
                _validate_aliases(link.aliases),
            )
            for link in links
        ]
        self._require_content(manifest.entries)

        def work(uow: UnitOfWork) -> CommitResult:
            repo = uow.repo
            version = repo.find_version_by_uid(uid, for_update=True)
            if version is None:
                raise NotFound(f"no pending version with uid {uid!r}: it was never created or has expired")
            artifact = repo.lock_collection(version.artifact_id)
            created = False
            if version.state == VersionState.COMMITTED.value:
                if version.digest != manifest.digest:
                    raise FailedPrecondition(
                        f"version {uid} is already committed with a different manifest; versions are immutable"
                    )
                target = version
            elif version.state == VersionState.DELETED.value:
                raise FailedPrecondition(f"version {uid} was deleted")
            else:
                latest = repo.latest_version(artifact.id)
                if latest is not None and latest.digest == manifest.digest:
                    # Same content as latest: no new version, the pending one is dropped.
                    repo.delete_pending_version(version)
                    target = latest
                else:
                    version.index = repo.allocate_index(artifact)
                    version.state = VersionState.COMMITTED.value
                    version.digest = manifest.digest
                    version.size_bytes = manifest.size_bytes
                    version.file_count = len(manifest.entries)
                    version.committed_at = utcnow()
                    repo.add_manifest(version.id, manifest.entries)
                    target, created = version, True
            assert target.index is not None
            for alias in clean_aliases:
                repo.set_alias(artifact.id, alias, target.index)
            link_views = tuple(
                self._link(repo, target, artifact, rm_name, rm_aliases)[0] for rm_name, rm_aliases in link_targets
            )
            context = self._context(repo, artifact)
            view = self._version_view(repo, target, context, with_manifest=True)
            if created:
                log.info("committed %s (%d files, %d bytes)", view.name, view.file_count, view.size_bytes)
            return CommitResult(view, created, link_views)

        return self.db.run(work, write=True)

    def _require_content(self, entries: Sequence[FileEntry]) -> None:
        digests = sorted({(e.digest, e.size_bytes) for e in entries})
        if not digests:
            return
        missing = self.content.find_missing(digests)
        if missing:
            shown = ", ".join(f"{h}/{s}" for h, s in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            paths = sorted(e.path for e in entries if (e.digest, e.size_bytes) in set(missing))[:5]
            raise FailedPrecondition(
                f"the blob service lacks {len(missing)} of the manifest's blobs ({shown}{more}; "
                f"files {', '.join(paths)}): upload them before committing"
            )

    def resolve(self, defaults: Defaults, reference: str) -> Resolution:
        ref = parse_reference(reference, defaults)

        def work(uow: UnitOfWork) -> Resolution:
            row = self._find_collection(uow.repo, ref.collection, None)
            context = self._context(uow.repo, row)
            if row.kind == CollectionKind.ARTIFACT.value:
                version = self._select_version(uow.repo, context, ref)
                return Resolution(self._version_view(uow.repo, version, context, with_manifest=True), None)
            link = self._select_link(uow.repo, context, ref)
            return Resolution(*self._link_view(uow.repo, link, context, with_manifest=True))

        return self.db.run(work, write=False)

    def list_versions(self, defaults: Defaults, parent: str, size: int, token: str) -> Page[VersionView]:
        name = parse_collection(parent, defaults, "artifact")
        limit = page_size(size)
        before = decode_token(token, f"versions:{name}")

        def work(uow: UnitOfWork) -> Page[VersionView]:
            row = self._find_collection(uow.repo, name, CollectionKind.ARTIFACT)
            context = self._context(uow.repo, row)
            rows = uow.repo.list_versions(row.id, before, limit + 1)
            views = tuple(self._version_view(uow.repo, v, context, with_manifest=False) for v in rows[:limit])
            more = len(rows) > limit
            return Page(views, encode_token(f"versions:{name}", rows[limit - 1].index) if more else "")

        return self.db.run(work, write=False)

    # Collections ---------------------------------------------------------------------------

    def get_collection(self, defaults: Defaults, name: str, kind: CollectionKind) -> CollectionView:
        parsed = parse_collection(name, defaults, kind.label)

        def work(uow: UnitOfWork) -> CollectionView:
            row = self._find_collection(uow.repo, parsed, kind)
            return self._collection_view(uow.repo, self._context(uow.repo, row))

        return self.db.run(work, write=False)

    def list_collections(
        self, defaults: Defaults, parent: str, kind: CollectionKind, size: int, token: str
    ) -> Page[CollectionView]:
        project_name = parse_project(parent, defaults)
        limit = page_size(size)
        listing = f"{kind.value}s:{project_name}"
        after = decode_token(token, listing)

        def work(uow: UnitOfWork) -> Page[CollectionView]:
            project = uow.repo.find_project(project_name)
            if project is None:
                raise NotFound(f"project {project_name} does not exist")
            rows = uow.repo.list_collections(project, kind, after, limit + 1)
            views = tuple(self._collection_view(uow.repo, self._context(uow.repo, r)) for r in rows[:limit])
            return Page(views, encode_token(listing, rows[limit - 1].name) if len(rows) > limit else "")

        return self.db.run(work, write=False)

    def create_registered_model(
        self, defaults: Defaults, name: str, type_: str = "", description: str = ""
    ) -> CollectionView:
        parsed = parse_collection(name, defaults, "registered model")
        type_ = validate_type(type_ or DEFAULT_REGISTERED_MODEL_TYPE)

        def work(uow: UnitOfWork) -> CollectionView:
            project = uow.repo.ensure_project(parsed.project_name)
            row = uow.repo.create_collection(project, parsed.name, CollectionKind.REGISTERED_MODEL, type_, description)
            if row is None:
                existing = uow.repo.find_collection(parsed)
                kind = CollectionKind(existing.kind).label if existing else "collection"
                raise AlreadyExists(f"{kind} {parsed} already exists")
            return self._collection_view(uow.repo, _CollectionContext(row, parsed, {}, None))

        return self.db.run(work, write=True)

    # Links ---------------------------------------------------------------------------------

    def create_link(
        self, defaults: Defaults, version_ref: str, registered_model: str, aliases: Sequence[str] = ()
    ) -> tuple[LinkView, bool]:
        ref = parse_reference(version_ref, defaults)
        rm_name = parse_collection(registered_model, defaults, "registered model")
        clean_aliases = _validate_aliases(aliases)

        def work(uow: UnitOfWork) -> tuple[LinkView, bool]:
            row = self._find_collection(uow.repo, ref.collection, None)
            context = self._context(uow.repo, row)
            if row.kind == CollectionKind.ARTIFACT.value:
                version, artifact = self._select_version(uow.repo, context, ref), row
            else:
                # A reference through a registered model links the version its link names.
                link = self._select_link(uow.repo, context, ref)
                version = uow.repo.get_version(link.version_id)
                artifact = uow.repo.get_collection(version.artifact_id)
            return self._link(uow.repo, version, artifact, rm_name, clean_aliases)

        return self.db.run(work, write=True)

    def _link(
        self,
        repo: Repository,
        version: Version,
        artifact: Collection,
        rm_name: CollectionName,
        aliases: Sequence[str],
    ) -> tuple[LinkView, bool]:
        rm = self._find_collection(repo, rm_name, CollectionKind.REGISTERED_MODEL, for_update=True)
        if rm.type != artifact.type:
            raise FailedPrecondition(
                f"registered model {rm_name} holds versions of type {rm.type!r}; "
                f"this version's artifact has type {artifact.type!r}"
            )
        link = repo.find_link_to_version(rm.id, version.id)
        created = link is None
        if link is None:
            link = repo.add_link(
                Link(
                    registered_model_id=rm.id,
                    index=repo.allocate_index(rm),
                    version_id=version.id,
                    created_at=utcnow(),
                )
            )
        for alias in aliases:
            repo.set_alias(rm.id, alias, link.index)
        _, view = self._link_view(repo, link, self._context(repo, rm), with_manifest=False)
        return view, created

    def list_links(self, defaults: Defaults, parent: str, size: int, token: str) -> Page[LinkView]:
        name = parse_collection(parent, defaults, "registered model")
        limit = page_size(size)
        listing = f"links:{name}"
        before = decode_token(token, listing)

        def work(uow: UnitOfWork) -> Page[LinkView]:
            row = self._find_collection(uow.repo, name, CollectionKind.REGISTERED_MODEL)
            context = self._context(uow.repo, row)
            rows = uow.repo.list_links(row.id, before, limit + 1)
            views = tuple(self._link_view(uow.repo, link, context, with_manifest=False)[1] for link in rows[:limit])
            return Page(views, encode_token(listing, rows[limit - 1].index) if len(rows) > limit else "")

        return self.db.run(work, write=False)

    # Aliases -------------------------------------------------------------------------------

    def set_alias(self, defaults: Defaults, target: str, alias: str) -> AliasChange:
        ref = parse_reference(target, defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> AliasChange:
            row = self._find_collection(uow.repo, ref.collection, None, for_update=True)
            context = self._context(uow.repo, row)
            if row.kind == CollectionKind.ARTIFACT.value:
                index = self._select_version(uow.repo, context, ref).index
            else:
                index = self._select_link(uow.repo, context, ref).index
            assert index is not None
            previous = uow.repo.set_alias(row.id, alias, index)
            return AliasChange(str(ref.collection), alias, index, previous)

        return self.db.run(work, write=True)

    def delete_alias(self, defaults: Defaults, collection: str, alias: str) -> int:
        name = parse_collection(collection, defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> int:
            row = self._find_collection(uow.repo, name, None, for_update=True)
            previous = uow.repo.delete_alias(row.id, alias)
            if previous is None:
                raise NotFound(f"{CollectionKind(row.kind).label} {name} has no alias {alias!r}")
            return previous

        return self.db.run(work, write=True)

    # Helpers -------------------------------------------------------------------------------

    @staticmethod
    def _require_kind(row: Collection, name: CollectionName, kind: CollectionKind) -> None:
        if row.kind != kind.value:
            actual = CollectionKind(row.kind).label
            raise FailedPrecondition(f"{name} is a {actual}, not a {kind.label}")

    def _find_collection(
        self, repo: Repository, name: CollectionName, kind: CollectionKind | None, *, for_update: bool = False
    ) -> Collection:
        row = repo.find_collection(name, for_update=for_update)
        if row is None or (kind is not None and row.kind != kind.value):
            label = kind.label if kind else "artifact or registered model"
            raise NotFound(f"no {label} named {name}")
        return row

    def _context(self, repo: Repository, row: Collection) -> _CollectionContext:
        if row.kind == CollectionKind.ARTIFACT.value:
            latest_version = repo.latest_version(row.id)
            latest = latest_version.index if latest_version else None
        else:
            latest_link = repo.latest_link(row.id)
            latest = latest_link.index if latest_link else None
        return _CollectionContext(row, repo.collection_full_name(row), repo.aliases(row.id), latest)

    @staticmethod
    def _selected_index(context: _CollectionContext, ref: Reference, member: str) -> int:
        if ref.index is not None:
            return ref.index
        if ref.alias == LATEST:
            if context.latest_index is None:
                raise NotFound(f"{context.name} has no {member}s yet, so it has no 'latest'")
            return context.latest_index
        assert ref.alias is not None
        if ref.alias not in context.aliases:
            raise NotFound(f"{context.name} has no alias {ref.alias!r}")
        return context.aliases[ref.alias]

    def _select_version(self, repo: Repository, context: _CollectionContext, ref: Reference) -> Version:
        index = self._selected_index(context, ref, "version")
        version = repo.find_version_by_index(context.row.id, index)
        if version is None:
            raise NotFound(f"artifact {context.name} has no version v{index}")
        return version

    def _select_link(self, repo: Repository, context: _CollectionContext, ref: Reference) -> Link:
        index = self._selected_index(context, ref, "link")
        link = repo.find_link_by_index(context.row.id, index)
        if link is None:
            raise NotFound(f"registered model {context.name} has no link v{index}")
        return link

    def _version_view(
        self, repo: Repository, version: Version, context: _CollectionContext, *, with_manifest: bool
    ) -> VersionView:
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
            manifest=tuple(repo.manifest(version.id)) if with_manifest else (),
        )

    def _link_view(
        self, repo: Repository, link: Link, rm_context: _CollectionContext, *, with_manifest: bool
    ) -> tuple[VersionView, LinkView]:
        version = repo.get_version(link.version_id)
        artifact = repo.get_collection(version.artifact_id)
        version_view = self._version_view(repo, version, self._context(repo, artifact), with_manifest=with_manifest)
        link_view = LinkView(
            name=f"{rm_context.name}:v{link.index}",
            registered_model=str(rm_context.name),
            index=link.index,
            aliases=rm_context.aliases_of(link.index),
            version=version_view,
            created_at=link.created_at,
        )
        return version_view, link_view

    def _collection_view(self, repo: Repository, context: _CollectionContext) -> CollectionView:
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
        )
