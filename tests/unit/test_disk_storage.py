"""The disk store keeps a blob it accepts, whatever became of its fan-out directory, and leaves nothing half-stored
behind for good."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
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
    assert temporary_files(tmp_path / "store") == []


def temporary_files(store: Path) -> list[str]:
    """Every file of ``store`` that is neither a blob nor the service's state: what a write left behind."""
    return sorted(
        str(p.relative_to(store))
        for p in store.rglob("*")
        if p.is_file()
        and not p.is_relative_to(store / "state")
        and not (p.parent.parent.name == "blobs" and len(p.name) == 64)
    )


def test_small_blobs_stored_at_once_are_all_kept_and_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path / "store")
    contents = [os.urandom(1000 + i) for i in range(200)]
    digests = [Digest(hashlib.sha256(data).hexdigest(), len(data)) for data in contents]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(storage.put_verified, digests, contents))
    assert all(storage.blob_path(d).read_bytes() == data for d, data in zip(digests, contents, strict=True))
    assert sorted(b.digest.hash for b in storage.iter_blobs()) == sorted(d.hash for d in digests)
    assert temporary_files(tmp_path / "store") == []


def test_a_small_blob_a_crash_left_half_stored_is_not_listed_and_the_janitor_removes_it_once_stale(
    tmp_path: Path,
) -> None:
    storage = DiskStorage(tmp_path / "store")
    data = os.urandom(3000)
    digest = Digest(hashlib.sha256(data).hexdigest(), len(data))
    storage.put_verified(digest, data)
    fan_out = storage.blob_path(digest).parent
    # What a put interrupted by a crash leaves: its temporary file beside the name it would have taken.
    stale, fresh = fan_out / ".put-0123456789abcdef0123456789abcdef", fan_out / ".put-fedcba9876543210fedcba98765432"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(stale, (hour_ago, hour_ago))
    assert [b.digest for b in storage.iter_blobs()] == [digest]

    cutoff = datetime.now(UTC) - timedelta(minutes=10)
    # The janitor looks through the fan-out directories a few at a time: all of them within 16 runs.
    assert sum(storage.remove_stale_uploads(cutoff) for _ in range(16)) == 1
    assert not stale.exists() and fresh.exists(), "only the put idle for longer than the cutoff goes"
    assert storage.blob_path(digest).read_bytes() == data


def test_a_store_made_by_an_older_version_gets_its_missing_fan_out_directories(tmp_path: Path) -> None:
    (tmp_path / "store" / "blobs" / "ab").mkdir(parents=True)
    DiskStorage(tmp_path / "store")
    assert len([p for p in (tmp_path / "store" / "blobs").iterdir() if p.is_dir()]) == 256
