"""The registry's metadata rules (version numbering, aliases, idempotent retries, retention, search, lineage,
events) under concurrency, retries and crashes, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mreg.client import MregError, Registry
from mreg.metadata.v1 import metadata_service_pb2 as pb
from tests.helpers import code_of, push_one, upload
from tests.processes import ServiceProcess
from tests.wire import Wire

# Concurrency ---------------------------------------------------------------------------------


def test_32_committers_in_separate_processes_get_exactly_v0_to_v31(servers, unique) -> None:
    artifact = f"acme/vision/crowd-{unique}"
    start_at = time.time() + 8  # every process is up and waiting by then
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.committer",
                servers.metadata.address,
                servers.blob.address,
                artifact,
                str(i),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(32)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]

    assert [w.returncode for w in workers] == [0] * 32, [err for _, err in outputs if err]
    assert sorted(int(out) for out, _ in outputs) == list(range(32))
    with servers.registry() as registry:
        assert registry.resolve(artifact).version.index == 31
        assert [v.index for v in registry.list_versions(artifact)] == list(range(31, -1, -1))


def test_concurrent_compare_and_set_promotions_have_exactly_one_winner(servers, registry, unique, wire) -> None:
    name = f"promo-{unique}"
    for i in range(21):
        push_one(wire, name, f"{name} {i}")
    registry.set_alias(f"{name}:v0", "production")
    outcomes: list[str] = []

    def promote(candidate: int) -> None:
        with servers.registry() as client:
            try:
                client.set_alias(f"{name}:v{candidate}", "production", expected_index=0)
                outcomes.append(f"won v{candidate}")
            except MregError as e:
                outcomes.append(e.code)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("FAILED_PRECONDITION") == 19
    assert f"v{registry.resolve(f'{name}:production').version.index}" == winners[0].split()[1]


def test_compare_and_set_mismatch_names_the_current_holder(registry, unique, wire) -> None:
    name = f"cas-{unique}"
    push_one(wire, name, "a")
    push_one(wire, name, "b")
    registry.set_alias(f"{name}:v1", "production")
    with pytest.raises(MregError) as error:
        registry.set_alias(f"{name}:v0", "production", expected_index=0)
    assert error.value.code == "FAILED_PRECONDITION" and "names v1" in error.value.message
    with pytest.raises(MregError) as error:
        registry.set_alias(f"{name}:v0", "production", expect_unset=True)
    assert error.value.code == "FAILED_PRECONDITION"
    registry.set_alias(f"{name}:v0", "staging", expect_unset=True)
    assert registry.resolve(f"{name}:staging").version.index == 0


# Idempotency ---------------------------------------------------------------------------------


def test_a_retried_commit_with_the_same_request_id_creates_one_version(registry, unique, wire) -> None:
    name = f"retry-{unique}"
    (a, b) = upload(wire, b"retry a " + unique.encode(), b"retry b " + unique.encode())
    request_id = uuid.uuid4().hex
    create = pb.CreateVersionRequest(parent=name, type="model", request_id=request_id)
    first_pending = wire.call(wire.metadata.CreateVersion, create)
    again_pending = wire.call(wire.metadata.CreateVersion, create)
    assert first_pending.version.uid == again_pending.version.uid

    commit_id = uuid.uuid4().hex
    request = pb.CommitVersionRequest(
        uid=first_pending.version.uid,
        manifest=[pb.ManifestEntry(path="f", digest=a)],
        request_id=commit_id,
        aliases=["best"],
    )
    first = wire.call(wire.metadata.CommitVersion, request)
    # Another version lands in between; the retry must still return the first result.
    push_one(wire, name, "between " + unique)
    retried = wire.call(wire.metadata.CommitVersion, request)

    assert (first.version.index, retried.version.index) == (0, 0)
    assert retried.created is True
    assert [v.index for v in registry.list_versions(name)] == [1, 0]

    reused = pb.CommitVersionRequest(
        uid=first_pending.version.uid, manifest=[pb.ManifestEntry(path="f", digest=b)], request_id=commit_id
    )
    assert code_of(lambda: wire.call(wire.metadata.CommitVersion, reused)) == "INVALID_ARGUMENT"


def _retry_after_deleting(wire: Wire, method: str, request: Any, delete: Callable[[], None]) -> MregError:
    """Sends ``request`` once, runs ``delete``, then sends it again with the same request_id; the retry's error."""
    wire.call(getattr(wire.metadata, method), request)
    delete()
    with pytest.raises(MregError) as error:
        wire.call(getattr(wire.metadata, method), request)
    return error.value


@pytest.mark.parametrize("method", ["CreateRegisteredModel", "UpdateRegisteredModel", "SetRetentionPolicy"])
def test_a_retry_of_a_change_to_a_collection_deleted_since_is_not_found_saying_so(wire, unique, method) -> None:
    # The first call acted; what it made or changed is gone, so its answer cannot be rebuilt: the retry says so.
    name = f"gone-{method.lower()}-{unique}"
    request_id = uuid.uuid4().hex
    if method == "SetRetentionPolicy":
        push_one(wire, name, "retention " + unique)
        wire.call(wire.metadata.DeleteVersion, pb.DeleteVersionRequest(name=f"{name}:v0", force=True))
        request: Any = pb.SetRetentionPolicyRequest(name=name, keep_last=3, request_id=request_id)
    else:
        wire.call(wire.metadata.CreateRegisteredModel, pb.CreateRegisteredModelRequest(name=name, type="model"))
        if method == "CreateRegisteredModel":
            wire.call(wire.metadata.DeleteCollection, pb.DeleteCollectionRequest(name=name))
            request = pb.CreateRegisteredModelRequest(name=name, type="model", request_id=request_id)
        else:
            request = pb.UpdateRegisteredModelRequest(name=name, description="about", request_id=request_id)

    error = _retry_after_deleting(
        wire, method, request, lambda: wire.call(wire.metadata.DeleteCollection, pb.DeleteCollectionRequest(name=name))
    )

    assert (error.code, error.reason) == ("NOT_FOUND", "COLLECTION_NOT_FOUND"), error
    assert "since been deleted" in error.message


def test_a_retry_of_a_commit_whose_version_was_deleted_since_is_not_found_saying_so(wire, unique) -> None:
    name = f"gone-commit-{unique}"
    (content,) = upload(wire, b"gone commit " + unique.encode())
    pending = wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model")).version
    request = pb.CommitVersionRequest(
        uid=pending.uid, manifest=[pb.ManifestEntry(path="f", digest=content)], request_id=uuid.uuid4().hex
    )

    def delete_version_and_artifact() -> None:
        wire.call(wire.metadata.DeleteVersion, pb.DeleteVersionRequest(name=f"{name}:v0", force=True))
        wire.call(wire.metadata.DeleteCollection, pb.DeleteCollectionRequest(name=name))

    error = _retry_after_deleting(wire, "CommitVersion", request, delete_version_and_artifact)

    assert (error.code, error.reason) == ("NOT_FOUND", "VERSION_NOT_FOUND"), error
    assert "since been deleted" in error.message


def test_a_name_of_the_other_kind_is_not_found_saying_what_it_is(wire, unique) -> None:
    artifact, model = f"kind-art-{unique}", f"kind-rm-{unique}"
    push_one(wire, artifact, "kind " + unique)
    wire.call(wire.metadata.CreateRegisteredModel, pb.CreateRegisteredModelRequest(name=model, type="model"))
    calls = {
        "CreateLink into an artifact": lambda: wire.call(
            wire.metadata.CreateLink, pb.CreateLinkRequest(version=f"{artifact}:v0", parent=artifact)
        ),
        "ListLinks of an artifact": lambda: wire.call(wire.metadata.ListLinks, pb.ListLinksRequest(parent=artifact)),
        "ListVersions of a registered model": lambda: wire.call(
            wire.metadata.ListVersions, pb.ListVersionsRequest(parent=model)
        ),
        "SetRetentionPolicy of a registered model": lambda: wire.call(
            wire.metadata.SetRetentionPolicy, pb.SetRetentionPolicyRequest(name=model, keep_last=2)
        ),
    }
    for what, call in calls.items():
        with pytest.raises(MregError) as error:
            call()
        assert error.value.code == "NOT_FOUND", what  # as each method's contract documents
        expected = (
            "is an artifact" if "of an artifact" in what or "into an artifact" in what else "is a registered model"
        )
        assert expected in error.value.message, (what, error.value.message)


def test_concurrent_commits_of_the_latest_content_create_one_version(registry, unique, wire) -> None:
    # Each commit compares its manifest with the latest version's once it holds the artifact's lock;
    # one that waited for another must see the version that one committed.
    name = f"same-content-{unique}"
    (content,) = upload(wire, b"same content " + unique.encode())
    commits = 8
    pendings = [
        wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model")).version.uid
        for _ in range(commits)
    ]
    start = threading.Barrier(commits)
    answers: list[pb.CommitVersionResponse] = []

    def commit(uid: str) -> None:
        start.wait()
        manifest = [pb.ManifestEntry(path="weights", digest=content)]
        answers.append(wire.call(wire.metadata.CommitVersion, pb.CommitVersionRequest(uid=uid, manifest=manifest)))

    threads = [threading.Thread(target=commit, args=(uid,)) for uid in pendings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a.created for a in answers) == [False] * (commits - 1) + [True]
    assert {a.version.index for a in answers} == {0}
    assert [v.index for v in registry.list_versions(name)] == [0]


def test_concurrent_sends_of_one_request_id_act_once_and_all_get_its_answer(registry, unique, wire) -> None:
    name = f"retry-race-{unique}"
    (content,) = upload(wire, b"retry race " + unique.encode())
    create = pb.CreateVersionRequest(parent=name, type="model", request_id=uuid.uuid4().hex)
    sends = 8

    def send_all(method, request):  # type: ignore[no-untyped-def]
        start = threading.Barrier(sends)

        def send() -> object:
            start.wait()
            return wire.call(method, request)

        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, send())) for i in range(sends)]
        answers: dict[int, object] = {}
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return list(answers.values())

    pendings = send_all(wire.metadata.CreateVersion, create)
    assert len({p.version.uid for p in pendings}) == 1
    commit = pb.CommitVersionRequest(
        uid=pendings[0].version.uid,
        manifest=[pb.ManifestEntry(path="f", digest=content)],
        aliases=["best"],
        request_id=uuid.uuid4().hex,
    )
    commits = send_all(wire.metadata.CommitVersion, commit)

    assert [(c.version.index, c.created, list(c.version.aliases)) for c in commits] == [
        (0, True, ["latest", "best"])
    ] * sends
    assert [v.index for v in registry.list_versions(name)] == [0]
    assert len(list(registry.alias_history(name, "best"))) == 1  # one move recorded, not one per send


def test_a_retried_alias_move_returns_the_first_result(registry, unique, wire) -> None:
    name = f"alias-retry-{unique}"
    push_one(wire, name, "a")
    push_one(wire, name, "b")
    request = pb.SetAliasRequest(name=f"{name}:v1", alias="best", request_id=uuid.uuid4().hex)
    first = wire.call(wire.metadata.SetAlias, request)
    registry.set_alias(f"{name}:v0", "best")
    retried = wire.call(wire.metadata.SetAlias, request)
    assert retried == first
    assert registry.resolve(f"{name}:best").version.index == 0  # the retry did not act again
    history = list(registry.alias_history(name, "best"))
    assert [(e.after["index"]) for e in history] == [0, 1]


# Deletion and retention ----------------------------------------------------------------------


def test_deleting_an_aliased_or_linked_version_needs_force(registry, unique, wire) -> None:
    name = f"del-{unique}"
    model = f"del-model-{unique}"
    push_one(wire, name, "a")
    push_one(wire, name, "b")
    registry.set_alias(f"{name}:v1", "best")
    registry.link(f"{name}:v1", model, aliases=["production"], create=True)

    with pytest.raises(MregError) as error:
        registry.delete_version(f"{name}:v1")
    assert error.value.code == "FAILED_PRECONDITION"
    assert "'best'" in error.value.message and f"{model}:v0" in error.value.message
    assert registry.resolve(f"{name}:best").version.index == 1  # nothing changed

    deleted = registry.delete_version(f"{name}:v1", force=True)

    assert list(deleted.removed_aliases) == ["best"]
    assert list(deleted.removed_links) == [f"acme/vision/{model}:v0"]
    assert deleted.version.state == "deleted"
    assert registry.resolve(name).version.index == 0  # latest falls back
    assert code_of(lambda: registry.resolve(f"{name}:v1")) == "NOT_FOUND"
    assert code_of(lambda: registry.resolve(f"{model}:production")) == "NOT_FOUND"
    # The index is never reused.
    assert push_one(wire, name, "c").version.index == 2
    tombstones = list(registry.list_versions(name, filter='state = "deleted"'))
    assert [v.index for v in tombstones] == [1]


def test_a_deletion_must_name_what_it_deletes_rather_than_take_latest(registry, unique, wire) -> None:
    name = f"bare-{unique}"
    model = f"bare-model-{unique}"
    for content in ("a", "b"):
        push_one(wire, name, content)
    registry.link(f"{name}:v0", model, create=True)
    registry.link(f"{name}:v1", model)
    for attempt in (lambda: registry.delete_link(model), lambda: registry.delete_version(name)):
        with pytest.raises(MregError) as refused:
            attempt()
        assert refused.value.code == "INVALID_ARGUMENT" and refused.value.reason == "REFERENCE_INVALID"
        assert "name the" in refused.value.message and ":v3" in refused.value.message
    assert [link.index for link in registry.list_links(model)] == [1, 0]
    assert registry.delete_link(f"{model}:latest").name == f"acme/vision/{model}:v1"  # named explicitly
    assert [v.index for v in registry.list_versions(name)] == [1, 0]


def test_alias_history_of_a_name_that_never_existed_is_not_found_and_a_deleted_ones_stays(
    registry, unique, wire
) -> None:
    name = f"history-{unique}"
    push_one(wire, name, "a")
    registry.set_alias(f"{name}:v0", "best")
    assert code_of(lambda: list(registry.alias_history(f"histroy-{unique}", "best"))) == "NOT_FOUND"
    assert list(registry.alias_history(name, "never-set")) == []  # the collection exists: no history yet
    registry.delete_version(f"{name}:v0", force=True)
    registry.delete_collection(name)
    # Audit outlives the collection.
    assert [e.kind for e in registry.alias_history(name, "best")] == ["alias.deleted", "alias.set"]


def test_alias_events_of_a_registered_model_name_the_version_each_link_held(registry, unique, wire) -> None:
    """A promotion audit reads which version went to production from the alias's history alone, also after
    the link is deleted (its index then resolves no more)."""
    name = f"audited-{unique}"
    model = f"audited-model-{unique}"
    for content in ("a", "b"):
        push_one(wire, name, content)
    registry.link(f"{name}:v0", model, aliases=["production"], create=True)
    registry.link(f"{name}:v1", model)
    registry.set_alias(f"{model}:v1", "production")
    registry.delete_link(f"{model}:production")
    history = list(registry.alias_history(model, "production"))
    version = f"acme/vision/{name}"
    assert [(e.kind, e.before, e.after) for e in history] == [
        ("alias.deleted", {"index": 1, "version": f"{version}:v1"}, None),
        ("alias.set", {"index": 0, "version": f"{version}:v0"}, {"index": 1, "version": f"{version}:v1"}),
        ("alias.set", None, {"index": 0, "version": f"{version}:v0"}),
    ]


def test_links_and_empty_collections_can_be_deleted(registry, unique, wire) -> None:
    name = f"linkdel-{unique}"
    model = f"linkdel-model-{unique}"
    push_one(wire, name, "a")
    registry.link(f"{name}:v0", model, aliases=["staging"], create=True)
    assert code_of(lambda: registry.delete_collection(model)) == "FAILED_PRECONDITION"
    deleted = registry.delete_link(f"{model}:staging")
    assert deleted.name == f"acme/vision/{model}:v0" and deleted.removed_aliases == ("staging",)
    assert list(registry.list_links(model)) == []
    registry.delete_collection(model)
    assert code_of(lambda: registry.get_registered_model(model)) == "NOT_FOUND"
    assert code_of(lambda: registry.delete_collection(name)) == "FAILED_PRECONDITION"
    registry.delete_version(f"{name}:v0")
    registry.delete_collection(name)
    assert code_of(lambda: registry.get_artifact(name)) == "NOT_FOUND"


def test_retention_keeps_the_last_n_plus_aliased_and_linked_versions(registry, unique, wire) -> None:
    name = f"keep-{unique}"
    for i in range(6):
        push_one(wire, name, f"{name} {i}")
    registry.set_alias(f"{name}:v0", "baseline")
    registry.link(f"{name}:v1", f"keep-model-{unique}", create=True)

    response = registry.set_retention(name, 2)

    assert list(response.deleted_indexes) == [2, 3]
    assert response.artifact.retention_keep_last == 2
    assert [v.index for v in registry.list_versions(name)] == [5, 4, 1, 0]
    push_one(wire, name, f"{name} 6")  # v4 falls out as v6 arrives
    assert [v.index for v in registry.list_versions(name)] == [6, 5, 1, 0]
    registry.set_retention(name, None)
    push_one(wire, name, f"{name} 7")
    assert [v.index for v in registry.list_versions(name)] == [7, 6, 5, 1, 0]


def test_pending_versions_expire_and_are_never_listed(short_ttl_registry, short_ttl_wire, unique) -> None:
    registry, wire = short_ttl_registry, short_ttl_wire
    name = f"pending-{unique}"
    push_one(wire, name, "committed")
    (digest,) = upload(wire, b"late " + unique.encode())
    pending = wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model")).version
    assert [v.index for v in registry.list_versions(name)] == [0]
    time.sleep(2.0)
    late = pb.CommitVersionRequest(uid=pending.uid, manifest=[pb.ManifestEntry(path="f", digest=digest)])
    assert code_of(lambda: wire.call(wire.metadata.CommitVersion, late)) == "NOT_FOUND"
    assert [v.index for v in registry.list_versions(name)] == [0]


# Search ----------------------------------------------------------------------------------------


def test_versions_are_searched_by_metadata_tags_and_aliases_with_keyset_pages(registry, unique, wire) -> None:
    name = f"search-{unique}"
    losses = [0.5, 0.15, 0.3, 0.1, None, 0.19]
    for i, loss in enumerate(losses):
        metrics = {"epoch": i} if loss is None else {"val_loss": loss, "epoch": i}
        push_one(wire, name, f"{name} {i}", metadata=metrics, tags=("fp16",) if i % 2 else ("fp32",))
    registry.set_alias(f"{name}:v2", "best")

    def indexes(filter: str = "", order_by: str = "", page_size: int = 2) -> list[int]:
        return [v.index for v in registry.list_versions(name, page_size, filter=filter, order_by=order_by)]

    assert indexes('metadata.val_loss < 0.2 AND tag = "fp16"') == [5, 3, 1]
    assert indexes('alias = "best" OR metadata.epoch >= 5') == [5, 2]
    assert indexes('NOT tag = "fp16" AND alias != "latest"') == [4, 2, 0]
    assert indexes("index >= 4") == [5, 4]
    assert indexes(order_by="metadata.val_loss asc") == [3, 1, 5, 2, 0, 4]
    assert indexes(order_by="metadata.val_loss desc", page_size=1) == [0, 2, 5, 1, 3, 4]
    assert indexes(order_by="index asc", page_size=4) == [0, 1, 2, 3, 4, 5]
    assert indexes('create_time > "2000-01-01T00:00:00Z"', order_by="create_time asc") == [0, 1, 2, 3, 4, 5]
    assert indexes('metadata.val_loss = "0.1"') == []  # a string never equals a number


@pytest.mark.parametrize(
    ("bad", "position"),
    [
        ("metadata.val_loss <", "position 20"),
        ("unknown = 1", "position 1"),
        ("index = 1 AND", "position 14"),
        ("tag < 'x'", "position 5"),
        ("(index = 1", "position 11"),
        ("index = 1 ; DROP TABLE versions", "position 11"),
    ],
)
def test_bad_filters_are_invalid_argument_pointing_at_the_position(registry, unique, bad, position, wire) -> None:
    push_one(wire, f"badfilter-{unique}", "x")
    with pytest.raises(MregError) as error:
        list(registry.list_versions(f"badfilter-{unique}", filter=bad))
    assert error.value.code == "INVALID_ARGUMENT"
    assert position in error.value.message


def test_collections_are_filtered_by_name_prefix_type_tag_and_time(registry, unique, wire) -> None:
    project = f"acme/catalog-{unique}"
    for name in ("resnet-a", "resnet-b", "bert_x"):
        push_one(wire, f"{project}/{name}", name)
    (digest,) = upload(wire, b"images " + unique.encode())
    dataset = wire.call(
        wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=f"{project}/imagenet", type="dataset")
    ).version
    wire.call(
        wire.metadata.CommitVersion,
        pb.CommitVersionRequest(uid=dataset.uid, manifest=[pb.ManifestEntry(path="f", digest=digest)]),
    )
    wire.call(
        wire.metadata.CreateRegisteredModel,
        pb.CreateRegisteredModelRequest(name=f"{project}/Ranker", tags=["search"]),
    )

    def names(filter_text: str) -> list[str]:
        return [a.name.rsplit("/", 1)[1] for a in registry.list_artifacts(project, filter=filter_text)]

    assert names('name = "resnet*"') == ["resnet-a", "resnet-b"]
    assert names('name = "bert_*"') == ["bert_x"]
    assert names('name = "resnet_*"') == []  # '_' is literal, not a LIKE wildcard
    assert names('name = "resnet-a"') == ["resnet-a"]
    assert names('name > "imagenet"') == ["resnet-a", "resnet-b"]
    assert names('type = "dataset"') == ["imagenet"]
    assert names('NOT type = "dataset" AND name != "resnet*"') == ["bert_x"]
    assert names('create_time > "2000-01-01T00:00:00Z"') == ["bert_x", "imagenet", "resnet-a", "resnet-b"]
    assert [m.name for m in registry.list_registered_models(project, filter='tag = "search"')] == [f"{project}/Ranker"]
    assert list(registry.list_registered_models(project, filter='tag = "nothing"')) == []
    with pytest.raises(MregError) as error:
        names("metadata.loss < 1")
    assert error.value.code == "INVALID_ARGUMENT"
    assert "unknown field" in error.value.message


# Lineage, protection, history ------------------------------------------------------------------


def test_lineage_is_queryable_in_both_directions(registry, unique, tmp_path, wire) -> None:
    dataset = f"data-{unique}"
    wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=dataset, type="dataset"))
    run = f"acme/vision/train-{unique}"
    push_one(wire, name := f"lin-{unique}", "model", run=run)
    registry.set_alias(f"{name}:v0", "production")
    registry.record_run_inputs(f"eval-{unique}", [f"{name}:production"])
    registry.record_run_inputs(f"serve-{unique}", [f"{name}:v0"])

    of_version = registry.lineage(f"{name}:production")
    assert of_version.producer_run == run
    assert list(of_version.consumer_runs) == [f"acme/vision/eval-{unique}", f"acme/vision/serve-{unique}"]
    of_run = registry.lineage(run=f"eval-{unique}")
    assert list(of_run.inputs) == [f"acme/vision/{name}:v0"]
    assert list(registry.lineage(run=run).outputs) == [f"acme/vision/{name}:v0"]
    assert code_of(lambda: registry.lineage()) == "INVALID_ARGUMENT"


def test_protected_aliases_are_stored_and_exposed(registry, unique, wire) -> None:
    name = f"prot-{unique}"
    push_one(wire, name, "x")
    assert registry.set_alias_protection(name, "production") == ["production"]
    assert list(registry.get_artifact(name).protected_aliases) == ["production"]
    assert registry.set_alias_protection(name, "production", protected=False) == []


# Events ------------------------------------------------------------------------------------------


def test_every_mutation_appends_an_event_in_order(registry, unique, wire) -> None:
    stream = registry.watch(0, from_now=True, timeout=60)
    assert next(stream).event is None  # the stream is live from here on
    name = f"events-{unique}"
    push_one(wire, name, "a")
    registry.set_alias(f"{name}:v0", "best")
    registry.delete_alias(name, "best")
    seen = []
    for message in stream:
        if message.event is not None and message.event.resource.startswith(f"acme/vision/{name}"):
            seen.append((message.event.kind, message.event.resource, message.event.actor))
        if len(seen) == 4:
            break
    actor = seen[0][2]
    assert "@" in actor
    assert seen == [
        ("collection.created", f"acme/vision/{name}", actor),
        ("version.committed", f"acme/vision/{name}:v0", actor),
        ("alias.set", f"acme/vision/{name}:best", actor),
        ("alias.deleted", f"acme/vision/{name}:best", actor),
    ]


def test_watch_resumed_after_a_restart_sees_every_event_exactly_once(servers, unique, wire) -> None:
    service = ServiceProcess(
        "mreg.metadata_service", ["--database-url", servers.database_url, "--blob-addr", servers.blob.address]
    ).start()
    prefix = f"acme/vision/resume-{unique}"
    try:
        with Registry.connect(service.address, servers.blob.address, entity="acme", project="vision") as registry:
            cursor = next(registry.watch(0, from_now=True, timeout=60)).sequence
            for i in range(3):
                push_one(wire, f"resume-{unique}", f"first {i}")
            received = []
            for message in registry.watch(cursor, resource_prefix=prefix, timeout=60):
                if message.event is not None:
                    received.append(message.event.sequence)
                if len(received) == 4:  # collection.created + 3 commits
                    break
            cursor = received[-1]
        service.kill()
        service.start()
        with Registry.connect(service.address, servers.blob.address, entity="acme", project="vision") as registry:
            for i in range(3):
                push_one(wire, f"resume-{unique}", f"second {i}")
            for message in registry.watch(cursor, resource_prefix=prefix, timeout=60):
                if message.event is not None:
                    received.append(message.event.sequence)
                if len(received) == 7:
                    break
    finally:
        service.stop()
    assert len(received) == len(set(received)) == 7
    assert received == sorted(received)


def test_acknowledged_commits_survive_a_sigkill_mid_burst(servers, unique, wire) -> None:
    service = ServiceProcess(
        "mreg.metadata_service", ["--database-url", servers.database_url, "--blob-addr", servers.blob.address]
    ).start()
    name = f"crash-{unique}"
    acknowledged: dict[int, str] = {}
    stop = threading.Event()

    def burst(worker: int) -> None:
        with Wire(service.address, servers.blob.address, timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = push_one(client, name, f"{worker} {i} {unique}")
                except MregError:
                    continue
                acknowledged[response.version.index] = response.version.digest

    try:
        threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        service.kill()
        stop.set()
        for t in threads:
            t.join(timeout=120)
        service.start()
        with Registry.connect(service.address, servers.blob.address, entity="acme", project="vision") as registry:
            versions = list(registry.list_versions(name))
            indexes = sorted(v.index for v in versions)
            assert acknowledged, "the burst acknowledged no commit before the kill"
            assert indexes == list(range(len(indexes)))  # contiguous: nothing half-written
            for index, digest in acknowledged.items():
                version = registry.resolve(f"{name}:v{index}").version
                assert version.digest == digest
                assert len(version.manifest) == version.file_count == 1
            assert push_one(wire, name, f"after {unique}").version.index == len(indexes)
    finally:
        stop.set()
        service.stop()


# Grammars over the wire ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(reference=st.text(max_size=80), filter_text=st.text(max_size=80))
def test_arbitrary_references_and_filters_never_cause_internal_errors(servers, reference, filter_text) -> None:
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    with grpc.insecure_channel(servers.metadata.address) as channel:
        from mreg.metadata.v1 import metadata_service_pb2_grpc

        stub = metadata_service_pb2_grpc.MetadataServiceStub(channel)
        headers = (("mreg-entity", "acme"), ("mreg-project", "vision"))
        for call in (
            lambda: stub.ResolveReference(pb.ResolveReferenceRequest(name=reference), metadata=headers),
            lambda: stub.ListVersions(pb.ListVersionsRequest(parent="acme/vision/any", filter=filter_text)),
            lambda: stub.SetAlias(pb.SetAliasRequest(name=reference, alias="x"), metadata=headers),
        ):
            try:
                call()
            except grpc.RpcError as e:
                assert e.code() in allowed, (e.code(), e.details())


def test_a_watch_from_beyond_the_end_of_the_log_is_refused_not_left_silent(servers, unique, wire) -> None:
    """A cursor past the last event (from another registry, or kept across a restore from an older backup) would
    wait for events numbered after it and miss every one committed before the log caught up with it."""
    push_one(wire, f"cursor-{unique}", "content")
    last = next(iter(wire.metadata.Watch(pb.WatchRequest(from_now=True), timeout=30))).sequence
    with pytest.raises(grpc.RpcError) as error:
        next(iter(wire.metadata.Watch(pb.WatchRequest(start_after=last + 1000), timeout=30)))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"last event is {last}" in (error.value.details() or "")
    # The end of the log itself is a valid cursor: the stream starts there and delivers what comes next.
    stream = wire.metadata.Watch(pb.WatchRequest(start_after=last), timeout=30)
    assert next(stream).sequence == last
    push_one(wire, f"cursor-{unique}", "more content")
    event = next(message for message in stream if message.HasField("event"))
    assert event.sequence > last
    stream.cancel()
