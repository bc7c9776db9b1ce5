"""The command line's interface (issue 10): help, global flags, tables on a terminal and in a pipe,
JSON errors, completion, and the safety of destructive commands (--dry-run, confirmation, --yes)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mreg.client.cli import main as cli_main
from mreg.client.registry import HASH_PROGRESS_MIN_BYTES
from tests.helpers import make_checkpoint

MREG = Path(sys.executable).parent / "mreg"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _env(servers, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "MREG_ENTITY", "MREG_PROJECT")}
    return env | servers.cli_env() | {"TERM": "xterm-256color", "COLUMNS": "160"} | extra


def _in_pty(args: list[str], env: dict[str, str], answer: str | None = None, timeout: float = 60) -> tuple[int, str]:
    """Runs the installed `mreg ARGS` with stdin, stdout and stderr on a pseudo-terminal; answers a [y/N] prompt."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen([str(MREG), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if answer is not None and not answered and b"[y/N]" in output:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise AssertionError(f"mreg {args} did not finish: {output!r}")
        return process.wait(timeout=10), output.decode(errors="replace")
    finally:
        os.close(master)


def _push(mreg, directory: Path, artifact: str, *options: str) -> dict:
    code, pushed, err = mreg("push", str(directory), artifact, *options)
    assert code == 0, err
    return pushed


def _push_versions(mreg, tmp_path: Path, artifact: str, count: int, *first_options: str) -> Path:
    """Versions v0..v(count-1) of a small checkpoint, each with its own config.json (v0 pushed with
    ``first_options``); returns the checkpoint."""
    checkpoint = make_checkpoint(tmp_path / "ck", 1000)
    for n in range(count):
        (checkpoint / "config.json").write_text(json.dumps({"n": n}))
        _push(mreg, checkpoint, artifact, *(first_options if n == 0 else ()))
    return checkpoint


# --help -----------------------------------------------------------------------------------------


def test_top_level_help_lists_commands_exit_codes_and_completion(capsys) -> None:
    text = _help(capsys)
    assert text.startswith("Usage: mreg [OPTIONS] COMMAND [ARGS]...")
    for command in ("push", "pull", "ls", "versions", "delete", "retention", "watch", "download", "update"):
        assert re.search(rf"^  {command}\s+\S", text, re.MULTILINE), command
    assert "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted, 141 output pipe closed." in text
    assert "_MREG_COMPLETE=bash_source mreg" in text
    assert "--json" in text and "--version" in text


def test_versions_help_documents_the_filter_grammar_with_an_example(capsys) -> None:
    text = _help(capsys, "versions")
    assert text.startswith("Usage: mreg versions [OPTIONS] REF")
    assert "Filter grammar (--filter):" in text
    assert "OP     := = | != | < | <= | > | >=" in text
    assert "metadata.KEY[.KEY...]" in text
    assert "mreg versions acme/vision/resnet --filter 'metadata.val_loss < 0.2 AND tag = \"fp16\"'" in text


def test_delete_and_ls_help_show_their_arguments_and_only_the_flags_that_apply(capsys) -> None:
    delete = _help(capsys, "delete")
    assert delete.startswith("Usage: mreg delete [OPTIONS] REF")
    assert "--dry-run" in delete and "-y, --yes" in delete and "--parallel" not in delete
    ls = _help(capsys, "ls")
    assert ls.startswith("Usage: mreg ls [OPTIONS] [ENTITY[/PROJECT] | ARTIFACT | REGISTERED_MODEL]")
    assert "--limit" in ls and "--json-lines" in ls
    assert "--parallel" not in ls and "--no-cache" not in ls
    push = _help(capsys, "push")
    assert push.startswith("Usage: mreg push [OPTIONS] DIR REF") and "--parallel" in push and "--no-cache" in push


def test_version_flag_and_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("mreg ")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pussh"])
    assert exit_info.value.code == 2
    assert "Did you mean 'push'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["ls", "acme/vision", "--parallel", "4"])  # a transfer flag on a command that transfers nothing
    assert exit_info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["watch", "--since", str(2**64)])  # beyond the protocol's int64, not an INTERNAL error
    assert exit_info.value.code == 2
    assert "'--since'" in capsys.readouterr().err


def _usage_error_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    try:
        code = cli_main(list(args))
    except SystemExit as exit_info:  # Click's own parsing ends with SystemExit, a command's checks return
        code = exit_info.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    error = json.loads(captured.err)
    assert set(error) == {"code", "reason", "message", "usage"}
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "USAGE")
    return error


def test_usage_errors_with_json_are_one_json_object_on_stderr_with_the_suggestion_kept(capsys) -> None:
    error = _usage_error_json(capsys, "--json", "pussh")
    assert "No such command 'pussh'" in error["message"] and "Did you mean 'push'?" in error["message"]
    assert error["usage"] == "Usage: mreg [OPTIONS] COMMAND [ARGS]..."

    error = _usage_error_json(capsys, "ls", "--limt", "3", "--json")  # --json after the command works too
    assert error["message"].startswith("No such option '--limt'") and "Did you mean" in error["message"]
    assert "'--limit'" in error["message"]
    assert error["usage"].startswith("Usage: mreg ls [OPTIONS]")

    error = _usage_error_json(capsys, "--json", "pull", "acme/vision/resnet")
    assert "Missing argument 'DEST'" in error["message"] and error["usage"] == "Usage: mreg pull [OPTIONS] REF DEST"

    error = _usage_error_json(capsys, "--json", "ls", "--limit", "many")
    assert "Invalid value for '--limit'" in error["message"] and "'many' is not a valid integer" in error["message"]

    # Raised by a command's own checks, after Click parsed the line: the same shape, with that command's usage.
    error = _usage_error_json(capsys, "--json", "retention", "set", "acme/vision/resnet")
    assert "--keep-last" in error["message"] and error["usage"].startswith("Usage: mreg retention set")
    error = _usage_error_json(capsys, "--json", "update", "acme/vision/resnet:v0", "--replace-metadata")
    assert "--replace-metadata needs" in error["message"] and error["usage"].startswith("Usage: mreg update")


TOO_BIG = "99999999999999999999"  # beyond int64, so a protobuf field would refuse it with a ValueError


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["alias", "set", "acme/vision/x:v0", "best", "--expect", f"v{TOO_BIG}"], "--expect"),
        (["alias", "set", "acme/vision/x:v0", "best", "--expect", TOO_BIG], "--expect"),
        (["alias", "set", "acme/vision/x:v0", "best", "--expect", "garbage"], "--expect"),
        (["alias", "rm", "acme/vision/x", "best", "--expect", f"v{TOO_BIG}"], "--expect"),
        (["alias", "rm", "acme/vision/x", "best", "--expect", "none"], "--expect"),  # an unset alias cannot go
        (["retention", "set", "acme/vision/x", "--keep-last", str(2**31)], "--keep-last"),  # keep_last is an int32
        (["gc", "--grace-seconds", TOO_BIG], "--grace-seconds"),
        (["token", "create", "n", "--role", "reader", "--scope", "acme", "--expires", f"{TOO_BIG}d"], "--expires"),
        (["token", "create", "n", "--role", "reader", "--scope", "acme", "--expires", "999999999d"], "--expires"),
        (["cache", "prune", "--older-than", "999999999d", "--dry-run"], "--older-than"),
    ],
)
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(capsys, args: list[str], option: str) -> None:
    error = _usage_error_json(capsys, "--json", *args)
    assert f"'{option}'" in error["message"] or error["message"].startswith(option), error


@pytest.mark.parametrize("option", ["--metadata-port", "--blob-port", "--metrics-port"])
def test_serve_refuses_a_port_out_of_range_as_a_usage_error(capsys, tmp_path: Path, option: str) -> None:
    ports = {"--metadata-port": "0", "--blob-port": "0", "--metrics-port": "0"} | {option: "70000"}
    arguments = [a for pair in ports.items() for a in pair]
    error = _usage_error_json(capsys, "--json", "serve", "--data-dir", str(tmp_path), "--no-web", *arguments)
    assert f"'{option}'" in error["message"] and "65535" in error["message"], error
    assert not any(tmp_path.iterdir())  # refused before anything started


def test_web_refuses_a_listen_port_out_of_range_as_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["web", "--listen", f"127.0.0.1:{TOO_BIG}", "--metadata-addr", "127.0.0.1:1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mreg web: error: --listen ") and "65535" in err, err


def test_usage_errors_without_json_stay_text_and_a_json_after_double_dash_is_an_argument(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pussh"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: mreg [OPTIONS] COMMAND [ARGS]...") and "Did you mean 'push'?" in err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pussh", "--", "--json"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("Usage: ")


def test_bash_completion_script_and_candidates() -> None:
    env = {k: v for k, v in os.environ.items()} | {"_MREG_COMPLETE": "bash_source"}
    script = subprocess.run([str(MREG)], env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_mreg_completion" in script.stdout
    env |= {"_MREG_COMPLETE": "bash_complete", "COMP_WORDS": "mreg ret", "COMP_CWORD": "1"}
    candidates = subprocess.run([str(MREG)], env=env, capture_output=True, text=True, timeout=60)
    assert "retention" in candidates.stdout


# Global flags, JSON errors ----------------------------------------------------------------------


def test_global_flags_work_before_the_command(mreg, servers, monkeypatch, capsys, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/global-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact)
    monkeypatch.setenv("MREG_METADATA_ADDR", "127.0.0.1:1")  # only the flag can reach the service
    capsys.readouterr()
    assert cli_main(["--json", "--metadata-addr", servers.metadata.address, "ls", artifact]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["version"] for row in listed] == [0]
    # The flag after the command wins over the one before it.
    assert (
        cli_main(["--metadata-addr", "127.0.0.1:1", "ls", artifact, "--metadata-addr", servers.metadata.address]) == 0
    )
    assert "v0" in capsys.readouterr().out
    monkeypatch.setenv("MREG_METADATA_ADDR", servers.metadata.address)
    assert cli_main(["--entity", "acme", "--project", "vision", "--json", "ls"]) == 0
    assert any(row["name"] == artifact for row in json.loads(capsys.readouterr().out))


def test_errors_with_json_are_one_json_object_on_stderr_with_a_hint(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/hinted-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact)
    code, out, err = mreg("show", f"{artifact}x:v0")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    error = json.loads(err)
    assert set(error) == {"code", "reason", "message"}
    assert error["code"] == "NOT_FOUND" and error["reason"]
    assert f"did you mean {artifact}?" in error["message"]
    code, _, err = mreg("show", f"{artifact}x:v0", json_output=False)
    assert code == 1 and err.startswith("mreg: error: NOT_FOUND: ") and f"did you mean {artifact}?" in err


def test_ls_levels_limit_and_json_lines(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/levels-{unique}"
    _push_versions(mreg, tmp_path, artifact, 2, "--tag", "fp16")
    code, text, _ = mreg("ls", artifact, "--limit", "1", "--json-lines", json_output=False)
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and [row["version"] for row in rows] == [1]
    code, text, _ = mreg("ls", artifact, json_output=False)
    assert text.splitlines()[0].split() == ["VERSION", "ALIASES", "SIZE", "FILES", "CREATED", "TAGS"]
    assert "fp16" in text.splitlines()[2]
    code, text, _ = mreg("ls", "acme", json_output=False)
    assert code == 0 and text.splitlines()[0].split() == ["PROJECT", "CREATED"]
    assert "acme/vision" in [line.split()[0] for line in text.splitlines()[1:]]
    code, projects, _ = mreg("ls", "acme")
    assert "acme/vision" in [row["name"] for row in projects]


def test_a_limit_beyond_any_page_size_lists_everything(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/unlimited-{unique}"
    _push_versions(mreg, tmp_path, artifact, 2)
    for command in (["ls", artifact], ["versions", artifact]):
        code, listed, err = mreg(*command, "--limit", TOO_BIG)  # page_size is an int32
        assert (code, [row["version"] for row in listed]) == (0, [1, 0]), err
    code, listed, err = mreg("ls", "acme/vision", "--limit", TOO_BIG)
    assert code == 0 and f"unlimited-{unique}" in [row["name"].rsplit("/", 1)[-1] for row in listed], err


# Tables: plain when piped, Rich on a terminal ---------------------------------------------------


def test_ls_is_plain_text_when_piped_and_a_coloured_table_on_a_terminal(servers, mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/table-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact, "--alias", "best")
    env = _env(servers)

    piped = subprocess.run([str(MREG), "ls", "acme/vision"], env=env, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert "\x1b[" not in piped.stdout
    assert lines[0].split() == ["NAME", "KIND", "TYPE", "COUNT", "LATEST", "CREATED"]
    row = next(line for line in lines if line.startswith(f"table-{unique} "))
    assert row.split()[1:6] == ["artifact", "model", "1", "version", "v0"]

    code, screen = _in_pty(["ls", artifact], env)
    assert code == 0, screen
    assert ANSI.search(screen), screen  # colour (a bold header) on a terminal
    plain = ANSI.sub("", screen)
    assert re.search(r"VERSION\s+ALIASES\s+SIZE\s+FILES\s+CREATED\s+TAGS", plain), plain
    assert re.search(r"v0\s+latest, best", plain), plain

    # --json on a terminal is still plain JSON: no colour, no table, no progress.
    code, screen = _in_pty(["--json", "ls", artifact], env)
    assert code == 0, screen
    assert not ANSI.search(screen), screen
    assert [row["aliases"] for row in json.loads(screen)] == [["latest", "best"]]


def test_alias_history_and_cache_listing_are_tables_with_headers(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/history-{unique}"
    _push_versions(mreg, tmp_path, artifact, 2)
    assert mreg("alias", "set", f"{artifact}:v0", "best")[0] == 0
    assert mreg("alias", "set", f"{artifact}:v1", "best")[0] == 0

    code, text, _ = mreg("alias", "history", artifact, "best", json_output=False)
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["SEQUENCE", "TIME", "KIND", "FROM", "TO", "ACTOR"]
    moved, first = (line.split() for line in lines[1:])
    assert (moved[3:6], first[3:6]) == (["alias.set", "v0", "v1"], ["alias.set", "-", "v0"])
    code, events, _ = mreg("alias", "history", artifact, "best")
    assert [(e["before"], e["after"]) for e in events] == [({"index": 0}, {"index": 1}), (None, {"index": 0})]

    assert mreg("download", f"{artifact}:v1")[0] == 0
    code, text, _ = mreg("cache", "ls", json_output=False)
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["REF", "VERSION", "FILES", "SIZE", "LAST", "USED"]
    assert any(line.split()[:2] == [artifact, "v1"] for line in lines[1:-1]), lines
    assert re.match(r"^\d+ snapshots; .* on disk in ", lines[-1]), lines


def test_alias_history_of_a_registered_model_shows_the_versions_its_links_held(mreg, tmp_path: Path, unique) -> None:
    artifact, model = f"acme/vision/linked-{unique}", f"acme/vision/model-{unique}"
    _push_versions(mreg, tmp_path, artifact, 3)
    # Link v2 first, so the model's link numbers (v0, v1) differ from the versions they hold (v2, v1).
    assert mreg("link", f"{artifact}:v2", model, "--create")[0] == 0
    assert mreg("link", f"{artifact}:v1", model)[0] == 0
    assert mreg("alias", "set", f"{model}:v0", "production")[0] == 0
    assert mreg("alias", "set", f"{model}:v1", "production")[0] == 0

    code, text, _ = mreg("alias", "history", model, "production", json_output=False)
    moved, first = text.splitlines()[1:]
    assert code == 0, text
    assert re.search(rf"alias\.set\s+v0 \({artifact}:v2\)\s+v1 \({artifact}:v1\)\s", moved), text
    assert re.search(rf"alias\.set\s+-\s+v0 \({artifact}:v2\)\s", first), text


# Destructive commands ---------------------------------------------------------------------------


def test_delete_dry_run_and_retention_dry_run_delete_nothing(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/dry-{unique}"
    checkpoint = _push_versions(mreg, tmp_path, artifact, 3)
    assert mreg("alias", "set", f"{artifact}:v0", "keep")[0] == 0

    code, planned, _ = mreg("delete", f"{artifact}:v1", "--dry-run")
    assert (code, planned["would_delete"], planned["dry_run"]) == (0, f"{artifact}:v1", True)
    code, planned, _ = mreg("retention", "set", artifact, "--keep-last", "1", "--dry-run")
    assert code == 0 and planned["candidates"] == [1]  # v0 is aliased, v2 is the last one
    code, text, _ = mreg("retention", "set", artifact, "--keep-last", "1", "--dry-run", json_output=False)
    assert text.startswith(f"would delete v1 from {artifact}")

    code, listed, _ = mreg("ls", artifact)
    assert [row["version"] for row in listed] == [2, 1, 0]
    code, shown, _ = mreg("retention", "show", artifact)
    assert (code, shown["keep_last"]) == (0, None)

    code, applied, _ = mreg("retention", "set", artifact, "--keep-last", "1")
    assert applied["deleted"] == [1]
    code, shown, _ = mreg("retention", "show", artifact)
    assert shown["keep_last"] == 1
    (checkpoint / "config.json").write_text("{}")
    pushed = _push(mreg, checkpoint, artifact)
    # The push reports what its commit's retention deleted: v2 (v0 keeps its alias, v3 is the newest).
    assert pushed["retention_deleted"] == [2]


def test_delete_dry_run_predicts_the_services_answer_and_lists_what_force_would_remove(
    mreg, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/predicted-{unique}"
    model = f"acme/model-registry/predicted-{unique}"
    _push_versions(mreg, tmp_path, artifact, 4)
    assert mreg("alias", "set", f"{artifact}:v0", "best")[0] == 0
    assert mreg("link", f"{artifact}:v1", model, "--create")[0] == 0
    assert mreg("alias", "set", f"{artifact}:v2", "keep")[0] == 0
    assert mreg("link", f"{artifact}:v2", model, "--alias", "production")[0] == 0

    def planned(version: str, *force: str) -> dict:
        code, plan, err = mreg("delete", f"{artifact}:{version}", "--dry-run", *force)
        assert code == 0, err
        # The model's aliases on a link go with it: this one's production is the only one.
        assert plan["link_aliases"] == ([f"{model}:production"] if version == "v2" else []), plan
        return {key: plan[key] for key in ("aliases", "links", "refused_without_force")}

    # v3 carries only `latest`, which the service keeps itself: nothing stops its deletion.
    assert planned("v3") == {"aliases": [], "links": [], "refused_without_force": False}
    assert planned("v0") == {"aliases": ["best"], "links": [], "refused_without_force": True}
    assert planned("v1") == {"aliases": [], "links": [f"{model}:v0"], "refused_without_force": True}
    assert planned("v2") == {"aliases": ["keep"], "links": [f"{model}:v1"], "refused_without_force": True}
    assert planned("v2", "--force") == {"aliases": ["keep"], "links": [f"{model}:v1"], "refused_without_force": False}
    code, text, _ = mreg("delete", f"{artifact}:v1", "--dry-run", json_output=False)
    assert code == 0 and f"link {model}:v0 still names it" in text and "--force" in text, text
    code, text, _ = mreg("delete", f"{artifact}:v2", "--dry-run", json_output=False)
    assert f"link {model}:v1 (with its aliases production)" in text, text

    # The real deletes answer as predicted.
    code, deleted, err = mreg("delete", f"{artifact}:v3")
    assert code == 0, err
    code, _, err = mreg("delete", f"{artifact}:v1")
    assert code == 1 and json.loads(err)["reason"] == "VERSION_IN_USE", err
    code, deleted, err = mreg("delete", f"{artifact}:v2", "--force")
    assert code == 0, err
    assert (deleted["removed_aliases"], deleted["removed_links"]) == (["keep"], [f"{model}:v1"])
    assert deleted["removed_link_aliases"] == [f"{model}:production"]


def test_deleting_a_link_by_its_alias_says_which_aliases_go_with_it(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/unlinked-{unique}"
    model = f"acme/model-registry/unlinked-{unique}"
    _push_versions(mreg, tmp_path, artifact, 1)
    assert mreg("link", f"{artifact}:v0", model, "--create", "--alias", "production", "--alias", "canary")[0] == 0
    code, plan, _ = mreg("delete", f"{model}:production", "--dry-run")
    assert (plan["would_delete"], plan["aliases"]) == (f"{model}:v0", ["canary", "production"])
    code, text, _ = mreg("delete", f"{model}:production", "--dry-run", json_output=False)
    assert "and its aliases canary, production" in text, text
    code, deleted, err = mreg("delete", f"{model}:production", "--yes")
    assert code == 0, err
    assert (deleted["deleted"], deleted["removed_aliases"]) == (f"{model}:v0", ["canary", "production"])


def test_a_refused_confirmation_deletes_nothing_and_yes_proceeds(servers, mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/confirm-{unique}"
    _push_versions(mreg, tmp_path, artifact, 2)
    env = _env(servers)

    code, screen = _in_pty(["delete", f"{artifact}:v0"], env, answer="n")
    assert code == 1, screen
    assert f"delete {artifact}:v0?" in screen and "[y/N]" in screen
    assert [row["version"] for row in mreg("ls", artifact)[1]] == [1, 0]

    code, screen = _in_pty(["delete", f"{artifact}:v0", "--yes"], env)
    assert code == 0, screen
    assert "[y/N]" not in screen and f"deleted {artifact}:v0" in screen
    assert [row["version"] for row in mreg("ls", artifact)[1]] == [1]


def test_watch_prints_time_and_actor(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/watched-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact)
    code, text, _ = mreg("watch", "--prefix", artifact, "--limit", "2", json_output=False)
    lines = text.splitlines()
    assert code == 0 and len(lines) == 2
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  #\d+ collection\.created .* by \S+$", lines[0]), lines
    code, text, _ = mreg("watch", "--prefix", artifact, "--limit", "2", "--json-lines", json_output=False)
    assert [json.loads(line)["kind"] for line in text.splitlines()] == ["collection.created", "version.committed"]


def test_a_large_push_shows_a_hashing_progress_line_then_the_upload_on_a_terminal(
    servers, tmp_path: Path, unique
) -> None:
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(os.urandom(HASH_PROGRESS_MIN_BYTES + (1 << 20)))
    code, screen = _in_pty(["push", str(checkpoint), f"acme/vision/progress-{unique}"], _env(servers), timeout=120)
    assert code == 0, screen
    plain = ANSI.sub("", screen)
    # A bar per phase: hashing first (it gives way when done), then the upload.
    assert re.search(r"hash \S+ [\d.]+/[\d.]+ MiB", plain), plain
    assert re.search(r"push \S+ [\d.]+/[\d.]+ MiB", plain), plain
    assert plain.index("hash ") < plain.index("push ")
    assert f"pushed acme/vision/progress-{unique}:v0" in plain
