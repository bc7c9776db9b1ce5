"""The command line's text, compared with committed snapshots: every command's --help, and the tables
of `mreg ls PROJECT` and `mreg versions ARTIFACT` in a pipe.

Every command and subcommand of the click group is found by walking it, so a new command gets a help
snapshot without touching this file. A missing or different snapshot fails with a diff; after checking
that the new text is what you meant, regenerate them with `MREG_UPDATE_SNAPSHOTS=1 make test` (or
`MREG_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/e2e/test_help_snapshots.py`) and commit them.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from mreg.client.cli import cli
from mreg.client.cli import main as cli_main

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MREG_UPDATE_SNAPSHOTS", "") not in ("", "0")
MREG = Path(sys.executable).parent / "mreg"


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command paths under ``group``, itself included: (), ("push",), ("alias",), ("alias", "set"), ..."""
    paths = [path]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += _commands(command, (*path, name))
        else:
            paths.append((*path, name))
    return paths


COMMANDS = _commands(cli)


def _snapshot_name(path: tuple[str, ...]) -> str:
    return ".".join(("mreg", *path)) + ".txt"


def assert_snapshot(actual: str, path: Path) -> None:
    """``actual`` equals the committed ``path``; with MREG_UPDATE_SNAPSHOTS=1 it is written there instead."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    regenerate = "regenerate the snapshots with `MREG_UPDATE_SNAPSHOTS=1 make test` and review the diff"
    if not path.exists():
        pytest.fail(f"no snapshot {path.relative_to(SNAPSHOTS.parent)}; {regenerate}:\n{actual}")
    expected = path.read_text()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), str(path), "actual"
        )
        pytest.fail(f"{path.relative_to(SNAPSHOTS.parent)} differs; {regenerate}:\n{''.join(diff)}")


@pytest.fixture
def fixed_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal 100 columns wide, without colour, and no MREG_* variable that could show in help."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(("mreg", *path)))
def test_help_matches_its_snapshot(path: tuple[str, ...], fixed_terminal: None, capsys) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*path, "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert_snapshot(captured.out, SNAPSHOTS / "help" / _snapshot_name(path))


def test_every_help_snapshot_belongs_to_a_command() -> None:
    """A snapshot left behind by a removed or renamed command fails too (and is removed when regenerating)."""
    expected = {_snapshot_name(path) for path in COMMANDS}
    stale = sorted(p for p in (SNAPSHOTS / "help").glob("*.txt") if p.name not in expected)
    if UPDATE:
        for path in stale:
            path.unlink()
        return
    assert not stale, f"snapshots of no command: {[p.name for p in stale]}; regenerate with MREG_UPDATE_SNAPSHOTS=1"


# Tables in a pipe -------------------------------------------------------------------------------

TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _deterministic_checkpoint(root: Path, layers: int) -> Path:
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (root / "config.json").write_text(f'{{"layers": {layers}}}')
    return root


def test_ls_and_versions_tables_in_a_pipe_match_their_snapshots(servers, tmp_path: Path, unique: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MREG_") or k in ("MREG_CACHE_DIR",)}
    env |= servers.cli_env() | {"COLUMNS": "100", "NO_COLOR": "1"}
    env["MREG_CONFIG_DIR"] = str(tmp_path / "config")
    project = f"acme/tables-{unique}"

    def mreg(*args: str) -> str:
        done = subprocess.run([str(MREG), *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        # The project's name differs per run: the same length keeps the columns where they are.
        return TIME.sub("YYYY-MM-DD hh:mm:ss", done.stdout).replace(unique, "x" * len(unique))

    first = _deterministic_checkpoint(tmp_path / "first", 50)
    second = _deterministic_checkpoint(tmp_path / "second", 101)
    mreg("push", str(first), f"{project}/resnet", "--alias", "candidate", "--tag", "fp16", "-q")
    mreg("push", str(second), f"{project}/resnet", "--metadata", '{"accuracy": 0.93}', "-q")
    mreg("push", str(first), f"{project}/tokenizer", "--type", "dataset", "-q")
    mreg("link", f"{project}/resnet:v1", f"{project}/Classifier", "--alias", "staging", "--create")

    assert_snapshot(mreg("ls", project), SNAPSHOTS / "tables" / "ls-project.txt")
    assert_snapshot(mreg("versions", f"{project}/resnet"), SNAPSHOTS / "tables" / "versions-artifact.txt")
