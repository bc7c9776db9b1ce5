"""The client's --set/--unset patches, its description limit, and what a kept version lacks of a re-push."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from mreg.client import MregError
from mreg.client.editing import (
    MAX_DESCRIPTION_BYTES,
    check_description,
    metadata_changes,
    metadata_patch,
    missing_from,
    parse_set,
    parse_unset,
)
from mreg.metadata.v1 import metadata_service_pb2 as pb


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1", 0.1),
        ("3", 3),
        ("true", True),
        ("null", None),
        ('"7"', "7"),
        ("[1, 2]", [1, 2]),
        ("adam", "adam"),
        ("NaN", "NaN"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_a_set_value_is_json_when_it_parses_and_a_string_otherwise(text: str, value: object) -> None:
    assert parse_set(f"k={text}") == ("set", ["k"], value)


def test_dotted_keys_nest_and_later_edits_win_in_one_merge_patch() -> None:
    edits = [parse_set("train.lr=0.1"), parse_set("train.opt=adam"), parse_unset("notes"), parse_set("acc=0.95")]
    assert metadata_patch({"acc": 0.9, "train": 1}, edits) == {
        "acc": 0.95,
        "train": {"lr": 0.1, "opt": "adam"},
        "notes": None,
    }
    assert metadata_patch(None, []) is None


@pytest.mark.parametrize("text", ["noequals", "=1", "a..b=1", ".a=1"])
def test_a_malformed_set_is_refused(text: str) -> None:
    with pytest.raises(MregError) as error:
        parse_set(text)
    assert error.value.code == "INVALID_ARGUMENT"


def test_a_description_over_64_kib_of_utf8_is_refused_before_anything_is_sent() -> None:
    check_description("é" * (MAX_DESCRIPTION_BYTES // 2))
    with pytest.raises(MregError) as error:
        check_description("é" * (MAX_DESCRIPTION_BYTES // 2) + "x")
    assert error.value.code == "INVALID_ARGUMENT" and str(MAX_DESCRIPTION_BYTES) in error.value.message


def test_metadata_changes_name_added_removed_and_changed_keys_by_path() -> None:
    before = {"a": 1, "train": {"lr": 0.1, "opt": "sgd"}, "gone": True}
    after = {"a": 1, "train": {"lr": 0.2, "opt": "sgd", "batch": 64}}
    assert metadata_changes(before, after) == ["-gone", "+train.batch=64", "train.lr: 0.1 -> 0.2"]


def test_a_kept_version_lacks_only_what_the_push_asked_for_and_it_does_not_carry() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"acc": 0.9, "note": "later"})
    kept = pb.Version(description="card", tags=["a", "b"], metadata=metadata)
    assert missing_from("", [], None, kept=kept) == ()
    assert missing_from("card", ["a"], {"acc": 0.9}, kept=kept) == ()
    assert missing_from("other", ["c"], {"acc": 0.95}, kept=kept) == ("description", "tags", "metadata")
