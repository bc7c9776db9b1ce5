"""Client-side streams held open against the services: idle Watch streams and stalled uploads.

Used by the availability tests and the benchmark to load a server the way slow or idle
clients do.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import grpc

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.helpers import digest_of

STREAMS_PER_CHANNEL = 50


@dataclass
class OpenStreams:
    """Client-side streams held open against a server; closes them all at the end."""

    channels: list[grpc.Channel] = field(default_factory=list)
    calls: list[grpc.Future] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def channel(self, address: str, index: int) -> grpc.Channel:
        if index % STREAMS_PER_CHANNEL == 0:
            self.channels.append(grpc.insecure_channel(address))
        return self.channels[-1]

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


@contextlib.contextmanager
def open_streams() -> Iterator[OpenStreams]:
    streams = OpenStreams()
    try:
        yield streams
    finally:
        streams.close()


def open_watch_streams(streams: OpenStreams, address: str, count: int) -> list[grpc.RpcError | None]:
    """Opens ``count`` idle Watch streams; returns, per stream, None once it is live or the error it ended with."""
    calls = []
    for i in range(count):
        stub = pb_grpc.MetadataServiceStub(streams.channel(address, i))
        call = stub.Watch(pb.WatchRequest(from_now=True))
        streams.calls.append(call)
        calls.append(call)

    def first_message(call: grpc.Future) -> grpc.RpcError | None:
        try:
            next(call)  # type: ignore[call-overload]
            return None
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(first_message, call) for call in calls]
        _, not_done = wait(futures, timeout=30)
        if not_done:
            streams.close()  # unblocks the waiting threads
            raise AssertionError(f"{len(not_done)} of {count} Watch streams never started: the server is starved")
        return [f.result() for f in futures]


STALLED_CONTENT = b"x" * 1000


def open_stalled_writes(
    streams: OpenStreams, address: str, count: int, upload_ids: list[str] | None = None
) -> list[grpc.Future]:
    """Starts ``count`` uploads of STALLED_CONTENT that send 10 bytes and then nothing until the test ends."""
    content = STALLED_CONTENT

    def stalled(upload_id: str) -> Iterator[blob_pb.WriteRequest]:
        yield blob_pb.WriteRequest(
            upload_id=upload_id, digest=digest_of(content), write_offset=0, data=content[:10], finish_write=False
        )
        streams.release.wait()

    futures = []
    for i in range(count):
        stub = blob_grpc.BlobServiceStub(streams.channel(address, i))
        upload_id = uuid.uuid4().hex
        if upload_ids is not None:
            upload_ids.append(upload_id)
        future = stub.Write.future(stalled(upload_id))
        streams.calls.append(future)
        futures.append(future)
    return futures
