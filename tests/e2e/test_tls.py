"""Transport security end to end: TLS and mutual TLS on both services and between them, the client and
CLI credentials, `mreg serve` with TLS, and the loopback rule of the service entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import Credentials, MregError, Registry
from mreg.client.cli import main as cli_main
from tests.certificates import Pki, credentials_of
from tests.helpers import assert_same_tree, make_checkpoint
from tests.processes import free_port, mreg_serve

# TLS is the transport's: the metadata database plays no part.
pytestmark = pytest.mark.any_database

CLIENT_ENV = ("MREG_CA_CERT", "MREG_CLIENT_CERT", "MREG_CLIENT_KEY", "MREG_TLS", "MREG_ENTITY", "MREG_PROJECT")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs `mreg ARGS` in-process against ``addresses``; returns (exit code, stdout, stderr)."""
    for variable in CLIENT_ENV:
        monkeypatch.delenv(variable, raising=False)

    def run(addresses: dict[str, str], *args: str) -> tuple[int, str, str]:
        for key, value in addresses.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = cli_main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _refusal(call) -> MregError:  # type: ignore[no-untyped-def]
    with pytest.raises(MregError) as error:
        call()
    return error.value


def test_push_and_pull_round_trip_over_tls_on_both_services_and_between_them(tls_servers, tmp_path: Path, unique):
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=2 << 20)
    with tls_servers.registry(credentials_of(tls_servers.pki.ca_cert)) as registry:
        # The commit succeeds only if the metadata service reached the TLS-only blob service over TLS.
        pushed = registry.push(str(checkpoint), f"tls-{unique}")
        registry.pull(pushed.version.name, str(tmp_path / "out"))

    assert pushed.version.name == f"acme/vision/tls-{unique}:v0"
    assert_same_tree(checkpoint, tmp_path / "out")


def test_a_client_trusting_another_ca_is_refused_at_the_handshake(tls_servers) -> None:
    with tls_servers.registry(credentials_of(tls_servers.pki.other_ca_cert)) as registry:
        error = _refusal(lambda: registry.resolve("acme/vision/anything"))

    assert error.code == "UNAVAILABLE"
    assert "handshake" in error.message.lower() or "ssl" in error.message.lower(), error.message
    # What to change, not only what failed.
    assert "not signed by a CA this client trusts" in error.message and "--ca-cert" in error.message, error.message


def _refusal_by_tls_server(cert: Path, key: Path, ca_cert: Path, store: Path) -> MregError:
    """What a client trusting ``ca_cert`` is told by a TLS service presenting ``cert``."""
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(store), tls_cert=str(cert), tls_key=str(key)))
    try:
        with Registry.connect(blobs.address, blobs.address, credentials=credentials_of(ca_cert)) as registry:
            return _refusal(lambda: registry.resolve("acme/vision/anything"))
    finally:
        blobs.stop(grace=None)


def test_a_server_certificate_past_its_validity_is_refused_saying_it_expired(pki: Pki, tmp_path: Path) -> None:
    error = _refusal_by_tls_server(pki.expired_server_cert, pki.expired_server_key, pki.ca_cert, tmp_path / "blobs")

    assert error.code == "UNAVAILABLE"
    # Signed by the trusted CA: the hint is about its dates, not about which CA to trust.
    assert "has expired" in error.message and "--ca-cert" not in error.message, error.message


def test_a_server_certificate_for_another_name_is_refused_saying_so(pki: Pki, tmp_path: Path) -> None:
    error = _refusal_by_tls_server(pki.misnamed_server_cert, pki.misnamed_server_key, pki.ca_cert, tmp_path / "blobs")

    assert error.code == "UNAVAILABLE"
    # Signed by the trusted CA, for elsewhere.example: the hint is about the name dialled.
    assert "does not name the host this client dialled" in error.message, error.message
    assert "--ca-cert" not in error.message, error.message


def test_a_tls_client_of_a_plaintext_server_is_told_it_does_not_speak_tls(servers, pki: Pki) -> None:
    with Registry.connect(servers.metadata.address, servers.blob.address, credentials=credentials_of(pki.ca_cert)) as (
        registry
    ):
        error = _refusal(lambda: registry.resolve("acme/vision/anything"))

    assert error.code == "UNAVAILABLE"
    assert "does not speak TLS" in error.message, error.message


def test_mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with(mtls_servers) -> None:
    pki = mtls_servers.pki
    with mtls_servers.registry(credentials_of(pki.ca_cert)) as registry:
        # The client's half of the handshake succeeds; the server then closes the connection.
        without = _refusal(lambda: registry.resolve("acme/vision/anything"))
    with mtls_servers.registry(credentials_of(pki.ca_cert, pki.client_cert, pki.client_key)) as registry:
        with_certificate = _refusal(lambda: registry.resolve("acme/vision/anything"))

    assert without.code == "UNAVAILABLE"
    assert with_certificate.code == "NOT_FOUND", "the same server answers a caller with a certificate"


def test_mutual_tls_carries_a_push_and_pull_including_the_metadata_services_own_certificate(
    mtls_servers, tmp_path: Path, unique
) -> None:
    pki = mtls_servers.pki
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1 << 20)
    with mtls_servers.registry(credentials_of(pki.ca_cert, pki.client_cert, pki.client_key)) as registry:
        pushed = registry.push(str(checkpoint), f"mtls-{unique}")
        registry.pull(pushed.version.name, str(tmp_path / "out"))

    assert_same_tree(checkpoint, tmp_path / "out")


def test_cli_with_ca_cert_pushes_and_pulls_over_tls(tls_servers, cli, tmp_path: Path, unique) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1000)
    ca = str(tls_servers.pki.ca_cert)

    code, out, err = cli(
        tls_servers.env(), "push", str(checkpoint), f"acme/vision/cli-tls-{unique}", "--ca-cert", ca, "--json"
    )
    assert code == 0, err
    ref = json.loads(out)["ref"]
    code, _, err = cli(tls_servers.env(), "pull", ref, str(tmp_path / "out"), "--ca-cert", ca, "--json")
    assert code == 0, err
    assert_same_tree(checkpoint, tmp_path / "out")


def test_cli_flags_override_the_client_environment(tls_servers, cli, monkeypatch) -> None:
    monkeypatch.setenv("MREG_CA_CERT", str(tls_servers.pki.other_ca_cert))

    # Only the flag's CA can verify the servers, so success shows the flag won over the environment.
    code, out, err = cli(tls_servers.env(), "ls", "acme/vision", "--ca-cert", str(tls_servers.pki.ca_cert), "--json")

    assert code == 0, err
    assert isinstance(json.loads(out), list)


def test_cli_trusting_the_wrong_ca_fails_in_one_line(tls_servers, cli) -> None:
    code, _, err = cli(tls_servers.env(), "ls", "acme/vision", "--ca-cert", str(tls_servers.pki.other_ca_cert))

    assert code == 1
    assert err.startswith("mreg: error: UNAVAILABLE: ") and err.count("\n") == 1, err


def test_mreg_serve_with_mutual_tls_serves_the_cli_with_a_client_certificate(
    pki: Pki, cli, tmp_path: Path, unique
) -> None:
    """`mreg serve` wires TLS into both services and the metadata service's channel to the blob service."""
    metadata_port, blob_port = free_port(), free_port()
    tls_files = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    with mreg_serve(
        tmp_path / "data", metadata_port, blob_port, *tls_files, "--tls-client-ca", str(pki.ca_cert)
    ) as banner:
        assert any(f"127.0.0.1:{metadata_port} (TLS)" in line for line in banner), banner
        addresses = {"MREG_METADATA_ADDR": f"127.0.0.1:{metadata_port}", "MREG_BLOB_ADDR": f"127.0.0.1:{blob_port}"}
        tls = [
            "--ca-cert",
            str(pki.ca_cert),
            "--client-cert",
            str(pki.client_cert),
            "--client-key",
            str(pki.client_key),
        ]
        checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1000)

        code, out, err = cli(addresses, "push", str(checkpoint), f"acme/vision/served-{unique}", *tls, "--json")
        assert code == 0, err
        code, _, err = cli(addresses, "pull", json.loads(out)["ref"], str(tmp_path / "out"), *tls, "--json")
        assert code == 0, err
        assert_same_tree(checkpoint, tmp_path / "out")


@pytest.mark.parametrize(
    ("module", "args", "insecure_env"),
    [
        ("mreg.metadata_service", ["--database-url", "sqlite:///{tmp}/metadata.db"], "MREG_METADATA_INSECURE"),
        ("mreg.blob_service", ["--store", "{tmp}/blobs"], "MREG_BLOB_INSECURE"),
    ],
)
def test_a_service_refuses_a_non_loopback_address_without_insecure(
    module: str, args: list[str], insecure_env: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--listen", "0.0.0.0:0", *[a.format(tmp=tmp_path) for a in args]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"python -m {module}: error: refusing to listen on 0.0.0.0:0"), result.stderr
    assert "--insecure" in result.stderr and insecure_env in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be created before the refusal"


def test_mreg_serve_refuses_a_non_loopback_host_without_insecure(cli, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit:
        cli({}, "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "data"))

    assert exit.value.code == 2
    assert not (tmp_path / "data").exists()


def test_a_service_with_half_a_key_pair_exits_2_naming_the_missing_flag(pki: Pki, tmp_path: Path) -> None:
    listen = ["--listen", "127.0.0.1:0", "--store", str(tmp_path / "b")]
    result = subprocess.run(
        [sys.executable, "-m", "mreg.blob_service", *listen, "--tls-cert", str(pki.server_cert)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr


def test_a_writer_token_pushes_and_pulls_over_mutual_tls_and_a_reader_token_cannot_push(
    secured_mtls_servers, tmp_path: Path
) -> None:
    servers = secured_mtls_servers
    pki = servers.pki

    def credentials(token: str) -> Credentials:
        return Credentials(
            token=token,
            ca_cert=pki.ca_cert.read_bytes(),
            client_cert=pki.client_cert.read_bytes(),
            client_key=pki.client_key.read_bytes(),
        )

    writer = servers.create_token("mtls-writer", "writer", "acme/vision")
    reader = servers.create_token("mtls-reader", "reader", "acme/vision")
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=2 << 20)
    with servers.registry(credentials(writer)) as registry:
        pushed = registry.push(checkpoint, "secured-over-mtls")
    with servers.registry(credentials(reader)) as registry:
        registry.pull(pushed.version.name, tmp_path / "out")
        with pytest.raises(MregError) as refused:
            registry.push(make_checkpoint(tmp_path / "other", large_bytes=1000), "secured-over-mtls")
    assert_same_tree(checkpoint, tmp_path / "out")
    assert (refused.value.code, refused.value.reason) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
