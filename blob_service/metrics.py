"""The blob service's own metrics, beside the RPC metrics every service has (``server_runtime.metrics``)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from mreg.blob_service.scrub import ScrubReport
from mreg.server_runtime.metrics import ServiceMetrics


class BlobMetrics:
    """Content bytes in and out by method, requests to an S3 store, partial uploads discarded and scrub
    results, in the service's registry."""

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
        self.store_requests = metrics.counter(
            "mreg_blob_store_requests",
            "Requests the service made to its S3 store, by HTTP method (none for a store on disk).",
            ("method",),
        )
        self.upload_parts_expired = metrics.counter(
            "mreg_blob_expired_upload_parts", "Parts of abandoned partial uploads discarded by the janitor."
        )
        self.scrub = ScrubMetrics(metrics)

    def store_request(self, method: str) -> None:
        self.store_requests.labels(method).inc()


class ScrubMetrics:
    """What the scrub found: counted per blob as it goes (a ``ScrubObserver``), and per run at its end."""

    RESULTS = ("completed", "stopped", "failed")

    def __init__(self, metrics: ServiceMetrics) -> None:
        runs = metrics.counter(
            "mreg_blob_scrub_runs",
            "Scrubs of the blob store ended, by result: completed, stopped (shutdown, or another replica "
            "took the lease) or failed (the store could not be listed or read).",
            ("result",),
        )
        # Every result declared at start, so a rate is defined from the first scrape.
        self.runs: dict[str, Counter] = {result: runs.labels(result) for result in self.RESULTS}
        self.examined_blobs = metrics.counter("mreg_blob_scrub_examined_blobs", "Blobs the scrub read and hashed.")
        self.examined_bytes = metrics.counter("mreg_blob_scrub_examined_bytes", "Bytes the scrub read and hashed.")
        self.corrupt_blobs = metrics.counter(
            "mreg_blob_scrub_corrupt_blobs",
            "Blobs whose stored bytes did not match their digest, which the scrub removed.",
        )
        self.read_errors = metrics.counter(
            "mreg_blob_scrub_read_errors", "Blobs the scrub could not read (left alone, checked again next run)."
        )
        self.last_run: Gauge = metrics.gauge(
            "mreg_blob_scrub_last_run_timestamp_seconds", "When the last completed scrub ended (Unix time)."
        )
        self.last_duration: Gauge = metrics.gauge(
            "mreg_blob_scrub_last_run_duration_seconds", "How long the last completed scrub took."
        )

    def examined(self, size: int) -> None:
        self.examined_blobs.inc()
        self.examined_bytes.inc(size)

    def corrupt(self) -> None:
        self.corrupt_blobs.inc()

    def read_error(self) -> None:
        self.read_errors.inc()

    def finished(self, report: ScrubReport) -> None:
        """Counts a run that ended (its blobs were counted as it went)."""
        if report.stopped:
            self.runs["stopped"].inc()
            return
        self.runs["completed"].inc()
        self.last_run.set(time.time())
        self.last_duration.set(report.seconds)

    def failed(self) -> None:
        self.runs["failed"].inc()
