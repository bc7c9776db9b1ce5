"""Editing what describes a version or a registered model: descriptions, tags and metadata patches.

Plain functions the client and the CLI share: the description limit checked before any work
starts, ``--set KEY=VALUE``/``--unset KEY`` turned into one RFC 7386 merge patch, the patch
applied locally (to say what an update changed), and the comparison that tells whether a
re-push of unchanged content kept a version without what the push asked for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mreg.client.errors import MregError, local_error

if TYPE_CHECKING:
    from mreg.client.models import Version

# The metadata service refuses a description over 64 KiB of UTF-8 (metadata_service/limits.py).
MAX_DESCRIPTION_BYTES = 64 << 10

# One --set or --unset: ("set", ["train", "lr"], 0.1) or ("unset", ["notes"], None), in command-line order.
MetadataEdit = tuple[str, list[str], Any]


def _invalid(message: str) -> MregError:
    return MregError("INVALID_ARGUMENT", message)


def check_description(text: str, what: str = "description") -> str:
    """Refuses what the server would: more than 64 KiB of UTF-8, or a NUL character."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DESCRIPTION_BYTES:
        raise _invalid(f"{what} is {size} bytes of UTF-8; a description holds at most {MAX_DESCRIPTION_BYTES} (64 KiB)")
    if "\0" in text:
        raise _invalid(f"{what} contains a NUL character")
    return text


def read_description_file(path: str) -> str:
    """The UTF-8 text of ``path`` ("-" reads stdin), checked against the description limit.

    Reads at most one byte past the limit, so a huge file costs nothing.

    Raises:
        MregError: INVALID_ARGUMENT for a file over 64 KiB or not UTF-8; NOT_FOUND,
            PERMISSION_DENIED, ... for a file that cannot be read.
    """
    what = "--description-file " + ("(stdin)" if path == "-" else path)
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_DESCRIPTION_BYTES + 1)
        else:
            with Path(path).open("rb") as f:
                data = f.read(MAX_DESCRIPTION_BYTES + 1)
    except OSError as e:
        raise local_error(e, path) from e
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise _invalid(f"{what} is over {MAX_DESCRIPTION_BYTES} bytes; a description holds at most 64 KiB of UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid(f"{what} is not UTF-8 text (byte {e.start})") from e
    return check_description(text, what)


def _key_path(key: str, option: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise _invalid(f"{option} {key!r}: a key is one or more non-empty names joined by '.'")
    return parts


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """``text`` as JSON when it is valid JSON (0.1, true, null, "x", [1], {...}), else the string itself."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError; NaN and Infinity stay text
        return text


def parse_set(text: str) -> MetadataEdit:
    """``train.lr=0.1`` as ("set", ["train", "lr"], 0.1)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise _invalid(f"--set takes KEY=VALUE, not {text!r}")
    return ("set", _key_path(key, "--set"), parse_value(value))


def parse_unset(text: str) -> MetadataEdit:
    """``notes`` (or ``train.lr``) as ("unset", ["notes"], None)."""
    return ("unset", _key_path(text, "--unset"), None)


def metadata_patch(metadata: Mapping[str, Any] | None, edits: Sequence[MetadataEdit]) -> dict[str, Any] | None:
    """One RFC 7386 merge patch: ``metadata`` with each --set and --unset applied in order.

    A dotted key makes nested objects (``train.lr=0.1`` is ``{"train": {"lr": 0.1}}``); an
    --unset is a null, which removes the key when the patch is merged. A later edit of a
    key wins over an earlier one and over ``metadata``. None when there is nothing to apply.
    """
    if metadata is None and not edits:
        return None
    patch: dict[str, Any] = json.loads(json.dumps(dict(metadata or {})))
    for kind, path, value in edits:
        node = patch
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value if kind == "set" else None
    return patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def metadata_changes(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What changed between two metadata documents, one phrase per key: ``+a=1``, ``-b``, ``c: 1 -> 2``."""
    changes: list[str] = []
    for key in sorted(set(before) | set(after)):
        name = f"{prefix}{key}"
        if key not in after:
            changes.append(f"-{name}")
        elif key not in before:
            changes.append(f"+{name}={json.dumps(after[key], sort_keys=True)}")
        elif isinstance(before[key], dict) and isinstance(after[key], dict):
            changes += metadata_changes(before[key], after[key], f"{name}.")
        elif before[key] != after[key]:
            old, new = (json.dumps(v, sort_keys=True) for v in (before[key], after[key]))
            changes.append(f"{name}: {old} -> {new}")
    return changes


def tag_changes(before: Iterable[str], after: Iterable[str]) -> list[str]:
    """``+prod``, ``-fp16``: tags added and removed."""
    old, new = set(before), set(after)
    return [f"+{t}" for t in sorted(new - old)] + [f"-{t}" for t in sorted(old - new)]


def missing_from(
    description: str, tags: Sequence[str], metadata: Mapping[str, Any] | None, *, kept: Version
) -> tuple[str, ...]:
    """Which of what a push asked for the version it kept does not carry: "description", "tags", "metadata".

    ``kept`` is the version CommitVersion returned when the content equalled
    the latest version's. A description counts when one was given; tags when one is missing;
    metadata when merging it (RFC 7386, as UpdateVersion would) would change the version's.
    """
    missing: list[str] = []
    if description and description != kept.description:
        missing.append("description")
    if set(tags) - set(kept.tags):
        missing.append("tags")
    if metadata is not None:
        current = dict(kept.metadata)
        if merge_patch(current, json.loads(json.dumps(dict(metadata)))) != current:
            missing.append("metadata")
    return tuple(missing)
