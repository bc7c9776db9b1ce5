"""Packs: many small blobs of one batch stored as one file, for the disk backend.

A file per blob costs the file system an inode, a directory entry and their writes for every blob; for
blobs of a few KiB that is most of what storing them costs (10 000 files of 4-64 KiB pushed at about
1 250/s into files on ext4 and 2 000/s into tmpfs, with the same service). A pack is one file per
BatchUpdateBlobs call, written, fsynced and renamed into place like any blob, and an index says where
each blob lies in which pack.

Layout under the store's root::

    packs/<id>.pack      published packs: records of a header (magic, raw SHA-256, size) and the blob's bytes
    packs/.new-<id>      a pack being written
    packs/index.sqlite   the index: each packed blob's pack, offset and last use; each pack's live bytes

The index is SQLite (in WAL mode, every change synced before it is acknowledged), so that blob service
processes sharing one store on one host see each other's packs, and a crash leaves it consistent. The
headers make a pack readable without its index: a published pack the index does not know (the index was
lost, or a crash came between publishing a pack and indexing it) is indexed again from its records, each
one's bytes checked against its header's digest, never removed while it holds a blob stored nowhere else.

A blob deleted from a pack (garbage collection, or the scrub removing a damaged copy) leaves dead bytes;
a pack whose dead bytes outgrow its live ones is rewritten without them, and a pack with nothing live
left is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mreg.blob_service.digests import Digest
from mreg.blob_service.storage.files import fsync_directory, write_synced

log = logging.getLogger(__name__)

_MAGIC = b"MREGBLOB"
_HEADER = struct.Struct(">8s32sQ")  # magic, raw SHA-256, size
HEADER_BYTES = _HEADER.size
_NEW_PREFIX = ".new-"
_SUFFIX = ".pack"
# How long a writer waits for another process's transaction on the index before giving up.
_BUSY_TIMEOUT_MS = 30_000
# Hashes looked up per query: under SQLite's limit on a statement's parameters.
_LOOKUPS_PER_QUERY = 500
# Packed blobs listed per query by all_blobs.
_LISTING_PAGE = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    live INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    pack TEXT NOT NULL,
    offset INTEGER NOT NULL,
    last_used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs (pack);
"""


@dataclass(frozen=True, slots=True)
class PackedBlob:
    """Where a packed blob's bytes lie: ``size`` bytes at ``offset`` of ``path``."""

    sha256: str
    size: int
    pack: str
    offset: int
    last_used: float
    path: Path

    @property
    def identity(self) -> tuple[str, str, int]:
        # A pack is never written again once published, so pack and offset say which copy this is.
        return ("pack", self.pack, self.offset)


def record_header(digest: Digest) -> bytes:
    return _HEADER.pack(_MAGIC, bytes.fromhex(digest.hash), digest.size_bytes)


class PackStore:
    """The packs of one store directory and their index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index_path = directory / "index.sqlite"
        self._local = threading.local()
        index_missing = not self._index_path.exists()
        self._connection().executescript(_SCHEMA)  # each statement its own transaction, as replicas may race
        if index_missing:
            self._reindex_all()

    def _reindex_all(self) -> None:
        """Indexes every published pack again: the index is gone (restored from a backup without it, or
        deleted), and without it the packed blobs could not be found."""
        names = [e.name.removesuffix(_SUFFIX) for e in os.scandir(self.directory) if e.name.endswith(_SUFFIX)]
        if not names:
            return
        blobs = sum(self.reindex(name) for name in names)
        log.warning("%s was missing: indexed %d packs again, %d blobs", self._index_path, len(names), blobs)

    # -- the index ---------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # One connection per thread: sqlite3 connections are not to be shared between threads at once.
            db = sqlite3.connect(self._index_path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (BEGIN IMMEDIATE) so it never fails half way on another writer.

        ``durable`` False lets the commit skip its sync: for changes a power cut may undo harmlessly.
        """
        db = self._connection()
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")

    def path_of(self, pack: str) -> Path:
        return self.directory / f"{pack}{_SUFFIX}"

    def find(self, sha256: str) -> PackedBlob | None:
        row = (
            self._connection()
            .execute("SELECT size, pack, offset, last_used FROM blobs WHERE hash = ?", (sha256,))
            .fetchone()
        )
        if row is None:
            return None
        size, pack, offset, last_used = row
        return PackedBlob(sha256, size, pack, offset, last_used, self.path_of(pack))

    def find_many(self, hashes: Sequence[str]) -> dict[str, list[PackedBlob]]:
        """The packed blobs among ``hashes``, by pack, each pack's in the order they lie in it."""
        by_pack: dict[str, list[PackedBlob]] = {}
        db = self._connection()
        for start in range(0, len(hashes), _LOOKUPS_PER_QUERY):
            run = hashes[start : start + _LOOKUPS_PER_QUERY]
            rows = db.execute(
                f"SELECT hash, size, pack, offset, last_used FROM blobs WHERE hash IN ({', '.join('?' * len(run))})",
                run,
            )
            for sha256, size, pack, offset, last_used in rows:
                by_pack.setdefault(pack, []).append(
                    PackedBlob(sha256, size, pack, offset, last_used, self.path_of(pack))
                )
        for blobs in by_pack.values():
            blobs.sort(key=lambda blob: blob.offset)
        return by_pack

    def all_blobs(self) -> Iterator[tuple[str, int, float]]:
        """(hash, size, last used) of every packed blob, a page at a time, so that neither the whole index nor
        a read transaction is held while the caller works through them."""
        after = ""
        while True:
            page = (
                self._connection()
                .execute(
                    "SELECT hash, size, last_used FROM blobs WHERE hash > ? ORDER BY hash LIMIT ?",
                    (after, _LISTING_PAGE),
                )
                .fetchall()
            )
            yield from page
            if len(page) < _LISTING_PAGE:
                return
            after = page[-1][0]

    def touch(self, sha256: str, now: float | None = None) -> None:
        # A touch lost to a power cut only lets garbage collection consider the blob a little sooner, as
        # one lost on a file's mtime would: not worth a sync per blob a FindMissingBlobs finds.
        with self._transaction(durable=False) as db:
            db.execute("UPDATE blobs SET last_used = ? WHERE hash = ?", (time.time() if now is None else now, sha256))

    # -- writing -----------------------------------------------------------------------------------------------

    def _write_pack(self, records: Sequence[tuple[Digest, bytes | memoryview]]) -> tuple[str, list[int], int]:
        """Writes, syncs and publishes a pack of ``records``; returns its name, each record's data offset and
        its size. The pack is not in the index yet."""
        name = uuid.uuid4().hex
        temp = self.directory / f"{_NEW_PREFIX}{name}"
        offsets = []
        position = 0
        parts: list[bytes | memoryview] = []
        for digest, data in records:
            parts += [record_header(digest), data]
            offsets.append(position + HEADER_BYTES)
            position += HEADER_BYTES + len(data)
        try:
            write_synced(temp, parts)
            os.replace(temp, self.path_of(name))
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        fsync_directory(self.directory)
        return name, offsets, position

    def add(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Stores verified blobs as one pack; kept for good when this returns. A blob the index already
        holds keeps its copy (the new one is dead bytes from the start)."""
        name, offsets, size = self._write_pack(blobs)
        records = [(digest.hash, digest.size_bytes, offset) for (digest, _), offset in zip(blobs, offsets, strict=True)]
        try:
            with self._transaction() as db:
                added = self._index(db, name, size, records, time.time())
        except BaseException:
            self._remove_file(name)
            raise
        if not added:
            self._remove_file(name)

    @staticmethod
    def _index(
        db: sqlite3.Connection, pack: str, pack_size: int, records: Sequence[tuple[str, int, int]], stored_at: float
    ) -> int:
        """Indexes a pack's records (hash, size, offset of the data) in ``db``'s transaction; returns how many
        became live. A blob the index already holds keeps its copy; a pack with nothing live is not recorded."""
        live = 0
        added = 0
        for sha256, size, offset in records:
            inserted = db.execute(
                "INSERT INTO blobs (hash, size, pack, offset, last_used) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (hash) DO NOTHING",
                (sha256, size, pack, offset, stored_at),
            ).rowcount
            live += inserted * (HEADER_BYTES + size)
            added += inserted
        if live:
            db.execute("INSERT INTO packs (name, size, live) VALUES (?, ?, ?)", (pack, pack_size, live))
        return added

    # -- removing ----------------------------------------------------------------------------------------------

    def remove(self, sha256: str, *, only: tuple[str, int] | None = None) -> bool:
        """Removes a packed blob from the index (``only`` at that pack and offset); returns whether it did.
        Its pack is rewritten once mostly dead, and removed once nothing in it is live."""
        with self._transaction() as db:
            row = db.execute("SELECT size, pack, offset FROM blobs WHERE hash = ?", (sha256,)).fetchone()
            if row is None or (only is not None and (row[1], row[2]) != only):
                return False
            size, pack, _ = row
            db.execute("DELETE FROM blobs WHERE hash = ?", (sha256,))
            left = db.execute(
                "UPDATE packs SET live = live - ? WHERE name = ? RETURNING live, size", (HEADER_BYTES + size, pack)
            ).fetchone()
            live, total = left if left is not None else (0, 0)
            if live <= 0:
                db.execute("DELETE FROM packs WHERE name = ?", (pack,))
        if live <= 0:
            self._remove_file(pack)
        elif 2 * live < total:
            self._compact(pack)
        return True

    def _compact(self, pack: str) -> None:
        """Rewrites ``pack`` with its live blobs only, under the index's write lock so no blob of it is
        removed or moved meanwhile. Readers that opened the old pack read on (POSIX keeps an unlinked file
        for its open descriptors); one that looked it up just before finds it gone and looks again."""
        with self._transaction() as db:
            rows = db.execute("SELECT hash, size, offset FROM blobs WHERE pack = ? ORDER BY offset", (pack,)).fetchall()
            if not rows or db.execute("SELECT 1 FROM packs WHERE name = ?", (pack,)).fetchone() is None:
                return
            with open(self.path_of(pack), "rb") as source:
                records = []
                for sha256, size, offset in rows:
                    source.seek(offset)
                    records.append((Digest(sha256, size), source.read(size)))
            name, offsets, new_size = self._write_pack(records)
            try:
                db.executemany(
                    "UPDATE blobs SET pack = ?, offset = ? WHERE hash = ?",
                    [(name, offset, digest.hash) for (digest, _), offset in zip(records, offsets, strict=True)],
                )
                db.execute("DELETE FROM packs WHERE name = ?", (pack,))
                db.execute("INSERT INTO packs (name, size, live) VALUES (?, ?, ?)", (name, new_size, new_size))
            except BaseException:
                self._remove_file(name)
                raise
        self._remove_file(pack)

    def _remove_file(self, pack: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(pack).unlink()

    def remove_stale(self, older_than: float) -> int:
        """Removes the packs a crash left half written, and indexes again (``reindex``) the published packs
        the index does not know, each once untouched since ``older_than`` (a time.time() value): younger,
        its writer may be about to index it. Returns how many files went."""
        known = {row[0] for row in self._connection().execute("SELECT name FROM packs")}
        removed = 0
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.startswith(_NEW_PREFIX):
                stale = True
            elif name.endswith(_SUFFIX):
                stale = name.removesuffix(_SUFFIX) not in known
            else:
                continue
            with contextlib.suppress(FileNotFoundError):
                if stale and entry.stat().st_mtime < older_than:
                    if name.endswith(_SUFFIX):
                        # Looked up again: a pack published since the listing above is now in the index.
                        if not self._is_indexed(name.removesuffix(_SUFFIX)):
                            self.reindex(name.removesuffix(_SUFFIX))
                            removed += not os.path.exists(entry.path)  # nothing of its own in it
                        continue
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def reindex(self, pack: str) -> int:
        """Indexes the records of a published pack the index does not know; returns how many blobs became live.

        A record whose bytes do not match its header's digest stays dead, and reading stops at the first
        header that is not one. A blob the index already holds keeps its copy there. A pack with nothing
        new in it is removed: every blob it holds intact is stored elsewhere. Blobs indexed again are dated
        by the pack's mtime, so garbage collection judges them by when they were stored.
        """
        path = self.path_of(pack)
        try:
            stored_at = path.stat().st_mtime
            content = path.read_bytes()
        except FileNotFoundError:
            return 0
        view = memoryview(content)
        records: list[tuple[str, int, int]] = []  # (hash, size, offset of the data)
        damaged = 0
        position = 0
        while position + HEADER_BYTES <= len(content):
            magic, raw_hash, size = _HEADER.unpack_from(content, position)
            start = position + HEADER_BYTES
            if magic != _MAGIC or start + size > len(content):
                damaged += 1
                break
            if hashlib.sha256(view[start : start + size]).digest() == raw_hash:
                records.append((raw_hash.hex(), size, start))
            else:
                damaged += 1
            position = start + size
        if damaged:
            log.warning("pack %s: %d damaged records left out of the index", path, damaged)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM packs WHERE name = ?", (pack,)).fetchone() is not None:
                return 0  # indexed meanwhile (its writer, or another replica)
            added = self._index(db, pack, len(content), records, stored_at)
        if not added:
            self._remove_file(pack)
        return added

    def _is_indexed(self, pack: str) -> bool:
        return self._connection().execute("SELECT 1 FROM packs WHERE name = ?", (pack,)).fetchone() is not None
