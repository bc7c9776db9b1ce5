"""Storage backends for blobs, behind the one small interface in ``base``."""

from __future__ import annotations

from mreg.blob_service.errors import InvalidArgument
from mreg.blob_service.storage.base import BlobReader, BlobStorage, PartialUpload, StoredBlob
from mreg.blob_service.storage.disk import DiskStorage

__all__ = ["BlobReader", "BlobStorage", "DiskStorage", "PartialUpload", "StoredBlob", "open_storage"]


def open_storage(location: str) -> BlobStorage:
    """Opens the backend a location names: a directory (optionally ``file://DIR``) or
    ``s3://BUCKET/PREFIX?endpoint=HOST:PORT``.

    Raises:
        InvalidArgument: the location is malformed or names an unknown kind of store.
    """
    if location.startswith("s3://"):
        from mreg.blob_service.storage.s3 import S3Storage

        return S3Storage.from_url(location)
    if "://" in location and not location.startswith("file://"):
        raise InvalidArgument(f"unsupported blob store {location!r}: give a directory, file://DIR or s3://BUCKET")
    return DiskStorage(location.removeprefix("file://"))
