"""Configuration of the metadata service: flags, each with an environment variable of the same name."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mreg.server_runtime.config import (
    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    MAX_CONNECTION_AGE_HELP,
    add_flag,
    add_off_switch,
    add_switch,
    config_from_args,
)


@dataclass(frozen=True)
class MetadataConfig:
    """Settings of one metadata service process."""

    listen: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///.mreg/metadata.db"
    blob_addr: str = "localhost:50052"
    workers: int = 32
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    max_streams: int = 1000
    migrate: bool = True
    pending_ttl_seconds: float = 24 * 3600
    janitor_interval_seconds: float = 60
    gc_interval_seconds: float = 6 * 3600
    gc_grace_seconds: float = 24 * 3600
    auth: bool = False
    admin_token_file: str = "admin.token"
    service_token_file: str = "service.token"
    auth_cache_seconds: float = 30
    content_check_cache_seconds: float = 60
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    metrics_listen: str = ""
    blob_tls: bool = False
    blob_ca_cert: str = ""
    blob_client_cert: str = ""
    blob_client_key: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def flag(field: str, env: str, help: str) -> None:
        add_flag(parser, MetadataConfig, field, env, help)

    flag("listen", "MREG_METADATA_LISTEN", "host:port to serve on; port 0 picks a free one")
    flag(
        "metrics_listen",
        "MREG_METADATA_METRICS_LISTEN",
        "serve Prometheus metrics over HTTP on this host:port, e.g. 127.0.0.1:9464; empty (the default) "
        "serves none. Not on a loopback address only with --insecure: the endpoint does not authenticate",
    )
    flag(
        "database_url",
        "MREG_DATABASE_URL",
        "SQLAlchemy URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
    )
    flag("blob_addr", "MREG_BLOB_ADDR", "the blob service that commits are verified against")
    flag("workers", "MREG_METADATA_WORKERS", "threads serving unary RPCs; streams never take these")
    flag("max_connection_age_seconds", "MREG_METADATA_MAX_CONNECTION_AGE_SECONDS", MAX_CONNECTION_AGE_HELP)
    flag(
        "max_streams",
        "MREG_METADATA_MAX_STREAMS",
        "concurrent streaming RPCs (Watch) served, each on a thread of its own; more are refused "
        "with RESOURCE_EXHAUSTED",
    )
    flag("pending_ttl_seconds", "MREG_PENDING_TTL_SECONDS", "pending versions not committed within this time expire")
    flag(
        "janitor_interval_seconds",
        "MREG_JANITOR_INTERVAL_SECONDS",
        "how often expired pending versions are removed",
    )
    flag(
        "gc_interval_seconds",
        "MREG_GC_INTERVAL_SECONDS",
        "how often blob garbage collection runs; 0 turns it off",
    )
    flag("gc_grace_seconds", "MREG_GC_GRACE_SECONDS", "blobs used more recently than this are never collected")
    add_switch(
        parser,
        "auth",
        "MREG_METADATA_AUTH",
        "require a token on every call (authorization: Bearer); on first start, write an admin token "
        "to --admin-token-file",
    )
    flag(
        "admin_token_file",
        "MREG_METADATA_ADMIN_TOKEN_FILE",
        "with --auth, where the first admin token is written (mode 0600) when no token exists yet",
    )
    flag(
        "service_token_file",
        "MREG_METADATA_SERVICE_TOKEN_FILE",
        "with --auth, the secret the metadata and blob services share to call each other; created (mode "
        "0600) if missing, and given to the blob service's --service-token-file",
    )
    flag(
        "auth_cache_seconds",
        "MREG_METADATA_AUTH_CACHE_SECONDS",
        "how long what a token grants is reused before the token table is read again; a revocation "
        "takes effect within this time",
    )
    flag(
        "content_check_cache_seconds",
        "MREG_CONTENT_CHECK_CACHE_SECONDS",
        "how long content the blob service said it holds is trusted by commits without asking it again "
        "(a sweep's deletions are always seen); 0 asks on every commit, so a blob removed by hand or by the "
        "scrub is refused at once",
    )
    add_off_switch(
        parser, "--no-migrate", "migrate", "MREG_NO_MIGRATE", "do not upgrade the database schema at start-up"
    )
    flag("tls_cert", "MREG_METADATA_TLS_CERT", "serve TLS with this certificate chain (PEM); needs --tls-key")
    flag("tls_key", "MREG_METADATA_TLS_KEY", "the private key (PEM) of --tls-cert")
    flag(
        "tls_client_ca",
        "MREG_METADATA_TLS_CLIENT_CA",
        "require every caller to present a client certificate issued by these CAs (PEM): mutual TLS",
    )
    add_switch(
        parser,
        "insecure",
        "MREG_METADATA_INSECURE",
        "allow listening on a non-loopback address although callers are not authenticated (the gRPC "
        "address without --auth, and the --metrics-listen address, which never authenticates)",
    )
    add_switch(
        parser,
        "blob_tls",
        "MREG_METADATA_BLOB_TLS",
        "connect to --blob-addr over TLS, trusting the system's roots (implied by --blob-ca-cert)",
    )
    flag(
        "blob_ca_cert",
        "MREG_METADATA_BLOB_CA_CERT",
        "connect to --blob-addr over TLS, trusting only these CA certificates (PEM)",
    )
    flag(
        "blob_client_cert",
        "MREG_METADATA_BLOB_CLIENT_CERT",
        "present this client certificate (PEM) to the blob service, for its --tls-client-ca",
    )
    flag("blob_client_key", "MREG_METADATA_BLOB_CLIENT_KEY", "the private key (PEM) of --blob-client-cert")


def from_args(args: argparse.Namespace) -> MetadataConfig:
    return config_from_args(MetadataConfig, args)
