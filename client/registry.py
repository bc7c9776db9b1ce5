"""The Python client: one object that composes the metadata and blob services.

registry = Registry.connect("localhost:50051", "localhost:50052", entity="acme", project="vision")
result = registry.push("./checkpoint", "resnet", aliases=["candidate"])
registry.pull("resnet:candidate", "./restored")
path = registry.download("resnet:candidate")   # a read-only directory in the cache, reused next time
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import struct_pb2

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob.v1 import blob_service_pb2_grpc as blob_grpc
from mreg.client import editing, profiles, references
from mreg.client.cache import PULL_ADOPT_COPY_LIMIT, ContentCache, HashCache, default_cache_dir
from mreg.client.channels import Credentials, open_channel
from mreg.client.errors import MregError, PushInterrupted, local_error
from mreg.client.hashing import LocalFile, list_files, sha256_file
from mreg.client.models import (
    EXACT_INTEGER_LIMIT,
    AliasMove,
    Artifact,
    Caller,
    DeletedLink,
    DeletedVersion,
    Event,
    GarbageReport,
    Lineage,
    Link,
    LinkResult,
    NewToken,
    Project,
    RegisteredModel,
    Resolution,
    RetentionChange,
    Token,
    Version,
    WatchUpdate,
)
from mreg.client.settings import DEFAULT_BLOB_ADDR as DEFAULT_BLOB_ADDR  # re-exported: callers import it here
from mreg.client.settings import DEFAULT_METADATA_ADDR as DEFAULT_METADATA_ADDR
from mreg.client.settings import ClientSettings
from mreg.client.snapshots import Download, SnapshotCache
from mreg.client.transfer import (
    DEFAULT_RETRY_SECONDS,
    STREAM_WHILE_HASHING_MIN_BYTES,
    BlobTransfer,
    ProgressCallback,
    RemoteFile,
    StreamsWhileHashing,
    prepare_destination,
)
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from mreg.metadata.v1 import token_service_pb2 as token_pb
from mreg.metadata.v1 import token_service_pb2_grpc as token_grpc

# Hashing this much (files not in the hash cache) gets a progress line: below it, hashing takes well under a second.
HASH_PROGRESS_MIN_BYTES = 64 << 20
# Small files are hashed in runs of about this many bytes per task (see _hash_groups).
HASH_GROUP_BYTES = 16 << 20
# A commit refused because a sweep took its content is retried after uploading it again.
COMMIT_ATTEMPTS = 9
# The google.rpc.PreconditionFailure violation type of a commit whose content is not stored.
MISSING_BLOB = "MISSING_BLOB"

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M")  # a protobuf message type
# Failures of an upload that a later run of the same push gets past, sending only what is missing.
RESUMABLE_PUSH_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    version: Version
    created: bool
    links: tuple[Link, ...]
    files: int
    size_bytes: int
    uploaded_bytes: int
    # The content equalled the latest version's (created is False) and that version was kept
    # without these parts of what the push asked for: "description", "tags", "metadata".
    # Empty when a version was created, nothing differed, or update_existing applied them.
    ignored_changes: tuple[str, ...] = ()
    # What update_existing applied to the kept version (UpdateVersion), from the same names.
    updated_existing: tuple[str, ...] = ()
    # Indexes of older versions the artifact's retention policy deleted as this push committed.
    retention_deleted: tuple[int, ...] = ()
    # Empty directories under the pushed one, not part of the version (a version holds files only).
    empty_directories_left_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullResult:
    """What a pull did: the version (and the link, for a registered-model reference) and the bytes moved."""

    version: Version
    link: Link | None
    files: int
    size_bytes: int
    downloaded_bytes: int


class WatchStream:
    """A Watch stream (``Registry.open_watch``): iterate for updates; ``cancel()`` from any thread ends it.

    Iteration stops quietly after ``cancel()``; any other broken stream raises ``MregError`` (e.g. UNAVAILABLE,
    or DEADLINE_EXCEEDED when the stream's timeout passed).
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[WatchUpdate]:
        try:
            for message in self._call:
                yield WatchUpdate.from_proto(message)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise MregError.from_rpc(e, "the metadata service") from e

    def cancel(self) -> None:
        self._call.cancel()


class Registry:
    """A connection to an mreg registry (both services)."""

    def __init__(
        self,
        metadata_channel: grpc.Channel,
        blob_channel: grpc.Channel,
        *,
        entity: str | None = None,
        project: str | None = None,
        parallel: int = 8,
        actor: str | None = None,
        timeout: float = 120.0,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        stream_while_hashing: bool = True,
    ) -> None:
        self._channels = (metadata_channel, blob_channel)
        # Push streams large files not hashed before while it hashes them (transfer.StreamsWhileHashing).
        self.stream_while_hashing = stream_while_hashing
        self.metadata = pb_grpc.MetadataServiceStub(metadata_channel)
        self.blobs = blob_grpc.BlobServiceStub(blob_channel)
        self.tokens = token_grpc.TokenServiceStub(metadata_channel)
        self.parallel = parallel
        self.timeout = timeout
        # The settings connect resolved; None when the channels were given (the cache limit is then looked up).
        self.settings: ClientSettings | None = None
        cache_root = cache_dir or default_cache_dir()
        self.cache_root = cache_root
        self._snapshots: SnapshotCache | None = None
        self.hash_cache = HashCache(cache_root) if use_cache else None
        self.content_cache = ContentCache(cache_root) if use_cache else None
        self.transfer = BlobTransfer(
            self.blobs, parallel=parallel, upload_ids=self.hash_cache, retry_seconds=retry_seconds
        )
        self.entity = entity
        self.project = project
        headers = [("mreg-actor", actor or os.environ.get("MREG_ACTOR") or _default_actor())]
        if entity:
            headers.append(("mreg-entity", entity))
        if project:
            headers.append(("mreg-project", project))
        self._headers = tuple(headers)

    @classmethod
    def connect(
        cls,
        metadata_addr: str | None = None,
        blob_addr: str | None = None,
        *,
        entity: str | None = None,
        project: str | None = None,
        parallel: int | None = None,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        credentials: Credentials | None = None,
        profile: str | None = None,
        timeout: float | None = None,
    ) -> Registry:
        """Connects to the services; what the arguments leave out (None) comes from the MREG_* environment
        variables, then config.toml, then the login profile (``mreg login``), then the built-in defaults
        (client.settings).

        ``credentials`` (a token, TLS) default to the settings' token, tls, ca_cert, client_cert and
        client_key, resolved the same way. ``profile`` names the profile (default: MREG_PROFILE, else
        "default" if it exists; see client.settings).

        Raises:
            MregError: INVALID_ARGUMENT for a setting whose value does not fit, naming where it came from.
        """
        settings = ClientSettings.load(
            metadata_addr=metadata_addr,
            blob_addr=blob_addr,
            entity=entity,
            project=project,
            parallel=parallel,
            cache_dir=cache_dir,
            profile=profile,
            timeout=timeout,
        )
        return cls.from_settings(settings, use_cache=use_cache, credentials=credentials)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Registry:
        """Connects with the settings of the environment and the config files alone: ``connect()`` without addresses.

        Every setting comes from its MREG_* environment variable, else config.toml, else the login profile,
        else the default (client.settings); ``kwargs`` are ``connect``'s keyword arguments, e.g. ``use_cache``.
        """
        return cls.connect(**kwargs)

    @classmethod
    def from_settings(
        cls, settings: ClientSettings, *, use_cache: bool = True, credentials: Credentials | None = None
    ) -> Registry:
        """Connects as ``settings`` say (``ClientSettings.load(...)``); ``credentials`` replace the settings' own."""
        if credentials is None:
            credentials = settings.credentials()
        registry = cls(
            open_channel(settings.metadata_addr, credentials, keepalive=settings.keepalive),
            open_channel(settings.blob_addr, credentials, keepalive=settings.keepalive),
            entity=settings.entity,
            project=settings.project,
            parallel=settings.parallel,
            timeout=settings.timeout,
            cache_dir=settings.cache_dir,
            use_cache=use_cache,
            retry_seconds=settings.retry_seconds,
            stream_while_hashing=settings.stream_while_hashing,
        )
        registry.settings = settings
        return registry

    @classmethod
    def from_profile(cls, name: str | None = None, **kwargs: Any) -> Registry:
        """Connects with the profile ``name`` (default: MREG_PROFILE, else "default"), which ``mreg login`` wrote.

        Environment variables and config.toml still take precedence over the profile, as with ``connect``.
        """
        if profiles.active(name) is None:
            raise MregError("NOT_FOUND", f"no profile {profiles.DEFAULT_PROFILE!r}; create it with mreg login")
        return cls.connect(profile=name, **kwargs)

    def close(self) -> None:
        """Closes both channels and the local caches; ``with Registry.connect(...)`` does it on exit."""
        for channel in self._channels:
            channel.close()
        if self.hash_cache is not None:
            self.hash_cache.close()
        if self.content_cache is not None:
            self.content_cache.close()
        if self._snapshots is not None:
            self._snapshots.close()
            if self._snapshots.content is not self.content_cache:
                self._snapshots.content.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        """Calls the metadata service; the channel's retry policy retries UNAVAILABLE (client.channels).

        A mutation gets one request_id for the logical call, sent by every attempt, so a
        retry after a lost response returns the first result instead of acting twice.
        """
        if "request_id" in request.DESCRIPTOR.fields_by_name and not request.request_id:
            request.request_id = uuid.uuid4().hex
        try:
            return method(request, metadata=self._headers, timeout=self.timeout)
        except grpc.RpcError as e:
            raise MregError.from_rpc(e, "the metadata service") from e

    # Push and pull -----------------------------------------------------------------------

    def push(
        self,
        directory: str | os.PathLike[str],
        ref: str,
        *,
        type: str = "model",
        aliases: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        description: str = "",
        tags: Sequence[str] = (),
        link_to: Sequence[str] = (),
        create_registered_models: bool = False,
        run: str = "",
        update_existing: bool = False,
        progress: Callable[[int], ProgressCallback] | None = None,
        hash_progress: Callable[[int], ProgressCallback] | None = None,
    ) -> PushResult:
        """Uploads a directory as a new version of the artifact ``ref`` and commits it.

        Only content the blob service lacks is uploaded; pushing an unchanged directory
        returns the existing latest version. ``link_to`` names registered models to link
        the version into; they must exist (NOT_FOUND, checked before any upload) unless
        ``create_registered_models``, which creates missing ones with the artifact's type
        once the content is stored, right before the commit: a push that fails before
        then (a file it cannot read, a version the service refuses) creates none, and one
        whose commit is refused deletes those it created again.

        When the content equals the latest version's, that version is kept as it is: a
        ``description``, ``tags`` or ``metadata`` it does not carry are named in
        ``PushResult.ignored_changes``, unless ``update_existing``, which applies them to it with
        UpdateVersion (the description replaced, tags added, metadata merged as RFC 7386)
        and names them in ``PushResult.updated_existing``.

        Args:
            progress: called with the number of bytes to upload; returns a callback
                that receives byte counts as they are sent.
            hash_progress: the same for hashing, called only when at least
                HASH_PROGRESS_MIN_BYTES need hashing (files the hash cache does not know).

        Raises:
            MregError: carrying the gRPC status code and the server's message; a malformed
                name, alias, run, type or metadata, or a description over 64 KiB, is
                INVALID_ARGUMENT before any file is read.
            PushInterrupted: on Ctrl-C during the upload, within about a second, with the
                bytes stored so far; the same push again resumes from there.
        """
        self._check_push_arguments(ref, type, aliases, link_to, run)
        editing.check_description(description)
        if not create_registered_models:
            for model in link_to:
                self._require_registered_model(model)
        struct = _struct(metadata)
        # Resolving the root once gives every file an absolute path to key the hash cache by.
        listing = list_files(Path(directory).resolve())
        infos, known = self._look_up_digests(listing.files)
        pending_uid = ""
        streams: StreamsWhileHashing | None = None
        streamed: dict[int, int] = {}  # file index -> its index in streams
        large = self._to_stream_while_hashing(listing.files, infos, known)
        if large and self.stream_while_hashing and self.transfer.limits().write_digest_at_finish:
            # The pending version first, as below, then they stream while they are hashed.
            pending_uid = self._create_pending_version(ref, type, description, tags, struct)
            streams = StreamsWhileHashing(self.transfer, [(listing.files[i][0], infos[i]) for i in large])
            streamed = {i: j for j, i in enumerate(large)}
            for i in large:
                sha = known[i]
                if sha is not None:
                    streams.hashed(streamed[i], sha)
        try:
            local = self._hash_directory(
                listing.files,
                infos,
                known,
                hash_progress,
                on_hashed=_told_to(streams, streamed) if streams is not None else None,
            )
        except BaseException as e:
            if streams is None:
                raise
            streams.cancel()
            if isinstance(e, KeyboardInterrupt):
                total = sum(info.st_size for info in infos)
                raise PushInterrupted(streams.stored_bytes(), total) from None
            raise
        request = pb.CommitVersionRequest(
            manifest=[
                pb.ManifestEntry(path=f.path, digest=blob_pb.Digest(hash=f.sha256, size_bytes=f.size_bytes))
                for f in local
            ],
            aliases=list(aliases),
            links=[pb.LinkTarget(registered_model=m) for m in link_to],
            run=run,
        )
        try:
            missing: set[tuple[str, int]] | None = self.transfer.find_missing(
                sorted({(f.sha256, f.size_bytes) for f in local})
            )
        except MregError as e:
            if streams is None:
                raise
            streams.cancel()
            if e.code not in RESUMABLE_PUSH_FAILURES:
                raise
            raise _kept_for_a_rerun(e) from e
        if missing or pending_uid:
            # Content to upload: a pending version first, so what the service refuses (another type, a
            # registered model's name) is refused before any byte is sent.
            request.uid = pending_uid or self._create_pending_version(ref, type, description, tags, struct)
        else:
            # Everything is stored already: the version is created and committed in one call.
            request.new_version.CopyFrom(
                pb.CommitVersionRequest.NewVersion(
                    parent=ref, type=type, description=description, tags=list(tags), metadata=struct
                )
            )
        uploaded = self._upload_missing(local, progress, missing, streams, [local[i] for i in streamed])
        # Only now, with the directory read, the version accepted and its content stored: a push that fails
        # before its commit leaves no registered model behind, and one whose commit is refused removes those
        # it created.
        with self._creating_registered_models(link_to if create_registered_models else (), type):
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    response = self._call(self.metadata.CommitVersion, request)
                    break
                except MregError as e:
                    # Content found present can be garbage-collected before the commit lands;
                    # the commit then refuses, and uploading what is missing again fixes it.
                    missing_content = any(kind == MISSING_BLOB for kind, _ in e.violations)
                    if e.code != "FAILED_PRECONDITION" or not missing_content or attempt == COMMIT_ATTEMPTS - 1:
                        raise
                    # The refusal recorded nothing, so the same request_id commits once the content is back.
                    # A sweep may still be deleting that content: give it a moment to finish, then ask again
                    # what is missing.
                    time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
                    uploaded += self._upload_missing(local, progress)
        self._complete_manifest(response.version)
        version = Version.from_proto(response.version)
        ignored: tuple[str, ...] = ()
        updated: tuple[str, ...] = ()
        if not response.created:
            ignored = editing.missing_from(description, tags, metadata, kept=version)
        if ignored and update_existing:
            edited = self.update_version(
                version.name,
                description=description if "description" in ignored else None,
                add_tags=list(tags) if "tags" in ignored else (),
                metadata=metadata if "metadata" in ignored else None,
            )
            # UpdateVersion answers without the manifest: keep the one the commit returned.
            version = replace(version, description=edited.description, tags=edited.tags, metadata=edited.metadata)
            ignored, updated = (), ignored
        return PushResult(
            version=version,
            created=response.created,
            links=tuple(Link.from_proto(link) for link in response.links),
            files=len(local),
            size_bytes=sum(f.size_bytes for f in local),
            uploaded_bytes=uploaded,
            ignored_changes=ignored,
            updated_existing=updated,
            retention_deleted=tuple(response.retention_deleted_indexes),
            empty_directories_left_out=listing.empty_directories,
        )

    def _check_push_arguments(
        self, ref: str, type_: str, aliases: Sequence[str], link_to: Sequence[str], run: str
    ) -> None:
        """Refuses what the commit would refuse, before anything is hashed, uploaded or created."""
        references.check_collection(ref, self.entity, self.project, "artifact")
        references.check_type(type_)
        for alias in aliases:
            references.check_alias(alias)
        for model in link_to:
            references.check_collection(model, self.entity, self.project, "registered model")
        if run:
            references.check_collection(run, self.entity, self.project, "run")

    def _to_stream_while_hashing(
        self, found: list[tuple[Path, str]], infos: list[os.stat_result], known: list[str | None]
    ) -> list[int]:
        """The large files not hashed before (content to upload, most likely), and those an interrupted push
        began to stream (StreamsWhileHashing)."""

        def begun(i: int) -> bool:
            return self.hash_cache is not None and self.hash_cache.has_file_upload(found[i][0], infos[i])

        return [
            i
            for i in range(len(found))
            if infos[i].st_size >= STREAM_WHILE_HASHING_MIN_BYTES and (known[i] is None or begun(i))
        ]

    def _create_pending_version(
        self, ref: str, type: str, description: str, tags: Sequence[str], metadata: struct_pb2.Struct | None
    ) -> str:
        request = pb.CreateVersionRequest(
            parent=ref, type=type, description=description, tags=list(tags), metadata=metadata
        )
        return self._call(self.metadata.CreateVersion, request).version.uid

    def _upload_missing(
        self,
        local: Sequence[LocalFile],
        progress: Callable[[int], ProgressCallback] | None,
        missing: set[tuple[str, int]] | None = None,
        streams: StreamsWhileHashing | None = None,
        streamed: Sequence[LocalFile] = (),
    ) -> int:
        """Uploads the files whose content the blob service lacks (``missing``, or asked now if None), but for
        those ``streams`` is streaming (``streamed``): it finishes them, and those it did not store follow."""
        content = {(f.sha256, f.size_bytes): f.size_bytes for f in local}
        if missing is None:
            missing = self.transfer.find_missing(sorted(content))
        sending = missing - {(f.sha256, f.size_bytes) for f in streamed}
        to_send = [f for f in local if (f.sha256, f.size_bytes) in sending]
        total = sum(size for key, size in content.items() if key in missing)
        report = progress(total) if progress and total else None
        try:
            try:
                return self._send_missing(to_send, report, missing, streams, streamed)
            except BaseException:
                if streams is not None:
                    streams.cancel()
                raise
        except (PushInterrupted, KeyboardInterrupt) as e:
            # What was stored before this push plus what it stored; of all the version's content.
            present = sum(content.values()) - total
            stored = (e.stored_bytes if isinstance(e, PushInterrupted) else 0) + (
                streams.stored_bytes() if streams is not None else 0
            )
            raise PushInterrupted(present + stored, sum(content.values())) from None
        except MregError as e:
            if e.code not in RESUMABLE_PUSH_FAILURES:
                raise
            raise _kept_for_a_rerun(e) from e

    def _send_missing(
        self,
        to_send: list[LocalFile],
        report: ProgressCallback | None,
        missing: set[tuple[str, int]],
        streams: StreamsWhileHashing | None,
        streamed: Sequence[LocalFile],
    ) -> int:
        """Uploads ``to_send`` while ``streams`` finishes ``streamed``, then what they did not store; returns
        the bytes sent."""
        if streams is not None and report is not None:
            streams.report_to(report)
        sent = self.transfer.upload(to_send, report) if to_send else 0
        if streams is None:
            return sent
        not_stored, streamed_bytes = streams.finish()
        retry = [f for i, f in enumerate(streamed) if i in not_stored and (f.sha256, f.size_bytes) in missing]
        return sent + streamed_bytes + (self.transfer.upload(retry, report) if retry else 0)

    def _look_up_digests(self, found: list[tuple[Path, str]]) -> tuple[list[os.stat_result], list[str | None]]:
        """Each file's stat, and its digest if the hash cache knows the file unchanged (else None)."""
        try:
            infos = [source.stat() for source, _ in found]
        except OSError as e:
            raise local_error(e) from e
        known = [
            self.hash_cache.lookup(source, info) if self.hash_cache else None
            for (source, _), info in zip(found, infos, strict=True)
        ]
        return infos, known

    def _hash_directory(
        self,
        found: list[tuple[Path, str]],
        infos: list[os.stat_result],
        known: list[str | None],
        progress: Callable[[int], ProgressCallback] | None = None,
        on_hashed: Callable[[int, str], None] | None = None,
    ) -> list[LocalFile]:
        """Digests of the files ``list_files`` found (``_look_up_digests`` gave their stats and known digests):
        unchanged files cost a stat and a cache lookup, the others are hashed, and ``on_hashed`` is told of
        each as (index, digest) once it is.

        ``progress`` is called with the bytes to hash when they reach HASH_PROGRESS_MIN_BYTES
        (a large checkpoint takes seconds to hash), and returns a callback told of each block.
        """
        to_hash = [i for i, sha in enumerate(known) if sha is None]
        pending_bytes = sum(infos[i].st_size for i in to_hash)
        advance = progress(pending_bytes) if progress and pending_bytes >= HASH_PROGRESS_MIN_BYTES else None
        stop = threading.Event()
        pool = ThreadPoolExecutor(max(2, self.parallel))

        def hash_group(group: list[int]) -> list[tuple[int, str]]:
            hashed = []
            for i in group:
                sha = sha256_file(found[i][0], stop, advance, infos[i].st_size)[0]
                if on_hashed is not None:
                    on_hashed(i, sha)
                hashed.append((i, sha))
            return hashed

        try:
            groups = _hash_groups(to_hash, [infos[i].st_size for i in to_hash])
            hashed = {i: sha for part in pool.map(hash_group, groups) for i, sha in part}
        except BaseException as e:
            # Ctrl-C or a failure: the workers stop at their next block instead of hashing on.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            if isinstance(e, OSError):
                raise local_error(e) from e
            raise
        pool.shutdown()
        if self.hash_cache is not None and hashed:
            self.hash_cache.store((found[i][0], infos[i], sha) for i, sha in hashed.items())
        return [
            LocalFile(source, path, known[i] or hashed[i], infos[i].st_size) for i, (source, path) in enumerate(found)
        ]

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        run: str = "",
        progress: Callable[[int], ProgressCallback] | None = None,
    ) -> PullResult:
        """Downloads the version ``ref`` names into ``dest``, verifying every file.

        Raises:
            MregError: NOT_FOUND for an unknown reference, DATA_LOSS if content does not
                verify (the affected file is then absent from ``dest``), FAILED_PRECONDITION
                if ``dest`` is a file or holds a directory where the version has a file (or
                the reverse), checked before anything is downloaded.
        """
        resolution = self.resolve(ref)
        version = resolution.version
        files = [RemoteFile(e.path, e.sha256, e.size_bytes) for e in version.manifest]
        if run:
            references.check_collection(run, self.entity, self.project, "run")
        target = Path(dest)
        paths = prepare_destination(target, [f.path for f in files])
        total = sum(f.size_bytes for f in files)
        cache = self.content_cache
        to_fetch = files if cache is None else self._place_cached(cache, files, paths)
        fetch_total = sum(f.size_bytes for f in to_fetch)
        adopt = (
            (lambda f, path, content: cache.adopt(f.sha256, path, copy_limit=PULL_ADOPT_COPY_LIMIT, content=content))
            if cache is not None
            else None
        )
        try:
            received = self.transfer.download(
                to_fetch,
                target,
                progress(fetch_total) if progress else None,
                on_verified=adopt,
                targets={f.path: path for f, path in zip(files, paths, strict=True)},
            )
        finally:
            if cache is not None:
                cache.flush()  # what this pull cached, trusted by other processes from now on
        self._remember_digests(target, files)
        if run:
            self.record_run_inputs(run, [version.name])
        return PullResult(
            version=version,
            link=resolution.link,
            files=len(files),
            size_bytes=total,
            downloaded_bytes=received,
        )

    def _remember_digests(self, root: Path, files: Sequence[RemoteFile]) -> None:
        """Records the digest of each file a pull placed under ``root`` in the hash cache, as a push records
        those it hashes: a push of the pulled directory, edited, then hashes only what was edited since."""
        if self.hash_cache is None:
            return
        base = root.resolve()  # as a push keys them (list_files of the resolved directory)
        entries = []
        for f in files:
            path = base.joinpath(*f.path.split("/"))
            try:
                info = path.stat()
            except OSError:
                continue  # gone already: nothing to remember
            if info.st_size == f.size_bytes:
                entries.append((path, info, f.sha256))
        self.hash_cache.store(entries)

    def _place_cached(
        self, cache: ContentCache, files: Sequence[RemoteFile], paths: Sequence[Path]
    ) -> list[RemoteFile]:
        """Places what the cache holds intact, copies in parallel; returns the files still to download."""
        held = cache.held([(f.sha256, f.size_bytes) for f in files])
        if not held:
            return list(files)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max(2, self.parallel))
        try:
            placed = list(
                pool.map(
                    lambda item: (
                        item[0].sha256 in held and cache.place(item[0].sha256, item[0].size_bytes, item[1], stop)
                    ),
                    zip(files, paths, strict=True),
                )
            )
        except BaseException:
            stop.set()  # Ctrl-C: running copies stop at their next step
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return [f for f, done in zip(files, placed, strict=True) if not done]

    def download(self, ref: str, *, progress: Callable[[int], ProgressCallback] | None = None) -> Path:
        """A local directory holding the version ``ref`` names, verified and read-only (the hf_hub_download habit).

        The directory is a snapshot in the cache (client.snapshots): downloading the same
        version again moves no bytes and returns the same path, and versions sharing a file
        share its bytes on disk. Do not write into it; copy it, or ``pull``, for a
        directory of your own.

        Raises:
            MregError: as ``pull``; INVALID_ARGUMENT for a malformed cache_max_size (MREG_CACHE_MAX_SIZE).
        """
        return self.download_snapshot(ref, progress=progress).path

    def download_snapshot(self, ref: str, *, progress: Callable[[int], ProgressCallback] | None = None) -> Download:
        """``download``, also saying which version, its size and whether it came from the cache.

        After the download the cache is evicted down to its size limit (MREG_CACHE_MAX_SIZE),
        least recently used snapshots first, never the one returned.
        """
        cache = self.snapshot_cache()
        version = self.resolve(ref).version
        files = [RemoteFile(e.path, e.sha256, e.size_bytes) for e in version.manifest]

        def fetch(missing: Sequence[RemoteFile], staging: Path) -> int:
            total = sum(f.size_bytes for f in missing)
            return self.transfer.download(missing, staging, progress(total) if progress else None)

        try:
            result = cache.ensure(version.name, version.digest, files, fetch)
        finally:
            cache.content.flush()  # the content it admitted, trusted by other processes from now on
        cache.enforce_limit(keep=result.snapshot.ref)
        return result

    def snapshot_cache(self) -> SnapshotCache:
        """The cache of ``download`` snapshots (opened on first use, even with ``use_cache=False``)."""
        if self._snapshots is None:
            content = self.content_cache or ContentCache(self.cache_root)
            limit = (self.settings or ClientSettings.load()).cache_max_size
            self._snapshots = SnapshotCache(self.cache_root, content, limit)
        return self._snapshots

    # Metadata ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> Resolution:
        """The version (and, for a registered model reference, the link) ``ref`` names, with its whole manifest.

        ``ref`` is ``[[entity/]project/]name[:alias|:vN]``; without a selector it names ``latest``.

        Raises:
            MregError: NOT_FOUND when nothing has that name, alias or index.
        """
        response = self._call(self.metadata.ResolveReference, pb.ResolveReferenceRequest(name=ref))
        self._complete_manifest(response.version)
        return Resolution.from_proto(response)

    def _complete_manifest(self, version: pb.Version) -> None:
        """Fills in a manifest the server left out of a response for its size, page by page."""
        if not version.manifest_omitted:
            return
        request = pb.ListVersionFilesRequest(name=version.name, page_size=10_000)
        version.manifest.extend(self._paginate(self.metadata.ListVersionFiles, request, "files"))
        version.manifest_omitted = False

    def get_version(self, ref: str) -> Version:
        """The version ``ref`` names; a large manifest may be left out (``manifest_omitted``; see ``resolve``)."""
        return Version.from_proto(self._call(self.metadata.GetVersion, pb.GetVersionRequest(name=ref)).version)

    def get_artifact(self, name: str) -> Artifact:
        """The artifact ``name`` (``[[entity/]project/]name``): its aliases, version count and retention policy."""
        return Artifact.from_proto(self._call(self.metadata.GetArtifact, pb.GetArtifactRequest(name=name)).artifact)

    def update_version(
        self,
        ref: str,
        *,
        description: str | None = None,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
        request_id: str = "",
    ) -> Version:
        """Edits a version's description, tags or metadata (its files never change).

        ``metadata`` merges into the version's (RFC 7386: a ``None`` value removes a key)
        unless ``replace_metadata``. Returns the version without its manifest. A
        ``request_id`` makes a retry of the same edit return the first result.
        """
        if description is not None:
            editing.check_description(description)
        request = pb.UpdateVersionRequest(
            name=ref, add_tags=list(add_tags), remove_tags=list(remove_tags), request_id=request_id
        )
        if description is not None:
            request.description = description
        if metadata is not None:
            request.metadata.CopyFrom(_struct(metadata) or struct_pb2.Struct())
            if replace_metadata:
                request.metadata_mode = pb.METADATA_UPDATE_MODE_REPLACE
        return Version.from_proto(self._call(self.metadata.UpdateVersion, request).version)

    def update_registered_model(
        self,
        name: str,
        *,
        description: str | None = None,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        request_id: str = "",
    ) -> RegisteredModel:
        """Edits a registered model's description (its model card, Markdown) and tags."""
        if description is not None:
            editing.check_description(description)
        request = pb.UpdateRegisteredModelRequest(
            name=name, add_tags=list(add_tags), remove_tags=list(remove_tags), request_id=request_id
        )
        if description is not None:
            request.description = description
        return RegisteredModel.from_proto(self._call(self.metadata.UpdateRegisteredModel, request).registered_model)

    def get_registered_model(self, name: str) -> RegisteredModel:
        """The registered model ``name``: its card, aliases and link count."""
        request = pb.GetRegisteredModelRequest(name=name)
        return RegisteredModel.from_proto(self._call(self.metadata.GetRegisteredModel, request).registered_model)

    def create_registered_model(self, name: str, *, type: str = "model", description: str = "") -> RegisteredModel:
        """Creates an empty registered model with ``description`` as its card (Markdown).

        Raises:
            MregError: ALREADY_EXISTS if the name is taken (``ensure_registered_model`` tolerates that).
        """
        editing.check_description(description)
        request = pb.CreateRegisteredModelRequest(name=name, type=type, description=description)
        return RegisteredModel.from_proto(self._call(self.metadata.CreateRegisteredModel, request).registered_model)

    def ensure_registered_model(self, name: str, *, type: str = "model", description: str = "") -> bool:
        """Creates a registered model (with ``description``, its model card) unless one with this name exists.

        Returns whether it was created; an existing one is left as it is.
        """
        try:
            self.create_registered_model(name, type=type, description=description)
        except MregError as e:
            if e.code != "ALREADY_EXISTS":
                raise
            return False
        return True

    def _require_registered_model(self, name: str) -> None:
        """NOT_FOUND, with what to do about it, unless the registered model exists."""
        try:
            self.get_registered_model(name)
        except MregError as e:
            if e.code == "NOT_FOUND" and "actual_kind" not in e.metadata:
                raise MregError(
                    e.code,
                    f"{e.message}; create it first (--create on mreg push or mreg link; create_registered_models=True "
                    "or create=True), or check the name for a typo",
                    reason=e.reason,
                    metadata=e.metadata,
                ) from e
            raise

    def link(
        self,
        ref: str,
        registered_model: str,
        aliases: Sequence[str] = (),
        *,
        create: bool = False,
        description: str = "",
    ) -> LinkResult:
        """Links the version ``ref`` names into a registered model.

        The registered model must exist (NOT_FOUND otherwise, so a typo does not start a
        new one) unless ``create``, which creates it with the version's type and
        ``description`` (its model card; an existing model's card is left as it is).
        """
        for alias in aliases:
            references.check_alias(alias)
        creating: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if create:
            editing.check_description(description)
            version_type = self.get_version(ref).type
            creating = self._creating_registered_models([registered_model], version_type, description)
        else:
            self._require_registered_model(registered_model)
        with creating:
            response = self._call(
                self.metadata.CreateLink,
                pb.CreateLinkRequest(version=ref, parent=registered_model, aliases=list(aliases)),
            )
        return LinkResult(link=Link.from_proto(response.link), created=response.created)

    @contextlib.contextmanager
    def _creating_registered_models(self, names: Sequence[str], type: str, description: str = "") -> Iterator[None]:
        """Creates the registered models ``names`` that do not exist, for the block that links into them; if
        the block fails, deletes those it created again, so a refused push or link leaves no empty model
        behind. Deleting is refused for a model someone linked into meanwhile (or without the right to
        delete): that one stays, as it would have had it existed before."""
        created = [name for name in names if self.ensure_registered_model(name, type=type, description=description)]
        try:
            yield
        except BaseException:
            for name in created:
                try:
                    self.delete_collection(name)
                except MregError as e:
                    log.warning("registered model %s, created for a link that failed, stays: %s", name, e)
            raise

    def set_alias(
        self, ref: str, alias: str, *, expected_index: int | None = None, expect_unset: bool = False
    ) -> AliasMove:
        """Points ``alias`` at the version (or link) ``ref`` names.

        With ``expected_index`` (or ``expect_unset``) the move happens only if the alias
        names that index now (or nothing), else FAILED_PRECONDITION: a safe promotion.
        """
        expectation = {"expected_index": expected_index} if expected_index is not None else {}
        request = _request(pb.SetAliasRequest, name=ref, alias=alias, expect_unset=expect_unset, **expectation)
        response = self._call(self.metadata.SetAlias, request)
        return AliasMove(
            collection=response.parent,
            alias=response.alias.alias,
            index=response.alias.index,
            previous_index=response.previous_index if response.HasField("previous_index") else None,
        )

    def delete_alias(self, collection: str, alias: str, *, expected_index: int | None = None) -> int:
        """Removes ``alias`` from a collection; returns the index it named.

        With ``expected_index`` it is removed only if it names that index now (else FAILED_PRECONDITION).
        ``latest`` and protected aliases (for non-maintainers) are refused.
        """
        request = _request(pb.DeleteAliasRequest, parent=collection, alias=alias, expected_index=expected_index)
        return self._call(self.metadata.DeleteAlias, request).previous_index

    def list_versions(
        self,
        artifact: str,
        page_size: int = 0,
        filter: str = "",
        order_by: str = "",
        *,
        limit: int | None = None,
    ) -> Iterator[Version]:
        """The committed versions of an artifact, newest first unless ``order_by`` says otherwise.

        Pages are fetched as the iterator advances (``page_size`` per call; 0 lets the server
        choose); ``limit`` stops after that many. ``filter`` uses the grammar of
        ``mreg versions --help``, e.g. ``metadata.val_loss < 0.2 AND tag = "fp16"``; ``order_by``
        e.g. ``metadata.val_loss asc``. Versions come without their manifests.
        """
        request = _request(
            pb.ListVersionsRequest, parent=artifact, page_size=page_size, filter=filter, order_by=order_by
        )
        pages = self._paginate(self.metadata.ListVersions, request, "versions", limit)
        yield from (Version.from_proto(message) for message in pages)

    def list_versions_page(
        self, artifact: str, page_size: int = 0, page_token: str = "", filter: str = "", order_by: str = ""
    ) -> tuple[list[Version], str]:
        """One page of ``list_versions``, for a caller that pages itself (a web page's "next" link).

        Returns the versions and the opaque token of the next page ("" after the last); the token is bound to
        the artifact, filter and order, so it is passed back with the same ones.
        """
        request = _request(
            pb.ListVersionsRequest,
            parent=artifact,
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            order_by=order_by,
        )
        response = self._call(self.metadata.ListVersions, request)
        return [Version.from_proto(message) for message in response.versions], response.next_page_token

    def delete_version(self, ref: str, force: bool = False) -> DeletedVersion:
        """Deletes a version; its content stays until garbage collection finds it unused.

        A version that aliases or links name is refused (FAILED_PRECONDITION, VERSION_IN_USE)
        unless ``force``, which removes them too and says which.
        """
        response = self._call(self.metadata.DeleteVersion, pb.DeleteVersionRequest(name=ref, force=force))
        return DeletedVersion(
            version=Version.from_proto(response.version),
            removed_aliases=tuple(response.removed_aliases),
            removed_links=tuple(response.removed_links),
            removed_link_aliases=tuple(response.removed_link_aliases),
        )

    def delete_link(self, ref: str) -> DeletedLink:
        """Deletes a registered model's link (the version stays), with the model's aliases that named it;
        returns the link's name and those aliases. A protected alias goes only by a maintainer."""
        response = self._call(self.metadata.DeleteLink, pb.DeleteLinkRequest(name=ref))
        return DeletedLink(response.name, tuple(response.removed_aliases))

    def delete_collection(self, name: str) -> None:
        """Deletes an empty artifact or registered model (FAILED_PRECONDITION while it holds anything)."""
        self._call(self.metadata.DeleteCollection, pb.DeleteCollectionRequest(name=name))

    def set_retention(self, artifact: str, keep_last: int | None, *, validate_only: bool = False) -> RetentionChange:
        """Sets the artifact's retention policy (``None``: keep everything), deleting at once what it no longer keeps.

        Versions an alias or a link names are always kept. With ``validate_only`` nothing
        changes and ``deleted_indexes`` says what it would delete.
        """
        request = _request(
            pb.SetRetentionPolicyRequest, name=artifact, keep_last=keep_last, validate_only=validate_only
        )
        response = self._call(self.metadata.SetRetentionPolicy, request)
        return RetentionChange(Artifact.from_proto(response.artifact), tuple(response.deleted_indexes))

    def set_alias_protection(self, collection: str, alias: str, protected: bool = True) -> list[str]:
        """Protects an alias (only maintainers may move or remove it) or lifts that; returns the protected aliases."""
        request = pb.SetAliasProtectionRequest(parent=collection, alias=alias, protected=protected)
        return list(self._call(self.metadata.SetAliasProtection, request).protected_aliases)

    def alias_history(self, collection: str, alias: str, *, limit: int | None = None) -> Iterator[Event]:
        """Every change of ``alias`` in a collection, newest first: who moved it, from what, to what, when."""
        request = pb.ListAliasHistoryRequest(parent=collection, alias=alias)
        yield from (
            Event.from_proto(e) for e in self._paginate(self.metadata.ListAliasHistory, request, "events", limit)
        )

    def record_run_inputs(self, run: str, refs: Sequence[str]) -> list[str]:
        """Records that ``run`` used the versions ``refs`` name; returns their canonical names."""
        request = pb.RecordRunInputsRequest(name=run, versions=list(refs))
        return list(self._call(self.metadata.RecordRunInputs, request).versions)

    def lineage(self, ref: str = "", run: str = "") -> Lineage:
        """A version's producing and consuming runs and the registered-model links to it, or (with ``run``) a run's
        inputs and outputs."""
        request = pb.GetLineageRequest(run=run) if run else pb.GetLineageRequest(version=ref)
        return Lineage.from_proto(self._call(self.metadata.GetLineage, request))

    def min_gc_grace_seconds(self) -> int:
        """The blob service's minimum grace: content used more recently is never deleted, whatever grace
        ``collect_garbage`` asks for (0 where the service does not say)."""
        return self.transfer.limits().min_gc_grace_seconds

    def collect_garbage(self, grace_seconds: int | None = None, dry_run: bool = False) -> GarbageReport:
        """Deletes blob content no version references and nobody used for the grace period (ADMIN only)."""
        request = _request(pb.CollectGarbageRequest, grace_period_seconds=grace_seconds, dry_run=dry_run)
        return GarbageReport.from_proto(self._call(self.metadata.CollectGarbage, request))

    def watch(
        self,
        start_after: int = 0,
        *,
        from_now: bool = False,
        resource_prefix: str = "",
        timeout: float | None = None,
    ) -> Generator[WatchUpdate, None, None]:
        """Streams events after ``start_after``, then live ones; heartbeats carry no event.

        The first message is a heartbeat sent as soon as the stream is live. The stream
        runs until the caller stops iterating, or for ``timeout`` seconds. ``resource_prefix``
        keeps events of resources under it, matching whole path segments (``acme/vision``).
        To resume after a broken stream, pass the last ``WatchUpdate.sequence`` seen.

        Raises:
            MregError: UNAVAILABLE when the stream breaks (resume from the last sequence).
        """
        request = pb.WatchRequest(resource_prefix=resource_prefix)
        if from_now:
            request.from_now = True
        else:
            request.start_after = start_after
        stream = self.metadata.Watch(request, metadata=self._headers, timeout=timeout)
        try:
            yield from (WatchUpdate.from_proto(message) for message in stream)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise MregError.from_rpc(e, "the metadata service") from e
        finally:
            stream.cancel()

    def open_watch(
        self, start_after: int = 0, *, from_now: bool = False, resource_prefix: str = "", timeout: float | None = None
    ) -> WatchStream:
        """``watch`` as an object another thread can ``cancel()``, ending the stream at once.

        For a server that relays the feed (the web UI's server-sent events): the thread iterating is blocked
        waiting for the next message, so it cannot stop the stream itself when its reader goes away.
        """
        request = pb.WatchRequest(resource_prefix=resource_prefix)
        if from_now:
            request.from_now = True
        else:
            request.start_after = start_after
        return WatchStream(self.metadata.Watch(request, metadata=self._headers, timeout=timeout))

    def list_links(self, registered_model: str, page_size: int = 0, *, limit: int | None = None) -> Iterator[Link]:
        """A registered model's links, oldest first, each with its source version (paged as it advances)."""
        request = _request(pb.ListLinksRequest, parent=registered_model, page_size=page_size)
        yield from (Link.from_proto(m) for m in self._paginate(self.metadata.ListLinks, request, "links", limit))

    def list_projects(self, entity: str = "", page_size: int = 0, *, limit: int | None = None) -> Iterator[Project]:
        """An entity's projects that hold something the caller may read (the default entity if empty), by name."""
        request = _request(pb.ListProjectsRequest, parent=entity, page_size=page_size)
        yield from (
            Project.from_proto(m) for m in self._paginate(self.metadata.ListProjects, request, "projects", limit)
        )

    def list_artifacts(
        self, project: str, page_size: int = 0, filter: str = "", *, limit: int | None = None
    ) -> Iterator[Artifact]:
        """A project's artifacts by name; ``filter`` as in ListArtifacts, e.g. ``name = "res*" AND tag = "cv"``."""
        request = _request(pb.ListArtifactsRequest, parent=project, page_size=page_size, filter=filter)
        yield from (
            Artifact.from_proto(m) for m in self._paginate(self.metadata.ListArtifacts, request, "artifacts", limit)
        )

    def list_registered_models(
        self, project: str, page_size: int = 0, filter: str = "", *, limit: int | None = None
    ) -> Iterator[RegisteredModel]:
        """A project's registered models by name; ``filter`` as in ListRegisteredModels."""
        request = _request(pb.ListRegisteredModelsRequest, parent=project, page_size=page_size, filter=filter)
        pages = self._paginate(self.metadata.ListRegisteredModels, request, "registered_models", limit)
        yield from (RegisteredModel.from_proto(m) for m in pages)

    # Tokens ------------------------------------------------------------------------------

    def create_token(
        self, name: str, role: str | int, scope: str | None = None, expires: timedelta | None = None
    ) -> NewToken:
        """Creates a token (ADMIN only); returns it and its secret, which is shown only this once.

        ``token, secret = registry.create_token(...)`` unpacks the result.

        ``role`` is "reader", "writer", "maintainer" or "admin" (or a ``Role`` value); ``scope``
        "entity" or "entity/project", "*" (the default) for admin; ``expires`` how long it works.
        """
        request = token_pb.CreateTokenRequest(name=name, role=role_value(role))
        request.scope = scope if scope is not None else ("*" if request.role == token_pb.ROLE_ADMIN else "")
        if expires is not None:
            request.expire_time.FromDatetime(datetime.now(UTC) + expires)
        response = self._call(self.tokens.CreateToken, request)
        return NewToken(Token.from_proto(response.token), response.secret)

    def list_tokens(self, page_size: int = 0, *, limit: int | None = None) -> Iterator[Token]:
        """Every token, revoked and expired ones included, without secrets (ADMIN only)."""
        request = _request(token_pb.ListTokensRequest, page_size=page_size)
        yield from (Token.from_proto(m) for m in self._paginate(self.tokens.ListTokens, request, "tokens", limit))

    def revoke_token(self, name: str) -> Token:
        """Revokes a token: both services refuse it within 60 seconds (ADMIN only)."""
        return Token.from_proto(self._call(self.tokens.RevokeToken, token_pb.RevokeTokenRequest(name=name)).token)

    def whoami(self) -> Caller:
        """The caller's own token (name, role, scope, expiry) and whether authentication is on."""
        return Caller.from_proto(self._call(self.tokens.GetCaller, token_pb.GetCallerRequest()))

    def _paginate(
        self, method: Callable[..., Any], request: Any, field: str, limit: int | None = None
    ) -> Iterator[Any]:
        """The items of every page, fetching the next page only when the caller gets that far; at most ``limit``."""
        remaining = limit
        while remaining is None or remaining > 0:
            if remaining is not None and (not request.page_size or request.page_size > remaining):
                # Fetch no more than will be used; page_size is an int32, and the service caps it lower anyway.
                request.page_size = min(remaining, 2**31 - 1)
            response = self._call(method, request)
            items = getattr(response, field)
            if remaining is not None:
                items = items[:remaining]
                remaining -= len(items)
            yield from items
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


ROLES = ("reader", "writer", "maintainer", "admin")


def _hash_groups(indexes: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """Files to hash, in runs of about HASH_GROUP_BYTES: one task per small file costs more than hashing it
    (10 000 files of 4-64 KiB hash at 8 600/s one task each on 8 threads, at 18 700/s in one thread), while a
    large file alone in its task still hashes in parallel with the others."""
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for index, size in zip(indexes, sizes, strict=True):
        current.append(index)
        held += size
        if held >= HASH_GROUP_BYTES:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


def role_value(role: str | int) -> token_pb.Role:
    """A Role enum value from "reader" (or "ROLE_READER") or from the value itself."""
    if isinstance(role, int):
        return cast(token_pb.Role, role)
    key = role.upper() if role.upper().startswith("ROLE_") else f"ROLE_{role.upper()}"
    try:
        return cast(token_pb.Role, token_pb.Role.Value(key))
    except ValueError:
        raise MregError("INVALID_ARGUMENT", f"role must be one of {', '.join(ROLES)}, not {role!r}") from None


def _request(message_type: Callable[..., M], **fields: Any) -> M:
    """A request of ``message_type`` with ``fields``; a value its field cannot hold (an index beyond int64, a
    string for a number) is INVALID_ARGUMENT naming the argument, as the service would answer, rather than
    protobuf's bare ValueError or TypeError."""
    try:
        return message_type(**fields)
    except (ValueError, TypeError):
        for name, value in fields.items():
            try:
                message_type(**{name: value})
            except (ValueError, TypeError) as e:
                raise MregError("INVALID_ARGUMENT", f"{name}={value!r} does not fit the request: {e}") from None
        raise


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _kept_for_a_rerun(error: MregError) -> MregError:
    """A push's failure to reach the blob service (RESUMABLE_PUSH_FAILURES), saying a re-run resumes: whole blobs
    stored stay, and so does the part of each stream the service received (its upload id is in the cache), so a
    re-run sends only the rest."""
    return error.with_message(f"{error.message}; what was stored is kept: run the same push again to resume")


def _told_to(streams: StreamsWhileHashing, streamed: dict[int, int]) -> Callable[[int, str], None]:
    """Tells ``streams`` the digest of each file it streams (``streamed`` maps file indexes to its own)."""

    def hashed(index: int, sha256: str) -> None:
        if index in streamed:
            streams.hashed(streamed[index], sha256)

    return hashed


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    try:
        # allow_nan=False: JSON has no NaN or Infinity, and protobuf's JSON form cannot carry them.
        document = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise MregError("INVALID_ARGUMENT", f"metadata is not a JSON object: {e}") from e
    _refuse_inexact_integers(document, "metadata")
    message.update(document)
    return message


def _refuse_inexact_integers(value: Any, where: str) -> None:
    """Refuses an integer a double cannot hold exactly: it would be stored rounded, without a word."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_INTEGER_LIMIT:
        raise MregError(
            "INVALID_ARGUMENT",
            f"{where} is {value}: metadata numbers travel as JSON numbers (64-bit floats), exact only up to "
            f"2**53 = {EXACT_INTEGER_LIMIT}; store it as a string",
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_inexact_integers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _refuse_inexact_integers(item, f"{where}[{position}]")
