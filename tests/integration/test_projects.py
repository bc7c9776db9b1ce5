"""ListProjects: an entity's projects that hold something, and with authentication only those one may read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mreg.client import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import make_checkpoint


def test_an_entity_lists_its_projects_that_hold_something(registry, wire, unique, tmp_path: Path) -> None:
    entity = f"org-{unique}"
    for index, project in enumerate(("vision", "nlp")):
        registry.push(make_checkpoint(tmp_path / project, 1000, seed=index), f"{entity}/{project}/model")
    registry.create_registered_model(f"{entity}/registry/Classifier")
    # A push that never commits leaves a project with nothing visible in it.
    wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=f"{entity}/empty/model", type="model"))

    names = [p.name for p in registry.list_projects(entity, page_size=1)]  # one per page: paging works
    assert names == [f"{entity}/nlp", f"{entity}/registry", f"{entity}/vision"]
    assert list(registry.list_projects(f"nobody-{unique}")) == []


def test_listing_projects_needs_an_entity(servers, unique) -> None:
    with servers.registry(entity=None, project=None) as registry, pytest.raises(MregError) as refused:
        list(registry.list_projects(""))
    assert (refused.value.code, refused.value.reason) == ("INVALID_ARGUMENT", "REFERENCE_INVALID")


def test_a_reader_sees_only_the_projects_of_its_scope(secured: Any, tmp_path: Path) -> None:
    writer = secured.create_token("projects-writer", "writer", "acme")
    with secured.registry(writer) as registry:
        registry.push(make_checkpoint(tmp_path / "a", 1000, seed=1), "acme/secure/listed")
        registry.push(make_checkpoint(tmp_path / "b", 1000, seed=2), "acme/elsewhere/hidden")
    reader = secured.create_token("projects-reader", "reader", "acme/secure")
    with secured.registry(reader) as registry:
        names = [p.name for p in registry.list_projects("acme")]
    assert "acme/secure" in names
    assert "acme/elsewhere" not in names
