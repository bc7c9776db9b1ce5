"""ResolveReference responses kept by the answer they were built from."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata_service.domain import Resolution, VersionState, VersionView
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.servicer import ResolvedResponses


def _resolution(files: int, name: str = "acme/vision/resnet:v0") -> Resolution:
    now = datetime.now(UTC)
    version = VersionView(
        name=name,
        uid="0" * 32,
        artifact=name.split(":")[0],
        type="model",
        index=0,
        state=VersionState.COMMITTED,
        digest="d" * 64,
        size_bytes=files,
        file_count=files,
        aliases=("latest",),
        description="",
        tags=(),
        metadata={},
        created_at=now,
        committed_at=now,
        manifest=tuple(FileEntry(f"f{i}", "a" * 64, 1) for i in range(files)),
        run=None,
    )
    return Resolution(version, None)


def test_a_response_is_returned_only_for_the_very_answer_it_was_built_from() -> None:
    kept = ResolvedResponses()
    answer = _resolution(3)
    response = pb.ResolveReferenceResponse(version=pb.Version(name=answer.version.name))
    assert kept.get(answer, pb.ResolveReferenceResponse) is None
    kept.put(answer, response)

    assert kept.get(answer, pb.ResolveReferenceResponse) is response
    # An equal answer read afresh (after a change, say) is another object: its response is built anew.
    assert kept.get(replace(answer), pb.ResolveReferenceResponse) is None
    # Another RPC's response to the same answer is kept apart.
    assert kept.get(answer, pb.GetVersionResponse) is None
    other = pb.GetVersionResponse(version=pb.Version(name=answer.version.name))
    kept.put(answer, other)
    assert kept.get(answer, pb.GetVersionResponse) is other
    assert kept.get(answer, pb.ResolveReferenceResponse) is response


def test_responses_are_bounded_by_the_manifest_entries_they_hold_least_recently_used_first_out() -> None:
    kept = ResolvedResponses(max_entries=10)
    first, second, third = _resolution(3, "a/b/one:v0"), _resolution(3, "a/b/two:v0"), _resolution(3, "a/b/three:v0")
    for answer in (first, second):
        kept.put(answer, pb.ResolveReferenceResponse())
    assert kept.get(first, pb.ResolveReferenceResponse) is not None  # first is now the most recently used
    kept.put(third, pb.ResolveReferenceResponse())  # 12 entries: second goes

    assert kept.get(second, pb.ResolveReferenceResponse) is None
    assert (
        kept.get(first, pb.ResolveReferenceResponse) is not None
        and kept.get(third, pb.ResolveReferenceResponse) is not None
    )
    huge = _resolution(10)  # 11 with its own entry: more than the whole bound, never kept
    kept.put(huge, pb.ResolveReferenceResponse())
    assert kept.get(huge, pb.ResolveReferenceResponse) is None
    assert (
        kept.get(first, pb.ResolveReferenceResponse) is not None
        and kept.get(third, pb.ResolveReferenceResponse) is not None
    )
