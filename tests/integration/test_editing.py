"""Edit after push: UpdateVersion and UpdateRegisteredModel change what describes a version, never its files."""

from __future__ import annotations

import uuid

import pytest

from mreg.client import MregError
from tests.helpers import make_checkpoint


def _updates_until(registry, artifact: str, last_tag: str) -> list:
    """The version.updated events of an artifact, read from the event log up to the one adding ``last_tag``."""
    found = []
    for message in registry.watch(0, resource_prefix=f"{artifact}:", timeout=30):
        if message.event is not None and message.event.kind == "version.updated":
            found.append(message.event)
            if last_tag in (message.event.after or {}).get("tags", []):
                return found
    raise AssertionError("the watch ended early")


def test_a_pushed_version_can_be_described_retagged_and_its_metadata_merged_or_replaced(
    registry, unique, tmp_path
) -> None:
    artifact = f"acme/vision/edit-{unique}"
    pushed = registry.push(
        make_checkpoint(tmp_path / "ck", 1000),
        artifact,
        metadata={"accuracy": 0.9, "train": {"epochs": 3, "lr": 0.1}},
        tags=["fp16"],
        description="first",
    ).version

    merged = registry.update_version(
        f"{artifact}:v0",
        description="# ResNet\nbetter card",
        add_tags=["vision"],
        remove_tags=["fp16"],
        metadata={"accuracy": 0.93, "train": {"lr": None, "batch": 64}},
    )
    assert merged.description == "# ResNet\nbetter card"
    assert list(merged.tags) == ["vision"]
    assert merged.metadata == {"accuracy": 0.93, "train": {"epochs": 3, "batch": 64}}
    assert merged.digest == pushed.digest and merged.index == 0

    replaced = registry.update_version(f"{artifact}:latest", metadata={"only": "this"}, replace_metadata=True)
    assert replaced.metadata == {"only": "this"}
    assert replaced.description == "# ResNet\nbetter card"

    stored = registry.resolve(f"{artifact}:v0").version
    assert [(f.path, f.sha256) for f in stored.manifest] == [(f.path, f.sha256) for f in pushed.manifest]
    assert stored.metadata == {"only": "this"}


def test_an_update_records_what_changed_and_an_unchanged_update_records_nothing(registry, unique, tmp_path) -> None:
    artifact = f"acme/vision/edit-events-{unique}"
    registry.push(make_checkpoint(tmp_path / "ck", 1000), artifact, tags=["a"])
    registry.update_version(f"{artifact}:v0", add_tags=["b"])
    registry.update_version(f"{artifact}:v0", add_tags=["b"], remove_tags=["zzz"])  # nothing changes
    registry.update_version(f"{artifact}:v0", add_tags=["c"])

    updates = _updates_until(registry, artifact, "c")
    assert len(updates) == 2  # the update that changed nothing recorded nothing
    assert updates[0].resource == f"{artifact}:v0"
    assert updates[0].before == {"tags": ["a"]}
    assert updates[0].after == {"tags": ["a", "b"]}


def test_a_retried_update_with_the_same_request_id_applies_once(registry, unique, tmp_path) -> None:
    artifact = f"acme/vision/edit-retry-{unique}"
    registry.push(make_checkpoint(tmp_path / "ck", 1000), artifact, metadata={"runs": 1})
    request_id = str(uuid.uuid4())
    first = registry.update_version(f"{artifact}:v0", metadata={"note": "x"}, request_id=request_id)
    again = registry.update_version(f"{artifact}:v0", metadata={"note": "x"}, request_id=request_id)
    assert again.metadata == first.metadata
    with pytest.raises(MregError) as error:
        registry.update_version(f"{artifact}:v0", metadata={"note": "other"}, request_id=request_id)
    assert error.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "fields,code",
    [
        ({"add_tags": ["x"], "remove_tags": ["x"]}, "INVALID_ARGUMENT"),
        ({"metadata": {"deep": 1e400}}, "INVALID_ARGUMENT"),
        ({"description": "d"}, "NOT_FOUND"),
    ],
)
def test_a_bad_update_changes_nothing(registry, unique, tmp_path, fields, code) -> None:
    artifact = f"acme/vision/edit-bad-{unique}"
    registry.push(make_checkpoint(tmp_path / "ck", 1000), artifact, metadata={"kept": True}, tags=["x"])
    ref = f"{artifact}:v7" if code == "NOT_FOUND" else f"{artifact}:v0"
    with pytest.raises(MregError) as error:
        registry.update_version(ref, **fields)
    assert error.value.code == code
    version = registry.resolve(f"{artifact}:v0").version
    assert version.metadata == {"kept": True}
    assert list(version.tags) == ["x"]


def test_a_registered_model_card_and_tags_can_be_edited(registry, unique) -> None:
    model = f"acme/model-registry/Card {unique}"
    registry.create_registered_model(model, description="old")
    updated = registry.update_registered_model(model, description="# Card\n\nUse for ranking.", add_tags=["prod"])
    assert (updated.description, list(updated.tags)) == ("# Card\n\nUse for ranking.", ["prod"])
    assert registry.get_registered_model(model).description == "# Card\n\nUse for ranking."
    with pytest.raises(MregError) as error:
        registry.update_registered_model(model + " missing", description="x")
    assert error.value.code == "NOT_FOUND"
