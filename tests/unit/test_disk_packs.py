"""Small blobs stored many to a batch go into one pack file: each reads back exactly, survives a restart, is
deleted on its own, and the space of deleted ones comes back without losing the live ones."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import NotFound
from mreg.blob_service.storage import DiskStorage
from mreg.blob_service.storage import packs as packs_module
from mreg.blob_service.storage.disk import PACK_MIN_BLOBS


def blobs(count: int, size: int = 3000, seed: int = 0) -> list[tuple[Digest, bytes]]:
    out = []
    for i in range(count):
        data = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32 + i % 7)
        out.append((Digest(hashlib.sha256(data).hexdigest(), len(data)), data))
    return out


def read(storage: DiskStorage, digest: Digest, offset: int = 0) -> bytes:
    with storage.open_read(digest, offset) as reader:
        parts = []
        while part := reader.read(1000):
            parts.append(part)
    return b"".join(parts)


def packs(root: Path) -> list[Path]:
    return sorted((root / "packs").glob("*.pack"))


def blob_files(root: Path) -> list[Path]:
    return [p for p in (root / "blobs").rglob("*") if p.is_file() and len(p.name) == 64]


def test_a_batch_of_many_blobs_is_one_pack_file_and_each_blob_reads_back_exactly(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(100)
    assert storage.put_verified_together(batch)

    assert len(packs(tmp_path)) == 1 and blob_files(tmp_path) == []
    for digest, data in batch:
        assert storage.has(digest) and storage.last_used(digest) is not None
        assert storage.stored_size(digest.hash) == digest.size_bytes
        assert read(storage, digest) == data, "a reader stops at its blob's end, not its pack's"
        assert read(storage, digest, offset=17) == data[17:]
    assert sorted(b.digest.hash for b in storage.iter_blobs()) == sorted(d.hash for d, _ in batch)
    together = storage.read_together([d for d, _ in batch[::3]])
    assert {d: data for d, (data, _) in together.items()} == dict(batch[::3])


def test_a_blob_asked_by_another_size_is_not_found(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(PACK_MIN_BLOBS)
    storage.put_verified_together(batch)
    digest = batch[0][0]
    other_size = Digest(digest.hash, digest.size_bytes + 1)
    assert not storage.has(other_size) and storage.last_used(other_size) is None
    with pytest.raises(NotFound, match="is the size right"):
        storage.open_read(other_size)
    assert storage.read_together([other_size]) == {}


def test_a_few_blobs_are_left_to_be_stored_one_file_each(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(PACK_MIN_BLOBS - 1)
    assert not storage.put_verified_together(batch)
    assert packs(tmp_path) == [] and not any(storage.has(d) for d, _ in batch)


def test_packed_blobs_are_read_by_another_process_on_the_same_store(tmp_path: Path) -> None:
    batch = blobs(40)
    DiskStorage(tmp_path).put_verified_together(batch)
    program = (
        "import sys; from mreg.blob_service.storage import DiskStorage; from mreg.blob_service.digests import Digest\n"
        "s = DiskStorage(sys.argv[1]); r = s.open_read(Digest(sys.argv[2], int(sys.argv[3])))\n"
        "sys.stdout.buffer.write(r.read(1 << 20))"
    )
    digest, data = batch[23]
    out = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path), digest.hash, str(digest.size_bytes)],
        check=True,
        capture_output=True,
    )
    assert out.stdout == data


def test_deleting_most_of_a_pack_rewrites_it_without_them_and_deleting_the_rest_removes_it(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(60)
    storage.put_verified_together(batch)
    [first] = packs(tmp_path)
    full_size = first.stat().st_size
    with storage.open_read(batch[-1][0]) as early_reader:  # opened before the pack is rewritten
        for digest, _ in batch[:40]:
            storage.delete(digest)
        assert early_reader.read(1 << 20) == batch[-1][1], "a reader of the old pack reads on"

    [rewritten] = packs(tmp_path)
    assert rewritten != first and rewritten.stat().st_size < full_size / 2
    assert not any(storage.has(d) for d, _ in batch[:40])
    assert all(read(storage, d) == data for d, data in batch[40:])
    assert sorted(b.digest.hash for b in storage.iter_blobs()) == sorted(d.hash for d, _ in batch[40:])

    for digest, _ in batch[40:]:
        storage.delete(digest)
    assert packs(tmp_path) == [] and list(storage.iter_blobs()) == []
    storage.delete(batch[0][0])  # already gone: not an error


def test_a_blob_already_stored_keeps_its_copy_and_the_new_pack_goes_if_nothing_else_is_in_it(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(30)
    storage.put_verified_together(batch)
    storage.put_verified_together(batch)  # a second client storing the same blobs at once
    assert len(packs(tmp_path)) == 1
    storage.put_verified_together(batch[:20] + blobs(20, seed=1))
    assert len(packs(tmp_path)) == 2
    assert all(read(storage, d) == data for d, data in batch + blobs(20, seed=1))


def test_the_scrubs_removal_takes_only_the_copy_it_read(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(40)
    storage.put_verified_together(batch)
    digest = batch[0][0]
    with storage.open_read(digest) as reader:
        identity = reader.identity
    stale = ("pack", "0" * 32, 48)
    assert not storage.delete_if_same(digest, stale)
    assert storage.has(digest)
    assert storage.delete_if_same(digest, identity)
    assert not storage.has(digest) and all(storage.has(d) for d, _ in batch[1:])


def test_touch_renews_a_packed_blobs_last_use(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(PACK_MIN_BLOBS)
    storage.put_verified_together(batch)
    digest = batch[0][0]
    stored_at = storage.last_used(digest)
    assert stored_at is not None
    storage.touch(digest)
    touched = storage.last_used(digest)
    assert touched is not None and touched >= stored_at
    assert {b.digest: b.last_used for b in storage.iter_blobs()}[digest] == touched


def test_the_janitor_removes_packs_a_crash_left_unindexed_once_stale_and_keeps_the_rest(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    batch = blobs(20)
    storage.put_verified_together(batch)
    directory = tmp_path / "packs"
    half_written = directory / ".new-0123456789abcdef0123456789abcdef"
    never_indexed = directory / "fedcba9876543210fedcba9876543210.pack"
    fresh = directory / ".new-ffffffffffffffffffffffffffffffff"
    for path in (half_written, never_indexed, fresh):
        path.write_bytes(b"left by a crash")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    for path in (half_written, never_indexed, *packs(tmp_path)):
        os.utime(path, (hour_ago, hour_ago))

    assert storage.remove_stale_uploads(datetime.now(UTC) - timedelta(minutes=10)) == 2
    assert not half_written.exists() and not never_indexed.exists() and fresh.exists()
    assert all(read(storage, d) == data for d, data in batch), "an indexed pack stays, however old"


def test_the_janitor_indexes_a_pack_a_crash_published_unindexed_and_removes_one_holding_nothing_new(
    tmp_path: Path,
) -> None:
    storage = DiskStorage(tmp_path)
    indexed = blobs(20, seed=1)
    storage.put_verified_together(indexed)
    store = storage._packs
    # What a crash between publishing a pack and indexing it leaves: its blobs were never acknowledged, but
    # they are intact content, and a lost index leaves acknowledged ones in the same state.
    orphan = blobs(20, seed=2)
    orphan_pack, _, _ = store._write_pack(orphan)
    duplicate_pack, _, _ = store._write_pack(indexed[:5])  # everything in it is stored elsewhere
    damaged = blobs(3, seed=3)
    damaged_pack, offsets, _ = store._write_pack(damaged)
    with open(store.path_of(damaged_pack), "r+b") as f:
        f.seek(offsets[1] + 10)
        f.write(b"ROT")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    for path in packs(tmp_path):
        os.utime(path, (hour_ago, hour_ago))

    assert all(not storage.has(d) for d, _ in orphan + damaged)
    assert storage.remove_stale_uploads(datetime.now(UTC) - timedelta(minutes=10)) == 1  # the duplicate

    assert all(read(storage, d) == data for d, data in orphan + indexed)
    assert read(storage, damaged[0][0]) == damaged[0][1] and read(storage, damaged[2][0]) == damaged[2][1]
    assert not storage.has(damaged[1][0]), "a record whose bytes do not match its digest stays out"
    assert not store.path_of(duplicate_pack).exists() and store.path_of(orphan_pack).exists()
    assert storage.last_used(orphan[0][0]) == datetime.fromtimestamp(hour_ago, UTC)


def test_a_store_whose_pack_index_was_lost_indexes_its_packs_again_when_opened(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path)
    first, second = blobs(30, seed=4), blobs(30, seed=5)
    storage.put_verified_together(first)
    storage.put_verified_together(second)
    del storage
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / "packs" / name).unlink(missing_ok=True)

    reopened = DiskStorage(tmp_path)

    assert all(read(reopened, d) == data for d, data in first + second)
    assert sorted(b.digest.hash for b in reopened.iter_blobs()) == sorted(d.hash for d, _ in first + second)
    # Deletion works on what was indexed again: space comes back as before.
    for digest, _ in first:
        reopened.delete(digest)
    assert len(packs(tmp_path)) == 1 and all(read(reopened, d) == data for d, data in second)


def test_concurrent_batches_and_deletions_keep_every_blob_they_did_not_delete(tmp_path: Path) -> None:
    storages = [DiskStorage(tmp_path), DiskStorage(tmp_path)]  # as two replicas sharing a store
    kept = blobs(200, seed=7)
    doomed = blobs(200, seed=8)
    errors: list[BaseException] = []

    def put(index: int) -> None:
        try:
            for start in range(index * 20, 200, 80):
                mixed = kept[start : start + 20] + doomed[start : start + 20]
                storages[index % 2].put_verified_together(mixed)
        except BaseException as e:
            errors.append(e)

    def delete() -> None:
        try:
            for digest, _ in doomed:
                storages[1].delete(digest)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=put, args=(i,)) for i in range(4)] + [threading.Thread(target=delete)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    for digest, _ in doomed:
        storages[0].delete(digest)
    assert all(read(storages[0], d) == data for d, data in kept)
    assert not any(storages[1].has(d) for d, _ in doomed)
    assert sorted(b.digest.hash for b in storages[0].iter_blobs()) == sorted(d.hash for d, _ in kept)


def test_listing_pages_through_the_index_and_misses_no_packed_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packs_module, "_LISTING_PAGE", 7)
    storage = DiskStorage(tmp_path)
    batch = blobs(50)
    storage.put_verified_together(batch)
    listed = [b.digest.hash for b in storage.iter_blobs()]
    assert sorted(listed) == sorted(d.hash for d, _ in batch) and len(listed) == 50
