"""Small helpers shared by the tests."""

from __future__ import annotations

import filecmp
import hashlib
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.client import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import token_service_pb2 as token_pb
from mreg.metadata.v1 import token_service_pb2_grpc as token_grpc
from tests.wire import Wire

CHUNK = 1 << 20


def digest_of(data: bytes) -> blob_pb.Digest:
    return blob_pb.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def make_checkpoint(root: Path, large_bytes: int = 3 << 20, seed: int = 0) -> Path:
    """Writes a small model directory: one multi-chunk file, a config and nested small files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = bytes((seed + i) % 251 for i in range(4096))
    (root / "weights.bin").write_bytes(os.urandom(large_bytes))
    (root / "config.json").write_text(f'{{"layers": 50, "seed": {seed}}}')
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_bytes(rng * 3)
    (root / "tokenizer" / "empty.txt").write_bytes(b"")
    return root


def assert_same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


def corrupt_blob(storage, sha256: str, size: int) -> None:  # type: ignore[no-untyped-def]
    """Flips one byte of a stored blob behind the service's back, on disk or in S3."""
    data = bytearray(_stored_bytes(storage, sha256, size))
    data[len(data) // 2] ^= 0x01
    _store_bytes(storage, sha256, size, bytes(data))


def truncate_blob(storage, sha256: str, size: int, keep: int) -> None:  # type: ignore[no-untyped-def]
    """Cuts a stored blob to its first ``keep`` bytes behind the service's back (a torn write, a bad disk)."""
    _store_bytes(storage, sha256, size, _stored_bytes(storage, sha256, size)[:keep])


def _stored_bytes(storage, sha256: str, size: int) -> bytes:  # type: ignore[no-untyped-def]
    from mreg.blob_service.digests import Digest
    from mreg.blob_service.storage import DiskStorage

    if isinstance(storage, DiskStorage):
        where = storage.locate(Digest(sha256, size))
        assert where is not None, f"blob {sha256} is not stored"
        path, offset = where
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    response = storage.client.get_object(storage.bucket, storage.key(f"blobs/{sha256}"))
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def _store_bytes(storage, sha256: str, size: int, data: bytes) -> None:  # type: ignore[no-untyped-def]
    import io

    from mreg.blob_service.digests import Digest
    from mreg.blob_service.storage import DiskStorage

    if isinstance(storage, DiskStorage):
        path, offset = storage.locate(Digest(sha256, size)) or (storage.blob_path(Digest(sha256, size)), 0)
        if offset == 0 and path.parent.parent.name == "blobs":
            path.write_bytes(data)
            return
        # Packed among other blobs: only bytes of the same length can take their place.
        assert len(data) == size, "a packed blob can be damaged in place, not truncated"
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        return
    storage.client.put_object(storage.bucket, storage.key(f"blobs/{sha256}"), io.BytesIO(data), len(data))


def write_requests(
    data: bytes, digest: blob_pb.Digest, upload_id: str, offset: int = 0, finish: bool = True
) -> Iterator[blob_pb.WriteRequest]:
    """The requests of one Write stream sending ``data`` from ``offset`` in CHUNK-sized pieces."""
    first = True
    position = offset
    while True:
        chunk = data[position : position + CHUNK]
        last = position + len(chunk) >= len(data)
        yield blob_pb.WriteRequest(
            upload_id=upload_id if first else "",
            digest=digest if first else None,
            write_offset=position,
            finish_write=finish and last,
            data=chunk,
        )
        first = False
        position += len(chunk)
        if last:
            return


def read_all(stub: Any, digest: blob_pb.Digest, offset: int = 0, limit: int = 0) -> bytes:
    """Reads a blob (or a range of it) through a blob service stub."""
    request = blob_pb.ReadRequest(digest=digest, read_offset=offset, read_limit=limit)
    return b"".join(r.data for r in stub.Read(request))


def upload(wire: Wire, *contents: bytes) -> list[blob_pb.Digest]:
    """Stores small blobs through the raw blob stub; returns their digests."""
    digests = [digest_of(c) for c in contents]
    wire.blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(
            requests=[
                blob_pb.BatchUpdateBlobsRequest.Request(digest=d, data=c)
                for d, c in zip(digests, contents, strict=True)
            ]
        )
    )
    return digests


def push_one(
    wire: Wire,
    name: str,
    content: str,
    metadata: dict[str, Any] | None = None,
    tags: tuple[str, ...] = (),
    **commit_fields: Any,
) -> pb.CommitVersionResponse:
    """Creates and commits a one-file version through the raw RPCs."""
    (digest,) = upload(wire, content.encode())
    create = pb.CreateVersionRequest(parent=name, type="model", tags=list(tags))
    if metadata:
        create.metadata.update(metadata)
    pending = wire.call(wire.metadata.CreateVersion, create).version
    request = pb.CommitVersionRequest(
        uid=pending.uid, manifest=[pb.ManifestEntry(path="f", digest=digest)], **commit_fields
    )
    return wire.call(wire.metadata.CommitVersion, request)


def code_of(call: Callable[[], Any]) -> str:
    """The status code name of the MregError that ``call`` raises."""
    with pytest.raises(MregError) as error:
        call()
    return error.value.code


def create_token(channel: Any, name: str, role: str, scope: str) -> str:
    """Creates a token over ``channel`` (which must carry an admin token); returns its secret."""
    request = token_pb.CreateTokenRequest(name=name, role=f"ROLE_{role.upper()}", scope=scope)
    return str(token_grpc.TokenServiceStub(channel).CreateToken(request).secret)


# Prometheus samples by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_text(endpoint: Any) -> str:
    """What a metrics endpoint serves, as Prometheus reads it."""
    with urllib.request.urlopen(f"http://{endpoint.address}/metrics", timeout=10) as response:
        return str(response.read().decode())


def scrape(endpoint: Any) -> Samples:
    """Every sample a service's metrics endpoint shows, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics_text(endpoint))
        for sample in family.samples
    }


def store_requests(endpoint: Any) -> dict[str, float]:
    """The requests a blob service made to its S3 store so far, by HTTP method, as its metrics endpoint shows."""
    return {
        dict(labels)["method"]: count
        for (name, labels), count in scrape(endpoint).items()
        if name == "mreg_blob_store_requests_total"
    }


def new_upload(size: int) -> tuple[bytes, blob_pb.Digest, str]:
    """Random content of ``size`` bytes, its digest and a new upload id."""
    data = os.urandom(size)
    return data, digest_of(data), uuid.uuid4().hex
