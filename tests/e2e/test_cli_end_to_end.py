"""The README walkthrough through the real `mreg` CLI against real servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from mreg.blob.v1 import blob_service_pb2, blob_service_pb2_grpc
from mreg.blob_service.digests import Digest
from tests.helpers import assert_same_tree, make_checkpoint
from tests.processes import free_port, mreg_serve


def test_walkthrough_push_dedup_alias_link_and_pull(mreg, tmp_path: Path, unique) -> None:
    # A seed of its own: small files other tests pushed (same seed, same bytes) would not be uploaded again.
    checkpoint = make_checkpoint(tmp_path / "ck", seed=int(unique[:6], 16))
    artifact = f"acme/vision/resnet-{unique}"
    model = f"acme/model-registry/Image Classifier {unique}"
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())

    code, v0, _ = mreg("push", str(checkpoint), artifact)
    assert code == 0
    assert (v0["ref"], v0["version"], v0["files"], v0["size"]) == (f"{artifact}:v0", 0, 4, size)
    assert v0["uploaded_bytes"] == size - 0  # everything was new
    assert v0["aliases"] == ["latest"]

    code, again, _ = mreg("push", str(checkpoint), artifact)
    assert (code, again["version"], again["uploaded_bytes"], again["digest"]) == (0, 0, 0, v0["digest"])

    changed = tmp_path / "ck2"
    shutil.copytree(checkpoint, changed)
    config = f'{{"layers": 101, "run": "{unique}"}}'
    (changed / "config.json").write_text(config)
    code, v1, _ = mreg("push", str(changed), artifact, "--metadata", '{"accuracy": 0.93}', "--alias", "candidate")
    assert (code, v1["version"]) == (0, 1)
    assert v1["uploaded_bytes"] == len(config)
    assert set(v1["aliases"]) == {"latest", "candidate"}

    code, alias, _ = mreg("alias", "set", f"{artifact}:v0", "best")
    assert (code, alias["version"]) == (0, 0)

    code, link0, _ = mreg("link", f"{artifact}:v0", model, "--alias", "staging", "--create")
    assert (code, link0["link_version"], link0["source_ref"]) == (0, 0, f"{artifact}:v0")
    code, link1, _ = mreg("link", f"{artifact}:v1", model, "--alias", "production")
    assert (code, link1["link_version"]) == (0, 1)

    code, pulled, _ = mreg("pull", f"{artifact}:best", str(tmp_path / "out-best"))
    assert (code, pulled["version"]) == (0, 0)
    assert_same_tree(checkpoint, tmp_path / "out-best")
    code, pulled, _ = mreg("pull", f"{model}:production", str(tmp_path / "out-prod"))
    assert (code, pulled["version"], pulled["link_version"]) == (0, 1, 1)
    assert_same_tree(changed, tmp_path / "out-prod")
    code, pulled, _ = mreg("pull", f"{model}:staging", str(tmp_path / "out-staging"))
    assert_same_tree(checkpoint, tmp_path / "out-staging")

    code, shown, _ = mreg("show", f"{model}:staging")
    assert code == 0
    assert shown["link_version"] == 0 and shown["source_ref"] == f"{artifact}:v0"
    assert shown["state"] == "committed" and "best" in shown["aliases"]
    assert sorted(e["path"] for e in shown["manifest"]) == [
        "config.json",
        "tokenizer/empty.txt",
        "tokenizer/vocab.txt",
        "weights.bin",
    ]
    code, shown, _ = mreg("show", f"{artifact}:candidate")
    assert (shown["version"], shown["metadata"]) == (1, {"accuracy": 0.93})

    code, listed, _ = mreg("ls", artifact)
    assert [row["version"] for row in listed] == [1, 0]
    code, listed, _ = mreg("ls", model)
    assert [(row["link_version"], row["aliases"]) for row in listed] == [
        (1, ["latest", "production"]),
        (0, ["staging"]),
    ]
    code, listed, _ = mreg("ls", "acme/vision")
    row = next(r for r in listed if r["name"] == artifact)
    assert {k: row[k] for k in ("kind", "type", "count", "latest")} == {
        "kind": "artifact",
        "type": "model",
        "count": 2,
        "latest": 1,
    }
    assert row["created"]

    code, removed, _ = mreg("alias", "rm", artifact, "best")
    assert (code, removed["previous_version"]) == (0, 0)


def test_link_and_push_to_a_registered_model_that_does_not_exist_fail_unless_asked_to_create_it(
    mreg, tmp_path: Path, unique
) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", 1000)
    artifact = f"acme/vision/typo-{unique}"
    model = f"acme/model-registry/Classifier {unique}"
    code, _, _ = mreg("push", str(checkpoint), artifact)
    assert code == 0

    code, _, err = mreg("link", f"{artifact}:v0", model + "x", json_output=False)
    assert code == 1
    assert "NOT_FOUND" in err and "--create" in err
    code, _, err = mreg("push", str(checkpoint), artifact, "--link", model + "x", json_output=False)
    assert code == 1
    assert "NOT_FOUND" in err
    code, listed, _ = mreg("ls", "acme/model-registry")
    assert not [c for c in listed if c["name"].endswith(model + "x")]

    code, linked, _ = mreg("link", f"{artifact}:v0", model, "--create")
    assert (code, linked["link_version"]) == (0, 0)
    code, pushed, _ = mreg("push", str(checkpoint), artifact, "--link", model)
    assert code == 0
    assert [link["registered_model"] for link in pushed["links"]] == [model]


def test_default_entity_and_project_come_from_the_environment(mreg, monkeypatch, tmp_path: Path, unique) -> None:
    monkeypatch.setenv("MREG_ENTITY", "acme")
    monkeypatch.setenv("MREG_PROJECT", "speech")
    code, pushed, _ = mreg("push", str(make_checkpoint(tmp_path / "ck", 1000)), f"whisper-{unique}")
    assert code == 0 and pushed["ref"] == f"acme/speech/whisper-{unique}:v0"


@pytest.mark.parametrize(
    ("args", "code_name"),
    [
        (["show", "acme/vision/does-not-exist"], "NOT_FOUND"),
        (["show", "a/b/c/d"], "INVALID_ARGUMENT"),
        (["show", "acme/vision/x:v01"], "INVALID_ARGUMENT"),
        (["alias", "set", "acme/vision/x:v0", "latest"], "INVALID_ARGUMENT"),
        (["pull", "acme/vision/nope:v3", "/tmp/never-created-mreg"], "NOT_FOUND"),
        (["push", "/definitely/not/a/dir", "acme/vision/x"], "INVALID_ARGUMENT"),
        (["push", ".", "acme/vision/x", "--metadata", "[1]"], "INVALID_ARGUMENT"),
        (["push", ".", "acme/vision/x", "--metadata", ""], "INVALID_ARGUMENT"),
        (["show", "resnet"], "INVALID_ARGUMENT"),
    ],
)
def test_errors_print_one_line_and_exit_non_zero(mreg, args, code_name) -> None:
    code, out, err = mreg(*args, json_output=False)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mreg: error: {code_name}: ")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_metadata_is_refused_as_not_a_json_object_and_pushes_nothing(
    mreg, tmp_path: Path, unique, value: str
) -> None:
    artifact = f"acme/vision/empty-metadata-{unique}"
    checkpoint = make_checkpoint(tmp_path / "ck", 1000)
    code, _, err = mreg("push", str(checkpoint), artifact, "--metadata", value, json_output=False)
    assert code == 1 and err.startswith("mreg: error: INVALID_ARGUMENT: --metadata must be a JSON object"), err
    assert "{" in err  # it shows what one looks like
    code, _, err = mreg("show", artifact, json_output=False)
    assert code == 1 and "NOT_FOUND" in err


def test_pull_of_corrupted_content_is_data_loss_and_leaves_no_file(mreg, servers, tmp_path: Path, unique) -> None:
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=(2 << 20) + 3)
    code, pushed, _ = mreg("push", str(checkpoint), f"acme/vision/corrupt-{unique}")
    assert code == 0
    code, shown, _ = mreg("show", pushed["ref"])
    entry = next(e for e in shown["manifest"] if e["path"] == "weights.bin")
    blob = servers.blob.store.storage.blob_path(Digest(entry["digest"], entry["size"]))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    dest = tmp_path / "out"
    code, _, err = mreg("pull", pushed["ref"], str(dest), json_output=False)

    assert code == 1 and "DATA_LOSS" in err
    assert not (dest / "weights.bin").exists()
    assert not [p for p in dest.rglob("*") if "mreg-partial" in p.name]


def test_mreg_serve_runs_the_embedded_registry_as_a_real_process(tmp_path: Path, unique) -> None:
    """`mreg serve` on SQLite and local disk, driven by the installed `mreg` command."""
    mreg_bin = Path(sys.executable).parent / "mreg"
    metadata_port, blob_port = free_port(), free_port()
    with mreg_serve(tmp_path / "data", metadata_port, blob_port) as banner:
        assert any(f"127.0.0.1:{metadata_port}" in line for line in banner), banner
        env = dict(os.environ, MREG_METADATA_ADDR=f"127.0.0.1:{metadata_port}", MREG_BLOB_ADDR=f"127.0.0.1:{blob_port}")
        checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1 << 20)
        pushed = subprocess.run(
            [str(mreg_bin), "push", str(checkpoint), "acme/vision/served", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(pushed.stdout)["ref"] == "acme/vision/served:v0"
        subprocess.run(
            [str(mreg_bin), "pull", "acme/vision/served", str(tmp_path / "out"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert_same_tree(checkpoint, tmp_path / "out")
        assert (tmp_path / "data" / "metadata.db").exists()


def test_cli_manages_promotion_search_deletion_lineage_and_events(mreg, tmp_path: Path, unique) -> None:
    artifact = f"acme/vision/ops-{unique}"
    for i, loss in enumerate((0.4, 0.2, 0.1)):
        ck = make_checkpoint(tmp_path / f"ck{i}", large_bytes=1000, seed=i)
        code, _, err = mreg(
            "push",
            str(ck),
            artifact,
            "--metadata",
            json.dumps({"val_loss": loss}),
            "--run",
            f"acme/vision/train-{unique}",
        )
        assert code == 0, err

    code, found, _ = mreg(
        "versions", artifact, "--filter", "metadata.val_loss < 0.3", "--order-by", "metadata.val_loss"
    )
    assert [row["version"] for row in found] == [2, 1]

    assert mreg("alias", "set", f"{artifact}:v1", "production", "--expect", "none")[0] == 0
    code, _, err = mreg("alias", "set", f"{artifact}:v2", "production", "--expect", "v0", json_output=False)
    assert code == 1 and "FAILED_PRECONDITION" in err and "names v1" in err
    assert mreg("alias", "set", f"{artifact}:v2", "production", "--expect", "v1")[0] == 0
    code, history, _ = mreg("alias", "history", artifact, "production")
    assert [(h["before"], h["after"]) for h in history] == [({"index": 1}, {"index": 2}), (None, {"index": 1})]
    # A rollback that removes the alias only if it still names what the caller promoted.
    assert mreg("alias", "set", f"{artifact}:v0", "canary")[0] == 0
    code, _, err = mreg("alias", "rm", artifact, "canary", "--expect", "v1", json_output=False)
    assert code == 1 and "FAILED_PRECONDITION" in err and "names v0, not the expected v1" in err
    code, removed, _ = mreg("alias", "rm", artifact, "canary", "--expect", "v0")
    assert code == 0 and removed["previous_version"] == 0

    code, lineage, _ = mreg("lineage", f"{artifact}:production")
    assert lineage["producer_run"] == f"acme/vision/train-{unique}"
    assert lineage["links"] == []
    code, text, _ = mreg("lineage", f"{artifact}:production", json_output=False)
    assert f"produced by: acme/vision/train-{unique}" in text and "linked as: -" in text
    assert mreg("pull", f"{artifact}:production", str(tmp_path / "out"), "--run", f"acme/vision/eval-{unique}")[0] == 0
    code, lineage, _ = mreg("lineage", "--run", f"acme/vision/eval-{unique}")
    assert lineage["inputs"] == [f"{artifact}:v2"]

    code, _, err = mreg("delete", f"{artifact}:v2", json_output=False)
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, deleted, _ = mreg("delete", f"{artifact}:v2", "--force")
    assert deleted["removed_aliases"] == ["production"]
    code, retention, _ = mreg("retention", "set", artifact, "--keep-last", "1")
    assert retention["deleted"] == [0]

    code, events, _ = mreg("watch", "--prefix", artifact, "--limit", "3", json_output=False)
    kinds = events.splitlines()
    assert code == 0 and len(kinds) == 3
    assert "collection.created" in kinds[0] and "version.committed" in kinds[1]


def test_mreg_serve_takes_the_services_own_settings_from_their_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flags of `mreg serve` decide addresses, storage, database, TLS and auth; the services' other
    # settings (limits, intervals, the scrub) come from MREG_BLOB_* and MREG_METADATA_*, as for each alone.
    monkeypatch.setenv("MREG_BLOB_MAX_BATCH_TOTAL_SIZE_BYTES", str(1 << 20))
    monkeypatch.setenv("MREG_BLOB_STORE", str(tmp_path / "elsewhere"))  # a flag's domain: serve keeps its own
    metadata_port, blob_port = free_port(), free_port()
    with mreg_serve(tmp_path / "data", metadata_port, blob_port) as banner:
        assert any(f"127.0.0.1:{blob_port}" in line for line in banner), banner
        with grpc.insecure_channel(f"127.0.0.1:{blob_port}") as channel:
            capabilities = blob_service_pb2_grpc.BlobServiceStub(channel).GetCapabilities(
                blob_service_pb2.GetCapabilitiesRequest(), timeout=10
            )
    assert capabilities.max_batch_total_size_bytes == 1 << 20
    assert (tmp_path / "data" / "blobs").is_dir() and not (tmp_path / "elsewhere").exists()


def test_ls_of_what_is_not_a_collection_says_what_is_wrong(mreg, unique) -> None:
    """A malformed name is INVALID_ARGUMENT, as for every other command; only a well-formed name nothing
    bears is NOT_FOUND (all were NOT_FOUND, with a reason no server sends)."""
    expected = {
        "a/b/c/d": ("INVALID_ARGUMENT", "REFERENCE_INVALID"),
        "acme/vision/resnet:v0": ("INVALID_ARGUMENT", "REFERENCE_INVALID"),
        "acme/vision/resnet:": ("INVALID_ARGUMENT", "REFERENCE_INVALID"),
        f"acme/vision/never-{unique}": ("NOT_FOUND", "COLLECTION_NOT_FOUND"),
    }
    for target, (code_name, reason) in expected.items():
        code, _, err = mreg("ls", target)
        error = json.loads(err)
        assert code != 0 and (error["code"], error["reason"]) == (code_name, reason), (target, error)


def test_gc_reports_its_sweep_when_the_blob_service_it_would_ask_for_the_minimum_grace_is_unreachable(
    mreg, monkeypatch
) -> None:
    # The sweep runs in the metadata service; asking the client's blob address for the minimum grace came after,
    # and its failure made `mreg gc` exit 1 with UNAVAILABLE although the sweep had deleted content.
    monkeypatch.setenv("MREG_BLOB_ADDR", "127.0.0.1:1")
    code, report, err = mreg("gc", "--grace-seconds", "0", "--dry-run")
    assert code == 0, err
    assert report["dry_run"] is True and report["examined_blobs"] >= 0
    assert report["blob_service_min_gc_grace_seconds"] is None
    assert "minimum grace" in err and "127.0.0.1:1" in err
    code, text, err = mreg("gc", "--grace-seconds", "0", "--dry-run", json_output=False)
    assert code == 0 and text.startswith("would delete "), (text, err)


def test_gc_with_a_grace_below_the_blob_services_minimum_says_that_minimum_held(mreg) -> None:
    # Asked for grace 0, an operator would otherwise read "deleted 0 blobs" as "nothing is unreferenced".
    code, text, err = mreg("gc", "--grace-seconds", "0", "--dry-run", json_output=False)
    assert code == 0, err
    assert "minimum grace of 1h" in text and "--min-gc-grace-seconds" in text
    code, report, err = mreg("gc", "--grace-seconds", "0", "--dry-run")
    assert code == 0, err
    assert report["blob_service_min_gc_grace_seconds"] == 3600
    code, text, err = mreg("gc", "--grace-seconds", "7200", "--dry-run", json_output=False)
    assert code == 0 and "minimum grace" not in text
