"""Two blob replicas on one S3 bucket: each runs the janitor that expires abandoned uploads.

Uploads are keyed by the client's upload id and the blob's hash, so a client that resumes
an upload on another replica continues the same staged parts; a janitor must leave those
alone while a replica is writing them, and two janitors deleting the same parts agree.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

from mreg.blob_service.digests import Digest
from mreg.blob_service.storage.s3 import S3Storage
from tests.s3_server import S3Server


def _replicas(s3_server: S3Server) -> tuple[S3Storage, S3Storage]:
    url = s3_server.store_url(f"replicas-{uuid.uuid4().hex[:10]}")
    return S3Storage.from_url(url), S3Storage.from_url(url)


def _read(storage: S3Storage, digest: Digest) -> bytes:
    with storage.open_read(digest) as reader:
        return b"".join(iter(lambda: reader.read(1 << 20), b""))


def test_a_janitor_leaves_alone_an_old_upload_another_replica_is_resuming(s3_server: S3Server) -> None:
    writer, janitor = _replicas(s3_server)
    content = os.urandom(3000)
    digest = Digest.parse(hashlib.sha256(content).hexdigest(), len(content))
    first = writer.begin_write("resumed", digest)
    first.append(content[:1000])
    first.close()  # the first stream broke: its bytes are staged
    staged_by = datetime.now(UTC)
    # S3 times have one-second resolution: wait until the staged part is surely older than the cutoff.
    threading.Event().wait(2.2)
    cutoff = staged_by + timedelta(seconds=1)
    resumed = writer.begin_write("resumed", digest)  # the client continues, slowly, on a replica
    assert resumed.committed_size == 1000
    resumed.append(content[1000:2000])

    assert janitor.remove_stale_uploads(cutoff) == 0, "the janitor expired an upload a replica is writing"

    resumed.append(content[2000:])
    writer.commit_write(resumed)
    assert _read(janitor, digest) == content


def test_two_janitors_expiring_the_same_abandoned_upload_both_succeed_and_it_is_gone(s3_server: S3Server) -> None:
    one, other = _replicas(s3_server)
    content = os.urandom(2000)
    digest = Digest.parse(hashlib.sha256(content).hexdigest(), len(content))
    for offset in (0, 500, 1000):  # three broken streams: three staged parts
        upload = one.begin_write("abandoned", digest)
        upload.append(content[offset : offset + 500])
        upload.close()
    assert one.upload_size("abandoned", digest) == 1500
    later = datetime.now(UTC) + timedelta(days=1)
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def expire(storage: S3Storage) -> None:
        barrier.wait()
        try:
            storage.remove_stale_uploads(later)
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=expire, args=(s,)) for s in (one, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert one.upload_size("abandoned", digest) is None
    assert other.remove_stale_uploads(later) == 0, "nothing is left to expire"
