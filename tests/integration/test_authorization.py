"""With authentication on, every RPC of both services admits exactly the roles the contract gives it.

The RPC list comes from the proto descriptors, so a new RPC without an expected role (or
without a rule in a service) fails here. Expectations are written from the roles as the
contract states them (token_service.proto), not read from the implementation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service.authorization import RULES as BLOB_RULES
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata.v1 import token_service_pb2 as token_pb
from mreg.metadata.v1 import token_service_pb2_grpc as token_grpc
from mreg.metadata_service.authorization import RULES as METADATA_RULES
from tests.helpers import digest_of

ROLES = ["reader", "writer", "maintainer", "admin"]
RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
HEADERS = (("mreg-entity", "acme"), ("mreg-project", "secure"))
ARTIFACT = "acme/secure/matrix"
MODEL = "acme/secure/Matrix Model"

# The least role each RPC needs, as token_service.proto and blob_service.proto state it.
EXPECTED = {
    "mreg.metadata.v1.MetadataService": {
        "CreateVersion": "writer",
        "CommitVersion": "writer",
        "GetVersion": "reader",
        "ResolveReference": "reader",
        "UpdateVersion": "writer",
        "ListVersions": "reader",
        "ListVersionFiles": "reader",
        "ListProjects": "reader",
        "GetArtifact": "reader",
        "ListArtifacts": "reader",
        "CreateRegisteredModel": "writer",
        "UpdateRegisteredModel": "maintainer",
        "GetRegisteredModel": "reader",
        "ListRegisteredModels": "reader",
        "CreateLink": "writer",
        "ListLinks": "reader",
        "SetAlias": "writer",
        "DeleteAlias": "writer",
        "DeleteVersion": "maintainer",
        "DeleteLink": "maintainer",
        "DeleteCollection": "maintainer",
        "SetRetentionPolicy": "maintainer",
        "SetAliasProtection": "maintainer",
        "ListAliasHistory": "reader",
        "RecordRunInputs": "writer",
        "GetLineage": "reader",
        "Watch": "reader",
        "CollectGarbage": "admin",
    },
    "mreg.metadata.v1.TokenService": {
        "CreateToken": "admin",
        "ListTokens": "admin",
        "RevokeToken": "admin",
        "IntrospectToken": "admin",
        "GetCaller": "reader",
    },
    "mreg.blob.v1.BlobService": {
        "GetCapabilities": "reader",
        "FindMissingBlobs": "reader",
        "Read": "reader",
        "BatchReadBlobs": "reader",
        "Write": "writer",
        "QueryWriteStatus": "writer",
        "BatchUpdateBlobs": "writer",
        "ListBlobs": "admin",
        "DeleteBlobs": "admin",
    },
}
DESCRIPTORS = [pb.DESCRIPTOR, token_pb.DESCRIPTOR, blob_pb.DESCRIPTOR]


def _rpcs() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for file in DESCRIPTORS:
        for service in file.services_by_name.values():
            found[service.full_name] = [m.name for m in service.methods]
    return found


def test_every_rpc_of_both_services_has_an_expected_role_and_a_rule() -> None:
    rpcs = _rpcs()
    assert {s: sorted(m) for s, m in rpcs.items()} == {s: sorted(e) for s, e in EXPECTED.items()}
    metadata_rpcs = set(rpcs["mreg.metadata.v1.MetadataService"]) | set(rpcs["mreg.metadata.v1.TokenService"])
    assert set(METADATA_RULES) == metadata_rpcs
    assert set(BLOB_RULES) == set(rpcs["mreg.blob.v1.BlobService"])


Call = Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]


def _unary(stub_type: Any, method: str, request: Any) -> Call:
    return lambda channel, metadata: getattr(stub_type(channel), method)(request, metadata=metadata, timeout=30)


def _first(stub_type: Any, method: str, request: Any) -> Call:
    def call(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> Any:
        stream = getattr(stub_type(channel), method)(request, metadata=metadata, timeout=30)
        try:
            return next(iter(stream), None)
        finally:
            stream.cancel()

    return call


def _write(data: bytes) -> Call:
    digest = digest_of(data)

    def call(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> Any:
        upload = uuid.uuid4().hex
        requests: Iterator[blob_pb.WriteRequest] = iter(
            [blob_pb.WriteRequest(upload_id=upload, digest=digest, write_offset=0, finish_write=True, data=data)]
        )
        return blob_grpc.BlobServiceStub(channel).Write(requests, metadata=metadata, timeout=30)

    return call


def _calls() -> dict[str, Call]:
    """One call per RPC, naming resources in acme/secure (most do not exist: NOT_FOUND is an admitted call)."""
    meta, tokens, blobs = pb_grpc.MetadataServiceStub, token_grpc.TokenServiceStub, blob_grpc.BlobServiceStub
    missing = digest_of(b"never uploaded " + uuid.uuid4().bytes)
    return {
        "CreateVersion": _unary(meta, "CreateVersion", pb.CreateVersionRequest(parent=ARTIFACT, type="model")),
        "CommitVersion": _unary(meta, "CommitVersion", pb.CommitVersionRequest(uid="0" * 32)),
        "GetVersion": _unary(meta, "GetVersion", pb.GetVersionRequest(name=f"{ARTIFACT}:v0")),
        "ResolveReference": _unary(meta, "ResolveReference", pb.ResolveReferenceRequest(name=f"{ARTIFACT}:v0")),
        "UpdateVersion": _unary(meta, "UpdateVersion", pb.UpdateVersionRequest(name=f"{ARTIFACT}:v9")),
        "ListVersions": _unary(meta, "ListVersions", pb.ListVersionsRequest(parent=ARTIFACT)),
        "ListVersionFiles": _unary(meta, "ListVersionFiles", pb.ListVersionFilesRequest(name=f"{ARTIFACT}:v0")),
        "ListProjects": _unary(meta, "ListProjects", pb.ListProjectsRequest(parent="acme")),
        "GetArtifact": _unary(meta, "GetArtifact", pb.GetArtifactRequest(name=ARTIFACT)),
        "ListArtifacts": _unary(meta, "ListArtifacts", pb.ListArtifactsRequest(parent="acme/secure")),
        "CreateRegisteredModel": _unary(
            meta, "CreateRegisteredModel", pb.CreateRegisteredModelRequest(name=f"{MODEL} {uuid.uuid4().hex[:6]}")
        ),
        "UpdateRegisteredModel": _unary(
            meta, "UpdateRegisteredModel", pb.UpdateRegisteredModelRequest(name=MODEL, description="x")
        ),
        "GetRegisteredModel": _unary(meta, "GetRegisteredModel", pb.GetRegisteredModelRequest(name=MODEL)),
        "ListRegisteredModels": _unary(
            meta, "ListRegisteredModels", pb.ListRegisteredModelsRequest(parent="acme/secure")
        ),
        "CreateLink": _unary(meta, "CreateLink", pb.CreateLinkRequest(version=f"{ARTIFACT}:v0", parent=MODEL)),
        "ListLinks": _unary(meta, "ListLinks", pb.ListLinksRequest(parent=MODEL)),
        "SetAlias": _unary(meta, "SetAlias", pb.SetAliasRequest(name=f"{ARTIFACT}:v0", alias="best")),
        "DeleteAlias": _unary(meta, "DeleteAlias", pb.DeleteAliasRequest(parent=ARTIFACT, alias="nothing")),
        "DeleteVersion": _unary(meta, "DeleteVersion", pb.DeleteVersionRequest(name=f"{ARTIFACT}:v99")),
        "DeleteLink": _unary(meta, "DeleteLink", pb.DeleteLinkRequest(name=f"{MODEL}:v99")),
        "DeleteCollection": _unary(meta, "DeleteCollection", pb.DeleteCollectionRequest(name=f"{ARTIFACT}-none")),
        "SetRetentionPolicy": _unary(
            meta, "SetRetentionPolicy", pb.SetRetentionPolicyRequest(name=f"{ARTIFACT}-none", keep_last=5)
        ),
        "SetAliasProtection": _unary(
            meta, "SetAliasProtection", pb.SetAliasProtectionRequest(parent=f"{ARTIFACT}-none", alias="prod")
        ),
        "ListAliasHistory": _unary(meta, "ListAliasHistory", pb.ListAliasHistoryRequest(parent=ARTIFACT, alias="a")),
        "RecordRunInputs": _unary(
            meta, "RecordRunInputs", pb.RecordRunInputsRequest(name="acme/secure/run-1", versions=[f"{ARTIFACT}:v9"])
        ),
        "GetLineage": _unary(meta, "GetLineage", pb.GetLineageRequest(version=f"{ARTIFACT}:v0")),
        "Watch": _first(meta, "Watch", pb.WatchRequest(from_now=True)),
        "CollectGarbage": _unary(meta, "CollectGarbage", pb.CollectGarbageRequest(dry_run=True)),
        "CreateToken": _unary(
            tokens,
            "CreateToken",
            token_pb.CreateTokenRequest(name=f"m-{uuid.uuid4().hex[:8]}", role=token_pb.ROLE_READER, scope="acme"),
        ),
        "ListTokens": _unary(tokens, "ListTokens", token_pb.ListTokensRequest()),
        "RevokeToken": _unary(tokens, "RevokeToken", token_pb.RevokeTokenRequest(name="nobody-has-this-name")),
        "IntrospectToken": _unary(tokens, "IntrospectToken", token_pb.IntrospectTokenRequest(secret="mreg_nothing")),
        "GetCaller": _unary(tokens, "GetCaller", token_pb.GetCallerRequest()),
        "GetCapabilities": _unary(blobs, "GetCapabilities", blob_pb.GetCapabilitiesRequest()),
        "FindMissingBlobs": _unary(blobs, "FindMissingBlobs", blob_pb.FindMissingBlobsRequest(blob_digests=[missing])),
        "Read": _first(blobs, "Read", blob_pb.ReadRequest(digest=missing)),
        "BatchReadBlobs": _unary(blobs, "BatchReadBlobs", blob_pb.BatchReadBlobsRequest(digests=[missing])),
        "Write": _write(b"written by the matrix " + uuid.uuid4().bytes),
        "QueryWriteStatus": _unary(
            blobs, "QueryWriteStatus", blob_pb.QueryWriteStatusRequest(upload_id=uuid.uuid4().hex, digest=missing)
        ),
        "BatchUpdateBlobs": _unary(
            blobs,
            "BatchUpdateBlobs",
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(b"matrix"), data=b"matrix")]
            ),
        ),
        "ListBlobs": _first(blobs, "ListBlobs", blob_pb.ListBlobsRequest()),
        "DeleteBlobs": _unary(blobs, "DeleteBlobs", blob_pb.DeleteBlobsRequest()),
    }


def _outcome(secured: Any, token: str | None, service: str, call: Call) -> tuple[grpc.StatusCode, Any]:
    address = secured.blob.address if service.startswith("mreg.blob") else secured.metadata.address
    with secured.channel(address, token) as channel:
        try:
            call(channel, HEADERS)
        except grpc.RpcError as error:
            return error.code(), error
    return grpc.StatusCode.OK, None


def _error_info(error: Any) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the refusal carries no rich status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


@pytest.fixture(scope="module")
def role_tokens(secured: Any) -> dict[str, str]:
    tokens = {role: secured.create_token(role, role, "acme/secure") for role in ROLES[:-1]}
    tokens["admin"] = secured.admin_token
    tokens["outsider"] = secured.create_token("outsider", "maintainer", "acme/other")
    return tokens


@pytest.mark.parametrize("role", ["none", *ROLES])
def test_each_role_is_admitted_to_exactly_the_rpcs_its_rank_allows(secured: Any, role_tokens, role: str) -> None:
    calls = _calls()
    wrong = []
    for service, methods in EXPECTED.items():
        domain = "blob.mreg.dev" if service.startswith("mreg.blob") else "metadata.mreg.dev"
        for method, needed in methods.items():
            code, error = _outcome(secured, role_tokens.get(role), service, calls[method])
            if role == "none":
                if code != grpc.StatusCode.UNAUTHENTICATED or _error_info(error).reason != "TOKEN_MISSING":
                    wrong.append(f"{method} without a token: {code.name}")
            elif RANK[role] >= RANK[needed]:
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    wrong.append(f"{method} refused for {role}: {code.name} {error.details()}")
            else:
                info = _error_info(error) if error is not None else None
                if code != grpc.StatusCode.PERMISSION_DENIED or info is None or info.domain != domain:
                    wrong.append(f"{method} not refused for {role}: {code.name}")
                elif (info.reason, info.metadata["required_role"]) != ("PERMISSION_DENIED", needed.upper()):
                    wrong.append(f"{method} refused for {role} with {info.reason} {dict(info.metadata)}")
    assert not wrong, "\n".join(wrong)


def test_a_role_applies_only_within_its_scope(secured: Any, role_tokens) -> None:
    calls = _calls()
    scoped = [
        method
        for method in EXPECTED["mreg.metadata.v1.MetadataService"]
        # Watch and ListProjects filter what they return instead of refusing.
        if method not in ("Watch", "ListProjects", "CollectGarbage", "CommitVersion")
    ]
    for method in scoped:
        code, error = _outcome(secured, role_tokens["outsider"], "mreg.metadata.v1.MetadataService", calls[method])
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{method}: {code.name}"
        assert _error_info(error).metadata["scope"] == "acme/secure"


def test_a_version_created_in_its_commit_needs_a_writer_of_its_own_project(secured: Any, role_tokens) -> None:
    content = b"committed in one call " + uuid.uuid4().bytes
    digest = digest_of(content)
    request = pb.CommitVersionRequest(
        new_version=pb.CommitVersionRequest.NewVersion(parent=f"{ARTIFACT}-one-call", type="model"),
        manifest=[pb.ManifestEntry(path="f", digest=digest)],
    )
    with secured.channel(secured.blob.address, role_tokens["writer"]) as channel:
        blob_grpc.BlobServiceStub(channel).BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)]
            )
        )
    commit = _unary(pb_grpc.MetadataServiceStub, "CommitVersion", request)
    service = "mreg.metadata.v1.MetadataService"

    code, error = _outcome(secured, role_tokens["outsider"], service, commit)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert _error_info(error).metadata["scope"] == "acme/secure"
    assert _outcome(secured, role_tokens["reader"], service, commit)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert _outcome(secured, role_tokens["writer"], service, commit)[0] == grpc.StatusCode.OK


def test_a_bad_or_malformed_token_is_unauthenticated_and_never_echoed(secured: Any) -> None:
    for token, reason in (("mreg_not-a-real-token", "TOKEN_INVALID"), ("", "TOKEN_MISSING")):
        for service in ("mreg.metadata.v1.MetadataService", "mreg.blob.v1.BlobService"):
            method = "GetArtifact" if "metadata" in service else "GetCapabilities"
            code, error = _outcome(secured, token or None, service, _calls()[method])
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert _error_info(error).reason == reason
            if token:
                assert token not in error.details()


def test_a_versions_lineage_names_only_the_links_its_caller_may_read(secured: Any, role_tokens, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"linked twice")
    name = f"lineage-links-{uuid.uuid4().hex[:6]}"
    with secured.registry(secured.admin_token) as admin:
        admin.push(model_dir, name)
        admin.create_registered_model(f"acme/secure/{name}-model")
        admin.create_registered_model(f"acme/other/{name}-elsewhere")
        admin.link(f"{name}:v0", f"acme/secure/{name}-model")
        admin.link(f"{name}:v0", f"acme/other/{name}-elsewhere")
        assert admin.lineage(f"{name}:v0").links == (
            f"acme/other/{name}-elsewhere:v0",
            f"acme/secure/{name}-model:v0",
        )
    with secured.registry(role_tokens["reader"]) as reader:
        # acme/other is outside the reader's scope: not even that a model there links the version shows.
        assert reader.lineage(f"{name}:v0").links == (f"acme/secure/{name}-model:v0",)
