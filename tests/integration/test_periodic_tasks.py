"""Periodic work (pending-version expiry, garbage collection) on several replicas of one database.

Every replica runs a janitor; a lease in the database lets one replica at a time run each
task, and another replica take over once the holder's lease lapses (it died).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.catalog.tasks import PeriodicTasks
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.db import create_database_engine, upgrade_schema
from mreg.metadata_service.errors import NotFound
from mreg.metadata_service.metrics import MetadataMetrics
from mreg.metadata_service.server import _janitor
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.metrics import ServiceMetrics
from tests.conftest import DATABASES, _fresh_database
from tests.unit.test_catalog import CALLER, FakeBlobService

REPLICAS = 3
PENDING = 24
ROUNDS_PER_REPLICA = 8


@pytest.fixture(params=DATABASES)
def fresh_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    databases = _fresh_database(str(request.param), tmp_path_factory)
    url = next(databases)
    engine = create_database_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    yield url
    next(databases, None)


@pytest.fixture
def replicas(fresh_url: str) -> Iterator[list[MetadataCatalog]]:
    """Catalogs of their own engines on one database, as replicas are; pending versions expire at once."""
    catalogs = [
        MetadataCatalog(Database(create_database_engine(fresh_url)), FakeBlobService(), pending_ttl=timedelta(0))
        for _ in range(REPLICAS)
    ]
    yield catalogs
    for catalog in catalogs:
        catalog.stop()
        catalog.versions.db.engine.dispose()


def _event_count(catalog: MetadataCatalog) -> int:
    with catalog.versions.db.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM events")).scalar_one())


def test_replicas_running_expiry_together_expire_each_pending_version_once_one_replica_at_a_time(
    replicas: list[MetadataCatalog],
) -> None:
    first = replicas[0]
    blobs = FakeBlobService()
    setup = MetadataCatalog(first.versions.db, blobs)  # pending versions last long enough to commit one
    kept = setup.versions.create(CALLER, "kept", "model")
    setup.versions.commit(CALLER, kept.uid, [blobs.store(b"kept")])
    setup.stop()
    events_before = _event_count(first)
    pending = [first.versions.create(CALLER, f"abandoned-{i % 4}", "model").uid for i in range(PENDING)]

    lock = threading.Lock()
    running: list[str] = []
    overlaps: list[list[str]] = []
    expired: list[int] = []
    holders_seen: list[tuple[str, str | None]] = []

    def replica_loop(catalog: MetadataCatalog) -> None:
        tasks = catalog.tasks

        def expire() -> None:
            with lock:
                running.append(tasks.owner)
                if len(running) > 1:
                    overlaps.append(list(running))
            holder = tasks.holder("expire-pending")
            holders_seen.append((tasks.owner, holder.owner if holder else None))
            try:
                expired.append(catalog.versions.expire_pending())
            finally:
                with lock:
                    running.remove(tasks.owner)

        barrier.wait()
        for _ in range(ROUNDS_PER_REPLICA):
            tasks.run_if_due("expire-pending", timedelta(0), expire)

    barrier = threading.Barrier(REPLICAS)
    threads = [threading.Thread(target=replica_loop, args=(c,)) for c in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == [], "two replicas ran expiry at the same time"
    assert all(owner == holder for owner, holder in holders_seen), "a replica ran expiry without holding the lease"
    assert sum(expired) == PENDING, "each pending version is expired (and counted) once"
    for uid in pending:
        with pytest.raises(NotFound):
            first.versions.resolve(CALLER, f"abandoned-{pending.index(uid) % 4}:latest")
    assert first.versions.resolve(CALLER, "kept:latest").version.index == 0, "a committed version stays"
    assert _event_count(first) == events_before, "expiry writes no events, on no replica"
    assert first.tasks.holder("expire-pending") is None, "the last run released the lease"


def test_another_replica_takes_over_a_task_once_the_dead_holders_lease_lapses(replicas: list[MetadataCatalog]) -> None:
    dead, survivor = (PeriodicTasks(c.versions.db, lease=timedelta(seconds=1)) for c in replicas[:2])
    ran: list[str] = []
    # The holder takes the lease and dies in the middle of the task: it never releases it.
    assert dead.try_take("collect-garbage")
    assert not survivor.run_if_due("collect-garbage", timedelta(0), lambda: ran.append("survivor"))
    assert ran == [], "the lease keeps the task from a second replica while its holder may be running it"
    # A bounded number of looks until the lease lapses (it lasts 1 s).
    for _ in range(100):
        if survivor.run_if_due("collect-garbage", timedelta(0), lambda: ran.append("survivor")):
            break
        threading.Event().wait(0.05)
    assert ran == ["survivor"], "the survivor took the task over once the dead holder's lease lapsed"


def test_a_task_runs_once_per_interval_across_replicas(replicas: list[MetadataCatalog]) -> None:
    ran: list[int] = []
    for _ in range(3):
        for i, catalog in enumerate(replicas):
            catalog.tasks.run_if_due("collect-garbage", timedelta(hours=1), lambda i=i: ran.append(i))
    assert len(ran) == 1, "one replica ran the task; the others found it not due for an hour"


def test_replicas_restarted_more_often_than_the_gc_interval_still_collect_garbage(
    replicas: list[MetadataCatalog],
) -> None:
    """Each replica once offered garbage collection only one whole interval after its own start, so a fleet
    redeployed more often than the interval (6 h by default) never collected. The schedule is the database's:
    the first start sets it, later starts keep it."""
    config = MetadataConfig(gc_interval_seconds=1.0, janitor_interval_seconds=0.05)
    metrics = MetadataMetrics(ServiceMetrics("metadata"))

    def next_gc(catalog: MetadataCatalog) -> datetime | None:
        def work(uow: UnitOfWork) -> datetime | None:
            lease = uow.repo.task_lease("collect-garbage")
            return None if lease is None else lease.next_run_at

        return catalog.versions.db.run(work, write=False)

    scheduled: datetime | None = None
    collected = False
    for restart in range(40):  # each replica lives 0.3 s, well under the interval; at most 12 s in all
        catalog = replicas[restart % REPLICAS]
        stopping = threading.Event()
        janitor = threading.Thread(target=_janitor, args=(catalog, config, stopping, metrics))
        janitor.start()
        stopping.wait(0.3)
        stopping.set()
        janitor.join()
        due = next_gc(catalog)
        scheduled = scheduled or due
        if due is not None and scheduled is not None and due > scheduled:
            collected = True  # a run moved the schedule on by an interval
            break
    assert scheduled is not None, "the first start scheduled garbage collection in the database"
    assert collected, "garbage collection ran although no replica lived a whole interval"
