"""The ``mreg`` command line: push, pull, download, cache, show, update, ls, alias, link and serve.

Output is for people by default and a JSON document with ``--json``. Any failure prints
one line, ``mreg: error: CODE: message``, to stderr and exits with status 1 (never a
traceback); Ctrl-C exits with 130, a closed output pipe quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib.metadata
import json
import logging
import os
import re
import shlex
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import grpc

from mreg.client import editing, profiles
from mreg.client.cache import ContentCache, default_cache_dir
from mreg.client.channels import Credentials, open_channel
from mreg.client.errors import MregError, PushInterrupted, local_error
from mreg.client.registry import (
    DEFAULT_BLOB_ADDR,
    DEFAULT_METADATA_ADDR,
    ROLES,
    PushResult,
    Registry,
    role_name,
    struct_to_dict,
)
from mreg.client.snapshots import Snapshot, SnapshotCache, max_size_from_env, parse_size
from mreg.client.transfer import ProgressCallback
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import token_service_pb2 as token_pb

log = logging.getLogger(__name__)
# How many times in a row `mreg watch` reconnects to a service that is down before it gives up.
WATCH_RECONNECTS = 30

_STATE_NAMES = {
    pb.VERSION_STATE_PENDING: "pending",
    pb.VERSION_STATE_COMMITTED: "committed",
    pb.VERSION_STATE_DELETED: "deleted",
}


def version_json(version: pb.Version, *, with_manifest: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ref": version.name,
        "artifact": version.artifact,
        "type": version.type,
        "version": version.index if version.HasField("index") else None,
        "state": _STATE_NAMES.get(version.state, "unspecified"),
        "digest": version.digest,
        "aliases": list(version.aliases),
        "files": version.file_count,
        "size": version.size_bytes,
        "description": version.description,
        "tags": list(version.tags),
        "metadata": struct_to_dict(version.metadata),
        "run": version.run or None,
        "created": version.create_time.ToJsonString() if version.HasField("create_time") else None,
        "committed": version.commit_time.ToJsonString() if version.HasField("commit_time") else None,
    }
    if with_manifest:
        data["manifest"] = [
            {"path": e.path, "digest": e.digest.hash, "size": e.digest.size_bytes} for e in version.manifest
        ]
    return data


def link_json(link: pb.Link) -> dict[str, Any]:
    return {
        "ref": link.name,
        "registered_model": link.registered_model,
        "link_version": link.index,
        "aliases": list(link.aliases),
        "source_ref": link.version.name,
        "digest": link.version.digest,
    }


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class Output:
    """Prints results as JSON or as text, and decides whether to draw progress bars."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def result(self, data: Any, text: str) -> None:
        if self.as_json:
            json.dump(data, sys.stdout, indent=2, sort_keys=False)
            sys.stdout.write("\n")
        else:
            print(text)

    def progress(self, description: str) -> Callable[[int], ProgressCallback] | None:
        if self.as_json or self.quiet or not sys.stderr.isatty():
            return None

        def start(total: int) -> ProgressCallback:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description, leave=False)

            def advance(n: int) -> None:
                bar.update(n)

            return advance

        return start


def _credentials(args: argparse.Namespace) -> Credentials:
    """The environment's credentials (MREG_TOKEN, MREG_CA_CERT, ...), each overridden by its flag."""
    environ = dict(os.environ)
    for flag, variable in (
        (args.ca_cert, "MREG_CA_CERT"),
        (args.client_cert, "MREG_CLIENT_CERT"),
        (args.client_key, "MREG_CLIENT_KEY"),
    ):
        if flag is not None:
            environ[variable] = flag
    if args.tls:
        environ["MREG_TLS"] = "1"
    credentials = Credentials.from_env(environ)
    if (credentials.client_cert is None) != (credentials.client_key is None):
        raise MregError("INVALID_ARGUMENT", "--client-cert and --client-key go together: give both or neither")
    return credentials


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.connect(
        args.metadata_addr,
        args.blob_addr,
        entity=args.entity,
        project=args.project,
        parallel=args.parallel,
        use_cache=not args.no_cache,
        # Flags and environment first; the profile fills in what they leave unset.
        credentials=profiles.with_profile(_credentials(args), profiles.active(args.profile)),
        profile=args.profile,
    )


def cmd_push(args: argparse.Namespace, out: Output) -> None:
    metadata = _metadata_json(args.metadata or None)
    description = _description(args) or ""
    with _registry(args) as registry:
        result = registry.push(
            args.dir,
            args.ref,
            type=args.type,
            aliases=args.alias,
            metadata=metadata,
            description=description,
            tags=args.tag,
            link_to=args.link,
            create_registered_models=args.create,
            run=args.run,
            update_existing=args.update_existing,
            progress=out.progress("push"),
        )
    version = result.version
    data = {
        "ref": version.name,
        "version": version.index,
        "digest": version.digest,
        "aliases": list(version.aliases),
        "created": result.created,
        "files": result.files,
        "size": result.size_bytes,
        "uploaded_bytes": result.uploaded_bytes,
        "links": [link_json(link) for link in result.links],
    } | _push_unchanged(result)
    verb = "pushed" if result.created else "unchanged, still"
    lines = [
        f"{verb} {version.name} ({result.files} files, {_human_size(result.size_bytes)}, "
        f"{_human_size(result.uploaded_bytes)} uploaded)"
    ]
    if version.aliases:
        lines.append(f"  aliases: {', '.join(version.aliases)}")
    lines += [f"  linked as {link.name}" for link in result.links]
    if result.updated_existing:
        lines.append(f"  content unchanged: updated {', '.join(result.updated_existing)} of {version.name}")
    out.result(data, "\n".join(lines))


def cmd_pull(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        result = registry.pull(args.ref, args.dest, run=args.run, progress=out.progress("pull"))
    version = result.version
    data = {
        "ref": version.name,
        "version": version.index,
        "digest": version.digest,
        "dest": os.path.abspath(args.dest),
        "files": result.files,
        "size": result.size_bytes,
        "downloaded_bytes": result.downloaded_bytes,
    }
    if result.link is not None:
        data["link_ref"] = result.link.name
        data["link_version"] = result.link.index
    out.result(
        data,
        f"pulled {version.name} into {args.dest} ({result.files} files, {_human_size(result.size_bytes)})",
    )


def cmd_show(args: argparse.Namespace, out: Output) -> None:
    """A version (or a link and its version) with everything that describes it; a registered model's card too."""
    with _registry(args) as registry:
        try:
            resolution = registry.resolve(args.ref)
        except MregError as e:
            # A registered model without links names no version: show the model alone.
            model = _registered_model_named(registry, args.ref) if e.code == "NOT_FOUND" else None
            if model is None:
                raise
            out.result(registered_model_json(model), "\n".join(_registered_model_lines(model)))
            return
        version = resolution.version
        protected = set(registry.get_artifact(version.artifact).protected_aliases)
        model = registry.get_registered_model(resolution.link.registered_model) if resolution.HasField("link") else None
    data = version_json(version)
    data["protected_aliases"] = [a for a in version.aliases if a in protected]
    lines = [
        f"{version.name}  ({data['state']}, type {version.type})",
        f"  digest:      {version.digest}",
        f"  aliases:     {_aliases_text(version.aliases, protected)}",
        f"  tags:        {', '.join(version.tags) or '-'}",
        f"  run:         {version.run or '-'}",
        f"  size:        {_human_size(version.size_bytes)} in {version.file_count} files",
        f"  created:     {data['created']}",
        f"  committed:   {data['committed'] or '-'}",
    ]
    if data["metadata"]:
        lines.append(f"  metadata:    {json.dumps(data['metadata'], sort_keys=True)}")
    lines += _markdown_lines("description", version.description)
    if resolution.HasField("link"):
        link = resolution.link
        data.update(
            ref=link.name,
            link_version=link.index,
            link_aliases=list(link.aliases),
            source_ref=version.name,
            registered_model=link.registered_model,
        )
        model_protected = set(model.protected_aliases) if model is not None else set()
        lines.insert(
            0, f"{link.name} -> {version.name}  (link aliases: {_aliases_text(link.aliases, model_protected)})"
        )
    lines.append(f"  files:{'' if version.manifest else ' -'}")
    lines += [f"    {e.digest.hash[:12]}  {e.digest.size_bytes:>12}  {e.path}" for e in version.manifest]
    if model is not None:
        data["registered_model_card"] = registered_model_json(model)
        lines += _registered_model_lines(model)
    out.result(data, "\n".join(lines))


def cmd_ls(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        entity, project = registry.entity, registry.project  # flags, else env, else the profile
        target = args.target or (f"{entity}/{project}" if entity and project else "")
        if not target:
            raise MregError("INVALID_ARGUMENT", "name what to list, or set MREG_ENTITY and MREG_PROJECT")
        # The default entity/project names a project, never a collection: list it directly.
        rows, lines = _list_collection(registry, target) if args.target else (None, [])
        if rows is None:
            rows, lines = _list_project(registry, target)
    out.result(rows, "\n".join(lines) if lines else "(nothing)")


def _list_collection(registry: Registry, target: str) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Lists versions or links if ``target`` is a collection; (None, []) if it is not one."""
    if ":" in target:
        return None, []
    try:
        registry.get_artifact(target)
        versions = list(registry.list_versions(target))
        rows = [version_json(v, with_manifest=False) for v in versions]
        lines = [f"{v.name}  {_human_size(v.size_bytes):>10}  {', '.join(v.aliases)}" for v in versions]
        return rows, lines
    except MregError as e:
        if e.code not in ("NOT_FOUND", "INVALID_ARGUMENT"):
            raise
    try:
        registry.get_registered_model(target)
    except MregError as e:
        if e.code not in ("NOT_FOUND", "INVALID_ARGUMENT"):
            raise
        return None, []
    links = list(registry.list_links(target))
    return [link_json(link) for link in links], [
        f"{link.name} -> {link.version.name}  {', '.join(link.aliases)}" for link in links
    ]


def _list_project(registry: Registry, target: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for artifact in registry.list_artifacts(target):
        rows.append(
            {
                "name": artifact.name,
                "kind": "artifact",
                "type": artifact.type,
                "count": artifact.version_count,
            }
        )
        lines.append(f"{artifact.name}  artifact ({artifact.type}), {artifact.version_count} versions")
    for model in registry.list_registered_models(target):
        rows.append({"name": model.name, "kind": "registered_model", "type": model.type, "count": model.link_count})
        lines.append(f"{model.name}  registered model ({model.type}), {model.link_count} links")
    return rows, lines


def _expectation(text: str | None) -> tuple[int | None, bool]:
    if text is None:
        return None, False
    if text == "none":
        return None, True
    digits = text.removeprefix("v")
    if not digits.isdigit():
        raise MregError("INVALID_ARGUMENT", f"--expect takes vN, N or 'none', not {text!r}")
    return int(digits), False


def cmd_alias_set(args: argparse.Namespace, out: Output) -> None:
    expected_index, expect_unset = _expectation(args.expect)
    with _registry(args) as registry:
        response = registry.set_alias(args.ref, args.alias, expected_index=expected_index, expect_unset=expect_unset)
    data = {
        "collection": response.parent,
        "alias": response.alias.alias,
        "version": response.alias.index,
        "previous_version": response.previous_index if response.HasField("previous_index") else None,
    }
    moved = f" (was v{data['previous_version']})" if data["previous_version"] is not None else ""
    out.result(data, f"{response.parent}:{response.alias.alias} -> v{response.alias.index}{moved}")


def cmd_alias_rm(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        response = registry.delete_alias(args.collection, args.alias)
    data = {"collection": args.collection, "alias": args.alias, "previous_version": response.previous_index}
    out.result(data, f"removed {args.collection}:{args.alias} (was v{response.previous_index})")


def cmd_link(args: argparse.Namespace, out: Output) -> None:
    description = _description(args)
    if description is not None and not args.create:
        _usage_error(
            "link",
            "--description and --description-file write the card of a registered model --create creates; "
            f"edit an existing one with: mreg update {_quote(args.registered_model)} --description-file PATH",
        )
    with _registry(args) as registry:
        response = registry.link(
            args.ref, args.registered_model, args.alias, create=args.create, description=description or ""
        )
        if description is not None:
            _note_kept_card(registry, response.link.registered_model, description)
    data = link_json(response.link) | {"created": response.created}
    verb = "linked" if response.created else "already linked"
    aliases = f"  ({', '.join(response.link.aliases)})" if response.link.aliases else ""
    out.result(data, f"{verb} {response.link.version.name} as {response.link.name}{aliases}")


def cmd_delete(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        if args.collection:
            registry.delete_collection(args.ref)
            out.result({"deleted": args.ref, "kind": "collection"}, f"deleted {args.ref}")
            return
        if ":" not in args.ref:
            raise MregError(
                "INVALID_ARGUMENT", f"name the version to delete, e.g. {args.ref}:v3 (or pass --collection)"
            )
        target = registry.resolve(args.ref)
        if target.HasField("link"):
            name = registry.delete_link(args.ref).name
            out.result({"deleted": name, "kind": "link"}, f"deleted link {name}")
            return
        response = registry.delete_version(args.ref, force=args.force)
    data = {
        "deleted": response.version.name,
        "kind": "version",
        "removed_aliases": list(response.removed_aliases),
        "removed_links": list(response.removed_links),
    }
    removed = list(response.removed_aliases) + list(response.removed_links)
    out.result(data, f"deleted {response.version.name}" + (f" (removed {', '.join(removed)})" if removed else ""))


def cmd_versions(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        versions = list(registry.list_versions(args.ref, filter=args.filter, order_by=args.order_by))
    rows = [version_json(v, with_manifest=False) for v in versions]
    lines = [
        f"{v.name}  {_human_size(v.size_bytes):>10}  {', '.join(v.aliases) or '-'}  "
        f"{json.dumps(struct_to_dict(v.metadata), sort_keys=True) if v.metadata.fields else ''}".rstrip()
        for v in versions
    ]
    out.result(rows, "\n".join(lines) if lines else "(no versions match)")


def cmd_alias_history(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        events = list(registry.alias_history(args.collection, args.alias))
    rows = [event_json(e) for e in events]
    lines = [
        f"#{e.sequence}  {e.create_time.ToJsonString()}  {e.kind:<14} "
        f"{_index_of(e.before)} -> {_index_of(e.after)}  by {e.actor or '?'}"
        for e in events
    ]
    out.result(rows, "\n".join(lines) if lines else "(no history)")


def _index_of(state: Any) -> str:
    return f"v{int(state['index'])}" if state is not None and "index" in state.fields else "-"


def cmd_alias_protect(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        protected = registry.set_alias_protection(args.collection, args.alias, not args.off)
    out.result(
        {"collection": args.collection, "protected_aliases": protected}, f"protected: {', '.join(protected) or '-'}"
    )


def cmd_lineage(args: argparse.Namespace, out: Output) -> None:
    if bool(args.ref) == bool(args.run):
        raise MregError("INVALID_ARGUMENT", "give a version reference or --run RUN")
    with _registry(args) as registry:
        if args.record:
            recorded = registry.record_run_inputs(args.run, args.record)
            out.result({"run": args.run, "inputs": recorded}, f"{args.run} used {', '.join(recorded)}")
            return
        lineage = registry.lineage(ref=args.ref or "", run=args.run or "")
    data = {
        "producer_run": lineage.producer_run or None,
        "consumer_runs": list(lineage.consumer_runs),
        "inputs": list(lineage.inputs),
        "outputs": list(lineage.outputs),
    }
    if args.ref:
        text = f"produced by: {lineage.producer_run or '(unknown)'}\nused by: {', '.join(lineage.consumer_runs) or '-'}"
    else:
        text = f"inputs: {', '.join(lineage.inputs) or '-'}\noutputs: {', '.join(lineage.outputs) or '-'}"
    out.result(data, text)


def event_json(event: pb.Event) -> dict[str, Any]:
    return {
        "sequence": event.sequence,
        "kind": event.kind,
        "resource": event.resource,
        "before": struct_to_dict(event.before) if event.HasField("before") else None,
        "after": struct_to_dict(event.after) if event.HasField("after") else None,
        "actor": event.actor,
        "time": event.create_time.ToJsonString(),
    }


def cmd_watch(args: argparse.Namespace, out: Output) -> None:
    """Prints one line (one JSON object with --json) per event until interrupted or --limit.

    When the stream breaks (the server restarts, the network drops) it reconnects after the
    last sequence it saw, with backoff, so no event is missed or printed twice.
    """
    seen = 0
    cursor, from_now = args.since, args.from_now
    failures = 0
    with _registry(args) as registry:
        while True:
            try:
                for message in registry.watch(cursor, from_now=from_now, resource_prefix=args.prefix):
                    failures = 0
                    cursor, from_now = message.sequence, False
                    if not message.HasField("event"):
                        continue
                    _print_event(message.event, out)
                    seen += 1
                    if args.limit and seen >= args.limit:
                        return
                return
            except MregError as e:
                if e.code != "UNAVAILABLE" or failures >= WATCH_RECONNECTS:
                    raise
                failures += 1
                delay = min(10.0, 0.5 * 2**failures)
                print(f"mreg: watch: {e.message}; reconnecting after #{cursor} in {delay:.0f} s", file=sys.stderr)
                time.sleep(delay)


def _print_event(event: Any, out: Output) -> None:
    if out.as_json:
        print(json.dumps(event_json(event)), flush=True)
        return
    change = f"{_index_of(event.before)} -> {_index_of(event.after)}" if event.kind.startswith("alias") else ""
    print(f"#{event.sequence} {event.kind} {event.resource} {change}".rstrip(), flush=True)


def _installed_version() -> str:
    try:
        return importlib.metadata.version("mreg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def cmd_retention_set(args: argparse.Namespace, out: Output) -> None:
    keep_last = None if args.keep_last is None else args.keep_last
    with _registry(args) as registry:
        response = registry.set_retention(args.artifact, keep_last)
    deleted = [f"v{i}" for i in response.deleted_indexes]
    data = {"artifact": response.artifact.name, "keep_last": keep_last, "deleted": list(response.deleted_indexes)}
    policy = f"keep the last {keep_last}" if keep_last is not None else "keep everything"
    out.result(data, f"{response.artifact.name}: {policy}; deleted {', '.join(deleted) or 'nothing'}")


def cmd_gc(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        report = registry.collect_garbage(args.grace_seconds, args.dry_run)
    data = {
        "examined_blobs": report.examined_blobs,
        "referenced_blobs": report.referenced_blobs,
        "deleted_blobs": report.deleted_blobs,
        "deleted_bytes": report.deleted_bytes,
        "removed_upload_parts": report.removed_upload_parts,
        "dry_run": args.dry_run,
    }
    verb = "would delete" if args.dry_run else "deleted"
    out.result(
        data,
        f"{verb} {report.deleted_blobs} blobs ({_human_size(report.deleted_bytes)}); "
        f"kept {report.referenced_blobs} referenced; removed {report.removed_upload_parts} stale upload parts",
    )


def cmd_serve(args: argparse.Namespace, out: Output) -> None:
    try:
        from mreg.client.serve import serve
    except ModuleNotFoundError as e:
        # A client-only install (`pip install mreg`) lacks the services' libraries.
        raise MregError(
            "FAILED_PRECONDITION",
            f"mreg serve needs the server extra, which is not installed ({e.name} is missing): "
            "pip install 'mreg[server]' (from a clone: pip install '.[server]')",
        ) from e

    from mreg.server_runtime.transport import TransportConfigError

    try:
        serve(
            args.data_dir,
            args.host,
            args.metadata_port,
            args.blob_port,
            args.database_url,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            insecure=args.insecure,
            auth=args.auth,
        )
    except TransportConfigError as e:
        # A setting the services refuse to start with is a usage error, as for `python -m mreg.*_service`.
        print(f"mreg serve: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e


# Model cards and editing after push ------------------------------------------------------------


class UsageError(Exception):
    """A command line that asks for something the command cannot do: exit status 2, like argparse's."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(message)
        self.command = command


def _usage_error(command: str, message: str) -> NoReturn:
    raise UsageError(command, message)


def _quote(text: str) -> str:
    return shlex.quote(text)


def _add_description_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--description", metavar="TEXT", help=f"{what}, at most 64 KiB of UTF-8")
    group.add_argument(
        "--description-file", metavar="PATH", help="read the description from a file, e.g. README.md ('-': stdin)"
    )


def _description(args: argparse.Namespace) -> str | None:
    """--description, or the text of --description-file (checked, 64 KiB at most), or None when neither is given."""
    if args.description_file is not None:
        return editing.read_description_file(args.description_file)
    if args.description is not None:
        return editing.check_description(args.description, "--description")
    return None


def _metadata_json(text: str | None, option: str = "--metadata") -> dict[str, Any] | None:
    """The JSON object of --metadata, or None when it is not given."""
    if text is None:
        return None

    def reject_constant(name: str) -> Any:  # json.loads accepts NaN and Infinity; JSON and Struct do not
        raise MregError("INVALID_ARGUMENT", f"{option} is not valid JSON: {name} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        raise MregError("INVALID_ARGUMENT", f"{option} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise MregError("INVALID_ARGUMENT", f"{option} is nested too deeply") from e
    if not isinstance(value, dict):
        raise MregError("INVALID_ARGUMENT", f"{option} must be a JSON object")
    return value


def _push_unchanged(result: PushResult) -> dict[str, Any]:
    """The --json fields of a push that kept the latest version, and the note on stderr when it ignored things."""
    version = result.version
    if result.ignored_changes:
        options = {"description": "--description-file ...", "tags": "--add-tag ...", "metadata": "--metadata ..."}
        print(
            f"mreg: note: content unchanged: {version.name} kept its {' and '.join(result.ignored_changes)}, "
            f"not this push's; use mreg update {_quote(version.name)} "
            f"{' '.join(options[name] for name in result.ignored_changes)} or push --update-existing",
            file=sys.stderr,
        )
    return {
        "ignored_changes": list(result.ignored_changes),
        "unchanged_metadata_ignored": bool(result.ignored_changes),
        "updated_existing": list(result.updated_existing),
    }


def _note_kept_card(registry: Registry, name: str, description: str) -> None:
    """A note on stderr when link --create found the registered model existing with another card."""
    model = registry.get_registered_model(name)
    if model.description != description:
        print(
            f"mreg: note: {name} exists and kept its card; replace it with: mreg update {_quote(name)} "
            "--description-file PATH",
            file=sys.stderr,
        )


def _registered_model_named(registry: Registry, ref: str) -> pb.RegisteredModel | None:
    """The registered model ``ref`` names when it is one (no selector), else None."""
    if ":" in ref:
        return None
    try:
        return registry.get_registered_model(ref)
    except MregError as e:
        if e.code == "NOT_FOUND" or e.reason == "COLLECTION_KIND_MISMATCH":
            return None
        raise


def registered_model_json(model: pb.RegisteredModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "kind": "registered_model",
        "type": model.type,
        "description": model.description,
        "tags": list(model.tags),
        "links": model.link_count,
        "aliases": {a.alias: a.index for a in model.aliases},
        "protected_aliases": list(model.protected_aliases),
        "created": _time(model, "create_time"),
    }


def _aliases_text(aliases: Sequence[str], protected: set[str]) -> str:
    marked = [f"{a} (protected)" if a in protected else a for a in aliases]
    return ", ".join(marked) or "-"


def _markdown_lines(label: str, text: str) -> list[str]:
    """A description (Markdown) as text, indented under its label; nothing when it is empty."""
    if not text:
        return []
    return [f"  {label}:"] + [f"    {line}".rstrip() for line in text.splitlines()]


def _registered_model_lines(model: pb.RegisteredModel) -> list[str]:
    aliases = ", ".join(
        f"{a.alias} -> v{a.index}" + (" (protected)" if a.alias in model.protected_aliases else "")
        for a in model.aliases
    )
    return [
        f"registered model {model.name}  (type {model.type}, {model.link_count} links)",
        f"  aliases:     {aliases or '-'}",
        f"  tags:        {', '.join(model.tags) or '-'}",
        f"  created:     {_time(model, 'create_time')}",
        *_markdown_lines("card", model.description),
    ]


def _description_change(before: str, after: str) -> list[str]:
    if before == after:
        return []
    if not after:
        return ["  description: cleared"]
    return [f"  description: {'set' if not before else 'replaced'} ({len(after.encode())} bytes)"]


def cmd_update(args: argparse.Namespace, out: Output) -> None:
    """Edits a version's description, tags and metadata, or a registered model's card and tags."""
    edits: list[editing.MetadataEdit] = args.metadata_edits
    metadata_options = args.metadata is not None or bool(edits) or args.replace_metadata
    if args.replace_metadata and args.metadata is None and not any(kind == "set" for kind, _, _ in edits):
        _usage_error("update", "--replace-metadata needs the new metadata: --metadata JSON or --set KEY=VALUE")
    if args.replace_metadata and any(kind == "unset" for kind, _, _ in edits):
        _usage_error(
            "update", "--unset removes a key from metadata that is merged; it means nothing with --replace-metadata"
        )
    given = args.description is not None or args.description_file is not None or args.add_tag or args.remove_tag
    if not (given or metadata_options):
        _usage_error(
            "update",
            "nothing to update: give --description(-file), --add-tag, --remove-tag, --metadata, --set or --unset",
        )
    description = _description(args)  # read and checked before anything is sent
    patch = editing.metadata_patch(_metadata_json(args.metadata), edits)
    with _registry(args) as registry:
        model = _registered_model_named(registry, args.ref)
        if model is not None:
            if metadata_options:
                _usage_error(
                    "update",
                    f"{args.ref} is a registered model, which has no metadata: --metadata, --set, --unset and "
                    "--replace-metadata edit versions (name one, e.g. "
                    f"{_quote(args.ref + ':production')})",
                )
            updated = registry.update_registered_model(
                model.name, description=description, add_tags=args.add_tag, remove_tags=args.remove_tag
            )
            changes = _description_change(model.description, updated.description)
            if set(model.tags) != set(updated.tags):
                changes.append(f"  tags: {' '.join(editing.tag_changes(model.tags, updated.tags))}")
            changed = [line.split(":")[0].strip() for line in changes]
            header = f"updated registered model {updated.name}" if changes else f"nothing changed: {updated.name}"
            out.result(registered_model_json(updated) | {"changed": changed}, "\n".join([header, *changes]))
            return
        before = registry.get_version(args.ref)
        # The canonical vN: an alias that moves meanwhile cannot redirect the edit to another version.
        after = registry.update_version(
            before.name,
            description=description,
            add_tags=args.add_tag,
            remove_tags=args.remove_tag,
            metadata=patch,
            replace_metadata=args.replace_metadata,
        )
    changes = _description_change(before.description, after.description)
    if set(before.tags) != set(after.tags):
        changes.append(f"  tags: {' '.join(editing.tag_changes(before.tags, after.tags))}")
    metadata_changes = editing.metadata_changes(struct_to_dict(before.metadata), struct_to_dict(after.metadata))
    if metadata_changes:
        changes.append(f"  metadata: {', '.join(metadata_changes)}")
    changed = [line.split(":")[0].strip() for line in changes]
    header = f"updated {after.name}" if changes else f"nothing changed: {after.name}"
    out.result(version_json(after, with_manifest=False) | {"changed": changed}, "\n".join([header, *changes]))


def _add_update_command(commands: Any, common: argparse.ArgumentParser) -> None:
    update = commands.add_parser(
        "update",
        parents=[common],
        help="edit a version's description, tags and metadata, or a registered model's card and tags",
        description="Edits what describes a version (its files never change) or a registered model. "
        "REF with a selector, or an artifact, names a version; a registered model's name without a selector "
        "names the registered model itself.",
        epilog="examples:\n"
        "  mreg update acme/vision/resnet:v3 --set train.lr=0.1 --unset notes --add-tag fp16\n"
        "  mreg update acme/vision/resnet:best --metadata '{\"accuracy\": 0.93}' --replace-metadata\n"
        '  mreg update "acme/model-registry/Classifier" --description-file README.md --add-tag prod',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    update.add_argument(
        "ref", metavar="REF", help="ARTIFACT[:vN|:ALIAS], REGISTERED_MODEL:vN|:ALIAS, or REGISTERED_MODEL"
    )
    _add_description_options(update, "the new description (Markdown; '' clears it)")
    update.add_argument("--metadata", metavar="JSON", help="a JSON object merged into the metadata (RFC 7386)")
    update.add_argument("--replace-metadata", action="store_true", help="replace the metadata whole instead of merging")
    update.add_argument(
        "--set",
        dest="metadata_edits",
        action="append",
        type=_edit_type(editing.parse_set),
        default=[],
        metavar="KEY=VALUE",
        help="set a metadata key; VALUE is JSON when it parses (0.1, true, null, [1]) else a string; "
        "dotted keys nest (train.lr=0.1)",
    )
    update.add_argument(
        "--unset",
        dest="metadata_edits",
        action="append",
        type=_edit_type(editing.parse_unset),
        metavar="KEY",
        help="remove a metadata key (dotted keys nest)",
    )
    update.add_argument("--add-tag", action="append", default=[], metavar="TAG")
    update.add_argument("--remove-tag", action="append", default=[], metavar="TAG")
    update.set_defaults(handler=cmd_update)


def _edit_type(parse: Callable[[str], editing.MetadataEdit]) -> Callable[[str], editing.MetadataEdit]:
    """An argparse type: a malformed --set or --unset is a usage error (exit 2) naming the problem."""

    def convert(text: str) -> editing.MetadataEdit:
        try:
            return parse(text)
        except MregError as e:
            raise argparse.ArgumentTypeError(e.message) from None

    return convert


# Tokens, identity and profiles ---------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Secrets a command handled, kept out of every error line (with MREG_TOKEN's and the profiles').
_SECRETS: set[str] = set()


def parse_duration(text: str) -> timedelta:
    """30d, 12h, 90m or 3600s as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"a duration is a positive number and a unit (30d, 12h, 90m, 3600s), not {text!r}"
        )
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def _time(message: Any, field: str) -> str | None:
    return getattr(message, field).ToJsonString() if message.HasField(field) else None


def token_json(token: token_pb.Token) -> dict[str, Any]:
    return {
        "name": token.name,
        "role": role_name(token.role),
        "scope": token.scope,
        "created": _time(token, "create_time"),
        "expires": _time(token, "expire_time"),
        "revoked": _time(token, "revoke_time"),
        "creator": token.creator,
    }


def cmd_token_create(args: argparse.Namespace, out: Output) -> None:
    scope = args.scope if args.scope is not None else ("*" if args.role == "admin" else None)
    if scope is None:
        raise MregError("INVALID_ARGUMENT", "--scope ENTITY[/PROJECT] is required (admin tokens take '*')")
    with _registry(args) as registry:
        token, secret = registry.create_token(args.name, args.role, scope, args.expires)
    _SECRETS.add(secret)
    data: dict[str, Any] = {"name": token.name, "token": secret, "role": role_name(token.role), "scope": token.scope}
    expires = _time(token, "expire_time")
    if expires is not None:
        data["expires"] = expires
    if out.as_json:
        out.result(data, "")
        return
    print(secret, flush=True)
    until = f", expires {expires}" if expires else ""
    print(
        f"created token {token.name} ({data['role']} on {token.scope}{until}); "
        "the secret above is shown only this once",
        file=sys.stderr,
    )


def cmd_token_ls(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        tokens = list(registry.list_tokens())
    rows = [token_json(t) for t in tokens]
    lines = [
        f"{r['name']}  {r['role']:<10} {r['scope']:<20} created {r['created']}  "
        f"expires {r['expires'] or 'never'}  {'revoked ' + r['revoked'] if r['revoked'] else 'active'}"
        for r in rows
    ]
    out.result(rows, "\n".join(lines) if lines else "(no tokens)")


def cmd_token_revoke(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        token = registry.revoke_token(args.name)
    out.result(token_json(token), f"revoked {token.name}; both services refuse it within 60 seconds")


def caller_json(response: token_pb.GetCallerResponse) -> dict[str, Any]:
    token = response.token
    return {
        "name": token.name,
        "role": role_name(token.role),
        "scope": token.scope,
        "expires": _time(token, "expire_time"),
        "authentication_enabled": response.authentication_enabled,
    }


def _caller_text(data: dict[str, Any]) -> str:
    text = f"{data['name'] or '(anonymous)'}  {data['role']} on {data['scope'] or '*'}"
    if data["expires"]:
        text += f", expires {data['expires']}"
    return text if data["authentication_enabled"] else text + " (authentication is off)"


def cmd_whoami(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        data = caller_json(registry.whoami())
    out.result(data, _caller_text(data))


def _read_token(args: argparse.Namespace) -> str:
    """--token, else a line from stdin when it is piped, else a prompt that does not echo."""
    if args.token:
        token = args.token
    elif not sys.stdin.isatty():
        token = sys.stdin.readline()
    else:
        token = getpass.getpass("mreg token: ")
    token = token.strip()
    if not token:
        raise MregError("INVALID_ARGUMENT", "no token given (pass --token, pipe it on stdin, or type it)")
    _SECRETS.add(token)
    return token


def _profile_name(args: argparse.Namespace) -> str:
    return profiles.selected_name(args.profile) or profiles.DEFAULT_PROFILE


def cmd_login(args: argparse.Namespace, out: Output) -> None:
    """Checks a token with GetCaller, then saves it, the addresses and defaults as a profile."""
    name = _profile_name(args)
    previous = profiles.load_all().get(name) or profiles.Profile()
    token = _read_token(args)
    ca_cert = getattr(args, "ca_cert", None) or os.environ.get("MREG_CA_CERT") or previous.ca_cert
    profile = profiles.Profile(
        metadata_addr=args.metadata_addr
        or os.environ.get("MREG_METADATA_ADDR")
        or previous.metadata_addr
        or DEFAULT_METADATA_ADDR,
        blob_addr=args.blob_addr or os.environ.get("MREG_BLOB_ADDR") or previous.blob_addr or DEFAULT_BLOB_ADDR,
        entity=args.entity or previous.entity,
        project=args.project or previous.project,
        ca_cert=str(Path(ca_cert).expanduser().resolve()) if ca_cert else None,
        token=token,
    )
    credentials = replace(Credentials.from_env(), token=token, ca_cert=profile.credentials().ca_cert)
    assert profile.metadata_addr is not None and profile.blob_addr is not None
    registry = Registry(
        open_channel(profile.metadata_addr, credentials), open_channel(profile.blob_addr, credentials), use_cache=False
    )
    with registry:
        data = caller_json(registry.whoami())  # a bad token fails here, before anything is written
    path = profiles.save(name, profile)
    data.update(profile=name, path=str(path), metadata_addr=profile.metadata_addr, blob_addr=profile.blob_addr)
    out.result(data, f"logged in as {_caller_text(data)}; profile {name!r} saved in {path}")


def cmd_logout(args: argparse.Namespace, out: Output) -> None:
    name = _profile_name(args)
    if not profiles.remove(name):
        raise MregError("NOT_FOUND", f"no profile named {name!r} in {profiles.profiles_path()}")
    out.result({"profile": name, "removed": True}, f"removed profile {name!r}")


def _add_profile_options(common: argparse.ArgumentParser) -> None:
    common.add_argument(
        "--profile", default=None, help="the profile mreg login saved to use (env MREG_PROFILE; default: 'default')"
    )
    # Addresses left unset fall back to MREG_*_ADDR, then the profile, then the defaults (Registry.connect).
    common.set_defaults(metadata_addr=None, blob_addr=None)


def _add_token_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    token = commands.add_parser("token", help="create, list and revoke tokens (admin)")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_commands.add_parser(
        "create", parents=[common], help="create a token and print its secret (shown only once)"
    )
    create.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'; the actor its changes are recorded as")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--scope", metavar="ENTITY[/PROJECT]", help="where the role applies ('*' for admin, its default)"
    )
    create.add_argument("--expires", type=parse_duration, metavar="DURATION", help="e.g. 30d, 12h, 90m, 3600s")
    create.set_defaults(handler=cmd_token_create)
    ls = token_commands.add_parser("ls", parents=[common], help="list tokens (never their secrets)")
    ls.set_defaults(handler=cmd_token_ls)
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token by name")
    revoke.add_argument("name")
    revoke.set_defaults(handler=cmd_token_revoke)

    whoami = commands.add_parser("whoami", parents=[common], help="the token's name, role and scope")
    whoami.set_defaults(handler=cmd_whoami)

    login = commands.add_parser(
        "login", parents=[common], help="check a token and save it with the addresses as a profile"
    )
    login.add_argument(
        "--token", help="the token (default: read from stdin when piped, else prompted for without echo)"
    )
    if not any("--ca-cert" in action.option_strings for action in login._actions):
        login.add_argument("--ca-cert", metavar="PATH", help="the CA certificate (PEM) to trust (env MREG_CA_CERT)")
    login.set_defaults(handler=cmd_login)
    logout = commands.add_parser("logout", parents=[common], help="remove a saved profile")
    logout.set_defaults(handler=cmd_logout)


def _redact(message: str) -> str:
    """``message`` without any token this process knows of (MREG_TOKEN, the profiles', those it handled)."""
    secrets = set(_SECRETS)
    if os.environ.get("MREG_TOKEN"):
        secrets.add(os.environ["MREG_TOKEN"])
    with contextlib.suppress(Exception):
        secrets.update(p.token for p in profiles.load_all().values() if p.token)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "<token>")
    return message


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--metadata-addr", default=os.environ.get("MREG_METADATA_ADDR", DEFAULT_METADATA_ADDR))
    common.add_argument("--blob-addr", default=os.environ.get("MREG_BLOB_ADDR", DEFAULT_BLOB_ADDR))
    common.add_argument("--entity", default=os.environ.get("MREG_ENTITY"), help="default entity (env MREG_ENTITY)")
    common.add_argument("--project", default=os.environ.get("MREG_PROJECT"), help="default project (env MREG_PROJECT)")
    common.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--parallel", type=int, default=8, help="parallel transfer streams (default 8)")
    common.add_argument(
        "--no-cache", action="store_true", help="skip the local hash and content caches (env MREG_CACHE_DIR)"
    )
    common.add_argument(
        "--ca-cert", metavar="PEM", help="use TLS, trusting only these CA certificates (env MREG_CA_CERT)"
    )
    common.add_argument(
        "--client-cert", metavar="PEM", help="present this client certificate, for mutual TLS (env MREG_CLIENT_CERT)"
    )
    common.add_argument("--client-key", metavar="PEM", help="the private key of --client-cert (env MREG_CLIENT_KEY)")
    common.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's CA certificates (env MREG_TLS=1)"
    )

    _add_profile_options(common)

    parser = argparse.ArgumentParser(prog="mreg", description="mreg: a model registry for training clusters")
    parser.add_argument("--version", action="version", version=f"mreg {_installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser("push", parents=[common], help="upload a directory as a new version")
    push.add_argument("dir")
    push.add_argument("ref", help="[[entity/]project/]artifact")
    push.add_argument("--type", default="model")
    push.add_argument("--alias", action="append", default=[])
    push.add_argument("--metadata", help="a JSON object, e.g. '{\"accuracy\": 0.91}'")
    _add_description_options(push, "the version's description (Markdown)")
    push.add_argument("--tag", action="append", default=[])
    push.add_argument(
        "--link", action="append", default=[], metavar="REGISTERED_MODEL", help="link into this registered model"
    )
    push.add_argument("--create", action="store_true", help="create --link registered models that do not exist")
    push.add_argument("--run", default="", help="the run that produced this version (lineage)")
    push.add_argument(
        "--update-existing",
        action="store_true",
        help="when the content equals the latest version's, give that version the description, tags and "
        "metadata asked for (without it they are ignored, with a note on stderr)",
    )
    push.set_defaults(handler=cmd_push)

    pull = commands.add_parser("pull", parents=[common], help="download a version, verified")
    pull.add_argument("ref")
    pull.add_argument("dest")
    pull.add_argument("--run", default="", help="record that this run used the version (lineage)")
    pull.set_defaults(handler=cmd_pull)

    show = commands.add_parser("show", parents=[common], help="a version's (or link's) details and manifest")
    show.add_argument("ref")
    show.set_defaults(handler=cmd_show)

    ls = commands.add_parser("ls", parents=[common], help="list a project, an artifact or a registered model")
    ls.add_argument("target", nargs="?", metavar="ENTITY/PROJECT | ARTIFACT | REGISTERED_MODEL")
    ls.set_defaults(handler=cmd_ls)

    alias = commands.add_parser("alias", help="set or remove aliases")
    alias_commands = alias.add_subparsers(dest="alias_command", required=True, metavar="COMMAND")
    alias_set = alias_commands.add_parser("set", parents=[common], help="point ALIAS at the version REF names")
    alias_set.add_argument("ref")
    alias_set.add_argument("alias")
    alias_set.add_argument(
        "--expect", metavar="vN|none", help="move only if the alias names vN now (or is unset): a safe promotion"
    )
    alias_set.set_defaults(handler=cmd_alias_set)
    alias_rm = alias_commands.add_parser("rm", parents=[common], help="remove ALIAS from COLLECTION")
    alias_rm.add_argument("collection")
    alias_rm.add_argument("alias")
    alias_rm.set_defaults(handler=cmd_alias_rm)
    history = alias_commands.add_parser("history", parents=[common], help="who moved ALIAS of COLLECTION, when")
    history.add_argument("collection")
    history.add_argument("alias")
    history.set_defaults(handler=cmd_alias_history)
    protect = alias_commands.add_parser("protect", parents=[common], help="mark ALIAS of COLLECTION protected")
    protect.add_argument("collection")
    protect.add_argument("alias")
    protect.add_argument("--off", action="store_true", help="unprotect instead")
    protect.set_defaults(handler=cmd_alias_protect)

    delete = commands.add_parser("delete", parents=[common], help="delete a version, a link or an empty collection")
    delete.add_argument("ref", help="ARTIFACT:vN, REGISTERED_MODEL:vN, or a collection with --collection")
    delete.add_argument("--force", action="store_true", help="also remove the version's aliases and links")
    delete.add_argument("--collection", action="store_true", help="delete the (empty) collection REF")
    delete.set_defaults(handler=cmd_delete)

    versions = commands.add_parser("versions", parents=[common], help="search an artifact's versions")
    versions.add_argument("ref", help="the artifact")
    versions.add_argument("--filter", default="", help="e.g. 'metadata.val_loss < 0.2 AND tag = \"fp16\"'")
    versions.add_argument("--order-by", default="", help="e.g. 'metadata.val_loss asc' (default: index desc)")
    versions.set_defaults(handler=cmd_versions)

    lineage = commands.add_parser("lineage", parents=[common], help="which run made a version, which runs used it")
    lineage.add_argument("ref", nargs="?")
    lineage.add_argument("--run", help="show (or with --record, add to) a run's inputs and outputs")
    lineage.add_argument("--record", nargs="+", metavar="REF", help="record that --run used these versions")
    lineage.set_defaults(handler=cmd_lineage)

    watch = commands.add_parser("watch", parents=[common], help="stream change events")
    watch.add_argument("--since", type=int, default=0, metavar="CURSOR", help="replay events after this sequence")
    watch.add_argument("--from-now", action="store_true", help="skip the replay")
    watch.add_argument(
        "--prefix",
        default="",
        help="only resources under this prefix, in whole path segments "
        "(acme/vision/resnet matches resnet:v3, not resnet-large)",
    )
    watch.add_argument("--limit", type=int, default=0, help="stop after this many events")
    watch.set_defaults(handler=cmd_watch)

    retention = commands.add_parser("retention", help="per-artifact retention policies")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True, metavar="COMMAND")
    retention_set = retention_commands.add_parser(
        "set", parents=[common], help="keep the last N versions plus every version with an alias or link"
    )
    retention_set.add_argument("artifact")
    group = retention_set.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--keep-last", type=int, metavar="N", help="N >= 1: the latest version, and anything aliased or linked, stays"
    )
    group.add_argument("--none", action="store_true", help="remove the policy")
    retention_set.set_defaults(handler=cmd_retention_set)

    link = commands.add_parser("link", parents=[common], help="link a version into a registered model")
    link.add_argument("ref")
    link.add_argument("registered_model")
    link.add_argument("--alias", action="append", default=[])
    link.add_argument(
        "--create",
        action="store_true",
        help="create the registered model if it does not exist (without it, a missing one is NOT_FOUND)",
    )
    _add_description_options(link, "with --create: the new registered model's card (Markdown)")
    link.set_defaults(handler=cmd_link)

    gc = commands.add_parser("gc", parents=[common], help="delete blob content no version references")
    gc.add_argument("--grace-seconds", type=int, help="keep content used more recently (default one day)")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.set_defaults(handler=cmd_gc)

    serve = commands.add_parser("serve", parents=[common], help="run both services on SQLite and local disk")
    serve.add_argument("--data-dir", default=os.environ.get("MREG_DATA_DIR", ".mreg"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--metadata-port", type=int, default=50051)
    serve.add_argument("--blob-port", type=int, default=50052)
    serve.add_argument("--database-url", default=os.environ.get("MREG_DATABASE_URL"), help="default: SQLite in DIR")
    serve.add_argument(
        "--auth",
        action="store_true",
        default=os.environ.get("MREG_AUTH", "").lower() in ("1", "true", "yes", "on"),
        help="require tokens; the first start writes an admin token to DIR/admin.token (env MREG_AUTH=1)",
    )
    serve.add_argument(
        "--tls-cert",
        default="",
        metavar="PEM",
        help="both services serve TLS with this certificate chain (needs --tls-key); it must name --host "
        "(localhost when --host is 0.0.0.0), and the metadata service trusts it to reach the blob service",
    )
    serve.add_argument("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca",
        default="",
        metavar="PEM",
        help="require client certificates issued by these CAs (mutual TLS); the metadata service presents "
        "--tls-cert to the blob service, so that certificate must be issued by them too",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host although callers are not authenticated",
    )
    serve.set_defaults(handler=cmd_serve)
    _add_token_commands(commands, common)
    _add_update_command(commands, common)
    _add_download_commands(commands, common)
    return parser


# Download and the snapshot cache ------------------------------------------------------------


def _snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "ref": snapshot.ref,
        "artifact": snapshot.artifact,
        "version": snapshot.version,
        "digest": snapshot.digest,
        "path": str(snapshot.path),
        "files": snapshot.files,
        "size": snapshot.size_bytes,
        "last_used": snapshot.last_used.isoformat(timespec="seconds"),
    }


def cmd_download(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        result = registry.download_snapshot(args.ref, progress=out.progress("download"))
    snapshot = result.snapshot
    data = {
        "path": str(snapshot.path),
        "ref": snapshot.ref,
        "requested": args.ref,
        "version": snapshot.version,
        "digest": snapshot.digest,
        "files": snapshot.files,
        "size": snapshot.size_bytes,
        "from_cache": result.from_cache,
        "downloaded_bytes": result.downloaded_bytes,
    }
    # Only the path on stdout, so `cd $(mreg download REF)` works.
    out.result(data, str(snapshot.path))


def _open_snapshot_cache() -> SnapshotCache:
    """The snapshot cache under MREG_CACHE_DIR, without connecting to any service."""
    root = default_cache_dir()
    return SnapshotCache(root, ContentCache(root), max_size_from_env())


def _ago(moment: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit} ago"
    return f"{seconds}s ago"


def cmd_cache_ls(args: argparse.Namespace, out: Output) -> None:
    cache = _open_snapshot_cache()
    try:
        snapshots = list(reversed(cache.list()))  # most recently used first
        total = cache.total_size()
        limit = cache.max_size
    finally:
        cache.content.close()
        cache.close()
    rows = [("REF", "VERSION", "FILES", "SIZE", "LAST USED")] + [
        (s.artifact, f"v{s.version}", str(s.files), _human_size(s.size_bytes), _ago(s.last_used)) for s in snapshots
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = (2, 3)  # FILES and SIZE align right
    lines = [
        "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    limit_text = _human_size(limit) if limit is not None else "none"
    lines.append(
        f"{len(snapshots)} snapshots; {_human_size(total)} on disk in {default_cache_dir()} "
        f"(shared content counted once; limit {limit_text})"
    )
    out.result([_snapshot_json(s) for s in snapshots], "\n".join(lines if snapshots else lines[-1:]))


def cmd_cache_prune(args: argparse.Namespace, out: Output) -> None:
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    cache = _open_snapshot_cache()
    try:
        if max_size is None and args.older_than is None:
            max_size = cache.max_size  # no option: enforce the configured limit
        plan = cache.prune(max_size=max_size, older_than=args.older_than, dry_run=args.dry_run)
    finally:
        cache.content.close()
        cache.close()
    data = {
        "dry_run": args.dry_run,
        "removed": [_snapshot_json(s) for s in plan.snapshots],
        "removed_content": {"files": len(plan.content), "size": sum(size for _, size in plan.content)},
        "freed": plan.freed_bytes,
        "size_before": plan.size_before,
        "size_after": plan.size_after,
    }
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {s.ref} ({_human_size(s.size_bytes)}, last used {_ago(s.last_used)})" for s in plan.snapshots]
    if plan.content:
        lines.append(f"{verb} {len(plan.content)} cached files no snapshot uses")
    lines.append(
        f"{'would free' if args.dry_run else 'freed'} {_human_size(plan.freed_bytes)}; "
        f"cache {_human_size(plan.size_after)}"
    )
    out.result(data, "\n".join(lines))


def _size_argument(text: str) -> str:
    try:
        parse_size(text)
    except MregError as e:
        raise argparse.ArgumentTypeError(e.message) from e
    return text


def _add_download_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    download = commands.add_parser(
        "download",
        parents=[common],
        help="download a version into the cache and print its local (read-only) directory",
        description="Prints the path of a read-only directory holding the version, verified. The same version "
        "again downloads nothing and prints the same path; versions share the bytes of files they have in "
        "common. Example: cd $(mreg download acme/vision/resnet:best)",
    )
    download.add_argument("ref")
    download.set_defaults(handler=cmd_download)

    cache = commands.add_parser("cache", help="list and prune the download cache (MREG_CACHE_DIR)")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    ls = cache_commands.add_parser(
        "ls", parents=[common], help="snapshots in the cache: version, files, size, last use"
    )
    ls.set_defaults(handler=cmd_cache_ls)
    prune = cache_commands.add_parser(
        "prune",
        parents=[common],
        help="remove snapshots (least recently used first) and content no snapshot uses",
        description="Without options, evicts down to MREG_CACHE_MAX_SIZE (default 50GB). "
        "Example: mreg cache prune --older-than 7d --max-size 20GB --dry-run",
    )
    prune.add_argument(
        "--max-size", type=_size_argument, metavar="SIZE", help="evict down to this size, e.g. 500MB, 2GiB, 20GB"
    )
    prune.add_argument(
        "--older-than", type=parse_duration, metavar="DURATION", help="remove what was not used for this long: 7d, 12h"
    )
    prune.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    prune.set_defaults(handler=cmd_cache_prune)


# Exit status of a command whose output pipe was closed by the reader (`mreg ls | head`): what
# a process killed by SIGPIPE reports, as cat or git do.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command. Exit status: 0 success, 1 error (one line on stderr), 2 usage error,
    130 interrupted, 141 output pipe closed by the reader."""
    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "json", False), getattr(args, "quiet", False))
    try:
        args.handler(args, out)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
    except MregError as e:
        return _fail(e.code, e.message)
    except UsageError as e:
        with contextlib.suppress(OSError, ValueError):
            print(f"mreg {e.command}: error: {e}", file=sys.stderr)
        return 2
    except PushInterrupted as e:
        print(
            f"mreg: interrupted: {e.stored_bytes} of {e.total_bytes} bytes stored; run the same push again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("mreg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader is gone: say nothing more, and keep the interpreter's final flush of
        # stdout from failing again on the closed pipe.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as e:
        error = local_error(e)
        return _fail(error.code, error.message)
    except sqlite3.Error as e:
        return _fail(
            "FAILED_PRECONDITION",
            f"the local cache in {default_cache_dir()} is unusable ({e}); remove it or pass --no-cache",
        )
    except grpc.RpcError as e:
        error = MregError.from_rpc(e)
        return _fail(error.code, error.message)
    except Exception as e:  # the last resort: a bug, but still one line and no traceback
        log.debug("unexpected error", exc_info=True)
        return _fail("INTERNAL", f"unexpected {type(e).__name__}: {_redact(str(e))[:500]} (please report this)")
    return 0


def _fail(code: str, message: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        print(f"mreg: error: {code}: {_redact(message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
