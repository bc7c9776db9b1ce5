"""A version of tens of thousands of files reads back through a default-configured gRPC client."""

from __future__ import annotations

import grpc
import pytest

from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc
from tests.helpers import upload
from tests.wire import Wire

FILES = 25_000
HEADERS = (("mreg-entity", "acme"), ("mreg-project", "vision"))


def _paths(count: int) -> list[str]:
    # Long paths so the manifest passes 4 MiB; mixed case and non-ASCII to pin the byte order.
    stems = ["Zeta", "alpha", "Éclair", "beta"]
    return [f"shards/{stems[i % 4]}/layer-{i:06d}/" + "w" * 90 + ".bin" for i in range(count)]


@pytest.fixture
def default_stub(servers) -> metadata_service_pb2_grpc.MetadataServiceStub:
    """A stub with gRPC's default 4 MiB receive limit, as any other language's client has."""
    with grpc.insecure_channel(servers.metadata.address) as channel:
        yield metadata_service_pb2_grpc.MetadataServiceStub(channel)


def _commit_large(wire: Wire, name: str, count: int) -> pb.CommitVersionResponse:
    (digest,) = upload(wire, b"one shard, many paths " + name.encode())
    pending = wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model"))
    request = pb.CommitVersionRequest(
        uid=pending.version.uid, manifest=[pb.ManifestEntry(path=p, digest=digest) for p in _paths(count)]
    )
    return wire.call(wire.metadata.CommitVersion, request)


def test_a_manifest_too_big_for_one_response_is_omitted_and_paged_in_byte_order(
    registry, wire, default_stub, unique
) -> None:
    name = f"huge-{unique}"
    committed = _commit_large(wire, name, FILES)
    assert committed.version.manifest_omitted and len(committed.version.manifest) == 0
    assert committed.version.file_count == FILES

    got = default_stub.GetVersion(pb.GetVersionRequest(name=name), metadata=HEADERS)
    resolved = default_stub.ResolveReference(pb.ResolveReferenceRequest(name=name), metadata=HEADERS)
    assert got.version.manifest_omitted and resolved.version.manifest_omitted

    paths: list[str] = []
    token = ""
    pages = 0
    while True:
        page = default_stub.ListVersionFiles(
            pb.ListVersionFilesRequest(name=committed.version.name, page_size=10_000, page_token=token),
            metadata=HEADERS,
        )
        assert page.name == committed.version.name
        paths.extend(f.path for f in page.files)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert paths == sorted(_paths(FILES), key=lambda p: p.encode())
    assert pages >= 3  # 10 000 long paths per page would pass the budget: pages end early


def test_a_small_manifest_is_still_returned_whole(registry, wire, default_stub, unique) -> None:
    committed = _commit_large(wire, f"small-{unique}", 10)
    assert not committed.version.manifest_omitted and len(committed.version.manifest) == 10
    page = default_stub.ListVersionFiles(
        pb.ListVersionFilesRequest(name=committed.version.name, page_size=4), metadata=HEADERS
    )
    assert [f.path for f in page.files] == [e.path for e in committed.version.manifest][:4]


def test_a_file_page_token_is_bound_to_the_version_not_the_alias(registry, wire, default_stub, unique) -> None:
    name = f"moving-{unique}"
    first = _commit_large(wire, name, 10)
    page = default_stub.ListVersionFiles(pb.ListVersionFilesRequest(name=name, page_size=4), metadata=HEADERS)
    assert page.name == first.version.name
    _commit_large(wire, name, 12)  # latest moves to v1

    with pytest.raises(grpc.RpcError) as moved:
        default_stub.ListVersionFiles(
            pb.ListVersionFilesRequest(name=name, page_size=4, page_token=page.next_page_token), metadata=HEADERS
        )
    assert moved.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rest = default_stub.ListVersionFiles(
        pb.ListVersionFilesRequest(name=first.version.name, page_size=4, page_token=page.next_page_token),
        metadata=HEADERS,
    )
    assert len(rest.files) == 4


def test_the_python_client_completes_an_omitted_manifest(registry, wire, unique) -> None:
    name = f"client-{unique}"
    _commit_large(wire, name, FILES)
    resolved = registry.resolve(name)
    assert not resolved.version.manifest_omitted
    assert [e.path for e in resolved.version.manifest] == sorted(_paths(FILES), key=lambda p: p.encode())
