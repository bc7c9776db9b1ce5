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
    """Every file of ``store`` that is neither a blob, a published pack, the pack index nor the service's state:
    what a write left behind."""
    return sorted(
        str(p.relative_to(store))
        for p in store.rglob("*")
        if p.is_file()
        and not p.is_relative_to(store / "state")
        and not (p.parent.parent.name == "blobs" and len(p.name) == 64)
        and not (p.parent == store / "packs" and (p.suffix == ".pack" or p.name.startswith("index.sqlite")))
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


def test_a_small_blob_whose_directory_is_not_yet_synced_counts_as_not_stored_until_its_step_ran(
    tmp_path: Path,
) -> None:
    storage = DiskStorage(tmp_path / "store")
    contents = [os.urandom(100 + i) for i in range(600)]
    digests = [Digest(hashlib.sha256(data).hexdigest(), len(data)) for data in contents]
    for digest, data in zip(digests, contents, strict=True):
        storage.put_verified(digest, data, defer_durability=True)
    # Renamed into place but not yet kept for good: nobody may be told it is stored.
    assert not any(storage.has(d) for d in digests)
    assert all(storage.last_used(d) is None for d in digests)

    steps = storage.durability_steps(digests)
    directories = {storage.blob_path(d).parent for d in digests}
    assert len(steps) == len(directories) < len(digests), "one sync per directory, not per blob"
    for step in steps:
        step()
    assert all(storage.has(d) and storage.last_used(d) is not None for d in digests)
    assert all(storage.blob_path(d).read_bytes() == data for d, data in zip(digests, contents, strict=True))


def test_a_blob_put_twice_before_either_put_is_synced_counts_as_stored_only_once_both_are(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path / "store")
    data = os.urandom(700)
    digest = Digest(hashlib.sha256(data).hexdigest(), len(data))
    storage.put_verified(digest, data, defer_durability=True)
    storage.put_verified(digest, data, defer_durability=True)
    (first,) = storage.durability_steps([digest])
    (second,) = storage.durability_steps([digest])
    first()
    assert not storage.has(digest), "the second put's rename is not yet synced"
    second()
    assert storage.has(digest)
