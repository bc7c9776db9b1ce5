"""One committing client, run as its own process by the concurrency tests.

Usage: python -m tests.committer METADATA_ADDR BLOB_ADDR ARTIFACT WORKER START_AT
Waits until the wall clock reaches START_AT so that all workers commit together, then
prints the index it was given.
"""

from __future__ import annotations

import sys
import time

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import digest_of
from tests.wire import Wire


def main() -> None:
    metadata_addr, blob_addr, artifact, worker, start_at = sys.argv[1:6]
    content = f"worker {worker} of {artifact}".encode()
    digest = digest_of(content)
    with Wire(metadata_addr, blob_addr, entity=None, project=None) as wire:
        wire.blobs.BatchUpdateBlobs(
            blob_pb.BatchUpdateBlobsRequest(
                requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)]
            )
        )
        pending = wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=artifact, type="model"))
        time.sleep(max(0.0, float(start_at) - time.time()))
        response = wire.call(
            wire.metadata.CommitVersion,
            pb.CommitVersionRequest(
                uid=pending.version.uid, manifest=[pb.ManifestEntry(path="weights.bin", digest=digest)]
            ),
        )
    print(response.version.index)


if __name__ == "__main__":
    main()
