"""A re-push of unchanged content keeps the latest version: the client says what it ignored, or applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mreg.client import MregError
from tests.helpers import make_checkpoint


def test_push_result_names_what_a_kept_version_ignored_and_update_existing_applies_it(
    registry, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/kept-{unique}"
    checkpoint = make_checkpoint(tmp_path / "ck", 1000)
    first = registry.push(checkpoint, artifact, metadata={"acc": 0.9}, description="v0 card")
    assert (first.created, first.ignored_changes, first.updated_existing) == (True, (), ())

    ignored = registry.push(checkpoint, artifact, metadata={"acc": 0.95}, description="new card", tags=["fp16"])
    assert (ignored.created, ignored.version.index) == (False, 0)
    assert ignored.ignored_changes == ("description", "tags", "metadata")
    stored = registry.resolve(f"{artifact}:v0").version
    assert (stored.description, stored.metadata) == ("v0 card", {"acc": 0.9})

    applied = registry.push(
        checkpoint, artifact, metadata={"acc": 0.95}, description="new card", tags=["fp16"], update_existing=True
    )
    assert (applied.created, applied.ignored_changes) == (False, ())
    assert applied.updated_existing == ("description", "tags", "metadata")
    assert [e.path for e in applied.version.manifest] == [e.path for e in first.version.manifest]
    stored = registry.resolve(f"{artifact}:v0").version
    assert (stored.description, list(stored.tags)) == ("new card", ["fp16"])
    assert stored.metadata == {"acc": 0.95}
    assert applied.version.metadata == {"acc": 0.95}


def test_a_push_with_a_description_over_64_kib_is_refused_before_hashing(registry, tmp_path: Path, unique) -> None:
    with pytest.raises(MregError) as error:
        registry.push(tmp_path / "does-not-exist", f"acme/vision/long-{unique}", description="x" * (65536 + 1))
    assert error.value.code == "INVALID_ARGUMENT"
