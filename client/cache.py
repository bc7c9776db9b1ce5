"""Client-side caches that make repeated pushes and pulls nearly free.

HashCache remembers the SHA-256 of local files keyed by (path, size, mtime_ns, inode),
so re-pushing an unchanged checkpoint costs one stat per file. ContentCache keeps
verified downloaded content by digest and places it into a destination by reflink,
hard link or, across file systems, copy, so pulling content already seen moves no bytes
over the network. Both live under MREG_CACHE_DIR (default ~/.cache/mreg).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_FICLONE = 0x40049409  # Linux ioctl: share the source's extents copy-on-write


def default_cache_dir() -> Path:
    configured = os.environ.get("MREG_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mreg"


class HashCache:
    """SHA-256 of local files, valid while a file's size, mtime and inode are unchanged."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "hashes.db", check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " inode INTEGER, sha256 TEXT)"
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

    def close(self) -> None:
        self._db.close()


class ContentCache:
    """Verified content by digest, placed into destinations without copying where possible.

    Entries are read-only: a file hard-linked from the cache shares its inode, and a
    read-only inode keeps an in-place edit of the pulled file from altering the cache.
    """

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def place(self, sha256: str, size: int, target: Path) -> bool:
        """Puts cached content at ``target``; False if the cache does not hold it."""
        source = self._path(sha256)
        try:
            if source.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.mreg-cache-{uuid.uuid4().hex[:8]}"
        try:
            _clone_or_link(source, temp)
            os.replace(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return True

    def adopt(self, sha256: str, verified_file: Path) -> None:
        """Adds a file whose digest was just verified, sharing its storage where possible."""
        entry = self._path(sha256)
        if entry.exists():
            return
        entry.parent.mkdir(exist_ok=True)
        temp = entry.parent / f".{sha256}.{uuid.uuid4().hex[:8]}"
        try:
            _clone_or_link(verified_file, temp)
            os.chmod(temp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(temp, entry)
        except OSError as e:
            log.debug("could not cache %s: %s", sha256, e)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _clone_or_link(source: Path, target: Path) -> None:
    """reflink, else hard link, else copy."""
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
            raise
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)
