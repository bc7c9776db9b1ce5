"""The metadata service's own metrics, beside the RPC metrics every service has (``server_runtime.metrics``).

The domain knows nothing of Prometheus: the database (``Database.on_retry``) and the garbage
collector (``GarbageCollector.on_sweep``) call hooks, which :meth:`MetadataMetrics.observe` points here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.catalog.garbage import GarbageReport
from mreg.metadata_service.unit_of_work import Database
from mreg.server_runtime.metrics import ServiceMetrics


class _PoolCollector(Collector):
    """The engine's connection pool, read when scraped (nothing is counted per checkout)."""

    def __init__(self, engine: Engine) -> None:
        self._pool = engine.pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self._pool
        # A QueuePool has all three; SQLite in memory uses a pool without them, which shows nothing.
        for name, documentation, read in (
            ("mreg_db_pool_checked_out_connections", "Database connections in use by transactions now.", "checkedout"),
            ("mreg_db_pool_size_connections", "Connections the pool keeps open (its configured size).", "size"),
            (
                "mreg_db_pool_overflow_connections",
                "Connections open beyond the pool size now (negative: fewer than the size are open yet).",
                "overflow",
            ),
        ):
            method = getattr(pool, read, None)
            if callable(method):
                yield GaugeMetricFamily(name, documentation, value=float(method()))


class MetadataMetrics:
    """Transaction retries, the connection pool, garbage collection and pending-version expiry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.service = metrics
        self.transaction_retries = metrics.counter(
            "mreg_db_transaction_retries",
            "Transactions run again after a transient conflict (serialization failure, deadlock, SQLite lock) "
            "or on a new connection after the database dropped one (reconnect), by kind.",
            ("kind",),
        )
        self.gc_runs = metrics.counter("mreg_gc_runs", "Garbage collection sweeps completed (dry runs excluded).")
        self.gc_examined = metrics.counter("mreg_gc_examined_blobs", "Blobs garbage collection examined.")
        self.gc_deleted = metrics.counter("mreg_gc_deleted_blobs", "Blobs garbage collection deleted.")
        self.gc_deleted_bytes = metrics.counter(
            "mreg_gc_deleted_bytes", "Bytes of the blobs garbage collection deleted."
        )
        self.gc_upload_parts = metrics.counter(
            "mreg_gc_removed_upload_parts", "Stale partial-upload parts garbage collection removed."
        )
        self.gc_last_run = metrics.gauge(
            "mreg_gc_last_run_timestamp_seconds", "When the last garbage collection sweep completed (Unix time)."
        )
        self.commit_groups = metrics.counter(
            "mreg_commit_groups",
            "Transactions that committed several commits to one artifact together: those that queued behind "
            "another commit to it.",
        )
        self.commits_in_groups = metrics.counter(
            "mreg_commits_in_groups", "Commits committed together with others, in mreg_commit_groups."
        )
        self.pending_expired = metrics.counter(
            "mreg_pending_versions_expired", "Pending versions deleted because they were not committed in time."
        )

    def observe(self, engine: Engine, database: Database, catalog: MetadataCatalog) -> None:
        """Points the database's and the garbage collector's hooks here and reads the engine's pool when scraped."""
        self.service.add_collector(_PoolCollector(engine))
        retries = {
            kind: self.transaction_retries.labels(kind) for kind in ("serialization", "deadlock", "locked", "reconnect")
        }
        database.on_retry = lambda kind: retries[kind].inc()
        catalog.garbage.on_sweep = self.record_sweep
        catalog.versions.new_versions.on_together = self.record_commit_group
        catalog.versions.pending_commits.on_together = self.record_commit_group

    def record_commit_group(self, size: int) -> None:
        self.commit_groups.inc()
        self.commits_in_groups.inc(size)

    def record_sweep(self, report: GarbageReport) -> None:
        self.gc_runs.inc()
        self.gc_examined.inc(report.examined_blobs)
        self.gc_deleted.inc(report.deleted_blobs)
        self.gc_deleted_bytes.inc(report.deleted_bytes)
        self.gc_upload_parts.inc(report.removed_upload_parts)
        self.gc_last_run.set(time.time())
