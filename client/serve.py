"""``mreg serve``: both services in one process on the embedded default (SQLite + local disk).

With ``tls_cert``/``tls_key`` both services serve TLS with that one certificate, and the metadata
service connects to the blob service over TLS trusting exactly that certificate (gRPC accepts a
trusted certificate as the end of the chain, so this works for a self-signed certificate and for
one issued by a CA alike). With ``tls_client_ca`` both require client certificates from that CA,
and the metadata service presents the server certificate to the blob service as its own, so under
mutual TLS the certificate must be issued by that CA and allow client authentication.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from mreg.blob_service import config as blob_config
from mreg.blob_service import server as blob_server
from mreg.metadata_service import config as metadata_config
from mreg.metadata_service import server as metadata_server
from mreg.server_runtime import metrics as service_metrics
from mreg.server_runtime import runtime, transport

# Addresses that listen on every interface; the metadata service reaches the blob service
# beside it through localhost instead, a name the certificate can carry.
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def serve(
    data_dir: str,
    host: str,
    metadata_port: int,
    blob_port: int,
    database_url: str | None = None,
    *,
    tls_cert: str = "",
    tls_key: str = "",
    tls_client_ca: str = "",
    insecure: bool = False,
    auth: bool = False,
    metrics_port: int = 0,
    web_port: int | None = None,
) -> None:
    """Runs until SIGINT or SIGTERM.

    With ``auth``, both services require tokens; they share a secret in DATA_DIR/service.token,
    and the first start writes an admin token to DATA_DIR/admin.token (both mode 0600). With
    ``metrics_port``, one HTTP endpoint on ``host`` shows both services' metrics (``server`` label). With
    ``web_port`` (0: a free port; None: off), the web UI (mreg.client.web) serves on ``host`` as a client of
    both services; its session cookies are signed with the secret in DATA_DIR/web-session.key (mode 0600).

    Raises:
        transport.TransportConfigError: the TLS files are incomplete or unreadable, or ``host`` is not
            loopback and neither ``auth`` nor ``insecure`` is set (the loopback rule).
    """
    runtime.configure_logging()
    listen_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if not insecure:
        # Each service applies the loopback rule (and warns) itself; checked here first only so that a
        # refusal names this command's own flag rather than the services' environment variables.
        transport.check_listen_address(
            f"{listen_host}:{metadata_port}", authenticated=auth, insecure=False, tls=bool(tls_cert)
        )
    metrics_listen = f"{listen_host}:{metrics_port}" if metrics_port else ""
    if metrics_listen:
        service_metrics.check_metrics_address(metrics_listen, insecure=insecure)
    web_listen = f"{listen_host}:{web_port}" if web_port is not None else ""
    if web_listen:
        # The web UI signs users in with tokens when auth is on; it serves plain HTTP (put HTTPS in front of it).
        transport.check_listen_address(web_listen, authenticated=auth, insecure=insecure, tls=False)
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    service_token = str(root / "service.token")
    blobs = blob_server.start(
        replace(
            _from_environment(blob_config),
            metrics_listen="",  # both services' metrics are served together below
            listen=f"{listen_host}:{blob_port}",
            store=str(root / "blobs"),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            insecure=insecure,
            auth=auth,
            service_token_file=service_token,
            # The blob service asks the metadata service about tokens, over the same TLS.
            metadata_ca_cert=tls_cert,
            metadata_client_cert=tls_cert if tls_client_ca else "",
            metadata_client_key=tls_key if tls_client_ca else "",
        )
    )
    blob_host = "localhost" if host in _WILDCARD_HOSTS else listen_host
    try:
        metadata = metadata_server.start(
            replace(
                _from_environment(metadata_config),
                metrics_listen="",
                blob_tls=False,  # the blob service's TLS, if any, is the one configured here
                listen=f"{listen_host}:{metadata_port}",
                database_url=database_url or f"sqlite:///{root / 'metadata.db'}",
                blob_addr=f"{blob_host}:{blobs.port}",
                tls_cert=tls_cert,
                tls_key=tls_key,
                tls_client_ca=tls_client_ca,
                insecure=insecure,
                blob_ca_cert=tls_cert,
                blob_client_cert=tls_cert if tls_client_ca else "",
                blob_client_key=tls_key if tls_client_ca else "",
                auth=auth,
                admin_token_file=str(root / "admin.token"),
                service_token_file=service_token,
            )
        )
    except BaseException:
        blobs.stop(grace=None)
        raise
    blobs.metadata_addr = f"{blob_host}:{metadata.port}"
    endpoint = None
    if metrics_listen:
        try:
            endpoint = service_metrics.serve_metrics(
                metrics_listen, service_metrics.MergedRegistries(metadata.metrics.registry, blobs.metrics.registry)
            )
        except BaseException:
            metadata.stop(grace=None)
            blobs.stop(grace=None)
            raise
    web = None
    if web_listen:
        try:
            web = _start_web(
                root,
                web_listen,
                f"{blob_host}:{metadata.port}",
                f"{blob_host}:{blobs.port}",
                tls_cert,
                tls_key if tls_client_ca else "",
            )
        except BaseException:
            if endpoint is not None:
                endpoint.stop()
            metadata.stop(grace=None)
            blobs.stop(grace=None)
            raise
    scheme = "TLS" if tls_cert else "plaintext"
    print(f"mreg metadata service listening on {listen_host}:{metadata.port} ({scheme})", flush=True)
    print(f"mreg blob service listening on {listen_host}:{blobs.port} ({scheme})", flush=True)
    if auth:
        print(
            f"authentication is on: the admin token is in {root / 'admin.token'} "
            "(export MREG_TOKEN=$(cat ...), or `mreg login`)",
            flush=True,
        )
    if web is not None:
        print(f"mreg web UI at {web.url}/", flush=True)
    if endpoint is not None:
        print(f"mreg metrics at http://{endpoint.address}/metrics", flush=True)
    print(f"data in {root}; stop with Ctrl-C", flush=True)
    runtime.wait_for_stop_signal()
    if web is not None:
        web.stop()
    if endpoint is not None:
        endpoint.stop()
    metadata.stop(grace=runtime.STOP_GRACE_SECONDS)
    blobs.stop(grace=runtime.STOP_GRACE_SECONDS)


class WebUnavailable(transport.TransportConfigError):
    """The web UI cannot start: its libraries are not installed, or its port is taken."""


def _start_web(root: Path, listen: str, metadata_addr: str, blob_addr: str, tls_cert: str, tls_key: str) -> Any:
    """Starts the web UI as a client of the two services just started (over their TLS, if any)."""
    try:
        from mreg.client.channels import Credentials
        from mreg.client.web import WebConfig, start
    except ModuleNotFoundError as e:
        raise WebUnavailable(
            f"the web UI needs the web extra ({e.name} is missing): pip install 'mreg[web]', or pass --no-web"
        ) from e
    credentials = Credentials()
    if tls_cert:
        cert = Path(tls_cert).read_bytes()
        key = Path(tls_key).read_bytes() if tls_key else None
        credentials = Credentials(ca_cert=cert, client_cert=cert if key else None, client_key=key)
    config = WebConfig(metadata_addr, blob_addr, credentials=credentials, session_secret=_session_secret(root))
    try:
        return start(config, listen)
    except OSError as e:
        raise WebUnavailable(
            f"the web UI cannot listen on {listen} ({e.strerror or e}): pass --web-port N (0: any free port) "
            "or --no-web"
        ) from e


def _session_secret(root: Path) -> str:
    """The key that signs the web UI's session cookies, kept in DATA_DIR so a restart keeps users signed in."""
    path = root / "web-session.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def _from_environment(config: ModuleType) -> Any:
    """A service's configuration as its own command takes it with no flags: its MREG_* variables, else defaults.

    ``serve`` then sets what its own flags decide (addresses, storage, database, TLS, auth), so the
    services' other settings (limits, intervals, the scrub) follow the same variables as when each runs alone.
    """
    parser = argparse.ArgumentParser(add_help=False)
    config.add_arguments(parser)
    return config.from_args(parser.parse_args([]))
