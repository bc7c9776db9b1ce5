"""Configuration of the blob service: flags, each with an environment variable of the same name."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class BlobConfig:
    """Settings of one blob service process."""

    listen: str = "127.0.0.1:50052"
    store: str = ".mreg/blobs"
    workers: int = 32
    max_streams: int = 200
    stream_idle_timeout_seconds: float = 60
    touch_interval_seconds: float = 600
    min_gc_grace_seconds: float = 3600
    upload_expiry_seconds: float = 24 * 3600
    janitor_interval_seconds: float = 600
    max_batch_total_size_bytes: int = 32 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=os.environ.get("MREG_BLOB_LISTEN", BlobConfig.listen),
        help="host:port to serve on; port 0 picks a free one (env MREG_BLOB_LISTEN)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("MREG_BLOB_STORE", BlobConfig.store),
        help="where blobs live: a directory, or s3://BUCKET/PREFIX?endpoint=HOST:PORT (env MREG_BLOB_STORE)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MREG_BLOB_WORKERS", BlobConfig.workers)),
        help="threads serving unary RPCs; streams never take these (env MREG_BLOB_WORKERS)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=int(os.environ.get("MREG_BLOB_MAX_STREAMS", BlobConfig.max_streams)),
        help="concurrent Read/Write/ListBlobs streams served, each on a thread of its own; more are refused "
        "with RESOURCE_EXHAUSTED (env MREG_BLOB_MAX_STREAMS)",
    )
    parser.add_argument(
        "--stream-idle-timeout-seconds",
        type=float,
        default=float(os.environ.get("MREG_BLOB_STREAM_IDLE_TIMEOUT_SECONDS", BlobConfig.stream_idle_timeout_seconds)),
        help="end with ABORTED a Write whose client sends nothing, or a Read whose client takes nothing, for "
        "this long (an upload keeps its bytes for resuming); 0 never (env MREG_BLOB_STREAM_IDLE_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--upload-expiry-seconds",
        type=float,
        default=float(os.environ.get("MREG_BLOB_UPLOAD_EXPIRY_SECONDS", BlobConfig.upload_expiry_seconds)),
        help="discard partial uploads that received nothing for this long (env MREG_BLOB_UPLOAD_EXPIRY_SECONDS)",
    )
    parser.add_argument(
        "--janitor-interval-seconds",
        type=float,
        default=float(os.environ.get("MREG_BLOB_JANITOR_INTERVAL_SECONDS", BlobConfig.janitor_interval_seconds)),
        help="how often expired partial uploads are looked for; 0 never (env MREG_BLOB_JANITOR_INTERVAL_SECONDS)",
    )
    parser.add_argument(
        "--max-batch-total-size-bytes",
        type=int,
        default=int(os.environ.get("MREG_BLOB_MAX_BATCH_TOTAL_SIZE_BYTES", BlobConfig.max_batch_total_size_bytes)),
        help="the most data one BatchUpdateBlobs or BatchReadBlobs may carry; reported by GetCapabilities "
        "(env MREG_BLOB_MAX_BATCH_TOTAL_SIZE_BYTES)",
    )
    parser.add_argument(
        "--touch-interval-seconds",
        type=float,
        default=float(os.environ.get("MREG_BLOB_TOUCH_INTERVAL_SECONDS", BlobConfig.touch_interval_seconds)),
        help="renew a found blob's use time when older than this (capped at a third of the minimum GC grace)",
    )
    parser.add_argument(
        "--min-gc-grace-seconds",
        type=float,
        default=float(os.environ.get("MREG_BLOB_MIN_GC_GRACE_SECONDS", BlobConfig.min_gc_grace_seconds)),
        help="never delete a blob written or looked up more recently than this, whatever cutoff garbage "
        "collection sends; protects uploads not yet committed (env MREG_BLOB_MIN_GC_GRACE_SECONDS)",
    )


def from_args(args: argparse.Namespace) -> BlobConfig:
    return BlobConfig(
        listen=args.listen,
        store=args.store,
        workers=args.workers,
        max_streams=args.max_streams,
        stream_idle_timeout_seconds=args.stream_idle_timeout_seconds,
        touch_interval_seconds=args.touch_interval_seconds,
        min_gc_grace_seconds=args.min_gc_grace_seconds,
        upload_expiry_seconds=args.upload_expiry_seconds,
        janitor_interval_seconds=args.janitor_interval_seconds,
        max_batch_total_size_bytes=args.max_batch_total_size_bytes,
    )
