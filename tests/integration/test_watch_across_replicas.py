"""On PostgreSQL a Watch learns of another replica's commit from its NOTIFY, not from polling."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.db import create_database_engine, upgrade_schema
from mreg.metadata_service.unit_of_work import Database
from tests.conftest import DATABASES, _fresh_database
from tests.unit.test_catalog import CALLER, FakeBlobService

# So long that a stream which depended on polling would never see the commit within the test.
NEVER = 3600.0
# A bound on the wait, so a broken notification fails the test instead of hanging it.
WAIT_BOUND_SECONDS = 20

pytestmark = pytest.mark.skipif("postgresql" not in DATABASES, reason="NOTIFY is PostgreSQL's")


@pytest.fixture
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetadataCatalog, MetadataCatalog]]:
    databases = _fresh_database("postgresql", tmp_path_factory)
    url = next(databases)
    engine = create_database_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    blobs = FakeBlobService()
    replicas = tuple(
        MetadataCatalog(Database(create_database_engine(url)), blobs, watch_poll_seconds=NEVER) for _ in range(2)
    )
    yield replicas  # type: ignore[misc]
    for replica in replicas:
        replica.stop()
        replica.versions.db.engine.dispose()
    next(databases, None)


def test_a_watch_sees_commits_made_through_another_replica_without_polling(two_replicas) -> None:
    watching, committing = two_replicas
    blobs = committing.versions.content
    seen: list[str] = []
    done = threading.Event()
    wake = threading.Event()

    def follow() -> None:
        stream = watching.events.watch(
            0, "acme/vision/notified", from_now=True, wake=wake, is_active=lambda: not done.is_set()
        )
        for item in stream:
            if item.event is not None:
                seen.append(item.event.kind)
                if len(seen) == 2:
                    done.set()

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        # Let the stream go live and wait (its first wait starts the listener), then commit elsewhere.
        for _ in range(200):
            if watching.events.feed._waiters:
                break
            threading.Event().wait(0.05)
        pending = committing.versions.create(CALLER, "notified", "model")
        committing.versions.commit(CALLER, pending.uid, [blobs.store(b"weights")])
        assert done.wait(WAIT_BOUND_SECONDS), f"the watch saw only {seen}"
        assert seen == ["collection.created", "version.committed"]
    finally:
        done.set()
        wake.set()
        follower.join(timeout=30)
