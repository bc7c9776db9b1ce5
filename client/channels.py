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
from typing import Any

import grpc

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
    ]
}

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


def open_channel(address: str) -> grpc.Channel:
    """An insecure channel to ``address`` with the client's message limits and retry policy."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
