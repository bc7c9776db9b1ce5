"""The blob service's HTTP/2 flow control, read off the wire: how much of a push may wait in its memory.

A Write stream is driven frame by frame with h2 (no gRPC client library in between), so the windows the
service announces are seen as they are: the initial stream window in its SETTINGS, then each WINDOW_UPDATE.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from mreg.blob.v1 import blob_service_pb2 as pb
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.server_runtime.transport import StartupError
from tests.helpers import digest_of

# Flow control is the transport's: neither the database nor the store plays a part.
pytestmark = pytest.mark.any_database

CHUNK = 1 << 20
# A WriteRequest's bytes beyond its data, with gRPC's 5-byte length prefix: the digest, offsets and tags.
MESSAGE_FRAMING = 256


class RawWrite:
    """One Write call over a raw HTTP/2 connection, recording the largest stream window the service granted."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            self.stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/mreg.blob.v1.BlobService/Write"),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self.sock.sendall(self.conn.data_to_send())
        self.largest_window = 0
        self.response = b""
        self.trailers: dict[str, str] = {}
        self.ended = False

    def send(self, message: pb.WriteRequest, end: bool) -> None:
        """Sends one length-prefixed message as the service's windows allow, reading its frames meanwhile."""
        body = message.SerializeToString()
        pending = struct.pack(">?I", False, len(body)) + body
        while pending:
            if self.ended:
                raise AssertionError(f"the service ended the call early: {self.trailers}")
            allowed = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if allowed == 0:
                self._receive()
                continue
            piece, pending = pending[:allowed], pending[allowed:]
            self.conn.send_data(self.stream, piece, end_stream=end and not pending)
            self.sock.sendall(self.conn.data_to_send())
        self._watch_window()

    def finish(self) -> tuple[int, dict[str, str]]:
        """Reads until the call ends: the committed size answered, and the trailers."""
        while not self.ended:
            self._receive()
        response = pb.WriteResponse()
        if self.response:
            response.ParseFromString(self.response[5:])
        return response.committed_size, self.trailers

    def close(self) -> None:
        self.sock.close()

    def _watch_window(self) -> None:
        stream = self.conn.streams.get(self.stream)
        if stream is not None:
            self.largest_window = max(self.largest_window, stream.outbound_flow_control_window)

    def _receive(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the service closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.response += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.ended = True
        self._watch_window()
        self.sock.sendall(self.conn.data_to_send())


def write_messages(data: bytes) -> Iterator[tuple[pb.WriteRequest, bool]]:
    digest = digest_of(data)
    upload_id = uuid.uuid4().hex
    for offset in range(0, len(data), CHUNK):
        last = offset + CHUNK >= len(data)
        yield (
            pb.WriteRequest(
                upload_id=upload_id if offset == 0 else "",
                digest=digest if offset == 0 else None,
                write_offset=offset,
                finish_write=last,
                data=data[offset : offset + CHUNK],
            ),
            last,
        )


@pytest.mark.parametrize("window", [2 << 20, 8 << 20])
def test_a_push_is_granted_exactly_the_configured_stream_window_and_never_more(window: int, tmp_path: Path) -> None:
    """The window bounds the bytes of a push that wait in the service's memory: gRPC's own sizing would grow it
    (to 4-16 MiB per stream, from the bandwidth-delay product it measures) as the push goes on."""
    config = BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), stream_window_bytes=window)
    running = blob_server.start(config)
    data = b"".join(bytes([i]) * CHUNK for i in range(48))
    try:
        call = RawWrite(running.address)
        try:
            for message, last in write_messages(data):
                call.send(message, end=last)
            committed, trailers = call.finish()
        finally:
            call.close()
    finally:
        running.stop(grace=None)

    assert trailers.get("grpc-status") == "0", trailers
    assert committed == len(data)
    # Announced as every stream's window, and over 48 MiB of flow never more granted than it and the rest of
    # the message being read (gRPC lets a message it has begun to receive arrive whole).
    assert call.conn.remote_settings.initial_window_size == window
    assert call.largest_window <= window + CHUNK + MESSAGE_FRAMING


@pytest.mark.parametrize("window", [1, (64 << 10) - 1, 1 << 31])
def test_a_stream_window_http2_cannot_announce_is_refused_at_startup(window: int, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="--stream-window-bytes"):
        started = blob_server.start(
            BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs"), stream_window_bytes=window)
        )
        started.stop(grace=None)  # not refused: the test fails, and leaves no server behind
