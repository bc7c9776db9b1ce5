"""Client-side caches that make repeated pushes and pulls nearly free.

HashCache remembers the SHA-256 of local files keyed by (path, size, mtime_ns, inode),
so re-pushing an unchanged checkpoint costs one stat per file, and the upload id of each
large upload until it completes, so an interrupted push resumes. ContentCache keeps
verified downloaded content by digest and places it into a destination by reflink or
copy (never a hard link: a destination must not share bytes an edit could change), so
pulling content already seen moves no bytes over the network; content of up to
SMALL_ENTRY_BYTES is kept as rows of one database (SmallContent) instead of a file each. Both live under
MREG_CACHE_DIR (default ~/.cache/mreg). The download cache (client.snapshots) builds its
read-only snapshots from the same store: there, and only there, entries are hard-linked
out, since a snapshot's files are read-only and belong to the cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mreg.client.errors import MregError
from mreg.client.hashing import sha256_file

log = logging.getLogger(__name__)

_FICLONE = 0x40049409  # Linux ioctl: share the source's extents copy-on-write
_COPY_STEP = 64 << 20
# (source device, target device) pairs whose file systems refused a reflink.
_NO_REFLINK: set[tuple[int, int]] = set()
# The largest file a pull copies into the content cache where the file system cannot reflink it.
PULL_ADOPT_COPY_LIMIT = 16 << 20
# Verified-entry records written to content.db in one transaction.
RECORD_BATCH = 512
# Content up to this size is cached as a row of small.db rather than a file of its own (SmallContent).
SMALL_ENTRY_BYTES = 128 << 10
# Bytes of small content a process keeps before writing them to small.db in one transaction.
SMALL_BATCH_BYTES = 8 << 20
# Batches written in the background at most at once (queued on the database's write lock) before a pull waits.
WRITERS_AHEAD = 4


def default_cache_dir() -> Path:
    """The cache directory the client settings give: MREG_CACHE_DIR, else config.toml's cache_dir, else
    ``$XDG_CACHE_HOME/mreg`` (``~/.cache/mreg``). See client.settings."""
    from mreg.client.settings import ClientSettings  # settings is above this module

    return ClientSettings.load().cache_dir


class HashCache:
    """SHA-256 of local files, valid while a file's size, mtime and inode are unchanged."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "hashes.db", check_same_thread=False, timeout=30)
        with setting_up(root / "hashes.db"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " inode INTEGER, sha256 TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS uploads (sha256 TEXT, size INTEGER, upload_id TEXT,"
                " PRIMARY KEY (sha256, size))"
            )
        self._lock = threading.Lock()
        self.hits = 0

    def lookup(self, path: Path, info: os.stat_result) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                (str(path), info.st_size, info.st_mtime_ns, info.st_ino),
            ).fetchone()
        if row is not None:
            self.hits += 1
        return row[0] if row else None

    def store(self, entries: Iterable[tuple[Path, os.stat_result, str]]) -> None:
        rows = [(str(p), i.st_size, i.st_mtime_ns, i.st_ino, sha) for p, i, sha in entries]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", rows)

    def upload_id(self, sha256: str, size: int) -> str:
        """The upload id this client uses for a blob, the same in every run until it is stored.

        A push that was interrupted leaves its partial upload in the blob service under
        this id; the next push of the same content continues it from QueryWriteStatus.
        """
        return self.claim_upload_id(sha256, size)[0]

    def claim_upload_id(self, sha256: str, size: int) -> tuple[str, bool]:
        """``upload_id``, and whether this call made it: a new id has nothing to resume."""
        # Another process may claim the same blob at the same moment: the first insert
        # wins and both use its id.
        with self._lock, self._db:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO uploads VALUES (?, ?, ?)", (sha256, size, uuid.uuid4().hex)
            ).rowcount
            row = self._db.execute(
                "SELECT upload_id FROM uploads WHERE sha256 = ? AND size = ?", (sha256, size)
            ).fetchone()
        return str(row[0]), inserted == 1

    def forget_upload(self, sha256: str, size: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM uploads WHERE sha256 = ? AND size = ?", (sha256, size))

    # An upload begun before its file was hashed (transfer.StreamsWhileHashing) is kept under the file's
    # identity instead of a digest: the next push of the unchanged file continues it.

    @staticmethod
    def file_key(path: Path, info: os.stat_result) -> str:
        """What ``claim_upload_id`` takes in place of a sha256 for the unchanged file at ``path`` (``info`` its
        stat)."""
        return f"file:{info.st_mtime_ns}:{info.st_ino}:{path}"

    def has_file_upload(self, path: Path, info: os.stat_result) -> bool:
        """Whether an upload of the unchanged file at ``path`` was begun and not finished."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM uploads WHERE sha256 = ? AND size = ?", (self.file_key(path, info), info.st_size)
            ).fetchone()
        return row is not None

    def close(self) -> None:
        self._db.close()


class ContentCache:
    """Verified content by digest, placed into destinations by reflink or copy.

    A destination never shares an inode with the cache, so editing a pulled file cannot
    alter an entry. An entry itself can still be edited (by root, or after a chmod), so
    the (size, mtime_ns, ctime_ns, inode) of each entry is recorded when its digest is
    verified; an entry whose stat differs is hashed again before it is placed, and
    evicted if it no longer matches. ctime cannot be set back by a user, so an edit that
    restores size and mtime is still noticed.

    Content of up to SMALL_ENTRY_BYTES that arrives whole in memory is kept in ``small``
    (SmallContent, hashed on every read) rather than as a file; ``entry`` turns such a row
    into a file when a snapshot needs one to hard-link.
    """

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "content.db", check_same_thread=False, timeout=30)
        with setting_up(root / "content.db"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS verified (sha256 TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " ctime_ns INTEGER, inode INTEGER)"
            )
        # No fsync per record: a record lost in a crash only costs one more hash of the entry.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        # Fan-out directories known to exist, so adopting thousands of small files does not mkdir each time.
        self._made: set[Path] = set()
        # Records not yet written: a pull of thousands of small files would otherwise spend more
        # time committing one record per file than downloading. They are written every
        # RECORD_BATCH records and by flush() (each pull ends with one) and close().
        self._pending: dict[str, tuple[int, int, int, int]] = {}
        self.small = SmallContent(root / "small.db")
        self.rehashed = 0
        self._evicted = 0

    @property
    def evicted(self) -> int:
        """Entries found damaged and removed, files and rows alike."""
        return self._evicted + self.small.evicted

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def held(self, digests: Sequence[tuple[str, int]]) -> set[str]:
        """Which of these (sha256, size) the cache has an entry for, file or row, found without reading any.

        A pull asks this first, so a cache that holds none of a version's thousands of files
        costs a query and a stat per file rather than a ``place`` each.
        """
        found = self.small.held(sha for sha, size in digests if size <= SMALL_ENTRY_BYTES)
        found.update(sha for sha, _ in digests if sha not in found and os.path.exists(self._path(sha)))
        return found

    def place(self, sha256: str, size: int, target: Path, cancel: threading.Event | None = None) -> bool:
        """Puts cached content at ``target``; False if the cache does not hold it intact.

        ``cancel`` set (Ctrl-C) stops a copy between blocks with KeyboardInterrupt.

        Raises:
            MregError: FAILED_PRECONDITION if a directory stands at ``target``.
        """
        if size <= SMALL_ENTRY_BYTES:
            content = self.small.get(sha256, size)
            if content is not None:
                _place_bytes(content, target)
                return True
        source = self._path(sha256)
        try:
            info = source.stat()
        except FileNotFoundError:
            return False
        if info.st_size != size:
            self._evict(sha256, source, "its size changed")
            return False
        if not self._trusted(sha256, info):
            verified = self._reverify(sha256, source, info)
            if verified is None:
                return False
            info = verified
        temp = partial_path(target)
        try:
            clone_or_copy(source, temp, cancel)
            # An entry edited while it was copied gives a copy nobody verified: not placed.
            if _signature(source.stat()) != _signature(info):
                log.warning("cache entry %s changed while it was placed; downloading instead", sha256)
                return False
            replace_file(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return True

    def adopt(
        self, sha256: str, verified_file: Path, *, copy_limit: int | None = None, content: bytes | None = None
    ) -> None:
        """Adds a reflink of a file whose digest was just verified, or a copy if it is at most ``copy_limit``
        bytes (any size if None). ``content``, the file's bytes if the caller still holds them, is written
        instead of copying the file (a small file arrives whole in memory: three system calls instead of
        a dozen).

        A pull adopts what it downloads with a limit: where the file system cannot reflink,
        copying a multi-gigabyte file into the cache would write every byte twice and halve
        the pull's speed for a saving only a later pull of the same content would see.

        ``content`` of up to SMALL_ENTRY_BYTES becomes a row of ``small``, not a file.
        """
        if content is not None and len(content) <= SMALL_ENTRY_BYTES:
            self.small.add(sha256, content)
            return
        self._add_file(sha256, verified_file, copy_limit, content)

    def _add_file(self, sha256: str, verified_file: Path | None, copy_limit: int | None, content: bytes | None) -> None:
        entry = self._path(sha256)
        with contextlib.suppress(FileNotFoundError):
            if self._trusted(sha256, entry.stat()):
                return
        if entry.parent not in self._made:
            entry.parent.mkdir(exist_ok=True)
            self._made.add(entry.parent)
        temp = entry.parent / f".{sha256}.{uuid.uuid4().hex[:8]}"
        try:
            if content is not None and (copy_limit is None or len(content) <= copy_limit):
                _write_new(temp, content)
            elif verified_file is None:
                return
            elif copy_limit is None or verified_file.stat().st_size <= copy_limit:
                clone_or_copy(verified_file, temp)
            elif not reflink(verified_file, temp):
                return
            os.chmod(temp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(temp, entry)
            self._record(sha256, entry.stat())  # after the rename, which may change ctime
        except OSError as e:
            log.debug("could not cache %s: %s", sha256, e)
            self._made.discard(entry.parent)  # made again next time, should it have been removed
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def entry(self, sha256: str, size: int) -> Path | None:
        """The store file holding ``sha256``, trusted by its recorded stat or hashed again; None if absent or bad."""
        source = self._path(sha256)
        try:
            info = source.stat()
        except FileNotFoundError:
            return self._file_from_row(sha256, size)
        if info.st_size != size:
            self._evict(sha256, source, "its size changed")
            return None
        if not self._trusted(sha256, info) and self._reverify(sha256, source, info) is None:
            return None
        return source

    def _file_from_row(self, sha256: str, size: int) -> Path | None:
        """Moves small content from its row to a file entry, as snapshots hard-link files; None if not held."""
        content = self.small.get(sha256, size) if size <= SMALL_ENTRY_BYTES else None
        if content is None:
            return None
        self._add_file(sha256, None, None, content)
        source = self._path(sha256)
        with contextlib.suppress(FileNotFoundError):
            if self._trusted(sha256, source.stat()):
                self.small.remove(sha256)
                return source
        return None

    def admit(self, sha256: str, verified_file: Path) -> None:
        """Moves a file whose digest was just verified into the store, read-only, by rename (no copy).

        ``verified_file`` must be on the store's file system (the snapshot cache downloads
        into a staging directory beside it); it is gone afterwards either way.
        """
        entry = self._path(sha256)
        with contextlib.suppress(FileNotFoundError):
            if self._trusted(sha256, entry.stat()):
                verified_file.unlink()
                return
        entry.parent.mkdir(exist_ok=True)
        os.chmod(verified_file, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(verified_file, entry)
        self._record(sha256, entry.stat())  # after the rename, which may change ctime

    def link(self, sha256: str, size: int, target: Path) -> bool:
        """Hard-links the intact entry at ``target``; False if the store does not hold it intact.

        Raises:
            OSError: the file system refuses the hard link (EXDEV, EPERM, EMLINK, ...).
        """
        source = self.entry(sha256, size)
        if source is None:
            return False
        before = source.stat()
        os.link(source, target)
        self._keep_trust(sha256, before)
        return True

    def unlink(self, sha256: str, link: Path) -> None:
        """Removes ``link``, a hard link of the entry or a file of its own, keeping the entry trusted."""
        source = self._path(sha256)
        try:
            before = source.stat()
        except FileNotFoundError:
            before = None
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        if before is not None and self._trusted(sha256, before):
            self._keep_trust(sha256, before)

    def remove(self, sha256: str) -> None:
        """Deletes an entry, file or row (eviction by size or age); ``reclaim`` then returns the rows' space."""
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()
        self._forget(sha256)
        self.small.remove(sha256)

    def reclaim(self) -> None:
        """Gives the space of removed rows back to the file system."""
        self.small.reclaim()

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every entry of the store with its stat (partial temporary files left out)."""
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    yield entry.name, entry.stat()

    def flush(self) -> None:
        """Writes the records and rows kept in memory, so other processes see those entries too."""
        with self._lock:
            self._write_pending()
        self.small.flush()

    def close(self) -> None:
        self.flush()
        self._db.close()
        self.small.close()

    def _write_pending(self) -> None:
        if self._pending:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?)",
                    [(sha256, *signature) for sha256, signature in self._pending.items()],
                )
            self._pending.clear()

    def _forget(self, sha256: str) -> None:
        with self._lock, self._db:
            self._pending.pop(sha256, None)
            self._db.execute("DELETE FROM verified WHERE sha256 = ?", (sha256,))

    def _keep_trust(self, sha256: str, before: os.stat_result) -> None:
        """Re-records a trusted entry whose ctime changed only because a hard link to it came or went.

        Linking or unlinking changes the inode's ctime; without this, every snapshot built
        or evicted would make the next use of shared content hash it again. Size, mtime and
        inode must be unchanged, and the window is one link call.
        """
        with contextlib.suppress(FileNotFoundError):
            after = self._path(sha256).stat()
            same = (after.st_size, after.st_mtime_ns, after.st_ino) == (
                before.st_size,
                before.st_mtime_ns,
                before.st_ino,
            )
            if same and self._trusted(sha256, before):
                self._record(sha256, after)

    def _trusted(self, sha256: str, info: os.stat_result) -> bool:
        with self._lock:
            pending = self._pending.get(sha256)
            if pending is not None:
                return pending == _signature(info)
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, inode FROM verified WHERE sha256 = ?", (sha256,)
            ).fetchone()
        return row is not None and tuple(row) == _signature(info)

    def _record(self, sha256: str, info: os.stat_result) -> None:
        with self._lock:
            self._pending[sha256] = _signature(info)
            if len(self._pending) >= RECORD_BATCH:
                self._write_pending()

    def _reverify(self, sha256: str, source: Path, info: os.stat_result) -> os.stat_result | None:
        """Hashes an entry whose stat changed since it was verified; evicts it if it no longer matches.

        Returns:
            The entry's stat, now recorded as verified; None if the entry cannot be used.
        """
        self.rehashed += 1
        try:
            actual, _ = sha256_file(source, expected_size=info.st_size)
        except OSError as e:
            self._evict(sha256, source, f"it cannot be read ({e})")
            return None
        if actual != sha256:
            self._evict(sha256, source, f"its content hashes to {actual}")
            return None
        after = source.stat()
        if _signature(after) != _signature(info):
            return None  # changing while hashed: neither trusted nor evicted on this evidence
        self._record(sha256, after)
        return after

    def _evict(self, sha256: str, source: Path, why: str) -> None:
        log.warning("evicting cache entry %s: %s", sha256, why)
        self._evicted += 1
        with contextlib.suppress(FileNotFoundError):
            source.unlink()
        self._forget(sha256)


class SmallContent:
    """Verified content of up to SMALL_ENTRY_BYTES, kept as rows of one SQLite database (``small.db``).

    A file per cache entry made a pull of 10 000 small files create 20 000, and creating a
    file costs more than writing its bytes (an inode to allocate; on ext4 without a journal,
    after a scan past every inode deleted in the last minutes). A batch of rows lands in one
    transaction, appended to one file.

    A row is hashed again each time it is read (a few microseconds at this size), so unlike
    a file entry nothing about it needs to be trusted: a row that does not match its digest
    is deleted and the content downloaded instead. Rows added by this process are kept in
    memory and written every SMALL_BATCH_BYTES or RECORD_BATCH rows, on a thread of their own
    so the pull goes on receiving meanwhile, and by ``flush``; until then only this process
    sees them (a crash costs a later download, nothing else).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._reads, self._writes = self._open()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):
                raise
            # Content is verified on every read, so a damaged database is only a cache lost: start another.
            log.warning("%s is damaged (%s); starting it afresh", path, e)
            for damaged in (path, path.with_name(f"{path.name}-journal")):
                damaged.unlink(missing_ok=True)
            self._reads, self._writes = self._open()
        self._lock = threading.Lock()  # the dictionaries below and the read connection
        self._write_lock = threading.Lock()  # the write connection
        self._pending: dict[str, bytes] = {}  # rows not yet handed to a writer
        self._pending_bytes = 0
        self._writing: list[dict[str, bytes]] = []  # batches being written, seen by ``get`` until committed
        self._writers: list[threading.Thread] = []
        self.evicted = 0

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """A connection for lookups and one for writes, so a batch being written (megabytes) never holds up a
        lookup for longer than its commit."""
        reads = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with setting_up(self.path), reads:
            # Set before the first table exists, so rows deleted by eviction give their space back (reclaim).
            reads.execute("PRAGMA auto_vacuum=INCREMENTAL")
            # The content column comes last: listing sizes and ages then never reads a blob's overflow pages.
            reads.execute(
                "CREATE TABLE IF NOT EXISTS small (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                " stored_at REAL NOT NULL, content BLOB NOT NULL)"
            )
            reads.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a damaged header fails here
        # BEGIN IMMEDIATE: a writer takes the write lock before it reads anything, so two processes writing at
        # once queue on the busy timeout; deferred, one of them would be refused at once (a lock upgrade deadlock).
        writes = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level="IMMEDIATE")
        for connection in (reads, writes):
            # A rollback journal, not WAL: rows are appended, and appended pages are written once, where WAL
            # writes every byte twice (log, then checkpoint). TRUNCATE keeps one journal file, rather than
            # creating and deleting one per transaction.
            connection.execute("PRAGMA journal_mode=TRUNCATE")
            # No fsync: the cache is not what keeps content safe (the blob service is), a crash of the
            # process loses nothing committed, and rows are verified when read. Syncing made the pull wait on
            # the disk for every batch (1 000 against 1 750 small files/s in the same run).
            connection.execute("PRAGMA synchronous=OFF")
        return reads, writes

    def get(self, sha256: str, size: int) -> bytes | None:
        """The content, verified now; None if absent or if the stored row no longer matches (then deleted)."""
        with self._lock:
            content = self._pending.get(sha256)
            for batch in self._writing:
                if content is None:
                    content = batch.get(sha256)
            if content is None:
                try:
                    row = self._reads.execute("SELECT content FROM small WHERE sha256 = ?", (sha256,)).fetchone()
                except sqlite3.Error as e:  # busy for too long, or damaged: a miss, never a failed pull
                    log.warning("cannot read %s (%s); downloading %s instead", self.path, e, sha256)
                    row = None
                content = None if row is None else bytes(row[0])
        if content is None:
            return None
        if len(content) != size or hashlib.sha256(content).hexdigest() != sha256:
            log.warning("evicting cache entry %s: its stored content no longer matches its digest", sha256)
            self.evicted += 1
            self.remove(sha256)
            return None
        return content

    def held(self, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` have a row (not verified: ``get`` verifies)."""
        wanted = list(digests)
        found: set[str] = set()
        with self._lock:
            found.update(d for d in wanted if d in self._pending or any(d in b for b in self._writing))
            try:
                for i in range(0, len(wanted), 500):
                    chunk = wanted[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    query = f"SELECT sha256 FROM small WHERE sha256 IN ({marks})"
                    found.update(r[0] for r in self._reads.execute(query, chunk))
            except sqlite3.Error as e:
                log.warning("cannot read %s (%s); its content will be downloaded", self.path, e)
        return found

    def add(self, sha256: str, content: bytes) -> None:
        """Keeps content whose digest the caller just verified; a full batch is written on a thread of its own."""
        with self._lock:
            if sha256 in self._pending:
                return
            self._pending[sha256] = content
            self._pending_bytes += len(content)
            if self._pending_bytes < SMALL_BATCH_BYTES and len(self._pending) < RECORD_BATCH:
                return
            batch = self._take_pending()
            writer = threading.Thread(target=self._write, args=(batch,), name="mreg-small-cache-writer", daemon=True)
            self._writers.append(writer)
            # A writer this far behind holds the pull back, rather than the batches waiting in memory growing.
            behind = self._writers[:-WRITERS_AHEAD]
        writer.start()
        for earlier in behind:
            earlier.join()

    def remove(self, sha256: str) -> None:
        self.flush()  # a batch being written must not put the row back after it is deleted
        try:
            with self._write_lock, self._writes:
                self._writes.execute("DELETE FROM small WHERE sha256 = ?", (sha256,))
        except sqlite3.Error as e:
            log.warning("could not remove %s from %s: %s", sha256, self.path, e)

    def entries(self) -> list[tuple[str, int, float]]:
        """(sha256, size, when it was stored) of every row, including those not yet written."""
        self.flush()
        with self._lock:
            try:
                rows = self._reads.execute("SELECT sha256, size, stored_at FROM small").fetchall()
            except sqlite3.Error as e:
                log.warning("cannot list %s (%s); its rows are left out", self.path, e)
                rows = []
        return [(str(sha), int(size), float(at)) for sha, size, at in rows]

    def reclaim(self) -> None:
        """Gives the space of deleted rows back to the file system."""
        try:
            with self._write_lock:
                # The pragma frees a page per step, and execute() steps a statement without columns once.
                self._writes.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as e:  # busy: the space comes back at the next prune
            log.warning("could not give back the space of removed rows of %s: %s", self.path, e)

    def flush(self) -> None:
        """Writes what is kept in memory and waits for the batches being written."""
        with self._lock:
            batch = self._take_pending()
            writers = list(self._writers)
        if batch:
            self._write(batch)
        for writer in writers:
            writer.join()

    def _take_pending(self) -> dict[str, bytes]:
        """Moves the pending rows to the batches being written, where ``get`` still finds them (the lock is held)."""
        batch, self._pending, self._pending_bytes = self._pending, {}, 0
        if batch:
            self._writing.append(batch)
        return batch

    def _write(self, batch: dict[str, bytes]) -> None:
        try:
            now = time.time()
            with self._write_lock, self._writes:
                self._writes.executemany(
                    "INSERT OR IGNORE INTO small VALUES (?, ?, ?, ?)",
                    [(sha256, len(content), now, content) for sha256, content in batch.items()],
                )
        except sqlite3.Error as e:  # a full disk or a database busy too long: a cache that misses, not a failure
            log.warning("could not cache %d small files in %s: %s", len(batch), self.path, e)
        finally:
            with self._lock:
                self._writing = [b for b in self._writing if b is not batch]
                self._writers = [w for w in self._writers if w is not threading.current_thread()]

    def close(self) -> None:
        self.flush()
        self._reads.close()
        self._writes.close()


def setting_up(database: Path) -> contextlib.AbstractContextManager[bool]:
    """Held while this process sets a cache database up (journal mode, tables), which processes opening it at
    the same moment then do in turn: SQLite refuses a journal-mode change at once, rather than after its busy
    timeout, to connections that each hold a read lock and want the write lock."""
    return file_lock(database.with_name(f".{database.name}.lock"), fcntl.LOCK_EX, True)


@contextlib.contextmanager
def file_lock(path: Path, mode: int, wait: bool) -> Iterator[bool]:
    """An flock on ``path``; yields False instead of waiting when ``wait`` is False and it is taken.

    Each call opens the file anew, so two threads of one process exclude each other too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _signature(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to a file descriptor (a write may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_new(path: Path, content: bytes) -> None:
    """Creates ``path`` (which must not exist) holding ``content``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, content)
    finally:
        os.close(fd)


def _place_bytes(content: bytes, target: Path) -> None:
    """Writes ``content`` to a new file renamed onto ``target``, so a failure never leaves part of it there."""
    temp = partial_path(target)
    try:
        _write_new(temp, content)
        replace_file(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def partial_path(target: Path) -> Path:
    """A short temporary name next to ``target``: fits NAME_MAX whatever the length of target's name."""
    return target.parent / f".mreg-partial-{uuid.uuid4().hex[:12]}"


def replace_file(temp: Path, target: Path) -> None:
    """Renames ``temp`` onto ``target``, refusing (not crashing) where a directory stands.

    Raises:
        MregError: FAILED_PRECONDITION naming ``target``.
    """
    try:
        os.replace(temp, target)
    except IsADirectoryError as e:
        raise MregError(
            "FAILED_PRECONDITION", f"{target} is a directory, but the version has a file there; move it away"
        ) from e


def clone_or_copy(source: Path, target: Path, cancel: threading.Event | None = None) -> None:
    """reflink (shares extents copy-on-write: an edit of either side never shows in the other), else copy.

    The copy is an in-kernel sendfile in large steps, so Ctrl-C (``cancel``) stops a
    multi-gigabyte copy within a step.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        src_info = os.fstat(fd)
        with open(target, "wb") as dst:
            if _reflink(fd, src_info, dst):
                return
            offset = 0
            while offset < src_info.st_size:
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                sent = os.sendfile(dst.fileno(), fd, offset, min(_COPY_STEP, src_info.st_size - offset))
                if sent == 0:
                    break
                offset += sent
    finally:
        os.close(fd)


def reflink(source: Path, target: Path) -> bool:
    """Creates ``target`` sharing ``source``'s extents; False (and no ``target``) where the file system cannot."""
    fd = os.open(source, os.O_RDONLY)
    try:
        with open(target, "wb") as dst:
            if _reflink(fd, os.fstat(fd), dst):
                return True
        target.unlink()
        return False
    finally:
        os.close(fd)


def _reflink(fd: int, src_info: os.stat_result, dst: BinaryIO) -> bool:
    devices = (src_info.st_dev, os.fstat(dst.fileno()).st_dev)
    if devices in _NO_REFLINK:
        return False
    try:
        fcntl.ioctl(dst.fileno(), _FICLONE, fd)
        return True
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
            raise
        _NO_REFLINK.add(devices)  # not asked again for this pair of file systems
        return False
