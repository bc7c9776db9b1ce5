"""Resolving a reference to a version: the catalog's hottest read.

A resolve is never staler than its own transaction, on any replica. Every change a resolve
could show (an alias, latest, a version's state, metadata or tags, a link) is made by a
transaction that appends to the event log an event naming the collection it changed, and
the log's counter row, which orders the events as their transactions commit, is committed
with it. An answer is kept with the counter as it was read before resolving, and the
collections it was read from: the reference's own, and for a registered model's link the
linked version's artifact. A later resolve of the same reference reads the last event of
those two collections: if none came after the kept counter, nothing the answer shows has
changed, wherever the change was made, and the answer stands; otherwise it reads the
collection, its aliases and latest index and the version row again. Changes to other
collections leave the answer alone. A committed version's manifest is kept apart, by the
version's uid (never reused): a version's files never change once it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row

from mreg.metadata_service.catalog.common import (
    collection_missing,
    is_unborn,
    link_missing,
    selected_index,
    version_missing,
)
from mreg.metadata_service.catalog.views import (
    CollectionContext,
    build_link_view,
    build_version_view,
    context_of_rows,
)
from mreg.metadata_service.domain import CollectionKind, Resolution, VersionView
from mreg.metadata_service.limits import MAX_INDEX
from mreg.metadata_service.lru import WeightedLru
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.references import Reference
from mreg.metadata_service.repository import ResolveReads
from mreg.metadata_service.unit_of_work import Database

# Entries, summed over the cached manifests: about 25 MB of paths and digests.
DEFAULT_MANIFEST_CACHE_ENTRIES = 100_000
# References whose last answer is kept (their manifests are held by the manifest cache).
DEFAULT_RESOLUTION_CACHE_ENTRIES = 10_000


class ManifestCache(WeightedLru[str, tuple[FileEntry, ...]]):
    """Committed versions' manifests by version uid, least recently used first out.

    Bounded by the number of entries held, so one version with a huge manifest cannot
    hold the memory of thousands of small ones; a manifest larger than the whole bound
    is not kept at all. Each manifest counts one more than its entries, so empty ones
    (versions of an empty directory) are bounded too.
    """

    def __init__(self, max_entries: int = DEFAULT_MANIFEST_CACHE_ENTRIES) -> None:
        super().__init__(max_entries, lambda manifest: 1 + len(manifest))


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """A resolve's answer, the event sequence read before it was resolved, and the collections it was read
    from (the reference's own twice for an artifact; a registered model and its linked version's artifact)."""

    sequence: int
    collection_ids: tuple[int, int]
    resolution: Resolution


class ResolutionCache(WeightedLru[Reference, KeptAnswer]):
    """Answers by reference; least recently used first out."""

    def __init__(self, max_entries: int = DEFAULT_RESOLUTION_CACHE_ENTRIES) -> None:
        super().__init__(max_entries)


class Resolver:
    """Resolves references: the last events of the collections an answer kept for the reference was read
    from, straight through the driver, then (unless one of them changed since) on a bare connection one
    statement for an artifact's version, three for a link's."""

    def __init__(self, manifests: ManifestCache | None = None, answers: ResolutionCache | None = None) -> None:
        self.manifests = manifests or ManifestCache()
        self.answers = answers or ResolutionCache()

    def resolve(self, db: Database, ref: Reference) -> Resolution:
        """The version ``ref`` names, and the link it went through if it names a registered model's.

        Raises:
            NotFound: no such collection (or it has no committed version yet), alias, version or link.
        """
        held = self.answers.get(ref)
        checked = db.last_events(held.collection_ids) if held is not None else None
        if held is not None and checked is not None and checked[1] <= held.sequence:
            return held.resolution
        return db.read(lambda connection: self._read(ResolveReads(connection), ref, held, checked))

    def _read(
        self, reads: ResolveReads, ref: Reference, held: KeptAnswer | None, checked: tuple[int, int] | None
    ) -> Resolution:
        """Resolves ``ref`` on a connection and keeps the answer, under the event sequence read before it: a
        change committed after that read has a later sequence. ``checked`` is the check already made, if any.
        """
        if checked is not None:
            sequence = checked[0]
        elif held is None:
            sequence = reads.last_event_sequence()
        else:
            sequence, last_change = reads.last_events(held.collection_ids)
            if last_change <= held.sequence:
                return held.resolution
        resolution, collection_ids = self._resolve(reads, ref)
        self.answers.put(ref, KeptAnswer(sequence, collection_ids, resolution))
        return resolution

    def _resolve(self, reads: ResolveReads, ref: Reference) -> tuple[Resolution, tuple[int, int]]:
        """The answer, and the collections it was read from."""
        context, selected = context_and_selected_version(reads, ref)
        if context is None or is_unborn(context.row):
            raise collection_missing(ref.collection, None)
        if context.row.kind == CollectionKind.ARTIFACT.value:
            index = selected_index(context, ref, "version")
            if selected is None:
                raise version_missing(context, index)
            return Resolution(self._version_view(reads, selected, context), None), (context.row.id, context.row.id)
        index = selected_index(context, ref, "link")
        linked = reads.linked_version(context.row.id, index)
        if linked is None:
            raise link_missing(context, index)
        artifact = context_of_rows(reads.context_by_id(linked.artifact_id))
        # The link's row lock and foreign key keep its artifact; None would mean a broken database.
        assert artifact is not None, f"link {context.name}:v{index} names a version of a missing artifact"
        version = self._version_view(reads, linked, artifact)
        link = build_link_view(context, linked.link_index, linked.link_created_at, version)
        return Resolution(version, link), (context.row.id, linked.artifact_id)

    def _version_view(self, reads: ResolveReads, row: Any, context: CollectionContext) -> VersionView:
        manifest = self.manifests.get(row.uid)
        if manifest is None:
            manifest = tuple(reads.manifest(row.id))
            self.manifests.put(row.uid, manifest)
        return build_version_view(row, context, manifest)


def context_and_selected_version(
    reads: ResolveReads, ref: Reference
) -> tuple[CollectionContext | None, SimpleNamespace | None]:
    """The collection ``ref`` names with its aliases and latest index (None if there is none), and the
    committed version its selector picks in an artifact (None if there is none): one statement."""
    # Past the largest index there is no version; selected_index says so in words.
    wanted = ref.index if ref.index is None or ref.index <= MAX_INDEX else -1
    rows = reads.context_and_version_by_name(ref.collection, wanted, ref.alias)
    selected = _selected_version(rows[0]) if rows and rows[0].v_id is not None else None
    return context_of_rows(rows), selected


def _selected_version(row: Row[Any]) -> SimpleNamespace:
    """The ``v_*`` columns of a ``context_and_version_by_name`` row, under the names a version row has."""
    return SimpleNamespace(**{key[2:]: value for key, value in row._mapping.items() if key.startswith("v_")})
