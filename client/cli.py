"""The ``mreg`` command line: push, pull, show, ls, alias, link and serve.

Output is for people by default and a JSON document with ``--json``. Any failure prints
one line, ``mreg: error: CODE: message``, to stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mreg.metadata.v1 import metadata_service_pb2 as pb

from client.errors import MregError
from client.registry import DEFAULT_BLOB_ADDR, DEFAULT_METADATA_ADDR, Registry, struct_to_dict
from client.transfer import ProgressCallback

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
        elif not self.quiet or not text.startswith(" "):
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


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.connect(
        args.metadata_addr, args.blob_addr, entity=args.entity, project=args.project, parallel=args.parallel
    )


def cmd_push(args: argparse.Namespace, out: Output) -> None:
    metadata = None
    if args.metadata:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as e:
            raise MregError("INVALID_ARGUMENT", f"--metadata is not valid JSON: {e}") from e
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
        result = registry.pull(args.ref, args.dest, progress=out.progress("pull"))
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
        target = args.target or (f"{args.entity}/{args.project}" if args.entity and args.project else "")
        if not target:
            raise MregError("INVALID_ARGUMENT", "name what to list, or set MREG_ENTITY and MREG_PROJECT")
        rows, lines = _list_collection(registry, target)
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


def cmd_alias_set(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        response = registry.set_alias(args.ref, args.alias)
    data = {
        "collection": response.collection,
        "alias": response.alias.alias,
        "version": response.alias.index,
        "previous_version": response.previous_index if response.HasField("previous_index") else None,
    }
    moved = f" (was v{data['previous_version']})" if data["previous_version"] is not None else ""
    out.result(data, f"{response.collection}:{response.alias.alias} -> v{response.alias.index}{moved}")


def cmd_alias_rm(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        response = registry.delete_alias(args.collection, args.alias)
    data = {"collection": args.collection, "alias": args.alias, "previous_version": response.previous_index}
    out.result(data, f"removed {args.collection}:{args.alias} (was v{response.previous_index})")


def cmd_link(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        response = registry.link(args.ref, args.registered_model, args.alias)
    data = link_json(response.link) | {"created": response.created}
    verb = "linked" if response.created else "already linked"
    aliases = f"  ({', '.join(response.link.aliases)})" if response.link.aliases else ""
    out.result(data, f"{verb} {response.link.version.name} as {response.link.name}{aliases}")


def cmd_serve(args: argparse.Namespace, out: Output) -> None:
    from client.serve import serve

    serve(args.data_dir, args.host, args.metadata_port, args.blob_port, args.database_url)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--metadata-addr", default=os.environ.get("MREG_METADATA_ADDR", DEFAULT_METADATA_ADDR))
    common.add_argument("--blob-addr", default=os.environ.get("MREG_BLOB_ADDR", DEFAULT_BLOB_ADDR))
    common.add_argument("--entity", default=os.environ.get("MREG_ENTITY"), help="default entity (env MREG_ENTITY)")
    common.add_argument("--project", default=os.environ.get("MREG_PROJECT"), help="default project (env MREG_PROJECT)")
    common.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--parallel", type=int, default=8, help="parallel transfer streams (default 8)")

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
    push.add_argument("--link", action="append", default=[], metavar="REGISTERED_MODEL")
    push.set_defaults(handler=cmd_push)

    pull = commands.add_parser("pull", parents=[common], help="download a version, verified")
    pull.add_argument("ref")
    pull.add_argument("dest")
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
    alias_set.set_defaults(handler=cmd_alias_set)
    alias_rm = alias_commands.add_parser("rm", parents=[common], help="remove ALIAS from COLLECTION")
    alias_rm.add_argument("collection")
    alias_rm.add_argument("alias")
    alias_rm.set_defaults(handler=cmd_alias_rm)

    link = commands.add_parser("link", parents=[common], help="link a version into a registered model")
    link.add_argument("ref")
    link.add_argument("registered_model")
    link.add_argument("--alias", action="append", default=[])
    link.set_defaults(handler=cmd_link)

    serve = commands.add_parser("serve", parents=[common], help="run both services on SQLite and local disk")
    serve.add_argument("--data-dir", default=os.environ.get("MREG_DATA_DIR", ".mreg"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--metadata-port", type=int, default=50051)
    serve.add_argument("--blob-port", type=int, default=50052)
    serve.add_argument("--database-url", default=os.environ.get("MREG_DATABASE_URL"), help="default: SQLite in DIR")
    serve.set_defaults(handler=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "json", False), getattr(args, "quiet", False))
    try:
        args.handler(args, out)
    except MregError as e:
        print(f"mreg: error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mreg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
