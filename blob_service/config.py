"""Configuration of the blob service: flags, each with an environment variable of the same name."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mreg.server_runtime.config import (
    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    MAX_CONNECTION_AGE_HELP,
    add_flag,
    add_switch,
    config_from_args,
)


@dataclass(frozen=True)
class BlobConfig:
    """Settings of one blob service process."""

    listen: str = "127.0.0.1:50052"
    store: str = ".mreg/blobs"
    workers: int = 32
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    max_streams: int = 200
    stream_window_bytes: int = 2 << 20
    stream_idle_timeout_seconds: float = 60
    touch_interval_seconds: float = 600
    min_gc_grace_seconds: float = 3600
    upload_expiry_seconds: float = 24 * 3600
    janitor_interval_seconds: float = 600
    scrub_interval_seconds: float = 24 * 3600
    scrub_bytes_per_second: int = 100_000_000
    max_batch_total_size_bytes: int = 32 << 20
    auth: bool = False
    metadata_addr: str = "localhost:50051"
    service_token_file: str = "service.token"
    auth_cache_seconds: float = 30
    metadata_ca_cert: str = ""
    metadata_client_cert: str = ""
    metadata_client_key: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    metrics_listen: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def flag(field: str, env: str, help: str) -> None:
        add_flag(parser, BlobConfig, field, env, help)

    flag("listen", "MREG_BLOB_LISTEN", "host:port to serve on; port 0 picks a free one")
    flag(
        "metrics_listen",
        "MREG_BLOB_METRICS_LISTEN",
        "serve Prometheus metrics over HTTP on this host:port, e.g. 127.0.0.1:9465; empty (the default) "
        "serves none. Not on a loopback address only with --insecure: the endpoint does not authenticate",
    )
    add_switch(
        parser,
        "auth",
        "MREG_BLOB_AUTH",
        "require a token on every call (authorization: Bearer), checked with the metadata service",
    )
    flag(
        "metadata_addr",
        "MREG_BLOB_METADATA_ADDR",
        "with --auth, the metadata service asked what a token grants (TokenService.IntrospectToken)",
    )
    flag(
        "service_token_file",
        "MREG_BLOB_SERVICE_TOKEN_FILE",
        "with --auth, the secret shared with the metadata service (its --service-token-file): the "
        "identity allowed ListBlobs and DeleteBlobs, and with which this service asks about tokens",
    )
    flag(
        "metadata_ca_cert",
        "MREG_BLOB_METADATA_CA_CERT",
        "with --auth, a PEM file of the CAs that verify the metadata service: TLS for the token checks",
    )
    flag(
        "metadata_client_cert",
        "MREG_BLOB_METADATA_CLIENT_CERT",
        "with --auth, the certificate this service presents to the metadata service (mutual TLS)",
    )
    flag("metadata_client_key", "MREG_BLOB_METADATA_CLIENT_KEY", "the private key of --metadata-client-cert")
    flag(
        "auth_cache_seconds",
        "MREG_BLOB_AUTH_CACHE_SECONDS",
        "how long what a token grants is reused before the metadata service is asked again",
    )
    flag("store", "MREG_BLOB_STORE", "where blobs live: a directory, or s3://BUCKET/PREFIX?endpoint=HOST:PORT")
    flag("workers", "MREG_BLOB_WORKERS", "threads serving unary RPCs; streams never take these")
    flag("max_connection_age_seconds", "MREG_BLOB_MAX_CONNECTION_AGE_SECONDS", MAX_CONNECTION_AGE_HELP)
    flag(
        "max_streams",
        "MREG_BLOB_MAX_STREAMS",
        "concurrent Read/Write/ListBlobs streams served, each on a thread of its own; more are refused "
        "with RESOURCE_EXHAUSTED",
    )
    flag(
        "stream_window_bytes",
        "MREG_BLOB_STREAM_WINDOW_BYTES",
        "the HTTP/2 window of each stream this service receives: how much of a push may arrive ahead of "
        "what it has stored, so pushes hold about --max-streams times this (plus a chunk each) in memory; raise it for "
        "clients on high-latency links (a stream moves at most one window per round trip); 0 leaves the "
        "window to gRPC, which grows it with the link's bandwidth-delay product without a memory bound",
    )
    flag(
        "stream_idle_timeout_seconds",
        "MREG_BLOB_STREAM_IDLE_TIMEOUT_SECONDS",
        "end with ABORTED a Write whose client sends nothing, or a Read whose client takes nothing, for "
        "this long (an upload keeps its bytes for resuming); 0 never",
    )
    flag(
        "upload_expiry_seconds",
        "MREG_BLOB_UPLOAD_EXPIRY_SECONDS",
        "discard partial uploads that received nothing for this long",
    )
    flag(
        "janitor_interval_seconds",
        "MREG_BLOB_JANITOR_INTERVAL_SECONDS",
        "how often expired partial uploads are looked for; 0 never",
    )
    flag(
        "scrub_interval_seconds",
        "MREG_BLOB_SCRUB_INTERVAL_SECONDS",
        "re-read and re-hash every stored blob this often, removing those whose bytes no longer match "
        "their digest (the next push uploads them again); one replica per interval on a shared store; "
        "0 never",
    )
    flag(
        "scrub_bytes_per_second",
        "MREG_BLOB_SCRUB_BYTES_PER_SECOND",
        "the most bytes per second the scrub reads, so serving keeps the store's bandwidth; 0 unlimited",
    )
    flag(
        "max_batch_total_size_bytes",
        "MREG_BLOB_MAX_BATCH_TOTAL_SIZE_BYTES",
        "the most data one BatchUpdateBlobs or BatchReadBlobs may carry; reported by GetCapabilities",
    )
    flag(
        "touch_interval_seconds",
        "MREG_BLOB_TOUCH_INTERVAL_SECONDS",
        "renew a found blob's use time when older than this (capped at a third of the minimum GC grace)",
    )
    flag(
        "min_gc_grace_seconds",
        "MREG_BLOB_MIN_GC_GRACE_SECONDS",
        "never delete a blob written or looked up more recently than this, whatever cutoff garbage "
        "collection sends; protects uploads not yet committed",
    )
    flag("tls_cert", "MREG_BLOB_TLS_CERT", "serve TLS with this certificate chain (PEM); needs --tls-key")
    flag("tls_key", "MREG_BLOB_TLS_KEY", "the private key (PEM) of --tls-cert")
    flag(
        "tls_client_ca",
        "MREG_BLOB_TLS_CLIENT_CA",
        "require every caller to present a client certificate issued by these CAs (PEM): mutual TLS",
    )
    add_switch(
        parser,
        "insecure",
        "MREG_BLOB_INSECURE",
        "allow listening on a non-loopback address although callers are not authenticated (the gRPC "
        "address without --auth, and the --metrics-listen address, which never authenticates)",
    )


def from_args(args: argparse.Namespace) -> BlobConfig:
    return config_from_args(BlobConfig, args)
