"""The disk store keeps a blob it accepts, whatever became of its fan-out directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mreg.blob_service.digests import Digest
from mreg.blob_service.storage import DiskStorage


def test_a_small_blob_is_stored_even_after_its_fan_out_directory_was_removed(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path / "store")
    data = os.urandom(5000)
    digest = Digest(hashlib.sha256(data).hexdigest(), len(data))
    fan_out = storage.blob_path(digest).parent
    assert fan_out.is_dir()  # made at start-up
    fan_out.rmdir()
    storage.put_verified(digest, data)
    assert storage.blob_path(digest).read_bytes() == data
    assert [p.name for p in (tmp_path / "store" / "uploads").iterdir()] == []  # no temporary file left


def test_a_store_made_by_an_older_version_gets_its_missing_fan_out_directories(tmp_path: Path) -> None:
    (tmp_path / "store" / "blobs" / "ab").mkdir(parents=True)
    DiskStorage(tmp_path / "store")
    assert len([p for p in (tmp_path / "store" / "blobs").iterdir() if p.is_dir()]) == 256
