"""Fuzzing every RPC of both services over gRPC: no input may get UNKNOWN or INTERNAL.

The RPCs and their fields come from the proto descriptors, so a new RPC or field is fuzzed
without touching this file. Every string field gets adversarial text (NUL, control and odd
Unicode characters, SQL and LIKE metacharacters, up to 1 MiB), every number its type's
edges (negative, int32/int64 limits, NaN and infinities for doubles), metadata documents
get NaN, NUL keys and deep nesting, and page tokens are forged for the right listing with
keys of every JSON type. Streaming RPCs are included (Watch with a short deadline).

The calls run against servers of their own (on the session's database) with default
client channels, so a response a default client cannot read shows up as a failure too.
The number of calls is bounded (MREG_FUZZ_CALLS, default 5000 per database); the codes
seen are printed, recorded as the test's ``fuzz_codes`` property, and appended as a JSON
line to the file MREG_FUZZ_REPORT names, if set.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import os
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.internal import encoder
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.pagination import encode_token
from tests.helpers import digest_of

TOTAL_CALLS = int(os.environ.get("MREG_FUZZ_CALLS", "5000"))
CALLS_PER_EXAMPLE = 25
# Codes that mean the server failed rather than the input: never acceptable.
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
UNARY_TIMEOUT = 60.0
WATCH_TIMEOUT = 0.1
MAX_STREAM_MESSAGES = 20

ENTITY, PROJECT = "acme", "fuzz"
ARTIFACT = f"{ENTITY}/{PROJECT}/model"
MODEL = f"{ENTITY}/{PROJECT}/registry"
BLOB = b"fuzz content"
BLOB_DIGEST = digest_of(BLOB)

SERVICES = [
    (pb.DESCRIPTOR.services_by_name["MetadataService"], pb),
    (blob_pb.DESCRIPTOR.services_by_name["BlobService"], blob_pb),
]

# Text that has broken, or could break, something: storage, grammars, LIKE, logs, trailers.
ODD_TEXT = [
    "", " ", "\0", "a\0b", "\x01\x1f\x7f", "\r\n", "\t", "\x1b[31m", "\u0085", "\u2028", "\u202e", "\ufeff",
    "\uffff", "\U0010ffff", "e\u0301", "\U0001f600", "ǅ", "İ", "ß", "%", "_", "\\", "'", '"', "%_\\",
    "' OR 1=1 --", "/", "//", ":", "::", "a:b:c", ".", "..", "-", "v0", "v01", "latest", "best",
    "x" * 129, "x" * 601, "x" * 4097,
]  # fmt: skip
NAMES = [
    ARTIFACT, f"{ARTIFACT}:v0", f"{ARTIFACT}:v1", f"{ARTIFACT}:latest", f"{ARTIFACT}:best", f"{ARTIFACT}:v2147483647",
    f"{ARTIFACT}:v2147483648", f"{ARTIFACT}:v999999999999999999", "model", "model:v0", f"{PROJECT}/model",
    MODEL, f"{MODEL}:v0", f"{MODEL}:latest", f"{MODEL}:prod", f"{ENTITY}/{PROJECT}", PROJECT,
    f"{ENTITY}/{PROJECT}/run-1", f"{ENTITY}/{PROJECT}/new-{{}}", "model", "dataset", "prod", "best",
]  # fmt: skip
FILTERS_FIELDS = [
    "index", "state", "alias", "tag", "run", "create_time", "commit_time", "size_bytes", "file_count",
    "metadata.loss", "metadata.a.b", "metadata.x-y", "metadata.", "metadata..a", "unknown",
]  # fmt: skip
FILTER_VALUES = [
    "0", "-1", "1e400", "-1e999", "2147483648", "9223372036854775808", "99999999999999999999999", "1.5", ".5",
    '"best"', "'committed'", '"deleted"', '"x\\"y"', '"2026-01-01T00:00:00Z"', '"0001-01-01T00:00:00+14:00"',
    '"9999-12-31T23:59:59-14:00"', '"2026-13-45"', '"2026-01-01"', "true", "false", "NaN", "inf", '"\0"',
]  # fmt: skip
LISTINGS: list[tuple[str, str, dict[str, str]]] = [
    # A listing's fingerprint as the service computes it, the RPC, and the request fields of that listing.
    (f"versions:{ARTIFACT}::", "ListVersions", {"parent": ARTIFACT}),
    (f"versions:{ARTIFACT}::create_time", "ListVersions", {"parent": ARTIFACT, "order_by": "create_time"}),
    (f"versions:{ARTIFACT}::size_bytes desc", "ListVersions", {"parent": ARTIFACT, "order_by": "size_bytes desc"}),
    (f"versions:{ARTIFACT}::metadata.loss", "ListVersions", {"parent": ARTIFACT, "order_by": "metadata.loss"}),
    (f"artifacts:{ENTITY}/{PROJECT}:", "ListArtifacts", {"parent": f"{ENTITY}/{PROJECT}"}),
    (f"registered_models:{ENTITY}/{PROJECT}:", "ListRegisteredModels", {"parent": f"{ENTITY}/{PROJECT}"}),
    (f"links:{MODEL}", "ListLinks", {"parent": MODEL}),
    (f"history:{ARTIFACT}:best", "ListAliasHistory", {"parent": ARTIFACT, "alias": "best"}),
]

INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
INT_EDGES = [0, 1, -1, 2, 100, 1000, 1001, 86400, (1 << 31) - 1, 1 << 31, 1 << 32, 10**11, 1 << 53, (1 << 63) - 1]


def repeat(unit: str, count: int) -> str:
    return unit * count


huge_text = st.builds(repeat, st.sampled_from(["a", "\0", "é", "\U0001f600", "%", "/", "(", "metadata.a = 1 AND "]),
                      st.sampled_from([300, 5000, 70_000, 1 << 20]))  # fmt: skip
odd_text = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200),
    st.text(st.characters(max_codepoint=0x1F), max_size=10),
)
names = st.one_of(st.sampled_from(NAMES).map(lambda n: n.replace("{}", uuid.uuid4().hex[:6])), odd_text)


@st.composite
def filters(draw: st.DrawFn) -> str:
    def comparison() -> str:
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "==", ""]))
        return f"{draw(st.sampled_from(FILTERS_FIELDS))} {op} {draw(st.sampled_from(FILTER_VALUES))}"

    parts = [comparison()]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(st.sampled_from(["AND", "OR", "AND NOT", "OR ("])))
        parts.append(comparison())
    text = " ".join(parts)
    if draw(st.booleans()):
        text = "(" * draw(st.integers(1, 40)) + text + ")" * draw(st.integers(0, 40))
    return text


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.integers(-(1 << 53), 1 << 53),
    st.sampled_from(ODD_TEXT),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def nested_document(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1.0}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def _document(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


documents = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(ODD_TEXT)), json_values, max_size=4),
    st.integers(1, 32).map(nested_document),
    st.builds(lambda n: {"big": "m" * n}, st.sampled_from([1000, (1 << 20) - 100, 1 << 20, 5 << 20])),
    st.sampled_from([{"nan": float("nan")}, {"inf": float("inf")}, {"l": [float("-inf")]}, {"\0": 1}, {"k": "\0"}]),
).map(_document)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(
        st.sampled_from([0, -1, -62135596800, -62135596801, 253402300799, 253402300800, *INT64]),
        st.integers(*INT64),
    ),
    nanos=st.one_of(st.just(0), st.integers(*INT32)),
)  # fmt: skip
hashes = st.one_of(
    st.just(BLOB_DIGEST.hash),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["", "A" * 64, "g" * 64, BLOB_DIGEST.hash + "0", BLOB_DIGEST.hash.upper()]),
    odd_text,
)
json_keys = st.one_of(
    json_values,
    st.lists(json_values, min_size=2, max_size=2),
    st.sampled_from([[1.5, 0], [None, 3], ["2026-01-01T00:00:00+00:00", 0], ["x", 1 << 31], [1, -1], [0, 1.0]]),
)


@st.composite
def page_tokens(draw: st.DrawFn) -> str:
    listing = draw(st.sampled_from([listing for listing, _, _ in LISTINGS]))
    return draw(
        st.one_of(
            odd_text,
            st.builds(encode_token, st.just(listing), json_keys),
            json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()),
            st.just(base64.urlsafe_b64encode(b'{"l": "x", "k": ' + b"[" * 5000 + b"]" * 5000 + b"}").decode()),
        )
    )


# Each field gets a plausible value (so calls reach deep into the services) or an adversarial
# one; how wild a call is varies from call to call.
clean_text = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=30)
PENDING_UIDS: list[str] = []
PLAUSIBLE_STRINGS: dict[str, st.SearchStrategy[str]] = {
    "hash": st.one_of(st.just(BLOB_DIGEST.hash), st.text("0123456789abcdef", min_size=64, max_size=64)),
    "page_token": st.just(""),
    "filter": filters(),
    "order_by": st.sampled_from(["", "index", "create_time asc", "size_bytes desc", "metadata.loss desc"]),
    "upload_id": st.uuids().map(lambda u: u.hex),
    "type": st.just("model"),
    "alias": st.sampled_from(["best", "prod", "staging"]),
    "aliases": st.sampled_from(["best", "prod", "staging"]),
    "request_id": st.one_of(st.just(""), st.uuids().map(str)),
    "path": st.sampled_from(["w.bin", "a/b.txt", "config.json"]),
    "uid": st.builds(lambda i: PENDING_UIDS[i % len(PENDING_UIDS)] if PENDING_UIDS else "", st.integers(0, 99)),
    "run": st.sampled_from([f"{ENTITY}/{PROJECT}/run-1", "run-2"]),
    "resource_prefix": st.sampled_from(["", f"{ENTITY}/{PROJECT}/", ARTIFACT]),
    "description": clean_text,
    "tags": clean_text,
    "tag": clean_text,
    "parent": st.sampled_from([ARTIFACT, MODEL, f"{ENTITY}/{PROJECT}", "model"]),
}
LONG_FILTERS = [
    # Just under the 4096-character limit: long chains and deep nesting reach the SQL compilers.
    " OR ".join(["index = 1"] * 315),
    " AND ".join(["metadata.a.b.c < 1"] * 180),
    " OR ".join(['tag = "x"'] * 315),
    " OR ".join(['alias = "b"'] * 300),
    " OR ".join(["(" * 10 + "index = 1" + ")" * 10] * 100),
    "NOT " * 31 + "index = 1",
    "(" * 31 + "size_bytes > 1e308" + ")" * 31,
]
ADVERSARIAL_STRINGS: dict[str, st.SearchStrategy[str]] = {
    "hash": hashes,
    "page_token": page_tokens(),
    "filter": st.one_of(filters(), odd_text, st.sampled_from(LONG_FILTERS)),
    "order_by": st.one_of(
        st.sampled_from(["index sideways", "name", "metadata.", "metadata.a.b.c asc desc"]), odd_text
    ),
}
plausible_names = st.sampled_from([n for n in NAMES if "{}" not in n and "2147483648" not in n and "9999" not in n])


def strings_for(field: FieldDescriptor, wild: bool) -> st.SearchStrategy[str]:
    if not wild:
        return PLAUSIBLE_STRINGS.get(field.name, plausible_names)
    return st.one_of(ADVERSARIAL_STRINGS.get(field.name, names), odd_text, huge_text)


def numbers_for(field: FieldDescriptor, wild: bool) -> st.SearchStrategy[Any]:
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        if not wild:
            return st.floats(-10, 10)
        return st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308]))
    if not wild:
        return st.sampled_from([0, 1, 2, 3, len(BLOB)])
    low, high = INT32 if field.type in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32) else INT64
    edges = [e for e in INT_EDGES + [-e for e in INT_EDGES] + [low, high] if low <= e <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(-3, 3))


def _value_strategy(
    field: FieldDescriptor, module: Any, depth: int, wildness: int, wild: bool
) -> st.SearchStrategy[Any] | None:
    if field.type == field.TYPE_STRING:
        return strings_for(field, wild)
    if field.type == field.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\0" * 70_000)) if wild else st.just(BLOB)
    if field.type == field.TYPE_BOOL:
        return st.booleans()
    if field.type == field.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(*INT32))
    if field.type == field.TYPE_MESSAGE:
        if depth >= 3:
            return None
        if field.message_type.full_name == "google.protobuf.Struct":
            return documents if wild else plain_documents
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return (
                timestamps
                if wild
                else st.builds(timestamp_pb2.Timestamp, seconds=st.integers(1_700_000_000, 1_900_000_000))
            )
        if field.message_type.full_name == "mreg.blob.v1.Digest" and not wild:
            return st.sampled_from([BLOB_DIGEST, blob_pb.Digest(hash="0" * 64, size_bytes=1)])
        return messages(field.message_type, module, wildness, depth + 1)
    return numbers_for(field, wild)


plain_documents = st.dictionaries(
    st.sampled_from(["loss", "a", "epoch"]), st.one_of(st.floats(0, 1), st.text(max_size=5)), max_size=3
).map(_document)


def messages(descriptor: Descriptor, module: Any, wildness: int, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of this descriptor: each field absent, plausible, or (``wildness`` % of them) adversarial."""
    message_class = _message_class(descriptor, module)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        for field in descriptor.fields:
            if draw(st.integers(0, 9)) < 2:
                continue  # left unset
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                wild = draw(st.integers(0, 99)) < wildness
                strategy = _value_strategy(field, module, depth, wildness, wild)
                if strategy is None:
                    break
                value = draw(strategy)
                if field.is_repeated:
                    getattr(message, field.name).append(value)
                elif isinstance(value, Message):
                    getattr(message, field.name).CopyFrom(value)
                else:
                    setattr(message, field.name, value)
        return message

    return build()


def _message_class(descriptor: Descriptor, module: Any) -> type[Message]:
    if descriptor.file.package == module.DESCRIPTOR.package:
        path = descriptor.full_name[len(module.DESCRIPTOR.package) + 1 :].split(".")
        found: Any = module
        for part in path:
            found = getattr(found, part)
        return found
    for other in (pb, blob_pb):
        if descriptor.file.package == other.DESCRIPTOR.package:
            return _message_class(descriptor, other)
    raise LookupError(descriptor.full_name)


ALL_METHODS: list[tuple[MethodDescriptor, Any]] = [
    (method, module) for service, module in SERVICES for method in service.methods
]
header_values = st.one_of(
    st.sampled_from([ENTITY, PROJECT, "", "x" * 129, "a/b", "  ", ".."]),
    st.text(string.printable.strip() + " ", max_size=300),
)


RAW = "raw"


def _length_delimited(number: int, payload: bytes) -> bytes:
    return encoder._VarintBytes(number << 3 | 2) + encoder._VarintBytes(len(payload)) + payload


@st.composite
def raw_requests(draw: st.DrawFn, descriptor: Descriptor, module: Any) -> bytes:
    valid = draw(messages(descriptor, module, 0)).SerializeToString()
    kind = draw(st.integers(0, 3))
    if kind == 0:  # a string field holding bytes that are not UTF-8
        number = draw(st.sampled_from([f.number for f in descriptor.fields] or [1]))
        return valid + _length_delimited(
            number, draw(st.sampled_from([b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xc0\x80"]))
        )
    if kind == 1 and valid:  # truncated
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == 2:  # a length that runs past the end
        return valid + b"\x0a\xff\xff\xff\x0f"
    return draw(st.binary(max_size=100))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any, Any, tuple[tuple[str, str], ...]]:
    """One call: (method name, service module, request or list of requests, headers)."""
    if draw(st.integers(0, 9)) == 0:
        # A forged page token of exactly the listing the request names.
        listing, method, fields = draw(st.sampled_from(LISTINGS))
        token = draw(st.builds(encode_token, st.just(listing), json_keys))
        return method, pb, getattr(pb, f"{method}Request")(page_token=token, **fields), ()
    method, module = draw(st.sampled_from(ALL_METHODS))
    if draw(st.integers(0, 19)) == 0:
        # Bytes no Python client would send: invalid UTF-8 in a string field, truncation, noise.
        raw = draw(raw_requests(method.input_type, module))
        return method.name, RAW, [raw] if method.client_streaming else raw, ()
    request_strategy = messages(method.input_type, module, draw(st.sampled_from([0, 0, 5, 20, 100])))
    request: Any = (
        draw(st.lists(request_strategy, min_size=1, max_size=3)) if method.client_streaming else draw(request_strategy)
    )
    headers: tuple[tuple[str, str], ...] = ()
    if draw(st.integers(0, 3)) > 0:
        headers = (("mreg-entity", ENTITY), ("mreg-project", PROJECT))
    elif draw(st.integers(0, 3)) == 0:
        headers = tuple((h, draw(header_values)) for h in ("mreg-entity", "mreg-project", "mreg-actor"))
    return method.name, module, request, headers


@dataclass
class Tally:
    codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    per_method: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())


class Fuzzer:
    def __init__(self, metadata_address: str, blob_address: str, database_url: str) -> None:
        self.database_url = database_url
        # Default channels: what any client reads, the fuzz reads.
        self.channels = [grpc.insecure_channel(metadata_address), grpc.insecure_channel(blob_address)]
        self.stubs = {
            pb: pb_grpc.MetadataServiceStub(self.channels[0]),
            blob_pb: blob_grpc.BlobServiceStub(self.channels[1]),
        }
        self.streaming = {m.name: (m.client_streaming, m.server_streaming) for m, _ in ALL_METHODS}
        self.raw_routes = {
            method.name: (service.full_name, channel)
            for (service, _), channel in zip(SERVICES, self.channels, strict=True)
            for method in service.methods
        }
        self.tally = Tally()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def call(self, method: str, module: Any, request: Any, headers: tuple[tuple[str, str], ...]) -> None:
        client_streaming, server_streaming = self.streaming[method]
        if module == RAW:
            # No serializers: the bytes go out as they are, and answers come back as bytes.
            service, channel = self.raw_routes[method]
            path = f"/{service}/{method}"
            if client_streaming:
                stub_method = channel.stream_unary(path)
            elif server_streaming:
                stub_method = channel.unary_stream(path)
            else:
                stub_method = channel.unary_unary(path)
        else:
            stub_method = getattr(self.stubs[module], method)
        timeout = WATCH_TIMEOUT if method == "Watch" else UNARY_TIMEOUT
        code = grpc.StatusCode.OK
        details = ""
        reason_problem = ""
        try:
            if client_streaming:
                stub_method(iter(request), metadata=headers, timeout=timeout)
            elif server_streaming:
                stream = stub_method(request, metadata=headers, timeout=timeout)
                for received, _ in enumerate(stream):
                    if received >= MAX_STREAM_MESSAGES:
                        stream.cancel()
                        break
            else:
                stub_method(request, metadata=headers, timeout=timeout)
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            reason_problem = _reason_problem(e)
        if code == grpc.StatusCode.CANCELLED and server_streaming:
            code = grpc.StatusCode.OK  # we cut the stream ourselves
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method == "Watch":
            code = grpc.StatusCode.OK  # an idle watch runs until its deadline
        self.tally.codes[code.name] += 1
        self.tally.per_method[method] += 1
        bad_reason = code != grpc.StatusCode.OK and reason_problem != ""
        if code in FORBIDDEN or code == grpc.StatusCode.DEADLINE_EXCEEDED or len(details) > 1000 or bad_reason:
            shown = repr(request)[:300]
            self.tally.failures.append(f"{method} -> {code.name}: {details[:300]} {reason_problem} | request {shown}")


# Every error must carry an ErrorInfo whose reason its service's ErrorReason declares.
KNOWN_REASONS = {
    (domain, value.name)
    for domain, enum in (("metadata.mreg.dev", pb.ErrorReason), ("blob.mreg.dev", blob_pb.ErrorReason))
    for value in enum.DESCRIPTOR.values
    if value.number != 0
}


def _reason_problem(error: grpc.RpcError) -> str:
    """Why an error's ErrorInfo is missing or unknown; "" if it carries a declared reason."""
    try:
        status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    except ValueError:
        return "(its status details disagree with its code)"
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            known = (info.domain, info.reason) in KNOWN_REASONS
            return "" if known else f"(unknown reason {info.domain}/{info.reason})"
    return "(no ErrorInfo)"


@pytest.fixture(scope="module")
def fuzz_target(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    """Servers of the fuzz's own (its blob store apart, so its CollectGarbage and DeleteBlobs touch nothing else)."""
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path_factory.mktemp("fuzz-blobs"))))
    metadata = metadata_server.start(
        MetadataConfig(listen="127.0.0.1:0", database_url=database_url, blob_addr=blobs.address)
    )
    fuzzer = Fuzzer(metadata.address, blobs.address, database_url)
    _seed(fuzzer)
    yield fuzzer
    fuzzer.close()
    metadata.stop(grace=None)
    blobs.stop(grace=None)


def _seed(fuzzer: Fuzzer) -> None:
    """Something to find: an artifact with versions and aliases, a registered model with a link."""
    meta, blobs = fuzzer.stubs[pb], fuzzer.stubs[blob_pb]
    headers = (("mreg-entity", ENTITY), ("mreg-project", PROJECT))
    for position in range(3):
        data = BLOB if position == 0 else uuid.uuid4().bytes
        digest = digest_of(data)
        blobs.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=data)]
            )
        )
        pending = meta.CreateVersion(
            pb.CreateVersionRequest(parent=ARTIFACT, type="model", metadata=_document({"loss": 0.1 * position})),
            metadata=headers,
        )
        meta.CommitVersion(
            pb.CommitVersionRequest(
                uid=pending.version.uid, manifest=[pb.ManifestEntry(path="w.bin", digest=digest)], aliases=["best"]
            ),
            metadata=headers,
        )
    for _ in range(20):
        pending = meta.CreateVersion(pb.CreateVersionRequest(parent=ARTIFACT, type="model"), metadata=headers)
        PENDING_UIDS.append(pending.version.uid)
    meta.CreateRegisteredModel(
        pb.CreateRegisteredModelRequest(name=MODEL, request_id=f"seed-{MODEL}"), metadata=headers
    )
    meta.CreateLink(pb.CreateLinkRequest(version=f"{ARTIFACT}:v0", parent=MODEL, aliases=["prod"]), metadata=headers)


def test_fuzzed_calls_to_every_rpc_never_answer_unknown_or_internal(
    fuzz_target: Fuzzer, record_property, capsys
) -> None:
    examples = -(-TOTAL_CALLS // CALLS_PER_EXAMPLE)
    database = make_url(fuzz_target.database_url).get_backend_name()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(calls(), min_size=CALLS_PER_EXAMPLE, max_size=CALLS_PER_EXAMPLE))
    def batch(batch_calls: list[tuple[str, Any, Any, tuple[tuple[str, str], ...]]]) -> None:
        for method, module, request, headers in batch_calls:
            fuzz_target.call(method, module, request, headers)

    batch()
    tally = fuzz_target.tally
    summary = {
        "calls": tally.calls,
        "codes": dict(tally.codes.most_common()),
        "per_method": dict(sorted(tally.per_method.items())),
    }
    record_property("fuzz_codes", json.dumps(summary))
    with capsys.disabled():
        print(f"\nfuzz summary ({database}): {json.dumps(summary)}")
    if report := os.environ.get("MREG_FUZZ_REPORT"):
        with open(report, "a") as out:
            out.write(json.dumps({"database": database, **summary}) + "\n")
    assert tally.calls >= TOTAL_CALLS
    untouched = {m.name for m, _ in ALL_METHODS} - set(tally.per_method)
    assert not untouched, f"RPCs never called: {sorted(untouched)}"
    assert not tally.failures, "\n".join(tally.failures[:30])
