"""Authentication in use: protected aliases, the audit trail, revocation, expiry, bootstrap, scoped Watch."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import create_engine, text

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.blob_service.config import BlobConfig
from mreg.client import MregError
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata.v1 import token_service_pb2 as token_pb
from mreg.metadata.v1 import token_service_pb2_grpc as token_grpc
from mreg.metadata_service.config import MetadataConfig
from tests.helpers import make_checkpoint


def _push(secured: Any, token: str, name: str, tmp_path: Path, **options: Any) -> Any:
    with secured.registry(token) as registry:
        return registry.push(make_checkpoint(tmp_path / name, 2000, seed=hash(name) % 1000), name, **options)


def test_only_a_maintainer_moves_removes_or_unprotects_a_protected_alias(secured: Any, tmp_path: Path) -> None:
    writer = secured.create_token("alias-writer", "writer", "acme/secure")
    maintainer = secured.create_token("alias-maintainer", "maintainer", "acme/secure")
    _push(secured, writer, "guarded", tmp_path)
    _push(secured, writer, "guarded", tmp_path / "second", aliases=["candidate"])
    with secured.registry(maintainer) as registry:
        registry.set_alias("guarded:v0", "production")
        registry.set_alias_protection("guarded", "production")

    with secured.registry(writer) as registry:
        refusals = {
            "move": lambda: registry.set_alias("guarded:v1", "production"),
            "remove": lambda: registry.delete_alias("guarded", "production"),
            "unprotect": lambda: registry.set_alias_protection("guarded", "production", protected=False),
            "push with the alias": lambda: _push(
                secured, writer, "guarded", tmp_path / "third", aliases=["production"]
            ),
        }
        for what, attempt in refusals.items():
            with pytest.raises(MregError) as refused:
                attempt()
            assert refused.value.code == "PERMISSION_DENIED", what
            assert refused.value.reason in ("ALIAS_PROTECTED", "PERMISSION_DENIED"), what
        assert registry.resolve("guarded:production").version.index == 0
        # Unprotected aliases stay the writer's to move.
        registry.set_alias("guarded:v0", "candidate")

    with secured.registry(maintainer) as registry:
        moved = registry.set_alias("guarded:v1", "production")
        assert moved.index == 1
        history = list(registry.alias_history("guarded", "production"))
    actors = [event.actor for event in history]
    assert actors[0].startswith("alias-maintainer-")
    assert all(actor.startswith("alias-maintainer-") for actor in actors)


def test_a_protected_alias_of_a_registered_model_goes_with_a_link_or_version_only_by_a_maintainer(
    secured: Any, tmp_path: Path
) -> None:
    """Deleting a link, or a linked version with force, removes the model's aliases that name the link: a
    protected one only by a maintainer, and whoever deletes is told which aliases went."""
    writer = secured.create_token("link-writer", "writer", "acme/secure")
    maintainer = secured.create_token("link-maintainer", "maintainer", "acme/secure")
    for i in range(2):
        _push(secured, writer, "promoted", tmp_path / f"ck{i}")
    with secured.registry(maintainer) as registry:
        for i in range(2):
            registry.link(f"promoted:v{i}", "Classifier", aliases=["production", "candidate"][i : i + 1], create=True)
        registry.set_alias_protection("Classifier", "production")
        registry.set_alias_protection("Classifier", "candidate")

    with secured.registry(writer) as registry:
        for attempt in (
            lambda: registry.delete_link("Classifier:production"),
            lambda: registry.delete_link("Classifier:v0"),
            lambda: registry.delete_version("promoted:v1", force=True),
        ):
            with pytest.raises(MregError) as refused:
                attempt()
            # Deletions are a maintainer's already; the protected aliases they would take stay either way.
            assert refused.value.code == "PERMISSION_DENIED", refused.value
        assert registry.resolve("Classifier:production").version.name == "acme/secure/promoted:v0"
        assert registry.resolve("Classifier:candidate").version.name == "acme/secure/promoted:v1"

    with secured.registry(maintainer) as registry:
        deleted = registry.delete_link("Classifier:production")
        assert deleted.name == "acme/secure/Classifier:v0" and deleted.removed_aliases == ("production",)
        gone = registry.delete_version("promoted:v1", force=True)
        assert gone.removed_links == ("acme/secure/Classifier:v1",)
        assert gone.removed_link_aliases == ("acme/secure/Classifier:candidate",)


def test_the_audit_trail_names_the_token_not_the_declared_actor(secured: Any, tmp_path: Path) -> None:
    writer = secured.create_token("auditor", "writer", "acme/secure")
    channel = secured.channel(secured.metadata.address, writer)
    with secured.registry(writer) as registry:
        registry.push(make_checkpoint(tmp_path / "ck", 1000, seed=7), "audited")
    stub = pb_grpc.MetadataServiceStub(channel)
    stub.SetAlias(
        pb.SetAliasRequest(name="acme/secure/audited:v0", alias="blessed"),
        metadata=(("mreg-actor", "somebody-else"),),
    )
    with secured.registry(writer) as registry:
        events = list(registry.alias_history("acme/secure/audited", "blessed"))
    channel.close()
    assert events[0].actor.startswith("auditor-")
    assert "somebody-else" not in events[0].actor


def _refused_within(seconds: float, call: Any) -> grpc.RpcError:
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return error
            raise
        assert time.monotonic() < deadline, "the token still works"
        time.sleep(0.2)


def test_a_revoked_token_is_refused_by_both_services_once_the_cache_expires(secured: Any) -> None:
    token = secured.create_token("revoked", "reader", "acme/secure")
    metadata = secured.channel(secured.metadata.address, token)
    blobs = secured.channel(secured.blob.address, token)
    artifacts = pb_grpc.MetadataServiceStub(metadata)
    capabilities = blob_grpc.BlobServiceStub(blobs)
    artifacts.ListArtifacts(pb.ListArtifactsRequest(parent="acme/secure"))
    capabilities.GetCapabilities(blob_pb.GetCapabilitiesRequest())

    revoked = token_grpc.TokenServiceStub(metadata).GetCaller(token_pb.GetCallerRequest()).token.name
    assert revoked.startswith("revoked-")
    with secured.channel(secured.metadata.address, secured.admin_token) as admin:
        token_grpc.TokenServiceStub(admin).RevokeToken(token_pb.RevokeTokenRequest(name=revoked))

    # The fixture caches token lookups for 1 s (the default is 30 s on each service).
    for call in (
        lambda: artifacts.ListArtifacts(pb.ListArtifactsRequest(parent="acme/secure")),
        lambda: capabilities.GetCapabilities(blob_pb.GetCapabilitiesRequest()),
    ):
        error = _refused_within(10, call)
        assert "TOKEN_REVOKED" in str(error.trailing_metadata()) or "revoked" in error.details()
        assert token not in error.details()
    metadata.close()
    blobs.close()


def test_revocation_reaches_both_services_within_60_seconds_by_default() -> None:
    # The blob service asks the metadata service, which answers from the table (not its cache),
    # so a revocation takes at most one cache period on either service.
    assert MetadataConfig.auth_cache_seconds <= 30
    assert BlobConfig.auth_cache_seconds <= 30


def test_an_expired_token_is_refused(secured: Any) -> None:
    with secured.channel(secured.metadata.address, secured.admin_token) as admin:
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
        created = token_grpc.TokenServiceStub(admin).CreateToken(
            token_pb.CreateTokenRequest(
                name=f"brief-{time.time_ns()}", role=token_pb.ROLE_READER, scope="acme", expire_time=soon
            )
        )
    with secured.channel(secured.metadata.address, created.secret) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        error = _refused_within(10, lambda: stub.ListArtifacts(pb.ListArtifactsRequest(parent="acme/secure")))
        assert "expired" in error.details()


def test_tokens_are_stored_only_as_hashes(secured: Any) -> None:
    secret = secured.create_token("hashed", "reader", "acme")
    engine = create_engine(secured.metadata.engine.url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, secret_hash FROM tokens")).all()
    engine.dispose()
    assert rows
    assert all(secret not in f"{name} {digest}" for name, digest in rows)


def test_the_first_start_writes_owner_only_token_files_once(secured: Any) -> None:
    for name in ("admin.token", "service.token"):
        mode = stat.S_IMODE((secured.root / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    assert secured.admin_token.startswith("mreg_")


def test_watch_streams_only_the_events_a_reader_may_read(secured: Any, tmp_path: Path) -> None:
    writer = secured.create_token("watched-writer", "writer", "acme")
    reader = secured.create_token("watch-reader", "reader", "acme/secure")
    with secured.registry(writer) as registry:
        start = next(iter(registry.watch(0, from_now=True, timeout=30))).sequence
        registry.push(make_checkpoint(tmp_path / "hidden", 1000, seed=11), "acme/hidden/secret-model")
        registry.push(make_checkpoint(tmp_path / "shown", 1000, seed=12), "acme/secure/visible-model")
    seen = []
    with secured.registry(reader) as registry:
        for message in registry.watch(start, timeout=30):
            if message.event is not None:
                seen.append(message.event.resource)
                if message.event.resource.startswith("acme/secure/visible-model:v0"):
                    break
    assert any(resource.startswith("acme/secure/visible-model") for resource in seen)
    assert not [resource for resource in seen if resource.startswith("acme/hidden/")]
