"""The S3 backend, through the minio SDK: works with AWS S3, MinIO and other S3 servers.

Layout under ``s3://BUCKET/PREFIX``::

    PREFIX/blobs/<sha256>                      published blobs
    PREFIX/uploads/<id>.<sha256>/<offset>      staged parts of an upload in progress (<id>.unhashed-<size>
                                               while its hash is to come with its last message)
    PREFIX/uploads/<id>.<sha256>/active        touched while a replica writes the upload
    PREFIX/state/<name>                        small objects of the service's own (the scrub's lease)

Each part of an upload is staged as its own object as soon as it is complete (8 MiB
by default), so the upload's durable offset is the sum of its staged parts and any
replica can continue it, or read the parts back to restore the hash. Only when the
service has verified the digest are the parts assembled into the final object, by
server-side multipart copy (``compose_object``) where the server supports it and by a
streaming multipart upload otherwise; either way the blob appears atomically, complete.

Every replica's janitor expires uploads whose newest object is older than the expiry.
A replica writing an upload whose staged parts are old (a client resuming it, or sending
slowly) keeps it alive by touching its ``active`` object when it opens the upload and
at least every ``HEARTBEAT_SECONDS`` while writing, so no janitor discards it meanwhile.
The upload expiry must therefore be well above ``HEARTBEAT_SECONDS``.

Servers differ in how they report errors (some send bodies the SDK cannot parse), so
existence is decided by HEAD (``stat_object``) and HTTP status codes alone.
"""

from __future__ import annotations

import io
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO, cast
from xml.etree import ElementTree

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Object
from minio.error import InvalidResponseError, S3Error, ServerError

from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import InvalidArgument, NotFound, StorageFull, Unavailable
from mreg.blob_service.storage.base import BlobReader, BlobStorage, PartialUpload, StoredBlob

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20
# S3 requires every part but the last of a multipart upload to be at least 5 MiB.
MIN_COMPOSE_PART = 5 << 20
# How often a replica writing an upload with staged parts renews its ``active`` object.
HEARTBEAT_SECONDS = 60.0
_HEARTBEAT = "active"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchUpload"}
# MinIO says XMinioStorageFull (HTTP 507); Ceph RGW and others say QuotaExceeded.
_FULL_CODES = {"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"}


def _is_not_found(error: S3Error | InvalidResponseError) -> bool:
    if isinstance(error, S3Error):
        return error.code in _NOT_FOUND_CODES or (error.response is not None and error.response.status == 404)
    return error._code == 404  # an error body the SDK could not parse; the status says enough


def _is_full(error: Exception) -> bool:
    """True for the answers S3 servers give when out of space or over a quota."""
    if isinstance(error, S3Error):
        return error.code in _FULL_CODES or (error.response is not None and error.response.status == 507)
    if isinstance(error, InvalidResponseError | ServerError):
        return getattr(error, "_code", None) == 507 or getattr(error, "_status_code", None) == 507
    return False


def _unavailable(error: Exception) -> Unavailable:
    return Unavailable(f"the S3 store cannot be reached: {type(error).__name__}: {str(error)[:300]}")


class _CountingPoolManager(urllib3.PoolManager):
    """The S3 client's connections, telling ``on_request`` the method of every request made through them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_request: Callable[[str], None] = lambda method: None

    def urlopen(  # type: ignore[override]  # as urllib3 itself declares it
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        self.on_request(method)
        return super().urlopen(method, url, redirect=redirect, **kw)


class _S3Reader(BlobReader):
    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        etag = response.headers.get("ETag")
        self.identity = etag.strip('"') if etag else None

    @property
    def object_size(self) -> int | None:
        """The whole object's size, as the GET's answer gives it (a ranged one in Content-Range)."""
        whole = self._response.headers.get("Content-Range", "").rpartition("/")[2]
        if whole.isdigit():
            return int(whole)
        length = self._response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() and self._response.status == 200 else None

    def read(self, size: int) -> bytes:
        try:
            return self._response.read(size)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


class _S3Upload(PartialUpload):
    """Bytes are buffered up to one part, then staged as an object of their own."""

    def __init__(self, storage: S3Storage, upload_id: str, digest: Digest, *, fresh: bool = False) -> None:
        super().__init__(upload_id, digest)
        self._storage = storage
        self.prefix = storage.key(f"uploads/{upload_id}.{digest.hash}/")
        self.parts: list[tuple[str, int]] = [] if fresh else storage.staged_parts(self.prefix)
        self._staged = sum(size for _, size in self.parts)
        self._buffer = bytearray()
        self._last_write = float("-inf")
        self._heartbeat()

    def _heartbeat(self) -> None:
        """Tells other replicas' janitors that staged parts are in use, if there are any and it is time."""
        if self.parts and time.monotonic() - self._last_write >= HEARTBEAT_SECONDS:
            self._storage.put(f"{self.prefix}{_HEARTBEAT}", b"")
            self._last_write = time.monotonic()

    @property
    def committed_size(self) -> int:
        return self._staged + len(self._buffer)

    def append(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= PART_SIZE:
            self.flush()
        else:
            self._heartbeat()

    def flush(self) -> None:
        if not self._buffer:
            return
        key = f"{self.prefix}{self._staged:016d}"
        self._storage.put(key, bytes(self._buffer))
        self.parts.append((key, len(self._buffer)))
        self._staged += len(self._buffer)
        self._buffer.clear()
        self._last_write = time.monotonic()  # a new part is as good as a heartbeat

    def read_back(self) -> Iterator[bytes]:
        for key, _ in self.parts:
            reader = self._storage.open_key(key)
            with reader:
                while block := reader.read(1 << 20):
                    yield block
        if self._buffer:
            yield bytes(self._buffer)

    def close(self) -> None:
        # A stream that ends without finishing keeps what it sent: stage the tail.
        self.flush()


class S3Storage(BlobStorage):
    """Blobs as objects in one bucket, under one prefix."""

    looks_before_storing = False

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        endpoint: str = "",
        connections: _CountingPoolManager | None = None,
    ) -> None:
        self.client = client
        self._connections = connections
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        try:
            self._ensure_bucket()
        except (S3Error, InvalidResponseError, ServerError, ValueError) as e:
            raise InvalidArgument(f"cannot use bucket {bucket!r} at {endpoint}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e

    def _ensure_bucket(self) -> None:
        """Creates the bucket unless it exists.

        Replicas starting together race to create a new bucket; the losers are told 409
        (BucketAlreadyExists or BucketAlreadyOwnedByYou, in a body some servers label so the
        SDK cannot parse it). Losing is fine: what counts is that the bucket exists
        afterwards, which a HEAD decides.
        """
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except (S3Error, InvalidResponseError, ServerError) as e:
            if not self.client.bucket_exists(self.bucket):
                raise
            log.debug("bucket %s was created by another replica meanwhile (%s)", self.bucket, e)

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        """Builds a backend from ``s3://BUCKET[/PREFIX]?endpoint=HOST:PORT[&secure=true][&region=R]``.

        Credentials come from MREG_S3_ACCESS_KEY / MREG_S3_SECRET_KEY (or the AWS_*
        variables of the same meaning).
        """
        parsed = urllib.parse.urlsplit(url)
        options = dict(urllib.parse.parse_qsl(parsed.query))
        if not parsed.netloc:
            raise InvalidArgument(f"S3 store {url!r} names no bucket: use s3://BUCKET/PREFIX?endpoint=HOST:PORT")
        endpoint = options.get("endpoint", "s3.amazonaws.com")
        access = os.environ.get("MREG_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("MREG_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        http = _CountingPoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=64,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        client = Minio(
            endpoint,
            access_key=access,
            secret_key=secret,
            secure=options.get("secure", "false").lower() == "true",
            region=options.get("region", "us-east-1"),
            http_client=http,
        )
        return cls(client, parsed.netloc, parsed.path, endpoint, http)

    def count_requests(self, count: Callable[[str], None]) -> None:
        if self._connections is not None:
            self._connections.on_request = count

    def __repr__(self) -> str:
        return f"S3Storage({self.endpoint}/{self.bucket}/{self.prefix})"

    def key(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def _blob_key(self, digest: Digest) -> str:
        return self._hash_key(digest.hash)

    def _hash_key(self, sha256: str) -> str:
        return self.key(f"blobs/{sha256}")

    # Low-level helpers, shared with uploads ---------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        try:
            try:
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
            except S3Error as e:
                if e.code != "NoSuchBucket":
                    raise
                # The bucket vanished (a wiped test server, a lifecycle rule): recreate it once.
                self._ensure_bucket()
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
        except (S3Error, InvalidResponseError, ServerError) as e:
            if _is_full(e):
                raise StorageFull(f"the S3 store {self.endpoint}/{self.bucket} is full: {e}") from e
            raise Unavailable(f"the S3 store refused to store {key}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e

    def _stat_size(self, key: str) -> int | None:
        info = self._head(key)
        return None if info is None else info.size

    def _head(self, key: str) -> Object | None:
        """The object's HEAD (size, ETag); None if there is no such object."""
        try:
            return self.client.stat_object(self.bucket, key)
        except (S3Error, InvalidResponseError) as e:
            if _is_not_found(e):
                return None
            raise Unavailable(f"the S3 store failed a HEAD of {key}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError, ServerError) as e:
            raise _unavailable(e) from e

    def open_key(self, key: str, offset: int = 0, length: int = 0) -> _S3Reader:
        # A bounded Range: an open-ended one makes the server send (and some servers copy)
        # everything after ``offset`` for a reader that wants only part of it.
        try:
            return _S3Reader(self.client.get_object(self.bucket, key, offset=offset, length=length))
        except (S3Error, InvalidResponseError) as e:
            if _is_not_found(e):
                raise NotFound(f"object {key} is not stored") from e
            # Refused for another reason (access denied, a server error): retryable, never "absent".
            raise Unavailable(f"the S3 store failed a GET of {key}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError, ServerError) as e:
            raise _unavailable(e) from e

    def _list(self, prefix: str, *, recursive: bool) -> list[Object]:
        """The objects under ``prefix``; none when the bucket does not exist (yet)."""
        try:
            return list(self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive))
        except S3Error as e:
            if e.code == "NoSuchBucket":
                return []
            raise Unavailable(f"the S3 store failed to list {prefix}: {e}") from e
        except (InvalidResponseError, ServerError) as e:
            raise Unavailable(f"the S3 store failed to list {prefix}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e

    def staged_parts(self, prefix: str) -> list[tuple[str, int]]:
        """The staged parts under an upload's prefix, in offset order, each (key, size)."""
        objects = sorted(
            (o.object_name, o.size or 0)
            for o in self._list(prefix, recursive=False)
            if o.object_name and o.object_name.rsplit("/", 1)[1].isdigit()  # not the heartbeat
        )
        # Keep only the contiguous run from offset 0: a part written by a stream that
        # died mid-PUT never became visible, so there are no holes, but be strict.
        parts, expected = [], 0
        for key, size in objects:
            if int(key.rsplit("/", 1)[1]) != expected:
                break
            parts.append((key, size))
            expected += size
        return parts

    def _remove(self, keys: list[str]) -> None:
        """Deletes the keys; one already gone (another replica's janitor was first) is fine."""
        for key in keys:
            try:
                self.client.remove_object(self.bucket, key)
            except (S3Error, InvalidResponseError) as e:
                if not _is_not_found(e):
                    log.warning("could not remove %s: %s", key, e)
            except (ServerError, urllib3.exceptions.HTTPError, OSError) as e:
                log.warning("could not remove %s: %s", key, e)

    # BlobStorage ---------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        return self._stat_size(self._blob_key(digest)) == digest.size_bytes

    def open_read(self, digest: Digest, offset: int = 0, length: int = 0) -> BlobReader:
        # A digest is hash and size: content of this hash with another size is another blob.
        absent = NotFound(f"blob {digest} is not stored (is the size right?)")
        key = self._blob_key(digest)
        if digest.size_bytes == 0:
            if self._stat_size(key) != 0:
                raise absent
            return _EmptyReader()
        # The GET's answer says the object's size, so a read is one request, not a HEAD and a GET: for
        # small blobs, half the requests.
        try:
            reader = self.open_key(key, offset, length)
        except NotFound:
            raise absent from None
        except Unavailable:
            # A range past the end of a shorter copy is refused (416) rather than absent: a HEAD tells.
            if self._stat_size(key) != digest.size_bytes:
                raise absent from None
            raise
        size = reader.object_size
        if size is None:  # an answer that did not say (no length, no range)
            size = self._stat_size(key)
        if size != digest.size_bytes:
            reader.close()
            raise absent
        return reader

    def stored_size(self, sha256: str) -> int | None:
        return self._stat_size(self._hash_key(sha256))

    def begin_write(self, upload_id: str, digest: Digest, *, fresh: bool = False) -> PartialUpload:
        return _S3Upload(self, upload_id, digest, fresh=fresh)

    def upload_size(self, upload_id: str, digest: Digest) -> int | None:
        parts = self.staged_parts(self.key(f"uploads/{upload_id}.{digest.hash}/"))
        return sum(size for _, size in parts) if parts else None

    def commit_write(self, upload: PartialUpload) -> None:
        assert isinstance(upload, _S3Upload)
        target = self._blob_key(upload.digest)
        if not upload.parts:
            # The whole blob is in the buffer: one PUT publishes it, atomically.
            self.put(target, bytes(upload._buffer))
            upload._buffer.clear()
            return
        upload.flush()
        try:
            self._assemble(upload, target)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e
        self._remove([key for key, _ in upload.parts] + [f"{upload.prefix}{_HEARTBEAT}"])

    def _assemble(self, upload: _S3Upload, target: str) -> None:
        if not upload.parts:
            self.put(target, b"")
            return
        sizes = [size for _, size in upload.parts]
        total = sum(sizes)
        if len(upload.parts) == 1 or all(size >= MIN_COMPOSE_PART for size in sizes[:-1]):
            sources = [ComposeSource(self.bucket, key) for key, _ in upload.parts]
            if self._server_side(target, total, lambda: self._copy_or_compose(target, upload.parts, sources)):
                return
        # Fallback: a streaming multipart upload, completed only after the last part.
        stream = _ConcatenatedParts(self, upload.parts)
        try:
            self.client.put_object(self.bucket, target, cast(BinaryIO, stream), total, part_size=PART_SIZE)
        except (S3Error, InvalidResponseError, ServerError) as e:
            if _is_full(e):
                raise StorageFull(f"the S3 store {self.endpoint}/{self.bucket} is full: {e}") from e
            raise Unavailable(f"the S3 store refused to publish {target}: {e}") from e

    def _copy_or_compose(self, target: str, parts: list[tuple[str, int]], sources: list[ComposeSource]) -> None:
        if len(parts) == 1:
            self.client.copy_object(self.bucket, target, CopySource(self.bucket, parts[0][0]))
        else:
            self.client.compose_object(self.bucket, target, sources)

    def _server_side(self, target: str, size: int, operation: Callable[[], object]) -> bool:
        """Runs a server-side copy; True if the target now exists with the right size.

        Some servers do the copy but answer in a form the SDK cannot parse, and some do
        not implement it; the object's presence, checked by HEAD, is what counts.
        """
        try:
            operation()
        except (S3Error, InvalidResponseError, ServerError, ValueError, ElementTree.ParseError) as e:
            log.debug("server-side copy to %s answered %s", target, e)
        return self._stat_size(target) == size

    def put_verified(self, digest: Digest, data: bytes, *, defer_durability: bool = False) -> None:
        self.put(self._blob_key(digest), data)  # stored for good once the PUT is answered

    def abort_write(self, upload: PartialUpload) -> None:
        assert isinstance(upload, _S3Upload)
        upload._buffer.clear()
        self._remove([key for key, _ in upload.parts] + [f"{upload.prefix}{_HEARTBEAT}"])
        upload.parts.clear()

    def delete(self, digest: Digest) -> None:
        self._remove([self._blob_key(digest)])

    def delete_if_same(self, digest: Digest, identity: object) -> bool:
        # S3 has no portable conditional DELETE: compare the ETag by HEAD just before deleting.
        # The window between the two requests is a few milliseconds; only a blob that changed
        # size can be uploaded again inside it (a same-size one is reported present until removed).
        key = self._blob_key(digest)
        info = self._head(key)
        if info is None:
            return False
        if identity is None:  # an empty object, read without a request: its size is all there is to compare
            if info.size != digest.size_bytes:
                return False
        elif (info.etag or "").strip('"') != identity:
            return False
        self._remove([key])
        return self._stat_size(key) is None

    def read_state(self, name: str) -> bytes | None:
        key = self.key(f"state/{name}")
        if self._stat_size(key) is None:
            return None
        chunks = []
        with self.open_key(key) as reader:
            while block := reader.read(1 << 16):
                chunks.append(block)
        return b"".join(chunks)

    def write_state(self, name: str, data: bytes) -> None:
        self.put(self.key(f"state/{name}"), data)

    def iter_blobs(self) -> Iterator[StoredBlob]:
        try:
            for item in self.client.list_objects(self.bucket, prefix=self.key("blobs/"), recursive=True):
                name = (item.object_name or "").rsplit("/", 1)[-1]
                if len(name) == 64 and item.last_modified is not None:
                    yield StoredBlob(Digest(name, item.size or 0), item.last_modified.astimezone(UTC))
        except (S3Error, InvalidResponseError, ServerError) as e:
            raise Unavailable(f"the S3 store failed to list blobs: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _unavailable(e) from e

    def touch(self, digest: Digest) -> None:
        # S3 objects cannot change their modification time in place; a metadata-replacing
        # self-copy renews it. Callers throttle this (see BlobStore.find_missing).
        key = self._blob_key(digest)
        try:
            self.client.copy_object(
                self.bucket,
                key,
                CopySource(self.bucket, key),
                metadata={"x-amz-meta-mreg-used": datetime.now(UTC).isoformat()},
                metadata_directive="REPLACE",
            )
        except (
            S3Error,
            InvalidResponseError,
            ServerError,
            ValueError,
            ElementTree.ParseError,
            urllib3.exceptions.HTTPError,
            OSError,
        ) as e:
            log.debug("renewing %s answered %s", key, e)

    def last_used(self, digest: Digest) -> datetime | None:
        try:
            info = self.client.stat_object(self.bucket, self._blob_key(digest))
        except (S3Error, InvalidResponseError) as e:
            if _is_not_found(e):
                return None
            raise Unavailable(f"the S3 store failed a HEAD of blob {digest}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError, ServerError) as e:
            raise _unavailable(e) from e
        return info.last_modified if info.size == digest.size_bytes else None

    def stale_uploads(self, older_than: datetime) -> list[str]:
        """The staged parts of uploads whose newest part is older than ``older_than``.

        An upload goes whole or not at all: dropping the old first part of an upload that
        is still receiving would leave it with a hole.
        """
        uploads: dict[str, list[str]] = {}
        newest: dict[str, datetime] = {}
        for item in self._list(self.key("uploads/"), recursive=True):
            if item.object_name is None or item.last_modified is None:
                continue
            upload = item.object_name.rsplit("/", 1)[0]
            uploads.setdefault(upload, []).append(item.object_name)
            newest[upload] = max(newest.get(upload, item.last_modified), item.last_modified)
        return [key for upload, keys in uploads.items() if newest[upload] < older_than for key in keys]

    def remove_stale_uploads(self, older_than: datetime) -> int:
        stale = self.stale_uploads(older_than)
        self._remove(stale)
        return len(stale)


class _EmptyReader(BlobReader):
    def read(self, size: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _ConcatenatedParts(io.RawIOBase):
    """A file-like view of staged parts, read one after another."""

    def __init__(self, storage: S3Storage, parts: list[tuple[str, int]]) -> None:
        self._storage = storage
        self._keys = [key for key, _ in parts]
        self._reader: BlobReader | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunks = bytearray()
        want = size if size >= 0 else 1 << 62
        while len(chunks) < want:
            if self._reader is None:
                if not self._keys:
                    break
                self._reader = self._storage.open_key(self._keys.pop(0))
            block = self._reader.read(min(want - len(chunks), 1 << 20))
            if not block:
                self._reader.close()
                self._reader = None
                continue
            chunks += block
        return bytes(chunks)
