"""What a push that does not commit leaves behind (nothing), and what retention always keeps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mreg.client import MregError, Registry
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import code_of, push_one


def _events_after(registry: Registry, cursor: int, prefix: str, count: int) -> list[tuple[str, str]]:
    seen = []
    for message in registry.watch(cursor, resource_prefix=prefix, timeout=30):
        if message.event is not None:
            seen.append((message.event.kind, message.event.resource))
        if len(seen) == count:
            break
    return seen


def test_a_push_that_never_commits_changes_nothing_visible(short_ttl_registry, short_ttl_wire, unique) -> None:
    registry, wire = short_ttl_registry, short_ttl_wire
    push_one(wire, f"neighbour-{unique}", "so the project exists")
    cursor = next(registry.watch(0, from_now=True, timeout=30)).sequence
    name = f"interrupted-{unique}"
    # What an interrupted push has done: created a pending version, never committed it.
    wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="dataset"))

    assert name not in [a.name.rsplit("/", 1)[1] for a in registry.list_artifacts("acme/vision")]
    assert code_of(lambda: registry.get_artifact(name)) == "NOT_FOUND"
    assert code_of(lambda: registry.resolve(name)) == "NOT_FOUND"
    assert code_of(lambda: list(registry.list_versions(name))) == "NOT_FOUND"
    assert code_of(lambda: registry.delete_collection(name)) == "NOT_FOUND"

    # Once the pending version expires, the name is free for any type.
    time.sleep(2.0)
    committed = push_one(wire, name, "a model after all")
    assert committed.version.name == f"acme/vision/{name}:v0"
    assert registry.get_artifact(name).type == "model"
    assert _events_after(registry, cursor, f"acme/vision/{name}", 2) == [
        ("collection.created", f"acme/vision/{name}"),
        ("version.committed", f"acme/vision/{name}:v0"),
    ]


def test_retention_refuses_to_keep_zero_versions_and_always_keeps_latest(registry, unique, wire) -> None:
    name = f"keep-{unique}"
    for content in ("a", "b", "c"):
        push_one(wire, name, content + unique)

    with pytest.raises(MregError) as refused:
        registry.set_retention(name, 0)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "at least 1" in refused.value.message

    assert [v.index for v in registry.list_versions(name)] == [2, 1, 0]
    response = registry.set_retention(name, 1)
    assert list(response.deleted_indexes) == [0, 1]
    assert registry.resolve(name).version.index == 2


def test_a_refused_push_creates_none_of_the_registered_models_it_would_have_linked_to(
    registry: Registry, tmp_path: Path, unique: str
) -> None:
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(f"weights {unique}".encode())
    (checkpoint / "gone.bin").symlink_to(tmp_path / "missing")
    model = f"acme/model-registry/never-created-{unique}"

    # Refused on the client: a dangling link inside the directory.
    with pytest.raises(MregError) as refused:
        registry.push(checkpoint, f"dangling-{unique}", link_to=[model], create_registered_models=True)
    assert refused.value.code == "INVALID_ARGUMENT" and "gone.bin" in refused.value.message
    assert code_of(lambda: registry.get_registered_model(model)) == "NOT_FOUND"

    # Refused by the service before anything is uploaded: the artifact holds datasets, not models.
    (checkpoint / "gone.bin").unlink()
    registry.push(checkpoint, f"datasets-{unique}", type="dataset")
    (checkpoint / "weights.bin").write_bytes(f"other weights {unique}".encode())
    with pytest.raises(MregError) as refused:
        registry.push(checkpoint, f"datasets-{unique}", link_to=[model], create_registered_models=True)
    assert refused.value.reason == "TYPE_MISMATCH"
    assert code_of(lambda: registry.get_registered_model(model)) == "NOT_FOUND"

    # A push that commits creates it and links into it.
    pushed = registry.push(checkpoint, f"models-{unique}", link_to=[model], create_registered_models=True)
    assert [link.registered_model for link in pushed.links] == [model]
    assert registry.get_registered_model(model).link_count == 1
