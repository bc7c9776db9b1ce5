"""Configuration of the metadata service: flags, each with an environment variable of the same name."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MetadataConfig:
    """Settings of one metadata service process."""

    listen: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///.mreg/metadata.db"
    blob_addr: str = "localhost:50052"
    workers: int = 32
    max_streams: int = 1000
    migrate: bool = True
    pending_ttl_seconds: float = 24 * 3600
    janitor_interval_seconds: float = 60
    gc_interval_seconds: float = 6 * 3600
    gc_grace_seconds: float = 24 * 3600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=os.environ.get("MREG_METADATA_LISTEN", MetadataConfig.listen),
        help="host:port to serve on; port 0 picks a free one (env MREG_METADATA_LISTEN)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("MREG_DATABASE_URL", MetadataConfig.database_url),
        help="SQLAlchemy URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (env MREG_DATABASE_URL)",
    )
    parser.add_argument(
        "--blob-addr",
        default=os.environ.get("MREG_BLOB_ADDR", MetadataConfig.blob_addr),
        help="the blob service that commits are verified against (env MREG_BLOB_ADDR)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MREG_METADATA_WORKERS", MetadataConfig.workers)),
        help="threads serving unary RPCs; streams never take these (env MREG_METADATA_WORKERS)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=int(os.environ.get("MREG_METADATA_MAX_STREAMS", MetadataConfig.max_streams)),
        help="concurrent streaming RPCs (Watch) served, each on a thread of its own; more are refused "
        "with RESOURCE_EXHAUSTED (env MREG_METADATA_MAX_STREAMS)",
    )
    parser.add_argument(
        "--pending-ttl-seconds",
        type=float,
        default=float(os.environ.get("MREG_PENDING_TTL_SECONDS", MetadataConfig.pending_ttl_seconds)),
        help="pending versions not committed within this time expire (env MREG_PENDING_TTL_SECONDS)",
    )
    parser.add_argument(
        "--janitor-interval-seconds",
        type=float,
        default=float(os.environ.get("MREG_JANITOR_INTERVAL_SECONDS", MetadataConfig.janitor_interval_seconds)),
        help="how often expired pending versions are removed (env MREG_JANITOR_INTERVAL_SECONDS)",
    )
    parser.add_argument(
        "--gc-interval-seconds",
        type=float,
        default=float(os.environ.get("MREG_GC_INTERVAL_SECONDS", MetadataConfig.gc_interval_seconds)),
        help="how often blob garbage collection runs; 0 turns it off (env MREG_GC_INTERVAL_SECONDS)",
    )
    parser.add_argument(
        "--gc-grace-seconds",
        type=float,
        default=float(os.environ.get("MREG_GC_GRACE_SECONDS", MetadataConfig.gc_grace_seconds)),
        help="blobs used more recently than this are never collected (env MREG_GC_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        default=os.environ.get("MREG_NO_MIGRATE", "") == "",
        help="do not upgrade the database schema at start-up (env MREG_NO_MIGRATE=1)",
    )


def from_args(args: argparse.Namespace) -> MetadataConfig:
    return MetadataConfig(
        listen=args.listen,
        database_url=args.database_url,
        blob_addr=args.blob_addr,
        workers=args.workers,
        max_streams=args.max_streams,
        migrate=args.migrate,
        pending_ttl_seconds=args.pending_ttl_seconds,
        janitor_interval_seconds=args.janitor_interval_seconds,
        gc_interval_seconds=args.gc_interval_seconds,
        gc_grace_seconds=args.gc_grace_seconds,
    )
