"""Download to a cache and get a path: one read-only directory per version (``mreg download``, ``mreg cache``).

Layout under MREG_CACHE_DIR (default ~/.cache/mreg)::

    blobs/<aa>/<sha256>                              the content store (ContentCache): one verified,
                                                     read-only (0444) file per digest
    small.db                                         small content a pull cached (up to 128 KiB), a
                                                     row per digest, hashed on every read; turned into
                                                     a file of blobs/ when a snapshot needs it
    snapshots/<entity>/<project>/<artifact>/v<N>/    a version's files, as it was pushed: hard links
                                                     into blobs/, files 0444, directories 0555
    snapshots.db                                     the complete snapshots: version digest, files
                                                     (path, digest, stat), size, last use
    staging/<random>/                                downloads in progress (renamed into blobs/)
    locks/                                           fcntl locks

**Never copied twice.** Content travels from the blob service into ``staging/``, is verified
as it arrives (client.transfer), and is *renamed* into the store; a snapshot's files are hard
links to the store's, so two versions sharing a file share its inode, and the bytes are on
disk once however many versions hold them. Content a ``pull`` cached is reused the same way.
Where the file system refuses a hard link (EXDEV, EPERM, EMLINK, no support), the file is
reflinked or copied instead, made read-only, and a warning is logged: correct, but that
file's bytes are then on disk twice.

**Keyed by version.** A reference is resolved first (``:latest``, ``:best``, a registered
model's link all name a source version ``entity/project/artifact:vN``); the snapshot of that
version is reused if complete and its recorded manifest digest equals the version's (an
artifact deleted and re-created gets new snapshots). A reused snapshot is checked with one
stat per file: a file whose size, mtime, inode or mode changed (someone made it writable)
makes the snapshot rebuilt from the store, whose entries are themselves re-hashed when their
stat changed (ContentCache).

**Atomic.** A snapshot is built in ``.v<N>.partial-<random>`` beside its final place, each
file linked from a store entry trusted at that moment (the store re-hashes any entry whose
stat changed since it was verified), made read-only, renamed into place, and only then
recorded in snapshots.db. A directory without a record (a crash after the rename) or a
partial one is never reused: the next download of that version removes and rebuilds it.

**Concurrency.** Two processes (or threads) downloading the same version serialize on that
version's lock (``flock``): the second waits and then finds the snapshot complete. Every
download holds the cache lock shared; eviction holds it exclusively, so it never removes a
store entry a build is about to link. Eviction after a download only tries the lock (another
download running means it is skipped: that one evicts when it ends); ``mreg cache prune``
waits for it.

**Size limit.** MREG_CACHE_MAX_SIZE (``20GB``, ``500MiB``, a byte count; ``0`` or ``none``
for no limit) defaults to 50 GB: the cache lives in a home directory by default, and a
registry for training clusters moves checkpoints of tens of gigabytes, so an unbounded cache
fills disks (the reason this limit exists). 50 GB holds a few large checkpoints; a single
larger version still downloads, because the snapshot just returned is never evicted. The
size counts every inode once (store entries plus any snapshot file that is not a hard
link), so shared content counts once. After each download, while the cache is over the
limit, it removes first store content no snapshot references (only ``pull`` uses it, and
removing it takes away no directory anyone was handed), oldest first, then whole snapshots
in least-recently-used order (last use: when ``download`` last returned it), each with the
content it was the last to reference. An evicted snapshot's path disappears, but processes
with its files open keep reading them (POSIX unlink semantics); call ``download`` again for
a path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mreg.client.cache import ContentCache, clone_or_copy, file_lock
from mreg.client.errors import MregError
from mreg.client.transfer import RemoteFile, prepare_destination

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 50 * 10**9
# Attempts to link every file of a snapshot: a store entry found damaged is downloaded again.
BUILD_ATTEMPTS = 3
_READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_ONLY_DIR = _READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
_WRITABLE_DIR = _READ_ONLY_DIR | stat.S_IWUSR
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i)?)?b?\s*$", re.IGNORECASE)
_PARTIAL = ".partial-"

# (content digest, size) pairs to download into a staging directory; returns bytes received.
Fetch = Callable[[Sequence[RemoteFile], Path], int]


def parse_size(text: str) -> int:
    """``500MB``, ``2GiB``, ``20 GB`` or a byte count as bytes (KB, MB, ... are powers of 1000; KiB, MiB of 1024).

    Raises:
        MregError: INVALID_ARGUMENT for anything else.
    """
    match = _SIZE.match(text)
    if not match:
        raise MregError("INVALID_ARGUMENT", f"a size is a number and a unit (500MB, 2GiB, 20GB), not {text!r}")
    prefix = (match.group(2) or "").lower()
    power = " kmgtp".index(prefix) if prefix else 0
    base = 1024 if match.group(3) else 1000
    return int(float(match.group(1)) * base**power)


def max_size_from_env(environ: dict[str, str] | None = None) -> int | None:
    """MREG_CACHE_MAX_SIZE in bytes; None for no limit (``0``, ``none``, ``unlimited``); 50 GB when unset.

    The environment alone; ``ClientSettings.load().cache_max_size`` also reads config.toml (client.settings).
    """
    from mreg.client.settings import ClientSettings  # settings parses sizes with parse_size, below

    return ClientSettings.load(environ=environ, files=False).cache_max_size


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot in the cache."""

    ref: str  # the version, entity/project/artifact:vN
    artifact: str
    version: int
    digest: str
    path: Path
    files: int
    size_bytes: int
    last_used: datetime


@dataclass(frozen=True)
class Download:
    """What ``download`` returned: the snapshot, and whether anything had to be fetched or built."""

    snapshot: Snapshot
    from_cache: bool  # True: the snapshot was complete already, nothing was downloaded or linked
    downloaded_bytes: int

    @property
    def path(self) -> Path:
        return self.snapshot.path


@dataclass
class PrunePlan:
    """What a prune removes (or, dry, would remove)."""

    snapshots: list[Snapshot] = field(default_factory=list)
    content: list[tuple[str, int]] = field(default_factory=list)  # (sha256, size) of store entries
    size_before: int = 0
    size_after: int = 0

    @property
    def freed_bytes(self) -> int:
        return self.size_before - self.size_after


class SnapshotCache:
    """Read-only snapshots of versions, hard-linked from a ContentCache; see the module docstring."""

    def __init__(self, root: Path, content: ContentCache, max_size: int | None = DEFAULT_MAX_SIZE) -> None:
        self.root = root
        self.content = content
        self.max_size = max_size
        self.snapshots_dir = root / "snapshots"
        self.staging_dir = root / "staging"
        self.locks_dir = root / "locks"
        for directory in (self.snapshots_dir, self.staging_dir, self.locks_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "snapshots.db", check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA foreign_keys=ON")
        # Switching a new database to WAL does not wait for a busy one: processes opening it at
        # the same moment take turns.
        with file_lock(self.locks_dir / "snapshots-db.lock", fcntl.LOCK_EX, True), self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS snapshots (ref TEXT PRIMARY KEY, artifact TEXT, version INTEGER,"
                " digest TEXT, relpath TEXT, files INTEGER, size INTEGER, created REAL, last_used REAL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS snapshot_files (ref TEXT REFERENCES snapshots(ref) ON DELETE CASCADE,"
                " path TEXT, sha256 TEXT, size INTEGER, mtime_ns INTEGER, inode INTEGER, mode INTEGER,"
                " PRIMARY KEY (ref, path))"
            )
        self._lock = threading.Lock()
        self.links_refused = 0

    def close(self) -> None:
        self._db.close()

    # Download --------------------------------------------------------------------------

    def ensure(self, ref: str, digest: str, files: Sequence[RemoteFile], fetch: Fetch) -> Download:
        """The complete snapshot of the version ``ref`` (``entity/project/artifact:vN``), built if needed.

        Args:
            digest: the version's manifest digest; a snapshot recorded with another is rebuilt.
            files: the version's manifest.
            fetch: downloads content the store lacks into a directory, verified, named by digest.

        Raises:
            MregError: as the download; INVALID_ARGUMENT for a manifest path that would leave the snapshot.
        """
        artifact, version = _split_version(ref)
        final = self.snapshots_dir.joinpath(*artifact.split("/"), f"v{version}")
        with self._cache_lock(fcntl.LOCK_SH), self._version_lock(ref):
            found = self._complete(ref, digest, final)
            if found is not None:
                return Download(self._touch(found), from_cache=True, downloaded_bytes=0)
            self._discard(ref, final)
            received = self._build(ref, artifact, version, digest, files, final, fetch)
            snapshot = self._get(ref)
            assert snapshot is not None
            return Download(snapshot, from_cache=False, downloaded_bytes=received)

    def _complete(self, ref: str, digest: str, final: Path) -> Snapshot | None:
        """The recorded snapshot if its directory still holds exactly what was built."""
        snapshot = self._get(ref)
        if snapshot is None or snapshot.digest != digest or snapshot.path != final:
            return None
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, inode, mode FROM snapshot_files WHERE ref = ?", (ref,)
            ).fetchall()
        for path, size, mtime_ns, inode, mode in rows:
            try:
                info = (final / path).lstat()
            except OSError:
                log.warning("snapshot %s lost %s; rebuilding it", ref, path)
                return None
            if (info.st_size, info.st_mtime_ns, info.st_ino, info.st_mode) != (size, mtime_ns, inode, mode):
                log.warning("snapshot %s: %s changed since it was built; rebuilding it", ref, path)
                return None
        return snapshot

    def _discard(self, ref: str, final: Path) -> None:
        """Removes what a crash, an edit or a re-created artifact left of this version (its lock is held)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM snapshots WHERE ref = ?", (ref,))
        if final.parent.is_dir():
            for leftover in final.parent.iterdir():
                if leftover.name == final.name or leftover.name.startswith(f".{final.name}{_PARTIAL}"):
                    _remove_tree(leftover)

    def _build(
        self,
        ref: str,
        artifact: str,
        version: int,
        digest: str,
        files: Sequence[RemoteFile],
        final: Path,
        fetch: Fetch,
    ) -> int:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f".{final.name}{_PARTIAL}{uuid.uuid4().hex[:12]}"
        received = 0
        try:
            targets = prepare_destination(temp, [f.path for f in files])
            pending = list(zip(files, targets, strict=True))
            for attempt in range(BUILD_ATTEMPTS):
                missing = [(f, t) for f, t in pending if self.content.entry(f.sha256, f.size_bytes) is None]
                if missing:
                    received += self._fetch([f for f, _ in missing], fetch)
                pending = [(f, t) for f, t in pending if not self._place(f, t)]
                if not pending:
                    break
                if attempt == BUILD_ATTEMPTS - 1:
                    raise MregError("DATA_LOSS", f"{pending[0][0].path}: the cached content did not verify")
            for directory, _, _ in os.walk(temp, topdown=False):
                os.chmod(directory, _READ_ONLY_DIR)
            stats = [(f, t.relative_to(temp).as_posix(), t.lstat()) for f, t in zip(files, targets, strict=True)]
            os.rename(temp, final)  # same parent: a read-only directory may be renamed
        except BaseException:
            _remove_tree(temp)
            raise
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref,
                    artifact,
                    version,
                    digest,
                    final.relative_to(self.root).as_posix(),
                    len(files),
                    sum(f.size_bytes for f in files),
                    now,
                    now,
                ),
            )
            self._db.executemany(
                "INSERT INTO snapshot_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(ref, path, f.sha256, i.st_size, i.st_mtime_ns, i.st_ino, i.st_mode) for f, path, i in stats],
            )
        return received

    def _fetch(self, files: Sequence[RemoteFile], fetch: Fetch) -> int:
        """Downloads distinct content into a staging directory and renames each file into the store."""
        unique = {f.sha256: RemoteFile(f.sha256, f.sha256, f.size_bytes) for f in files}
        staging = self.staging_dir / uuid.uuid4().hex
        staging.mkdir()
        try:
            received = fetch(list(unique.values()), staging)
            for sha256 in unique:
                self.content.admit(sha256, staging / sha256)
            return received
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _place(self, file: RemoteFile, target: Path) -> bool:
        """Hard-links a store entry at ``target`` (copies it read-only if links are refused); False if it is bad."""
        try:
            return self.content.link(file.sha256, file.size_bytes, target)
        except FileExistsError:
            target.unlink()
            return self._place(file, target)
        except OSError as e:
            self.links_refused += 1
            log.warning("cannot hard-link cached content into %s (%s); copying it instead", target.parent, e)
        source = self.content.entry(file.sha256, file.size_bytes)
        if source is None:
            return False
        clone_or_copy(source, target)
        os.chmod(target, _READ_ONLY_FILE)
        return True

    def _touch(self, snapshot: Snapshot) -> Snapshot:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("UPDATE snapshots SET last_used = ? WHERE ref = ?", (now, snapshot.ref))
        return Snapshot(**{**snapshot.__dict__, "last_used": datetime.fromtimestamp(now, UTC)})

    # Listing ---------------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        """Complete snapshots, least recently used first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY last_used, ref").fetchall()
        return [self._snapshot(row) for row in rows]

    def _get(self, ref: str) -> Snapshot | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE ref = ?", (ref,)).fetchone()
        return self._snapshot(row) if row else None

    def _snapshot(self, row: tuple[str, str, int, str, str, int, int, float]) -> Snapshot:
        ref, artifact, version, digest, relpath, files, size, last_used = row
        return Snapshot(
            ref, artifact, version, digest, self.root / relpath, files, size, datetime.fromtimestamp(last_used, UTC)
        )

    def total_size(self) -> int:
        """Bytes on disk: every store entry and every snapshot file that is not one of them, each inode once."""
        return self._survey().total

    # Eviction --------------------------------------------------------------------------

    def enforce_limit(self, keep: str) -> PrunePlan | None:
        """Evicts down to ``max_size`` after a download, never the snapshot ``keep``; None if skipped.

        Skipped when there is no limit, or when another download holds the cache (it enforces the
        limit itself when it ends).
        """
        if self.max_size is None:
            return None
        with self._cache_lock(fcntl.LOCK_EX, wait=False) as held:
            if not held:
                return None
            plan = self._plan(self.max_size, None, keep={keep})
            self._apply(plan)
            return plan

    def prune(
        self, max_size: int | None = None, older_than: timedelta | None = None, dry_run: bool = False
    ) -> PrunePlan:
        """Removes snapshots not used within ``older_than`` and evicts down to ``max_size`` (LRU).

        Leftovers of interrupted builds and downloads are always removed (dry run aside).
        Waits for downloads in progress to finish.
        """
        with self._cache_lock(fcntl.LOCK_EX):
            plan = self._plan(max_size, older_than, keep=set())
            if not dry_run:
                self._remove_leftovers()
                self._apply(plan)
            return plan

    def _survey(self) -> _Survey:
        store = {
            sha: _Stored(info.st_size, info.st_mtime, (info.st_dev, info.st_ino))
            for sha, info in self.content.entries()
        }
        for sha, size, stored_at in self.content.small.entries():
            # Small content no snapshot links (snapshots link files); held both ways, it counts both.
            held = store.get(sha)
            store[sha] = _Stored(size, stored_at) if held is None else _Stored(held.size + size, held.mtime, held.inode)
        store_inodes = {stored.inode: sha for sha, stored in store.items() if stored.inode is not None}
        linked: dict[str, set[str]] = {}
        own: dict[str, dict[tuple[int, int], int]] = {}
        with self._lock:
            rows = self._db.execute("SELECT ref, path FROM snapshot_files").fetchall()
        paths = {s.ref: s.path for s in self.list()}
        for ref, path in rows:
            if ref not in paths:
                continue
            try:
                info = (paths[ref] / path).lstat()
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in store_inodes:
                linked.setdefault(ref, set()).add(store_inodes[key])
            else:
                own.setdefault(ref, {})[key] = info.st_size
        return _Survey(store, linked, own)

    def _plan(self, max_size: int | None, older_than: timedelta | None, keep: set[str]) -> PrunePlan:
        survey = self._survey()
        plan = PrunePlan(size_before=survey.total)
        references: dict[str, int] = {}
        for shas in survey.linked.values():
            for sha in shas:
                references[sha] = references.get(sha, 0) + 1
        total = survey.total

        def drop_content(sha: str) -> None:
            nonlocal total
            plan.content.append((sha, survey.store[sha].size))
            total -= survey.store.pop(sha).size

        def evict(snapshot: Snapshot) -> None:
            nonlocal total
            plan.snapshots.append(snapshot)
            total -= sum(survey.own.get(snapshot.ref, {}).values())
            for sha in survey.linked.get(snapshot.ref, ()):
                references[sha] -= 1
                if references[sha] == 0 and sha in survey.store:
                    drop_content(sha)

        candidates = [s for s in self.list() if s.ref not in keep]  # least recently used first
        orphans = sorted((s for s in survey.store if not references.get(s)), key=lambda s: survey.store[s].mtime)
        if older_than is not None:
            cutoff = datetime.now(UTC) - older_than
            for snapshot in [s for s in candidates if s.last_used < cutoff]:
                evict(snapshot)
                candidates.remove(snapshot)
            for sha in [s for s in orphans if datetime.fromtimestamp(survey.store[s].mtime, UTC) < cutoff]:
                drop_content(sha)
                orphans.remove(sha)
        if max_size is not None:
            while total > max_size and orphans:
                drop_content(orphans.pop(0))
            while total > max_size and candidates:
                evict(candidates.pop(0))
        plan.size_after = total
        return plan

    def _apply(self, plan: PrunePlan) -> None:
        for snapshot in plan.snapshots:
            log.info("evicting snapshot %s (last used %s)", snapshot.ref, snapshot.last_used.isoformat())
            with self._lock:
                files = self._db.execute("SELECT path, sha256 FROM snapshot_files WHERE ref = ?", (snapshot.ref,))
                rows = files.fetchall()
            # Forgotten first: a crash halfway leaves a directory without a record, never reused.
            with self._lock, self._db:
                self._db.execute("DELETE FROM snapshots WHERE ref = ?", (snapshot.ref,))
            _make_writable(snapshot.path)
            for path, sha256 in rows:
                self.content.unlink(sha256, snapshot.path / path)
            _remove_tree(snapshot.path)
        for sha256, _ in plan.content:
            self.content.remove(sha256)
        if plan.content:
            self.content.reclaim()

    def _remove_leftovers(self) -> None:
        """Partial snapshots, snapshots without a record and staging directories (the cache lock is held)."""
        recorded = {s.path for s in self.list()}
        for artifact_dir in self.snapshots_dir.glob("*/*/*"):
            for entry in artifact_dir.iterdir():
                if entry not in recorded:
                    log.info("removing incomplete snapshot %s", entry)
                    _remove_tree(entry)
        for entry in self.staging_dir.iterdir():
            _remove_tree(entry)

    # Locks -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _cache_lock(self, mode: int, wait: bool = True) -> Iterator[bool]:
        with file_lock(self.locks_dir / "cache.lock", mode, wait) as held:
            yield held

    @contextlib.contextmanager
    def _version_lock(self, ref: str) -> Iterator[None]:
        name = hashlib.sha256(ref.encode()).hexdigest()[:32]
        with file_lock(self.locks_dir / f"{name}.lock", fcntl.LOCK_EX, True):
            yield


_COLUMNS = "ref, artifact, version, digest, relpath, files, size, last_used"


@dataclass(frozen=True)
class _Stored:
    """Content the store holds: its size, when it was stored, and the file's (device, inode) if it is one."""

    size: int
    mtime: float
    inode: tuple[int, int] | None = None


@dataclass
class _Survey:
    store: dict[str, _Stored]  # sha256 -> what the store holds of it
    linked: dict[str, set[str]]  # snapshot ref -> store entries it hard-links
    own: dict[str, dict[tuple[int, int], int]]  # snapshot ref -> its files that are not store entries

    @property
    def total(self) -> int:
        own = {key: size for files in self.own.values() for key, size in files.items()}
        return sum(stored.size for stored in self.store.values()) + sum(own.values())


def _split_version(ref: str) -> tuple[str, int]:
    """``acme/vision/resnet:v3`` as (``acme/vision/resnet``, 3)."""
    artifact, _, selector = ref.rpartition(":")
    if artifact.count("/") != 2 or not re.fullmatch(r"v\d+", selector):
        raise MregError("INTERNAL", f"expected a version name entity/project/artifact:vN, got {ref!r}")
    return artifact, int(selector[1:])


def _make_writable(root: Path) -> None:
    if not root.is_dir() or root.is_symlink():
        return
    for directory, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(directory, _WRITABLE_DIR)


def _remove_tree(path: Path) -> None:
    """Removes a snapshot directory (its directories are read-only) or a file; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)
