"""The S3 backend, through the minio SDK: works with AWS S3, MinIO and other S3 servers.

Layout under ``s3://BUCKET/PREFIX``::

    PREFIX/blobs/<sha256>                      published blobs
    PREFIX/uploads/<id>.<sha256>/multipart     the record of an upload sent as an S3 multipart upload
    PREFIX/uploads/<id>.<sha256>/<offset>      staged parts of an upload whose hash is to come with its last
                                               message (<id>.unhashed-<size>), or begun by an earlier version
    PREFIX/uploads/<id>.<sha256>/active        touched while a replica writes such an upload
    PREFIX/state/<name>                        small objects of the service's own (the scrub's lease)

An upload of known hash is sent as an S3 multipart upload of the blob's own key, in parts of 8 MiB: each
byte goes to the store once, and completing the multipart upload (only once the service has verified the
digest) publishes the blob atomically, with nothing copied. Its parts cannot be read back before then, so its
record (the S3 upload, its parts, the service's hash state after them, and the bytes it holds short of a part
when a stream ends) lets any replica continue it (``_S3MultipartUpload``).

An upload whose hash comes with its last message has no key until then. Each of its parts is staged as an
object of its own as soon as it is complete, so the upload's durable offset is the sum of its staged parts
and any replica can continue it, or read the parts back to restore the hash. Only when the service has
verified the digest are the parts assembled into the final object, by server-side multipart copy
(``compose_object``) where the server supports it and by a streaming multipart upload otherwise; either way
the blob appears atomically, complete. Such uploads cost the store each byte again, so the service does not
offer them to clients (write_digest_at_finish), though it takes them.

Every replica's janitor expires uploads whose newest object is older than the expiry (aborting a multipart
upload with its record), and aborts multipart uploads of blobs that no record names at two runs in a row. A
replica writing an upload keeps it alive by saving its record (with each part, and when it continues an
upload) or touching its ``active`` object (when it opens staged parts), and at least every
``HEARTBEAT_SECONDS`` while writing, so no janitor discards it meanwhile. The upload expiry must therefore be
well above ``HEARTBEAT_SECONDS``.

Servers differ in how they report errors (some send bodies the SDK cannot parse), so
existence is decided by HEAD (``stat_object``) and HTTP status codes alone.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar, cast
from xml.etree import ElementTree

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Object, Part
from minio.error import InvalidResponseError, S3Error, ServerError

from mreg.blob_service import sha256
from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import BlobError, InvalidArgument, NotFound, StorageFull, Unavailable
from mreg.blob_service.sha256 import Sha256, StateRefused
from mreg.blob_service.storage.base import BlobReader, BlobStorage, PartialUpload, StoredBlob

log = logging.getLogger(__name__)
T = TypeVar("T")

PART_SIZE = 8 << 20
# S3 numbers the parts of a multipart upload 1 to 10 000.
MAX_PARTS = 10_000
# Bytes of a record read for its header line alone (its parts; not the bytes it holds short of a part).
RECORD_HEADER_READ = 64 << 10
# Pages of 1 000 multipart uploads the janitor looks through per run for ones no record names.
UNRECORDED_SWEEP_PAGES = 10
# S3 requires every part but the last of a multipart upload to be at least 5 MiB.
MIN_COMPOSE_PART = 5 << 20
# Parts sent while their streams go on receiving, across all uploads: each holds a part (about 8 MiB; the larger
# parts of very large blobs are never sent aside) beyond what its stream buffers, so this bounds the memory it
# costs (about 128 MiB). With none free, a stream sends its part before going on.
PARTS_SENT_ASIDE = 16
# How often a replica writing an upload renews its record (a multipart upload) or its ``active`` object (staged
# parts), while no new part does it.
HEARTBEAT_SECONDS = 60.0
_HEARTBEAT = "active"
# The record of an upload sent as an S3 multipart upload (``_S3MultipartUpload``).
_RECORD = "multipart"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchUpload"}
# A completion refused for its parts: another stream of the same upload sent other ones. Retrying cannot mend it.
_PARTS_REFUSED_CODES = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}
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


# What the SDK raises for an answer it cannot read (a malformed error body): the store is not serving properly.
_UNREADABLE = (ValueError, ElementTree.ParseError)
# Failures of the exchange with the store rather than answers from it: each is ``_unavailable``.
_TRANSPORT_FAILURES = (urllib3.exceptions.HTTPError, OSError, *_UNREADABLE)


def _unavailable(error: Exception) -> Unavailable:
    if isinstance(error, _UNREADABLE):
        return Unavailable(f"the S3 store answered unreadably: {type(error).__name__}: {str(error)[:300]}")
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
        if whole.isascii() and whole.isdigit():
            return int(whole)
        length = self._response.headers.get("Content-Length", "")
        return int(length) if length.isascii() and length.isdigit() and self._response.status == 200 else None

    def read(self, size: int) -> bytes:
        try:
            return self._response.read(size)
        except _TRANSPORT_FAILURES as e:
            raise _unavailable(e) from e

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


class _S3Upload(PartialUpload):
    """Bytes are buffered up to one part, then staged as an object of their own."""

    def __init__(self, storage: S3Storage, upload_id: str, digest: Digest, *, fresh: bool = False) -> None:
        super().__init__(upload_id, digest)
        self._storage = storage
        self.prefix = storage.upload_prefix(upload_id, digest)
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


class _UploadLost(Unavailable):
    """The store no longer holds a multipart upload in progress, so its parts are gone."""


class _S3MultipartUpload(PartialUpload):
    """An upload sent as the parts of an S3 multipart upload of the blob's own key.

    Every byte is sent to the store once: completing the multipart upload, which the service does only after
    it verified the digest, makes the parts the blob, in one request, with nothing copied. Parts cannot be
    read back before that, so after each part the upload saves its record (``.../multipart``: the S3 upload,
    its parts and the service's hash state after them); a stream that ends unfinished adds the bytes it holds
    short of a part to the record. Any replica continues the upload from its record, which only ever says
    what the store holds: a part is recorded once the store has it, and a part that failed leaves the record
    as it was.
    """

    def __init__(self, storage: S3Storage, upload_id: str, digest: Digest, record: _Record | None) -> None:
        super().__init__(upload_id, digest)
        self._storage = storage
        self.prefix = storage.upload_prefix(upload_id, digest)
        self._target = storage._blob_key(digest)
        # S3 takes at most 10 000 parts: parts of a blob too large for that many of 8 MiB are larger. The size
        # follows from the digest, so every replica cuts the same parts.
        self._part_size = max(PART_SIZE, -(-digest.size_bytes // MAX_PARTS))
        self._record = record or _Record()
        self._buffer = bytearray(self._record.tail)
        self._received = self._record.parts_size + len(self._buffer)
        self._saved_size = self._received  # what the record in the store says the upload holds
        self._hasher: Sha256 | None = None
        self._finished = False
        self._broken = False  # a part failed: the record in the store stays what it was
        self._last_saved = float("-inf")
        # The part being sent while the stream goes on receiving the next, if any.
        self._sending: Future[None] | None = None
        if record is not None:
            self._save()  # tells other replicas' janitors the upload is in use again

    @property
    def committed_size(self) -> int:
        return self._received

    def resume_from(self) -> tuple[bytes | None, Iterator[bytes]]:
        if self._record.parts and self._record.hash_state is None:
            # Begun where the hash state could not be saved: nothing held can be verified.
            raise StateRefused("its parts were sent without a saved hash state")
        return self._record.hash_state, iter([bytes(self._buffer)])

    def read_back(self) -> Iterator[bytes]:
        raise NotImplementedError("the parts of an S3 multipart upload cannot be read before it is completed")

    def hash_with(self, hasher: Sha256) -> None:
        self._hasher = hasher

    def append(self, data: bytes) -> None:
        self._buffer += data
        self._received += len(data)
        if len(self._buffer) >= self._part_size:
            with self._forgotten_if_lost():
                self._send_part()
        elif time.monotonic() - self._last_saved >= HEARTBEAT_SECONDS and self._record.parts:
            with self._forgotten_if_lost():
                self._settle()  # the record then says what the buffer follows
            self._save()

    @contextlib.contextmanager
    def _forgotten_if_lost(self) -> Iterator[None]:
        """Forgets the upload if the store lost it or refused its parts: the client's retry finds none and
        starts again."""
        try:
            yield
        except _UploadLost:
            self._forget()
            raise

    def _forget(self) -> None:
        """Ends the upload with nothing kept: its multipart upload (if the store still holds it) and its record."""
        self._finished = True
        if self._record.s3_upload is not None:
            self._storage.abort_multipart_upload(self._target, self._record.s3_upload)
        self._storage._remove([f"{self.prefix}{_RECORD}"])

    def _send_part(self) -> None:
        """Sends the buffer as the next part: while the stream receives the part after it, if a sender is free."""
        self._settle()
        record = self._record
        if record.s3_upload is None:
            record.s3_upload = self._storage.create_multipart_upload(self._target)
            # Recorded before any part is sent, so an expired upload's parts are always found; the bytes about
            # to be sent as the first part are not worth keeping in the record meanwhile.
            self._save(with_tail=False)
        data, number = bytes(self._buffer), len(record.parts) + 1
        # The hasher has seen exactly these bytes: the service gives it each chunk before appending it.
        state = self._hasher.state() if self._hasher is not None else None
        self._buffer.clear()
        # Only parts of the usual size (8 MiB and the rest of the chunk that reached it) go aside, so 16 of
        # them hold about 128 MiB; the larger parts of a blob over 78 GiB are sent in turn.
        if self._part_size == PART_SIZE:
            self._sending = self._storage.send_part_aside(lambda: self._store_part(number, data, state))
        if self._sending is None:
            self._sending_failed_if_raises(lambda: self._store_part(number, data, state))

    def _store_part(self, number: int, data: bytes, hash_state: bytes | None) -> None:
        assert self._record.s3_upload is not None
        etag = self._storage.upload_part(self._target, self._record.s3_upload, number, data)
        self._record.parts.append((number, etag, len(data)))
        self._record.hash_state = hash_state
        self._save(with_tail=False)  # the bytes after the part are still arriving: the stream's end keeps them

    def _settle(self) -> None:
        """Waits for the part being sent aside, if any; raises what made it fail."""
        sending, self._sending = self._sending, None
        if sending is not None:
            self._sending_failed_if_raises(sending.result)

    def _sending_failed_if_raises(self, send: Callable[[], object]) -> None:
        try:
            send()
        except BaseException:
            # The part's bytes are no longer in the buffer: from here on, only the record tells what is held.
            self._broken = True
            raise

    def _save(self, *, with_tail: bool = True) -> None:
        """Saves the record, with the bytes held short of a part (what the upload holds is then what it says)."""
        tail = bytes(self._buffer) if with_tail else b""
        self._storage.put(f"{self.prefix}{_RECORD}", self._record.encode(tail))
        self._saved_size = self._record.parts_size + len(tail)
        self._last_saved = time.monotonic()

    def complete(self) -> None:
        """Publishes the upload under its digest (verified by the caller)."""
        with self._forgotten_if_lost():
            self._settle()
        record = self._record
        if record.s3_upload is None:
            # Never reached a part: the whole blob is in the buffer, and one PUT publishes it.
            self._storage.put(self._target, bytes(self._buffer))
        else:
            # The last part joins the record only once the blob is published: until then, what is left in
            # the buffer stays the record's tail if the completion fails.
            parts = list(record.parts)
            with self._forgotten_if_lost():
                if self._buffer:
                    number = len(parts) + 1
                    etag = self._storage.upload_part(self._target, record.s3_upload, number, bytes(self._buffer))
                    parts.append((number, etag, len(self._buffer)))
                self._storage.complete_multipart_upload(self._target, record.s3_upload, parts, self.digest.size_bytes)
        self._finished = True
        self._storage._remove([f"{self.prefix}{_RECORD}"])

    def abort(self) -> None:
        self._finished = True
        self._buffer.clear()
        with contextlib.suppress(BlobError):
            self._settle()  # its failure no longer matters
        self._forget()

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._settle()
            # A stream that ends without finishing keeps what it sent: the bytes short of a part go in the record.
            if not self._broken and (self._buffer or self._record.parts):
                self._save()
        except _UploadLost as e:
            log.warning("upload %s was lost by the store: %s", self.prefix, e)
            self._forget()
            self._saved_size = 0
        except BlobError as e:
            # The record in the store says what it holds (up to the last part sent): the client continues there.
            log.warning("upload %s ended with a part unsent: %s", self.prefix, e)
        finally:
            self._received = self._saved_size


class _Record:
    """An S3 multipart upload in progress, as saved beside it: a JSON line, then the bytes held short of a part."""

    def __init__(
        self,
        s3_upload: str | None = None,
        parts: list[tuple[int, str, int]] | None = None,
        hash_state: bytes | None = None,
        tail: bytes = b"",
        tail_size: int | None = None,
    ) -> None:
        self.s3_upload = s3_upload
        self.parts = parts or []
        self.hash_state = hash_state
        self.tail = tail
        # The tail's length, known from the header line alone (a reader of the header has not the tail).
        self.tail_size = len(tail) if tail_size is None else tail_size

    @property
    def parts_size(self) -> int:
        return sum(size for _, _, size in self.parts)

    def encode(self, tail: bytes) -> bytes:
        header = {
            "s3_upload": self.s3_upload,
            "parts": self.parts,
            "hash_state": None if self.hash_state is None else base64.b64encode(self.hash_state).decode(),
            "tail_size": len(tail),
        }
        return json.dumps(header).encode() + b"\n" + tail

    @classmethod
    def decode(cls, data: bytes, *, header_only: bool = False) -> _Record:
        """The record in ``data``: all of it, or (``header_only``) its header line, without the tail's bytes."""
        line, newline, tail = data.partition(b"\n")
        if not newline:
            raise ValueError("the record has no header line")
        header = json.loads(line)
        state = header.get("hash_state")
        return cls(
            header.get("s3_upload"),
            [(int(number), str(etag), int(size)) for number, etag, size in header.get("parts", [])],
            None if state is None else base64.b64decode(state),
            b"" if header_only else tail,
            int(header["tail_size"]) if header_only else None,
        )


class S3Storage(BlobStorage):
    """Blobs as objects in one bucket, under one prefix."""

    looks_before_storing = False
    stores_hash_at_finish_as_cheaply = False

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
        # Multipart uploads of blobs no record names, and since when (``_abort_unrecorded_...``).
        self._unrecorded_since: dict[str, float] = {}
        self._sweep_lock = threading.Lock()
        self._part_senders = ThreadPoolExecutor(PARTS_SENT_ASIDE, thread_name_prefix="s3-parts")
        self._free_senders = threading.BoundedSemaphore(PARTS_SENT_ASIDE)
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

    def upload_prefix(self, upload_id: str, digest: Digest) -> str:
        """Where the objects of an upload in progress live (its record, or its staged parts)."""
        return self.key(f"uploads/{upload_id}.{digest.hash}/")

    def _blob_key(self, digest: Digest) -> str:
        return self._hash_key(digest.hash)

    def _hash_key(self, sha256: str) -> str:
        return self.key(f"blobs/{sha256}")

    # Low-level helpers, shared with uploads ---------------------------------------------------

    def _recreating_bucket(self, write: Callable[[], T]) -> T:
        """Runs ``write``; if the bucket vanished (a wiped test server, a lifecycle rule), recreates it once and
        runs ``write`` again."""
        try:
            return write()
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise
            self._ensure_bucket()
            return write()

    def put(self, key: str, data: bytes) -> None:
        try:
            self._recreating_bucket(lambda: self._put_once(key, data))
        except (S3Error, InvalidResponseError, ServerError) as e:
            if _is_full(e):
                raise StorageFull(f"the S3 store {self.endpoint}/{self.bucket} is full: {e}") from e
            raise Unavailable(f"the S3 store refused to store {key}: {e}") from e
        except _TRANSPORT_FAILURES as e:
            raise _unavailable(e) from e

    def _put_once(self, key: str, data: bytes) -> None:
        # One request: the SDK would make an object above 5 MiB a multipart upload of 5 MiB parts.
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), part_size=max(MIN_COMPOSE_PART, len(data))
        )

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
        except (*_TRANSPORT_FAILURES, ServerError) as e:
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
        except (*_TRANSPORT_FAILURES, ServerError) as e:
            raise _unavailable(e) from e

    def _get(self, key: str, length: int = 0) -> bytes:
        """A small object's bytes (its first ``length``; 0: all).

        Raises:
            NotFound: there is no such object.
        """
        with self.open_key(key, 0, length) as reader:
            return b"".join(iter(lambda: reader.read(1 << 20), b""))

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
        except _TRANSPORT_FAILURES as e:
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
        try:
            size = reader.object_size
            if size is None:  # an answer that did not say (no length, no range)
                size = self._stat_size(key)
        except BaseException:
            reader.close()
            raise
        if size != digest.size_bytes:
            reader.close()
            raise absent
        return reader

    def stored_size(self, sha256: str) -> int | None:
        return self._stat_size(self._hash_key(sha256))

    def begin_write(self, upload_id: str, digest: Digest, *, fresh: bool = False) -> PartialUpload:
        if not (digest.names_content and sha256.resumable):
            # The blob's key is not known until the upload's last message (or the hash state cannot be
            # saved): its parts are staged as objects of their own and assembled at the end.
            return _S3Upload(self, upload_id, digest, fresh=fresh)
        if fresh:
            return _S3MultipartUpload(self, upload_id, digest, None)
        prefix = self.upload_prefix(upload_id, digest)
        record = self._live_record(prefix, digest)
        if record is None and self.staged_parts(prefix):
            return _S3Upload(self, upload_id, digest)  # staged by a version of the service before multipart
        return _S3MultipartUpload(self, upload_id, digest, record)

    def _live_record(self, prefix: str, digest: Digest, *, header_only: bool = False) -> _Record | None:
        """The upload's record, unless the store no longer holds the multipart upload it names (a server that
        keeps uploads in memory restarted, a lifecycle rule aborted it): then its parts are gone, and so is it."""
        record = self._read_record(prefix, header_only=header_only)
        if record is None or record.s3_upload is None:
            return record
        if self.holds_multipart_upload(self._blob_key(digest), record.s3_upload):
            return record
        log.warning("the S3 store lost multipart upload %s of %s; it starts again", record.s3_upload, prefix)
        self._remove([f"{prefix}{_RECORD}"])
        return None

    def _read_record(self, prefix: str, *, header_only: bool = False) -> _Record | None:
        """The upload's record; with ``header_only``, without its tail (up to a part's bytes), read only when
        the upload is continued."""
        key = f"{prefix}{_RECORD}"
        try:
            data = self._get(key, RECORD_HEADER_READ if header_only else 0)
            if header_only and b"\n" not in data:  # a header longer than that (thousands of parts)
                header_only = False
                data = self._get(key)
        except NotFound:
            return None
        try:
            return _Record.decode(data, header_only=header_only)
        except (ValueError, TypeError, KeyError) as e:
            # Its upload cannot be continued (nor its multipart upload found: a lifecycle rule ends that).
            log.warning("the record of upload %s is unreadable (%s); the upload starts again", key, e)
            return None

    def upload_size(self, upload_id: str, digest: Digest) -> int | None:
        prefix = self.upload_prefix(upload_id, digest)
        if digest.names_content and (record := self._live_record(prefix, digest, header_only=True)) is not None:
            return record.parts_size + record.tail_size
        parts = self.staged_parts(prefix)
        return sum(size for _, size in parts) if parts else None

    # S3 multipart uploads: the SDK's own steps (those its put_object and compose_object take), named here once.

    def _multipart_step(self, what: str, step: Callable[[], T]) -> T:
        try:
            return step()
        except (S3Error, InvalidResponseError, ServerError) as e:
            if _is_full(e):
                raise StorageFull(f"the S3 store {self.endpoint}/{self.bucket} is full: {e}") from e
            lost = isinstance(e, S3Error) and e.code in _PARTS_REFUSED_CODES
            if lost or (isinstance(e, S3Error | InvalidResponseError) and _is_not_found(e)):
                raise _UploadLost(f"the S3 store no longer holds the upload ({what}): push again to resend it") from e
            raise Unavailable(f"the S3 store refused to {what}: {e}") from e
        except _TRANSPORT_FAILURES as e:
            raise _unavailable(e) from e

    def create_multipart_upload(self, key: str) -> str:
        return self._multipart_step(
            f"begin a multipart upload of {key}",
            lambda: self._recreating_bucket(lambda: self.client._create_multipart_upload(self.bucket, key, {})),
        )

    def holds_multipart_upload(self, key: str, s3_upload: str) -> bool:
        try:
            self._multipart_step(
                f"list the parts of {key}",
                lambda: self.client._list_parts(self.bucket, key, s3_upload, max_parts=1),
            )
        except _UploadLost:
            return False
        return True

    def send_part_aside(self, send: Callable[[], None]) -> Future[None] | None:
        """Runs ``send`` on a sender of its own if one is free (None if not: the caller sends it itself)."""
        if not self._free_senders.acquire(blocking=False):
            return None

        def sending() -> None:
            try:
                send()
            finally:
                self._free_senders.release()

        try:
            return self._part_senders.submit(sending)
        except RuntimeError:  # shutting down: the caller sends the part itself
            self._free_senders.release()
            return None

    def upload_part(self, key: str, s3_upload: str, number: int, data: bytes) -> str:
        return self._multipart_step(
            f"store part {number} of {key}",
            lambda: self.client._upload_part(self.bucket, key, data, None, s3_upload, number),
        )

    def complete_multipart_upload(self, key: str, s3_upload: str, parts: list[tuple[int, str, int]], size: int) -> None:
        """Completes a multipart upload and checks that the object it makes is there, of ``size`` bytes.

        Raises:
            _UploadLost: the store no longer holds the upload, or refuses its parts (they cannot be mended).
            Unavailable: the store failed otherwise, or answered without making the object (S3 may answer a
                completion 200 with an error in the body).
        """
        listed = [Part(number, etag) for number, etag, _ in parts]
        self._multipart_step(
            f"complete the multipart upload of {key}",
            lambda: self.client._complete_multipart_upload(self.bucket, key, s3_upload, listed),
        )
        stored = self._stat_size(key)
        if stored != size:
            raise Unavailable(
                f"the S3 store answered the completion of {key} but holds {stored} bytes there, not {size}"
            )

    def abort_multipart_upload(self, key: str, s3_upload: str) -> None:
        try:
            self.client._abort_multipart_upload(self.bucket, key, s3_upload)
        except (S3Error, InvalidResponseError) as e:
            if not _is_not_found(e):  # aborted already (another replica's janitor)
                log.warning("could not abort the multipart upload %s of %s: %s", s3_upload, key, e)
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("could not abort the multipart upload %s of %s: %s", s3_upload, key, e)

    def commit_write(self, upload: PartialUpload) -> None:
        if isinstance(upload, _S3MultipartUpload):
            upload.complete()
            return
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
        except _TRANSPORT_FAILURES as e:
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
        if isinstance(upload, _S3MultipartUpload):
            upload.abort()
            return
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
        try:
            return self._get(self.key(f"state/{name}"))
        except NotFound:
            return None

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
        except _TRANSPORT_FAILURES as e:
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
        except (*_TRANSPORT_FAILURES, ServerError) as e:
            raise _unavailable(e) from e
        return info.last_modified if info.size == digest.size_bytes else None

    def stale_uploads(self, older_than: datetime) -> list[str]:
        """The objects (staged parts, records) of uploads whose newest object is older than ``older_than``.

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
        parts = 0
        for key in stale:
            if key.endswith(f"/{_RECORD}"):
                # A multipart upload's parts are the store's, not objects: they go when it is aborted.
                record = self._read_record(key.removesuffix(_RECORD), header_only=True)
                if record is not None and record.s3_upload is not None:
                    sha = key.removesuffix(f"/{_RECORD}").rsplit(".", 1)[1]
                    self.abort_multipart_upload(self._hash_key(sha), record.s3_upload)
                    parts += len(record.parts)
        self._remove(stale)
        return len(stale) + parts + self._abort_unrecorded_multipart_uploads(older_than)

    def _abort_unrecorded_multipart_uploads(self, begun_before: datetime) -> int:
        """Aborts the multipart uploads of blobs begun before ``begun_before`` that no upload's record names, and
        that this replica has seen unrecorded, at an earlier call, for at least as long as ``begun_before`` is
        ago (some servers report no true start time, and an upload is recorded milliseconds after it begins).

        Two streams writing one upload at once (a client retrying on another replica before the first noticed)
        each begin one, and the record names the last; a replica killed between beginning one and recording it
        leaves one too. Their parts would be kept, and billed, until a lifecycle rule ended them.
        """
        named = set()
        for item in self._list(self.key("uploads/"), recursive=True):
            if item.object_name and item.object_name.endswith(f"/{_RECORD}"):
                record = self._read_record(item.object_name.removesuffix(_RECORD), header_only=True)
                if record is not None and record.s3_upload is not None:
                    named.add(record.s3_upload)
        # Aborted once seen unrecorded for as long as the expiry, on this replica's clock: neither the store's
        # start times (moto reports 2010 for all) nor how often this is called (the janitor, DeleteBlobs) can
        # cut that short, so a long compose on the staged path or a minio self-copy over 5 GiB is left alone.
        required = (datetime.now(UTC) - begun_before).total_seconds()
        now = time.monotonic()
        aborted, key_marker, unrecorded = 0, None, {}
        for _ in range(UNRECORDED_SWEEP_PAGES):
            try:
                page = self.client._list_multipart_uploads(
                    self.bucket, prefix=self.key("blobs/"), key_marker=key_marker
                )
            except (S3Error, InvalidResponseError, ServerError, *_UNREADABLE) as e:
                log.warning("could not list the multipart uploads in %s: %s", self.bucket, e)
                break
            except _TRANSPORT_FAILURES as e:
                raise _unavailable(e) from e
            for upload in page.uploads:
                begun = upload.initiated_time
                if upload.upload_id and upload.upload_id not in named and begun is not None and begun < begun_before:
                    with self._sweep_lock:
                        first_seen = self._unrecorded_since.get(upload.upload_id)
                    unrecorded[upload.upload_id] = now if first_seen is None else first_seen
                    if first_seen is not None and now - first_seen >= required:
                        self.abort_multipart_upload(upload.object_name, upload.upload_id)
                        aborted += 1
            if not page.is_truncated or not page.next_key_marker:
                break
            key_marker = page.next_key_marker
        with self._sweep_lock:
            self._unrecorded_since = unrecorded
        return aborted


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
