"""Client hardening (issue 7): the cache never serves edited bytes, symlinks are never silently left out, the
CLI never ends in a traceback, bad references are refused before any upload, and Ctrl-C stops a push at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mreg.client import references as client_references
from mreg.client.cache import SMALL_ENTRY_BYTES
from mreg.client.errors import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata_service.errors import InvalidArgument
from mreg.metadata_service.references import Defaults, parse_collection, validate_alias
from tests.helpers import assert_same_tree, make_checkpoint
from tests.processes import ServiceProcess


def _checkpoint(root: Path, large_bytes: int) -> Path:
    """A checkpoint whose small files differ from the seed-0 ones other tests expect to be new."""
    return make_checkpoint(root, large_bytes=large_bytes, seed=random.randrange(1, 251))


def _one_error_line(err: str, code_name: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mreg: error: {code_name}: "), err
    return lines[0]


def _cache_entry(sha256: str) -> Path:
    return Path(os.environ["MREG_CACHE_DIR"]) / "blobs" / sha256[:2] / sha256


# The content cache -------------------------------------------------------------------------


@pytest.mark.any_database
def test_pull_delivers_the_original_bytes_after_the_pulled_file_and_the_cache_entry_were_edited(
    mreg, tmp_path: Path, unique
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=(2 << 20) + 5)
    # Above the size kept as a row of small.db, so its entry is a file (rows are hashed on every read).
    (checkpoint / "head.bin").write_bytes(os.urandom(SMALL_ENTRY_BYTES + 5000))
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/cache-{unique}")
    assert code == 0
    first = tmp_path / "first"
    assert mreg("pull", pushed["ref"], str(first))[0] == 0

    # The pulled file is its own inode, not a link into the cache.
    assert (first / "weights.bin").stat().st_nlink == 1
    # Edit the pulled file in place, the way root or any owner who changes the mode can.
    pulled = first / "weights.bin"
    pulled.chmod(0o644)
    with open(pulled, "r+b") as f:
        f.write(b"EDITED-PULLED-FILE")
    # Edit a cache entry directly, keeping its size and restoring its mtime: only ctime betrays it.
    entry = _cache_entry(hashlib.sha256((checkpoint / "head.bin").read_bytes()).hexdigest())
    assert entry.exists()
    before = entry.stat()
    entry.chmod(0o644)
    with open(entry, "r+b") as f:
        f.write(b"EDITED-CACHE-ENTRY")
    os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))

    second = tmp_path / "second"
    code, _, err = mreg("pull", pushed["ref"], str(second))

    assert code == 0, err
    assert_same_tree(checkpoint, second)


def _small_row(sha256: str) -> bytes | None:
    with contextlib.closing(sqlite3.connect(Path(os.environ["MREG_CACHE_DIR"]) / "small.db")) as db:
        row = db.execute("SELECT content FROM small WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else bytes(row[0])


@pytest.mark.parametrize("size", [3000, SMALL_ENTRY_BYTES + 3000], ids=["row-of-small-db", "file"])
def test_a_cache_entry_that_fails_verification_is_evicted_and_downloaded_again(
    mreg, tmp_path: Path, unique, size: int
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=size)
    original = (checkpoint / "weights.bin").read_bytes()
    sha256 = hashlib.sha256(original).hexdigest()
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/evict-{unique}")
    assert mreg("pull", pushed["ref"], str(tmp_path / "a"))[0] == 0
    entry = _cache_entry(sha256)
    if size <= SMALL_ENTRY_BYTES:
        assert _small_row(sha256) == original and not entry.exists()
        with contextlib.closing(sqlite3.connect(Path(os.environ["MREG_CACHE_DIR"]) / "small.db")) as db, db:
            db.execute("UPDATE small SET content = ? WHERE sha256 = ?", (b"x" * size, sha256))
    else:
        entry.chmod(0o644)
        entry.write_bytes(b"x" * size)

    code, pulled, _ = mreg("pull", pushed["ref"], str(tmp_path / "b"))

    assert code == 0 and pulled["downloaded_bytes"] == size
    assert_same_tree(checkpoint, tmp_path / "b")
    assert (_small_row(sha256) if size <= SMALL_ENTRY_BYTES else entry.read_bytes()) == original


# Symbolic links ----------------------------------------------------------------------------


@pytest.mark.any_database
def test_symlinked_directories_and_files_are_pushed_under_the_link_path(mreg, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=2000)
    outside = tmp_path / "shared-shards"
    outside.mkdir()
    (outside / "shard-0.bin").write_bytes(os.urandom(100))
    (checkpoint / "shards").symlink_to(outside)
    (checkpoint / "weights-link.bin").symlink_to("weights.bin")

    code, pushed, err = mreg("push", str(checkpoint), f"acme/vision/links-{unique}")
    assert code == 0, err
    code, shown, _ = mreg("show", pushed["ref"])
    paths = {e["path"] for e in shown["manifest"]}
    assert {"shards/shard-0.bin", "weights-link.bin", "weights.bin"} <= paths

    out = tmp_path / "out"
    assert mreg("pull", pushed["ref"], str(out))[0] == 0
    assert (out / "shards" / "shard-0.bin").read_bytes() == (outside / "shard-0.bin").read_bytes()
    assert (out / "weights-link.bin").read_bytes() == (checkpoint / "weights.bin").read_bytes()


@pytest.mark.any_database
def test_empty_directories_are_named_in_a_note_as_left_out_not_dropped_silently(
    mreg, servers, tmp_path: Path, unique
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    (checkpoint / "logs").mkdir()
    (checkpoint / "runs" / "empty-too").mkdir(parents=True)
    code, pushed, err = mreg("push", str(checkpoint), f"acme/vision/empty-dirs-{unique}")
    assert code == 0, err
    assert pushed["empty_directories_left_out"] == ["logs", "runs/empty-too"]
    assert "mreg: note:" in err and "logs" in err and "runs/empty-too" in err
    with servers.registry() as registry:
        result = registry.push(checkpoint, f"empty-dirs-api-{unique}")
    assert result.empty_directories_left_out == ("logs", "runs/empty-too")


@pytest.mark.any_database
def test_a_directory_symlink_loop_fails_with_its_path(mreg, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    (checkpoint / "tokenizer" / "again").symlink_to("..")

    code, _, err = mreg("push", str(checkpoint), f"acme/vision/loop-{unique}", json_output=False)

    assert code == 1
    assert "tokenizer/again" in _one_error_line(err, "INVALID_ARGUMENT")


@pytest.mark.any_database
def test_a_dangling_symlink_fails_with_its_path(mreg, servers, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    (checkpoint / "tokenizer" / "gone.txt").symlink_to(tmp_path / "nowhere")

    code, _, err = mreg("push", str(checkpoint), f"acme/vision/dangling-{unique}", json_output=False)

    assert code == 1
    assert "tokenizer/gone.txt" in _one_error_line(err, "INVALID_ARGUMENT")


@pytest.mark.parametrize("kind", ["fifo", "not utf-8"])
def test_a_file_that_cannot_be_pushed_fails_with_its_path_instead_of_being_skipped(
    mreg, tmp_path: Path, unique, kind: str
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    if kind == "fifo":
        os.mkfifo(checkpoint / "tokenizer" / "pipe")
        expected = "tokenizer/pipe"
    else:
        os.close(os.open(os.fsencode(checkpoint / "tokenizer") + b"/bad-\xff.txt", os.O_CREAT | os.O_WRONLY))
        expected = "bad-"

    code, _, err = mreg("push", str(checkpoint), f"acme/vision/special-{unique}", json_output=False)

    assert code == 1
    assert expected in _one_error_line(err, "INVALID_ARGUMENT")


# The CLI never ends in a traceback ----------------------------------------------------------


@pytest.mark.any_database
def test_a_file_with_a_250_byte_name_pushes_and_pulls(mreg, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    (checkpoint / ("n" * 250)).write_bytes(b"long name")
    (checkpoint / ("b" * 251)).write_bytes(os.urandom((1 << 20) + 10))  # a streamed download too
    code, pushed, err = mreg("push", str(checkpoint), f"acme/vision/long-{unique}")
    assert code == 0, err

    for dest in ("a", "b"):  # the second pull places from the cache
        code, _, err = mreg("pull", pushed["ref"], str(tmp_path / dest))
        assert code == 0, err
        assert_same_tree(checkpoint, tmp_path / dest)


@pytest.mark.parametrize("cached", [False, True])
def test_pull_where_a_directory_stands_in_place_of_a_file_is_one_error_line(
    mreg, tmp_path: Path, unique, cached: bool
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/dir-for-file-{unique}")
    if cached:
        assert mreg("pull", pushed["ref"], str(tmp_path / "warm"))[0] == 0
    dest = tmp_path / "out"
    (dest / "config.json").mkdir(parents=True)
    (dest / "config.json" / "mine.txt").write_text("keep me")

    code, _, err = mreg("pull", pushed["ref"], str(dest), json_output=False)

    assert code == 1
    assert "config.json" in _one_error_line(err, "FAILED_PRECONDITION")
    assert (dest / "config.json" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("cached", [False, True])
def test_pull_replaces_symlinks_standing_where_the_version_has_files_and_writes_nothing_through_them(
    mreg, tmp_path: Path, unique, cached: bool
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("AAAA")
    (source / "b.txt").write_text("BBBBBB")
    (source / "c.txt").write_text("CC")
    code, pushed, _ = mreg("push", str(source), f"acme/vision/links-in-dest-{unique}")
    assert code == 0
    if cached:
        assert mreg("pull", pushed["ref"], str(tmp_path / "warm"))[0] == 0
    dest = tmp_path / "out"
    dest.mkdir()
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's own file")
    (dest / "b.txt").symlink_to("a.txt")  # another of the version's files
    (dest / "c.txt").symlink_to(mine)  # a file of the user's, outside the destination

    code, _, err = mreg("pull", pushed["ref"], str(dest))

    assert code == 0, err
    assert_same_tree(source, dest)
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert mine.read_text() == "the user's own file"


@pytest.mark.any_database
def test_pull_where_a_file_stands_in_place_of_a_directory_is_one_error_line(mreg, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/file-for-dir-{unique}")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "tokenizer").write_text("a file")

    code, _, err = mreg("pull", pushed["ref"], str(dest), json_output=False)

    assert code == 1
    assert "tokenizer" in _one_error_line(err, "FAILED_PRECONDITION")


@pytest.mark.parametrize("kind", ["is a file", "under a file"])
def test_pull_into_a_destination_that_cannot_be_a_directory_is_one_error_line(
    mreg, tmp_path: Path, unique, kind: str
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/dest-{unique}")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    dest = blocker if kind == "is a file" else blocker / "sub"

    code, _, err = mreg("pull", pushed["ref"], str(dest), json_output=False)

    assert code == 1
    assert str(dest) in _one_error_line(err, "FAILED_PRECONDITION")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", '{"b": [NaN]}'])
def test_metadata_with_nan_or_infinity_is_invalid_argument(mreg, tmp_path: Path, value: str) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    code, _, err = mreg(
        "push", str(checkpoint), "acme/vision/nan", "--metadata", f'{{"a": {value}}}', json_output=False
    )
    assert code == 1
    assert "JSON" in _one_error_line(err, "INVALID_ARGUMENT")


@pytest.mark.any_database
def test_the_python_client_refuses_nan_metadata_before_uploading(servers, tmp_path: Path, unique) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    with servers.registry() as registry, pytest.raises(MregError) as raised:
        registry.push(checkpoint, f"nan-{unique}", metadata={"a": float("nan")})
    assert raised.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("error", "code_name"),
    [
        (OSError(errno.EIO, "Input/output error"), "FAILED_PRECONDITION"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), "PERMISSION_DENIED"),
        (OSError(errno.ENOSPC, "No space left on device"), "RESOURCE_EXHAUSTED"),
        (RuntimeError("a bug"), "INTERNAL"),
        (sqlite3.OperationalError("database is locked"), "FAILED_PRECONDITION"),
    ],
)
def test_an_unexpected_error_is_one_line_and_no_traceback(mreg, monkeypatch, error, code_name) -> None:
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("mreg.client.registry.Registry.resolve", fail)
    code, _, err = mreg("show", "acme/vision/x", json_output=False)
    assert code == 1
    _one_error_line(err, code_name)


@pytest.mark.any_database
def test_ls_into_a_closed_pipe_exits_quietly(servers, tmp_path: Path, unique) -> None:
    with servers.registry() as registry:
        registry.push(_checkpoint(tmp_path / "ck", large_bytes=10), f"pipe-{unique}")
    env = dict(os.environ, **servers.cli_env())
    process = subprocess.Popen(
        [sys.executable, "-m", "mreg.client.cli", "ls", "acme/vision", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head` that has already exited
    err = process.stderr.read().decode()
    code = process.wait(timeout=60)
    assert "Traceback" not in err and err == ""
    assert code == 141


# References are checked before anything is uploaded -----------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--run", "a/b/c/d"],
        ["--run", "bad:run"],
        ["--alias", "latest"],
        ["--alias", "v3"],
        ["--alias", "no spaces"],
        ["--link", "x/y/z/w"],
        ["--link", "model:v1"],
        ["--type", "Not A Type"],
    ],
)
def test_bad_references_are_refused_before_hashing_or_uploading(
    mreg, servers, metadata_stub, tmp_path: Path, unique, extra: list[str]
) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=(1 << 20) + 7)
    artifact = f"acme/vision/early-{unique}"

    code, _, err = mreg("push", str(checkpoint), artifact, *extra, json_output=False)

    assert code == 1
    _one_error_line(err, "INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as raised:
        metadata_stub.GetArtifact(pb.GetArtifactRequest(name=artifact))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # no pending version was created
    with servers.registry() as registry:
        weights = hashlib.sha256((checkpoint / "weights.bin").read_bytes()).hexdigest()
        assert registry.transfer.find_missing([(weights, (1 << 20) + 7)])  # nothing was uploaded


def test_a_short_run_name_without_default_project_is_refused_before_uploading(mreg, tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=100)
    code, _, err = mreg("push", str(checkpoint), "acme/vision/x", "--run", "train-1", json_output=False)
    assert code == 1
    assert "run" in _one_error_line(err, "INVALID_ARGUMENT")


_texts = st.one_of(
    st.text(st.sampled_from("ab Z9._-/:"), max_size=12),
    st.text(max_size=20),
    st.sampled_from(["latest", "v0", "v01", "a/b", " a", "a ", "..", "x" * 129, "x" * 65]),
)


@settings(max_examples=300, deadline=None)
@given(_texts, st.sampled_from([(None, None), ("acme", None), ("acme", "vision")]))
def test_the_client_grammar_accepts_exactly_what_the_server_accepts(text: str, defaults) -> None:
    try:
        expected = str(parse_collection(text, Defaults(*defaults), "run"))
    except InvalidArgument:
        expected = None
    try:
        entity, project = defaults
        actual = client_references.check_collection(text, entity, project, what="run")
    except MregError as e:
        assert e.code == "INVALID_ARGUMENT"
        actual = None
    assert actual == expected
    try:
        validate_alias(text)
        alias_ok = True
    except InvalidArgument:
        alias_ok = False
    try:
        client_references.check_alias(text)
        assert alias_ok
    except MregError:
        assert not alias_ok


# Ctrl-C ------------------------------------------------------------------------------------


def _sparse_checkpoint(root: Path, size: int) -> Path:
    """A directory holding big.bin: ``size`` bytes, sparse, with a unique tail so no earlier test stored the
    same blob."""
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(size - 16)
        f.seek(size - 16)
        f.write(os.urandom(16))
    return root


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _interrupt_once_grown(process: subprocess.Popen[str], transferred: Callable[[], int]) -> str:
    """Sends SIGINT once ``transferred()`` reaches 4 MiB; returns the process's stderr after it ends."""
    try:
        for _ in range(6000):  # a bound by count: at most about 5 minutes on a very slow machine
            if transferred() >= 4 << 20 or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the transfer finished before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)  # a hang check, not a speed check
        return err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.any_database
def test_ctrl_c_stops_a_large_push_at_once_and_a_rerun_resumes_it(servers, tmp_path: Path, unique) -> None:
    size = 300 << 20
    checkpoint = _sparse_checkpoint(tmp_path / "ck", size)
    big = checkpoint / "big.bin"
    env = dict(os.environ, **servers.cli_env(), PYTHONUNBUFFERED="1")
    artifact = f"acme/vision/interrupt-{unique}"
    uploads = servers.blob_dir / "uploads"
    process = subprocess.Popen(
        [sys.executable, "-m", "mreg.client.cli", "push", str(checkpoint), artifact, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = _interrupt_once_grown(
        process, lambda: max((p.stat().st_size for p in uploads.glob("*") if p.is_file()), default=0)
    )

    assert process.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mreg: interrupted: ") and line.endswith("bytes stored; run the same push again to resume")
    stored_reported = int(line.removeprefix("mreg: interrupted: ").split(" of ")[0])
    assert 0 < stored_reported < size
    assert f" of {size} bytes" in line

    digest = _sha256_of(big)
    with servers.registry() as registry:
        assert registry.transfer.find_missing([(digest, size)])  # not complete yet
    rerun = subprocess.run(
        [sys.executable, "-m", "mreg.client.cli", "push", str(checkpoint), artifact, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout)
    assert resumed["version"] == 0
    # What the re-run sent, not the file's whole size: the bytes stored before are not sent again.
    assert 0 < resumed["uploaded_bytes"] <= size - stored_reported
    # The re-run continued the interrupted upload: its partial file was completed, not abandoned (it is named
    # after the digest, or after the size while the push streams the file as it hashes it).
    assert not [p for p in uploads.glob("*") if p.name.endswith((f".{digest}", f".unhashed-{size}"))]
    with servers.registry() as registry:
        registry.pull(f"{artifact}:v0", tmp_path / "out")
    assert_same_tree(checkpoint, tmp_path / "out")


def test_concurrent_pushes_of_the_same_large_file_from_one_machine_both_commit(servers, tmp_path: Path, unique) -> None:
    """Both share the cache and so the persisted upload id of the file: neither may fail on the other's stream."""
    import threading

    checkpoint = _checkpoint(tmp_path / "ck", large_bytes=8 << 20)
    results: dict[int, object] = {}

    def push(i: int) -> None:
        try:
            with servers.registry(parallel=2) as registry:
                results[i] = registry.push(checkpoint, f"same-{unique}-{i}").version.index
        except Exception as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == {0: 0, 1: 0}


def test_a_push_whose_blob_service_dies_says_a_rerun_resumes_and_the_rerun_sends_only_the_rest(tmp_path: Path) -> None:
    size = 300 << 20
    checkpoint = _sparse_checkpoint(tmp_path / "ck", size)
    store = tmp_path / "blobs"
    blobs = ServiceProcess("mreg.blob_service", ["--store", str(store)]).start()
    database = ["--database-url", f"sqlite:///{tmp_path / 'm.db'}", "--blob-addr", blobs.address]
    metadata = ServiceProcess("mreg.metadata_service", database).start()
    env = dict(
        os.environ,
        MREG_METADATA_ADDR=metadata.address,
        MREG_BLOB_ADDR=blobs.address,
        MREG_CACHE_DIR=str(tmp_path / "cache"),
        MREG_RETRY_SECONDS="3",
    )
    push = [sys.executable, "-m", "mreg.client.cli", "push", str(checkpoint), "acme/vision/outage"]
    process = subprocess.Popen([*push, "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        partial = lambda: max((p.stat().st_size for p in (store / "uploads").glob("*") if p.is_file()), default=0)  # noqa: E731
        for _ in range(6000):  # a bound by count: at most about 5 minutes on a very slow machine
            if partial() >= 4 << 20 or process.poll() is not None:
                break
            time.sleep(0.05)
        # The push is frozen while its blob service dies, so the upload cannot finish in between.
        process.send_signal(signal.SIGSTOP)
        assert process.poll() is None and partial() < size, "the upload finished before the service could die"
        blobs.kill()
        process.send_signal(signal.SIGCONT)
        _, err = process.communicate(timeout=120)  # a hang check: the retries give up after retry_seconds
        assert process.returncode == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("mreg: error: UNAVAILABLE: "), err
        assert line.endswith("what was stored is kept: run the same push again to resume"), err

        blobs.start()
        rerun = subprocess.run([*push, "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        resumed = json.loads(rerun.stdout)
        assert resumed["version"] == 0
        assert 0 < resumed["uploaded_bytes"] < size  # the part stored before the outage was not sent again
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
        metadata.stop()
        blobs.stop()


@pytest.mark.any_database
def test_ctrl_c_stops_a_large_pull_at_once_and_leaves_no_partial_file(servers, tmp_path: Path, unique) -> None:
    size = 300 << 20
    checkpoint = _sparse_checkpoint(tmp_path / "ck", size)
    with servers.registry() as registry:
        ref = registry.push(checkpoint, f"pull-interrupt-{unique}").version.name
    dest = tmp_path / "out"
    env = dict(os.environ, **servers.cli_env())
    process = subprocess.Popen(
        [sys.executable, "-m", "mreg.client.cli", "pull", ref, str(dest), "--quiet", "--no-cache"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = _interrupt_once_grown(
        process, lambda: max((p.stat().st_size for p in dest.glob(".mreg-partial-*")), default=0)
    )

    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["mreg: interrupted"]
    # No partial download is left. Under load the signal can land after the file was verified and renamed
    # into place; a file kept then must be the whole, verified file, as `cp` keeps what it finished.
    left = sorted(p.name for p in dest.iterdir())
    assert left in ([], ["big.bin"]), left
    if left:
        assert _sha256_of(dest / "big.bin") == _sha256_of(checkpoint / "big.bin")


def test_two_processes_claiming_upload_ids_for_the_same_blobs_agree_and_never_fail(tmp_path: Path) -> None:
    """Two pushes on one machine share the hash cache (one connection each, like two processes)."""
    import threading

    from mreg.client.cache import HashCache

    caches = [HashCache(tmp_path / "cache"), HashCache(tmp_path / "cache")]
    blobs = [(f"{i:064x}", i) for i in range(300)]
    claimed: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def claim(which: int) -> None:
        start.wait()
        try:
            claimed[which] = [caches[which].upload_id(sha, size) for sha, size in blobs]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cache in caches:
        cache.close()
    assert errors == []
    assert claimed[0] == claimed[1]
