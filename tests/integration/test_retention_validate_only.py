"""SetRetentionPolicy with validate_only says exactly what the policy would delete, and changes nothing."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import make_checkpoint


def test_validate_only_names_exactly_what_would_go_and_changes_nothing(registry, unique, tmp_path: Path) -> None:
    artifact = f"acme/vision/plan-{unique}"
    for n in range(4):
        registry.push(make_checkpoint(tmp_path / f"ck{n}", 1000, seed=n), artifact)
    registry.set_alias(f"{artifact}:v0", "baseline")
    registry.link(f"{artifact}:v1", f"acme/vision/plan-model-{unique}", create=True)

    planned = registry.set_retention(artifact, 1, validate_only=True)
    # v0 has an alias and v1 a link, so only v2 would go (v3 is the newest).
    assert list(planned.deleted_indexes) == [2]
    assert planned.artifact.retention_keep_last is None
    assert [v.index for v in registry.list_versions(artifact)] == [3, 2, 1, 0]

    applied = registry.set_retention(artifact, 1)
    assert list(applied.deleted_indexes) == [2]
    assert [v.index for v in registry.list_versions(artifact)] == [3, 1, 0]
