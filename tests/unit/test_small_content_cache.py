"""The client content cache keeps small content as rows of small.db: placed byte-identical, verified on every read,
turned into a file when a snapshot needs one, evicted and its space returned, safe under concurrent threads."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from mreg.client import cache as cache_module
from mreg.client.cache import SMALL_ENTRY_BYTES, ContentCache


def _content(seed: int, size: int = 5000) -> tuple[str, bytes]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)
    return hashlib.sha256(data).hexdigest(), data


def _files_under(root: Path) -> list[Path]:
    return [p for p in (root / "blobs").rglob("*") if p.is_file()]


def _rows(root: Path) -> dict[str, bytes]:
    with sqlite3.connect(root / "small.db") as db:
        return {sha: bytes(content) for sha, content in db.execute("SELECT sha256, content FROM small")}


@pytest.fixture
def cache(tmp_path: Path):
    opened = ContentCache(tmp_path / "cache")
    yield opened
    opened.close()


def test_small_content_a_pull_cached_is_placed_byte_identical_from_one_database_not_a_file_each(
    cache: ContentCache, tmp_path: Path
) -> None:
    contents = [_content(i, size) for i, size in enumerate([1, 4096, 65_536, SMALL_ENTRY_BYTES])]
    for sha, data in contents:
        cache.adopt(sha, tmp_path / "unused", content=data)
    cache.flush()

    assert _files_under(tmp_path / "cache") == []
    assert _rows(tmp_path / "cache") == dict(contents)
    other = ContentCache(tmp_path / "cache")  # as another process would open it
    try:
        assert other.held([(sha, len(data)) for sha, data in contents]) == {sha for sha, _ in contents}
        for i, (sha, data) in enumerate(contents):
            target = tmp_path / "out" / f"f{i}"
            target.parent.mkdir(exist_ok=True)
            assert other.place(sha, len(data), target)
            assert target.read_bytes() == data
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0", "f1", "f2", "f3"]  # no partial file
    finally:
        other.close()


def test_rows_not_yet_written_are_served_by_the_process_that_holds_them_and_written_by_flush(
    cache: ContentCache, tmp_path: Path
) -> None:
    sha, data = _content(1)
    cache.adopt(sha, tmp_path / "unused", content=data)
    assert _rows(tmp_path / "cache") == {}
    assert cache.place(sha, len(data), tmp_path / "placed")
    assert (tmp_path / "placed").read_bytes() == data
    cache.flush()
    assert _rows(tmp_path / "cache") == {sha: data}


def test_content_above_the_small_limit_stays_a_read_only_file(cache: ContentCache, tmp_path: Path) -> None:
    sha, data = _content(2, SMALL_ENTRY_BYTES + 1)
    source = tmp_path / "pulled"
    source.write_bytes(data)
    cache.adopt(sha, source, content=data)
    cache.flush()
    assert _rows(tmp_path / "cache") == {}
    [entry] = _files_under(tmp_path / "cache")
    assert entry.name == sha and entry.read_bytes() == data
    assert stat.S_IMODE(entry.stat().st_mode) == 0o444


@pytest.mark.parametrize(
    "damage",
    ["UPDATE small SET content = zeroblob(size) WHERE sha256 = ?", "UPDATE small SET content = x'00' WHERE sha256 = ?"],
    ids=["same-size", "truncated"],
)
def test_a_row_whose_content_no_longer_matches_its_digest_is_evicted_never_placed(
    cache: ContentCache, tmp_path: Path, damage: str
) -> None:
    sha, data = _content(3)
    cache.adopt(sha, tmp_path / "unused", content=data)
    cache.flush()
    with sqlite3.connect(tmp_path / "cache" / "small.db") as db:
        db.execute(damage, (sha,))

    assert not cache.place(sha, len(data), tmp_path / "placed")
    assert not (tmp_path / "placed").exists()
    assert cache.evicted == 1
    assert _rows(tmp_path / "cache") == {}
    assert cache.entry(sha, len(data)) is None  # a snapshot does not get it either


def test_entry_turns_a_row_into_a_verified_read_only_file_a_snapshot_can_hard_link(
    cache: ContentCache, tmp_path: Path
) -> None:
    sha, data = _content(4)
    cache.adopt(sha, tmp_path / "unused", content=data)
    cache.flush()

    entry = cache.entry(sha, len(data))

    assert entry is not None and entry.read_bytes() == data
    assert stat.S_IMODE(entry.stat().st_mode) == 0o444
    assert _rows(tmp_path / "cache") == {}  # moved, not held twice
    assert cache.link(sha, len(data), tmp_path / "snapshot-file")
    assert os.path.samefile(entry, tmp_path / "snapshot-file")
    assert cache.rehashed == 0


def test_removed_rows_give_their_space_back_to_the_file_system(cache: ContentCache, tmp_path: Path) -> None:
    contents = [_content(100 + i, 100_000) for i in range(60)]
    for sha, data in contents:
        cache.adopt(sha, tmp_path / "unused", content=data)
    cache.flush()
    database = tmp_path / "cache" / "small.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = database.stat().st_size
    assert full >= 60 * 100_000

    for sha, _ in contents:
        cache.remove(sha)
    cache.reclaim()
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    assert _rows(tmp_path / "cache") == {}
    assert database.stat().st_size < full // 10
    assert not cache.place(contents[0][0], 100_000, tmp_path / "placed")


def test_threads_adding_and_placing_at_once_always_get_the_right_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches, so writes happen while other threads add and read.
    monkeypatch.setattr(cache_module, "SMALL_BATCH_BYTES", 64 << 10)
    cache = ContentCache(tmp_path / "cache")
    contents = [_content(1000 + i, 3000 + i) for i in range(400)]
    wrong: list[str] = []

    def work(share: list[tuple[str, bytes]], worker: int) -> None:
        for i, (sha, data) in enumerate(share):
            cache.adopt(sha, tmp_path / "unused", content=data)
            earlier_sha, earlier = share[i // 2]
            target = tmp_path / f"w{worker}-{i}"
            if not cache.place(earlier_sha, len(earlier), target) or target.read_bytes() != earlier:
                wrong.append(earlier_sha)

    try:
        threads = [threading.Thread(target=work, args=(contents[w::8], w)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cache.flush()
        assert wrong == []
        assert _rows(tmp_path / "cache") == dict(contents)
    finally:
        cache.close()


def test_several_processes_opening_a_new_cache_at_once_all_succeed(tmp_path: Path) -> None:
    # The first to open small.db sets it up (incremental vacuum before the table exists) while the others wait.
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from mreg.client.cache import ContentCache;"
        "c = ContentCache(Path(sys.argv[1])); c.small.add('a' * 64, b'x'); c.close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache")]) for _ in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    with sqlite3.connect(tmp_path / "cache" / "small.db") as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert db.execute("SELECT count(*) FROM small").fetchone()[0] == 1


def test_a_damaged_database_is_started_afresh_and_the_cache_works_again(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "small.db").write_bytes(b"not a database, " * 512)
    cache = ContentCache(tmp_path / "cache")
    try:
        sha, data = _content(7)
        cache.adopt(sha, tmp_path / "unused", content=data)
        cache.flush()
        assert _rows(tmp_path / "cache") == {sha: data}
    finally:
        cache.close()
