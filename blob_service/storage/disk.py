"""The local-disk backend: one file per blob, published by rename, or many small blobs in one pack.

Layout under the root directory::

    blobs/ab/abcdef...      published blobs, named by their SHA-256
    blobs/ab/.put-<id>      a small blob being stored whole (BatchUpdateBlobs)
    packs/                  small blobs that arrived many to a batch, a file per batch (see ``packs``)
    uploads/<id>.<sha256>   uploads in progress (<id>.unhashed-<size> while one's hash is to come last)
    state/<name>            small objects of the service's own (the scrub's lease)

A published file is always complete: uploads are written to their own file, fsynced,
and renamed into place, which is atomic on POSIX file systems. A blob may be both a file
and packed (stored twice by two clients at once): either copy serves it, and deleting it
deletes both.

A small blob is written beside the name it will take, not in uploads/. A rename between
two directories takes the file system's rename lock and both directories' locks, and
files created in one directory contend for its lock and for inodes in one block group:
16 threads storing small blobs through uploads/ spent most of their time in the kernel
waiting on those, at about 0.7 times the rate of the same writes made beside their names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from mreg.blob_service.digests import Digest
from mreg.blob_service.errors import Aborted, NotFound, StorageFull, Unavailable
from mreg.blob_service.storage.base import BlobReader, BlobStorage, PartialUpload, StoredBlob
from mreg.blob_service.storage.files import fsync_directory, write_synced
from mreg.blob_service.storage.packs import PackedBlob, PackStore

_READ_BACK_CHUNK = 4 << 20
# A small blob being stored, in its fan-out directory; never 64 characters long, so never taken for a blob.
_PUT_PREFIX = ".put-"
# Fan-out directories looked through for puts a crash left behind, per remove_stale_uploads: all 256 in turn,
# a few at a time, so the janitor's every run stays small however many blobs the store holds.
_PUT_SWEEP_DIRECTORIES = 16
# A batch of at least this many blobs to store is stored as one pack. Below it a pack saves little (the
# per-file cost it avoids grows with the count), while a file per blob frees its space as soon as it is
# deleted, where a pack waits to be rewritten.
PACK_MIN_BLOBS = 16


@contextlib.contextmanager
def _store_errors(root: Path) -> Iterator[None]:
    """Turns the file system's refusals into the storage interface's errors: "no space" (a full disk or a
    quota) into StorageFull, naming the store and its free space; any other (a read-only mount, permissions,
    an I/O error, a directory gone) into Unavailable, naming the path, rather than an error gRPC reports
    as UNKNOWN."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        # The pack index: full like any file on a full disk; otherwise locked too long by another process,
        # unreadable or damaged.
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StorageFull(f"the blob store {root} is full ({e})") from e
        raise Unavailable(
            f"the blob store {root} failed: its pack index {root / 'packs' / 'index.sqlite'} answered {e}; "
            "check the disk and that this service can read and write there"
        ) from e
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({e.filename})" if e.filename else ""
            raise Unavailable(
                f"the blob store {root} failed: {e.strerror or e}{where}; check that this service can read and "
                "write there (a read-only mount, permissions, the disk)"
            ) from e
        try:
            info = os.statvfs(root)
            free = f"{info.f_bavail * info.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        raise StorageFull(f"the blob store {root} is full ({os.strerror(e.errno)}; {free})") from e


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _in_store(method: _Method) -> _Method:
    """Runs a method of an object with a ``root`` (its store) under ``_store_errors``, a generator's steps too."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def steps(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with _store_errors(self.root):
                yield from method(self, *args, **kwargs)

        return steps  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _store_errors(self.root):
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class _FileReader(BlobReader):
    def __init__(self, file: BinaryIO, root: Path) -> None:
        self._file = file
        self.root = root
        info = os.fstat(file.fileno())
        # A published file is never rewritten, only replaced by rename: the inode says which copy this is.
        self.identity = (info.st_dev, info.st_ino)

    @_in_store
    def read(self, size: int) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


class _PackReader(BlobReader):
    """Reads one blob's bytes out of its pack, and nothing past them."""

    def __init__(self, file: BinaryIO, packed: PackedBlob, start: int, root: Path) -> None:
        self._file = file
        self.root = root
        self.identity = packed.identity
        self._remaining = packed.size - start
        file.seek(packed.offset + start)

    @_in_store
    def read(self, size: int) -> bytes:
        data = self._file.read(min(size, self._remaining))
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


class _DiskUpload(PartialUpload):
    appends_while_hashing = True

    def __init__(self, upload_id: str, digest: Digest, path: Path, root: Path) -> None:
        super().__init__(upload_id, digest)
        self.path = path
        self.root = root
        # Unbuffered: appends reach the file at once, so a full disk fails the append
        # that caused it, and closing never fails on a buffered tail.
        with _store_errors(root):
            self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - owned until close()
        try:
            # A lock per upload file keeps two streams (in any process on this host) from
            # interleaving bytes of the same upload.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._file.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Aborted(
                    f"upload {upload_id} is being written by another stream; "
                    "query its status and retry when that stream ends"
                ) from e
            with _store_errors(root):
                raise
        self._size = os.fstat(self._file.fileno()).st_size

    @property
    def committed_size(self) -> int:
        return self._size

    @_in_store
    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._file.fileno(), view)
            view = view[written:]
        self._size += len(data)

    @_in_store
    def read_back(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(_READ_BACK_CHUNK):
                yield chunk

    @_in_store
    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class DiskStorage(BlobStorage):
    """Blobs as files under one directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._blobs = self.root / "blobs"
        # The same as text, for the lookups FindMissingBlobs makes by the thousand: joining strings costs
        # a fraction of building a Path.
        self._blobs_text = str(self._blobs)
        self._uploads = self.root / "uploads"
        self._state = self.root / "state"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)
        # Every fan-out directory up front, so storing a blob need not try to make its own each time.
        for fan_out in range(256):
            (self._blobs / f"{fan_out:02x}").mkdir(exist_ok=True)
        self._put_sweep_next = 0
        self._put_sweep_lock = threading.Lock()
        # Blobs renamed into place whose directory is not yet synced (deferred puts), by hash, with how many
        # puts of each are in that state: until synced they count as not stored, so nobody is told a blob is
        # kept that a power cut could still take (it is then stored again, which is harmless).
        self._not_yet_durable: dict[str, int] = {}
        self._durability_lock = threading.Lock()
        self._packs = PackStore(self.root / "packs")

    def __repr__(self) -> str:
        return f"DiskStorage({str(self.root)!r})"

    def blob_path(self, digest: Digest) -> Path:
        return self._blobs / digest.hash[:2] / digest.hash

    def locate(self, digest: Digest) -> tuple[Path, int] | None:
        """Where a stored blob's bytes lie: a file and the offset they start at (0 for a blob stored as a file,
        past the record's header in a pack); None if it is not stored."""
        path = self.blob_path(digest)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == digest.size_bytes:
                return path, 0
        packed = self._packs.find(digest.hash)
        return (packed.path, packed.offset) if packed is not None and packed.size == digest.size_bytes else None

    def _upload_path(self, upload_id: str, digest: Digest) -> Path:
        return self._uploads / f"{upload_id}.{digest.hash}"

    @_in_store
    def has(self, digest: Digest) -> bool:
        return self.last_used(digest) is not None

    @_in_store
    def open_read(self, digest: Digest, offset: int = 0, length: int = 0) -> BlobReader:
        try:
            file = open(self.blob_path(digest), "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            return self._open_packed(digest, offset)
        if os.fstat(file.fileno()).st_size != digest.size_bytes:
            # A digest is hash and size: content of this hash with another size is another blob.
            file.close()
            return self._open_packed(digest, offset)
        file.seek(offset)
        return _FileReader(file, self.root)

    def _open_packed(self, digest: Digest, offset: int) -> BlobReader:
        for _ in range(3):  # a pack rewritten between the lookup and the open is looked up again
            packed = self._packs.find(digest.hash)
            if packed is None or packed.size != digest.size_bytes:
                # A digest is hash and size: content of this hash with another size is another blob.
                wrong_size = packed is not None or self.stored_size(digest.hash) is not None
                raise NotFound(f"blob {digest} is not stored" + (" (is the size right?)" if wrong_size else ""))
            try:
                file = open(packed.path, "rb")  # noqa: SIM115 - returned to the caller
            except FileNotFoundError:
                continue
            return _PackReader(file, packed, offset, self.root)
        raise Unavailable(f"blob {digest} moved between packs three times while being opened; try again")

    @_in_store
    def read_together(self, digests: Sequence[Digest]) -> dict[Digest, tuple[bytes, object]]:
        # One lookup for the batch, and each pack opened once and read in order, rather than a failed open,
        # a lookup and an open per blob.
        wanted = {digest.hash: digest for digest in digests}
        found: dict[Digest, tuple[bytes, object]] = {}
        for blobs in self._packs.find_many(list(wanted)).values():
            try:
                fd = os.open(blobs[0].path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # rewritten since the lookup: these are read one by one
                continue
            try:
                for packed in blobs:
                    digest = wanted[packed.sha256]
                    if packed.size == digest.size_bytes:
                        found[digest] = (os.pread(fd, packed.size, packed.offset), packed.identity)
            finally:
                os.close(fd)
        return found

    @_in_store
    def stored_size(self, sha256: str) -> int | None:
        try:
            return os.stat(os.path.join(self._blobs_text, sha256[:2], sha256)).st_size
        except FileNotFoundError:
            packed = self._packs.find(sha256)
            return None if packed is None else packed.size

    @_in_store
    def begin_write(self, upload_id: str, digest: Digest, *, fresh: bool = False) -> PartialUpload:
        return _DiskUpload(upload_id, digest, self._upload_path(upload_id, digest), self.root)

    @_in_store
    def upload_size(self, upload_id: str, digest: Digest) -> int | None:
        try:
            return self._upload_path(upload_id, digest).stat().st_size
        except FileNotFoundError:
            return None

    @_in_store
    def commit_write(self, upload: PartialUpload) -> None:
        assert isinstance(upload, _DiskUpload)
        upload.sync()
        target = self.blob_path(upload.digest)
        target.parent.mkdir(exist_ok=True)
        os.replace(upload.path, target)
        upload.close()
        fsync_directory(target.parent)

    @_in_store
    def put_verified(self, digest: Digest, data: bytes, *, defer_durability: bool = False) -> None:
        target = self.blob_path(digest)
        temp = target.parent / f"{_PUT_PREFIX}{uuid.uuid4().hex}"
        if defer_durability:
            self._hold(digest)
        try:
            try:
                write_synced(temp, [data])
            except FileNotFoundError:  # its fan-out directory, made at start-up, was removed since
                target.parent.mkdir(exist_ok=True)
                write_synced(temp, [data])
            os.replace(temp, target)
        except BaseException:
            if defer_durability:
                self._release([digest])
            with contextlib.suppress(OSError):  # never there, or the store refuses even this: the first error says
                temp.unlink()
            raise
        if not defer_durability:
            fsync_directory(target.parent)

    @_in_store
    def put_verified_together(self, blobs: Sequence[tuple[Digest, bytes]]) -> bool:
        if len(blobs) < PACK_MIN_BLOBS:
            return False
        self._packs.add(blobs)
        return True

    def durability_steps(self, digests: Sequence[Digest]) -> list[Callable[[], None]]:
        # A put's rename lasts once its directory is synced: one sync per directory serves every blob of the
        # batch renamed into it (a batch of 1 000 blobs lands in about 250 of the 256), where each put syncing
        # its own directory made twice as many syncs as blobs.
        by_directory: dict[Path, list[Digest]] = {}
        for digest in digests:
            by_directory.setdefault(self.blob_path(digest).parent, []).append(digest)
        return [functools.partial(self._sync_renamed, d, held) for d, held in by_directory.items()]

    @_in_store
    def _sync_renamed(self, directory: Path, digests: list[Digest]) -> None:
        try:
            fsync_directory(directory)
        finally:
            self._release(digests)

    def _hold(self, digest: Digest) -> None:
        with self._durability_lock:
            self._not_yet_durable[digest.hash] = self._not_yet_durable.get(digest.hash, 0) + 1

    def _release(self, digests: Sequence[Digest]) -> None:
        with self._durability_lock:
            for digest in digests:
                left = self._not_yet_durable[digest.hash] - 1
                if left:
                    self._not_yet_durable[digest.hash] = left
                else:
                    del self._not_yet_durable[digest.hash]

    @_in_store
    def abort_write(self, upload: PartialUpload) -> None:
        assert isinstance(upload, _DiskUpload)
        upload.close()
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()

    @_in_store
    def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()
        self._packs.remove(digest.hash)

    @_in_store
    def delete_if_same(self, digest: Digest, identity: object) -> bool:
        if isinstance(identity, tuple) and identity[0] == "pack":
            _, pack, offset = identity
            return self._packs.remove(digest.hash, only=(pack, offset))
        # Move the file aside first (atomic), then look at what was moved: between a check and
        # an unlink of the path, a good copy could be renamed into place and be deleted instead.
        # Aside is in uploads/, which the janitor empties, should this process die right here.
        path = self.blob_path(digest)
        aside = self._uploads / f"scrub-{uuid.uuid4().hex}.{digest.hash}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            info = aside.stat()
            same = (info.st_dev, info.st_ino) == identity
            if not same:
                # A verified copy was published after the bad one was read: put it back, unless yet
                # another verified copy has been published meanwhile.
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
        finally:
            aside.unlink()
        fsync_directory(path.parent)
        return same

    @_in_store
    def read_state(self, name: str) -> bytes | None:
        try:
            return (self._state / name).read_bytes()
        except FileNotFoundError:
            return None

    @_in_store
    def write_state(self, name: str, data: bytes) -> None:
        temp = self._state / f".{name}.{uuid.uuid4().hex}"
        self._state.mkdir(exist_ok=True)
        temp.write_bytes(data)
        os.replace(temp, self._state / name)

    @_in_store
    def iter_blobs(self) -> Iterator[StoredBlob]:
        for shard in self._blobs.iterdir():
            for entry in os.scandir(shard):
                if len(entry.name) != 64:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat()
                    yield StoredBlob(Digest(entry.name, info.st_size), _utc(info.st_mtime))
        for sha256, size, last_used in self._packs.all_blobs():
            yield StoredBlob(Digest(sha256, size), _utc(last_used))

    @_in_store
    def last_used(self, digest: Digest) -> datetime | None:
        if digest.hash in self._not_yet_durable:
            return None
        try:
            info = os.stat(os.path.join(self._blobs_text, digest.hash[:2], digest.hash))
            if info.st_size == digest.size_bytes:
                return _utc(info.st_mtime)
        except FileNotFoundError:
            pass
        packed = self._packs.find(digest.hash)
        return _utc(packed.last_used) if packed is not None and packed.size == digest.size_bytes else None

    @_in_store
    def touch(self, digest: Digest) -> None:
        try:
            os.utime(self.blob_path(digest))
        except FileNotFoundError:
            self._packs.touch(digest.hash)

    @_in_store
    def remove_stale_uploads(self, older_than: datetime) -> int:
        removed = 0
        for entry in os.scandir(self._uploads):
            with contextlib.suppress(FileNotFoundError):
                if _utc(entry.stat().st_mtime) < older_than and _remove_unless_locked(entry.path):
                    removed += 1
        return removed + self._remove_stale_puts(older_than) + self._packs.remove_stale(older_than.timestamp())

    def _remove_stale_puts(self, older_than: datetime) -> int:
        """Removes the small blobs a crash left half-stored in the next few fan-out directories."""
        with self._put_sweep_lock:
            first = self._put_sweep_next
            self._put_sweep_next = (first + _PUT_SWEEP_DIRECTORIES) % 256
        removed = 0
        for fan_out in range(first, first + _PUT_SWEEP_DIRECTORIES):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self._blobs / f"{fan_out % 256:02x}"):
                    if not entry.name.startswith(_PUT_PREFIX):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if _utc(entry.stat().st_mtime) < older_than:
                            os.unlink(entry.path)
                            removed += 1
        return removed


def _remove_unless_locked(path: str) -> bool:
    """Deletes an upload file unless a stream holds its lock (it is being written right now)."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        os.unlink(path)
        return True


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
