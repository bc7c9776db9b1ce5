"""Raw generated stubs with the headers the client sends, for requests the client never builds.

Tests drive the registry through the client's public methods. When a test needs a request the client
would never send (a reused request id, a commit after its pending version expired, a version created and
never committed), it sends it through these stubs instead of reaching into the client's private members.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from mreg.blob.v1 import blob_service_pb2_grpc
from mreg.client import MregError
from mreg.client.channels import open_channel
from mreg.metadata.v1 import metadata_service_pb2_grpc

T = TypeVar("T")


class Wire:
    """Both services' generated stubs over channels of their own, sending the mreg-entity/mreg-project headers."""

    def __init__(
        self,
        metadata_addr: str,
        blob_addr: str,
        *,
        entity: str | None = "acme",
        project: str | None = "vision",
        timeout: float = 120.0,
    ) -> None:
        self._channels = (open_channel(metadata_addr), open_channel(blob_addr))
        self.metadata = metadata_service_pb2_grpc.MetadataServiceStub(self._channels[0])
        self.blobs = blob_service_pb2_grpc.BlobServiceStub(self._channels[1])
        # The actor the client sends by default, so events read the same whichever way a change came.
        actor = os.environ.get("MREG_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"
        headers = [("mreg-actor", actor)]
        if entity:
            headers.append(("mreg-entity", entity))
        if project:
            headers.append(("mreg-project", project))
        self.headers = tuple(headers)
        self.timeout = timeout

    def call(self, method: Callable[..., T], request: Any) -> T:
        """Calls a metadata RPC as the client would: with the headers, and a request_id on a mutation without one.

        Raises:
            MregError: carrying the status code, reason and details of a refused call.
        """
        if "request_id" in request.DESCRIPTOR.fields_by_name and not request.request_id:
            request.request_id = uuid.uuid4().hex
        try:
            return method(request, metadata=self.headers, timeout=self.timeout)
        except grpc.RpcError as e:
            raise MregError.from_rpc(e, "the metadata service") from e

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
