"""A version committed over gRPC carries the canonical manifest digest of the language-neutral test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.metadata.v1 import metadata_service_pb2 as pb

VECTORS_FILE = Path(__file__).parents[2] / "protos/mreg/metadata/v1/testdata/manifest_digest_vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
HEADERS = (("mreg-entity", "acme"), ("mreg-project", "vision"))


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["manifest"]], ids=lambda v: v["name"])
def test_committed_version_digest_over_grpc_matches_the_test_vector(
    metadata_stub, unique, vector: dict[str, Any], wire
) -> None:
    contents = [e["content"].encode() for e in vector["manifest"]]
    wire.blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(
            requests=[
                blob_pb.BatchUpdateBlobsRequest.Request(
                    digest=blob_pb.Digest(hash=e["digest"]["hash"], size_bytes=e["digest"]["size_bytes"]), data=c
                )
                for e, c in zip(vector["manifest"], contents, strict=True)
            ]
        )
    )
    manifest = []
    for e in vector["manifest"]:
        entry = pb.ManifestEntry(
            path=e["path"], digest=blob_pb.Digest(hash=e["digest"]["hash"], size_bytes=e["digest"]["size_bytes"])
        )
        if "metadata" in e:
            struct = struct_pb2.Struct()
            struct.update(e["metadata"])
            entry.metadata.CopyFrom(struct)
        manifest.append(entry)
    pending = metadata_stub.CreateVersion(
        pb.CreateVersionRequest(parent=f"vectors-{unique}", type="model"), metadata=HEADERS
    ).version

    committed = metadata_stub.CommitVersion(
        pb.CommitVersionRequest(uid=pending.uid, manifest=manifest), metadata=HEADERS
    ).version

    assert committed.digest == vector["digest"]
