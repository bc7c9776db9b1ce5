"""Manifests: the validated, canonical list of a version's files, and its digest.

The version digest (Version.digest) is the SHA-256 of the manifest's canonical form: the
JSON array of the entries, sorted by the UTF-8 bytes of their paths, each entry an object
``{"digest": hex SHA-256, "metadata": object (only if present and not empty), "path":
string, "size": number}``, encoded by RFC 8785 (JSON Canonicalization Scheme), which Go,
Node and Java implementations reproduce byte for byte. The proto comment of Version.digest
is the specification; protos/mreg/metadata/v1/testdata/manifest_digest_vectors.json holds
test vectors. For manifests without entry metadata (all the CLI pushes) the bytes are the
same as those of the json.dumps form used before, so those digests did not change.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mreg.metadata_service.canonical_json import quote_string, serialize
from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.limits import MAX_INT64, quote

PATH_MAX = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version."""

    path: str
    digest: str
    size_bytes: int
    metadata: dict[str, Any] | None = field(default=None, compare=False)

    def canonical(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"digest": self.digest, "path": self.path, "size": self.size_bytes}
        if self.metadata:
            entry["metadata"] = self.metadata
        return entry


@dataclass(frozen=True, slots=True)
class Manifest:
    """The sorted, validated files of a version."""

    entries: tuple[FileEntry, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def canonical_bytes(self) -> bytes:
        """The bytes the digest hashes: the RFC 8785 form of the sorted entries."""
        return ("[" + ",".join(_canonical_entry(e) for e in self.entries) + "]").encode("utf-8")

    @property
    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries)


# Integers up to 2^53 are doubles exactly, which JCS writes as their plain digits.
_EXACT_INTEGER = 2**53


def _canonical_entry(entry: FileEntry) -> str:
    """One entry's RFC 8785 form; the general encoder writes an entry with metadata (or a huge size)."""
    if entry.metadata or entry.size_bytes > _EXACT_INTEGER:
        return serialize(entry.canonical())
    # Without metadata the members are digest, path and size, already in JCS order, and a digest is
    # 64 hex digits with nothing to escape: the general encoder would spend most of a large commit here.
    return f'{{"digest":"{entry.digest}","path":{quote_string(entry.path)},"size":{entry.size_bytes}}}'


def validate_path(path: str) -> str:
    """Checks that a manifest path is a clean relative POSIX path.

    Raises:
        InvalidArgument: naming the path and the rule it breaks.
    """
    problem = None
    if not path:
        problem = "it is empty"
    elif len(path.encode()) > PATH_MAX:
        problem = f"it is longer than {PATH_MAX} bytes"
    elif path.startswith("/"):
        problem = "it is absolute; paths are relative to the version's root"
    elif "\\" in path or "\0" in path:
        problem = "it contains a backslash or NUL; use '/' as the separator"
    else:
        for segment in path.split("/"):
            if segment == "":
                problem = "it has an empty segment ('//' or a trailing '/')"
            elif segment in (".", ".."):
                problem = f"it has a {segment!r} segment; paths must not leave or repeat directories"
            if problem:
                break
    if problem:
        raise InvalidArgument(
            f"manifest path {quote(path)} is invalid: {problem}", Reason.MANIFEST_INVALID, {"path": path}
        )
    return path


def build_manifest(entries: Iterable[FileEntry]) -> Manifest:
    """Validates entries and sorts them into a manifest.

    Raises:
        InvalidArgument: a path is invalid or repeated, or a digest is malformed.
    """
    by_path: dict[str, FileEntry] = {}
    for entry in entries:
        validate_path(entry.path)
        if not _HEX64.fullmatch(entry.digest):
            raise InvalidArgument(
                f"manifest entry {quote(entry.path)} has digest {quote(entry.digest)}; "
                "expected 64 lowercase hex characters",
                Reason.MANIFEST_INVALID,
                {"path": entry.path},
            )
        if entry.size_bytes < 0:
            raise InvalidArgument(
                f"manifest entry {quote(entry.path)} has a negative size", Reason.MANIFEST_INVALID, {"path": entry.path}
            )
        if entry.path in by_path:
            raise InvalidArgument(
                f"manifest path {quote(entry.path)} appears more than once",
                Reason.MANIFEST_INVALID,
                {"path": entry.path},
            )
        by_path[entry.path] = entry
    for path in by_path:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in by_path:
                raise InvalidArgument(
                    f"manifest path {quote(path)} lies inside {quote(parent)}, which is a file",
                    Reason.MANIFEST_INVALID,
                    {"path": path},
                )
            parent = parent.rpartition("/")[0]
    ordered = sorted(by_path.values(), key=lambda e: e.path.encode())
    manifest = Manifest(tuple(ordered))
    if manifest.size_bytes > MAX_INT64:
        raise InvalidArgument(
            f"the manifest's files total {manifest.size_bytes} bytes; the limit is {MAX_INT64}", Reason.MANIFEST_INVALID
        )
    return manifest
