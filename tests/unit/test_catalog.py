"""The metadata domain's core rules, on a temporary SQLite database and a fake blob service, in milliseconds.

These call :class:`MetadataCatalog`'s use cases directly: no gRPC, no blob server. The same rules are
tested once over the wire, on both databases, in tests/integration.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.catalog.common import Caller
from mreg.metadata_service.db import create_database_engine, upgrade_schema
from mreg.metadata_service.errors import MISSING_BLOB, FailedPrecondition, InvalidArgument, NotFound
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.references import Defaults
from mreg.metadata_service.unit_of_work import Database

CALLER = Caller(Defaults("acme", "vision"), actor="unit-tests")


class FakeBlobService:
    """The BlobService protocol over an in-memory set of (sha256, size) pairs."""

    def __init__(self) -> None:
        self.present: set[tuple[str, int]] = set()

    def store(self, content: bytes) -> FileEntry:
        """Keeps ``content``; returns a manifest entry for it at path "f"."""
        digest = (hashlib.sha256(content).hexdigest(), len(content))
        self.present.add(digest)
        return FileEntry("f", *digest)

    def find_missing(self, digests: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        return [d for d in digests if d not in self.present]

    def list_unused(self, unused_before: datetime) -> Iterator[list[tuple[str, int]]]:
        return iter(())

    def delete_unused(
        self, digests: Sequence[tuple[str, int]], unused_before: datetime, remove_stale_uploads: bool
    ) -> tuple[list[tuple[str, int]], int]:
        return [], 0


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the newest migration, migrated once and copied for each test."""
    path = tmp_path_factory.mktemp("catalog-template") / "metadata.db"
    engine = create_database_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    engine.dispose()
    return path


@pytest.fixture
def blobs() -> FakeBlobService:
    return FakeBlobService()


@pytest.fixture
def catalog(migrated_template: Path, tmp_path: Path, blobs: FakeBlobService) -> Iterator[MetadataCatalog]:
    path = tmp_path / "metadata.db"
    shutil.copyfile(migrated_template, path)
    engine = create_database_engine(f"sqlite:///{path}")
    catalog = MetadataCatalog(Database(engine), blobs)
    yield catalog
    catalog.stop()
    engine.dispose()


def push(catalog: MetadataCatalog, blobs: FakeBlobService, artifact: str, content: str, **commit_fields):
    """Creates a pending version of ``artifact`` and commits one file holding ``content``."""
    entry = blobs.store(content.encode())
    pending = catalog.versions.create(CALLER, artifact, "model")
    return catalog.versions.commit(CALLER, pending.uid, [entry], **commit_fields)


def committed_indexes(catalog: MetadataCatalog, artifact: str) -> list[int]:
    page = catalog.versions.search(CALLER, artifact, 100, "")
    return [v.index for v in page.items if v.index is not None]


def test_commits_get_contiguous_indexes_from_zero_in_commit_order(catalog, blobs) -> None:
    pendings = [catalog.versions.create(CALLER, "resnet", "model") for _ in range(3)]
    # Indexes follow commit order, not creation order.
    results = [
        catalog.versions.commit(CALLER, p.uid, [blobs.store(f"{i}".encode())]) for i, p in enumerate(pendings[::-1])
    ]

    assert [r.version.index for r in results] == [0, 1, 2]
    assert all(r.created for r in results)
    assert sorted(committed_indexes(catalog, "resnet")) == [0, 1, 2]
    assert catalog.versions.resolve(CALLER, "resnet:latest").version.name == "acme/vision/resnet:v2"


def test_a_pending_version_is_not_visible_until_it_commits(catalog, blobs) -> None:
    catalog.versions.create(CALLER, "unborn", "model")

    with pytest.raises(NotFound):
        catalog.versions.resolve(CALLER, "unborn:latest")


def test_an_unchanged_manifest_returns_the_latest_version_without_creating_one(catalog, blobs) -> None:
    first = push(catalog, blobs, "resnet", "same weights")

    again = push(catalog, blobs, "resnet", "same weights")

    assert again.created is False
    assert again.version.index == first.version.index == 0
    assert again.version.digest == first.version.digest
    assert committed_indexes(catalog, "resnet") == [0]


def test_a_commit_whose_content_the_blob_service_lacks_is_refused_naming_the_missing_digests(catalog, blobs) -> None:
    stored = blobs.store(b"uploaded")
    absent = FileEntry("weights.bin", hashlib.sha256(b"never uploaded").hexdigest(), len(b"never uploaded"))
    pending = catalog.versions.create(CALLER, "resnet", "model")

    with pytest.raises(FailedPrecondition) as refused:
        catalog.versions.commit(CALLER, pending.uid, [stored, absent])

    assert refused.value.violations == [
        (MISSING_BLOB, f"blobs/{absent.digest}/{absent.size_bytes}", "not stored in the blob service")
    ]
    assert "weights.bin" in str(refused.value)
    with pytest.raises(NotFound):
        catalog.versions.resolve(CALLER, "resnet:latest")

    blobs.present.add((absent.digest, absent.size_bytes))  # uploaded after all: the same pending version commits
    assert catalog.versions.commit(CALLER, pending.uid, [stored, absent]).version.index == 0


def test_an_alias_moves_only_when_its_compare_and_set_expectation_holds(catalog, blobs) -> None:
    for i in range(3):
        push(catalog, blobs, "resnet", f"v{i}")
    catalog.aliases.set(CALLER, "resnet:v0", "production", expect_unset=True)

    # Two promoters read production = v0; the first one's move wins, the second is refused.
    moved = catalog.aliases.set(CALLER, "resnet:v1", "production", expected_index=0)
    with pytest.raises(FailedPrecondition) as refused:
        catalog.aliases.set(CALLER, "resnet:v2", "production", expected_index=0)

    assert (moved.index, moved.previous_index) == (1, 0)
    assert "names v1" in str(refused.value)
    assert catalog.versions.resolve(CALLER, "resnet:production").version.index == 1
    with pytest.raises(FailedPrecondition):
        catalog.aliases.set(CALLER, "resnet:v2", "production", expect_unset=True)


def test_aliases_given_at_commit_move_with_the_commit(catalog, blobs) -> None:
    push(catalog, blobs, "resnet", "a", aliases=["best"])
    second = push(catalog, blobs, "resnet", "b", aliases=["best"])

    resolved = catalog.versions.resolve(CALLER, "resnet:best").version
    assert resolved.index == second.version.index == 1
    assert "best" in resolved.aliases


def test_deleting_an_aliased_version_needs_force_and_force_removes_the_alias(catalog, blobs) -> None:
    push(catalog, blobs, "resnet", "a")
    push(catalog, blobs, "resnet", "b")
    catalog.aliases.set(CALLER, "resnet:v0", "production")

    with pytest.raises(FailedPrecondition) as refused:
        catalog.versions.delete(CALLER, "resnet:v0")
    assert "alias 'production'" in str(refused.value)
    assert catalog.versions.resolve(CALLER, "resnet:v0").version.index == 0

    deleted = catalog.versions.delete(CALLER, "resnet:v0", force=True)

    assert deleted.removed_aliases == ("production",)
    with pytest.raises(NotFound):
        catalog.versions.resolve(CALLER, "resnet:production")
    assert committed_indexes(catalog, "resnet") == [1]


def test_an_unaliased_version_is_deleted_without_force(catalog, blobs) -> None:
    push(catalog, blobs, "resnet", "a")
    push(catalog, blobs, "resnet", "b")

    catalog.versions.delete(CALLER, "resnet:v0")

    with pytest.raises(NotFound):
        catalog.versions.resolve(CALLER, "resnet:v0")


def test_retention_keeps_the_last_n_versions_and_every_aliased_one(catalog, blobs) -> None:
    for i in range(5):
        push(catalog, blobs, "resnet", f"v{i}")
    catalog.aliases.set(CALLER, "resnet:v1", "production")

    _, deleted = catalog.retention.set_policy(CALLER, "resnet", 2)

    assert deleted == (0, 2)
    assert sorted(committed_indexes(catalog, "resnet")) == [1, 3, 4]
    push(catalog, blobs, "resnet", "v5")  # a commit applies the policy too
    assert sorted(committed_indexes(catalog, "resnet")) == [1, 4, 5]


def test_retention_must_keep_at_least_the_latest_version(catalog, blobs) -> None:
    push(catalog, blobs, "resnet", "a")

    with pytest.raises(InvalidArgument):
        catalog.retention.set_policy(CALLER, "resnet", 0)


def test_a_replayed_request_id_returns_the_first_result_and_acts_once(catalog, blobs) -> None:
    pending = catalog.versions.create(CALLER, "resnet", "model", request_id="create-1")
    assert catalog.versions.create(CALLER, "resnet", "model", request_id="create-1").uid == pending.uid

    entry = blobs.store(b"weights")
    first = catalog.versions.commit(CALLER, pending.uid, [entry], aliases=["best"], request_id="commit-1")
    push(catalog, blobs, "resnet", "another version lands in between", aliases=["best"])
    replayed = catalog.versions.commit(CALLER, pending.uid, [entry], aliases=["best"], request_id="commit-1")

    assert (replayed.version.uid, replayed.version.index, replayed.created) == (first.version.uid, 0, True)
    assert catalog.versions.resolve(CALLER, "resnet:best").version.index == 1  # the replay did not move it back
    assert sorted(committed_indexes(catalog, "resnet")) == [0, 1]


def test_a_retry_that_would_fail_now_returns_the_first_result(catalog, blobs) -> None:
    push(catalog, blobs, "resnet", "a")
    first = catalog.versions.delete(CALLER, "resnet:v0", request_id="delete-1")

    # v0 is gone, so the retry's own work fails; the request already acted, and its answer stands.
    again = catalog.versions.delete(CALLER, "resnet:v0", request_id="delete-1")
    assert again.version.uid == first.version.uid
    with pytest.raises(NotFound):
        catalog.versions.delete(CALLER, "resnet:v0", request_id="delete-2")
    # The id belongs to that delete: another request that fails as well is told so, not shown its answer.
    with pytest.raises(InvalidArgument, match="already used"):
        catalog.versions.delete(CALLER, "resnet:v9", request_id="delete-1")


def test_a_request_id_reused_for_a_different_request_is_refused(catalog, blobs) -> None:
    catalog.versions.create(CALLER, "resnet", "model", request_id="create-1")

    with pytest.raises(InvalidArgument):
        catalog.versions.create(CALLER, "bert", "model", request_id="create-1")
