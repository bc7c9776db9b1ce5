"""A file's digest is of what it holds when it is read, whatever size its stat gave beforehand."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mreg.client.hashing import HASH_BLOCK, sha256_file


@pytest.mark.parametrize(
    "actual",
    [0, 1, 40 << 10, HASH_BLOCK - 1, HASH_BLOCK, HASH_BLOCK + 1, 2 * HASH_BLOCK + 7],
)
@pytest.mark.parametrize("stated", ["exact", "smaller", "larger", "none"])
def test_the_digest_covers_the_whole_file_when_its_size_changed_since_the_stat(
    tmp_path: Path, actual: int, stated: str
) -> None:
    data = os.urandom(actual)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    expected_size = {"exact": actual, "smaller": max(0, actual - 1) // 2, "larger": actual + 4096, "none": None}
    assert sha256_file(path, expected_size=expected_size[stated]) == (hashlib.sha256(data).hexdigest(), actual)


def test_progress_counts_every_byte_hashed(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(HASH_BLOCK + 123))
    seen: list[int] = []
    sha256_file(path, on_bytes=seen.append, expected_size=100)
    assert sum(seen) == HASH_BLOCK + 123
