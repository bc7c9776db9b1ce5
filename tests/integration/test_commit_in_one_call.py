"""CommitVersion with new_version: a version created and committed in one call, with no pending version."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import delete

from mreg.client import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata_service.lru import WeightedLru
from mreg.metadata_service.models import Version
from tests.helpers import digest_of, upload
from tests.wire import Wire


def one_call(
    name: str, manifest: list[pb.ManifestEntry], type_: str = "model", **fields: Any
) -> pb.CommitVersionRequest:
    version_fields = {k: fields.pop(k) for k in ("description", "tags") if k in fields}
    metadata = fields.pop("metadata", None)
    request = pb.CommitVersionRequest(
        new_version=pb.CommitVersionRequest.NewVersion(parent=name, type=type_, **version_fields),
        manifest=manifest,
        **fields,
    )
    if metadata is not None:
        request.new_version.metadata.update(metadata)
    return request


def refusal(wire: Wire, request: pb.CommitVersionRequest) -> MregError:
    with pytest.raises(MregError) as error:
        wire.call(wire.metadata.CommitVersion, request)
    return error.value


def test_a_version_created_and_committed_in_one_call_carries_everything_it_was_given(registry, unique, wire) -> None:
    name = f"one-call-{unique}"
    model = f"one-call-model-{unique}"
    registry.create_registered_model(model, type="model")
    (a, b) = upload(wire, b"one call a " + unique.encode(), b"one call b " + unique.encode())
    first = wire.call(
        wire.metadata.CommitVersion,
        one_call(
            name,
            [pb.ManifestEntry(path="weights/a.bin", digest=a), pb.ManifestEntry(path="config.json", digest=b)],
            description="first of its name",
            tags=["nightly"],
            metadata={"step": 10, "loss": 0.5},
            aliases=["best"],
            links=[pb.LinkTarget(registered_model=model, aliases=["staging"])],
            run=f"run-{unique}",
        ),
    )
    second = wire.call(wire.metadata.CommitVersion, one_call(name, [pb.ManifestEntry(path="only", digest=a)]))

    assert (first.created, first.version.index, second.created, second.version.index) == (True, 0, True, 1)
    stored = registry.get_version(f"{name}:v0")
    assert stored.description == "first of its name"
    assert list(stored.tags) == ["nightly"]
    assert stored.metadata == {"step": 10, "loss": 0.5}
    assert sorted(f.path for f in stored.manifest) == ["config.json", "weights/a.bin"]
    assert stored.digest == first.version.digest
    assert registry.resolve(f"{name}:best").version.index == 0
    assert registry.resolve(f"{model}:staging").version.uid == first.version.uid
    assert registry.resolve(name).version.index == 1
    assert [link.registered_model for link in first.links] == [f"acme/vision/{model}"]
    assert registry.lineage(f"{name}:v0").producer_run == f"acme/vision/run-{unique}"


def test_the_latest_versions_content_again_returns_the_latest_unchanged(registry, unique, wire) -> None:
    name = f"one-call-same-{unique}"
    (content,) = upload(wire, b"one call same " + unique.encode())
    manifest = [pb.ManifestEntry(path="weights", digest=content)]
    first = wire.call(wire.metadata.CommitVersion, one_call(name, manifest, description="kept"))
    again = wire.call(
        wire.metadata.CommitVersion, one_call(name, manifest, description="not applied", aliases=["best"])
    )

    assert (first.created, again.created) == (True, False)
    assert again.version.uid == first.version.uid
    assert sorted(again.version.aliases) == ["best", "latest"]
    assert registry.get_version(f"{name}:v0").description == "kept"
    assert [v.index for v in registry.list_versions(name)] == [0]


def test_missing_content_is_refused_leaving_nothing_and_the_same_request_commits_once_uploaded(
    registry, unique, wire
) -> None:
    name = f"one-call-missing-{unique}"
    data = b"uploaded only after the refusal " + unique.encode()
    digest = digest_of(data)
    request = one_call(name, [pb.ManifestEntry(path="late.bin", digest=digest)], request_id=uuid.uuid4().hex)

    error = refusal(wire, request)
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "MISSING_BLOB")
    assert error.violations == (("MISSING_BLOB", f"blobs/{digest.hash}/{digest.size_bytes}"),)
    # Not even an invisible artifact is left: a push of another type may still take the name.
    with pytest.raises(MregError) as missing:
        registry.get_artifact(name)
    assert missing.value.code == "NOT_FOUND"

    upload(wire, data)
    committed = wire.call(wire.metadata.CommitVersion, request)
    assert (committed.created, committed.version.index) == (True, 0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"uid": "0" * 32}, "FIELD_INVALID"),  # both uid and new_version
        ({"new_version": None}, "FIELD_INVALID"),  # neither
        ({"parent": "acme/vision/too/many/parts"}, "REFERENCE_INVALID"),
        ({"parent": "acme/vision/name:v1"}, "REFERENCE_INVALID"),
        ({"type": ""}, "REFERENCE_INVALID"),  # as CreateVersion answers
        ({"tags": ["bad\ntag"]}, "FIELD_INVALID"),
    ],
)
def test_a_malformed_request_is_invalid_argument_naming_what_to_fix(unique, wire, change, reason) -> None:
    (content,) = upload(wire, b"malformed one call " + unique.encode())
    request = one_call(f"one-call-bad-{unique}", [pb.ManifestEntry(path="f", digest=content)])
    if "uid" in change:
        request.uid = change["uid"]
    if "new_version" in change:
        request.ClearField("new_version")
    if "parent" in change:
        request.new_version.parent = change["parent"]
    if "type" in change:
        request.new_version.type = change["type"]
    if "tags" in change:
        request.new_version.tags[:] = change["tags"]

    error = refusal(wire, request)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason), error


def test_another_type_or_a_registered_models_name_is_a_failed_precondition(registry, unique, wire) -> None:
    name = f"one-call-typed-{unique}"
    (content,) = upload(wire, b"typed one call " + unique.encode())
    manifest = [pb.ManifestEntry(path="f", digest=content)]
    wire.call(wire.metadata.CommitVersion, one_call(name, manifest, type_="dataset"))
    model = f"one-call-rm-{unique}"
    registry.create_registered_model(model, type="model")

    mismatch = refusal(wire, one_call(name, manifest, type_="model"))
    kind = refusal(wire, one_call(model, manifest))

    assert (mismatch.code, mismatch.reason) == ("FAILED_PRECONDITION", "TYPE_MISMATCH")
    assert (kind.code, kind.reason) == ("FAILED_PRECONDITION", "COLLECTION_KIND_MISMATCH")
    assert [v.index for v in registry.list_versions(name)] == [0]


def test_a_retry_returns_the_first_answer_and_a_reused_id_is_refused(registry, unique, wire) -> None:
    name = f"one-call-retry-{unique}"
    (a, b) = upload(wire, b"retry one a " + unique.encode(), b"retry one b " + unique.encode())
    request = one_call(name, [pb.ManifestEntry(path="f", digest=a)], aliases=["best"], request_id=uuid.uuid4().hex)
    first = wire.call(wire.metadata.CommitVersion, request)
    wire.call(wire.metadata.CommitVersion, one_call(name, [pb.ManifestEntry(path="between", digest=b)]))
    retried = wire.call(wire.metadata.CommitVersion, request)

    assert (first.version.uid, first.version.index) == (retried.version.uid, 0)
    assert retried.created is True
    assert [v.index for v in registry.list_versions(name)] == [1, 0]
    reused = one_call(name, [pb.ManifestEntry(path="f", digest=b)], request_id=request.request_id)
    assert refusal(wire, reused).reason == "REQUEST_ID_REUSED"


def _all_at_once(requests: list[pb.CommitVersionRequest], wire: Wire) -> list[pb.CommitVersionResponse]:
    start = threading.Barrier(len(requests))
    answers: dict[int, pb.CommitVersionResponse] = {}

    def send(i: int) -> None:
        start.wait()
        answers[i] = wire.call(wire.metadata.CommitVersion, requests[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == len(requests), "a commit failed"
    return [answers[i] for i in range(len(requests))]


def test_concurrent_one_call_commits_to_a_new_artifact_are_numbered_contiguously(registry, unique, wire) -> None:
    name = f"one-call-race-{unique}"
    (content,) = upload(wire, b"one call race " + unique.encode())
    commits = 16
    answers = _all_at_once(
        [one_call(name, [pb.ManifestEntry(path=f"step-{i}", digest=content)]) for i in range(commits)], wire
    )

    assert sorted(a.version.index for a in answers) == list(range(commits))
    assert all(a.created for a in answers)
    assert [v.index for v in registry.list_versions(name)] == list(reversed(range(commits)))
    # The artifact was created once, by whichever commit came first, and the log has the commits in order.
    events = []
    for update in registry.watch(0, resource_prefix=f"acme/vision/{name}", timeout=30):
        if update.event is not None:
            events.append((update.event.kind, update.event.resource))
        if len(events) == commits + 1:
            break
    assert events == [("collection.created", f"acme/vision/{name}")] + [
        ("version.committed", f"acme/vision/{name}:v{i}") for i in range(commits)
    ]


def test_concurrent_one_call_commits_of_the_same_content_create_one_version(registry, unique, wire) -> None:
    # Each compares its manifest with the latest version's once it holds the artifact's lock; one that
    # waited for another must see the version that one committed.
    name = f"one-call-same-race-{unique}"
    (first, content) = upload(wire, b"one call first " + unique.encode(), b"one call same race " + unique.encode())
    wire.call(wire.metadata.CommitVersion, one_call(name, [pb.ManifestEntry(path="w", digest=first)]))
    answers = _all_at_once([one_call(name, [pb.ManifestEntry(path="w", digest=content)]) for _ in range(8)], wire)

    assert sorted(a.created for a in answers) == [False] * 7 + [True]
    assert {a.version.index for a in answers} == {1}
    assert [v.index for v in registry.list_versions(name)] == [1, 0]


def test_an_artifact_nobody_saw_takes_the_type_of_the_first_version_to_commit(servers, registry, unique, wire) -> None:
    name = f"one-call-unborn-{unique}"
    pending = wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="dataset")).version
    # The pending version gone, as one expired whose artifact outlived it: the artifact was never seen.
    with servers.metadata.engine.begin() as connection:
        connection.execute(delete(Version).where(Version.uid == pending.uid))
    (content,) = upload(wire, b"unborn one call " + unique.encode())

    committed = wire.call(
        wire.metadata.CommitVersion, one_call(name, [pb.ManifestEntry(path="f", digest=content)], type_="model")
    )

    assert (committed.version.index, committed.version.type) == (0, "model")
    assert registry.get_artifact(name).type == "model"


def test_concurrent_commits_with_aliases_and_retried_ids_each_get_their_own_answer_in_commit_order(
    servers, registry, unique, wire, monkeypatch
) -> None:
    # Commits to one artifact that queue behind each other run together in one transaction: each must
    # still get its own version, the alias must move with each in turn, and a retry its first answer.
    queue = servers.metadata.catalog.versions.new_versions
    groups: list[int] = []
    counted = queue.on_together
    monkeypatch.setattr(queue, "on_together", lambda size: (groups.append(size), counted(size)))
    name = f"one-call-mixed-{unique}"
    first_wave, second_wave = 24, 8
    commits = first_wave + second_wave
    contents = upload(wire, *[f"one call mixed {i} {unique}".encode() for i in range(commits)])
    requests = []
    for i, content in enumerate(contents):
        fields: dict[str, Any] = {"metadata": {"step": i}}
        if i % 4 == 0:
            fields["aliases"] = ["best"]
        if i % 6 == 1:
            fields["request_id"] = uuid.uuid4().hex
        if i % 2:
            fields["run"] = f"run-{unique}-{i}"
        requests.append(one_call(name, [pb.ManifestEntry(path=f"step-{i}", digest=content)], **fields))
    answers = _all_at_once(requests[:first_wave], wire)
    assert groups, "no commits ran together: this test did not test that"
    # Then the first wave's requests that carry an id, each sent twice more, as a client retrying a lost
    # answer would, at once with new commits.
    retried = [request for request in requests[:first_wave] if request.request_id]
    second = _all_at_once(requests[first_wave:] + retried + retried, wire)
    answers += second[:second_wave]
    retry_answers = second[second_wave:]

    assert sorted(a.version.index for a in answers) == list(range(commits))
    for i, answer in enumerate(answers):
        assert answer.created
        assert [(f.path, f.digest.hash) for f in answer.version.manifest] == [(f"step-{i}", contents[i].hash)]
        assert answer.version.metadata["step"] == i
        assert ("best" in answer.version.aliases) == (i % 4 == 0)
        assert "latest" in answer.version.aliases  # it was the latest when it committed
        assert answer.version.run == (f"acme/vision/run-{unique}-{i}" if i % 2 else "")
    by_id = {request.request_id: answer for request, answer in zip(requests, answers, strict=True)}
    for request, answer in zip(retried + retried, retry_answers, strict=True):
        assert (answer.version.uid, answer.created) == (by_id[request.request_id].version.uid, True)
    stored = {v.index: v for v in registry.list_versions(name)}
    assert sorted(stored) == list(range(commits))
    for answer in answers:
        assert stored[answer.version.index].uid == answer.version.uid
        assert stored[answer.version.index].metadata == {"step": answer.version.metadata["step"]}
        assert (stored[answer.version.index].run or "") == answer.version.run
    best = [a.version.index for r, a in zip(requests, answers, strict=True) if "best" in r.aliases]
    assert registry.resolve(f"{name}:best").version.index == max(best)
    # The log has every commit once, in index order, each alias move right after the commit that made it.
    expected = [("collection.created", f"acme/vision/{name}", None)]
    for index in range(commits):
        expected.append(("version.committed", f"acme/vision/{name}:v{index}", None))
        if index in best:
            expected.append(("alias.set", f"acme/vision/{name}:best", index))
    events = []
    for update in registry.watch(0, resource_prefix=f"acme/vision/{name}", timeout=30):
        if update.event is not None:
            after = update.event.after.get("index") if update.event.kind == "alias.set" else None
            events.append((update.event.kind, update.event.resource, after))
        if len(events) == len(expected):
            break
    assert events == expected


def test_concurrent_commits_under_a_retention_policy_each_delete_what_their_own_commit_pushed_out(
    registry, unique, wire
) -> None:
    # The policy runs after each commit, so these never run together: each answer still names what it deleted.
    name = f"one-call-retention-{unique}"
    contents = upload(wire, *[f"one call retention {i} {unique}".encode() for i in range(13)])
    wire.call(wire.metadata.CommitVersion, one_call(name, [pb.ManifestEntry(path="first", digest=contents[0])]))
    registry.set_retention(name, 2)
    answers = _all_at_once(
        [one_call(name, [pb.ManifestEntry(path=f"step-{i}", digest=c)]) for i, c in enumerate(contents[1:])], wire
    )

    assert sorted(a.version.index for a in answers) == list(range(1, 13))
    deleted = sorted(index for a in answers for index in a.retention_deleted_indexes)
    assert deleted == list(range(11))  # each pushed out once, by the commit that made it third from last
    for answer in answers:
        assert list(answer.retention_deleted_indexes) in ([], [answer.version.index - 2])
    assert [v.index for v in registry.list_versions(name)] == [12, 11]


@pytest.mark.parametrize("created", ["here", "through another replica"])
def test_concurrent_commits_of_pending_versions_run_together_each_with_its_own_answer(
    servers, registry, unique, wire, monkeypatch, created: str
) -> None:
    # CreateVersion, upload, then CommitVersion with the uid: how a push that must upload commits. These queue
    # by artifact too, whichever replica created the versions.
    versions = servers.metadata.catalog.versions
    queue = versions.pending_commits
    groups: list[int] = []
    counted = queue.on_together
    monkeypatch.setattr(queue, "on_together", lambda size: (groups.append(size), counted(size)))
    name = f"pending-race-{unique}"
    commits = 48
    contents = upload(wire, *[f"pending race {i} {unique}".encode() for i in range(commits)])
    pending = [
        wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model")).version.uid
        for _ in range(commits)
    ]
    if created != "here":
        monkeypatch.setattr(versions, "_created_in", WeightedLru(10))  # this replica never saw them created
    requests = [
        pb.CommitVersionRequest(
            uid=uid,
            manifest=[pb.ManifestEntry(path=f"step-{i}", digest=contents[i])],
            aliases=["best"] if i % 4 == 0 else [],
            run=f"run-{unique}-{i}" if i % 2 else "",
            request_id=uuid.uuid4().hex,
        )
        for i, uid in enumerate(pending)
    ]

    # Eight clients committing one version after another: after the first, each arrives while others run.
    with ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(lambda request: wire.call(wire.metadata.CommitVersion, request), requests))
    retried = _all_at_once(requests[:4], wire)

    assert groups, "no commits ran together: this test did not test that"
    assert sorted(a.version.index for a in answers) == list(range(commits))
    stored = {v.index: v for v in registry.list_versions(name)}
    for i, answer in enumerate(answers):
        assert (answer.created, answer.version.uid) == (True, pending[i])
        assert [(f.path, f.digest.hash) for f in answer.version.manifest] == [(f"step-{i}", contents[i].hash)]
        assert stored[answer.version.index].uid == pending[i]
        assert (stored[answer.version.index].run or "") == (f"acme/vision/run-{unique}-{i}" if i % 2 else "")
    assert [a.version.uid for a in retried] == pending[:4]
    best = [a.version.index for i, a in enumerate(answers) if i % 4 == 0]
    assert registry.resolve(f"{name}:best").version.index == max(best)


def test_a_pending_version_committed_several_times_at_once_is_committed_once(registry, unique, wire) -> None:
    # Commits queued together may name one version more than once: a client retrying under a new request id,
    # or a confused one sending another manifest. The version commits once, with one manifest.
    name = f"pending-twice-{unique}"
    contents = upload(wire, *[f"pending twice {i} {unique}".encode() for i in range(9)])
    pending = [
        wire.call(wire.metadata.CreateVersion, pb.CreateVersionRequest(parent=name, type="model")).version.uid
        for _ in range(8)
    ]
    requests = [
        pb.CommitVersionRequest(uid=uid, manifest=[pb.ManifestEntry(path=f"step-{i}", digest=contents[i])])
        for i, uid in enumerate(pending)
    ]
    other = pb.CommitVersionRequest(uid=pending[0], manifest=[pb.ManifestEntry(path="other", digest=contents[8])])
    sent = [requests[0], *requests[1:4], other, *requests[4:], requests[0], other]

    def commit(request: pb.CommitVersionRequest) -> pb.CommitVersionResponse | str:
        try:
            return wire.call(wire.metadata.CommitVersion, request)
        except MregError as e:
            return e.reason

    with ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(commit, sent))

    refused = [a for a in answers if isinstance(a, str)]
    assert refused and set(refused) == {"VERSION_ALREADY_COMMITTED"}  # the manifest that lost
    committed = [a for a in answers if not isinstance(a, str)]
    assert {a.version.uid for a in committed} == set(pending)
    assert len({a.version.index for a in committed if a.version.uid == pending[0]}) == 1
    stored = registry.list_versions(name)
    assert sorted(v.index for v in stored) == list(range(8))
    for version in stored:
        assert len(registry.get_version(version.name).manifest) == 1
