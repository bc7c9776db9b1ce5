"""The loopback rule and the TLS settings of both services, without binding anything."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from mreg.blob_service import config as blob_config
from mreg.metadata_service import config as metadata_config
from mreg.server_runtime.metrics import check_metrics_address
from mreg.server_runtime.transport import (
    TransportConfigError,
    channel_credentials,
    check_listen_address,
    is_loopback,
    server_credentials,
)

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:50051",
        "127.1.2.3:0",
        "localhost:50051",
        "LOCALHOST:1",
        "[::1]:50051",
        "[::ffff:127.0.0.1]:1",
        "unix:/s",
    ],
)
def test_loopback_addresses_are_recognised(listen: str) -> None:
    assert is_loopback(listen)


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.5:50051", "registry.example.com:50051", "[fe80::1]:1"]
)
def test_every_other_address_is_not_loopback(listen: str) -> None:
    assert not is_loopback(listen)


def test_loopback_needs_neither_authentication_nor_insecure_and_logs_nothing(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen_address("127.0.0.1:50051", authenticated=False, insecure=False, tls=False)

    assert caplog.records == []


def test_a_non_loopback_address_without_authentication_is_refused_naming_insecure() -> None:
    with pytest.raises(TransportConfigError) as refusal:
        check_listen_address(
            "0.0.0.0:50051",
            authenticated=False,
            insecure=False,
            tls=True,
            insecure_flag="--insecure (env MREG_BLOB_INSECURE=1)",
        )

    assert "0.0.0.0:50051" in str(refusal.value)
    assert "--insecure (env MREG_BLOB_INSECURE=1)" in str(refusal.value)


def test_insecure_allows_it_with_a_warning_that_callers_and_traffic_are_unauthenticated(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen_address("0.0.0.0:50051", authenticated=False, insecure=True, tls=False)

    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert "callers are unauthenticated" in warning.getMessage()
    assert "traffic is unencrypted" in warning.getMessage()


def test_insecure_with_tls_still_warns_that_callers_are_unauthenticated(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen_address("[::]:50051", authenticated=False, insecure=True, tls=True)

    (warning,) = caplog.records
    assert "callers are unauthenticated" in warning.getMessage()
    assert "unencrypted" not in warning.getMessage()


def test_an_authenticated_service_without_tls_is_allowed_with_a_plaintext_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen_address("10.0.0.5:50051", authenticated=True, insecure=False, tls=False)

    (warning,) = caplog.records
    assert "without TLS" in warning.getMessage()


def test_an_authenticated_service_with_tls_is_allowed_silently(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen_address("10.0.0.5:50051", authenticated=True, insecure=False, tls=True)

    assert caplog.records == []


def test_no_certificate_means_plaintext() -> None:
    assert server_credentials(cert="", key="", client_ca="") is None
    assert channel_credentials(tls=False, ca_cert="", client_cert="", client_key="", flag_prefix="--blob") is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cert": "c.pem", "key": "", "client_ca": ""}, "--tls-cert and --tls-key go together"),
        ({"cert": "", "key": "k.pem", "client_ca": ""}, "--tls-cert and --tls-key go together"),
        ({"cert": "", "key": "", "client_ca": "ca.pem"}, "--tls-client-ca needs TLS"),
        ({"cert": "missing.pem", "key": "k.pem", "client_ca": ""}, "--tls-cert missing.pem: cannot read it"),
        ({"cert": "garbage.pem", "key": "k.pem", "client_ca": ""}, "--tls-cert garbage.pem: not a PEM file"),
    ],
)
def test_incomplete_or_unreadable_server_tls_settings_are_refused(
    files: dict[str, str], message: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.pem").write_bytes(PEM)
    (tmp_path / "k.pem").write_bytes(PEM)
    (tmp_path / "garbage.pem").write_bytes(b"not a certificate")

    with pytest.raises(TransportConfigError, match=message):
        server_credentials(**files)


def test_a_client_certificate_for_the_blob_service_needs_tls_and_its_key() -> None:
    with pytest.raises(TransportConfigError, match="--blob-client-cert and --blob-client-key go together"):
        channel_credentials(tls=True, ca_cert="", client_cert="c.pem", client_key="", flag_prefix="--blob")
    with pytest.raises(TransportConfigError, match="--blob-client-cert needs TLS"):
        channel_credentials(tls=False, ca_cert="", client_cert="c.pem", client_key="k.pem", flag_prefix="--blob")


def _parse(add_arguments, argv: list[str]) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_tls_and_insecure_settings_come_from_flags_or_the_services_environment_variables(monkeypatch) -> None:
    monkeypatch.setenv("MREG_METADATA_TLS_CERT", "/etc/mreg/metadata.pem")
    monkeypatch.setenv("MREG_METADATA_INSECURE", "1")
    monkeypatch.setenv("MREG_METADATA_BLOB_CA_CERT", "/etc/mreg/ca.pem")
    monkeypatch.setenv("MREG_BLOB_TLS_CLIENT_CA", "/etc/mreg/clients.pem")
    monkeypatch.setenv("MREG_BLOB_INSECURE", "0")

    metadata = metadata_config.from_args(_parse(metadata_config.add_arguments, ["--tls-key", "k.pem"]))
    blob = blob_config.from_args(_parse(blob_config.add_arguments, ["--insecure"]))
    plain = blob_config.from_args(_parse(blob_config.add_arguments, []))

    assert (metadata.tls_cert, metadata.tls_key, metadata.insecure) == ("/etc/mreg/metadata.pem", "k.pem", True)
    assert (metadata.blob_ca_cert, metadata.blob_tls) == ("/etc/mreg/ca.pem", False)
    assert (blob.tls_client_ca, blob.insecure) == ("/etc/mreg/clients.pem", True)
    assert plain.insecure is False, "MREG_BLOB_INSECURE=0 does not turn the rule off"


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "localhost:0", "[::1]:9464"])
def test_the_metrics_endpoint_serves_on_loopback_without_further_ado(listen: str) -> None:
    check_metrics_address(listen, insecure=False)


def test_the_metrics_endpoint_elsewhere_needs_insecure_and_then_warns(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TransportConfigError, match=r"refusing to serve metrics on 0\.0\.0\.0:9464.*--insecure"):
        check_metrics_address("0.0.0.0:9464", insecure=False)
    with caplog.at_level(logging.WARNING):
        check_metrics_address("0.0.0.0:9464", insecure=True)
    assert "no authentication" in caplog.text


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:http"])
def test_a_metrics_address_without_a_port_is_refused(listen: str) -> None:
    with pytest.raises(TransportConfigError, match="HOST:PORT"):
        check_metrics_address(listen, insecure=True)
