"""The client's gRPC channels and their one retry policy, declared here and nowhere else.

Transport retries are gRPC's own (service config ``retryPolicy``, enabled with
``grpc.enable_retries``), not loops at call sites. Every unary RPC of both services is
retried on UNAVAILABLE (the server is restarting, or not up yet, or a connection broke
before the response), up to 5 attempts with exponential backoff. That is safe because:

* Blob RPCs are idempotent: content-addressed writes of the same bytes, reads, lookups.
  Only Read also retries RESOURCE_EXHAUSTED, which for Read means nothing but "the
  server is at its stream limit" (it never writes, so it cannot be a full store).
  BatchUpdateBlobs and Write do not: there RESOURCE_EXHAUSTED may mean a full store.
* Metadata reads change nothing, and every mutating metadata RPC carries a request_id
  (client.registry sets one per logical call before the first attempt, so each retry
  sends the same id): a retry after a lost response returns the first result instead of
  acting twice, and a request that failed recorded nothing (see "Request ids and
  retries" in metadata_service.proto). RESOURCE_EXHAUSTED from the metadata service
  means its disk is full, which a retry does not fix.

What stays hand-written, because it is a protocol rather than a transport retry:
resuming a broken Write from QueryWriteStatus's committed_size or a broken Read from
the bytes received (client.transfer), and re-uploading content a commit refused with
MISSING_BLOB before committing again (client.registry).
"""

from __future__ import annotations

import json
import logging
import socket
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import grpc

from mreg.client.errors import MregError

log = logging.getLogger(__name__)

METADATA_SERVICE = "mreg.metadata.v1.MetadataService"
BLOB_SERVICE = "mreg.blob.v1.BlobService"

# The largest message this client receives or sends. Batch sizes are kept under it.
MAX_MESSAGE_BYTES = 256 << 20

_BACKOFF = {
    "maxAttempts": 5,  # gRPC's own ceiling
    "initialBackoff": "0.5s",
    "maxBackoff": "4s",
    "backoffMultiplier": 2,
}


def _policy(*codes: str) -> dict[str, Any]:
    return {**_BACKOFF, "retryableStatusCodes": list(codes)}


SERVICE_CONFIG: dict[str, Any] = {
    # Spread calls over every address the target resolves to (several replicas, or a DNS name
    # with one record per replica); a replica whose connection drops is skipped at once. No
    # healthCheckConfig: its Health.Watch stream per client would hold one of each server's
    # stream slots (and threads) for as long as the client lives.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {"name": [{"service": METADATA_SERVICE}], "retryPolicy": _policy("UNAVAILABLE")},
        {
            "name": [{"service": BLOB_SERVICE, "method": "Read"}],
            "retryPolicy": _policy("UNAVAILABLE", "RESOURCE_EXHAUSTED"),
        },
        {
            # Client-streaming: gRPC replays a Write only while its messages fit the retry
            # buffer, and RESOURCE_EXHAUSTED may mean a full store; client.transfer resumes it.
            "name": [{"service": BLOB_SERVICE, "method": "Write"}],
        },
        {"name": [{"service": BLOB_SERVICE}], "retryPolicy": _policy("UNAVAILABLE")},
    ],
}

# A replica that hangs (a frozen process, a stalled machine, a network partition) keeps its connections
# open: only an unanswered ping tells it from a busy one. The client pings a connection silent for this
# long and drops it when the answer takes as long again; its calls then fail over (UNAVAILABLE is retried).
KEEPALIVE_SECONDS = 10.0

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # Reconnect soon after a refused connection, so retries find a restarted server.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class Credentials:
    """How a client proves who it is and checks whom it talks to.

    ``token`` travels as ``authorization: Bearer <token>`` on every call (never logged).
    TLS is used when ``tls`` is set or a ``ca_cert`` is given (PEM bytes; the system's
    roots otherwise); ``client_cert``/``client_key`` add a client certificate (mutual TLS).
    """

    token: str | None = None
    tls: bool = False
    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Credentials:
        """MREG_TOKEN, MREG_TLS (1/true), and the PEM files MREG_CA_CERT, MREG_CLIENT_CERT, MREG_CLIENT_KEY.

        The environment alone (no config file, no profile); client.settings parses and checks them.
        """
        from mreg.client.settings import ClientSettings  # settings builds Credentials

        return ClientSettings.load(environ=environ, files=False).credentials()

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_cert is not None or self.client_cert is not None

    def __repr__(self) -> str:  # the token must never reach a log line or a traceback
        return f"Credentials(token={'<set>' if self.token else None}, tls={self.uses_tls})"


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call, on secure and loopback channels alike."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        return _CallDetails(
            details.method,
            details.timeout,
            (*metadata, self._header),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


class _CallDetails(
    namedtuple("_CallDetails", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]),
    grpc.ClientCallDetails,
):
    pass


def channel_target(address: str) -> tuple[str, str]:
    """The gRPC target for ``address`` and the host name TLS checks the certificates against.

    ``address`` is one ``HOST:PORT`` (a DNS name resolving to several replicas is balanced
    over all of them), a gRPC target URI (``dns:///name:port``, ``ipv4:a:p,b:p``, ...) used
    as it is once its ports are checked, or several ``HOST:PORT`` separated by commas: those are resolved once, here,
    into one ``ipv4:``/``ipv6:`` target, so calls fail over between them in milliseconds.
    A name that does not resolve is left out (with a warning) while another does.

    Raises:
        MregError: INVALID_ARGUMENT for an entry that is not HOST:PORT (a port empty or not a number) or a
            port outside 1-65535,
            UNAVAILABLE if no name of a list resolves.
    """
    address = address.strip()
    scheme = address.partition(":")[0].lower()
    if scheme in _TARGET_SCHEMES or "://" in address:
        return _checked_uri(address, scheme)
    if "," not in address:
        _check_endpoint(address, address)
        return address, _host_of(address)
    endpoints = [part.strip() for part in address.split(",") if part.strip()]
    resolved: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    unresolved: list[str] = []
    for endpoint in endpoints:
        host, separator, port = endpoint.rpartition(":")
        if not separator or not port.isdigit() or not host:
            raise MregError(
                "INVALID_ARGUMENT", f"{endpoint!r} in {address!r} is not HOST:PORT (several are separated by commas)"
            )
        _check_port(port, address)
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            unresolved.append(f"{host!r} ({e})")
            continue
        for family, _, _, _, sockaddr in infos:
            if family in resolved and f"{sockaddr[0]}:{port}" not in resolved[family]:
                resolved[family].append(f"{sockaddr[0]}:{port}")
    if not resolved[socket.AF_INET] and not resolved[socket.AF_INET6]:
        raise MregError("UNAVAILABLE", f"cannot resolve any replica of {address!r}: {', '.join(unresolved)}")
    if unresolved:
        log.warning("left out of %r, as they do not resolve: %s", address, ", ".join(unresolved))
    first_host = _host_of(endpoints[0])
    if not resolved[socket.AF_INET6]:
        return f"ipv4:{','.join(resolved[socket.AF_INET])}", first_host
    # A static target takes one family: IPv4 replicas join IPv6 ones as IPv4-mapped addresses.
    mapped = ["[::ffff:{}]:{}".format(*ip_port.rsplit(":", 1)) for ip_port in resolved[socket.AF_INET]]
    v6 = ["[{}]:{}".format(*ip_port.rsplit(":", 1)) for ip_port in resolved[socket.AF_INET6]]
    return f"ipv6:{','.join([*mapped, *v6])}", first_host


# gRPC name resolvers whose targets are taken as they are: "ipv4:a:p,b:p" must not be read as a comma list.
_TARGET_SCHEMES = {"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"}


def _checked_uri(address: str, scheme: str) -> tuple[str, str]:
    """A gRPC target URI, as it is, once its ports are checked (gRPC takes a port above 65535 modulo 65536)."""
    if scheme.startswith("unix") or scheme == "vsock":
        return address, "localhost"
    # dns:///name:port, dns://resolver/name:port, ipv4:a:p,b:p, ipv6:[a]:p,[b]:p
    listed = address.rsplit("/", 1)[-1] if "/" in address else address.partition(":")[2]
    endpoints = [endpoint.strip() for endpoint in listed.split(",")]
    for endpoint in endpoints:
        _check_endpoint(endpoint, address)
    return address, _host_of(endpoints[0])


def _check_endpoint(endpoint: str, address: str) -> None:
    """Refuses a HOST:PORT whose port is empty, not a number or outside 1-65535; a bare HOST (gRPC's default
    port) passes."""
    if endpoint.endswith("]") or ":" not in endpoint or (not endpoint.startswith("[") and endpoint.count(":") > 1):
        return  # [v6], HOST, or a bare IPv6 address: no port given
    port = endpoint.rpartition(":")[2]
    if not port.isdigit():
        raise MregError("INVALID_ARGUMENT", f"{endpoint!r} in {address!r} is not HOST:PORT: the port must be a number")
    _check_port(port, address)


def _host_of(endpoint: str) -> str:
    """The host of HOST:PORT, [V6]:PORT or a bare HOST, for TLS to check the certificate against."""
    if endpoint.startswith("["):
        return endpoint[1 : endpoint.find("]")] if "]" in endpoint else endpoint[1:]
    return endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint


def _check_port(port: str, address: str) -> None:
    if not 1 <= int(port) <= 65535:
        raise MregError("INVALID_ARGUMENT", f"port {port} of {address!r} is not between 1 and 65535")


def keepalive_options(seconds: float) -> list[tuple[str, Any]]:
    """Pings after ``seconds`` of silence, on idle connections too (a replica must be known dead before a
    call picks it), answered within as long again; the services accept pings this often (server_runtime)."""
    milliseconds = int(seconds * 1000)
    return [
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_timeout_ms", milliseconds),
        # Newer gRPC cores time a keepalive ping out by this (60 s by default), not keepalive_timeout_ms.
        ("grpc.http2.ping_timeout_ms", milliseconds),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(
    address: str, credentials: Credentials | None = None, *, keepalive: float = KEEPALIVE_SECONDS
) -> grpc.Channel:
    """A channel to ``address`` (see ``channel_target``) with the client's message limits, retry policy,
    load balancing, keepalive (``keepalive_options``) and credentials."""
    credentials = credentials or Credentials()
    channel_credentials = (
        grpc.ssl_channel_credentials(
            root_certificates=credentials.ca_cert,
            private_key=credentials.client_key,
            certificate_chain=credentials.client_cert,
        )
        if credentials.uses_tls
        else None
    )
    channel = replica_channel(address, channel_credentials, keepalive=keepalive)
    if credentials.token:
        channel = grpc.intercept_channel(channel, BearerToken(credentials.token))
    return channel


def replica_channel(
    address: str,
    channel_credentials: grpc.ChannelCredentials | None,
    *,
    keepalive: float = KEEPALIVE_SECONDS,
    retries: bool = True,
) -> grpc.Channel:
    """A channel to ``address``, one or several replicas (``channel_target``), balanced as every client channel
    is and, with ``retries``, retried by SERVICE_CONFIG's policy; TLS with ``channel_credentials``, plaintext
    without. Also the metadata service's channel to the blob service, which has replicas too."""
    target, host = channel_target(address)
    options = [
        (key, 0 if key == "grpc.enable_retries" and not retries else value) for key, value in CHANNEL_OPTIONS
    ] + keepalive_options(keepalive)
    if channel_credentials is None:
        return grpc.insecure_channel(target, options=options)
    if target != address.strip():
        # A list of replicas became IP addresses: check their certificates against the host name given.
        options.append(("grpc.ssl_target_name_override", host))
    return grpc.secure_channel(target, channel_credentials, options=options)
