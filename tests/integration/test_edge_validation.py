"""Every bad input gets a precise status, never UNKNOWN or INTERNAL, on SQLite and PostgreSQL.

Each test reproduces one defect of issue 7 ("Never UNKNOWN or INTERNAL; never a code that
misleads") through real servers over gRPC, with default-configured clients where the point
is what an ordinary client in any language can read back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.internal import encoder

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.helpers import digest_of

HEADERS = (("mreg-entity", "acme"), ("mreg-project", "edge"))
# What the issue allows an error message to quote of the input, plus the message around it.
MAX_MESSAGE_CHARS = 600


@pytest.fixture
def stub(servers) -> Iterator[pb_grpc.MetadataServiceStub]:
    """A metadata stub on a default-configured channel (4 MiB receive limit, like any language's default)."""
    channel = grpc.insecure_channel(servers.metadata.address)
    yield pb_grpc.MetadataServiceStub(channel)
    channel.close()


@pytest.fixture
def blobs(servers) -> Iterator[blob_grpc.BlobServiceStub]:
    channel = grpc.insecure_channel(servers.blob.address)
    yield blob_grpc.BlobServiceStub(channel)
    channel.close()


def error_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return error.value


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def committed_version(stub, blobs, artifact: str, **create: Any) -> pb.Version:
    """Creates and commits a one-file version of ``artifact`` (content unique per call)."""
    data = uuid.uuid4().bytes
    digest = digest_of(data)
    blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    pending = stub.CreateVersion(pb.CreateVersionRequest(parent=artifact, type="model", **create), metadata=HEADERS)
    manifest = [pb.ManifestEntry(path="w.bin", digest=digest)]
    return stub.CommitVersion(
        pb.CommitVersionRequest(uid=pending.version.uid, manifest=manifest), metadata=HEADERS
    ).version


def nested(depth: int) -> dict[str, Any]:
    """A metadata document whose deepest value sits ``depth`` objects down."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


NUL_REQUESTS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    # name: (RPC, request built from a unique suffix, the field the error must name)
    "description": (
        "CreateVersion",
        lambda u: pb.CreateVersionRequest(parent=f"n-{u}", type="model", description="a\0b"),
        "description",
    ),
    "tag": ("CreateVersion", lambda u: pb.CreateVersionRequest(parent=f"n-{u}", type="model", tags=["a\0"]), "tags"),
    "metadata key": (
        "CreateVersion",
        lambda u: pb.CreateVersionRequest(parent=f"n-{u}", type="model", metadata=struct({"k\0": 1})),
        "metadata",
    ),
    "metadata value": (
        "CreateVersion",
        lambda u: pb.CreateVersionRequest(parent=f"n-{u}", type="model", metadata=struct({"k": ["x\0"]})),
        "metadata",
    ),
    "model description": (
        "CreateRegisteredModel",
        lambda u: pb.CreateRegisteredModelRequest(name=f"m-{u}", description="\0"),
        "description",
    ),
    "model tag": (
        "CreateRegisteredModel",
        lambda u: pb.CreateRegisteredModelRequest(name=f"m-{u}", tags=["\0"]),
        "tags",
    ),
    "filter": (
        "ListVersions",
        lambda u: pb.ListVersionsRequest(parent="nul-target", filter='metadata.a = "\0"'),
        "filter",
    ),
    "collection filter": (
        "ListArtifacts",
        lambda u: pb.ListArtifactsRequest(parent="acme/edge", filter='name = "a\0*"'),
        "filter",
    ),
    "collection tag": (
        "ListRegisteredModels",
        lambda u: pb.ListRegisteredModelsRequest(parent="acme/edge", filter='tag = "\0"'),
        "filter",
    ),
    "alias history": (
        "ListAliasHistory",
        lambda u: pb.ListAliasHistoryRequest(parent="nul-target", alias="a\0"),
        "alias",
    ),
    "watch prefix": ("Watch", lambda u: pb.WatchRequest(resource_prefix="acme/\0"), "resource_prefix"),
    "request id": (
        "DeleteCollection",
        lambda u: pb.DeleteCollectionRequest(name=f"x-{u}", request_id="\0"),
        "request_id",
    ),
}


@pytest.mark.parametrize("case", NUL_REQUESTS)
def test_nul_bytes_in_any_text_are_invalid_argument_naming_the_field(stub, blobs, unique, case) -> None:
    committed_version(stub, blobs, "nul-target")
    method, build, field = NUL_REQUESTS[case]
    call = getattr(stub, method)
    error = error_of(lambda: call(build(unique), metadata=HEADERS, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in error.details()


@pytest.mark.parametrize("selector", ["v2147483648", "v4294967296", "v999999999999999999", "v99999999999999999999"])
def test_version_indexes_beyond_what_the_schema_stores_are_not_found(stub, blobs, selector) -> None:
    committed_version(stub, blobs, "index-range")
    for call in (
        lambda: stub.GetVersion(pb.GetVersionRequest(name=f"index-range:{selector}"), metadata=HEADERS),
        lambda: stub.ResolveReference(pb.ResolveReferenceRequest(name=f"index-range:{selector}"), metadata=HEADERS),
        lambda: stub.SetAlias(pb.SetAliasRequest(name=f"index-range:{selector}", alias="x"), metadata=HEADERS),
    ):
        assert error_of(call).code() == grpc.StatusCode.NOT_FOUND


def test_reference_and_enum_mistakes_get_messages_that_name_the_mistake(stub, blobs) -> None:
    committed_version(stub, blobs, "mistakes")
    no_name = error_of(lambda: stub.GetVersion(pb.GetVersionRequest(name=":v1"), metadata=HEADERS))
    assert no_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no name before ':'" in (no_name.details() or ""), no_name.details()
    request = pb.UpdateVersionRequest(name="mistakes:v0", metadata_mode=7)  # type: ignore[arg-type]
    mode = error_of(lambda: stub.UpdateVersion(request, metadata=HEADERS))
    assert mode.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata_mode" in (mode.details() or "")
    negative = error_of(
        lambda: stub.ListVersions(pb.ListVersionsRequest(parent="mistakes", page_size=-1), metadata=HEADERS)
    )
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (negative.details() or "") and str((1 << 63) - 1) not in (negative.details() or "")


def test_expected_indexes_beyond_what_the_schema_stores_are_invalid_argument(stub, blobs) -> None:
    committed_version(stub, blobs, "expect-range")
    request = pb.SetAliasRequest(name="expect-range:v0", alias="best", expected_index=1 << 40)
    error = error_of(lambda: stub.SetAlias(request, metadata=HEADERS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected_index" in error.details()


def forged(listing: str, key: Any) -> str:
    raw = json.dumps({"l": listing, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


WRONG_KEYS = ["x", None, 1.5, True, [], {}, [1], ["a", "b"], [None, "x"], [1, 2, 3], 1 << 70, -1, "\0", "z" * 5000]


@pytest.mark.parametrize("key", WRONG_KEYS, ids=repr)
def test_forged_page_tokens_of_the_right_listing_with_wrong_types_are_invalid_argument(stub, blobs, key) -> None:
    committed_version(stub, blobs, "tokens")
    stub.CreateRegisteredModel(
        pb.CreateRegisteredModelRequest(name="tokens-rm", request_id="tokens-rm"), metadata=HEADERS
    )
    calls = [
        lambda: stub.ListVersions(
            pb.ListVersionsRequest(parent="tokens", page_token=forged("versions:acme/edge/tokens::", key)),
            metadata=HEADERS,
        ),
        lambda: stub.ListVersions(
            pb.ListVersionsRequest(
                parent="tokens",
                order_by="create_time",
                page_token=forged("versions:acme/edge/tokens::create_time", key),
            ),
            metadata=HEADERS,
        ),
        lambda: stub.ListLinks(
            pb.ListLinksRequest(parent="tokens-rm", page_token=forged("links:acme/edge/tokens-rm", key)),
            metadata=HEADERS,
        ),
        lambda: stub.ListAliasHistory(
            pb.ListAliasHistoryRequest(
                parent="tokens", alias="best", page_token=forged("history:acme/edge/tokens:best", key)
            ),
            metadata=HEADERS,
        ),
    ]
    if not isinstance(key, str) or len(key) > 128 or "\0" in key:
        calls.append(
            lambda: stub.ListArtifacts(
                pb.ListArtifactsRequest(parent="acme/edge", page_token=forged("artifacts:acme/edge:::", key)),
                metadata=HEADERS,
            )
        )
    for call in calls:
        error = error_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "page_token" in error.details()


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_nan_and_infinity_in_metadata_are_invalid_argument(stub, blobs, unique, number) -> None:
    for metadata in ({"loss": number}, {"a": {"b": [1, number]}}):
        request = pb.CreateVersionRequest(parent=f"nan-{unique}", type="model", metadata=struct(metadata))
        error = error_of(lambda r=request: stub.CreateVersion(r, metadata=HEADERS))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata" in error.details()
    data = b"nan " + unique.encode()
    digest = digest_of(data)
    blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    pending = stub.CreateVersion(pb.CreateVersionRequest(parent=f"nan-{unique}", type="model"), metadata=HEADERS)
    entry = pb.ManifestEntry(path="w.bin", digest=digest, metadata=struct({"scale": number}))
    request = pb.CommitVersionRequest(uid=pending.version.uid, manifest=[entry])
    assert error_of(lambda: stub.CommitVersion(request, metadata=HEADERS)).code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "expression",
    [
        'create_time > "0001-01-01T00:00:00+14:00"',
        'commit_time < "9999-12-31T23:59:59-14:00"',
        "index > 1e400",
        "metadata.loss < -1e999",
        "size_bytes >= 99999999999999999999999",
        "index < 2147483648",
    ],
)
def test_filter_values_out_of_range_are_invalid_argument_or_match_nothing(stub, blobs, expression) -> None:
    committed_version(stub, blobs, "filter-range")
    request = pb.ListVersionsRequest(parent="filter-range", filter=expression)
    try:
        stub.ListVersions(request, metadata=HEADERS)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "filter" in error.details()


@pytest.mark.parametrize("grace", [10**11, (1 << 63) - 1, -1])
def test_garbage_collection_grace_beyond_the_bound_is_invalid_argument_naming_it(stub, grace) -> None:
    request = pb.CollectGarbageRequest(grace_period_seconds=grace, dry_run=True)
    error = error_of(lambda: stub.CollectGarbage(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grace_period_seconds" in error.details()


def test_metadata_nested_deeper_than_the_bound_is_refused_and_what_is_stored_reads_back(stub, blobs, unique) -> None:
    from mreg.metadata_service.limits import MAX_METADATA_DEPTH

    for depth in (MAX_METADATA_DEPTH + 1, 30):
        request = pb.CreateVersionRequest(parent=f"deep-{unique}", type="model", metadata=struct(nested(depth)))
        error = error_of(lambda r=request: stub.CreateVersion(r, metadata=HEADERS))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata" in error.details() and str(MAX_METADATA_DEPTH) in error.details()

    version = committed_version(stub, blobs, f"deep-{unique}", metadata=struct(nested(MAX_METADATA_DEPTH)))
    resolved = stub.ResolveReference(pb.ResolveReferenceRequest(name=version.name), metadata=HEADERS)
    listed = stub.ListVersions(pb.ListVersionsRequest(parent=f"deep-{unique}"), metadata=HEADERS)
    assert resolved.version.metadata == listed.versions[0].metadata == struct(nested(MAX_METADATA_DEPTH))


def _length_delimited(number: int, payload: bytes) -> bytes:
    return encoder._VarintBytes(number << 3 | 2) + encoder._VarintBytes(len(payload)) + payload


def deep_struct_bytes(depth: int) -> bytes:
    """A serialized Struct nested ``depth`` levels, built by hand: Python clients refuse to build one."""
    struct_bytes = b""
    for _ in range(depth):
        value = _length_delimited(5, struct_bytes)  # Value.struct_value
        entry = _length_delimited(1, b"n") + _length_delimited(2, value)  # FieldsEntry{key, value}
        struct_bytes = _length_delimited(1, entry)  # Struct.fields
    return struct_bytes


@pytest.mark.parametrize("depth", [35, 60, 200])
def test_requests_too_deep_to_parse_are_invalid_argument_not_internal(servers, depth) -> None:
    request = pb.CreateVersionRequest(parent="acme/edge/too-deep", type="model").SerializeToString()
    request += _length_delimited(5, deep_struct_bytes(depth))  # CreateVersionRequest.metadata
    with grpc.insecure_channel(servers.metadata.address) as channel:
        call = channel.unary_unary("/mreg.metadata.v1.MetadataService/CreateVersion")
        error = error_of(lambda: call(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_reading_a_stored_hash_with_the_wrong_size_is_not_found_and_logs_no_corruption(blobs, caplog) -> None:
    data = os.urandom(1000)
    digest = digest_of(data)
    blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)])
    )
    caplog.set_level(logging.ERROR)
    for size in (999, 1001, 0, 1 << 40):
        wrong = blob_pb.Digest(hash=digest.hash, size_bytes=size)
        error = error_of(lambda w=wrong: blobs.Read(blob_pb.ReadRequest(digest=w)))
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        if size < 1 << 20:  # larger is not for the batch RPC (INVALID_ARGUMENT)
            batch = blobs.BatchReadBlobs(blob_pb.BatchReadBlobsRequest(digests=[wrong]))
            assert batch.responses[0].status.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert blobs.FindMissingBlobs(blob_pb.FindMissingBlobsRequest(blob_digests=[wrong])).missing_blob_digests
    assert not [r for r in caplog.records if "corrupt" in r.getMessage()]


def test_a_huge_collection_filter_is_invalid_argument_not_a_retryable_code(stub, blobs) -> None:
    committed_version(stub, blobs, "prefix-target")
    for prefix in ("a" * 100_000, "%" * 50_000):
        request = pb.ListArtifactsRequest(parent="acme/edge", filter=f'name = "{prefix}*"')
        error = error_of(lambda r=request: stub.ListArtifacts(r, metadata=HEADERS))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "filter" in error.details()


@pytest.mark.parametrize(
    "method,request_",
    [
        ("CommitVersion", pb.CommitVersionRequest(uid="u" * (1 << 20))),
        ("ListVersions", pb.ListVersionsRequest(parent="acme/edge/x", order_by="k" * 100_000)),
        ("ListVersions", pb.ListVersionsRequest(parent="acme/edge/x", filter="(" * 100_000)),
        ("GetVersion", pb.GetVersionRequest(name="n" * 1_000_000)),
        ("SetAlias", pb.SetAliasRequest(name="acme/edge/x:v0", alias="a" * 1_000_000)),
        ("CreateVersion", pb.CreateVersionRequest(parent="acme/edge/x", type="t" * 1_000_000)),
        ("ListVersions", pb.ListVersionsRequest(parent="acme/edge/x", page_token="p" * 1_000_000)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_errors_quote_only_a_short_prefix_of_huge_input(stub, method, request_) -> None:
    error = error_of(lambda: getattr(stub, method)(request_, metadata=HEADERS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()[:300]
    assert len(error.details()) <= MAX_MESSAGE_CHARS


def test_blob_errors_quote_only_a_short_prefix_of_huge_input(blobs) -> None:
    huge = "f" * 1_000_000
    for call in (
        lambda: blobs.QueryWriteStatus(
            blob_pb.QueryWriteStatusRequest(upload_id=huge, digest=digest_of(b"x")),
        ),
        lambda: blobs.FindMissingBlobs(
            blob_pb.FindMissingBlobsRequest(blob_digests=[blob_pb.Digest(hash=huge, size_bytes=1)])
        ),
        lambda: blobs.Read(blob_pb.ReadRequest(digest=blob_pb.Digest(hash="a" * 64 + huge, size_bytes=-5))),
    ):
        error = error_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(error.details()) <= MAX_MESSAGE_CHARS


def test_a_description_beyond_the_bound_is_refused(stub, unique) -> None:
    from mreg.metadata_service.limits import MAX_DESCRIPTION_BYTES

    for text in ("d" * (8 << 20), "é" * (MAX_DESCRIPTION_BYTES // 2 + 1)):
        for request, method in (
            (pb.CreateVersionRequest(parent=f"desc-{unique}", type="model", description=text), stub.CreateVersion),
            (pb.CreateRegisteredModelRequest(name=f"desc-rm-{unique}", description=text), stub.CreateRegisteredModel),
        ):
            error = error_of(lambda r=request, m=method: m(r, metadata=HEADERS))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "description" in error.details() and str(MAX_DESCRIPTION_BYTES) in error.details()


def test_list_pages_stop_before_a_default_client_receive_limit(stub, blobs, unique) -> None:
    """Five versions of nearly the largest metadata would be a 4.5 MiB page: they come in pages that fit."""
    from mreg.metadata_service.limits import MAX_METADATA_BYTES

    artifact = f"big-{unique}"
    big = {"blob": "m" * (MAX_METADATA_BYTES - 1000)}
    for _ in range(5):
        committed_version(stub, blobs, artifact, metadata=struct(big), description="x" * 1000)

    seen, token, pages = [], "", 0
    while True:
        page = stub.ListVersions(pb.ListVersionsRequest(parent=artifact, page_token=token), metadata=HEADERS)
        assert page.versions, "a page that is not the last one carries at least one item"
        seen += [v.index for v in page.versions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [4, 3, 2, 1, 0]
    assert pages >= 2
    resolved = stub.ResolveReference(pb.ResolveReferenceRequest(name=f"{artifact}:v4"), metadata=HEADERS)
    assert resolved.version.metadata == struct(big)


def test_a_manifest_whose_sizes_overflow_the_stored_total_is_refused(stub) -> None:
    pending = stub.CreateVersion(pb.CreateVersionRequest(parent="overflow", type="model"), metadata=HEADERS)
    huge = blob_pb.Digest(hash="a" * 64, size_bytes=(1 << 62) + 1)
    manifest = [pb.ManifestEntry(path=f"f{i}", digest=huge) for i in range(2)]
    request = pb.CommitVersionRequest(uid=pending.version.uid, manifest=manifest)
    error = error_of(lambda: stub.CommitVersion(request, metadata=HEADERS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "total" in error.details()


def test_repeated_fields_beyond_their_bound_are_refused_so_answers_stay_readable(stub, blobs) -> None:
    run_request = pb.RecordRunInputsRequest(name="run-1", versions=["x:v0"] * 1001)
    error = error_of(lambda: stub.RecordRunInputs(run_request, metadata=HEADERS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "versions" in error.details()

    lookup = blob_pb.FindMissingBlobsRequest(blob_digests=[digest_of(b"%d" % i) for i in range(10_001)])
    error = error_of(lambda: blobs.FindMissingBlobs(lookup))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "blob_digests" in error.details()


@pytest.mark.parametrize(
    "service,method",
    [("mreg.metadata.v1.MetadataService", "GetVersion"), ("mreg.blob.v1.BlobService", "QueryWriteStatus")],
)
def test_requests_with_text_that_is_not_utf8_are_invalid_argument_not_internal(servers, service, method) -> None:
    """Other languages can send any bytes in a string field; gRPC's own answer to that would be INTERNAL."""
    address = servers.metadata.address if "metadata" in service else servers.blob.address
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{service}/{method}")
        error = error_of(lambda: call(_length_delimited(1, b"caf\xc3"), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_a_commit_missing_many_blobs_is_failed_precondition_with_a_detail_that_fits_the_trailer(stub) -> None:
    """Every missing blob listed in the status detail overflowed gRPC's 8 KiB trailer: RESOURCE_EXHAUSTED."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    pending = stub.CreateVersion(pb.CreateVersionRequest(parent="many-missing", type="model"), metadata=HEADERS)
    manifest = [pb.ManifestEntry(path=f"f{i}", digest=digest_of(uuid.uuid4().bytes)) for i in range(1000)]
    request = pb.CommitVersionRequest(uid=pending.version.uid, manifest=manifest)
    error = error_of(lambda: stub.CommitVersion(request, metadata=HEADERS))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "1000" in error.details()
    failure = error_details_pb2.PreconditionFailure()
    assert rpc_status.from_call(error).details[0].Unpack(failure)
    assert 0 < len(failure.violations) < 1000
    assert all(v.type == "MISSING_BLOB" for v in failure.violations)
