"""Versions of artifacts: creating a pending version, committing it, resolving, listing and deleting.

A version is created pending, then committed with its manifest once the blob service has
every file's content; only then does it get its index. Committing may also move aliases,
link the version into registered models and apply the artifact's retention policy, all
in the commit's transaction.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mreg.metadata_service import filters
from mreg.metadata_service.catalog import garbage
from mreg.metadata_service.catalog.aliases import move_alias, remove_alias
from mreg.metadata_service.catalog.batching import CommitQueue
from mreg.metadata_service.catalog.common import (
    BlobService,
    Caller,
    find_collection,
    is_unborn,
    require_kind,
    resolve_version_row,
    select_version,
    tombstone,
    validate_aliases,
    validate_metadata,
    validate_tags,
)
from mreg.metadata_service.catalog.idempotency import REQUEST_RECORD_TTL, Mutations
from mreg.metadata_service.catalog.links import link_version, unlink
from mreg.metadata_service.catalog.resolution import Resolver
from mreg.metadata_service.catalog.retention import apply_retention
from mreg.metadata_service.catalog.views import (
    CollectionContext,
    build_version_view,
    collection_context,
    link_name,
    link_view_by_id,
    version_name,
    version_replayed,
    version_view,
    version_view_of,
    view_by_uid,
)
from mreg.metadata_service.domain import (
    CollectionKind,
    CommitResult,
    DeletedVersion,
    Page,
    Resolution,
    VersionState,
    VersionView,
)
from mreg.metadata_service.errors import MISSING_BLOB, FailedPrecondition, NotFound, Reason
from mreg.metadata_service.lru import WeightedLru
from mreg.metadata_service.manifest import FileEntry, Manifest, build_manifest
from mreg.metadata_service.models import Collection, Version, utcnow
from mreg.metadata_service.pagination import decode_token, encode_token, page_size, path_key, version_key
from mreg.metadata_service.references import (
    CollectionName,
    parse_collection,
    parse_reference,
    parse_selected_reference,
    validate_type,
)
from mreg.metadata_service.repository import Repository
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.principals import Role

log = logging.getLogger(__name__)

DEFAULT_PENDING_TTL = timedelta(hours=24)
# Versions created lately whose artifact a commit looks up to join its queue (see Versions.commit).
PENDING_ARTIFACTS_KEPT = 10_000
DEFAULT_FILE_PAGE_SIZE = 1000
MAX_FILE_PAGE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class LinkRequest:
    registered_model: str
    aliases: tuple[str, ...] = ()


@dataclass(slots=True)
class _CommitPlan:
    """What a commit was asked for, checked, and the GC epoch its content check was made under."""

    manifest: Manifest
    digest: str
    aliases: list[str]
    link_targets: tuple[tuple[CollectionName, list[str]], ...]
    run: str | None
    gc_epoch: int = 0
    fresh_epoch: bool = True

    def committed_columns(self, committed_at: datetime | None = None) -> dict[str, Any]:
        """The columns a commit fills in on its version, besides its index and state."""
        return {
            "digest": self.digest,
            "size_bytes": self.manifest.size_bytes,
            "file_count": len(self.manifest.entries),
            "committed_at": committed_at or utcnow(),
            "producer_run": self.run,
        }

    def refuse_collected_content(self, repo: Repository) -> None:
        garbage.refuse_collected_content(repo, self.manifest.entries, self.gc_epoch, fresh=self.fresh_epoch)

    def request_arguments(self, version_arguments: tuple[Any, ...]) -> tuple[Any, ...]:
        """What makes two CommitVersion requests under one request id the same request."""
        links = [(str(name), aliases) for name, aliases in self.link_targets]
        return (*version_arguments, self.digest, self.aliases, links, self.run)


@dataclass(slots=True)
class _NewVersion:
    """A version to create and commit in one call, checked and planned, before its transaction."""

    caller: Caller
    name: CollectionName
    type_: str
    description: str
    tags: list[str]
    metadata: dict[str, Any]
    plan: _CommitPlan
    request_id: str

    def request_arguments(self) -> tuple[Any, ...]:
        version = ("new", str(self.name), self.type_, self.description, self.tags, self.metadata)
        return self.plan.request_arguments(version)

    def committed_version(self, artifact_id: int, index: int, now: datetime) -> Version:
        return Version(
            uid=uuid.uuid4().hex,
            artifact_id=artifact_id,
            index=index,
            state=VersionState.COMMITTED.value,
            description=self.description,
            tags=self.tags,
            metadata_doc=self.metadata,
            created_at=now,
            **self.plan.committed_columns(now),
        )


@dataclass(slots=True)
class _PendingCommit:
    """A commit of a pending version, checked and planned, before its transaction."""

    caller: Caller
    uid: str
    plan: _CommitPlan
    request_id: str

    def request_arguments(self) -> tuple[Any, ...]:
        return self.plan.request_arguments((self.uid,))


class _RunAlone(Exception):
    """Commits queued together that must each run in a transaction of its own."""


class Versions:
    """The life of a version, from pending to committed to deleted."""

    def __init__(
        self,
        database: Database,
        content: BlobService,
        mutations: Mutations,
        pending_ttl: timedelta,
        content_check_cache: timedelta,
    ) -> None:
        self.db = database
        self.content = content
        self.mutations = mutations
        self.pending_ttl = pending_ttl
        self.resolver = Resolver()
        self.new_versions: CommitQueue[_NewVersion, CommitResult] = CommitQueue(
            self._commit_new_version, self._commit_new_versions_together
        )
        self.pending_commits: CommitQueue[_PendingCommit, CommitResult] = CommitQueue(
            self._commit_pending, self._commit_pending_together
        )
        # The artifact of each version this replica created lately, by uid: the queue a commit of it joins.
        # A commit of a version created elsewhere reads it, if other commits are running here (see commit).
        self._created_in: WeightedLru[str, int] = WeightedLru(PENDING_ARTIFACTS_KEPT)
        # Commits of pending versions running outside the queue, whose artifact was not looked up.
        self._unqueued_commits = 0
        self._unqueued_lock = threading.Lock()
        self.gc_epochs = garbage.EpochReader(database)
        self.seen_content = garbage.SeenContent(content_check_cache.total_seconds())

    def create(
        self,
        caller: Caller,
        artifact: str,
        type_: str,
        description: str = "",
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        request_id: str = "",
    ) -> VersionView:
        """A new pending version of ``artifact``; the artifact appears only when a version commits."""
        name, clean_tags, clean_metadata = _check_new_version(caller, artifact, type_, tags, metadata)

        def work(uow: UnitOfWork) -> tuple[VersionView, dict[str, Any]]:
            row = _ensure_artifact(uow, name, type_)
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
            # A pending version has no index, so no alias or 'latest' can name it: its view needs no
            # reading of the artifact's aliases and latest version.
            context = CollectionContext(row, uow.repo.collection_full_name(row), {}, None)
            created_in[version.uid] = row.id
            return build_version_view(version, context, ()), {"uid": version.uid}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> VersionView:
            return view_by_uid(uow.repo, key["uid"])

        created_in: dict[str, int] = {}
        arguments = (str(name), type_, description, clean_tags, clean_metadata)
        view = self.mutations.run(caller, "CreateVersion", request_id, arguments, work, replay)
        if view.uid in created_in:
            self._created_in.put(view.uid, created_in[view.uid])
        return view

    def commit(
        self,
        caller: Caller,
        uid: str,
        entries: Sequence[FileEntry],
        aliases: Sequence[str] = (),
        links: Sequence[LinkRequest] = (),
        run: str = "",
        request_id: str = "",
    ) -> CommitResult:
        """Commits a pending version with its manifest, once the blob service holds all of its content.

        Content identical to the latest version's commits nothing new: the pending version
        is dropped and the result names the latest.
        """
        plan = self._plan_commit(caller, entries, aliases, links, run)
        pending = _PendingCommit(caller, uid, plan, request_id)
        artifact_id = self._created_in.get(uid)
        if artifact_id is None and (self.pending_commits.busy() or self._unqueued_commits):
            # Created through another replica, while commits run here: one read finds the queue to join.
            artifact_id = self.db.run(lambda uow: uow.repo.artifact_of_version(uid), write=False)
        if artifact_id is None:
            with self._unqueued_lock:
                self._unqueued_commits += 1
            try:
                return self._commit_pending(pending)
            finally:
                with self._unqueued_lock:
                    self._unqueued_commits -= 1
        # Commits to one artifact by one actor queue behind each other's transaction, then run together.
        return self.pending_commits.run((artifact_id, caller.actor), pending)

    def _commit_pending(self, pending: _PendingCommit) -> CommitResult:
        """``commit``'s transaction for one version."""
        caller, uid, plan = pending.caller, pending.uid, pending.plan

        def locate(uow: UnitOfWork) -> tuple[Version, Collection, bool]:
            repo = uow.repo
            locked = repo.lock_version_for_commit(uid, share_gc_state=bool(plan.manifest.entries))
            if locked is None:
                raise NotFound(
                    f"no pending version with uid {uid!r}: it was never created or has expired",
                    Reason.PENDING_VERSION_NOT_FOUND,
                    {"resource": uid},
                )
            version, artifact, latest_digest = locked
            owner = repo.collection_full_name(artifact)
            caller.require(Role.WRITER, owner.entity, owner.project)
            if version.state == VersionState.COMMITTED.value:
                if version.digest != plan.digest:
                    raise FailedPrecondition(
                        f"version {uid} is already committed with a different manifest; versions are immutable",
                        reason=Reason.VERSION_ALREADY_COMMITTED,
                    )
                return version, artifact, False
            if version.state == VersionState.DELETED.value:
                raise FailedPrecondition(f"version {uid} was deleted", reason=Reason.VERSION_ALREADY_COMMITTED)
            if version.created_at < utcnow() - self.pending_ttl:
                raise NotFound(
                    f"pending version {uid} has expired; create a new one",
                    Reason.PENDING_VERSION_NOT_FOUND,
                    {"resource": uid},
                )
            latest = repo.latest_version(artifact.id) if latest_digest == plan.digest else None
            if latest is not None:
                # Same content as latest: no new version, the pending one is dropped.
                repo.delete_pending_version(version)
                return latest, artifact, False
            plan.refuse_collected_content(repo)
            repo.mark_version_committed(version, index=repo.allocate_index(artifact), **plan.committed_columns())
            repo.add_manifest(version.id, plan.manifest.entries)
            return version, artifact, True

        return self._run_commit(caller, plan, pending.request_arguments(), locate, pending.request_id)

    def _commit_pending_together(self, group: Sequence[_PendingCommit]) -> list[CommitResult]:
        """``commit``'s transaction for pending versions of one artifact by one actor, in order: one read of
        the latest digest and one index allocation for all, their rows updated and their manifests written in
        a round trip each.

        Raises:
            _RunAlone: one is not a pending version of the artifact (committed, deleted, expired, unknown), or
                is in the group twice, or would repeat the content of the version before it, or the artifact's
                retention policy must run after each; any other error of the transaction.
        """
        with_content = any(pending.plan.manifest.entries for pending in group)
        if len({pending.uid for pending in group}) < len(group):
            # The same version twice (a retry under another request id): the second commit must see the first.
            raise _RunAlone("a version is committed twice")

        def work(uow: UnitOfWork) -> list[tuple[CommitResult, dict[str, Any]]]:
            repo = uow.repo
            first = repo.lock_version_for_commit(group[0].uid, share_gc_state=with_content)
            if first is None:
                raise _RunAlone("a pending version is not there")
            _, artifact, latest = first
            versions = [first[0]]
            for pending in group[1:]:
                locked = repo.lock_version_for_commit(pending.uid, latest_digest=False)
                if locked is None or locked[1].id != artifact.id:
                    raise _RunAlone("a pending version is not there, or of another artifact")
                versions.append(locked[0])
            owner = repo.collection_full_name(artifact)
            expired = utcnow() - self.pending_ttl
            for pending, version in zip(group, versions, strict=True):
                pending.caller.require(Role.WRITER, owner.entity, owner.project)
                if version.state != VersionState.PENDING.value or version.created_at < expired:
                    raise _RunAlone("a version is committed, deleted or expired")
            first_index = _admit_together(repo, [pending.plan for pending in group], artifact, latest)
            now = utcnow()
            repo.mark_versions_committed(
                [
                    (version, {"index": first_index + i, **pending.plan.committed_columns(now)})
                    for i, (pending, version) in enumerate(zip(group, versions, strict=True))
                ]
            )
            made = list(zip(versions, group, strict=True))
            repo.add_manifests((version.id, pending.plan.manifest.entries) for version, pending in made)
            return [
                self._finish_commit(uow, pending.caller, pending.plan, version, artifact, created=True)
                for version, pending in made
            ]

        requests = [(pending.caller, pending.request_id, pending.request_arguments()) for pending in group]
        return self.mutations.run_together(group[0].caller.actor, "CommitVersion", requests, work)

    def create_and_commit(
        self,
        caller: Caller,
        artifact: str,
        type_: str,
        entries: Sequence[FileEntry],
        description: str = "",
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
        links: Sequence[LinkRequest] = (),
        run: str = "",
        request_id: str = "",
    ) -> CommitResult:
        """Creates a version of ``artifact`` and commits it in one transaction, with no pending version.

        For content the blob service already holds: it saves a pending version's round trip
        and transaction. Content identical to the latest version's commits nothing new and
        the result names the latest, which keeps its own description, tags and metadata.
        """
        name, clean_tags, clean_metadata = _check_new_version(caller, artifact, type_, tags, metadata)
        plan = self._plan_commit(caller, entries, aliases, links, run)
        new = _NewVersion(caller, name, type_, description, clean_tags, clean_metadata, plan, request_id)
        # Commits to one artifact by one actor queue behind each other's transaction, then run together.
        return self.new_versions.run((str(name), type_, caller.actor), new)

    def _commit_new_version(self, new: _NewVersion) -> CommitResult:
        """``create_and_commit``'s transaction for one version."""
        plan = new.plan

        def locate(uow: UnitOfWork) -> tuple[Version, Collection, bool]:
            repo = uow.repo
            new.caller.require(Role.WRITER, new.name.entity, new.name.project)
            row = _ensure_artifact(uow, new.name, new.type_, lock=True)
            # The digest alone decides; the latest version is loaded only when it is the answer.
            if (
                row.next_index > 0
                and repo.latest_digest(row.id, share_gc_state=bool(plan.manifest.entries)) == plan.digest
            ):
                latest = repo.latest_version(row.id)
                assert latest is not None
                return latest, row, False
            plan.refuse_collected_content(repo)
            version = repo.add_version(new.committed_version(row.id, repo.allocate_index(row), utcnow()))
            repo.add_manifest(version.id, plan.manifest.entries)
            return version, row, True

        return self._run_commit(new.caller, plan, new.request_arguments(), locate, new.request_id)

    def _commit_new_versions_together(self, group: Sequence[_NewVersion]) -> list[CommitResult]:
        """``create_and_commit``'s transaction for versions of one artifact by one actor, in order: one lock,
        one read of the latest digest and one index allocation for all, each version's statements in one
        round trip with the others'.

        Raises:
            _RunAlone: one would repeat the latest version's content (and commit nothing new), or the
                artifact's retention policy must run after each; any other error of the transaction.
        """
        first = group[0]
        with_content = any(new.plan.manifest.entries for new in group)

        def work(uow: UnitOfWork) -> list[tuple[CommitResult, dict[str, Any]]]:
            repo = uow.repo
            for new in group:
                new.caller.require(Role.WRITER, new.name.entity, new.name.project)
            row = _ensure_artifact(uow, first.name, first.type_, lock=True)
            latest = repo.latest_digest(row.id, share_gc_state=with_content) if row.next_index > 0 else None
            first_index = _admit_together(repo, [new.plan for new in group], row, latest)
            now = utcnow()
            versions = [new.committed_version(row.id, first_index + i, now) for i, new in enumerate(group)]
            repo.add_versions(versions)
            made = list(zip(versions, group, strict=True))
            repo.add_manifests((version.id, new.plan.manifest.entries) for version, new in made)
            return [self._finish_commit(uow, new.caller, new.plan, version, row, created=True) for version, new in made]

        requests = [(new.caller, new.request_id, new.request_arguments()) for new in group]
        return self.mutations.run_together(first.caller.actor, "CommitVersion", requests, work)

    def _plan_commit(
        self,
        caller: Caller,
        entries: Sequence[FileEntry],
        aliases: Sequence[str],
        links: Sequence[LinkRequest],
        run: str,
    ) -> _CommitPlan:
        """Checks what a commit asks for, before any transaction, and that the blob service holds its content."""
        manifest = build_manifest(entries)
        link_targets = tuple(
            (
                parse_collection(link.registered_model, caller.defaults, "registered model"),
                validate_aliases(link.aliases),
            )
            for link in links
        )
        plan = _CommitPlan(
            manifest=manifest,
            digest=manifest.digest,  # hashes the canonical form of every entry: once
            aliases=validate_aliases(aliases),
            link_targets=link_targets,
            run=str(parse_collection(run, caller.defaults, "run")) if run else None,
        )
        # Read before asking the blob service, so the transaction can tell whether a
        # sweep deleted any of this content after the blob service said it was there.
        plan.gc_epoch, plan.fresh_epoch = self.gc_epochs.recent() if manifest.entries else (0, True)
        self._require_content(plan)
        return plan

    def _run_commit(
        self,
        caller: Caller,
        plan: _CommitPlan,
        arguments: tuple[Any, ...],
        locate: Callable[[UnitOfWork], tuple[Version, Collection, bool]],
        request_id: str,
    ) -> CommitResult:
        """Runs a commit's transaction: ``locate`` finds or makes the committed version, and the
        events, aliases, links and retention policy follow in the same transaction. ``arguments`` are
        the request's, for its idempotency record."""

        def work(uow: UnitOfWork) -> tuple[CommitResult, dict[str, Any]]:
            target, artifact, created = locate(uow)
            return self._finish_commit(uow, caller, plan, target, artifact, created=created)

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> CommitResult:
            view = version_view_of(uow.repo, version_replayed(uow.repo, key["version_id"]), with_manifest=True)
            links = tuple(link_view_by_id(uow.repo, link_id) for link_id in key["link_ids"])
            return CommitResult(view, key["created"], links, tuple(key.get("retention_deleted", ())))

        try:
            return self.mutations.run(caller, "CommitVersion", request_id, arguments, work, replay)
        except garbage.StaleEpoch:
            plan.gc_epoch, plan.fresh_epoch = self.gc_epochs.fresh(), True
            self._require_content(plan, ask=True)
            return self.mutations.run(caller, "CommitVersion", request_id, arguments, work, replay)

    def _finish_commit(
        self,
        uow: UnitOfWork,
        caller: Caller,
        plan: _CommitPlan,
        target: Version,
        artifact: Collection,
        *,
        created: bool,
    ) -> tuple[CommitResult, dict[str, Any]]:
        """What follows in a commit's transaction once its version is found or made: the events, aliases,
        links and retention policy; returns the result and its idempotency key."""
        repo = uow.repo
        assert target.index is not None
        collection_name = repo.collection_full_name(artifact)
        if created and target.index == 0:
            uow.record(
                "collection.created",
                str(collection_name),
                after={"kind": "artifact", "type": artifact.type},
                collection_id=artifact.id,
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
                    "run": plan.run,
                },
                collection_id=artifact.id,
            )
        for alias in plan.aliases:
            move_alias(uow, caller, artifact, collection_name, alias, target.index)
        linked = [
            link_version(uow, caller, target, artifact, rm_name, rm_aliases)
            for rm_name, rm_aliases in plan.link_targets
        ]
        link_views = tuple(view for view, _, _ in linked)
        retention_deleted: tuple[int, ...] = ()
        if created and artifact.retention_keep_last is not None:
            retention_deleted = apply_retention(uow, artifact, collection_name)
        if created:
            # Nothing needs reading back: the new version is the latest, the only aliases naming it
            # are the ones this commit just moved, and its manifest is the one in hand (sorted as stored).
            moved = {alias: target.index for alias in plan.aliases}
            view = build_version_view(
                target, CollectionContext(artifact, collection_name, moved, target.index), plan.manifest.entries
            )
        else:
            view = version_view(repo, target, collection_context(repo, artifact), with_manifest=True)
        if created:
            log.info("committed %s (%d files, %d bytes)", view.name, view.file_count, view.size_bytes)
        key = {
            "version_id": target.id,
            "created": created,
            "link_ids": [link_id for _, _, link_id in linked],
            "retention_deleted": list(retention_deleted),
        }
        return CommitResult(view, created, link_views, retention_deleted), key

    def _require_content(self, plan: _CommitPlan, *, ask: bool = False) -> None:
        """Refuses (MISSING_BLOB) a manifest naming content the blob service does not hold.

        Content all seen lately is not asked about again unless ``ask``: the plan then checks it against
        the epochs it was seen under (garbage.SeenContent).
        """
        entries = plan.manifest.entries
        digests = sorted({(e.digest, e.size_bytes) for e in entries})
        if not digests:
            return
        seen_under = None if ask else self.seen_content.epoch_if_all_seen(digests)
        if seen_under is not None:
            plan.gc_epoch, plan.fresh_epoch = min(plan.gc_epoch, seen_under), False
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
                reason=Reason.MISSING_BLOB,
            )
        self.seen_content.saw(digests, plan.gc_epoch)

    def resolve(self, caller: Caller, reference: str) -> Resolution:
        """The version a reference names, and the link it went through if it names a registered model's."""
        ref = parse_reference(reference, caller.defaults)
        return self.resolver.resolve(self.db, ref)

    def search(
        self, caller: Caller, parent: str, size: int, token: str, filter_text: str = "", order_by: str = ""
    ) -> Page[VersionView]:
        """A page of an artifact's committed versions matching a filter, in the order asked for."""
        name = parse_collection(parent, caller.defaults, "artifact")
        limit = page_size(size)
        where = filters.parse_filter(filter_text)
        order = filters.parse_order_by(order_by)
        listing = f"versions:{name}:{filter_text}:{order_by}"
        after = decode_token(token, listing, version_key(order.field))

        def work(uow: UnitOfWork) -> Page[VersionView]:
            row = find_collection(uow.repo, name, CollectionKind.ARTIFACT)
            context = collection_context(uow.repo, row)
            rows = uow.repo.search_versions(row.id, where, order, tuple(after) if after else None, limit + 1)
            views = tuple(version_view(uow.repo, v, context, with_manifest=False) for v, _ in rows[:limit])
            tokens = tuple(
                encode_token(listing, [value.isoformat() if isinstance(value, datetime) else value, v.index])
                for v, value in rows[:limit]
            )
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    def files(self, caller: Caller, reference: str, size: int, token: str) -> tuple[str, Page[FileEntry]]:
        """The files of the version ``reference`` names, a page at a time; returns (version name, page)."""
        ref = parse_reference(reference, caller.defaults)
        limit = page_size(size, DEFAULT_FILE_PAGE_SIZE, MAX_FILE_PAGE_SIZE)

        def work(uow: UnitOfWork) -> tuple[str, Page[FileEntry]]:
            version, _ = resolve_version_row(uow.repo, ref)
            # Bound to the version itself, so an alias moving between pages cannot mix manifests.
            listing = f"files:{version.uid}"
            after = decode_token(token, listing, path_key)
            rows = uow.repo.manifest_page(version.id, after, limit + 1)
            tokens = tuple(encode_token(listing, entry.path) for entry in rows[:limit])
            page = Page(tuple(rows[:limit]), tokens[-1] if len(rows) > limit else "", tokens)
            return version_name(uow.repo, version), page

        return self.db.run(work, write=False)

    def delete(self, caller: Caller, reference: str, force: bool = False, request_id: str = "") -> DeletedVersion:
        """Tombstones a version; with ``force`` also removes the aliases and links that name it."""
        ref = parse_selected_reference(reference, caller.defaults, "version")

        def work(uow: UnitOfWork) -> tuple[DeletedVersion, dict[str, Any]]:
            row = find_collection(uow.repo, ref.collection, CollectionKind.ARTIFACT, for_update=True)
            context = collection_context(uow.repo, row)
            version = select_version(uow.repo, context, ref)
            assert version.index is not None
            aliases = sorted(a for a, i in context.aliases.items() if i == version.index)
            links = uow.repo.links_to_version(version.id)
            link_names = [link_name(uow.repo, link) for link in links]
            if (aliases or links) and not force:
                held = [f"alias {a!r}" for a in aliases] + [f"link {n}" for n in link_names]
                raise FailedPrecondition(
                    f"{context.name}:v{version.index} is still named by {', '.join(held)}; "
                    "remove them first or delete with force",
                    reason=Reason.VERSION_IN_USE,
                    metadata={"aliases": ",".join(aliases), "links": ",".join(link_names)},
                )
            for alias in aliases:
                remove_alias(uow, caller, row, context.name, alias)
            link_aliases = []
            for link, name in zip(links, link_names, strict=True):
                model = name.rpartition(":")[0]
                link_aliases += [f"{model}:{alias}" for alias in unlink(uow, caller, link, name)]
            tombstone(uow, version, f"{context.name}:v{version.index}")
            view = version_view(uow.repo, version, collection_context(uow.repo, row), with_manifest=False)
            result = DeletedVersion(view, tuple(aliases), tuple(link_names), tuple(link_aliases))
            key = {"uid": version.uid, "aliases": aliases, "links": link_names, "link_aliases": link_aliases}
            return result, key

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> DeletedVersion:
            return DeletedVersion(
                view_by_uid(uow.repo, key["uid"]),
                tuple(key["aliases"]),
                tuple(key["links"]),
                tuple(key.get("link_aliases", ())),
            )

        return self.mutations.run(caller, "DeleteVersion", request_id, (str(ref), force), work, replay)

    def expire_pending(self) -> int:
        """Deletes pending versions older than the TTL and forgets old request records."""

        def work(uow: UnitOfWork) -> int:
            expired = uow.repo.expired_pending_versions(utcnow() - self.pending_ttl)
            # Count only what this run deleted: a version committed meanwhile stays, and
            # one another run deleted first is that run's to count.
            deleted = [v for v in expired if uow.repo.delete_pending_version(v)]
            uow.repo.delete_unborn_artifacts({v.artifact_id for v in deleted})
            uow.repo.forget_requests(utcnow() - REQUEST_RECORD_TTL)
            return len(deleted)

        count = self.db.run(work, write=True)
        if count:
            log.info("expired %d pending versions", count)
        return count


def _admit_together(repo: Repository, plans: Sequence[_CommitPlan], artifact: Collection, latest: str | None) -> int:
    """What commits running together check before they write, in the artifact's lock; returns the first of the
    indexes it allocates them.

    Raises:
        _RunAlone: the artifact's retention policy must run after each, or one would repeat the content of the
            version before it (``latest``, the latest committed version's digest, for the first).
        FailedPrecondition, garbage.StaleEpoch: as refuse_collected_content, for their content together.
    """
    if artifact.retention_keep_last is not None:
        raise _RunAlone("the artifact's retention policy runs after each commit")
    digests = [plan.digest for plan in plans]
    if any(before == digest for before, digest in zip([latest, *digests], digests, strict=False)):
        raise _RunAlone("a commit repeats the content of the version before it")
    garbage.refuse_collected_content(
        repo,
        [entry for plan in plans for entry in plan.manifest.entries],
        min(plan.gc_epoch for plan in plans),
        fresh=all(plan.fresh_epoch for plan in plans),
    )
    return repo.allocate_index(artifact, len(plans))


def _check_new_version(
    caller: Caller, artifact: str, type_: str, tags: Sequence[str], metadata: dict[str, Any] | None
) -> tuple[CollectionName, list[str], dict[str, Any]]:
    """What a new version starts with, checked as CreateVersion and a one-call commit both check it: the
    artifact's name, and the tags and metadata as stored."""
    name = parse_collection(artifact, caller.defaults, "artifact")
    validate_type(type_)
    return name, validate_tags(tags), validate_metadata(metadata or {})


def _ensure_artifact(uow: UnitOfWork, name: CollectionName, type_: str, *, lock: bool = False) -> Collection:
    """The artifact ``name``, created on first use; ``lock`` takes its row lock, as a commit must, and reads
    the row without loading it into the session (a commit only reads it)."""
    row = uow.repo.find_collection_to_commit_to(name) if lock else uow.repo.find_collection(name)
    if row is None:
        # The artifact stays invisible (is_unborn) until its first version commits,
        # so a push that never commits leaves nothing behind.
        project = uow.repo.ensure_project(name.project_name)
        row = uow.repo.create_collection(project, name.name, CollectionKind.ARTIFACT, type_, "")
        row = row or uow.repo.find_collection(name, for_update=lock)
    assert row is not None
    require_kind(row, name, CollectionKind.ARTIFACT)
    if row.type != type_ and is_unborn(row) and not uow.repo.has_pending_versions(row.id):
        uow.repo.set_collection_type(row, type_)  # nobody ever saw this artifact: the first push to commit picks it
    if row.type != type_:
        raise FailedPrecondition(
            f"artifact {name} has type {row.type!r}; a version of type {type_!r} cannot join it",
            reason=Reason.TYPE_MISMATCH,
            metadata={"expected_type": row.type, "actual_type": type_},
        )
    return row
