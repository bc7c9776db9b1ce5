"""Plain values the metadata service returns: what the servicer turns into protos."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from mreg.metadata_service.manifest import FileEntry

T = TypeVar("T")


class VersionState(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    DELETED = "deleted"


class CollectionKind(StrEnum):
    ARTIFACT = "artifact"
    REGISTERED_MODEL = "registered_model"

    @property
    def label(self) -> str:
        return "artifact" if self is CollectionKind.ARTIFACT else "registered model"


@dataclass(frozen=True, slots=True)
class VersionView:
    name: str
    uid: str
    artifact: str
    type: str
    index: int | None
    state: VersionState
    digest: str
    size_bytes: int
    file_count: int
    aliases: tuple[str, ...]
    description: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    created_at: datetime
    committed_at: datetime | None
    manifest: tuple[FileEntry, ...] = ()
    run: str = ""


@dataclass(frozen=True, slots=True)
class CollectionView:
    """An artifact (member_count counts versions) or registered model (counts links)."""

    name: str
    kind: CollectionKind
    type: str
    description: str
    member_count: int
    aliases: tuple[tuple[str, int], ...]
    created_at: datetime
    tags: tuple[str, ...] = ()
    protected_aliases: tuple[str, ...] = ()
    retention_keep_last: int | None = None


@dataclass(frozen=True, slots=True)
class LinkView:
    name: str
    registered_model: str
    index: int
    aliases: tuple[str, ...]
    version: VersionView
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CommitResult:
    version: VersionView
    created: bool
    links: tuple[LinkView, ...]
    # Indexes the artifact's retention policy deleted because this commit pushed them out.
    retention_deleted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ProjectView:
    name: str  # "entity/project"
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Resolution:
    version: VersionView
    link: LinkView | None


@dataclass(frozen=True, slots=True)
class AliasChange:
    collection: str
    alias: str
    index: int
    previous_index: int | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing.

    ``item_tokens[i]`` continues the listing after ``items[i]``: the servicer ends a page
    early with it when the whole page would not fit one response.
    """

    items: tuple[T, ...]
    next_page_token: str
    item_tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A change made in the current transaction, to be appended to the event log at commit."""

    kind: str
    resource: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    # The collection whose resolves it can change; None for one that changes none (a run's inputs).
    collection_id: int | None


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A mutation's request id with what identifies the request and rebuilds its result, to be recorded at
    commit (catalog.idempotency)."""

    request_id: str
    method: str
    fingerprint: str
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventView:
    sequence: int
    kind: str
    resource: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    actor: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Lineage:
    producer_run: str
    consumer_runs: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeletedVersion:
    version: VersionView
    removed_aliases: tuple[str, ...]
    removed_links: tuple[str, ...]
    # The registered models' aliases that named the removed links, as "registered model:alias".
    removed_link_aliases: tuple[str, ...] = ()
