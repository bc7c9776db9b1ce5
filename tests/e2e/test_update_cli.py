"""`mreg update`, model cards and the re-push note, through the real CLI against real servers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mreg.client import Registry
from tests.helpers import make_checkpoint


def _push(mreg, directory: Path, artifact: str, *options: str) -> dict:
    code, pushed, err = mreg("push", str(directory), artifact, *options)
    assert code == 0, err
    return pushed


def _version_updates(registry, resource: str, count: int) -> list:
    """The first ``count`` version.updated events of ``resource``, read from the event log."""
    found = []
    for message in registry.watch(0, resource_prefix=resource, timeout=30):
        if message.event is not None and message.event.kind == "version.updated":
            found.append(message.event)
            if len(found) == count:
                return found
    raise AssertionError(f"the watch ended after {len(found)} of {count} events")


def test_update_sets_nested_keys_unsets_merges_and_replaces_metadata_and_records_events(
    mreg, registry, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/update-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact, "--metadata", '{"notes": "x", "acc": 0.9}')

    code, updated, err = mreg(
        "update",
        f"{artifact}:v0",
        "--set",
        "train.lr=0.1",
        "--set",
        "train.optimizer=adam",
        "--set",
        "train.fp16=true",
        "--unset",
        "notes",
        "--metadata",
        '{"acc": 0.93}',
        "--description",
        "# ResNet\n\nbetter",
        "--add-tag",
        "vision",
    )
    assert code == 0, err
    assert updated["metadata"] == {"acc": 0.93, "train": {"lr": 0.1, "optimizer": "adam", "fp16": True}}
    assert (updated["description"], updated["tags"]) == ("# ResNet\n\nbetter", ["vision"])
    assert updated["changed"] == ["description", "tags", "metadata"]

    code, text, _ = mreg("update", f"{artifact}:latest", "--unset", "train.fp16", json_output=False)
    assert code == 0
    assert text.splitlines() == [f"updated {artifact}:v0", "  metadata: -train.fp16"]

    code, text, _ = mreg("update", f"{artifact}:v0", "--add-tag", "vision", json_output=False)
    assert (code, text.strip()) == (0, f"nothing changed: {artifact}:v0")

    code, replaced, _ = mreg("update", f"{artifact}:v0", "--set", "only=1", "--replace-metadata")
    assert (code, replaced["metadata"]) == (0, {"only": 1})
    assert replaced["description"] == "# ResNet\n\nbetter"  # untouched

    first, second, third = _version_updates(registry, f"{artifact}:", 3)
    assert first.before["metadata"] == {"notes": "x", "acc": 0.9}
    assert "fp16" not in second.after["metadata"]["train"]
    assert third.after["metadata"] == {"only": 1}
    assert first.resource == f"{artifact}:v0"


def test_update_edits_a_registered_models_card_from_a_file_and_show_prints_it(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/card-{unique}"
    model = f"acme/model-registry/Classifier {unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact)
    code, _, err = mreg("link", f"{artifact}:v0", model, "--alias", "production", "--create")
    assert code == 0, err
    card = tmp_path / "README.md"
    card.write_text("# Classifier\n\nUse for **ranking**.\n")

    code, updated, err = mreg("update", model, "--description-file", str(card), "--add-tag", "prod")
    assert code == 0, err
    assert (updated["kind"], updated["description"], updated["tags"]) == (
        "registered_model",
        card.read_text(),
        ["prod"],
    )
    assert updated["changed"] == ["description", "tags"]

    code, text, _ = mreg("show", f"{model}:production", json_output=False)
    assert code == 0
    assert f"registered model {model}  (type model, 1 links)" in text
    assert "  card:\n    # Classifier\n\n    Use for **ranking**." in text
    assert "  tags:        prod" in text
    code, shown, _ = mreg("show", f"{model}:production")
    assert shown["registered_model_card"]["description"] == card.read_text()


def test_push_with_a_description_file_and_show_prints_the_card_tags_run_protection_and_times(
    mreg, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/described-{unique}"
    readme = tmp_path / "README.md"
    readme.write_text("# ResNet-50\n\n- top-1: 76%\n")
    _push(
        mreg,
        make_checkpoint(tmp_path / "ck", 1000),
        artifact,
        "--description-file",
        str(readme),
        "--tag",
        "fp16",
        "--run",
        f"acme/vision/run-{unique}",
        "--alias",
        "production",
    )
    assert mreg("alias", "protect", artifact, "production")[0] == 0

    code, shown, _ = mreg("show", f"{artifact}:production")
    assert code == 0
    assert (shown["description"], shown["tags"], shown["run"]) == (
        readme.read_text(),
        ["fp16"],
        f"acme/vision/run-{unique}",
    )
    assert shown["protected_aliases"] == ["production"]
    assert shown["created"] and shown["committed"]

    code, text, _ = mreg("show", f"{artifact}:production", json_output=False)
    lines = text.splitlines()
    assert "  description:" in lines and "    # ResNet-50" in lines and "    - top-1: 76%" in lines
    assert "  tags:        fp16" in lines
    assert f"  run:         acme/vision/run-{unique}" in lines
    assert any(line.startswith("  aliases:") and "production (protected)" in line for line in lines)
    assert any(line.startswith("  committed:   ") and line.strip() != "committed:   -" for line in lines)


def test_a_description_file_over_64_kib_fails_in_one_line_before_anything_is_uploaded(
    mreg, registry, tmp_path: Path, unique
) -> None:
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    content = f"never uploaded {unique}".encode()
    (checkpoint / "weights.bin").write_bytes(content)
    card = tmp_path / "README.md"
    card.write_text("x" * (64 * 1024 + 1))
    artifact = f"acme/vision/too-long-{unique}"

    code, _, err = mreg("push", str(checkpoint), artifact, "--description-file", str(card))
    assert code == 1
    error = json.loads(err)  # --json: the error is one JSON object on stderr
    assert err.count("\n") == 1 and error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("--description-file")
    digest = (hashlib.sha256(content).hexdigest(), len(content))
    assert registry.transfer.find_missing([digest]) == {digest}
    assert mreg("show", artifact)[0] == 1  # no artifact either

    _push(mreg, checkpoint, artifact)
    code, _, err = mreg("update", artifact, "--description-file", str(card))
    assert code == 1 and "INVALID_ARGUMENT" in err


def test_a_repush_of_unchanged_content_notes_what_it_ignored_and_update_existing_applies_it(
    mreg, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/repush-{unique}"
    checkpoint = make_checkpoint(tmp_path / "ck", 1000)
    _push(mreg, checkpoint, artifact, "--metadata", '{"acc": 0.9}')

    code, again, err = mreg("push", str(checkpoint), artifact, "--metadata", '{"acc": 0.95}', "--tag", "fp16")
    assert code == 0
    assert (again["created"], again["version"]) == (False, 0)
    assert (again["unchanged_metadata_ignored"], again["ignored_changes"]) == (True, ["tags", "metadata"])
    assert err.count("\n") == 1
    assert err.startswith(f"mreg: note: content unchanged: {artifact}:v0 kept its tags and metadata")
    assert f"mreg update {artifact}:v0" in err and "--update-existing" in err
    assert mreg("show", f"{artifact}:v0")[1]["metadata"] == {"acc": 0.9}

    code, same, err = mreg("push", str(checkpoint), artifact, "--metadata", '{"acc": 0.9}')
    assert (code, same["unchanged_metadata_ignored"], err) == (0, False, "")  # nothing asked for was dropped

    code, applied, err = mreg(
        "push", str(checkpoint), artifact, "--metadata", '{"acc": 0.95}', "--tag", "fp16", "--update-existing"
    )
    assert (code, err) == (0, "")
    assert (applied["version"], applied["updated_existing"], applied["ignored_changes"]) == (
        0,
        ["tags", "metadata"],
        [],
    )
    shown = mreg("show", f"{artifact}:v0")[1]
    assert (shown["metadata"], shown["tags"]) == ({"acc": 0.95}, ["fp16"])


def test_metadata_options_on_a_registered_model_and_an_empty_update_are_usage_errors(
    mreg, tmp_path: Path, unique
) -> None:
    artifact = f"acme/vision/usage-{unique}"
    model = f"acme/model-registry/usage-{unique}"
    _push(mreg, make_checkpoint(tmp_path / "ck", 1000), artifact)
    assert mreg("link", f"{artifact}:v0", model, "--create")[0] == 0

    for options in (["--set", "a=1"], ["--metadata", "{}"], ["--unset", "a"], ["--description", "x", "--set", "a=1"]):
        code, _, err = mreg("update", model, *options, json_output=False)
        assert code == 2, options
        assert err.startswith("mreg update: error:") and "registered model" in err
    code, _, err = mreg("update", f"{artifact}:v0", json_output=False)
    assert (code, err.startswith("mreg update: error: nothing to update")) == (2, True)
    code, _, err = mreg("update", f"{artifact}:v0", "--replace-metadata")
    assert code == 2 and json.loads(err)["reason"] == "USAGE"  # with --json, a usage error is JSON too
    code, _, err = mreg("link", f"{artifact}:v0", model, "--description", "card")
    assert code == 2 and "--create" in err
    # Nothing was changed by the refused updates.
    assert mreg("show", f"{model}:latest")[1]["registered_model_card"]["description"] == ""


def test_show_of_a_registered_model_without_links_shows_its_card(mreg, servers, unique) -> None:
    model = f"acme/model-registry/empty-{unique}"
    with Registry.connect(servers.metadata.address, servers.blob.address) as registry:
        registry.create_registered_model(model, description="# Empty so far")
    code, shown, err = mreg("show", model)
    assert code == 0, err
    assert shown["description"] == "# Empty so far"
