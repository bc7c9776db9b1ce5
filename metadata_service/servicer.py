"""gRPC servicer for mreg.metadata.v1.MetadataService: translates protos to the domain and back."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc

from metadata_service.domain import (
    CollectionKind,
    CollectionView,
    LinkView,
    VersionState,
    VersionView,
)
from metadata_service.errors import RegistryError
from metadata_service.manifest import FileEntry
from metadata_service.references import Defaults
from metadata_service.service import LinkRequest, Registry

F = TypeVar("F", bound=Callable[..., Any])

ENTITY_HEADER = "mreg-entity"
PROJECT_HEADER = "mreg-project"

_STATES = {
    VersionState.PENDING: pb.VERSION_STATE_PENDING,
    VersionState.COMMITTED: pb.VERSION_STATE_COMMITTED,
    VersionState.DELETED: pb.VERSION_STATE_DELETED,
}


def _abort_on_domain_error(method: F) -> F:
    """Maps domain errors to their gRPC status in one place."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except RegistryError as e:
            context.abort(grpc.StatusCode[e.code], str(e))

    return wrapper  # type: ignore[return-value]


def _defaults(context: grpc.ServicerContext) -> Defaults:
    headers = dict(context.invocation_metadata())
    return Defaults(entity=headers.get(ENTITY_HEADER) or None, project=headers.get(PROJECT_HEADER) or None)


def _timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
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
        create_time=_timestamp(view.created_at),
        commit_time=_timestamp(view.committed_at),
        manifest=[
            pb.ManifestEntry(
                path=e.path,
                digest=blob_pb.Digest(hash=e.digest, size_bytes=e.size_bytes),
                metadata=_struct(e.metadata),
            )
            for e in view.manifest
        ],
    )


def link_pb(view: LinkView) -> pb.Link:
    return pb.Link(
        name=view.name,
        registered_model=view.registered_model,
        index=view.index,
        aliases=view.aliases,
        version=version_pb(view.version),
        create_time=_timestamp(view.created_at),
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
        create_time=_timestamp(view.created_at),
    )


def registered_model_pb(view: CollectionView) -> pb.RegisteredModel:
    return pb.RegisteredModel(
        name=view.name,
        type=view.type,
        description=view.description,
        link_count=view.member_count,
        aliases=_aliases_pb(view),
        create_time=_timestamp(view.created_at),
    )


def _file_entry(entry: pb.ManifestEntry) -> FileEntry:
    return FileEntry(
        path=entry.path,
        digest=entry.digest.hash,
        size_bytes=entry.digest.size_bytes,
        metadata=_dict(entry.metadata) if entry.HasField("metadata") else None,
    )


class MetadataServicer(pb_grpc.MetadataServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @_abort_on_domain_error
    def CreateVersion(
        self, request: pb.CreateVersionRequest, context: grpc.ServicerContext
    ) -> pb.CreateVersionResponse:
        view = self.registry.create_version(
            _defaults(context),
            request.artifact,
            request.type,
            description=request.description,
            tags=list(request.tags),
            metadata=_dict(request.metadata),
        )
        return pb.CreateVersionResponse(version=version_pb(view))

    @_abort_on_domain_error
    def CommitVersion(
        self, request: pb.CommitVersionRequest, context: grpc.ServicerContext
    ) -> pb.CommitVersionResponse:
        result = self.registry.commit_version(
            _defaults(context),
            request.uid,
            [_file_entry(e) for e in request.manifest],
            aliases=list(request.aliases),
            links=[LinkRequest(t.registered_model, tuple(t.aliases)) for t in request.links],
        )
        return pb.CommitVersionResponse(
            version=version_pb(result.version),
            created=result.created,
            links=[link_pb(v) for v in result.links],
        )

    @_abort_on_domain_error
    def GetVersion(self, request: pb.GetVersionRequest, context: grpc.ServicerContext) -> pb.GetVersionResponse:
        return pb.GetVersionResponse(
            version=version_pb(self.registry.resolve(_defaults(context), request.name).version)
        )

    @_abort_on_domain_error
    def ResolveReference(
        self, request: pb.ResolveReferenceRequest, context: grpc.ServicerContext
    ) -> pb.ResolveReferenceResponse:
        resolution = self.registry.resolve(_defaults(context), request.reference)
        return pb.ResolveReferenceResponse(
            version=version_pb(resolution.version),
            link=link_pb(resolution.link) if resolution.link else None,
        )

    @_abort_on_domain_error
    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        page = self.registry.list_versions(_defaults(context), request.parent, request.page_size, request.page_token)
        return pb.ListVersionsResponse(
            versions=[version_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    @_abort_on_domain_error
    def GetArtifact(self, request: pb.GetArtifactRequest, context: grpc.ServicerContext) -> pb.GetArtifactResponse:
        view = self.registry.get_collection(_defaults(context), request.name, CollectionKind.ARTIFACT)
        return pb.GetArtifactResponse(artifact=artifact_pb(view))

    @_abort_on_domain_error
    def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.ServicerContext
    ) -> pb.ListArtifactsResponse:
        page = self.registry.list_collections(
            _defaults(context), request.parent, CollectionKind.ARTIFACT, request.page_size, request.page_token
        )
        return pb.ListArtifactsResponse(
            artifacts=[artifact_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    @_abort_on_domain_error
    def CreateRegisteredModel(
        self, request: pb.CreateRegisteredModelRequest, context: grpc.ServicerContext
    ) -> pb.CreateRegisteredModelResponse:
        view = self.registry.create_registered_model(
            _defaults(context), request.name, request.type, request.description
        )
        return pb.CreateRegisteredModelResponse(registered_model=registered_model_pb(view))

    @_abort_on_domain_error
    def GetRegisteredModel(
        self, request: pb.GetRegisteredModelRequest, context: grpc.ServicerContext
    ) -> pb.GetRegisteredModelResponse:
        view = self.registry.get_collection(_defaults(context), request.name, CollectionKind.REGISTERED_MODEL)
        return pb.GetRegisteredModelResponse(registered_model=registered_model_pb(view))

    @_abort_on_domain_error
    def ListRegisteredModels(
        self, request: pb.ListRegisteredModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListRegisteredModelsResponse:
        page = self.registry.list_collections(
            _defaults(context),
            request.parent,
            CollectionKind.REGISTERED_MODEL,
            request.page_size,
            request.page_token,
        )
        return pb.ListRegisteredModelsResponse(
            registered_models=[registered_model_pb(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    @_abort_on_domain_error
    def CreateLink(self, request: pb.CreateLinkRequest, context: grpc.ServicerContext) -> pb.CreateLinkResponse:
        view, created = self.registry.create_link(
            _defaults(context), request.version, request.registered_model, list(request.aliases)
        )
        return pb.CreateLinkResponse(link=link_pb(view), created=created)

    @_abort_on_domain_error
    def ListLinks(self, request: pb.ListLinksRequest, context: grpc.ServicerContext) -> pb.ListLinksResponse:
        page = self.registry.list_links(_defaults(context), request.parent, request.page_size, request.page_token)
        return pb.ListLinksResponse(links=[link_pb(v) for v in page.items], next_page_token=page.next_page_token)

    @_abort_on_domain_error
    def SetAlias(self, request: pb.SetAliasRequest, context: grpc.ServicerContext) -> pb.SetAliasResponse:
        change = self.registry.set_alias(_defaults(context), request.target, request.alias)
        return pb.SetAliasResponse(
            collection=change.collection,
            alias=pb.Alias(alias=change.alias, index=change.index),
            previous_index=change.previous_index,
        )

    @_abort_on_domain_error
    def DeleteAlias(self, request: pb.DeleteAliasRequest, context: grpc.ServicerContext) -> pb.DeleteAliasResponse:
        previous = self.registry.delete_alias(_defaults(context), request.collection, request.alias)
        return pb.DeleteAliasResponse(previous_index=previous)
