"""Storage backends for blobs, behind the one small interface in ``base``."""

from __future__ import annotations

from blob_service.errors import InvalidArgument
from blob_service.storage.base import BlobReader, BlobStorage, PartialUpload
from blob_service.storage.disk import DiskStorage

__all__ = ["BlobReader", "BlobStorage", "DiskStorage", "PartialUpload", "open_storage"]


def open_storage(location: str) -> BlobStorage:
    """Opens the backend a location names: a directory path (optionally ``file://``).

    Raises:
        InvalidArgument: the location names a backend this build does not have.
    """
    if "://" in location and not location.startswith("file://"):
        raise InvalidArgument(f"unsupported blob store {location!r}: give a directory or file://DIR")
    return DiskStorage(location.removeprefix("file://"))
