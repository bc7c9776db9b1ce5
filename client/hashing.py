"""Local files: finding them under a directory and hashing them."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mreg.client.errors import MregError

HASH_BLOCK = 4 << 20


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to push: where it is, its manifest path, and its digest."""

    source: Path
    path: str
    sha256: str
    size_bytes: int


def sha256_file(
    path: Path,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
    expected_size: int | None = None,
) -> tuple[str, int]:
    """Returns the SHA-256 (hex) and size of a file, reading it in large blocks.

    ``on_bytes`` is told how many bytes were hashed after each block (progress). ``expected_size``, the size
    a stat just gave, sizes the first read: a small file is then read whole into a buffer of its own size,
    where a read of a whole block allocates (and maps, then unmaps) 4 MiB per file, which costs more than
    hashing a file of 4-64 KiB. The content hashed is what the file holds, whatever size it has by then.

    Raises:
        KeyboardInterrupt: ``cancel`` was set (checked between blocks).
    """
    hasher = hashlib.sha256()
    size = 0
    # One byte beyond the expected size, so that a file that grew since its stat is read on, not cut short.
    first_read = HASH_BLOCK if expected_size is None else min(HASH_BLOCK, expected_size + 1)
    with open(path, "rb", buffering=0) as f:
        first = f.read(first_read)
        hasher.update(first)
        size = len(first)
        if on_bytes is not None:
            on_bytes(size)
        if size < first_read:  # most files of a checkpoint are small: no big buffer for them
            return hasher.hexdigest(), size
        buffer = bytearray(HASH_BLOCK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            hasher.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
    return hasher.hexdigest(), size


class Listing(NamedTuple):
    """What ``list_files`` found under a directory."""

    files: list[tuple[Path, str]]  # (path, relative POSIX path), sorted by path bytes
    # Directories with nothing in them, as relative POSIX paths: a version holds files only, so these are left
    # out, and a push says so.
    empty_directories: tuple[str, ...]


def list_files(root: Path) -> Listing:
    """Lists the regular files under ``root`` as (path, relative POSIX path), sorted by path bytes, and the
    empty directories.

    Symbolic links are followed, to files and to directories alike: the content is the
    target's, the manifest path is the link's own path under ``root``. Nothing is left out
    silently: a link that leads back into a directory containing it (a loop), a dangling
    link, a FIFO, socket or device, an unreadable directory or a name that is not UTF-8
    fails the whole listing with the path.

    Raises:
        MregError: INVALID_ARGUMENT naming the offending path (PERMISSION_DENIED for an
            unreadable directory).
    """
    if not root.is_dir():
        raise MregError("INVALID_ARGUMENT", f"{root} is not a directory")
    top = root.stat()
    found: list[tuple[Path, str]] = []
    empty: list[str] = []
    # Each directory still to read, with the (device, inode) of it and its ancestors: a
    # directory met again among its own ancestors is a loop, while the same directory
    # reached through two unrelated links is content listed twice, which is fine.
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(str(root), "", frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        directory, prefix, ancestors = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except PermissionError as e:
            raise MregError("PERMISSION_DENIED", f"{prefix or '.'}: the directory cannot be read ({e.strerror})") from e
        if not entries and prefix:
            empty.append(prefix.removesuffix("/"))
        for entry in entries:
            relative = prefix + entry.name
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError as e:
                raise MregError("INVALID_ARGUMENT", f"{relative!r}: the file name is not valid UTF-8") from e
            try:
                if entry.is_dir():  # follows a link
                    info = entry.stat()
                    key = (info.st_dev, info.st_ino)
                    if key in ancestors:
                        raise MregError(
                            "INVALID_ARGUMENT",
                            f"{relative} is a symbolic link to a directory that contains it "
                            f"({os.readlink(entry.path)!r}): a loop; remove the link or replace it by a copy",
                        )
                    stack.append((entry.path, relative + "/", ancestors | {key}))
                elif entry.is_file():
                    found.append((Path(entry.path), relative))
                elif entry.is_symlink():
                    raise MregError(
                        "INVALID_ARGUMENT",
                        f"{relative} is a symbolic link to {os.readlink(entry.path)!r}, which does not exist",
                    )
                else:
                    raise MregError(
                        "INVALID_ARGUMENT",
                        f"{relative} is not a regular file or directory (a FIFO, socket or device); "
                        "move it out of the directory to push",
                    )
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise MregError("INVALID_ARGUMENT", f"{relative} is a loop of symbolic links") from e
                raise MregError("INVALID_ARGUMENT", f"{relative}: {e.strerror or e}") from e
    found.sort(key=lambda item: item[1].encode())
    return Listing(found, tuple(sorted(empty, key=str.encode)))
