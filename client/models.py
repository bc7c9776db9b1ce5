"""What the Python client returns: plain, immutable Python objects built from the wire messages.

Metadata is a ``dict``, times are timezone-aware ``datetime`` objects (UTC) or ``None`` when
unset, repeated fields are tuples. Field names follow the protos (``create_time``,
``size_bytes``), so what the API reference says of a field holds here too. ``to_dict()``
gives the JSON form the CLI prints with ``--json``; it is part of the CLI's contract.

Services in other languages read the same data from the protos in ``protos/mreg``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import token_service_pb2 as token_pb

_VERSION_STATES = {
    pb.VERSION_STATE_PENDING: "pending",
    pb.VERSION_STATE_COMMITTED: "committed",
    pb.VERSION_STATE_DELETED: "deleted",
}


def _time(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def json_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, as protobuf's JSON mapping writes a Timestamp (e.g. 2026-11-27T15:30:13.120Z)."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp.ToJsonString()


# JSON numbers travel as doubles (google.protobuf.Struct), which hold every integer exactly up to 2**53.
EXACT_INTEGER_LIMIT = 1 << 53


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict, whole numbers as ints: the wire carries 5 as 5.0, and metadata={"step": 5} must
    read back as 5, not 5.0 (JSON has one number type, so nothing distinguishes them)."""
    converted: dict[str, Any] = _whole_numbers_as_ints(json_format.MessageToDict(message))
    return converted


def _whole_numbers_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_INTEGER_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    return value


def _struct_or_none(message: Any, name: str) -> dict[str, Any] | None:
    return struct_to_dict(getattr(message, name)) if message.HasField(name) else None


def _alias_indexes(aliases: Any) -> dict[str, int]:
    return {alias.alias: alias.index for alias in aliases}


def role_name(role: int) -> str:
    """ "reader" for ROLE_READER; "unspecified" for an unknown value."""
    return token_pb.Role.Name(role).removeprefix("ROLE_").lower() if role in token_pb.Role.values() else "unspecified"


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a version: its path in the version's directory and its content's digest."""

    path: str
    sha256: str
    size_bytes: int
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_proto(cls, message: pb.ManifestEntry) -> ManifestEntry:
        return cls(
            path=message.path,
            sha256=message.digest.hash,
            size_bytes=message.digest.size_bytes,
            metadata=struct_to_dict(message.metadata),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.sha256, "size": self.size_bytes}


@dataclass(frozen=True)
class Version:
    """An immutable directory of files plus editable description, tags and metadata."""

    name: str  # "entity/project/artifact:vN" once committed
    uid: str
    artifact: str
    type: str
    index: int | None  # None while pending
    state: str  # "pending", "committed" or "deleted"
    digest: str  # the manifest digest: equal digests, equal content
    size_bytes: int
    file_count: int
    aliases: tuple[str, ...]
    description: str  # Markdown
    tags: tuple[str, ...]
    metadata: Mapping[str, Any] = field(hash=False)
    create_time: datetime | None
    commit_time: datetime | None
    run: str | None  # the run that produced it
    manifest: tuple[ManifestEntry, ...]
    # True when a response left the manifest out for its size (Registry.get_version of a large version).
    manifest_omitted: bool = False

    @classmethod
    def from_proto(cls, message: pb.Version) -> Version:
        return cls(
            name=message.name,
            uid=message.uid,
            artifact=message.artifact,
            type=message.type,
            index=message.index if message.HasField("index") else None,
            state=_VERSION_STATES.get(message.state, "unspecified"),
            digest=message.digest,
            size_bytes=message.size_bytes,
            file_count=message.file_count,
            aliases=tuple(message.aliases),
            description=message.description,
            tags=tuple(message.tags),
            metadata=struct_to_dict(message.metadata),
            create_time=_time(message, "create_time"),
            commit_time=_time(message, "commit_time"),
            run=message.run or None,
            manifest=tuple(ManifestEntry.from_proto(entry) for entry in message.manifest),
            manifest_omitted=message.manifest_omitted,
        )

    def to_dict(self, *, with_manifest: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ref": self.name,
            "artifact": self.artifact,
            "type": self.type,
            "version": self.index,
            "state": self.state,
            "digest": self.digest,
            "aliases": list(self.aliases),
            "files": self.file_count,
            "size": self.size_bytes,
            "description": self.description,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "run": self.run,
            "created": json_time(self.create_time),
            "committed": json_time(self.commit_time),
        }
        if with_manifest:
            data["manifest"] = [entry.to_dict() for entry in self.manifest]
        return data


@dataclass(frozen=True)
class Artifact:
    """A sequence of versions v0, v1, ... and the aliases naming them."""

    name: str
    type: str
    description: str
    version_count: int
    aliases: Mapping[str, int] = field(hash=False)  # alias -> version index
    protected_aliases: tuple[str, ...]
    tags: tuple[str, ...]
    create_time: datetime | None
    retention_keep_last: int | None  # None: every version is kept

    @classmethod
    def from_proto(cls, message: pb.Artifact) -> Artifact:
        return cls(
            name=message.name,
            type=message.type,
            description=message.description,
            version_count=message.version_count,
            aliases=_alias_indexes(message.aliases),
            protected_aliases=tuple(message.protected_aliases),
            tags=tuple(message.tags),
            create_time=_time(message, "create_time"),
            retention_keep_last=message.retention_keep_last if message.HasField("retention_keep_last") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "artifact",
            "type": self.type,
            "description": self.description,
            "tags": list(self.tags),
            "versions": self.version_count,
            "aliases": dict(self.aliases),
            "protected_aliases": list(self.protected_aliases),
            "retention_keep_last": self.retention_keep_last,
            "created": json_time(self.create_time),
        }


@dataclass(frozen=True)
class RegisteredModel:
    """A curated set of links to versions of any artifacts, with its own aliases and a model card."""

    name: str
    type: str
    description: str  # the model card, Markdown
    link_count: int
    aliases: Mapping[str, int] = field(hash=False)  # alias -> link index
    protected_aliases: tuple[str, ...]
    tags: tuple[str, ...]
    create_time: datetime | None

    @classmethod
    def from_proto(cls, message: pb.RegisteredModel) -> RegisteredModel:
        return cls(
            name=message.name,
            type=message.type,
            description=message.description,
            link_count=message.link_count,
            aliases=_alias_indexes(message.aliases),
            protected_aliases=tuple(message.protected_aliases),
            tags=tuple(message.tags),
            create_time=_time(message, "create_time"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "registered_model",
            "type": self.type,
            "description": self.description,
            "tags": list(self.tags),
            "links": self.link_count,
            "aliases": dict(self.aliases),
            "protected_aliases": list(self.protected_aliases),
            "created": json_time(self.create_time),
        }


@dataclass(frozen=True)
class Link:
    """A registered model's link vN to one version of an artifact."""

    name: str  # "entity/project/model:vN"
    registered_model: str
    index: int
    aliases: tuple[str, ...]
    version: Version
    create_time: datetime | None

    @classmethod
    def from_proto(cls, message: pb.Link) -> Link:
        return cls(
            name=message.name,
            registered_model=message.registered_model,
            index=message.index,
            aliases=tuple(message.aliases),
            version=Version.from_proto(message.version),
            create_time=_time(message, "create_time"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.name,
            "registered_model": self.registered_model,
            "link_version": self.index,
            "aliases": list(self.aliases),
            "source_ref": self.version.name,
            "digest": self.version.digest,
            "created": json_time(self.create_time),
        }


@dataclass(frozen=True)
class Project:
    """An entity's project that holds something the caller may read."""

    name: str  # "entity/project"
    create_time: datetime | None

    @classmethod
    def from_proto(cls, message: pb.Project) -> Project:
        return cls(name=message.name, create_time=_time(message, "create_time"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "project", "created": json_time(self.create_time)}


@dataclass(frozen=True)
class Event:
    """One change in the registry's event feed (the audit trail): what, to which resource, by whom, when."""

    sequence: int
    kind: str  # e.g. "version.committed", "alias.moved"
    resource: str
    before: Mapping[str, Any] | None = field(hash=False)
    after: Mapping[str, Any] | None = field(hash=False)
    actor: str
    create_time: datetime | None

    @classmethod
    def from_proto(cls, message: pb.Event) -> Event:
        return cls(
            sequence=message.sequence,
            kind=message.kind,
            resource=message.resource,
            before=_struct_or_none(message, "before"),
            after=_struct_or_none(message, "after"),
            actor=message.actor,
            create_time=_time(message, "create_time"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "kind": self.kind,
            "resource": self.resource,
            "before": dict(self.before) if self.before is not None else None,
            "after": dict(self.after) if self.after is not None else None,
            "actor": self.actor,
            "time": json_time(self.create_time),
        }


@dataclass(frozen=True)
class WatchUpdate:
    """One message of ``Registry.watch``: an event, or a heartbeat (``event`` None) carrying the cursor."""

    sequence: int  # resume after this with watch(start_after=sequence)
    event: Event | None

    @classmethod
    def from_proto(cls, message: pb.WatchResponse) -> WatchUpdate:
        event = Event.from_proto(message.event) if message.HasField("event") else None
        return cls(sequence=message.sequence, event=event)


@dataclass(frozen=True)
class Resolution:
    """What a reference names: a version, and for a registered-model reference the link to it."""

    version: Version
    link: Link | None

    @classmethod
    def from_proto(cls, message: pb.ResolveReferenceResponse) -> Resolution:
        link = Link.from_proto(message.link) if message.HasField("link") else None
        return cls(version=Version.from_proto(message.version), link=link)


@dataclass(frozen=True)
class LinkResult:
    """The link CreateLink made, or found: linking a version twice returns the first link."""

    link: Link
    created: bool  # False: the version was already linked, and that link is returned


@dataclass(frozen=True)
class AliasMove:
    """Where an alias points after SetAlias, and where it pointed before (None: it was unset)."""

    collection: str
    alias: str
    index: int
    previous_index: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "alias": self.alias,
            "version": self.index,
            "previous_version": self.previous_index,
        }


@dataclass(frozen=True)
class DeletedVersion:
    """A version DeleteVersion removed, and the aliases and links ``force`` removed with it."""

    version: Version
    removed_aliases: tuple[str, ...]
    removed_links: tuple[str, ...]
    # The registered models' aliases that named the removed links, as "registered model:alias".
    removed_link_aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeletedLink:
    """A link DeleteLink removed (its name, "registered model:vN") and the model's aliases that named it."""

    name: str
    removed_aliases: tuple[str, ...]


@dataclass(frozen=True)
class RetentionChange:
    """An artifact after SetRetentionPolicy and the versions it deleted (or, validating only, would delete)."""

    artifact: Artifact
    deleted_indexes: tuple[int, ...]


@dataclass(frozen=True)
class GarbageReport:
    """What a garbage collection examined, kept and deleted (or, dry, would delete)."""

    examined_blobs: int
    referenced_blobs: int
    deleted_blobs: int
    deleted_bytes: int
    removed_upload_parts: int

    @classmethod
    def from_proto(cls, message: pb.CollectGarbageResponse) -> GarbageReport:
        return cls(
            examined_blobs=message.examined_blobs,
            referenced_blobs=message.referenced_blobs,
            deleted_blobs=message.deleted_blobs,
            deleted_bytes=message.deleted_bytes,
            removed_upload_parts=message.removed_upload_parts,
        )


@dataclass(frozen=True)
class Lineage:
    """For a version: the run that produced it, those that used it and the registered-model links to it.
    For a run: its inputs and outputs."""

    producer_run: str | None
    consumer_runs: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    links: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, message: pb.GetLineageResponse) -> Lineage:
        return cls(
            producer_run=message.producer_run or None,
            consumer_runs=tuple(message.consumer_runs),
            inputs=tuple(message.inputs),
            outputs=tuple(message.outputs),
            links=tuple(message.links),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "producer_run": self.producer_run,
            "consumer_runs": list(self.consumer_runs),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "links": list(self.links),
        }


@dataclass(frozen=True)
class Token:
    """An API token, without its secret (which only CreateToken returns, once)."""

    name: str
    role: str  # "reader", "writer", "maintainer" or "admin"
    scope: str  # "entity", "entity/project" or "*"
    creator: str
    create_time: datetime | None
    expire_time: datetime | None  # None: never expires
    revoke_time: datetime | None  # None: not revoked

    @classmethod
    def from_proto(cls, message: token_pb.Token) -> Token:
        return cls(
            name=message.name,
            role=role_name(message.role),
            scope=message.scope,
            creator=message.creator,
            create_time=_time(message, "create_time"),
            expire_time=_time(message, "expire_time"),
            revoke_time=_time(message, "revoke_time"),
        )

    @property
    def status(self) -> str:
        """ "active", "expired" or "revoked", as of now."""
        if self.revoke_time is not None:
            return "revoked"
        if self.expire_time is not None and self.expire_time <= datetime.now(UTC):
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "scope": self.scope,
            "status": self.status,
            "created": json_time(self.create_time),
            "expires": json_time(self.expire_time),
            "revoked": json_time(self.revoke_time),
            "creator": self.creator,
        }


@dataclass(frozen=True)
class Caller:
    """Who the services take the caller to be (GetCaller)."""

    token: Token
    authentication_enabled: bool

    @classmethod
    def from_proto(cls, message: token_pb.GetCallerResponse) -> Caller:
        return cls(token=Token.from_proto(message.token), authentication_enabled=message.authentication_enabled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.token.name,
            "role": self.token.role,
            "scope": self.token.scope,
            "expires": json_time(self.token.expire_time),
            "authentication_enabled": self.authentication_enabled,
        }


@dataclass(frozen=True)
class NewToken:
    """A token just created and its secret, shown only this once (never in repr)."""

    token: Token
    secret: str = field(repr=False)

    def __iter__(self) -> Any:  # token, secret = registry.create_token(...)
        return iter((self.token, self.secret))
