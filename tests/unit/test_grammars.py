"""Property-based tests of the name, reference and manifest-path grammars."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mreg.metadata_service.errors import InvalidArgument
from mreg.metadata_service.manifest import FileEntry, build_manifest, validate_path
from mreg.metadata_service.references import Defaults, parse_reference, validate_alias

DEFAULTS = Defaults("acme", "vision")
name_chars = st.sampled_from("abcXYZ019 ._-")
names = st.text(name_chars, min_size=1, max_size=20).filter(lambda s: s == s.strip(" ") and s.strip("."))
aliases = st.text(st.sampled_from("abcXYZ019._-"), min_size=1, max_size=20).filter(
    lambda s: s != "latest" and not (s.startswith("v") and s[1:].isdigit())
)


@given(st.text(max_size=300))
def test_any_text_either_parses_or_is_invalid_argument(text: str) -> None:
    try:
        reference = parse_reference(text, DEFAULTS)
    except InvalidArgument:
        return
    assert reference.collection.name
    assert (reference.index is None) != (reference.alias is None)


@given(names, names, names, st.one_of(st.none(), st.integers(0, 10**9), aliases))
def test_canonical_references_round_trip(entity: str, project: str, name: str, selector) -> None:
    suffix = "" if selector is None else f":v{selector}" if isinstance(selector, int) else f":{selector}"
    parsed = parse_reference(f"{entity}/{project}/{name}{suffix}")
    assert (parsed.collection.entity, parsed.collection.project, parsed.collection.name) == (entity, project, name)
    assert parse_reference(str(parsed)) == parsed


@given(names)
def test_short_references_take_the_defaults(name: str) -> None:
    assert str(parse_reference(name, DEFAULTS)) == f"acme/vision/{name}:latest"


@given(st.text(max_size=100))
def test_aliases_are_validated_totally(text: str) -> None:
    try:
        assert validate_alias(text) == text
    except InvalidArgument:
        return
    assert text not in ("latest",) and "/" not in text and ":" not in text


@given(st.text(max_size=200))
def test_accepted_paths_never_escape_the_version_root(path: str) -> None:
    try:
        validate_path(path)
    except InvalidArgument:
        return
    segments = path.split("/")
    assert not path.startswith("/")
    assert all(segment not in ("", ".", "..") for segment in segments)
    assert "\\" not in path and "\0" not in path


@given(st.lists(st.tuples(st.text(st.sampled_from("ab/."), min_size=1, max_size=6), st.integers(0, 5)), max_size=8))
def test_manifest_digest_ignores_entry_order(entries) -> None:
    files = [FileEntry(path, "0" * 63 + str(size), size) for path, size in entries]
    try:
        forward = build_manifest(files)
    except InvalidArgument:
        return
    backward = build_manifest(list(reversed(files)))
    assert forward.digest == backward.digest
    assert [e.path for e in forward.entries] == sorted((e.path for e in forward.entries), key=str.encode)


@pytest.mark.parametrize("selector", ["v0", "v12", "latest", "best", "prod-2.1"])
def test_selectors_are_read_as_indexes_or_aliases(selector: str) -> None:
    parsed = parse_reference(f"m:{selector}", DEFAULTS)
    if selector.startswith("v") and selector[1:].isdigit():
        assert parsed.index == int(selector[1:])
    else:
        assert parsed.alias == selector
