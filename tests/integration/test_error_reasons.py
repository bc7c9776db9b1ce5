"""Machine-readable errors (AIP-193): every error carries a google.rpc.ErrorInfo with a stable reason.

The reasons the Python domain code raises are the proto enums' values (read from the
generated descriptors), and every error path a client can act on answers, over real gRPC,
the documented code, reason, domain and ErrorInfo.metadata keys.
"""

from __future__ import annotations

import ast
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service import errors as blob_errors
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client.errors import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata_service import errors as metadata_errors
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.server_runtime import streams
from tests.helpers import corrupt_blob, digest_of

ROOT = Path(__file__).resolve().parents[2]
METADATA_DOMAIN = "metadata.mreg.dev"
BLOB_DOMAIN = "blob.mreg.dev"
# Reasons declared but not returned by any code path yet.
RESERVED: set[str] = set()
# The refusals of authentication, which carry their reason as a string argument.
AUTH_ERRORS = {"Unauthenticated", "PermissionDenied", "AuthError", "Unreachable"}


def proto_reasons(enum: Any) -> set[str]:
    return {value.name for value in enum.DESCRIPTOR.values if value.name != "ERROR_REASON_UNSPECIFIED"}


def reasons_used_in(folders: list[str], enum: Any) -> set[str]:
    """The reasons the code names: ``Reason.X`` attributes and the stream refusals' constants."""
    used: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "errors.py" or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason":
                    used.add(node.attr)
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in AUTH_ERRORS
                    and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)
                ):
                    used.add(str(node.args[1].value))
    # Class defaults (errors.py) and the shared stream refusals (server_runtime/streams.py).
    for cls in (metadata_errors, blob_errors):
        for value in vars(cls).values():
            if isinstance(value, type) and issubclass(value, Exception) and hasattr(value, "default_reason"):
                used.add(str(value.default_reason))
    used |= {streams.STREAM_LIMIT_REASON, streams.STREAM_IDLE_REASON}
    return used & proto_reasons(enum)


def test_the_metadata_reasons_are_exactly_the_proto_enum_values() -> None:
    assert {str(r) for r in metadata_errors.Reason} == proto_reasons(pb.ErrorReason)
    assert all(r.name == r.value for r in metadata_errors.Reason)
    assert metadata_errors.ERROR_DOMAIN == METADATA_DOMAIN


def test_the_blob_reasons_are_exactly_the_proto_enum_values() -> None:
    assert {str(r) for r in blob_errors.Reason} == proto_reasons(blob_pb.ErrorReason)
    assert all(r.name == r.value for r in blob_errors.Reason)
    assert blob_errors.ERROR_DOMAIN == BLOB_DOMAIN


def test_every_declared_reason_is_raised_by_some_code_path() -> None:
    metadata_used = reasons_used_in(["metadata_service", "server_runtime"], pb.ErrorReason)
    blob_used = reasons_used_in(["blob_service", "server_runtime"], blob_pb.ErrorReason)
    assert proto_reasons(pb.ErrorReason) - RESERVED - metadata_used == set()
    assert proto_reasons(blob_pb.ErrorReason) - blob_used == set()


def test_every_reason_is_listed_in_its_proto_beside_a_status_code() -> None:
    for paths, enum in (
        (
            ["protos/mreg/metadata/v1/metadata_service.proto", "protos/mreg/metadata/v1/token_service.proto"],
            pb.ErrorReason,
        ),
        (["protos/mreg/blob/v1/blob_service.proto"], blob_pb.ErrorReason),
    ):
        path = paths[0]
        service_text = "".join((ROOT / p).read_text().split("enum ErrorReason")[0] for p in paths)
        missing = {r for r in proto_reasons(enum) - RESERVED if r not in service_text}
        assert not missing, f"{path}: no RPC lists {sorted(missing)}"


# Behaviour over the wire ---------------------------------------------------------------


def error_info(status: status_pb2.Status | None) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """The ErrorInfo (exactly one) and the PreconditionFailure violations of a status."""
    assert status is not None, "the error carries no rich status"
    infos, violations = [], []
    for detail in status.details:
        info, failure = error_details_pb2.ErrorInfo(), error_details_pb2.PreconditionFailure()
        if detail.Unpack(info):
            infos.append(info)
        elif detail.Unpack(failure):
            violations.extend((v.type, v.subject) for v in failure.violations)
    assert len(infos) == 1, f"expected one ErrorInfo in {status}"
    return infos[0], violations


@dataclass
class World:
    """A committed artifact version (with alias "prod" and a link), a registered model, and the stubs."""

    meta: pb_grpc.MetadataServiceStub
    blob: blob_grpc.BlobServiceStub
    blob_channel: grpc.Channel
    meta_channel: grpc.Channel
    artifact: str
    model: str
    index: int
    uid: str
    content: bytes
    store: Any

    def upload(self, data: bytes) -> blob_pb.Digest:
        digest = digest_of(data)
        self.blob.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)]
            )
        )
        return digest


@pytest.fixture
def world(servers: Any) -> Iterator[World]:
    meta_channel = grpc.insecure_channel(servers.metadata.address)
    blob_channel = grpc.insecure_channel(servers.blob.address)
    meta, blob = pb_grpc.MetadataServiceStub(meta_channel), blob_grpc.BlobServiceStub(blob_channel)
    u = uuid.uuid4().hex[:10]
    artifact, model = f"acme/reasons/art-{u}", f"acme/reasons/model-{u}"
    content = f"weights {u}".encode()
    w = World(meta, blob, blob_channel, meta_channel, artifact, model, 0, "", content, servers.blob.store)
    digest = w.upload(content)
    pending = meta.CreateVersion(pb.CreateVersionRequest(parent=artifact, type="model")).version
    meta.CreateRegisteredModel(pb.CreateRegisteredModelRequest(name=model, type="model"))
    committed = meta.CommitVersion(
        pb.CommitVersionRequest(
            uid=pending.uid,
            manifest=[pb.ManifestEntry(path="w.bin", digest=digest)],
            aliases=["prod"],
            links=[pb.LinkTarget(registered_model=model)],
        )
    ).version
    w.index, w.uid = committed.index, committed.uid
    yield w
    meta_channel.close()
    blob_channel.close()


def raw_call(channel: grpc.Channel, path: str, data: bytes) -> Any:
    return channel.unary_unary(path)(data, timeout=30)


def _missing_blob(w: World) -> Any:
    pending = w.meta.CreateVersion(pb.CreateVersionRequest(parent=w.artifact, type="model")).version
    absent = digest_of(b"never uploaded " + uuid.uuid4().bytes)
    return w.meta.CommitVersion(
        pb.CommitVersionRequest(uid=pending.uid, manifest=[pb.ManifestEntry(path="x", digest=absent)])
    )


def _request_id_reused(w: World) -> Any:
    request_id = uuid.uuid4().hex
    w.meta.SetAlias(pb.SetAliasRequest(name=f"{w.artifact}:v{w.index}", alias="a1", request_id=request_id))
    return w.meta.SetAlias(pb.SetAliasRequest(name=f"{w.artifact}:v{w.index}", alias="a2", request_id=request_id))


def _deep_struct(levels: int) -> struct_pb2.Struct:
    doc = struct_pb2.Struct()
    inner = doc
    for _ in range(levels):
        inner = inner.fields["k"].struct_value
    return doc


def _read(w: World, digest: blob_pb.Digest, offset: int = 0) -> Any:
    return list(w.blob.Read(blob_pb.ReadRequest(digest=digest, read_offset=offset), timeout=30))


def _corrupt(w: World) -> Any:
    data = b"soon corrupt " + uuid.uuid4().bytes
    digest = w.upload(data)
    corrupt_blob(w.store.storage, digest.hash, digest.size_bytes)
    return _read(w, digest)


def _write(w: World, *messages: blob_pb.WriteRequest) -> Any:
    return w.blob.Write(iter(messages), timeout=30)


# Expected metadata: key -> exact value, or ... for "present and not empty".
Expect = dict[str, Any]
Case = tuple[str, Callable[[World], Any], grpc.StatusCode, str, Callable[[World], Expect]]

METADATA_CASES: list[Case] = [
    (
        "undecodable request",
        lambda w: raw_call(w.meta_channel, "/mreg.metadata.v1.MetadataService/GetVersion", b"\x0a\x02\xff\xfe"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_MALFORMED",
        lambda w: {},
    ),
    (
        "field beyond its limit",
        lambda w: w.meta.ListVersions(pb.ListVersionsRequest(parent=w.artifact, page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda w: {"field": "page_size"},
    ),
    (
        "malformed reference",
        lambda w: w.meta.GetVersion(pb.GetVersionRequest(name="a/b/c/d")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REFERENCE_INVALID",
        lambda w: {"field": "reference"},
    ),
    (
        "reserved alias",
        lambda w: w.meta.SetAlias(pb.SetAliasRequest(name=f"{w.artifact}:v{w.index}", alias="latest")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ALIAS_RESERVED",
        lambda w: {"alias": "latest"},
    ),
    (
        "malformed filter",
        lambda w: w.meta.ListVersions(pb.ListVersionsRequest(parent=w.artifact, filter="index = ")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FILTER_INVALID",
        lambda w: {"position": "9"},
    ),
    (
        "forged page token",
        lambda w: w.meta.ListVersions(pb.ListVersionsRequest(parent=w.artifact, page_token="forged")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_TOKEN_INVALID",
        lambda w: {},
    ),
    (
        "manifest path leaving its root",
        lambda w: w.meta.CommitVersion(
            pb.CommitVersionRequest(uid=w.uid, manifest=[pb.ManifestEntry(path="../evil", digest=digest_of(w.content))])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MANIFEST_INVALID",
        lambda w: {"path": "../evil"},
    ),
    (
        "metadata nested too deep",
        lambda w: w.meta.CreateVersion(
            pb.CreateVersionRequest(parent=w.artifact, type="model", metadata=_deep_struct(25))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "METADATA_INVALID",
        lambda w: {"field": ...},
    ),
    ("request id reused", _request_id_reused, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED", lambda w: {}),
    (
        "unknown project",
        lambda w: w.meta.ListArtifacts(pb.ListArtifactsRequest(parent="nobody/nothing")),
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
        lambda w: {"resource": "nobody/nothing"},
    ),
    (
        "unknown artifact",
        lambda w: w.meta.GetArtifact(pb.GetArtifactRequest(name=w.artifact + "-no")),
        grpc.StatusCode.NOT_FOUND,
        "ARTIFACT_NOT_FOUND",
        lambda w: {"resource": w.artifact + "-no"},
    ),
    (
        "unknown registered model",
        lambda w: w.meta.GetRegisteredModel(pb.GetRegisteredModelRequest(name=w.model + "-no")),
        grpc.StatusCode.NOT_FOUND,
        "REGISTERED_MODEL_NOT_FOUND",
        lambda w: {"resource": w.model + "-no"},
    ),
    (
        "unknown collection",
        lambda w: w.meta.GetVersion(pb.GetVersionRequest(name=w.artifact + "-no:v0")),
        grpc.StatusCode.NOT_FOUND,
        "COLLECTION_NOT_FOUND",
        lambda w: {"resource": w.artifact + "-no"},
    ),
    (
        "unknown index",
        lambda w: w.meta.GetVersion(pb.GetVersionRequest(name=f"{w.artifact}:v{w.index + 7}")),
        grpc.StatusCode.NOT_FOUND,
        "VERSION_NOT_FOUND",
        lambda w: {"resource": f"{w.artifact}:v{w.index + 7}"},
    ),
    (
        "unknown alias",
        lambda w: w.meta.GetVersion(pb.GetVersionRequest(name=f"{w.artifact}:nope")),
        grpc.StatusCode.NOT_FOUND,
        "ALIAS_NOT_FOUND",
        lambda w: {"alias": "nope", "resource": f"{w.artifact}:nope"},
    ),
    (
        "unknown pending version",
        lambda w: w.meta.CommitVersion(pb.CommitVersionRequest(uid="no-such-uid")),
        grpc.StatusCode.NOT_FOUND,
        "PENDING_VERSION_NOT_FOUND",
        lambda w: {"resource": "no-such-uid"},
    ),
    (
        "name taken",
        lambda w: w.meta.CreateRegisteredModel(pb.CreateRegisteredModelRequest(name=w.artifact)),
        grpc.StatusCode.ALREADY_EXISTS,
        "COLLECTION_EXISTS",
        lambda w: {"resource": w.artifact},
    ),
    (
        "alias compare-and-set lost",
        lambda w: w.meta.SetAlias(
            pb.SetAliasRequest(name=f"{w.artifact}:v{w.index}", alias="prod", expected_index=w.index + 5)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ALIAS_EXPECTATION_FAILED",
        lambda w: {"alias": "prod", "current_index": str(w.index)},
    ),
    (
        "alias compare-and-delete lost",
        lambda w: w.meta.DeleteAlias(
            pb.DeleteAliasRequest(parent=w.artifact, alias="prod", expected_index=w.index + 1)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ALIAS_EXPECTATION_FAILED",
        lambda w: {"alias": "prod", "current_index": str(w.index)},
    ),
    (
        "delete of a version still named",
        lambda w: w.meta.DeleteVersion(pb.DeleteVersionRequest(name=f"{w.artifact}:v{w.index}")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_IN_USE",
        lambda w: {"aliases": "prod", "links": f"{w.model}:v0"},
    ),
    (
        "version of another type",
        lambda w: w.meta.CreateVersion(pb.CreateVersionRequest(parent=w.artifact, type="dataset")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TYPE_MISMATCH",
        lambda w: {"expected_type": "model", "actual_type": "dataset"},
    ),
    (
        "version pushed to a registered model",
        lambda w: w.meta.CreateVersion(pb.CreateVersionRequest(parent=w.model, type="model")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "COLLECTION_KIND_MISMATCH",
        lambda w: {"resource": w.model},
    ),
    (
        "commit of content not uploaded",
        _missing_blob,
        grpc.StatusCode.FAILED_PRECONDITION,
        "MISSING_BLOB",
        lambda w: {},
    ),
    (
        "commit again with another manifest",
        lambda w: w.meta.CommitVersion(pb.CommitVersionRequest(uid=w.uid)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_ALREADY_COMMITTED",
        lambda w: {},
    ),
    (
        "delete of a collection with versions",
        lambda w: w.meta.DeleteCollection(pb.DeleteCollectionRequest(name=w.artifact)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "COLLECTION_NOT_EMPTY",
        lambda w: {"resource": w.artifact},
    ),
]

BLOB_CASES: list[Case] = [
    (
        "undecodable request",
        lambda w: raw_call(w.blob_channel, "/mreg.blob.v1.BlobService/FindMissingBlobs", b"\x0a\x04\x0a\x02\xff\xfe"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_MALFORMED",
        lambda w: {},
    ),
    (
        "unset cutoff",
        lambda w: list(w.blob.ListBlobs(blob_pb.ListBlobsRequest(), timeout=30)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda w: {"field": "unused_before"},
    ),
    (
        "hash beyond its limit",
        lambda w: w.blob.FindMissingBlobs(
            blob_pb.FindMissingBlobsRequest(blob_digests=[blob_pb.Digest(hash="f" * 65, size_bytes=1)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda w: {"field": "blob_digests[0].hash"},
    ),
    (
        "malformed digest",
        lambda w: w.blob.FindMissingBlobs(
            blob_pb.FindMissingBlobsRequest(blob_digests=[blob_pb.Digest(hash="xyz", size_bytes=1)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DIGEST_INVALID",
        lambda w: {},
    ),
    (
        "malformed upload id",
        lambda w: w.blob.QueryWriteStatus(blob_pb.QueryWriteStatusRequest(upload_id="not ok!", digest=digest_of(b"x"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "RESOURCE_NAME_INVALID",
        lambda w: {"field": "upload_id"},
    ),
    (
        "write whose data does not match",
        lambda w: _write(
            w,
            blob_pb.WriteRequest(upload_id=uuid.uuid4().hex, digest=digest_of(b"abc"), data=b"abd", finish_write=True),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DIGEST_MISMATCH",
        lambda w: {},
    ),
    (
        "batch read over the batch limit",
        lambda w: w.blob.BatchReadBlobs(
            blob_pb.BatchReadBlobsRequest(digests=[blob_pb.Digest(hash="a" * 64, size_bytes=1 << 30)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BATCH_TOO_LARGE",
        lambda w: {},
    ),
    (
        "read of a missing blob",
        lambda w: _read(w, digest_of(b"absent " + uuid.uuid4().bytes)),
        grpc.StatusCode.NOT_FOUND,
        "BLOB_NOT_FOUND",
        lambda w: {},
    ),
    (
        "status of an unknown upload",
        lambda w: w.blob.QueryWriteStatus(
            blob_pb.QueryWriteStatusRequest(upload_id=uuid.uuid4().hex, digest=digest_of(uuid.uuid4().bytes))
        ),
        grpc.StatusCode.NOT_FOUND,
        "UPLOAD_NOT_FOUND",
        lambda w: {},
    ),
    (
        "write at the wrong offset",
        lambda w: _write(
            w, blob_pb.WriteRequest(upload_id=uuid.uuid4().hex, digest=digest_of(uuid.uuid4().bytes), write_offset=5)
        ),
        grpc.StatusCode.OUT_OF_RANGE,
        "WRITE_OFFSET_INVALID",
        lambda w: {"committed_size": "0"},
    ),
    (
        "read past the end",
        lambda w: _read(w, digest_of(w.content), offset=len(w.content) + 1),
        grpc.StatusCode.OUT_OF_RANGE,
        "READ_RANGE_INVALID",
        lambda w: {},
    ),
    ("read of a corrupt blob", _corrupt, grpc.StatusCode.DATA_LOSS, "BLOB_CORRUPT", lambda w: {}),
]


def _check(error: grpc.RpcError, code: grpc.StatusCode, reason: str, domain: str, expected: Expect) -> None:
    assert isinstance(error, grpc.Call)
    assert error.code() == code, error.details()
    info, _ = error_info(rpc_status.from_call(error))
    assert (info.reason, info.domain) == (reason, domain), error.details()
    for key, value in expected.items():
        assert info.metadata.get(key), f"{reason}: no metadata {key!r} in {dict(info.metadata)}"
        if value is not ...:
            assert info.metadata[key] == value


@pytest.mark.parametrize(
    ("what", "call", "code", "reason", "metadata"), METADATA_CASES, ids=[c[0] for c in METADATA_CASES]
)
def test_metadata_errors_carry_their_reason_over_the_wire(
    world: World, what: str, call: Callable[[World], Any], code: grpc.StatusCode, reason: str, metadata: Callable
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(world)
    _check(caught.value, code, reason, METADATA_DOMAIN, metadata(world))


@pytest.mark.parametrize(("what", "call", "code", "reason", "metadata"), BLOB_CASES, ids=[c[0] for c in BLOB_CASES])
def test_blob_errors_carry_their_reason_over_the_wire(
    world: World, what: str, call: Callable[[World], Any], code: grpc.StatusCode, reason: str, metadata: Callable
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(world)
    _check(caught.value, code, reason, BLOB_DOMAIN, metadata(world))


def test_a_missing_blob_refusal_keeps_its_violations_beside_the_reason(world: World) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _missing_blob(world)
    info, violations = error_info(rpc_status.from_call(caught.value))
    assert info.reason == "MISSING_BLOB"
    assert [kind for kind, _ in violations] == ["MISSING_BLOB"]
    assert violations[0][1].startswith("blobs/")


def test_batch_items_carry_an_error_info_in_their_status(world: World) -> None:
    bad = blob_pb.BatchUpdateBlobsRequest.Request(digest=digest_of(b"abc"), data=b"abd")
    update = world.blob.BatchUpdateBlobs(blob_pb.BatchUpdateBlobsRequest(requests=[bad]))
    info, _ = error_info(update.responses[0].status)
    assert (update.responses[0].status.code, info.reason, info.domain) == (3, "DIGEST_MISMATCH", BLOB_DOMAIN)

    absent = digest_of(b"absent " + uuid.uuid4().bytes)
    read = world.blob.BatchReadBlobs(blob_pb.BatchReadBlobsRequest(digests=[absent]))
    info, _ = error_info(read.responses[0].status)
    assert (read.responses[0].status.code, info.reason, info.domain) == (5, "BLOB_NOT_FOUND", BLOB_DOMAIN)


def test_a_commit_the_blob_service_cannot_verify_is_blob_service_unavailable(servers: Any, world: World) -> None:
    stranded = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=servers.database_url, blob_addr="127.0.0.1:9", migrate=False)
    )
    try:
        with grpc.insecure_channel(stranded.address) as channel:
            stub = pb_grpc.MetadataServiceStub(channel)
            pending = stub.CreateVersion(pb.CreateVersionRequest(parent=world.artifact, type="model")).version
            with pytest.raises(grpc.RpcError) as caught:
                stub.CommitVersion(
                    pb.CommitVersionRequest(
                        uid=pending.uid, manifest=[pb.ManifestEntry(path="w", digest=digest_of(world.content))]
                    ),
                    timeout=60,
                )
        _check(caught.value, grpc.StatusCode.UNAVAILABLE, "BLOB_SERVICE_UNAVAILABLE", METADATA_DOMAIN, {})
    finally:
        stranded.stop(grace=None)


def test_a_stalled_upload_is_aborted_with_stream_idle(tmp_path: Path) -> None:
    blobs = blob_server.start(
        BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), stream_idle_timeout_seconds=0.5)
    )
    try:
        data = b"stalled upload"
        first = blob_pb.WriteRequest(upload_id=uuid.uuid4().hex, digest=digest_of(data), data=data[:4])

        def stall() -> Iterator[blob_pb.WriteRequest]:
            yield first
            time.sleep(5)

        with grpc.insecure_channel(blobs.address) as channel, pytest.raises(grpc.RpcError) as caught:
            blob_grpc.BlobServiceStub(channel).Write(stall(), timeout=30)
        _check(caught.value, grpc.StatusCode.ABORTED, "STREAM_IDLE", BLOB_DOMAIN, {"setting": ...})
    finally:
        blobs.stop(grace=None)


def test_the_client_exposes_the_reason_of_registry_and_transfer_errors(servers: Any, world: World) -> None:
    with servers.registry(entity="acme", project="reasons") as registry:
        with pytest.raises(MregError) as caught:
            registry.resolve(f"{world.artifact}:nope")
        assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "ALIAS_NOT_FOUND")
        assert caught.value.metadata["alias"] == "nope"


def test_a_pull_of_corrupt_content_raises_an_error_with_its_reason(servers: Any, world: World, tmp_path: Path) -> None:
    corrupt_blob(world.store.storage, digest_of(world.content).hash, len(world.content))
    with servers.registry(entity="acme", project="reasons") as registry, pytest.raises(MregError) as caught:
        registry.pull(f"{world.artifact}:v{world.index}", tmp_path / "out")
    assert (caught.value.code, caught.value.reason) == ("DATA_LOSS", "BLOB_CORRUPT")
