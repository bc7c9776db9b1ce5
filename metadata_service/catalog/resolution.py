"""Resolving a reference to a version: the catalog's hottest read.

Every call reads what can change from the database: the collection, its aliases and
latest index, and the version row (its state, metadata and tags), so a resolve is never
staler than its own transaction, on any replica. Only a committed version's manifest is
kept between calls: a version's files never change once it commits, and a cache entry is
keyed by the version's uid, which is never reused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.references import Reference
from mreg.metadata_service.repository import ResolveReads

# Entries, summed over the cached manifests: about 25 MB of paths and digests.
DEFAULT_MANIFEST_CACHE_ENTRIES = 100_000


class ManifestCache:
    """Committed versions' manifests by version uid, least recently used first out.

    Bounded by the number of entries held, so one version with a huge manifest cannot
    hold the memory of thousands of small ones; a manifest larger than the whole bound
    is not kept at all.
    """

    def __init__(self, max_entries: int = DEFAULT_MANIFEST_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._manifests: OrderedDict[str, tuple[FileEntry, ...]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, uid: str) -> tuple[FileEntry, ...] | None:
        with self._lock:
            manifest = self._manifests.get(uid)
            if manifest is not None:
                self._manifests.move_to_end(uid)
            return manifest

    def put(self, uid: str, manifest: tuple[FileEntry, ...]) -> None:
        if len(manifest) > self.max_entries:
            return
        with self._lock:
            if uid in self._manifests:
                return
            self._manifests[uid] = manifest
            self._held += len(manifest)
            while self._held > self.max_entries:
                _, evicted = self._manifests.popitem(last=False)
                self._held -= len(evicted)


class Resolver:
    """Resolves references on a bare connection: one statement for an artifact's version, three for a link's."""

    def __init__(self, manifests: ManifestCache | None = None) -> None:
        self.manifests = manifests or ManifestCache()

    def resolve(self, reads: ResolveReads, ref: Reference) -> Resolution:
        """The version ``ref`` names, and the link it went through if it names a registered model's.

        Raises:
            NotFound: no such collection (or it has no committed version yet), alias, version or link.
        """
        # Past the largest index there is no version; selected_index below says so in words.
        wanted = ref.index if ref.index is None or ref.index <= MAX_INDEX else -1
        rows = reads.context_and_version_by_name(ref.collection, wanted, ref.alias)
        context = context_of_rows(rows)
        if context is None or is_unborn(context.row):
            raise collection_missing(ref.collection, None)
        if context.row.kind == CollectionKind.ARTIFACT.value:
            index = selected_index(context, ref, "version")
            if rows[0].v_id is None:
                raise version_missing(context, index)
            return Resolution(self._version_view(reads, _selected_version(rows[0]), context), None)
        index = selected_index(context, ref, "link")
        linked = reads.linked_version(context.row.id, index)
        if linked is None:
            raise link_missing(context, index)
        artifact = context_of_rows(reads.context_by_id(linked.artifact_id))
        # The link's row lock and foreign key keep its artifact; None would mean a broken database.
        assert artifact is not None, f"link {context.name}:v{index} names a version of a missing artifact"
        version = self._version_view(reads, linked, artifact)
        return Resolution(version, build_link_view(context, linked.link_index, linked.link_created_at, version))

    def _version_view(self, reads: ResolveReads, row: Any, context: CollectionContext) -> VersionView:
        manifest = self.manifests.get(row.uid)
        if manifest is None:
            manifest = tuple(reads.manifest(row.id))
            self.manifests.put(row.uid, manifest)
        return build_version_view(row, context, manifest)


def _selected_version(row: Row[Any]) -> SimpleNamespace:
    """The ``v_*`` columns of a ``context_and_version_by_name`` row, under the names a version row has."""
    return SimpleNamespace(**{key[2:]: value for key, value in row._mapping.items() if key.startswith("v_")})
