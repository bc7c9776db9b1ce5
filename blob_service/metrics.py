"""The blob service's own metrics, beside the RPC metrics every service has (``server_runtime.metrics``)."""

from __future__ import annotations

from mreg.server_runtime.metrics import ServiceMetrics


class BlobMetrics:
    """Content bytes in and out by method, and partial uploads discarded, in the service's registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        received = metrics.counter(
            "mreg_blob_received_bytes", "Blob content bytes received from clients (uploads), by method.", ("method",)
        )
        sent = metrics.counter(
            "mreg_blob_sent_bytes", "Blob content bytes sent to clients (downloads), by method.", ("method",)
        )
        # Children looked up once: the servicer adds to them per message.
        self.write_received = received.labels("Write")
        self.batch_received = received.labels("BatchUpdateBlobs")
        self.read_sent = sent.labels("Read")
        self.batch_sent = sent.labels("BatchReadBlobs")
        self.upload_parts_expired = metrics.counter(
            "mreg_blob_expired_upload_parts", "Parts of abandoned partial uploads discarded by the janitor."
        )
