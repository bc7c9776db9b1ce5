"""The client content cache keeps small content as rows of small.db: placed byte-identical, verified on every read,
turned into a file when a snapshot needs one, evicted and its space returned, safe under concurrent threads."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
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


def test_processes_opening_a_new_cache_and_writing_to_it_at_once_all_land_their_rows(tmp_path: Path) -> None:
    # The first to open small.db sets it up (incremental vacuum before the table exists) while the others wait;
    # their writes then queue on the lock, none refused (a refused batch would only log a warning and be lost).
    script = (
        "import hashlib, sys; from pathlib import Path; import mreg.client.cache as m\n"
        "m.SMALL_BATCH_BYTES = 256 << 10\n"
        "c = m.ContentCache(Path(sys.argv[1])); seed = int(sys.argv[2])\n"
        "for i in range(300):\n"
        "    data = hashlib.sha256(str(seed * 150 + i).encode()).digest() * 200\n"
        "    c.adopt(hashlib.sha256(data).hexdigest(), Path('unused'), content=data)\n"
        "c.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "cache"), str(seed)], stderr=subprocess.PIPE, text=True
        )
        for seed in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert "could not cache" not in "".join(errors)
    expected = {str(seed * 150 + i) for seed in range(6) for i in range(300)}
    assert len(_rows(tmp_path / "cache")) == len(expected)
    with sqlite3.connect(tmp_path / "cache" / "small.db") as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


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


def test_cache_prune_counts_small_rows_and_evicts_them_oldest_first(tmp_path: Path) -> None:
    from mreg.client.snapshots import SnapshotCache

    content = ContentCache(tmp_path / "cache")
    snapshots = SnapshotCache(tmp_path / "cache", content, max_size=None)
    try:
        contents = [_content(200 + i, 10_000) for i in range(5)]
        for sha, data in contents:
            content.adopt(sha, tmp_path / "unused", content=data)
            content.flush()  # one batch each, so each row has its own time
        assert snapshots.total_size() == 50_000

        plan = snapshots.prune(max_size=25_000)

        assert plan.size_before == 50_000 and plan.size_after == 20_000
        assert [sha for sha, _ in plan.content] == [sha for sha, _ in contents[:3]]  # the oldest
        assert _rows(tmp_path / "cache") == dict(contents[3:])
        assert snapshots.total_size() == 20_000
    finally:
        content.close()
        snapshots.close()


def test_processes_opening_one_new_cache_at_the_same_instant_all_open_it(tmp_path: Path) -> None:
    """SQLite refuses a journal-mode change at once, not after its busy timeout, to connections that each hold a
    read lock and want the write lock: processes setting a new cache database up at the same instant take turns
    rather than fail ("database is locked"). Each round starts 8 processes that wait for one file, then open."""
    script = (
        "import sys, time; from pathlib import Path; import mreg.client.cache as m\n"
        "go = Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "m.ContentCache(Path(sys.argv[1])).close(); m.HashCache(Path(sys.argv[1])).close()\n"
    )
    for round_ in range(3):
        go = tmp_path / f"go-{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(tmp_path / f"cache-{round_}"), str(go)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        threading.Event().wait(1.5)  # every process imported and waiting
        go.touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, errors
