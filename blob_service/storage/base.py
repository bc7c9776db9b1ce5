"""The storage interface every blob backend implements.

Backends only store and return bytes. They never hash: the blob service verifies every
digest before it asks a backend to publish, and verifies content as it reads it back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from mreg.blob_service.digests import Digest
from mreg.blob_service.sha256 import Sha256


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A published blob and when it was last stored or asked for (for garbage collection)."""

    digest: Digest
    last_used: datetime


class BlobReader(ABC):
    """A forward-only reader over one stored blob."""

    # Which stored object this reader reads (disk: device and inode; S3: the ETag), for
    # ``BlobStorage.delete_if_same``; None when the backend cannot tell.
    identity: object | None = None

    @abstractmethod
    def read(self, size: int) -> bytes:
        """Returns up to ``size`` bytes; an empty result means the end of the blob."""

    @abstractmethod
    def close(self) -> None:
        """Releases the underlying file or connection."""

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PartialUpload(ABC):
    """An upload in progress whose received bytes live in the backend, not in memory.

    Any process that opens the same upload id continues from ``committed_size``.
    """

    # Whether ``append`` may run on another thread while the service hashes the same bytes: true of a backend
    # whose append only copies them out (a file write), not of one that reads the hasher's state in it.
    appends_while_hashing: bool = False

    def __init__(self, upload_id: str, digest: Digest) -> None:
        self.upload_id = upload_id
        self.digest = digest

    @property
    @abstractmethod
    def committed_size(self) -> int:
        """The number of bytes received and kept so far."""

    @abstractmethod
    def append(self, data: bytes) -> None:
        """Adds bytes at ``committed_size``."""

    @abstractmethod
    def read_back(self) -> Iterator[bytes]:
        """Yields the bytes kept so far, so a resumed upload can restore its hash state."""

    def resume_from(self) -> tuple[bytes | None, Iterator[bytes]]:
        """How a resumed upload restores its hash state: a state saved for a prefix of the kept bytes (None:
        none, hash from the first byte) and the kept bytes after that prefix. By default, every kept byte."""
        return None, self.read_back()

    def hash_with(self, hasher: Sha256) -> None:
        """Tells the upload the hasher that is given every chunk just before ``append`` is, for a backend that
        keeps the hash state at its own points (``resume_from``) rather than bytes it can read back."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Makes the received bytes durable and releases the upload for other writers; ``committed_size`` is then
        what the upload keeps. Closing again does nothing."""


class BlobStorage(ABC):
    """Where blob bytes live. One subclass per backend."""

    # Whether looking a small blob up costs less than storing it again: so on a local disk (a stat, against a
    # write and an fsync), not in an object store, where the HEAD is a request like the PUT it might save.
    looks_before_storing: bool = True
    # Whether an upload whose hash comes with its last message is stored as cheaply as one whose hash comes
    # first: so on disk (renamed into place either way), not in an S3 store, which sends an upload of known
    # hash straight to the blob's key but must stage one of unknown hash apart and copy it at the end.
    stores_hash_at_finish_as_cheaply: bool = True

    def count_requests(self, count: Callable[[str], None]) -> None:
        """Has ``count(method)`` called for every request this backend makes to a remote store, by HTTP
        method; a local backend makes none."""
        return None

    @abstractmethod
    def has(self, digest: Digest) -> bool:
        """True if the blob is published."""

    @abstractmethod
    def open_read(self, digest: Digest, offset: int = 0, length: int = 0) -> BlobReader:
        """Opens a published blob at ``offset``, for ``length`` bytes (0: to the end).

        The reader may return more than ``length`` bytes; the caller stops at what it
        asked for. A backend that fetches by request (S3) asks for exactly that range.

        Raises:
            NotFound: the blob is not published.
        """

    @abstractmethod
    def stored_size(self, sha256: str) -> int | None:
        """The size of the copy published under ``sha256``, whatever size a caller asks it by; None if none is.

        A copy whose size is not its digest's is the caller's mistake or damage; its bytes tell which.
        """

    @abstractmethod
    def begin_write(self, upload_id: str, digest: Digest, *, fresh: bool = False) -> PartialUpload:
        """Opens the upload ``upload_id`` of ``digest``, creating it or resuming it.

        ``fresh`` promises the id was never used, so there is nothing to resume.

        Raises:
            Aborted: another stream is writing the same upload right now.
        """

    @abstractmethod
    def upload_size(self, upload_id: str, digest: Digest) -> int | None:
        """The committed size of an upload in progress, or None if there is none."""

    @abstractmethod
    def commit_write(self, upload: PartialUpload) -> None:
        """Publishes a complete, verified upload atomically under its digest."""

    @abstractmethod
    def put_verified(self, digest: Digest, data: bytes, *, defer_durability: bool = False) -> None:
        """Publishes a small blob whose bytes the service has already verified, in one step.

        It is kept for good when this returns; with ``defer_durability``, only once the steps
        ``durability_steps`` gives for it have run, and until then it counts as not stored.
        """

    def put_verified_together(self, blobs: Sequence[tuple[Digest, bytes]]) -> bool:
        """Publishes several small blobs the service has already verified as one stored object, kept for good
        when this returns, if this backend stores blobs that way and so many at once are worth it; returns
        False, having stored nothing, where it does not (the caller then puts each)."""
        return False

    def read_together(self, digests: Sequence[Digest]) -> dict[Digest, tuple[bytes, object]]:
        """The bytes and identity (as a reader's, for ``delete_if_same``) of those of ``digests`` this backend
        reads more cheaply together than one by one (blobs packed in one stored object), as stored, unverified;
        the caller reads the others one by one."""
        return {}

    def durability_steps(self, digests: Sequence[Digest]) -> list[Callable[[], None]]:
        """What still makes the deferred puts of ``digests`` last, as steps that may run side by side, each
        to be run exactly once; an empty list where a put lasts as soon as it is made (an object store)."""
        return []

    @abstractmethod
    def abort_write(self, upload: PartialUpload) -> None:
        """Discards an upload and everything it received."""

    @abstractmethod
    def delete(self, digest: Digest) -> None:
        """Removes a published blob; a blob that is not there is not an error."""

    @abstractmethod
    def delete_if_same(self, digest: Digest, identity: object) -> bool:
        """Removes a published blob only if it is still the object a reader of that ``identity`` read.

        The scrub removes a blob it found corrupt with this, so that a good copy published
        since it read the bad one (a client uploading the blob again) stays. Returns whether
        the blob was removed.
        """

    @abstractmethod
    def read_state(self, name: str) -> bytes | None:
        """A small object the service keeps beside the blobs (e.g. the scrub's lease); None if absent."""

    @abstractmethod
    def write_state(self, name: str, data: bytes) -> None:
        """Replaces a small state object (a few hundred bytes) in one step."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every published blob, in no particular order."""

    @abstractmethod
    def last_used(self, digest: Digest) -> datetime | None:
        """When the blob was last published or touched; None unless it is stored whole."""

    @abstractmethod
    def touch(self, digest: Digest) -> None:
        """Marks a stored blob as used now, so garbage collection leaves it alone."""

    @abstractmethod
    def remove_stale_uploads(self, older_than: datetime) -> int:
        """Discards uploads that received nothing since ``older_than``; returns how many parts went."""
