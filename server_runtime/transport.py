"""Transport security both services share: TLS credentials from PEM files, and the loopback rule.

:func:`server_credentials` turns ``--tls-cert``/``--tls-key``/``--tls-client-ca`` into gRPC server
credentials (mutual TLS when a client CA is given); :func:`channel_credentials` does the same for a
service's own outgoing channel (the metadata service's connection to the blob service).

:func:`check_listen_address` is the loopback rule: a service listens on a network address other than
loopback only when callers must authenticate, or when the operator said ``--insecure``; either way it
warns about what still travels unprotected. Both raise :class:`TransportConfigError`, which the
``python -m`` entry points (``runtime.run_main``) turn into one line on stderr and exit status 2; an
address that cannot be bound, or anything else a service cannot start without, is a :class:`StartupError`
(one line, exit status 1).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TransportConfigError(Exception):
    """A listen address or TLS setting the service refuses to start with; the message names the fix."""


class StartupError(Exception):
    """What a service cannot start without is not there: its address is in use, its database unreachable.
    The message says which, in one line."""


def check_port(listen: str, flag: str, example: str = "127.0.0.1:50051") -> None:
    """Refuses a HOST:PORT whose port is not a number from 0 (any free one) to 65535: gRPC would bind a larger
    one modulo 65536, a port nobody asked for. Unix sockets have no port."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return
    port = listen.rpartition(":")[2] if not listen.endswith("]") else ""
    if not port.isdigit() or int(port) > 65535:
        raise TransportConfigError(
            f"{flag} {listen}: give HOST:PORT with a port from 0 to 65535 (0 picks a free one), e.g. {example}"
        )


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise TransportConfigError(f"{flag} {path}: cannot read it ({e.strerror or e})") from e
    if b"-----BEGIN " not in data:
        raise TransportConfigError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def server_credentials(
    *, cert: str, key: str, client_ca: str, flag_prefix: str = "--tls"
) -> grpc.ServerCredentials | None:
    """Server credentials from PEM files, or None (plaintext) when no certificate is configured.

    Args:
        cert: the server's certificate chain (PEM), "" for none.
        key: its private key (PEM), "" for none; required with ``cert`` and only with it.
        client_ca: CA certificates (PEM) that client certificates must chain to; when given, every
            caller must present a valid client certificate (mutual TLS). Needs ``cert``.
        flag_prefix: how the flags are spelt in error messages.

    Raises:
        TransportConfigError: half a key pair, a client CA without TLS, or an unreadable file.
    """
    if bool(cert) != bool(key):
        raise TransportConfigError(f"{flag_prefix}-cert and {flag_prefix}-key go together: give both or neither")
    if not cert:
        if client_ca:
            raise TransportConfigError(
                f"{flag_prefix}-client-ca needs TLS: give {flag_prefix}-cert and {flag_prefix}-key too"
            )
        return None
    chain = _read_pem(cert, f"{flag_prefix}-cert")
    private_key = _read_pem(key, f"{flag_prefix}-key")
    roots = _read_pem(client_ca, f"{flag_prefix}-client-ca") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def describe(*, cert: str, client_ca: str) -> str:
    """How a server configured with these files serves, for its start-up log line."""
    if not cert:
        return "plaintext"
    return "mutual TLS" if client_ca else "TLS"


def channel_credentials(
    *, tls: bool, ca_cert: str, client_cert: str, client_key: str, flag_prefix: str
) -> grpc.ChannelCredentials | None:
    """Credentials of an outgoing channel, or None (plaintext) when TLS is not configured.

    TLS is on when ``tls`` is set (the system's trust roots) or a ``ca_cert`` is given (that PEM
    alone is trusted); ``client_cert``/``client_key`` add a client certificate for mutual TLS.

    Raises:
        TransportConfigError: half a key pair, a client certificate without TLS, or an unreadable file.
    """
    if bool(client_cert) != bool(client_key):
        raise TransportConfigError(
            f"{flag_prefix}-client-cert and {flag_prefix}-client-key go together: give both or neither"
        )
    if not (tls or ca_cert):
        if client_cert:
            raise TransportConfigError(
                f"{flag_prefix}-client-cert needs TLS: give {flag_prefix}-ca-cert or {flag_prefix}-tls too"
            )
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca_cert, f"{flag_prefix}-ca-cert") if ca_cert else None,
        private_key=_read_pem(client_key, f"{flag_prefix}-client-key") if client_key else None,
        certificate_chain=_read_pem(client_cert, f"{flag_prefix}-client-cert") if client_cert else None,
    )


def listen_host(listen: str) -> str:
    """The host part of a gRPC listen address: ``[::1]:50051`` -> ``::1``, ``:50051`` -> ``""``."""
    if listen.startswith("["):
        return listen[1 : listen.find("]")] if "]" in listen else listen[1:]
    host, sep, _port = listen.rpartition(":")
    return host if sep else listen


def is_loopback(listen: str) -> bool:
    """Whether ``listen`` binds only loopback: 127.0.0.0/8, ::1, ``localhost``, or a Unix socket."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True  # reachable only from this machine, through the file system
    host = listen_host(listen)
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost, or "" (every interface)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_listen_address(
    listen: str, *, authenticated: bool, insecure: bool, tls: bool, insecure_flag: str = "--insecure"
) -> None:
    """The loopback rule: refuses a non-loopback ``listen`` unless callers authenticate or ``insecure``.

    On loopback nothing is checked. Elsewhere, ``insecure`` allows it with a warning that callers are
    not authenticated (and, without TLS, that traffic is plaintext); an authenticated service without
    TLS is allowed with a warning that credentials and data cross the network in plaintext.

    Args:
        authenticated: every call must carry valid credentials (the service runs with authentication).
        insecure: the operator accepts unauthenticated callers on the network.
        tls: the service serves TLS.
        insecure_flag: how to say ``--insecure`` (with its environment variable) in the refusal.

    Raises:
        TransportConfigError: a port that is not a number from 0 to 65535, or a non-loopback address without
            authentication or ``insecure``.
    """
    check_port(listen, "--listen")
    if is_loopback(listen):
        return
    if not authenticated and not insecure:
        raise TransportConfigError(
            f"refusing to listen on {listen}, which is not a loopback address, without authentication: "
            f"callers could not be identified. Listen on 127.0.0.1, or pass {insecure_flag} to serve "
            "unauthenticated callers anyway"
        )
    if not authenticated:
        log.warning(
            "listening on %s with --insecure: callers are unauthenticated (anyone who can reach this address "
            "can read and change everything)%s",
            listen,
            "" if tls else " and traffic is unencrypted (no --tls-cert)",
        )
    elif not tls:
        log.warning(
            "listening on %s without TLS: credentials and data cross the network unencrypted; "
            "give --tls-cert and --tls-key",
            listen,
        )
