"""The ``mreg`` command line: push, pull, download, cache, show, ls, alias, link and serve.

Output is for people by default and a JSON document with ``--json``. Any failure prints
one line, ``mreg: error: CODE: message``, to stderr and exits with status 1 (never a
traceback); Ctrl-C exits with 130, a closed output pipe quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from mreg.client import profiles
from mreg.client.cache import ContentCache, default_cache_dir
from mreg.client.channels import Credentials, open_channel
from mreg.client.errors import MregError, PushInterrupted, local_error
from mreg.client.registry import (
    DEFAULT_BLOB_ADDR,
    DEFAULT_METADATA_ADDR,
    ROLES,
    Registry,
    role_name,
    struct_to_dict,
)
from mreg.client.snapshots import Snapshot, SnapshotCache, max_size_from_env, parse_size
from mreg.client.transfer import ProgressCallback
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata.v1 import token_service_pb2 as token_pb

log = logging.getLogger(__name__)

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


def _reject_constant(name: str) -> Any:
    """json.loads accepts NaN and Infinity, which JSON (and protobuf's Struct) does not have."""
    raise MregError("INVALID_ARGUMENT", f"--metadata is not valid JSON: {name} is not a JSON number")


def cmd_push(args: argparse.Namespace, out: Output) -> None:
    metadata = None
    if args.metadata:
        try:
            metadata = json.loads(args.metadata, parse_constant=_reject_constant)
        except json.JSONDecodeError as e:
            raise MregError("INVALID_ARGUMENT", f"--metadata is not valid JSON: {e}") from e
        except RecursionError as e:
            raise MregError("INVALID_ARGUMENT", "--metadata is nested too deeply") from e
        if not isinstance(metadata, dict):
            raise MregError("INVALID_ARGUMENT", "--metadata must be a JSON object")
    with _registry(args) as registry:
        result = registry.push(
            args.dir,
            args.ref,
            type=args.type,
            aliases=args.alias,
            metadata=metadata,
            description=args.description,
            tags=args.tag,
            link_to=args.link,
            create_registered_models=args.create,
            run=args.run,
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
    }
    verb = "pushed" if result.created else "unchanged, still"
    lines = [
        f"{verb} {version.name} ({result.files} files, {_human_size(result.size_bytes)}, "
        f"{_human_size(result.uploaded_bytes)} uploaded)"
    ]
    if version.aliases:
        lines.append(f"  aliases: {', '.join(version.aliases)}")
    lines += [f"  linked as {link.name}" for link in result.links]
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
    with _registry(args) as registry:
        resolution = registry.resolve(args.ref)
    version = resolution.version
    data = version_json(version)
    lines = [
        f"{version.name}  ({data['state']}, type {version.type})",
        f"  digest:   {version.digest}",
        f"  aliases:  {', '.join(version.aliases) or '-'}",
        f"  size:     {_human_size(version.size_bytes)} in {version.file_count} files",
        f"  created:  {data['created']}",
    ]
    if resolution.HasField("link"):
        link = resolution.link
        data.update(
            ref=link.name,
            link_version=link.index,
            link_aliases=list(link.aliases),
            source_ref=version.name,
            registered_model=link.registered_model,
        )
        lines.insert(0, f"{link.name} -> {version.name}  (link aliases: {', '.join(link.aliases) or '-'})")
    if version.description:
        lines.append(f"  description: {version.description}")
    if data["metadata"]:
        lines.append(f"  metadata: {json.dumps(data['metadata'], sort_keys=True)}")
    lines += [f"    {e.digest.hash[:12]}  {e.digest.size_bytes:>12}  {e.path}" for e in version.manifest]
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
    with _registry(args) as registry:
        response = registry.link(args.ref, args.registered_model, args.alias, create=args.create)
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
    """Prints one line (one JSON object with --json) per event until interrupted or --limit."""
    seen = 0
    with _registry(args) as registry:
        for message in registry.watch(args.since, from_now=args.from_now, resource_prefix=args.prefix):
            if not message.HasField("event"):
                continue
            event = message.event
            if out.as_json:
                print(json.dumps(event_json(event)), flush=True)
            else:
                change = (
                    f"{_index_of(event.before)} -> {_index_of(event.after)}" if event.kind.startswith("alias") else ""
                )
                print(f"#{event.sequence} {event.kind} {event.resource} {change}".rstrip(), flush=True)
            seen += 1
            if args.limit and seen >= args.limit:
                return


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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser("push", parents=[common], help="upload a directory as a new version")
    push.add_argument("dir")
    push.add_argument("ref", help="[[entity/]project/]artifact")
    push.add_argument("--type", default="model")
    push.add_argument("--alias", action="append", default=[])
    push.add_argument("--metadata", help="a JSON object, e.g. '{\"accuracy\": 0.91}'")
    push.add_argument("--description", default="")
    push.add_argument("--tag", action="append", default=[])
    push.add_argument(
        "--link", action="append", default=[], metavar="REGISTERED_MODEL", help="link into this registered model"
    )
    push.add_argument("--create", action="store_true", help="create --link registered models that do not exist")
    push.add_argument("--run", default="", help="the run that produced this version (lineage)")
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
    watch.add_argument("--prefix", default="", help="only resources starting with this prefix")
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
