"""`mreg download` and `Registry.download`: read-only snapshots in the cache, shared, bounded, concurrent-safe."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mreg.client import Registry
from mreg.client.snapshots import parse_size
from tests.helpers import assert_same_tree, make_checkpoint


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own (MREG_CACHE_DIR), without a size limit unless the test sets one."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MREG_CACHE_DIR", str(root))
    monkeypatch.setenv("MREG_CACHE_MAX_SIZE", "none")
    return root


@pytest.fixture
def client(servers, cache_dir: Path):
    with servers.registry() as registry:
        yield registry


def _push(client: Registry, tmp_path: Path, name: str, seed: int = 0, large: int = 256 << 10) -> Path:
    checkpoint = make_checkpoint(tmp_path / f"{name}-{seed}", large_bytes=large, seed=seed)
    client.push(checkpoint, name)
    return checkpoint


def _set_last_used(cache_dir: Path, ref: str, seconds_ago: float) -> None:
    with sqlite3.connect(cache_dir / "snapshots.db") as db:
        db.execute("UPDATE snapshots SET last_used = ? WHERE ref = ?", (time.time() - seconds_ago, ref))


@pytest.mark.any_database
def test_download_returns_a_read_only_directory_identical_to_the_pushed_checkpoint(
    client: Registry, tmp_path: Path, cache_dir: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")

    path = client.download(f"resnet-{unique}")

    assert path == cache_dir / "snapshots" / "acme" / "vision" / f"resnet-{unique}" / "v0"
    assert_same_tree(checkpoint, path)
    for item in [path, *path.rglob("*")]:
        assert stat.S_IMODE(item.stat().st_mode) & 0o222 == 0, item  # nothing writable
    assert stat.S_IMODE((path / "weights.bin").stat().st_mode) == 0o444
    assert stat.S_IMODE((path / "tokenizer").stat().st_mode) == 0o555


@pytest.mark.any_database
def test_a_second_download_of_the_same_version_moves_no_bytes_and_returns_the_same_path(
    client: Registry, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(client, tmp_path, f"resnet-{unique}")
    client.set_alias(f"resnet-{unique}:v0", "best")
    first = client.download_snapshot(f"resnet-{unique}:v0")
    assert (first.from_cache, first.downloaded_bytes > 0) == (False, True)

    transfers: list[int] = []
    real = client.transfer.download
    monkeypatch.setattr(client.transfer, "download", lambda *a, **k: transfers.append(1) or real(*a, **k))
    again = client.download_snapshot(f"resnet-{unique}:best")  # an alias of the same version

    assert (again.from_cache, again.downloaded_bytes, transfers) == (True, 0, [])
    assert again.path == first.path
    assert again.snapshot.last_used >= first.snapshot.last_used


@pytest.mark.any_database
def test_versions_sharing_a_file_share_its_inode_and_the_store_holds_one_copy(
    client: Registry, tmp_path: Path, cache_dir: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    (changed / "config.json").write_text('{"layers": 101}')
    client.push(changed, f"resnet-{unique}")

    v0 = client.download(f"resnet-{unique}:v0")
    v1 = client.download_snapshot(f"resnet-{unique}:v1")

    assert v1.downloaded_bytes == len('{"layers": 101}')  # only the new file travelled
    assert (v0 / "weights.bin").stat().st_ino == (v1.path / "weights.bin").stat().st_ino
    assert (v0 / "config.json").stat().st_ino != (v1.path / "config.json").stat().st_ino
    weights = [p for p in (cache_dir / "blobs").rglob("*") if p.is_file() and p.stat().st_size == 256 << 10]
    assert len(weights) == 1
    assert weights[0].stat().st_ino == (v0 / "weights.bin").stat().st_ino
    assert weights[0].stat().st_nlink == 3  # the store's name and one per snapshot


def test_latest_resolves_to_the_new_version_after_a_push(client: Registry, tmp_path: Path, unique: str) -> None:
    _push(client, tmp_path, f"resnet-{unique}", seed=0)
    first = client.download(f"resnet-{unique}:latest")
    newer = _push(client, tmp_path, f"resnet-{unique}", seed=1)

    second = client.download_snapshot(f"resnet-{unique}:latest")

    assert (second.snapshot.version, second.from_cache) == (1, False)
    assert second.path != first and first.name == "v0" and second.path.name == "v1"
    assert_same_tree(newer, second.path)


@pytest.mark.any_database
def test_the_size_limit_evicts_the_least_recently_used_snapshot_and_never_the_one_returned(
    client: Registry, tmp_path: Path, unique: str
) -> None:
    names = [f"m{i}-{unique}" for i in range(3)]
    for seed, name in enumerate(names):
        _push(client, tmp_path, name, seed=seed)
    paths = {name: client.download(name) for name in names}
    client.download(names[0])  # m0 used again: m1 is now the least recently used
    cache = client.snapshot_cache()
    one = cache.total_size() // 3

    cache.max_size = 2 * one + one // 2  # room for two snapshots
    client.download(names[2])

    assert sorted(s.artifact.rsplit("/", 1)[1] for s in cache.list()) == sorted([names[0], names[2]])
    assert not paths[names[1]].exists()
    assert cache.total_size() <= cache.max_size

    cache.max_size = 1  # nothing fits: the snapshot just returned still stays, whole
    path = client.download(names[1])
    assert [s.path for s in cache.list()] == [path]
    assert_same_tree(tmp_path / f"{names[1]}-1", path)
    assert cache.total_size() > cache.max_size


@pytest.mark.any_database
def test_cache_prune_older_than_and_max_size_remove_the_right_snapshots(
    mreg, client: Registry, tmp_path: Path, cache_dir: Path, unique: str
) -> None:
    names = [f"p{i}-{unique}" for i in range(3)]
    for seed, name in enumerate(names):
        _push(client, tmp_path, name, seed=seed)
        client.download(name)
    refs = [f"acme/vision/{name}:v0" for name in names]
    _set_last_used(cache_dir, refs[0], 10 * 86400)
    _set_last_used(cache_dir, refs[1], 3 * 86400)

    code, dry, _ = mreg("cache", "prune", "--older-than", "7d", "--dry-run")
    assert (code, [s["ref"] for s in dry["removed"]], dry["dry_run"]) == (0, [refs[0]], True)
    code, listed, _ = mreg("cache", "ls")
    assert len(listed) == 3  # a dry run removes nothing

    code, pruned, _ = mreg("cache", "prune", "--older-than", "7d")
    assert (code, [s["ref"] for s in pruned["removed"]]) == (0, [refs[0]])
    assert pruned["freed"] > 0 and not Path(pruned["removed"][0]["path"]).exists()

    code, listed, _ = mreg("cache", "ls")
    per_snapshot = listed[0]["size"]
    code, pruned, _ = mreg("cache", "prune", "--max-size", str(per_snapshot + per_snapshot // 2))
    assert (code, [s["ref"] for s in pruned["removed"]]) == (0, [refs[1]])  # the older of the two
    code, listed, _ = mreg("cache", "ls")
    assert [s["ref"] for s in listed] == [refs[2]]

    code, text, _ = mreg("cache", "prune", "--max-size", "0B", json_output=False)
    assert code == 0 and f"removed {refs[2]}" in text
    with pytest.raises(SystemExit) as usage:
        mreg("cache", "prune", "--max-size", "lots", json_output=False)
    assert usage.value.code == 2


@pytest.mark.any_database
def test_cache_ls_counts_shared_content_once(
    mreg, client: Registry, tmp_path: Path, cache_dir: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    (changed / "config.json").write_text('{"layers": 101}')
    client.push(changed, f"resnet-{unique}")
    client.download(f"resnet-{unique}:v0")
    client.download(f"resnet-{unique}:v1")

    code, listed, _ = mreg("cache", "ls")
    assert code == 0
    assert [(s["version"], s["files"]) for s in listed] == [(1, 4), (0, 4)]  # most recently used first
    v0_size = listed[1]["size"]
    total = client.snapshot_cache().total_size()
    assert total == v0_size + len('{"layers": 101}')  # not the sum of both snapshots
    assert total < listed[0]["size"] + listed[1]["size"]

    code, text, _ = mreg("cache", "ls", json_output=False)
    assert code == 0
    assert "REF" in text and f"acme/vision/resnet-{unique}" in text and "2 snapshots" in text
    assert "shared content counted once" in text


@pytest.mark.any_database
def test_a_snapshot_interrupted_mid_build_is_never_reused_as_complete(
    client: Registry, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")
    cache = client.snapshot_cache()
    real_place = cache._place
    placed: list[Path] = []

    def crash_after_one_file(file, target):  # type: ignore[no-untyped-def]
        if placed:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) halfway through linking
        placed.append(target)
        return real_place(file, target)

    monkeypatch.setattr(cache, "_place", crash_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        client.download(f"resnet-{unique}")
    monkeypatch.setattr(cache, "_place", real_place)
    artifact_dir = cache.snapshots_dir / "acme" / "vision" / f"resnet-{unique}"
    assert list(artifact_dir.iterdir()) == [] and cache.list() == []

    # What a kill -9 leaves: a partial build, and a directory renamed into place but never recorded.
    (artifact_dir / ".v0.partial-deadbeef").mkdir()
    (artifact_dir / "v0").mkdir()
    (artifact_dir / "v0" / "config.json").write_text("half")

    result = client.download_snapshot(f"resnet-{unique}")
    assert result.from_cache is False
    assert_same_tree(checkpoint, result.path)
    assert [p.name for p in artifact_dir.iterdir()] == ["v0"]


@pytest.mark.any_database
def test_a_snapshot_file_made_writable_and_edited_is_rebuilt(client: Registry, tmp_path: Path, unique: str) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")
    path = client.download(f"resnet-{unique}")
    edited = path / "config.json"
    os.chmod(edited, 0o644)
    edited.write_text("tampered")

    again = client.download_snapshot(f"resnet-{unique}")

    assert again.from_cache is False and again.path == path
    assert_same_tree(checkpoint, path)


@pytest.mark.any_database
def test_two_concurrent_downloads_of_one_version_end_with_one_complete_snapshot(
    servers, client: Registry, tmp_path: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}", large=2 << 20)
    start = threading.Barrier(2)
    results: list[object] = []

    def download() -> None:
        with servers.registry() as own:
            start.wait()
            results.append(own.download_snapshot(f"resnet-{unique}"))

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 2
    assert len({r.path for r in results}) == 1  # type: ignore[attr-defined]
    assert sorted(r.from_cache for r in results) == [False, True]  # type: ignore[attr-defined]
    path = results[0].path  # type: ignore[attr-defined]
    assert_same_tree(checkpoint, path)
    assert [p.name for p in path.parent.iterdir()] == ["v0"]


@pytest.mark.any_database
def test_two_processes_downloading_one_version_print_the_same_complete_directory(
    servers, client: Registry, tmp_path: Path, cache_dir: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}", large=2 << 20)
    env = {**os.environ, **servers.cli_env(), "MREG_CACHE_DIR": str(cache_dir)}
    command = [sys.executable, "-m", "mreg.client.cli", "download", f"acme/vision/resnet-{unique}", "--json"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    documents = [json.loads(out) for out, _ in outputs]
    assert len({d["path"] for d in documents}) == 1
    assert sorted(d["from_cache"] for d in documents) == [False, True]
    assert_same_tree(checkpoint, Path(documents[0]["path"]))


@pytest.mark.any_database
def test_mreg_download_prints_only_the_path_and_with_json_what_it_did(
    mreg, client: Registry, tmp_path: Path, unique: str
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")
    client.set_alias(f"resnet-{unique}:v0", "best")

    code, text, err = mreg("download", f"acme/vision/resnet-{unique}:best", json_output=False)
    assert code == 0 and err == ""
    path = Path(text.strip())
    assert text.count("\n") == 1 and path.is_absolute()
    assert_same_tree(checkpoint, path)

    code, data, _ = mreg("download", f"acme/vision/resnet-{unique}:best")
    assert code == 0
    assert data["path"] == str(path) and data["from_cache"] is True
    assert (data["ref"], data["version"], data["files"]) == (f"acme/vision/resnet-{unique}:v0", 0, 4)
    assert data["size"] == sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())

    code, _, err = mreg("download", f"acme/vision/missing-{unique}", json_output=False)
    assert code == 1 and "NOT_FOUND" in err


@pytest.mark.any_database
def test_an_unparseable_cache_size_limit_is_refused_before_anything_is_downloaded(
    mreg, client: Registry, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(client, tmp_path, f"resnet-{unique}")
    monkeypatch.setenv("MREG_CACHE_MAX_SIZE", "big")
    code, _, err = mreg("download", f"acme/vision/resnet-{unique}", json_output=False)
    assert code == 1 and "INVALID_ARGUMENT: cache_max_size (from environment MREG_CACHE_MAX_SIZE): " in err


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500 * 10**6), ("2GiB", 2 << 30), ("20 GB", 20 * 10**9), ("1024", 1024), ("1.5k", 1500), ("0B", 0)],
)
def test_sizes_read_in_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.any_database
def test_where_hard_links_are_refused_a_snapshot_is_made_of_read_only_copies(
    client: Registry, tmp_path: Path, cache_dir: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _push(client, tmp_path, f"resnet-{unique}")

    def refuse(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    path = client.download(f"resnet-{unique}")

    assert_same_tree(checkpoint, path)
    assert client.snapshot_cache().links_refused == 4
    assert stat.S_IMODE((path / "weights.bin").stat().st_mode) == 0o444
    assert (path / "weights.bin").stat().st_nlink == 1  # a copy of its own, counted in the cache's size
    assert client.snapshot_cache().total_size() == 2 * sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert client.download_snapshot(f"resnet-{unique}").from_cache is True
