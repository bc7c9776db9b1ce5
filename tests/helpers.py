"""Small helpers shared by the tests."""

from __future__ import annotations

import filecmp
import hashlib
import os
from pathlib import Path

from mreg.blob.v1 import blob_service_pb2 as blob_pb


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
    import io

    from mreg.blob_service.digests import Digest
    from mreg.blob_service.storage import DiskStorage

    digest = Digest(sha256, size)
    if isinstance(storage, DiskStorage):
        path = storage.blob_path(digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        return
    key = storage.key(f"blobs/{sha256}")
    response = storage.client.get_object(storage.bucket, key)
    data = bytearray(response.read())
    response.close()
    response.release_conn()
    data[len(data) // 2] ^= 0x01
    storage.client.put_object(storage.bucket, key, io.BytesIO(bytes(data)), len(data))
