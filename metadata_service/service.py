"""The metadata service's domain logic: artifacts, versions, aliases, registered models, links.

Every public method is one transaction (``Database.run``). Methods take reference
strings and the caller's defaults, validate everything before touching the database,
and return views from ``domain``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from metadata_service import filters
from metadata_service.domain import (
    AliasChange,
    CollectionKind,
    CollectionView,
    CommitResult,
    DeletedVersion,
    EventView,
    Lineage,
    LinkView,
    Page,
    Resolution,
    VersionState,
    VersionView,
)
from metadata_service.errors import MISSING_BLOB, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from metadata_service.event_feed import EventFeed
from metadata_service.limits import MAX_INDEX, quote
from metadata_service.manifest import FileEntry, build_manifest
from metadata_service.models import Collection, Event, Link, Version, utcnow
from metadata_service.pagination import (
    decode_token,
    encode_token,
    index_key,
    name_key,
    page_size,
    path_key,
    sequence_key,
    version_key,
)
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
MAX_REQUEST_ID = 128
DEFAULT_PENDING_TTL = timedelta(hours=24)
REQUEST_RECORD_TTL = timedelta(hours=24)
DEFAULT_GC_GRACE = timedelta(days=1)
DEFAULT_FILE_PAGE_SIZE = 1000
MAX_FILE_PAGE_SIZE = 10_000
# A sweep's lease on the GC state row, renewed every batch. It must outlast the blob
# service's DeleteBlobs deadline (blob_client.DELETE_TIMEOUT), so a sweep that lost its
# lease can have no deletion still under way when another sweep starts.
GC_LEASE = timedelta(minutes=30)
GC_BATCH = 1000
# How long deletions are remembered for commits in flight; a commit slower than this
# between its content check and its transaction is refused and retried by the client.
CONDEMNATION_MEMORY = timedelta(hours=1)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: their default entity/project and the actor name events record."""

    defaults: Defaults = field(default_factory=Defaults)
    actor: str = ""


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


@dataclass(frozen=True, slots=True)
class GarbageReport:
    examined_blobs: int = 0
    referenced_blobs: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    removed_upload_parts: int = 0


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
            raise InvalidArgument(f"tag {quote(tag)} is invalid: use 1-{MAX_TAG_LENGTH} printable characters")
    return sorted(set(tags))


def _validate_aliases(aliases: Sequence[str]) -> list[str]:
    return sorted({validate_alias(a) for a in aliases})


def _validate_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID} printable characters")
    return request_id


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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

    def __init__(self, database: Database, content: BlobService, pending_ttl: timedelta = DEFAULT_PENDING_TTL) -> None:
        self.db = database
        self.content = content
        self.pending_ttl = pending_ttl
        self.event_feed = EventFeed(
            lambda: self.db.run(lambda uow: uow.repo.last_event_sequence(), write=False),
            lambda after, limit: self.db.run(
                lambda uow: [_event_view(e) for e in uow.repo.events_after(after, "", limit)], write=False
            ),
        )
        database.add_commit_listener(self.event_feed.committed)

    def _mutate(
        self,
        caller: Caller,
        method: str,
        request_id: str,
        arguments: tuple[Any, ...],
        work: Callable[[UnitOfWork], tuple[T, dict[str, Any]]],
        replay: Callable[[UnitOfWork, dict[str, Any]], T],
    ) -> T:
        """Runs a mutation in one transaction, once per request id.

        ``work`` returns the result and a small JSON key from which ``replay`` rebuilds
        that result when a retry arrives with the same request id.
        """
        _validate_request_id(request_id)
        fingerprint = _fingerprint(method, caller.defaults.entity, caller.defaults.project, *arguments)

        def transaction(uow: UnitOfWork) -> T:
            if request_id:
                earlier = uow.repo.claim_request(request_id, method, fingerprint)
                if earlier is not None:
                    if (earlier.method, earlier.fingerprint) != (method, fingerprint):
                        raise InvalidArgument(
                            f"request_id {request_id!r} was already used for a different request ({earlier.method})"
                        )
                    return replay(uow, earlier.result or {})
            result, key = work(uow)
            if request_id:
                uow.repo.store_request_result(request_id, key)
            return result

        return self.db.run(transaction, write=True, actor=caller.actor)

    # Versions ------------------------------------------------------------------------------

    def create_version(
        self,
        caller: Caller,
        artifact: str,
        type_: str,
        description: str = "",
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        request_id: str = "",
    ) -> VersionView:
        name = parse_collection(artifact, caller.defaults, "artifact")
        validate_type(type_)
        clean_tags = _validate_tags(tags)
        clean_metadata = _validate_metadata(metadata or {})

        def work(uow: UnitOfWork) -> tuple[VersionView, dict[str, Any]]:
            row = self._ensure_artifact(uow, name, type_)
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
            return self._version_view(uow.repo, version, self._context(uow.repo, row), with_manifest=False), {
                "uid": version.uid
            }

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> VersionView:
            return self._view_by_uid(uow, key["uid"])

        arguments = (str(name), type_, description, clean_tags, clean_metadata)
        return self._mutate(caller, "CreateVersion", request_id, arguments, work, replay)

    def _ensure_artifact(self, uow: UnitOfWork, name: CollectionName, type_: str) -> Collection:
        row = uow.repo.find_collection(name)
        if row is None:
            # The artifact stays invisible (_is_unborn) until its first version commits,
            # so a push that never commits leaves nothing behind.
            project = uow.repo.ensure_project(name.project_name)
            row = uow.repo.create_collection(project, name.name, CollectionKind.ARTIFACT, type_, "")
            row = row or uow.repo.find_collection(name)
        assert row is not None
        self._require_kind(row, name, CollectionKind.ARTIFACT)
        if row.type != type_ and _is_unborn(row) and not uow.repo.has_pending_versions(row.id):
            row.type = type_  # nobody ever saw this artifact: the first push to commit picks its type
        if row.type != type_:
            raise FailedPrecondition(
                f"artifact {name} has type {row.type!r}; a version of type {type_!r} cannot join it"
            )
        return row

    def _view_by_uid(self, uow: UnitOfWork, uid: str) -> VersionView:
        version = uow.repo.find_version_by_uid(uid)
        if version is None:
            raise NotFound(f"version {uid} no longer exists")
        artifact = uow.repo.get_collection(version.artifact_id)
        return self._version_view(uow.repo, version, self._context(uow.repo, artifact), with_manifest=True)

    def commit_version(
        self,
        caller: Caller,
        uid: str,
        entries: Sequence[FileEntry],
        aliases: Sequence[str] = (),
        links: Sequence[LinkRequest] = (),
        run: str = "",
        request_id: str = "",
    ) -> CommitResult:
        manifest = build_manifest(entries)
        clean_aliases = _validate_aliases(aliases)
        link_targets = [
            (
                parse_collection(link.registered_model, caller.defaults, "registered model"),
                _validate_aliases(link.aliases),
            )
            for link in links
        ]
        run_name = str(parse_collection(run, caller.defaults, "run")) if run else None
        # Read before asking the blob service, so the transaction below can tell whether a
        # sweep deleted any of this content after the blob service said it was there.
        gc_epoch = self.db.run(lambda uow: uow.repo.gc_epoch(), write=False) if manifest.entries else 0
        self._require_content(manifest.entries)

        def work(uow: UnitOfWork) -> tuple[CommitResult, dict[str, Any]]:
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
                if version.created_at < utcnow() - self.pending_ttl:
                    raise NotFound(f"pending version {uid} has expired; create a new one")
                latest = repo.latest_version(artifact.id)
                if latest is not None and latest.digest == manifest.digest:
                    # Same content as latest: no new version, the pending one is dropped.
                    repo.delete_pending_version(version)
                    target = latest
                else:
                    _refuse_collected_content(repo, manifest.entries, gc_epoch)
                    version.index = repo.allocate_index(artifact)
                    version.state = VersionState.COMMITTED.value
                    version.digest = manifest.digest
                    version.size_bytes = manifest.size_bytes
                    version.file_count = len(manifest.entries)
                    version.committed_at = utcnow()
                    version.producer_run = run_name
                    repo.add_manifest(version.id, manifest.entries)
                    target, created = version, True
            assert target.index is not None
            collection_name = repo.collection_full_name(artifact)
            if created and target.index == 0:
                uow.record(
                    "collection.created", str(collection_name), after={"kind": "artifact", "type": artifact.type}
                )
            if created:
                uow.record(
                    "version.committed",
                    f"{collection_name}:v{target.index}",
                    after={
                        "index": target.index,
                        "digest": target.digest,
                        "size_bytes": target.size_bytes,
                        "file_count": target.file_count,
                        "run": run_name,
                    },
                )
            for alias in clean_aliases:
                self._move_alias(uow, artifact, collection_name, alias, target.index)
            linked = [self._link(uow, target, artifact, rm_name, rm_aliases) for rm_name, rm_aliases in link_targets]
            link_views = tuple(view for view, _, _ in linked)
            if created and artifact.retention_keep_last is not None:
                self._apply_retention(uow, artifact, collection_name)
            view = self._version_view(repo, target, self._context(repo, artifact), with_manifest=True)
            if created:
                log.info("committed %s (%d files, %d bytes)", view.name, view.file_count, view.size_bytes)
            key = {
                "version_id": target.id,
                "created": created,
                "link_ids": [link_id for _, _, link_id in linked],
            }
            return CommitResult(view, created, link_views), key

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> CommitResult:
            version = uow.repo.get_version(key["version_id"])
            artifact = uow.repo.get_collection(version.artifact_id)
            view = self._version_view(uow.repo, version, self._context(uow.repo, artifact), with_manifest=True)
            links = tuple(self._link_view_by_id(uow.repo, link_id) for link_id in key["link_ids"])
            return CommitResult(view, key["created"], links)

        arguments = (uid, manifest.digest, clean_aliases, [(str(n), a) for n, a in link_targets], run_name)
        return self._mutate(caller, "CommitVersion", request_id, arguments, work, replay)

    def _link_view_by_id(self, repo: Repository, link_id: int) -> LinkView:
        link = repo.find_link(link_id)
        if link is None:
            raise NotFound("the link this request created has since been deleted")
        rm = repo.get_collection(link.registered_model_id)
        return self._link_view(repo, link, self._context(repo, rm), with_manifest=False)[1]

    def _require_content(self, entries: Sequence[FileEntry]) -> None:
        digests = sorted({(e.digest, e.size_bytes) for e in entries})
        if not digests:
            return
        missing = self.content.find_missing(digests)
        if missing:
            shown = ", ".join(f"{h}/{s}" for h, s in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            missing_set = set(missing)
            paths = sorted(e.path for e in entries if (e.digest, e.size_bytes) in missing_set)[:5]
            raise FailedPrecondition(
                f"the blob service lacks {len(missing)} of the manifest's blobs ({shown}{more}; "
                f"files {', '.join(paths)}): upload them before committing",
                violations=[(MISSING_BLOB, f"blobs/{h}/{s}", "not stored in the blob service") for h, s in missing],
            )

    def resolve(self, caller: Caller, reference: str) -> Resolution:
        ref = parse_reference(reference, caller.defaults)

        def work(uow: UnitOfWork) -> Resolution:
            row = self._find_collection(uow.repo, ref.collection, None)
            context = self._context(uow.repo, row)
            if row.kind == CollectionKind.ARTIFACT.value:
                version = self._select_version(uow.repo, context, ref)
                return Resolution(self._version_view(uow.repo, version, context, with_manifest=True), None)
            link = self._select_link(uow.repo, context, ref)
            return Resolution(*self._link_view(uow.repo, link, context, with_manifest=True))

        return self.db.run(work, write=False)

    def list_versions(
        self, caller: Caller, parent: str, size: int, token: str, filter_text: str = "", order_by: str = ""
    ) -> Page[VersionView]:
        name = parse_collection(parent, caller.defaults, "artifact")
        limit = page_size(size)
        where = filters.parse_filter(filter_text)
        order = filters.parse_order_by(order_by)
        listing = f"versions:{name}:{filter_text}:{order_by}"
        after = decode_token(token, listing, version_key(order.field))

        def work(uow: UnitOfWork) -> Page[VersionView]:
            row = self._find_collection(uow.repo, name, CollectionKind.ARTIFACT)
            context = self._context(uow.repo, row)
            rows = uow.repo.search_versions(row.id, where, order, tuple(after) if after else None, limit + 1)
            views = tuple(self._version_view(uow.repo, v, context, with_manifest=False) for v, _ in rows[:limit])
            tokens = tuple(
                encode_token(listing, [value.isoformat() if isinstance(value, datetime) else value, v.index])
                for v, value in rows[:limit]
            )
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    def delete_version(
        self, caller: Caller, reference: str, force: bool = False, request_id: str = ""
    ) -> DeletedVersion:
        ref = parse_reference(reference, caller.defaults)

        def work(uow: UnitOfWork) -> tuple[DeletedVersion, dict[str, Any]]:
            row = self._find_collection(uow.repo, ref.collection, CollectionKind.ARTIFACT, for_update=True)
            context = self._context(uow.repo, row)
            version = self._select_version(uow.repo, context, ref)
            assert version.index is not None
            aliases = sorted(a for a, i in context.aliases.items() if i == version.index)
            links = uow.repo.links_to_version(version.id)
            link_names = [self._link_name(uow.repo, link) for link in links]
            if (aliases or links) and not force:
                held = [f"alias {a!r}" for a in aliases] + [f"link {n}" for n in link_names]
                raise FailedPrecondition(
                    f"{context.name}:v{version.index} is still named by {', '.join(held)}; "
                    "remove them first or delete with force"
                )
            for alias in aliases:
                self._remove_alias(uow, row, context.name, alias)
            for link, link_name in zip(links, link_names, strict=True):
                self._delete_link(uow, link, link_name)
            self._tombstone(uow, version, f"{context.name}:v{version.index}")
            view = self._version_view(uow.repo, version, self._context(uow.repo, row), with_manifest=False)
            result = DeletedVersion(view, tuple(aliases), tuple(link_names))
            return result, {"uid": version.uid, "aliases": aliases, "links": link_names}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> DeletedVersion:
            return DeletedVersion(self._view_by_uid(uow, key["uid"]), tuple(key["aliases"]), tuple(key["links"]))

        return self._mutate(caller, "DeleteVersion", request_id, (str(ref), force), work, replay)

    def _tombstone(self, uow: UnitOfWork, version: Version, resource: str) -> None:
        uow.repo.mark_version_deleted(version)
        uow.record("version.deleted", resource, before={"index": version.index, "digest": version.digest})

    def _link_name(self, repo: Repository, link: Link) -> str:
        return f"{repo.collection_full_name(repo.get_collection(link.registered_model_id))}:v{link.index}"

    def _delete_link(self, uow: UnitOfWork, link: Link, link_name: str) -> None:
        rm = uow.repo.get_collection(link.registered_model_id)
        rm_name = uow.repo.collection_full_name(rm)
        for alias in uow.repo.delete_aliases_at(rm.id, link.index):
            uow.record("alias.deleted", f"{rm_name}:{alias}", before={"index": link.index})
        version = uow.repo.get_version(link.version_id)
        uow.repo.delete_link(link)
        uow.record("link.deleted", link_name, before={"index": link.index, "version_uid": version.uid})

    # Collections ---------------------------------------------------------------------------

    def get_collection(self, caller: Caller, name: str, kind: CollectionKind) -> CollectionView:
        parsed = parse_collection(name, caller.defaults, kind.label)

        def work(uow: UnitOfWork) -> CollectionView:
            row = self._find_collection(uow.repo, parsed, kind)
            return self._collection_view(uow.repo, self._context(uow.repo, row))

        return self.db.run(work, write=False)

    def list_collections(
        self,
        caller: Caller,
        parent: str,
        kind: CollectionKind,
        size: int,
        token: str,
        name_prefix: str = "",
        type_: str = "",
        tag: str = "",
    ) -> Page[CollectionView]:
        project_name = parse_project(parent, caller.defaults)
        limit = page_size(size)
        if type_:
            validate_type(type_)
        listing = f"{kind.value}s:{project_name}:{name_prefix}:{type_}:{tag}"
        after = decode_token(token, listing, name_key)

        def work(uow: UnitOfWork) -> Page[CollectionView]:
            project = uow.repo.find_project(project_name)
            if project is None:
                raise NotFound(f"project {project_name} does not exist")
            rows = uow.repo.search_collections(project, kind, name_prefix, type_, tag, after, limit + 1)
            views = tuple(self._collection_view(uow.repo, self._context(uow.repo, r)) for r in rows[:limit])
            tokens = tuple(encode_token(listing, r.name) for r in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

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
        clean_tags = _validate_tags(tags)

        def work(uow: UnitOfWork) -> tuple[CollectionView, dict[str, Any]]:
            project = uow.repo.ensure_project(parsed.project_name)
            row = uow.repo.create_collection(project, parsed.name, CollectionKind.REGISTERED_MODEL, type_, description)
            if row is None:
                existing = uow.repo.find_collection(parsed)
                kind = CollectionKind(existing.kind).label if existing else "collection"
                raise AlreadyExists(f"{kind} {parsed} already exists")
            row.tags = clean_tags
            uow.record("collection.created", str(parsed), after={"kind": "registered_model", "type": type_})
            return self._collection_view(uow.repo, self._context(uow.repo, row)), {"id": row.id}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> CollectionView:
            return self._collection_view(uow.repo, self._context(uow.repo, uow.repo.get_collection(key["id"])))

        arguments = (str(parsed), type_, description, clean_tags)
        return self._mutate(caller, "CreateRegisteredModel", request_id, arguments, work, replay)

    def delete_collection(self, caller: Caller, name: str, request_id: str = "") -> None:
        parsed = parse_collection(name, caller.defaults)

        def work(uow: UnitOfWork) -> tuple[None, dict[str, Any]]:
            row = self._find_collection(uow.repo, parsed, None, for_update=True)
            kind = CollectionKind(row.kind)
            if uow.repo.has_members(row):
                member = "committed versions" if kind is CollectionKind.ARTIFACT else "links"
                raise FailedPrecondition(f"{kind.label} {parsed} still has {member}; delete them first")
            uow.repo.delete_collection(row)
            uow.record("collection.deleted", str(parsed), before={"kind": kind.value, "type": row.type})
            return None, {}

        self._mutate(caller, "DeleteCollection", request_id, (str(parsed),), work, lambda uow, key: None)

    def set_retention_policy(
        self, caller: Caller, artifact: str, keep_last: int | None, request_id: str = ""
    ) -> tuple[CollectionView, tuple[int, ...]]:
        name = parse_collection(artifact, caller.defaults, "artifact")
        if keep_last is not None and keep_last < 1:
            raise InvalidArgument(
                f"keep_last must be at least 1 (got {keep_last}): the latest version is always kept; "
                "unset the policy to keep everything"
            )

        def work(uow: UnitOfWork) -> tuple[tuple[CollectionView, tuple[int, ...]], dict[str, Any]]:
            row = self._find_collection(uow.repo, name, CollectionKind.ARTIFACT, for_update=True)
            before = row.retention_keep_last
            row.retention_keep_last = keep_last
            uow.record("retention.set", str(name), before={"keep_last": before}, after={"keep_last": keep_last})
            deleted = self._apply_retention(uow, row, name) if keep_last is not None else ()
            view = self._collection_view(uow.repo, self._context(uow.repo, row))
            return (view, deleted), {"id": row.id, "deleted": list(deleted)}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[CollectionView, tuple[int, ...]]:
            row = uow.repo.get_collection(key["id"])
            return self._collection_view(uow.repo, self._context(uow.repo, row)), tuple(key["deleted"])

        return self._mutate(caller, "SetRetentionPolicy", request_id, (str(name), keep_last), work, replay)

    def _apply_retention(self, uow: UnitOfWork, artifact: Collection, name: CollectionName) -> tuple[int, ...]:
        """Deletes committed versions past the newest N that have no alias and no link."""
        keep_last = artifact.retention_keep_last
        assert keep_last is not None
        aliased = set(uow.repo.aliases(artifact.id).values())
        deleted = []
        for version in uow.repo.versions_beyond(artifact.id, keep_last):
            if version.index in aliased or uow.repo.is_linked(version.id):
                continue
            self._tombstone(uow, version, f"{name}:v{version.index}")
            assert version.index is not None
            deleted.append(version.index)
        return tuple(sorted(deleted))

    def expire_pending(self) -> int:
        """Deletes pending versions older than the TTL and forgets old request records."""

        def work(uow: UnitOfWork) -> int:
            expired = uow.repo.expired_pending_versions(utcnow() - self.pending_ttl)
            for version in expired:
                uow.repo.delete_pending_version(version)
            uow.repo.delete_unborn_artifacts({v.artifact_id for v in expired})
            uow.repo.forget_requests(utcnow() - REQUEST_RECORD_TTL)
            return len(expired)

        count = self.db.run(work, write=True)
        if count:
            log.info("expired %d pending versions", count)
        return count

    # Links ---------------------------------------------------------------------------------

    def create_link(
        self,
        caller: Caller,
        version_ref: str,
        registered_model: str,
        aliases: Sequence[str] = (),
        request_id: str = "",
    ) -> tuple[LinkView, bool]:
        ref = parse_reference(version_ref, caller.defaults)
        rm_name = parse_collection(registered_model, caller.defaults, "registered model")
        clean_aliases = _validate_aliases(aliases)

        def work(uow: UnitOfWork) -> tuple[tuple[LinkView, bool], dict[str, Any]]:
            version, artifact = self._resolve_version_row(uow.repo, ref)
            view, created, link_id = self._link(uow, version, artifact, rm_name, clean_aliases)
            return (view, created), {"link_id": link_id, "created": created}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[LinkView, bool]:
            return self._link_view_by_id(uow.repo, key["link_id"]), key["created"]

        arguments = (str(ref), str(rm_name), clean_aliases)
        return self._mutate(caller, "CreateLink", request_id, arguments, work, replay)

    def _resolve_version_row(self, repo: Repository, ref: Reference) -> tuple[Version, Collection]:
        """The version a reference names, through a registered model's link if need be."""
        row = self._find_collection(repo, ref.collection, None)
        context = self._context(repo, row)
        if row.kind == CollectionKind.ARTIFACT.value:
            return self._select_version(repo, context, ref), row
        link = self._select_link(repo, context, ref)
        version = repo.get_version(link.version_id)
        return version, repo.get_collection(version.artifact_id)

    def _link(
        self,
        uow: UnitOfWork,
        version: Version,
        artifact: Collection,
        rm_name: CollectionName,
        aliases: Sequence[str],
    ) -> tuple[LinkView, bool, int]:
        """Links a version into a registered model; returns (view, created, link id)."""
        repo = uow.repo
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
                    registered_model_id=rm.id, index=repo.allocate_index(rm), version_id=version.id, created_at=utcnow()
                )
            )
            source = f"{repo.collection_full_name(artifact)}:v{version.index}"
            uow.record("link.created", f"{rm_name}:v{link.index}", after={"index": link.index, "version": source})
        for alias in aliases:
            self._move_alias(uow, rm, rm_name, alias, link.index)
        _, view = self._link_view(repo, link, self._context(repo, rm), with_manifest=False)
        return view, created, link.id

    def delete_link(self, caller: Caller, reference: str, request_id: str = "") -> str:
        ref = parse_reference(reference, caller.defaults)

        def work(uow: UnitOfWork) -> tuple[str, dict[str, Any]]:
            row = self._find_collection(uow.repo, ref.collection, CollectionKind.REGISTERED_MODEL, for_update=True)
            link = self._select_link(uow.repo, self._context(uow.repo, row), ref)
            name = f"{ref.collection}:v{link.index}"
            self._delete_link(uow, link, name)
            return name, {"name": name}

        return self._mutate(caller, "DeleteLink", request_id, (str(ref),), work, lambda uow, key: key["name"])

    def list_version_files(self, caller: Caller, reference: str, size: int, token: str) -> tuple[str, Page[FileEntry]]:
        """The files of the version ``reference`` names, a page at a time; returns (version name, page)."""
        ref = parse_reference(reference, caller.defaults)
        limit = page_size(size, DEFAULT_FILE_PAGE_SIZE, MAX_FILE_PAGE_SIZE)

        def work(uow: UnitOfWork) -> tuple[str, Page[FileEntry]]:
            version, _ = self._resolve_version_row(uow.repo, ref)
            # Bound to the version itself, so an alias moving between pages cannot mix manifests.
            listing = f"files:{version.uid}"
            after = decode_token(token, listing, path_key)
            rows = uow.repo.manifest_page(version.id, after, limit + 1)
            tokens = tuple(encode_token(listing, entry.path) for entry in rows[:limit])
            page = Page(tuple(rows[:limit]), tokens[-1] if len(rows) > limit else "", tokens)
            return self._version_name(uow.repo, version), page

        return self.db.run(work, write=False)

    def list_links(self, caller: Caller, parent: str, size: int, token: str) -> Page[LinkView]:
        name = parse_collection(parent, caller.defaults, "registered model")
        limit = page_size(size)
        listing = f"links:{name}"
        before = decode_token(token, listing, index_key)

        def work(uow: UnitOfWork) -> Page[LinkView]:
            row = self._find_collection(uow.repo, name, CollectionKind.REGISTERED_MODEL)
            context = self._context(uow.repo, row)
            rows = uow.repo.list_links(row.id, before, limit + 1)
            views = tuple(self._link_view(uow.repo, link, context, with_manifest=False)[1] for link in rows[:limit])
            tokens = tuple(encode_token(listing, link.index) for link in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    # Aliases -------------------------------------------------------------------------------

    def set_alias(
        self,
        caller: Caller,
        target: str,
        alias: str,
        expected_index: int | None = None,
        expect_unset: bool = False,
        request_id: str = "",
    ) -> AliasChange:
        ref = parse_reference(target, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[AliasChange, dict[str, Any]]:
            row = self._find_collection(uow.repo, ref.collection, None, for_update=True)
            context = self._context(uow.repo, row)
            if row.kind == CollectionKind.ARTIFACT.value:
                index = self._select_version(uow.repo, context, ref).index
            else:
                index = self._select_link(uow.repo, context, ref).index
            assert index is not None
            current = context.aliases.get(alias)
            _check_expectation(context.name, alias, current, expected_index, expect_unset)
            previous = self._move_alias(uow, row, context.name, alias, index)
            change = AliasChange(str(context.name), alias, index, previous)
            return change, asdict(change)

        arguments = (str(ref), alias, expected_index, expect_unset)
        return self._mutate(caller, "SetAlias", request_id, arguments, work, lambda uow, key: AliasChange(**key))

    def _move_alias(
        self, uow: UnitOfWork, collection: Collection, name: CollectionName, alias: str, index: int
    ) -> int | None:
        previous = uow.repo.set_alias(collection.id, alias, index)
        if previous != index:
            before = None if previous is None else {"index": previous}
            uow.record("alias.set", f"{name}:{alias}", before=before, after={"index": index})
        return previous

    def _remove_alias(self, uow: UnitOfWork, collection: Collection, name: CollectionName, alias: str) -> int | None:
        previous = uow.repo.delete_alias(collection.id, alias)
        if previous is not None:
            uow.record("alias.deleted", f"{name}:{alias}", before={"index": previous})
        return previous

    def delete_alias(
        self, caller: Caller, collection: str, alias: str, expected_index: int | None = None, request_id: str = ""
    ) -> int:
        name = parse_collection(collection, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[int, dict[str, Any]]:
            row = self._find_collection(uow.repo, name, None, for_update=True)
            current = uow.repo.aliases(row.id).get(alias)
            if current is None:
                raise NotFound(f"{CollectionKind(row.kind).label} {name} has no alias {alias!r}")
            _check_expectation(name, alias, current, expected_index, False)
            self._remove_alias(uow, row, name, alias)
            return current, {"previous": current}

        arguments = (str(name), alias, expected_index)
        return self._mutate(caller, "DeleteAlias", request_id, arguments, work, lambda uow, key: key["previous"])

    def set_alias_protection(
        self, caller: Caller, collection: str, alias: str, protected: bool, request_id: str = ""
    ) -> tuple[str, ...]:
        name = parse_collection(collection, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[tuple[str, ...], dict[str, Any]]:
            row = self._find_collection(uow.repo, name, None, for_update=True)
            current = set(row.protected_aliases or ())
            changed = (alias in current) != protected
            current = current | {alias} if protected else current - {alias}
            row.protected_aliases = sorted(current)
            if changed:
                uow.record("alias.protected" if protected else "alias.unprotected", f"{name}:{alias}")
            return tuple(sorted(current)), {"protected": sorted(current)}

        arguments = (str(name), alias, protected)
        return self._mutate(
            caller, "SetAliasProtection", request_id, arguments, work, lambda uow, key: tuple(key["protected"])
        )

    def alias_history(self, caller: Caller, collection: str, alias: str, size: int, token: str) -> Page[EventView]:
        name = parse_collection(collection, caller.defaults)
        if not alias:
            raise InvalidArgument("alias is empty")
        limit = page_size(size)
        resource = f"{name}:{alias}"
        listing = f"history:{resource}"
        before = decode_token(token, listing, sequence_key)

        def work(uow: UnitOfWork) -> Page[EventView]:
            rows = uow.repo.resource_events(resource, before, limit + 1)
            views = tuple(_event_view(e) for e in rows[:limit])
            tokens = tuple(encode_token(listing, e.sequence) for e in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    # Lineage -------------------------------------------------------------------------------

    def record_run_inputs(
        self, caller: Caller, run: str, references: Sequence[str], request_id: str = ""
    ) -> tuple[str, ...]:
        run_name = str(parse_collection(run, caller.defaults, "run"))
        refs = [parse_reference(r, caller.defaults) for r in references]
        if not refs:
            raise InvalidArgument("name at least one version the run used")

        def work(uow: UnitOfWork) -> tuple[tuple[str, ...], dict[str, Any]]:
            recorded = []
            for ref in refs:
                version, artifact = self._resolve_version_row(uow.repo, ref)
                uow.repo.add_run_input(run_name, version.id)
                recorded.append(f"{uow.repo.collection_full_name(artifact)}:v{version.index}")
            uow.record("run.inputs", run_name, after={"versions": recorded})
            return tuple(recorded), {"versions": recorded}

        arguments = (run_name, [str(r) for r in refs])
        return self._mutate(
            caller, "RecordRunInputs", request_id, arguments, work, lambda uow, key: tuple(key["versions"])
        )

    def lineage(self, caller: Caller, version_ref: str = "", run: str = "") -> Lineage:
        if bool(version_ref) == bool(run):
            raise InvalidArgument("set exactly one of version and run")

        def of_version(uow: UnitOfWork) -> Lineage:
            version, _ = self._resolve_version_row(uow.repo, parse_reference(version_ref, caller.defaults))
            return Lineage(version.producer_run or "", tuple(uow.repo.consumer_runs(version.id)), (), ())

        def of_run(uow: UnitOfWork) -> Lineage:
            name = str(parse_collection(run, caller.defaults, "run"))
            inputs = tuple(sorted(self._version_name(uow.repo, v) for v in uow.repo.run_inputs(name)))
            outputs = tuple(sorted(self._version_name(uow.repo, v) for v in uow.repo.run_outputs(name)))
            return Lineage("", (), inputs, outputs)

        return self.db.run(of_version if version_ref else of_run, write=False)

    def _version_name(self, repo: Repository, version: Version) -> str:
        return f"{repo.collection_full_name(repo.get_collection(version.artifact_id))}:v{version.index}"

    # Events --------------------------------------------------------------------------------

    def events_after(self, sequence: int, resource_prefix: str = "", limit: int = 500) -> tuple[list[EventView], int]:
        """Returns events after ``sequence`` (oldest first) and the last sequence committed."""
        if sequence < 0:
            raise InvalidArgument(f"start_after must not be negative (got {sequence})")

        def work(uow: UnitOfWork) -> tuple[list[EventView], int]:
            last = uow.repo.last_event_sequence()
            rows = uow.repo.events_after(sequence, resource_prefix, limit)
            return [_event_view(e) for e in rows], last

        return self.db.run(work, write=False)

    # Garbage collection ------------------------------------------------------------------------

    def collect_garbage(self, grace: timedelta = DEFAULT_GC_GRACE, dry_run: bool = False) -> GarbageReport:
        """Deletes blobs no committed version references and nobody used for ``grace``.

        Commits and sweeps never race, at any grace period, by this protocol:

        - A commit reads the GC epoch, then asks the blob service whether its content is
          stored, then in its transaction (share-locking the GC state row) refuses with
          MISSING_BLOB any blob that a sweep is deleting now or deleted after that epoch.
        - A sweep, in a transaction holding that row exclusively, finds which listed blobs
          no committed version references and records them as condemned; only then does
          it ask the blob service to delete them; afterwards it records the deleted ones
          in a new epoch and releases the ones the blob service kept (used again since).

        So a commit either lands before the condemnation (the sweep sees its references
        and keeps the content) or after it (and refuses; the client uploads again). A
        lease on the state row keeps sweeps to one replica at a time; a sweep that died
        leaves condemnations open, which the next sweep finishes before anything else.
        The blob service also keeps content written or looked up within its own minimum
        grace period, which protects uploads that are not committed yet.

        Raises:
            InvalidArgument: a negative grace period.
            FailedPrecondition: another sweep holds the lease.
        """
        if grace < timedelta(0):
            raise InvalidArgument("grace_period_seconds must not be negative")
        unused_before = utcnow() - grace
        owner = uuid.uuid4().hex
        examined = referenced = deleted = deleted_bytes = removed = 0
        if not dry_run:
            self.db.run(lambda uow: _take_gc_lease(uow.repo, owner), write=True)
        try:
            if not dry_run:
                self._finish_interrupted_sweeps(unused_before)
            for batch in self.content.list_unused(unused_before):
                examined += len(batch)
                garbage = self.db.run(
                    lambda uow: _condemn_unreferenced(uow.repo, batch, owner, dry_run),  # noqa: B023
                    write=not dry_run,
                )
                referenced += len(batch) - len(garbage)
                if garbage and not dry_run:
                    garbage = self._delete_condemned(garbage, unused_before, precise=True)
                deleted += len(garbage)
                deleted_bytes += sum(s for _, s in garbage)
            if not dry_run:
                removed = self.content.delete_unused([], unused_before, remove_stale_uploads=True)[1]
        finally:
            if not dry_run:
                self.db.run(lambda uow: _release_gc_lease(uow.repo, owner), write=True)
        report = GarbageReport(examined, referenced, deleted, deleted_bytes, removed)
        log.info("garbage collection: %s%s", report, " (dry run)" if dry_run else "")
        return report

    def _delete_condemned(
        self, condemned: list[tuple[str, int]], unused_before: datetime, *, precise: bool
    ) -> list[tuple[str, int]]:
        """Deletes condemned blobs and closes their condemnation; returns those deleted.

        Deleted blobs are closed in a new epoch: a commit that read an older epoch may have
        seen them before the deletion. With ``precise``, the blobs the blob service kept
        (used again since the sweep listed them, so present) are released at once, as if
        never condemned. A sweep finishing another's condemnations cannot tell whether the
        dead sweep deleted them already, so it closes them all in the new epoch.
        """
        gone, _ = self.content.delete_unused(condemned, unused_before, remove_stale_uploads=False)
        gone_hashes = {h for h, _ in gone}
        kept = {h for h, _ in condemned if h not in gone_hashes} if precise else set()
        closed = [h for h, _ in condemned if h not in kept]

        def close(uow: UnitOfWork) -> None:
            state = uow.repo.lock_gc_state(exclusive=True)
            uow.repo.close_condemnation(state, closed, released=sorted(kept))

        self.db.run(close, write=True)
        return gone

    def _finish_interrupted_sweeps(self, unused_before: datetime) -> None:
        """Completes condemnations a sweep that died left open, so commits of that content proceed."""

        def prune_and_find(uow: UnitOfWork) -> list[tuple[str, int]]:
            state = uow.repo.lock_gc_state(exclusive=True)
            uow.repo.prune_condemned(state, utcnow() - CONDEMNATION_MEMORY)
            return uow.repo.condemned_in_progress()

        leftover = self.db.run(prune_and_find, write=True)
        for start in range(0, len(leftover), GC_BATCH):
            self._delete_condemned(leftover[start : start + GC_BATCH], unused_before, precise=False)
        if leftover:
            log.warning("garbage collection finished %d blob deletions an interrupted sweep left open", len(leftover))

    def follow_events(self, sequence: int, resource_prefix: str = "", limit: int = 500) -> tuple[list[EventView], int]:
        """Like ``events_after``, for streams following the log: served from the recent events this
        process keeps in memory when they cover ``sequence``, so open streams cost no queries."""
        if sequence < 0:
            raise InvalidArgument(f"start_after must not be negative (got {sequence})")
        cached = self.event_feed.recent_after(sequence, resource_prefix, limit)
        return cached if cached is not None else self.events_after(sequence, resource_prefix, limit)

    def wait_for_events(self, seen: int, wake: threading.Event, timeout: float) -> None:
        """Blocks until an event after ``seen`` is committed, ``wake`` is set, or ``timeout`` passes."""
        self.event_feed.wait(seen, wake, timeout)

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
        if row is None or (kind is not None and row.kind != kind.value) or _is_unborn(row):
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
            if ref.index > MAX_INDEX:
                # The grammar allows 18 digits; no stored index is that large.
                raise NotFound(f"{context.name} has no {member} v{ref.index}")
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
            run=version.producer_run or "",
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
            tags=tuple(row.tags or ()),
            protected_aliases=tuple(row.protected_aliases or ()),
            retention_keep_last=row.retention_keep_last,
        )


def _check_expectation(
    name: CollectionName, alias: str, current: int | None, expected_index: int | None, expect_unset: bool
) -> None:
    """Compare-and-set: refuses the change unless the alias names what the caller expects."""
    holder = "is not set" if current is None else f"names v{current}"
    if expect_unset and current is not None:
        raise FailedPrecondition(f"alias {alias!r} of {name} {holder}; expected it unset")
    if expected_index is not None and current != expected_index:
        raise FailedPrecondition(f"alias {alias!r} of {name} {holder}, not the expected v{expected_index}")


def _event_view(event: Event) -> EventView:
    return EventView(
        sequence=event.sequence,
        kind=event.kind,
        resource=event.resource,
        before=event.before,
        after=event.after,
        actor=event.actor,
        created_at=event.created_at,
    )


def _refuse_collected_content(repo: Repository, entries: Sequence[FileEntry], epoch: int) -> None:
    """Refuses a commit naming content a sweep is deleting, or deleted after ``epoch`` was read."""
    if not entries:
        return
    state = repo.lock_gc_state(exclusive=False)
    sizes = {e.digest: e.size_bytes for e in entries}
    taken = sorted(sizes) if epoch < state.pruned_through else sorted(repo.condemned_since(sorted(sizes), epoch))
    if taken:
        raise FailedPrecondition(
            f"garbage collection deleted or is deleting {len(taken)} of the manifest's blobs while this commit "
            f"was in flight (e.g. {taken[0]}): upload what FindMissingBlobs reports missing and commit again",
            violations=[(MISSING_BLOB, f"blobs/{h}/{sizes[h]}", "collected during the commit") for h in taken],
        )


def _take_gc_lease(repo: Repository, owner: str) -> None:
    state = repo.lock_gc_state(exclusive=True)
    now = utcnow()
    if state.lease_owner and state.lease_until is not None and state.lease_until > now:
        raise FailedPrecondition(
            f"another garbage collection is running (its lease lasts until {state.lease_until.isoformat()}); "
            "wait for it to finish"
        )
    state.lease_owner, state.lease_until = owner, now + GC_LEASE


def _release_gc_lease(repo: Repository, owner: str) -> None:
    state = repo.lock_gc_state(exclusive=True)
    if state.lease_owner == owner:
        state.lease_owner, state.lease_until = None, None


def _condemn_unreferenced(
    repo: Repository, batch: list[tuple[str, int]], owner: str, dry_run: bool
) -> list[tuple[str, int]]:
    """The blobs of ``batch`` no committed version references, condemned unless ``dry_run``."""
    if not dry_run:
        state = repo.lock_gc_state(exclusive=True)
        if state.lease_owner != owner:
            raise FailedPrecondition("this garbage collection lost its lease to another one; it stopped")
        state.lease_until = utcnow() + GC_LEASE
    live = repo.referenced_digests([h for h, _ in batch])
    garbage = [(h, s) for h, s in batch if h not in live]
    if not dry_run:
        repo.condemn(garbage)
    return garbage


def _is_unborn(row: Collection) -> bool:
    """An artifact none of whose versions has ever committed: only its pending pushes know it."""
    return row.kind == CollectionKind.ARTIFACT.value and row.next_index == 0
