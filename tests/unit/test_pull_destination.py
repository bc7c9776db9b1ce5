"""Where a pull writes: every target under the destination, whatever symlinks stand in it.

``prepare_destination`` resolves each directory once rather than every file's whole path; the
guarantees are those of resolving every path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mreg.client.errors import MregError
from mreg.client.transfer import prepare_destination


def test_targets_lie_under_the_destination_and_their_directories_are_made(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    paths = ["a.bin", "shards/s-0.bin", "shards/s-1.bin", "deep/er/x.txt"]
    targets = prepare_destination(dest, paths)
    assert targets == [dest.resolve() / p for p in paths]
    assert (dest / "shards").is_dir() and (dest / "deep" / "er").is_dir()


@pytest.mark.parametrize("path", ["../escape.bin", "a/../../escape.bin", "/tmp/escape.bin", "a/..", "."])
def test_a_path_leaving_the_destination_is_refused_and_makes_nothing_outside(tmp_path: Path, path: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(MregError) as error:
        prepare_destination(dest, ["fine.bin", path])
    assert error.value.code == "INVALID_ARGUMENT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlinked_directory_leading_outside_is_refused(tmp_path: Path) -> None:
    dest, outside = tmp_path / "out", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "shards").symlink_to(outside)
    with pytest.raises(MregError) as error:
        prepare_destination(dest, ["shards/s-0.bin"])
    assert error.value.code == "INVALID_ARGUMENT"
    with pytest.raises(MregError):
        prepare_destination(dest, ["shards/new/s-0.bin"])
    assert list(outside.iterdir()) == []


def test_a_symlinked_file_leading_outside_is_refused_and_one_inside_is_followed(tmp_path: Path) -> None:
    dest, outside = tmp_path / "out", tmp_path / "secret.txt"
    dest.mkdir()
    outside.write_text("keep")
    (dest / "a.bin").symlink_to(outside)
    with pytest.raises(MregError) as error:
        prepare_destination(dest, ["a.bin"])
    assert error.value.code == "INVALID_ARGUMENT"
    (dest / "real.bin").write_bytes(b"")
    (dest / "b.bin").symlink_to(dest / "real.bin")
    assert prepare_destination(dest, ["b.bin"]) == [(dest / "real.bin").resolve()]


def test_a_directory_where_a_file_goes_is_refused_even_through_a_symlink(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "weights.bin").mkdir(parents=True)
    (dest / "inner").mkdir()
    (dest / "linked.bin").symlink_to(dest / "inner")
    for path in ("weights.bin", "linked.bin"):
        with pytest.raises(MregError) as error:
            prepare_destination(dest, [path])
        assert error.value.code == "FAILED_PRECONDITION" and "is a directory" in error.value.message
