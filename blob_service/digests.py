"""Blob digests: the SHA-256 and size that name a blob."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mreg.blob_service.errors import InvalidArgument, Reason

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Digest:
    """The identity of a blob: the lowercase hex SHA-256 of its bytes and its length."""

    hash: str
    size_bytes: int

    @classmethod
    def parse(cls, hash_hex: str, size_bytes: int) -> Digest:
        """Validates and builds a digest.

        Raises:
            InvalidArgument: the hash is not 64 lowercase hex characters or the size is negative.
        """
        if not _HEX64.fullmatch(hash_hex):
            raise InvalidArgument(
                f"digest hash {hash_hex[:80]!r} is not a SHA-256: expected 64 lowercase hex characters",
                Reason.DIGEST_INVALID,
            )
        if size_bytes < 0:
            raise InvalidArgument(f"digest {hash_hex} has a negative size ({size_bytes})", Reason.DIGEST_INVALID)
        return cls(hash_hex, size_bytes)

    def __str__(self) -> str:
        return f"{self.hash}/{self.size_bytes}"

    @property
    def names_content(self) -> bool:
        """A SHA-256, rather than a placeholder naming an upload whose hash is still to come."""
        return _HEX64.fullmatch(self.hash) is not None

    @property
    def is_empty(self) -> bool:
        """The empty blob, which every blob service holds without storing it."""
        return self.size_bytes == 0 and self.hash == EMPTY_SHA256


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
