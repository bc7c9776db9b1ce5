"""Watch's resource_prefix names whole path segments, on the database path and the in-memory feed alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from mreg.metadata_service.event_feed import matches_prefix
from tests.helpers import make_checkpoint


@pytest.mark.parametrize(
    ("resource", "prefix", "matches"),
    [
        ("acme/vision/resnet:v3", "acme/vision/resnet", True),
        ("acme/vision/resnet", "acme/vision/resnet", True),
        ("acme/vision/resnet-large:v0", "acme/vision/resnet", False),
        ("acme/vision/ResNet:v0", "acme/vision/resnet", False),
        ("acme/vision/resnet:best", "acme/vision/resnet:", True),
        ("acme/vision/resnet:v0", "acme/vision/", True),
        ("acme/vision/resnet:v0", "acme/vis", False),
        ("acme/vision/resnet:v0", "", True),
    ],
)
def test_a_prefix_matches_whole_path_segments(resource: str, prefix: str, matches: bool) -> None:
    assert matches_prefix(resource, prefix) is matches


def test_watch_with_a_prefix_streams_only_that_name_not_its_longer_or_differently_cased_siblings(
    registry, unique, tmp_path: Path
) -> None:
    project = f"acme/segments-{unique}"
    start = next(iter(registry.watch(0, from_now=True, timeout=30))).sequence
    for index, name in enumerate(("resnet", "resnet-large", "ResNet")):
        registry.push(make_checkpoint(tmp_path / name, 1000, seed=index), f"{project}/{name}")
    registry.push(make_checkpoint(tmp_path / "again", 1000, seed=9), f"{project}/resnet")

    for cursor in (start, 0):  # from the in-memory feed, and a replay from the database
        resources = []
        for message in registry.watch(cursor, resource_prefix=f"{project}/resnet", timeout=60):
            if message.event is not None:
                resources.append(message.event.resource)
                if message.event.resource == f"{project}/resnet:v1" and message.event.kind == "version.committed":
                    break
        assert resources, "no event streamed"
        assert all(r == f"{project}/resnet" or r.startswith(f"{project}/resnet:") for r in resources), resources
