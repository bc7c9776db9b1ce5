"""The metadata service over gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.client import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import digest_of, make_checkpoint, upload
from tests.wire import Wire

HEADERS = (("mreg-entity", "acme"), ("mreg-project", "vision"))


def commit(stub, artifact: str, files: dict[str, blob_pb.Digest], **kwargs) -> pb.CommitVersionResponse:
    pending = stub.CreateVersion(pb.CreateVersionRequest(parent=artifact, type="model"), metadata=HEADERS).version
    manifest = [pb.ManifestEntry(path=p, digest=d) for p, d in files.items()]
    return stub.CommitVersion(pb.CommitVersionRequest(uid=pending.uid, manifest=manifest, **kwargs), metadata=HEADERS)


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_versions_are_numbered_from_v0_and_latest_follows(registry, metadata_stub, unique, wire) -> None:
    (a, b) = upload(wire, b"first " + unique.encode(), b"second " + unique.encode())
    name = f"net-{unique}"

    first = commit(metadata_stub, name, {"w.bin": a})
    second = commit(metadata_stub, name, {"w.bin": b})

    assert (first.version.index, first.created) == (0, True)
    assert (second.version.index, second.created) == (1, True)
    assert second.version.name == f"acme/vision/{name}:v1"
    assert list(second.version.aliases) == ["latest"]
    latest = metadata_stub.GetVersion(pb.GetVersionRequest(name=name), metadata=HEADERS).version
    assert latest.index == 1
    assert [e.path for e in latest.manifest] == ["w.bin"]
    v0 = metadata_stub.GetVersion(pb.GetVersionRequest(name=f"acme/vision/{name}:v0")).version
    assert v0.digest == first.version.digest and list(v0.aliases) == []


def test_committing_the_latest_manifest_again_returns_the_same_version(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, unique.encode())
    first = commit(metadata_stub, f"same-{unique}", {"a": a})
    again = commit(metadata_stub, f"same-{unique}", {"a": a}, aliases=["best"])

    assert again.created is False
    assert again.version.index == first.version.index == 0
    assert "best" in again.version.aliases
    versions = list(registry.list_versions(f"same-{unique}"))
    assert [v.index for v in versions] == [0]


def test_commit_refuses_content_the_blob_service_lacks(registry, metadata_stub, unique) -> None:
    absent = digest_of(b"never uploaded " + unique.encode())
    with pytest.raises(grpc.RpcError) as error:
        commit(metadata_stub, f"missing-{unique}", {"model.bin": absent})
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert absent.hash in error.value.details()
    assert "model.bin" in error.value.details()
    # Other languages act on the structured detail, not the message.
    failure = error_details_pb2.PreconditionFailure()
    assert rpc_status.from_call(error.value).details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("MISSING_BLOB", f"blobs/{absent.hash}/{absent.size_bytes}")
    ]
    with pytest.raises(MregError) as lookup:
        registry.resolve(f"missing-{unique}")
    assert lookup.value.code == "NOT_FOUND"


def test_a_commit_refused_for_missing_blobs_succeeds_with_the_same_request_id_once_they_are_uploaded(
    registry, metadata_stub, unique, wire
) -> None:
    content = b"uploaded late " + unique.encode()
    pending = metadata_stub.CreateVersion(
        pb.CreateVersionRequest(parent=f"late-{unique}", type="model"), metadata=HEADERS
    ).version
    request = pb.CommitVersionRequest(
        uid=pending.uid,
        manifest=[pb.ManifestEntry(path="model.bin", digest=digest_of(content))],
        request_id=uuid.uuid4().hex,
    )
    assert status_of(lambda: metadata_stub.CommitVersion(request, metadata=HEADERS)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )

    upload(wire, content)
    committed = metadata_stub.CommitVersion(request, metadata=HEADERS)
    replayed = metadata_stub.CommitVersion(request, metadata=HEADERS)

    assert (committed.created, committed.version.index) == (True, 0)
    assert (replayed.created, replayed.version.uid) == (True, committed.version.uid)


@pytest.mark.parametrize(
    "path",
    ["../escape", "a/../../b", "/etc/passwd", "a//b", "a/./b", "", "dir/", "a\\b", "."],
)
def test_manifest_paths_that_escape_or_are_malformed_are_rejected(registry, metadata_stub, unique, path, wire) -> None:
    (a,) = upload(wire, b"x")
    assert status_of(lambda: commit(metadata_stub, f"paths-{unique}", {path: a})) == grpc.StatusCode.INVALID_ARGUMENT


def test_duplicate_and_file_directory_clashing_paths_are_rejected(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, b"x")
    pending = metadata_stub.CreateVersion(
        pb.CreateVersionRequest(parent=f"dup-{unique}", type="model"), metadata=HEADERS
    )
    for manifest in (
        [pb.ManifestEntry(path="a", digest=a), pb.ManifestEntry(path="a", digest=a)],
        [pb.ManifestEntry(path="a", digest=a), pb.ManifestEntry(path="a/b", digest=a)],
    ):
        request = pb.CommitVersionRequest(uid=pending.version.uid, manifest=manifest)
        assert status_of(lambda r=request: metadata_stub.CommitVersion(r)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "reference",
    ["a/b/c/d", "name:", "name:v01", "bad/na:me:x", " lead", "trail ", "sl/ash/", "x" * 129, "n@me", "ok:latest!"],
)
def test_malformed_references_are_invalid_argument(metadata_stub, reference) -> None:
    code = status_of(
        lambda: metadata_stub.ResolveReference(pb.ResolveReferenceRequest(name=reference), metadata=HEADERS)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_reference_without_project_and_no_default_is_invalid_argument(metadata_stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        metadata_stub.ResolveReference(pb.ResolveReferenceRequest(name="resnet"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "default" in error.value.details()


def test_unknown_references_are_not_found(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, b"nf")
    commit(metadata_stub, f"nf-{unique}", {"a": a})
    for reference in (f"nothing-{unique}", f"nf-{unique}:v7", f"nf-{unique}:gold", f"other/vision/nf-{unique}"):
        code = status_of(
            lambda r=reference: metadata_stub.ResolveReference(pb.ResolveReferenceRequest(name=r), metadata=HEADERS)
        )
        assert code == grpc.StatusCode.NOT_FOUND, reference


def test_alias_moves_between_versions_and_can_be_removed(registry, metadata_stub, unique, wire) -> None:
    a, b = upload(wire, b"alias-a" + unique.encode(), b"alias-b" + unique.encode())
    name = f"al-{unique}"
    commit(metadata_stub, name, {"f": a})
    commit(metadata_stub, name, {"f": b})

    first = registry.set_alias(f"{name}:v0", "best")
    moved = registry.set_alias(f"{name}:v1", "best")

    assert first.previous_index is None
    assert (moved.index, moved.previous_index) == (1, 0)
    assert registry.resolve(f"{name}:best").version.index == 1
    assert list(registry.resolve(f"{name}:v0").version.aliases) == []
    assert registry.delete_alias(name, "best") == 1
    with pytest.raises(MregError) as error:
        registry.resolve(f"{name}:best")
    assert error.value.code == "NOT_FOUND"
    with pytest.raises(MregError) as error:
        registry.delete_alias(name, "best")
    assert error.value.code == "NOT_FOUND"


@pytest.mark.parametrize("alias", ["latest", "v3", "has space", "", "x" * 65, "a/b"])
def test_reserved_or_malformed_aliases_are_invalid_argument(registry, metadata_stub, unique, alias, wire) -> None:
    (a,) = upload(wire, b"res")
    commit(metadata_stub, f"res-{unique}", {"f": a})
    with pytest.raises(MregError) as error:
        registry.set_alias(f"res-{unique}:v0", alias)
    assert error.value.code == "INVALID_ARGUMENT"


def test_links_number_per_registered_model_and_relinking_is_idempotent(registry, metadata_stub, unique, wire) -> None:
    a, b = upload(wire, b"link-a" + unique.encode(), b"link-b" + unique.encode())
    name = f"src-{unique}"
    commit(metadata_stub, name, {"f": a})
    commit(metadata_stub, name, {"f": b})
    model = f"acme/model-registry/Classifier {unique}"
    other = f"acme/model-registry/Detector {unique}"

    first = registry.link(f"{name}:v1", model, aliases=["staging"], create=True)
    second = registry.link(f"{name}:v0", model, aliases=["production"])
    again = registry.link(f"{name}:v1", model)
    elsewhere = registry.link(f"{name}:v1", other, create=True)

    assert (first.link.index, first.created) == (0, True)
    assert (second.link.index, second.created) == (1, True)
    assert (again.link.index, again.created) == (0, False)
    assert elsewhere.link.index == 0
    production = registry.resolve(f"{model}:production")
    assert production.link.name == f"{model}:v1"
    assert production.version.name == f"acme/vision/{name}:v0"
    assert [e.path for e in production.version.manifest] == ["f"]
    assert registry.resolve(f"{model}:staging").version.index == 1
    assert registry.resolve(model).link.index == 1  # latest link
    assert [link.index for link in registry.list_links(model)] == [1, 0]
    # Aliases of a registered model name links: moving "production" to link v0.
    registry.set_alias(f"{model}:v0", "production")
    assert registry.resolve(f"{model}:production").version.index == 1


def test_linking_a_version_of_another_type_is_failed_precondition(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, b"typed")
    pending = metadata_stub.CreateVersion(
        pb.CreateVersionRequest(parent=f"data-{unique}", type="dataset"), metadata=HEADERS
    )
    metadata_stub.CommitVersion(
        pb.CommitVersionRequest(uid=pending.version.uid, manifest=[pb.ManifestEntry(path="d", digest=a)])
    )
    registry.create_registered_model(f"models-{unique}", type="model")
    with pytest.raises(grpc.RpcError) as error:
        metadata_stub.CreateLink(
            pb.CreateLinkRequest(version=f"data-{unique}:v0", parent=f"models-{unique}"), metadata=HEADERS
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_artifact_type_is_fixed_by_its_first_version(metadata_stub, unique) -> None:
    metadata_stub.CreateVersion(pb.CreateVersionRequest(parent=f"t-{unique}", type="model"), metadata=HEADERS)
    code = status_of(
        lambda: metadata_stub.CreateVersion(
            pb.CreateVersionRequest(parent=f"t-{unique}", type="dataset"), metadata=HEADERS
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code = status_of(
        lambda: metadata_stub.CreateVersion(
            pb.CreateVersionRequest(parent=f"t-{unique}", type="Bad Type"), metadata=HEADERS
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_registered_model_names_are_unique_across_collections(registry, metadata_stub, unique) -> None:
    metadata_stub.CreateVersion(pb.CreateVersionRequest(parent=f"taken-{unique}", type="model"), metadata=HEADERS)
    for name in (f"taken-{unique}", f"rm-{unique}"):
        if name.startswith("rm"):
            registry.create_registered_model(name)
        with pytest.raises(MregError) as error:
            registry.create_registered_model(name)
        assert error.value.code == "ALREADY_EXISTS"


def test_commit_with_a_missing_link_target_changes_nothing(registry, metadata_stub, unique, wire) -> None:
    a, b = upload(wire, b"atomic-a" + unique.encode(), b"atomic-b" + unique.encode())
    name = f"atomic-{unique}"
    commit(metadata_stub, name, {"f": a})
    with pytest.raises(grpc.RpcError) as error:
        commit(
            metadata_stub,
            name,
            {"f": b},
            aliases=["best"],
            links=[pb.LinkTarget(registered_model=f"no-such-model-{unique}", aliases=["production"])],
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert [v.index for v in registry.list_versions(name)] == [0]
    with pytest.raises(MregError):
        registry.resolve(f"{name}:best")
    # The next successful commit still gets v1: the failed one consumed no index.
    assert commit(metadata_stub, name, {"f": b}).version.index == 1


def test_commit_sets_aliases_and_links_in_one_step(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, b"together" + unique.encode())
    registry.create_registered_model(f"together-model-{unique}")
    response = commit(
        metadata_stub,
        f"together-{unique}",
        {"f": a},
        aliases=["candidate"],
        links=[pb.LinkTarget(registered_model=f"together-model-{unique}", aliases=["staging"])],
    )
    assert set(response.version.aliases) == {"latest", "candidate"}
    assert [(link.index, set(link.aliases)) for link in response.links] == [(0, {"latest", "staging"})]


def test_listings_paginate_with_opaque_tokens(registry, metadata_stub, unique, wire) -> None:
    name = f"pages-{unique}"
    contents = [f"page {i} {unique}".encode() for i in range(7)]
    for digest in upload(wire, *contents):
        commit(metadata_stub, name, {"f": digest})

    seen = []
    token = ""
    while True:
        page = metadata_stub.ListVersions(
            pb.ListVersionsRequest(parent=name, page_size=3, page_token=token), metadata=HEADERS
        )
        assert len(page.versions) <= 3
        seen += [v.index for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [6, 5, 4, 3, 2, 1, 0]
    code = status_of(
        lambda: metadata_stub.ListVersions(pb.ListVersionsRequest(parent=name, page_token="garbage!"), metadata=HEADERS)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code = status_of(
        lambda: metadata_stub.ListVersions(pb.ListVersionsRequest(parent=name, page_size=-1), metadata=HEADERS)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    artifacts = [a.name for a in registry.list_artifacts("acme/vision", page_size=2)]
    assert f"acme/vision/{name}" in artifacts
    assert artifacts == sorted(artifacts)


def test_version_metadata_description_and_tags_round_trip(registry, tmp_path: Path, unique) -> None:
    make_checkpoint(tmp_path / "ck", large_bytes=1000)
    registry.push(
        tmp_path / "ck",
        f"meta-{unique}",
        metadata={"val_loss": 0.12, "epochs": 3, "nested": {"lr": [0.1, 0.01]}},
        description="after warmup",
        tags=["fp16", "a100"],
    )
    version = registry.resolve(f"meta-{unique}").version
    assert version.description == "after warmup"
    assert sorted(version.tags) == ["a100", "fp16"]
    assert version.metadata["val_loss"] == 0.12
    assert version.metadata["nested"]["lr"] == [0.1, 0.01]


def test_oversized_metadata_is_invalid_argument(metadata_stub, unique) -> None:
    request = pb.CreateVersionRequest(parent=f"big-{unique}", type="model")
    request.metadata.update({"blob": "x" * (1 << 20)})
    assert status_of(lambda: metadata_stub.CreateVersion(request, metadata=HEADERS)) == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_commits_to_one_artifact_get_unique_contiguous_indexes(servers, unique) -> None:
    name = f"race-{unique}"
    results: list[int] = []
    errors: list[Exception] = []

    def one(i: int) -> None:
        try:
            with Wire(servers.metadata.address, servers.blob.address) as client:
                (digest,) = upload(client, f"race {i} {unique}".encode())
                pending = client.metadata.CreateVersion(
                    pb.CreateVersionRequest(parent=name, type="model"), metadata=HEADERS
                ).version
                response = client.metadata.CommitVersion(
                    pb.CommitVersionRequest(uid=pending.uid, manifest=[pb.ManifestEntry(path="f", digest=digest)])
                )
                results.append(response.version.index)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(results) == list(range(12))
    with servers.registry() as client:
        assert client.resolve(name).version.index == 11


def test_registered_models_are_listed_with_their_link_counts_and_aliases(registry, metadata_stub, unique, wire) -> None:
    (a,) = upload(wire, b"listed" + unique.encode())
    commit(metadata_stub, f"listed-{unique}", {"f": a})
    registry.link(f"listed-{unique}:v0", f"acme/listing-{unique}/Ranker", aliases=["production"], create=True)
    registry.create_registered_model(f"acme/listing-{unique}/Empty")

    models = list(registry.list_registered_models(f"acme/listing-{unique}", page_size=1))

    assert [(m.name, m.link_count) for m in models] == [
        (f"acme/listing-{unique}/Empty", 0),
        (f"acme/listing-{unique}/Ranker", 1),
    ]
    assert models[1].aliases == {"latest": 0, "production": 0}
    assert list(registry.list_artifacts(f"acme/listing-{unique}")) == []
    with pytest.raises(MregError) as error:
        list(registry.list_artifacts(f"acme/no-such-project-{unique}"))
    assert error.value.code == "NOT_FOUND"
