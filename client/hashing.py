"""Local files: finding them under a directory and hashing them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from client.errors import MregError

HASH_BLOCK = 4 << 20


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to push: where it is, its manifest path, and its digest."""

    source: Path
    path: str
    sha256: str
    size_bytes: int


def sha256_file(path: Path) -> tuple[str, int]:
    """Returns the SHA-256 (hex) and size of a file, reading it in large blocks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        first = f.read(HASH_BLOCK)
        hasher.update(first)
        size = len(first)
        if size < HASH_BLOCK:  # most files of a checkpoint are small: no big buffer for them
            return hasher.hexdigest(), size
        buffer = bytearray(HASH_BLOCK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            hasher.update(view[:n])
            size += n
    return hasher.hexdigest(), size


def list_files(root: Path) -> list[tuple[Path, str]]:
    """Lists the regular files under ``root`` as (absolute path, relative POSIX path), sorted.

    Symbolic links to files are followed; links to directories are not, so a link cycle
    cannot make the walk endless.

    Raises:
        MregError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise MregError("INVALID_ARGUMENT", f"{root} is not a directory")
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in names:
            full = Path(directory) / name
            if full.is_file():
                found.append((full, full.relative_to(root).as_posix()))
    found.sort(key=lambda item: item[1].encode())
    return found
