"""gRPC servicer for mreg.metadata.v1.MetadataService: translates protos to the domain and back."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata_service import limits
from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.catalog.common import Caller
from mreg.metadata_service.catalog.garbage import DEFAULT_GC_GRACE
from mreg.metadata_service.catalog.versions import LinkRequest
from mreg.metadata_service.domain import (
    CollectionKind,
    CollectionView,
    EventView,
    LinkView,
    Page,
    Resolution,
    VersionState,
    VersionView,
)
from mreg.metadata_service.errors import InvalidArgument, Reason, RegistryError
from mreg.metadata_service.lru import WeightedLru
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.references import Defaults
from mreg.server_runtime.edge import Undecodable, add_servicer_to_server
from mreg.server_runtime.error_mapping import abort_on_domain_error
from mreg.server_runtime.principals import Principal, Role, current_principal

R = TypeVar("R", bound=Message)

ENTITY_HEADER = "mreg-entity"
PROJECT_HEADER = "mreg-project"
ACTOR_HEADER = "mreg-actor"

_STATES = {
    VersionState.PENDING: pb.VERSION_STATE_PENDING,
    VersionState.COMMITTED: pb.VERSION_STATE_COMMITTED,
    VersionState.DELETED: pb.VERSION_STATE_DELETED,
}


def _check(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.describe(), Reason.REQUEST_MALFORMED)
    limits.check_request(request)
    return request


# Checks each request against the edge bounds and maps domain errors to their gRPC status, in one place.
handles_domain_errors = abort_on_domain_error(RegistryError, _check)


def add_to_server(servicer: MetadataServicer, server: grpc.Server) -> None:
    """Registers the servicer with deserializers that let it answer unparsable requests itself."""
    add_servicer_to_server(servicer, server, pb, "MetadataService")


def caller_of(context: grpc.ServicerContext) -> Caller:
    """The caller: their defaults, and the actor events record.

    With authentication on, the actor is the authenticated principal (the token's name),
    never what the mreg-actor header claims; without it, the header is all there is.
    """
    headers = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
    defaults = Defaults(entity=headers.get(ENTITY_HEADER) or None, project=headers.get(PROJECT_HEADER) or None)
    principal = current_principal()
    actor = principal.name if principal.authenticated else headers.get(ACTOR_HEADER, "")[:256]
    return Caller(defaults, actor=actor, principal=principal)


def _may_read(principal: Principal, resource: str) -> bool:
    """True if the principal may read what an event's resource ("entity/project/...") names."""
    entity, _, rest = resource.partition("/")
    project = rest.partition("/")[0]
    return principal.allows(Role.READER, entity, project or None)


def timestamp_pb(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def manifest_entry_pb(entry: FileEntry) -> pb.ManifestEntry:
    return pb.ManifestEntry(
        path=entry.path,
        digest=blob_pb.Digest(hash=entry.digest, size_bytes=entry.size_bytes),
        metadata=_struct(entry.metadata),
    )


def _within_budget(response: R, version: pb.Version) -> R:
    """Leaves ``version``'s manifest out of ``response`` when the whole would not fit a default client.

    The client then pages through it with ListVersionFiles.
    """
    if response.ByteSize() > limits.MAX_RESPONSE_BYTES:
        version.ClearField("manifest")
        version.manifest_omitted = True
    return response


def version_pb(view: VersionView) -> pb.Version:
    return pb.Version(
        name=view.name,
        uid=view.uid,
        artifact=view.artifact,
        type=view.type,
        index=view.index,
        state=_STATES[view.state],
        digest=view.digest,
        size_bytes=view.size_bytes,
        file_count=view.file_count,
        aliases=view.aliases,
        description=view.description,
        tags=view.tags,
        metadata=_struct(view.metadata),
        create_time=timestamp_pb(view.created_at),
        commit_time=timestamp_pb(view.committed_at),
        manifest=[manifest_entry_pb(e) for e in view.manifest],
        run=view.run,
    )


def link_pb(view: LinkView) -> pb.Link:
    return pb.Link(
        name=view.name,
        registered_model=view.registered_model,
        index=view.index,
        aliases=view.aliases,
        version=version_pb(view.version),
        create_time=timestamp_pb(view.created_at),
    )


def _aliases_pb(view: CollectionView) -> list[pb.Alias]:
    return [pb.Alias(alias=name, index=index) for name, index in view.aliases]


def artifact_pb(view: CollectionView) -> pb.Artifact:
    return pb.Artifact(
        name=view.name,
        type=view.type,
        description=view.description,
        version_count=view.member_count,
        aliases=_aliases_pb(view),
        create_time=timestamp_pb(view.created_at),
        tags=view.tags,
        protected_aliases=view.protected_aliases,
        retention_keep_last=view.retention_keep_last,
    )


def registered_model_pb(view: CollectionView) -> pb.RegisteredModel:
    return pb.RegisteredModel(
        name=view.name,
        type=view.type,
        description=view.description,
        link_count=view.member_count,
        aliases=_aliases_pb(view),
        create_time=timestamp_pb(view.created_at),
        tags=view.tags,
        protected_aliases=view.protected_aliases,
    )


def event_pb(view: EventView) -> pb.Event:
    return pb.Event(
        sequence=view.sequence,
        kind=view.kind,
        resource=view.resource,
        before=_struct(view.before),
        after=_struct(view.after),
        actor=view.actor,
        create_time=timestamp_pb(view.created_at),
    )


def _fit(page: Page[Any], convert: Callable[[Any], Any]) -> tuple[list[Any], str]:
    """Converts a page's items, ending the page early where the response would pass the budget.

    Every item alone fits (the edge bounds see to that), so a page always makes progress.
    """
    messages: list[Any] = []
    total = 0
    for position, item in enumerate(page.items):
        message = convert(item)
        # Each repeated item costs its size plus a tag and a length prefix (at most 6 bytes).
        total += message.ByteSize() + 6
        if messages and total > limits.MAX_RESPONSE_BYTES and page.item_tokens:
            return messages, page.item_tokens[position - 1]
        messages.append(message)
    return messages, page.next_page_token


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _file_entry(entry: pb.ManifestEntry) -> FileEntry:
    return FileEntry(
        path=entry.path,
        digest=entry.digest.hash,
        size_bytes=entry.digest.size_bytes,
        metadata=_dict(entry.metadata) if entry.HasField("metadata") else None,
    )


# Responses carrying an event, kept by sequence: every Watch stream sends the same event, and
# building its message once rather than once per stream is what keeps hundreds of streams cheap.
_SHARED_EVENT_RESPONSES = 4096


class ResolvedResponses:
    """Responses by the resolve answer they were built from (ResolveReference's and GetVersion's), least
    recently used first out.

    While nothing it shows changes, a resolve returns the very answer object it returned before
    (catalog.resolution), so its response need not be built again: for a 10 000-file manifest that
    is 60 ms of protobuf building per call. Bounded by the manifest entries held, as the manifest
    cache is; each answer is held with its response, so its id cannot name another meanwhile.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._responses: WeightedLru[tuple[int, type[Message]], tuple[Resolution, Message]] = WeightedLru(
            max_entries, lambda kept: 1 + len(kept[0].version.manifest)
        )

    def get(self, resolution: Resolution, kind: type[R]) -> R | None:
        kept = self._responses.get((id(resolution), kind))
        if kept is None or kept[0] is not resolution:
            return None
        response = kept[1]
        assert isinstance(response, kind)
        return response

    def put(self, resolution: Resolution, response: Message) -> None:
        self._responses.put((id(resolution), type(response)), (resolution, response))


class MetadataServicer(pb_grpc.MetadataServiceServicer):
    def __init__(self, catalog: MetadataCatalog) -> None:
        self.catalog = catalog
        self._event_responses: OrderedDict[int, pb.WatchResponse] = OrderedDict()
        self._event_responses_lock = threading.Lock()
        self._resolved = ResolvedResponses()

    def _event_response(self, event: EventView) -> pb.WatchResponse:
        with self._event_responses_lock:
            response = self._event_responses.get(event.sequence)
            if response is None:
                response = pb.WatchResponse(event=event_pb(event), sequence=event.sequence)
                self._event_responses[event.sequence] = response
                if len(self._event_responses) > _SHARED_EVENT_RESPONSES:
                    self._event_responses.popitem(last=False)
            return response

    @handles_domain_errors
    def CreateVersion(
        self, request: pb.CreateVersionRequest, context: grpc.ServicerContext
    ) -> pb.CreateVersionResponse:
        view = self.catalog.versions.create(
            caller_of(context),
            request.parent,
            request.type,
            description=request.description,
            tags=list(request.tags),
            metadata=_dict(request.metadata),
            request_id=request.request_id,
        )
        return pb.CreateVersionResponse(version=version_pb(view))

    @handles_domain_errors
    def CommitVersion(
        self, request: pb.CommitVersionRequest, context: grpc.ServicerContext
    ) -> pb.CommitVersionResponse:
        commit_arguments: dict[str, Any] = {
            "aliases": list(request.aliases),
            "links": [LinkRequest(t.registered_model, tuple(t.aliases)) for t in request.links],
            "run": request.run,
            "request_id": request.request_id,
        }
        entries = [_file_entry(e) for e in request.manifest]
        if request.HasField("new_version") == bool(request.uid):
            raise InvalidArgument(
                "set exactly one of uid (a pending version to commit) and new_version (a version to create "
                "and commit in this call)",
                Reason.FIELD_INVALID,
                {"field": "uid"},
            )
        if request.HasField("new_version"):
            new = request.new_version
            result = self.catalog.versions.create_and_commit(
                caller_of(context),
                new.parent,
                new.type,
                entries,
                description=new.description,
                tags=list(new.tags),
                metadata=_dict(new.metadata),
                **commit_arguments,
            )
        else:
            result = self.catalog.versions.commit(caller_of(context), request.uid, entries, **commit_arguments)
        response = pb.CommitVersionResponse(
            version=version_pb(result.version),
            created=result.created,
            links=[link_pb(v) for v in result.links],
            retention_deleted_indexes=result.retention_deleted,
        )
        return _within_budget(response, response.version)

    @handles_domain_errors
    def UpdateVersion(
        self, request: pb.UpdateVersionRequest, context: grpc.ServicerContext
    ) -> pb.UpdateVersionResponse:
        if request.metadata_mode not in pb.MetadataUpdateMode.values():
            raise InvalidArgument(
                f"metadata_mode {request.metadata_mode} is not a MetadataUpdateMode (MERGE or REPLACE)",
                Reason.FIELD_INVALID,
                {"field": "metadata_mode"},
            )
        view = self.catalog.edits.update_version(
            caller_of(context),
            request.name,
            description=_optional(request, "description"),
            add_tags=list(request.add_tags),
            remove_tags=list(request.remove_tags),
            metadata=_dict(request.metadata) if request.HasField("metadata") else None,
            replace_metadata=request.metadata_mode == pb.METADATA_UPDATE_MODE_REPLACE,
            request_id=request.request_id,
        )
        return pb.UpdateVersionResponse(version=version_pb(view))

    @handles_domain_errors
    def GetVersion(self, request: pb.GetVersionRequest, context: grpc.ServicerContext) -> pb.GetVersionResponse:
        resolution = self.catalog.versions.resolve(caller_of(context), request.name)
        response = self._resolved.get(resolution, pb.GetVersionResponse)
        if response is None:
            response = pb.GetVersionResponse(version=version_pb(resolution.version))
            response = _within_budget(response, response.version)
            self._resolved.put(resolution, response)
        return response

    @handles_domain_errors
    def ResolveReference(
        self, request: pb.ResolveReferenceRequest, context: grpc.ServicerContext
    ) -> pb.ResolveReferenceResponse:
        resolution = self.catalog.versions.resolve(caller_of(context), request.name)
        response = self._resolved.get(resolution, pb.ResolveReferenceResponse)
        if response is None:
            link = link_pb(resolution.link) if resolution.link else None
            if link is not None:
                # The manifest travels once, in ``version``: a large one twice could pass a client's limit.
                link.version.ClearField("manifest")
            response = pb.ResolveReferenceResponse(version=version_pb(resolution.version), link=link)
            response = _within_budget(response, response.version)
            self._resolved.put(resolution, response)
        return response

    @handles_domain_errors
    def ListVersionFiles(
        self, request: pb.ListVersionFilesRequest, context: grpc.ServicerContext
    ) -> pb.ListVersionFilesResponse:
        version, page = self.catalog.versions.files(
            caller_of(context), request.name, request.page_size, request.page_token
        )
        files, token = _fit(page, manifest_entry_pb)
        return pb.ListVersionFilesResponse(name=version, files=files, next_page_token=token)

    @handles_domain_errors
    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        page = self.catalog.versions.search(
            caller_of(context), request.parent, request.page_size, request.page_token, request.filter, request.order_by
        )
        versions, token = _fit(page, version_pb)
        return pb.ListVersionsResponse(versions=versions, next_page_token=token)

    @handles_domain_errors
    def DeleteVersion(
        self, request: pb.DeleteVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteVersionResponse:
        deleted = self.catalog.versions.delete(caller_of(context), request.name, request.force, request.request_id)
        return pb.DeleteVersionResponse(
            version=version_pb(deleted.version),
            removed_aliases=deleted.removed_aliases,
            removed_links=deleted.removed_links,
            removed_link_aliases=deleted.removed_link_aliases,
        )

    @handles_domain_errors
    def GetArtifact(self, request: pb.GetArtifactRequest, context: grpc.ServicerContext) -> pb.GetArtifactResponse:
        view = self.catalog.collections.get(caller_of(context), request.name, CollectionKind.ARTIFACT)
        return pb.GetArtifactResponse(artifact=artifact_pb(view))

    @handles_domain_errors
    def ListProjects(self, request: pb.ListProjectsRequest, context: grpc.ServicerContext) -> pb.ListProjectsResponse:
        page = self.catalog.collections.projects(
            caller_of(context), request.parent, request.page_size, request.page_token
        )
        projects, token = _fit(page, lambda p: pb.Project(name=p.name, create_time=timestamp_pb(p.create_time)))
        return pb.ListProjectsResponse(projects=projects, next_page_token=token)

    @handles_domain_errors
    def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.ServicerContext
    ) -> pb.ListArtifactsResponse:
        page = self.catalog.collections.search(
            caller_of(context),
            request.parent,
            CollectionKind.ARTIFACT,
            request.page_size,
            request.page_token,
            request.filter,
        )
        artifacts, token = _fit(page, artifact_pb)
        return pb.ListArtifactsResponse(artifacts=artifacts, next_page_token=token)

    @handles_domain_errors
    def CreateRegisteredModel(
        self, request: pb.CreateRegisteredModelRequest, context: grpc.ServicerContext
    ) -> pb.CreateRegisteredModelResponse:
        view = self.catalog.collections.create_registered_model(
            caller_of(context), request.name, request.type, request.description, list(request.tags), request.request_id
        )
        return pb.CreateRegisteredModelResponse(registered_model=registered_model_pb(view))

    @handles_domain_errors
    def UpdateRegisteredModel(
        self, request: pb.UpdateRegisteredModelRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRegisteredModelResponse:
        view = self.catalog.edits.update_registered_model(
            caller_of(context),
            request.name,
            description=_optional(request, "description"),
            add_tags=list(request.add_tags),
            remove_tags=list(request.remove_tags),
            request_id=request.request_id,
        )
        return pb.UpdateRegisteredModelResponse(registered_model=registered_model_pb(view))

    @handles_domain_errors
    def GetRegisteredModel(
        self, request: pb.GetRegisteredModelRequest, context: grpc.ServicerContext
    ) -> pb.GetRegisteredModelResponse:
        view = self.catalog.collections.get(caller_of(context), request.name, CollectionKind.REGISTERED_MODEL)
        return pb.GetRegisteredModelResponse(registered_model=registered_model_pb(view))

    @handles_domain_errors
    def ListRegisteredModels(
        self, request: pb.ListRegisteredModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListRegisteredModelsResponse:
        page = self.catalog.collections.search(
            caller_of(context),
            request.parent,
            CollectionKind.REGISTERED_MODEL,
            request.page_size,
            request.page_token,
            request.filter,
        )
        models, token = _fit(page, registered_model_pb)
        return pb.ListRegisteredModelsResponse(registered_models=models, next_page_token=token)

    @handles_domain_errors
    def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        self.catalog.collections.delete(caller_of(context), request.name, request.request_id)
        return pb.DeleteCollectionResponse()

    @handles_domain_errors
    def SetRetentionPolicy(
        self, request: pb.SetRetentionPolicyRequest, context: grpc.ServicerContext
    ) -> pb.SetRetentionPolicyResponse:
        view, deleted = self.catalog.retention.set_policy(
            caller_of(context),
            request.name,
            _optional(request, "keep_last"),
            request.request_id,
            validate_only=request.validate_only,
        )
        return pb.SetRetentionPolicyResponse(artifact=artifact_pb(view), deleted_indexes=deleted)

    @handles_domain_errors
    def CreateLink(self, request: pb.CreateLinkRequest, context: grpc.ServicerContext) -> pb.CreateLinkResponse:
        view, created = self.catalog.links.create(
            caller_of(context), request.version, request.parent, list(request.aliases), request.request_id
        )
        return pb.CreateLinkResponse(link=link_pb(view), created=created)

    @handles_domain_errors
    def ListLinks(self, request: pb.ListLinksRequest, context: grpc.ServicerContext) -> pb.ListLinksResponse:
        page = self.catalog.links.list(caller_of(context), request.parent, request.page_size, request.page_token)
        links, token = _fit(page, link_pb)
        return pb.ListLinksResponse(links=links, next_page_token=token)

    @handles_domain_errors
    def DeleteLink(self, request: pb.DeleteLinkRequest, context: grpc.ServicerContext) -> pb.DeleteLinkResponse:
        name, removed_aliases = self.catalog.links.delete(caller_of(context), request.name, request.request_id)
        return pb.DeleteLinkResponse(name=name, removed_aliases=removed_aliases)

    @handles_domain_errors
    def SetAlias(self, request: pb.SetAliasRequest, context: grpc.ServicerContext) -> pb.SetAliasResponse:
        change = self.catalog.aliases.set(
            caller_of(context),
            request.name,
            request.alias,
            expected_index=_optional(request, "expected_index"),
            expect_unset=request.WhichOneof("expectation") == "expect_unset" and request.expect_unset,
            request_id=request.request_id,
        )
        return pb.SetAliasResponse(
            parent=change.collection,
            alias=pb.Alias(alias=change.alias, index=change.index),
            previous_index=change.previous_index,
        )

    @handles_domain_errors
    def DeleteAlias(self, request: pb.DeleteAliasRequest, context: grpc.ServicerContext) -> pb.DeleteAliasResponse:
        previous = self.catalog.aliases.delete(
            caller_of(context),
            request.parent,
            request.alias,
            _optional(request, "expected_index"),
            request.request_id,
        )
        return pb.DeleteAliasResponse(previous_index=previous)

    @handles_domain_errors
    def SetAliasProtection(
        self, request: pb.SetAliasProtectionRequest, context: grpc.ServicerContext
    ) -> pb.SetAliasProtectionResponse:
        protected = self.catalog.aliases.set_protection(
            caller_of(context), request.parent, request.alias, request.protected, request.request_id
        )
        return pb.SetAliasProtectionResponse(protected_aliases=protected)

    @handles_domain_errors
    def ListAliasHistory(
        self, request: pb.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> pb.ListAliasHistoryResponse:
        page = self.catalog.aliases.history(
            caller_of(context), request.parent, request.alias, request.page_size, request.page_token
        )
        events, token = _fit(page, event_pb)
        return pb.ListAliasHistoryResponse(events=events, next_page_token=token)

    @handles_domain_errors
    def RecordRunInputs(
        self, request: pb.RecordRunInputsRequest, context: grpc.ServicerContext
    ) -> pb.RecordRunInputsResponse:
        recorded = self.catalog.lineage.record_inputs(
            caller_of(context), request.name, list(request.versions), request.request_id
        )
        return pb.RecordRunInputsResponse(versions=recorded)

    @handles_domain_errors
    def GetLineage(self, request: pb.GetLineageRequest, context: grpc.ServicerContext) -> pb.GetLineageResponse:
        lineage = self.catalog.lineage.of(caller_of(context), request.version, request.run)
        return pb.GetLineageResponse(
            producer_run=lineage.producer_run,
            consumer_runs=lineage.consumer_runs,
            inputs=lineage.inputs,
            outputs=lineage.outputs,
            links=lineage.links,
        )

    @handles_domain_errors
    def CollectGarbage(
        self, request: pb.CollectGarbageRequest, context: grpc.ServicerContext
    ) -> pb.CollectGarbageResponse:
        grace = _optional(request, "grace_period_seconds")
        report = self.catalog.garbage.collect(
            DEFAULT_GC_GRACE if grace is None else timedelta(seconds=grace), request.dry_run
        )
        return pb.CollectGarbageResponse(
            examined_blobs=report.examined_blobs,
            referenced_blobs=report.referenced_blobs,
            deleted_blobs=report.deleted_blobs,
            deleted_bytes=report.deleted_bytes,
            removed_upload_parts=report.removed_upload_parts,
        )

    @handles_domain_errors
    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.WatchResponse]:
        # A client that goes away wakes its idle stream at once, so its thread and stream slot are freed.
        wake = threading.Event()
        context.add_callback(wake.set)
        items = self.catalog.events.watch(
            request.start_after,
            request.resource_prefix,
            from_now=request.from_now,
            wake=wake,
            is_active=context.is_active,
        )
        principal = current_principal()
        for item in items:
            if item.event is not None and not _may_read(principal, item.event.resource):
                # Outside the caller's scope: the sequence still advances, as a heartbeat.
                yield pb.WatchResponse(sequence=item.sequence)
            elif item.event is None:
                yield pb.WatchResponse(sequence=item.sequence)
            else:
                # Shared between streams: never modified after it is built.
                yield self._event_response(item.event)
