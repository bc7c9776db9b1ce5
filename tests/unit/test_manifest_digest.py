"""The canonical manifest digest (Version.digest) against the language-neutral test vectors in protos/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mreg.metadata_service.canonical_json import canonicalize, format_number
from mreg.metadata_service.manifest import FileEntry, Manifest, build_manifest

VECTORS_FILE = Path(__file__).parents[2] / "protos/mreg/metadata/v1/testdata/manifest_digest_vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]


def _entries(vector: dict[str, Any]) -> list[FileEntry]:
    return [
        FileEntry(e["path"], e["digest"]["hash"], e["digest"]["size_bytes"], e.get("metadata"))
        for e in vector["manifest"]
    ]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_manifest_digest_matches_the_published_test_vector(vector: dict[str, Any]) -> None:
    manifest = build_manifest(_entries(vector))

    assert manifest.canonical_bytes().decode("utf-8") == vector["canonical_json"]
    assert manifest.digest == vector["digest"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, "0.1"),
        (1e-7, "1e-7"),
        (1.0, "1"),
        (-0.0, "0"),
        (100.0, "100"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (0.000001, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (-2.5e-10, "-2.5e-10"),
        (12.5, "12.5"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.30000000000000004, "0.30000000000000004"),
        (2.0**53, "9007199254740992"),
    ],
)
def test_numbers_are_written_as_ecmascript_writes_them(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_object_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is the surrogate pair D83D DE00, which sorts before U+E000 in UTF-16.
    assert canonicalize({"\ue000": 1, "\U0001f600": 2, "a": 3}) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_strings_escape_only_quotes_backslashes_and_control_characters() -> None:
    text = 'é/"\\\u0001\u001f\x7f\u2028\b\t\n\f\r'
    assert canonicalize(text) == '"é/\\"\\\\\\u0001\\u001f\x7f\u2028\\b\\t\\n\\f\\r"'.encode()


def test_integers_beyond_two_to_the_53_round_to_the_nearest_double() -> None:
    assert canonicalize([2**53 + 1, 10**21]) == b"[9007199254740992,1e+21]"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError):
        canonicalize({"x": value})


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_written_number_reads_back_as_the_same_double(value: float) -> None:
    text = format_number(value)
    assert float(text) == value
    assert "e" not in text or text.split("e")[1][0] in "+-"


_entries_strategy = st.lists(
    st.builds(
        FileEntry,
        path=st.text(min_size=1),  # any text: quotes, backslashes, control characters, astral code points
        digest=st.text("0123456789abcdef", min_size=64, max_size=64),
        size_bytes=st.one_of(st.integers(0, 2**53 + 2), st.integers(0, 2**63 - 1)),
        metadata=st.one_of(st.none(), st.just({}), st.dictionaries(st.text(), st.integers() | st.text(), max_size=2)),
    ),
    max_size=5,
)


@given(_entries_strategy)
def test_the_manifest_form_equals_the_general_canonical_encoding_of_its_entries(entries: list[FileEntry]) -> None:
    # Entries without metadata take a shortcut past the general encoder; it must write the same bytes.
    manifest = Manifest(tuple(entries))
    assert manifest.canonical_bytes() == canonicalize([e.canonical() for e in entries])
