"""The Python client returns Python: typed objects with dict metadata and datetimes, lazy paging, typed errors."""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import pickle
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

import mreg.client
from mreg.client import (
    AlreadyExists,
    Artifact,
    FailedPrecondition,
    InvalidArgument,
    MregError,
    NotFound,
    PushInterrupted,
    RegisteredModel,
    Registry,
    Version,
    models,
)
from mreg.client.channels import Credentials, open_channel


def _push(registry: Registry, root: Path, artifact: str, payload: bytes, **kwargs) -> Version:
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights.bin").write_bytes(payload)
    return registry.push(root, artifact, **kwargs).version


def test_a_pushed_version_comes_back_as_python_values(registry: Registry, tmp_path: Path, unique: str) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    pushed = _push(
        registry,
        tmp_path / "ck",
        f"py-{unique}",
        b"weights",
        metadata={"val_loss": 0.25, "train": {"epochs": 3}},
        tags=["fp16"],
        aliases=["candidate"],
        description="# ResNet",
    )
    for version in (pushed, registry.get_version(f"py-{unique}:candidate"), registry.resolve(pushed.name).version):
        assert isinstance(version, Version)
        assert version.metadata == {"val_loss": 0.25, "train": {"epochs": 3}}
        assert isinstance(version.metadata, dict)
        # Whole numbers come back as the ints they were sent as (the wire carries doubles).
        assert type(version.metadata["train"]["epochs"]) is int
        assert version.tags == ("fp16",) and set(version.aliases) == {"candidate", "latest"}
        assert (version.index, version.state, version.description) == (0, "committed", "# ResNet")
        assert version.create_time is not None and version.create_time.tzinfo is not None
        assert started <= version.create_time <= datetime.now(UTC) + timedelta(seconds=5)
        assert version.commit_time is not None and version.commit_time >= version.create_time
    [entry] = pushed.manifest
    assert (entry.path, entry.sha256, entry.size_bytes) == ("weights.bin", hashlib.sha256(b"weights").hexdigest(), 7)
    # The JSON form the CLI prints is plain JSON.
    assert json.loads(json.dumps(pushed.to_dict()))["metadata"]["train"] == {"epochs": 3}

    artifact = registry.get_artifact(f"py-{unique}")
    assert isinstance(artifact, Artifact)
    assert artifact.aliases == {"candidate": 0, "latest": 0}
    assert (artifact.version_count, artifact.retention_keep_last) == (1, None)


def test_metadata_integers_a_double_cannot_hold_exactly_are_refused_before_anything_is_sent(
    registry: Registry, tmp_path: Path, unique: str
) -> None:
    exact = 1 << 53
    kept = _push(registry, tmp_path / "ok", f"ints-{unique}", b"ints", metadata={"n": exact, "l": [-exact, 2.5]})
    assert kept.metadata == {"n": exact, "l": [-exact, 2.5]} and type(kept.metadata["l"][0]) is int
    with pytest.raises(MregError) as error:
        _push(registry, tmp_path / "big", f"ints-big-{unique}", b"big", metadata={"run": {"seed": exact + 1}})
    assert error.value.code == "INVALID_ARGUMENT" and "metadata.run.seed" in error.value.message
    assert [v.index for v in registry.list_versions(f"ints-{unique}")] == [0]


def test_links_models_aliases_and_history_are_python_values(registry: Registry, tmp_path: Path, unique: str) -> None:
    first = _push(registry, tmp_path / "a", f"hist-{unique}", b"one")
    second = _push(registry, tmp_path / "b", f"hist-{unique}", b"two")
    result = registry.link(first.name, f"model-{unique}", ["staging"], create=True, description="card")
    assert result.created and result.link.version.digest == first.digest
    assert (result.link.index, set(result.link.aliases)) == (0, {"latest", "staging"})

    model = registry.get_registered_model(f"model-{unique}")
    assert isinstance(model, RegisteredModel)
    assert (model.description, model.link_count) == ("card", 1)
    assert model.aliases == {"latest": 0, "staging": 0}

    set_first = registry.set_alias(first.name, "best", expect_unset=True)
    assert (set_first.index, set_first.previous_index) == (0, None)
    moved = registry.set_alias(second.name, "best", expected_index=0)
    assert (moved.collection, moved.alias, moved.index, moved.previous_index) == (
        f"acme/vision/hist-{unique}",
        "best",
        1,
        0,
    )
    history = list(registry.alias_history(f"hist-{unique}", "best"))
    # Newest first; a Struct holds every number as a float, as JSON does.
    assert [(e.before, e.after) for e in history] == [({"index": 0.0}, {"index": 1.0}), (None, {"index": 0.0})]
    assert all(e.create_time is not None and e.actor for e in history)
    assert registry.delete_alias(f"hist-{unique}", "best") == 1


class _CountingCalls(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.calls[client_call_details.method.rsplit("/", 1)[-1]] += 1
        return continuation(client_call_details, request)


def test_list_helpers_page_lazily_and_stop_at_the_limit(servers, tmp_path: Path, unique: str) -> None:
    counter = _CountingCalls()
    channel = grpc.intercept_channel(open_channel(servers.metadata.address, Credentials()), counter)
    blob_channel = open_channel(servers.blob.address, Credentials())
    with Registry(channel, blob_channel, entity="acme", project="vision", cache_dir=tmp_path / "cache") as registry:
        for i in range(7):
            _push(registry, tmp_path / f"v{i}", f"paged-{unique}", f"content {i}".encode())
        counter.calls.clear()

        everything = list(registry.list_versions(f"paged-{unique}", page_size=2))
        assert [v.index for v in everything] == [6, 5, 4, 3, 2, 1, 0]
        assert counter.calls["ListVersions"] == 4  # pages of 2, 2, 2 and 1

        counter.calls.clear()
        newest = list(registry.list_versions(f"paged-{unique}", page_size=2, limit=3))
        assert [v.index for v in newest] == [6, 5, 4]
        assert counter.calls["ListVersions"] == 2  # the second page asks for one version only

        counter.calls.clear()
        versions = registry.list_versions(f"paged-{unique}", page_size=2)
        assert next(versions).index == 6
        assert counter.calls["ListVersions"] == 1  # nothing fetched beyond what was consumed
        versions.close()

        filtered = list(registry.list_versions(f"paged-{unique}", filter="index >= 5", order_by="index asc"))
        assert [v.index for v in filtered] == [5, 6]
        assert list(registry.list_versions(f"paged-{unique}", limit=0)) == []


def test_errors_are_typed_by_code_and_carry_the_reason(registry: Registry, tmp_path: Path, unique: str) -> None:
    with pytest.raises(NotFound) as missing:
        registry.get_version(f"nothing-{unique}:v3")
    assert missing.value.code == "NOT_FOUND" and missing.value.reason
    assert isinstance(missing.value, MregError)

    with pytest.raises(InvalidArgument):
        registry.get_version("a/b/c/d/e")

    registry.create_registered_model(f"taken-{unique}")
    with pytest.raises(AlreadyExists) as taken:
        registry.create_registered_model(f"taken-{unique}")
    assert taken.value.reason == "COLLECTION_EXISTS"

    pushed = _push(registry, tmp_path / "c", f"cas-{unique}", b"x")
    registry.set_alias(pushed.name, "prod")
    with pytest.raises(FailedPrecondition) as lost:
        registry.set_alias(pushed.name, "prod", expect_unset=True)
    assert lost.value.reason == "ALIAS_EXPECTATION_FAILED"


def test_numbers_their_field_cannot_hold_are_invalid_argument_naming_the_argument(
    registry: Registry, tmp_path: Path, unique: str
) -> None:
    pushed = _push(registry, tmp_path / "n", f"numbers-{unique}", b"n")
    registry.set_alias(pushed.name, "prod")
    attempts = {
        "expected_index": lambda: registry.set_alias(pushed.name, "prod", expected_index=2**63),
        "keep_last": lambda: registry.set_retention(pushed.artifact, 2**31),
        "page_size": lambda: next(registry.list_versions(pushed.artifact, page_size=2**31)),
        "grace_period_seconds": lambda: registry.collect_garbage(grace_seconds=2**64, dry_run=True),
    }
    for argument, attempt in attempts.items():
        with pytest.raises(InvalidArgument) as refused:
            attempt()
        assert refused.value.message.startswith(f"{argument}="), refused.value.message
    with pytest.raises(InvalidArgument) as refused:
        registry.delete_alias(pushed.artifact, "prod", expected_index="0")  # type: ignore[arg-type]
    assert refused.value.message.startswith("expected_index='0'")
    assert registry.get_version(f"{pushed.artifact}:prod").index == 0  # nothing was changed


def test_a_refused_push_or_link_with_create_leaves_no_registered_model_behind(
    registry: Registry, tmp_path: Path, unique: str
) -> None:
    _push(registry, tmp_path / "m", f"typed-{unique}", b"weights")  # an artifact of type model
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "rows.txt").write_bytes(f"rows {unique}".encode())
    with pytest.raises(FailedPrecondition):  # the commit refuses a dataset version in a model artifact
        registry.push(
            dataset, f"typed-{unique}", type="dataset", link_to=[f"leftover-{unique}"], create_registered_models=True
        )
    with pytest.raises(InvalidArgument):
        registry.link(f"typed-{unique}:v0", f"other-{unique}", aliases=["latest"], create=True)
    for model in (f"leftover-{unique}", f"other-{unique}"):
        with pytest.raises(NotFound):
            registry.get_registered_model(model)
    # An existing model is never removed by a refusal.
    registry.create_registered_model(f"kept-{unique}")
    with pytest.raises(FailedPrecondition):
        registry.push(
            dataset, f"typed-{unique}", type="dataset", link_to=[f"kept-{unique}"], create_registered_models=True
        )
    assert registry.get_registered_model(f"kept-{unique}").name.endswith(f"kept-{unique}")


def test_a_missing_registered_model_is_explained_and_an_artifact_name_is_not_told_to_create_one(
    registry: Registry, tmp_path: Path, unique: str
) -> None:
    pushed = _push(registry, tmp_path / "a", f"kinds-{unique}", b"kinds")
    with pytest.raises(NotFound) as missing:
        registry.link(pushed.name, f"nosuch-{unique}")
    assert "create it first (--create on mreg push or mreg link" in missing.value.message
    with pytest.raises(NotFound) as other_kind:
        registry.link(pushed.name, f"kinds-{unique}")  # the artifact's own name
    assert "is an artifact" in other_kind.value.message and "create it first" not in other_kind.value.message
    assert other_kind.value.metadata["actual_kind"] == "artifact"


def test_every_public_method_and_type_of_the_client_is_documented() -> None:
    undocumented = []
    for name, member in vars(Registry).items():
        function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        if not name.startswith("_") and callable(function) and not inspect.getdoc(function):
            undocumented.append(f"Registry.{name}")
    for module in (models, mreg.client.errors):
        for name, member in vars(module).items():
            if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            if (inspect.isclass(member) or inspect.isfunction(member)) and not inspect.getdoc(member):
                undocumented.append(f"{module.__name__}.{name}")
    assert undocumented == []


def test_a_new_tokens_secret_never_shows_in_its_repr() -> None:
    token = models.Token("ci", "writer", "acme", "admin", None, None, None)
    created = models.NewToken(token, "mreg_s3cr3t_value")
    assert "s3cr3t" not in repr(created)
    name, secret = created
    assert (name, secret) == (token, "mreg_s3cr3t_value")


def _resolve_in_a_worker(metadata_address: str, blob_address: str, reference: str) -> None:
    """Run in a process of a pool: resolves ``reference`` there."""
    with Registry.connect(metadata_address, blob_address, entity="acme", project="pool") as registry:
        registry.resolve(reference)


def test_an_error_raised_in_a_worker_process_reaches_the_parent_whole(servers, unique: str) -> None:
    """Training jobs push and pull from process pools (multiprocessing, ProcessPoolExecutor), which send a worker's
    exception back pickled: it must arrive as the error it was, not break the pool that carries it."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        reference = f"missing-{unique}:v0"
        failed = pool.submit(_resolve_in_a_worker, servers.metadata.address, servers.blob.address, reference)
        with pytest.raises(NotFound) as caught:
            failed.result(timeout=120)

    error = caught.value
    assert error.code == "NOT_FOUND" and f"missing-{unique}" in error.message
    assert error.reason and error.metadata, (error.reason, error.metadata)
    assert str(error).startswith("NOT_FOUND: ")


def test_a_push_interrupted_in_a_worker_process_keeps_its_counts_across_a_pickle() -> None:
    """PushInterrupted carries what a rerun resumes from; it crosses a process boundary as MregError does."""
    interrupted = pickle.loads(pickle.dumps(PushInterrupted(3, 10)))

    assert isinstance(interrupted, PushInterrupted)
    assert (interrupted.stored_bytes, interrupted.total_bytes) == (3, 10)
    assert str(interrupted) == "3 of 10 bytes stored"
