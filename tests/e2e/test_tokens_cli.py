"""The token CLI (`mreg token create/ls/revoke`, `mreg whoami`) and profiles (`mreg login/logout`),
in-process against the servers with authentication on (the `secured` fixture caches token lookups 1 s)."""

from __future__ import annotations

import io
import json
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.client import Credentials, Registry
from mreg.client.channels import open_channel
from mreg.client.cli import main as cli_main

POLL_SECONDS = 10.0

Run = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "config" / "mreg"
    monkeypatch.setenv("MREG_CONFIG_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def secure_project(secured, tmp_path_factory: pytest.TempPathFactory) -> str:
    """acme/secure holds an artifact (pushed with the admin token), so listing it succeeds."""
    checkpoint = tmp_path_factory.mktemp("seed")
    (checkpoint / "weights.bin").write_bytes(b"seed of the token tests")
    with secured.registry(secured.admin_token) as admin:
        admin.push(checkpoint, "acme/secure/token-tests-seed")
    return "acme/secure"


@pytest.fixture
def cli(
    secured, secure_project: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config_dir: Path
) -> Run:
    """Runs `mreg ARGS [--json]` in-process against the secured servers, with MREG_TOKEN=token (unset if None)."""
    monkeypatch.setenv("MREG_METADATA_ADDR", secured.metadata.address)
    monkeypatch.setenv("MREG_BLOB_ADDR", secured.blob.address)
    for variable in ("MREG_TOKEN", "MREG_PROFILE", "MREG_ENTITY", "MREG_PROJECT"):
        monkeypatch.delenv(variable, raising=False)

    def run(*args: str, token: str | None = None, json_output: bool = True) -> tuple[int, Any, str]:
        if token is None:
            monkeypatch.delenv("MREG_TOKEN", raising=False)
        else:
            monkeypatch.setenv("MREG_TOKEN", token)
        capsys.readouterr()
        code = cli_main([*args, "--json"] if json_output else list(args))
        captured = capsys.readouterr()
        parsed = json.loads(captured.out) if json_output and code == 0 else captured.out
        return code, parsed, captured.err

    return run


def _create(cli: Run, admin: str, name: str, *extra: str) -> dict[str, Any]:
    code, created, err = cli("token", "create", name, *extra, token=admin)
    assert code == 0, err
    return created


def _until_refused(call: Callable[[], str | None]) -> str:
    """Polls ``call`` (an error code, or None while it succeeds) until it fails; returns the code."""
    deadline = time.monotonic() + POLL_SECONDS
    while True:
        code = call()
        if code is not None or time.monotonic() > deadline:
            assert code is not None, f"still accepted after {POLL_SECONDS} s"
            return code
        time.sleep(0.2)


def _blob_call(address: str, token: str) -> str | None:
    with open_channel(address, Credentials(token=token)) as channel:
        try:
            blob_grpc.BlobServiceStub(channel).GetCapabilities(blob_pb.GetCapabilitiesRequest(), timeout=10)
        except grpc.RpcError as e:
            return e.code().name
    return None


def _cli_code(cli: Run, *args: str, token: str) -> str | None:
    code, _, err = cli(*args, token=token)
    if code == 0:
        return None
    # With --json an error is one JSON object on stderr: {"code", "reason", "message"}.
    assert err.count("\n") == 1, err
    assert token not in err
    return json.loads(err)["code"]


def test_admin_creates_a_reader_token_that_works_and_is_listed_without_its_secret(
    cli: Run, secured, unique: str
) -> None:
    created = _create(cli, secured.admin_token, f"reader-{unique}", "--role", "reader", "--scope", "acme/secure")
    assert set(created) == {"name", "token", "role", "scope"}
    assert created["name"] == f"reader-{unique}"
    assert (created["role"], created["scope"]) == ("reader", "acme/secure")
    secret = created["token"]

    code, _, err = cli("ls", "acme/secure", token=secret)
    assert code == 0, err
    # A reader may not push or create tokens.
    assert _cli_code(cli, "token", "create", f"x-{unique}", "--role", "reader", "--scope", "acme", token=secret) == (
        "PERMISSION_DENIED"
    )

    code, rows, err = cli("token", "ls", token=secured.admin_token)
    assert code == 0, err
    (row,) = [r for r in rows if r["name"] == f"reader-{unique}"]
    assert row["role"] == "reader" and row["scope"] == "acme/secure" and row["created"]
    assert row["expires"] is None and row["revoked"] is None
    assert "token" not in row and "secret" not in row
    code, text, err = cli("token", "ls", token=secured.admin_token, json_output=False)
    assert code == 0 and f"reader-{unique}" in text and secret not in text


def test_token_create_prints_the_secret_alone_on_stdout(cli: Run, secured, unique: str) -> None:
    code, out, err = cli(
        "token", "create", f"plain-{unique}", "--role", "admin", token=secured.admin_token, json_output=False
    )
    assert code == 0, err
    secret = out.strip()
    assert "\n" not in secret and secret not in err and "only this once" in err
    code, caller, err = cli("whoami", token=secret)
    assert code == 0, err
    assert (caller["name"], caller["role"], caller["scope"]) == (f"plain-{unique}", "admin", "*")


def test_whoami_prints_name_role_and_scope(cli: Run, secured, unique: str) -> None:
    secret = _create(cli, secured.admin_token, f"who-{unique}", "--role", "writer", "--scope", "acme")["token"]
    code, caller, err = cli("whoami", token=secret)
    assert code == 0, err
    assert caller == {
        "name": f"who-{unique}",
        "role": "writer",
        "scope": "acme",
        "expires": None,
        "authentication_enabled": True,
    }
    code, text, err = cli("whoami", token=secret, json_output=False)
    assert code == 0 and f"who-{unique}" in text and "writer" in text and "acme" in text


def test_a_revoked_token_is_refused_by_both_services_within_seconds(
    cli: Run, secured, unique: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"revocation " + unique.encode())
    with secured.registry(secured.admin_token) as admin:
        admin.push(checkpoint, f"acme/secure/revoked-{unique}")
    secret = _create(cli, secured.admin_token, f"revoked-{unique}", "--role", "reader", "--scope", "acme/secure")[
        "token"
    ]
    code, _, err = cli("pull", f"acme/secure/revoked-{unique}", str(tmp_path / "before"), token=secret)
    assert code == 0, err
    assert _blob_call(secured.blob.address, secret) is None

    code, revoked, err = cli("token", "revoke", f"revoked-{unique}", token=secured.admin_token)
    assert code == 0, err
    assert revoked["name"] == f"revoked-{unique}" and revoked["revoked"]

    assert _until_refused(lambda: _cli_code(cli, "ls", "acme/secure", token=secret)) == "UNAUTHENTICATED"
    assert _until_refused(lambda: _blob_call(secured.blob.address, secret)) == "UNAUTHENTICATED"
    pulled = _cli_code(cli, "pull", f"acme/secure/revoked-{unique}", str(tmp_path / "after"), token=secret)
    assert pulled == "UNAUTHENTICATED"
    code, rows, _ = cli("token", "ls", token=secured.admin_token)
    assert [r["revoked"] for r in rows if r["name"] == f"revoked-{unique}"] == [revoked["revoked"]]


def test_a_token_created_with_expires_stops_working(cli: Run, secured, unique: str) -> None:
    created = _create(
        cli, secured.admin_token, f"brief-{unique}", "--role", "reader", "--scope", "acme", "--expires", "1s"
    )
    assert {"name", "token", "role", "scope"} <= set(created) and created["expires"]
    assert _until_refused(lambda: _cli_code(cli, "whoami", token=created["token"])) == "UNAUTHENTICATED"
    assert _until_refused(lambda: _blob_call(secured.blob.address, created["token"])) == "UNAUTHENTICATED"


def test_token_create_rejects_a_bad_duration_and_a_missing_scope(
    cli: Run, secured, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("token", "create", f"d-{unique}", "--role", "reader", "--scope", "acme", "--expires", "soon")
    assert exit_info.value.code == 2
    # A missing --scope is a usage error too (exit 2, as for every missing or malformed option), found before
    # any call: nothing is created.
    with pytest.raises(SystemExit) as exit_info:
        cli("token", "create", f"d-{unique}", "--role", "reader", token=secured.admin_token)
    assert exit_info.value.code == 2
    assert "--scope" in capsys.readouterr().err
    code, rows, _ = cli("token", "ls", token=secured.admin_token)
    assert code == 0 and f"d-{unique}" not in {row["name"] for row in rows}


def test_login_writes_a_private_profile_that_later_commands_use(
    cli: Run, secured, unique: str, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _create(cli, secured.admin_token, f"login-{unique}", "--role", "reader", "--scope", "acme/secure")["token"]
    code, logged_in, err = cli("login", "--token", secret, "--entity", "acme", "--project", "secure")
    assert code == 0, err
    assert logged_in["profile"] == "default" and logged_in["name"] == f"login-{unique}"
    assert secret not in json.dumps(logged_in)
    path = config_dir / "profiles.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())["profiles"]["default"]
    assert saved == {
        "metadata_addr": secured.metadata.address,
        "blob_addr": secured.blob.address,
        "entity": "acme",
        "project": "secure",
        "token": secret,
    }

    # No MREG_TOKEN and no addresses in the environment: the profile gives them.
    monkeypatch.delenv("MREG_METADATA_ADDR")
    monkeypatch.delenv("MREG_BLOB_ADDR")
    code, caller, err = cli("whoami")
    assert code == 0, err
    assert caller["name"] == f"login-{unique}"
    code, _, err = cli("ls")  # entity and project from the profile
    assert code == 0, err
    with Registry.connect() as registry:
        assert registry.whoami().token.name == f"login-{unique}"
        assert (registry.entity, registry.project) == ("acme", "secure")
    with Registry.from_profile() as registry:
        assert registry.whoami().token.name == f"login-{unique}"

    code, removed, err = cli("logout")
    assert code == 0 and removed == {"profile": "default", "removed": True}, err
    assert json.loads(path.read_text())["profiles"] == {}
    code, _, err = cli("logout")
    assert code == 1 and "NOT_FOUND" in err


def test_login_reads_a_piped_token_from_stdin_into_a_named_profile(
    cli: Run, secured, unique: str, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _create(cli, secured.admin_token, f"piped-{unique}", "--role", "reader", "--scope", "acme")["token"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(secret + "\n"))
    code, logged_in, err = cli("login", "--profile", "ci")
    assert code == 0, err
    assert logged_in["profile"] == "ci"
    assert json.loads((config_dir / "profiles.json").read_text())["profiles"]["ci"]["token"] == secret

    # Without a default profile nothing is used; --profile or MREG_PROFILE picks "ci".
    code, _, err = cli("whoami")
    assert code == 1 and "UNAUTHENTICATED" in err, err
    code, caller, err = cli("whoami", "--profile", "ci")
    assert code == 0 and caller["name"] == f"piped-{unique}", err
    monkeypatch.setenv("MREG_PROFILE", "ci")
    code, caller, err = cli("whoami")
    assert code == 0 and caller["name"] == f"piped-{unique}", err
    monkeypatch.setenv("MREG_PROFILE", "nowhere")
    code, _, err = cli("whoami")
    assert code == 1 and "NOT_FOUND" in err and "nowhere" in err
    code, caller, err = cli("whoami", "--profile", "ci")  # the flag beats MREG_PROFILE
    assert code == 0 and caller["name"] == f"piped-{unique}", err


def test_login_with_a_wrong_token_writes_nothing(cli: Run, secured, unique: str, config_dir: Path) -> None:
    wrong = f"mreg_wrong_{unique}_secret"
    code, _, err = cli("login", "--token", wrong)
    assert code == 1
    assert err.count("\n") == 1 and json.loads(err)["code"] == "UNAUTHENTICATED", err
    assert wrong not in err
    assert not (config_dir / "profiles.json").exists()


def test_environment_takes_precedence_over_the_profile(
    cli: Run, secured, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile_token = _create(cli, secured.admin_token, f"prof-{unique}", "--role", "reader", "--scope", "acme")["token"]
    env_token = _create(cli, secured.admin_token, f"env-{unique}", "--role", "writer", "--scope", "acme")["token"]
    code, _, err = cli("login", "--token", profile_token)
    assert code == 0, err

    code, caller, err = cli("whoami", token=env_token)
    assert code == 0 and caller["name"] == f"env-{unique}", err
    code, caller, err = cli("whoami")
    assert code == 0 and caller["name"] == f"prof-{unique}", err

    # An address from the environment beats the profile's; a flag beats the environment.
    monkeypatch.setenv("MREG_METADATA_ADDR", "127.0.0.1:1")
    code, _, err = cli("whoami")
    assert code == 1 and "UNAVAILABLE" in err
    code, caller, err = cli("whoami", "--metadata-addr", secured.metadata.address)
    assert code == 0 and caller["name"] == f"prof-{unique}", err


def test_a_command_without_a_token_says_how_a_cli_user_gives_one(cli: Run, tmp_path: Path, unique: str) -> None:
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(f"no token {unique}".encode())
    # ls asks the metadata service first, push the blob service (FindMissingBlobs): both answer TOKEN_MISSING.
    for args in (("ls", "acme/secure"), ("push", str(checkpoint), f"acme/secure/no-token-{unique}")):
        code, _, err = cli(*args, json_output=False)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("mreg: error: UNAUTHENTICATED: "), err
        assert "MREG_TOKEN" in err and "mreg login" in err, err
        assert "authorization" not in err and "header" not in err, err  # what an API caller sends, not a CLI user
    code, _, err = cli("ls", "acme/secure")
    error = json.loads(err)
    assert (code, error["code"], error["reason"]) == (1, "UNAUTHENTICATED", "TOKEN_MISSING")
    assert "MREG_TOKEN" in error["message"] and "mreg login" in error["message"]


def test_errors_and_help_never_show_the_token(
    cli: Run, secured, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = f"mreg_unknown_{unique}_secret"
    for args in (("ls", "acme/secure"), ("whoami",), ("token", "ls"), ("pull", "acme/secure/x", "out")):
        code, _, err = cli(*args, token=unknown)
        assert code == 1 and "UNAUTHENTICATED" in err and unknown not in err, err
    code, _, err = cli("token", "revoke", f"nobody-{unique}", token=secured.admin_token)
    assert code == 1 and "NOT_FOUND" in err and secured.admin_token not in err
    code, _, err = cli("ls", "acme/secure", "--metadata-addr", "127.0.0.1:1", token=secured.admin_token)
    assert code == 1 and "UNAVAILABLE" in err and secured.admin_token not in err
    for command in (["login"], ["token", "create"], ["whoami"], []):
        with pytest.raises(SystemExit):
            cli(*command, "--help", token=secured.admin_token, json_output=False)
        captured = capsys.readouterr()
        assert secured.admin_token not in captured.out + captured.err


def test_ls_of_a_project_works_for_a_project_scoped_token_with_a_default_entity_set(
    cli: Run, secured, unique: str, monkeypatch
) -> None:
    # With MREG_ENTITY=acme, "acme/secure" could also name the artifact acme/acme/secure, which this
    # token may not read: that reading must not hide the project the token may list.
    created = _create(cli, secured.admin_token, f"scoped-{unique}", "--role", "reader", "--scope", "acme/secure")
    secret = created["token"]
    monkeypatch.setenv("MREG_ENTITY", "acme")
    code, rows, err = cli("ls", "acme/secure", token=secret)
    assert code == 0, err
    assert isinstance(rows, list)
    # A project the token may not read is still refused, by the project listing itself.
    assert _cli_code(cli, "ls", "acme/other", token=secret) == "PERMISSION_DENIED"
