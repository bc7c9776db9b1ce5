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


def test_a_symlink_where_the_version_has_a_file_is_the_target_itself_never_where_it_leads(tmp_path: Path) -> None:
    # The pulled file takes the link's place (a rename replaces the link), as git checkout and tar do: written
    # through, a link to another of the version's files or to the user's own file put wrong bytes in one of them.
    dest, outside = tmp_path / "out", tmp_path / "secret.txt"
    dest.mkdir()
    outside.write_text("keep")
    (dest / "real.bin").write_bytes(b"")
    (dest / "a.bin").symlink_to(outside)
    (dest / "b.bin").symlink_to(dest / "real.bin")
    (dest / "gone.bin").symlink_to(tmp_path / "nowhere")
    paths = ["a.bin", "b.bin", "gone.bin", "real.bin"]
    assert prepare_destination(dest, paths) == [dest.resolve() / p for p in paths]


def test_two_files_led_to_one_place_by_a_symlinked_directory_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "x").mkdir(parents=True)
    (dest / "y").symlink_to("x")
    with pytest.raises(MregError) as error:
        prepare_destination(dest, ["x/weights.bin", "y/weights.bin"])
    assert error.value.code == "FAILED_PRECONDITION"
    assert "x/weights.bin" in error.value.message and "y/weights.bin" in error.value.message


def test_a_directory_where_a_file_goes_is_refused_but_a_link_to_one_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "weights.bin").mkdir(parents=True)
    (dest / "inner").mkdir()
    (dest / "linked.bin").symlink_to(dest / "inner")
    with pytest.raises(MregError) as error:
        prepare_destination(dest, ["weights.bin"])
    assert error.value.code == "FAILED_PRECONDITION" and "is a directory" in error.value.message
    assert prepare_destination(dest, ["linked.bin"]) == [dest.resolve() / "linked.bin"]
