"""Replicas starting together on shared state: a new bucket, a new database.

Several blob services creating one new bucket at the same moment, and several metadata
services migrating one new database at the same moment, must all come up.
"""

from __future__ import annotations

import threading
import uuid

from mreg.blob_service.storage.s3 import S3Storage
from tests.s3_server import S3Server

ROUNDS = 10
REPLICAS = 4


def _start_together(count: int, start) -> list[BaseException | None]:
    """Runs ``start`` in ``count`` threads released at once; returns what each raised (None if nothing)."""
    barrier = threading.Barrier(count)
    outcomes: list[BaseException | None] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            start()
        except BaseException as e:  # reported by the test
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_blob_stores_starting_together_on_a_new_bucket_all_come_up(s3_server: S3Server) -> None:
    for _ in range(ROUNDS):
        bucket = f"race-{uuid.uuid4().hex[:10]}"
        url = s3_server.store_url(bucket)
        failures = [e for e in _start_together(REPLICAS, lambda: S3Storage.from_url(url)) if e is not None]  # noqa: B023
        assert failures == [], f"a replica failed to start on new bucket {bucket}: {failures[0]!r}"
        assert S3Storage.from_url(url).client.bucket_exists(bucket)
