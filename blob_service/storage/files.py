"""File steps both disk layouts (a file per blob, packs) take to keep what they write."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

_IOV_MAX = os.sysconf("SC_IOV_MAX")


def write_synced(path: Path, parts: Sequence[bytes | memoryview]) -> None:
    """Creates ``path`` holding ``parts`` one after another, on disk when this returns; through the descriptor,
    as the bytes are all in hand (a buffered file adds an fstat, an ioctl and a seek), and in as few system
    calls as the kernel allows."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        pending = deque(memoryview(part) for part in parts if len(part))
        while pending:
            written = os.writev(fd, [pending[i] for i in range(min(_IOV_MAX, len(pending)))])
            while written:
                if written >= len(pending[0]):
                    written -= len(pending.popleft())
                else:
                    pending[0] = pending[0][written:]
                    written = 0
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    # A rename is only durable once the directory entry itself is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
