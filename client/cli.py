"""The ``mreg`` command line: push, pull, download, cache, show, update, ls, alias, link and serve.

Output is for people by default and a JSON document with ``--json``. Any failure prints
one line, ``mreg: error: CODE: message``, to stderr and exits with status 1 (never a
traceback); a usage error (an unknown command or option, a missing or malformed argument)
prints Click's usage text and exits with 2. With ``--json`` both print one JSON object on
stderr instead: ``{"code", "reason", "message"}``, plus ``"usage"`` for a usage error (code
``INVALID_ARGUMENT``, reason ``USAGE``). Ctrl-C exits with 130, a closed output pipe quietly
with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc

from mreg.client import editing, profiles
from mreg.client.cache import ContentCache, default_cache_dir
from mreg.client.channels import Credentials
from mreg.client.errors import MregError, PushInterrupted, local_error
from mreg.client.formatting import human_size
from mreg.client.models import Artifact, Event, RegisteredModel, Token, Version, json_time
from mreg.client.references import LATEST
from mreg.client.registry import (
    ROLES,
    PushResult,
    Registry,
)
from mreg.client.settings import ClientSettings, config_path
from mreg.client.snapshots import Snapshot, SnapshotCache, parse_size
from mreg.client.transfer import ProgressCallback

log = logging.getLogger(__name__)

# The largest values the protocol's int32 and int64 fields hold.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# How many times in a row `mreg watch` reconnects to a service that is down before it gives up.
WATCH_RECONNECTS = 30


class Output:
    """Prints results as JSON or as text, tables (Rich on a terminal, plain aligned text when piped) and progress."""

    def __init__(self, as_json: bool, quiet: bool, json_lines: bool = False) -> None:
        self.as_json = as_json or json_lines
        self.json_lines = json_lines
        self.quiet = quiet
        self._progress: list[Any] = []

    def result(self, data: Any, text: str) -> None:
        self.close()  # a finished transfer's bar goes before the result is printed
        if self.json_lines and isinstance(data, list):
            for row in data:
                sys.stdout.write(json.dumps(row) + "\n")
        elif self.as_json:
            json.dump(data, sys.stdout, indent=2, sort_keys=False)
            sys.stdout.write("\n")
        else:
            print(text)

    def table(self, data: Any, columns: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
        """``data`` as JSON, else ``rows`` under ``columns``: Rich on a terminal, aligned plain text otherwise."""
        if self.as_json:
            self.result(data, "")
            return
        if not rows:
            print(empty)
            return
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table(box=None, header_style="bold", pad_edge=False)
            for column in columns:
                table.add_column(column, justify="right" if column in _NUMERIC_COLUMNS else "left")
            for row in rows:
                table.add_row(*row)
            Console(soft_wrap=False).print(table)
            return
        print(plain_table(columns, rows))

    def progress(self, description: str) -> Callable[[int], ProgressCallback] | None:
        if self.as_json or self.quiet or not sys.stderr.isatty():
            return None

        def start(total: int) -> ProgressCallback:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            progress = Progress(
                f"[bold]{description}",
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            progress.start()
            self._progress.append(progress)
            task = progress.add_task(description, total=total)
            done = [0]
            lock = threading.Lock()

            def advance(n: int) -> None:
                progress.advance(task, n)
                with lock:
                    done[0] += n
                    finished = done[0] >= total
                # Rich shows one live display at a time: a finished bar (hashing) makes way for the next (upload).
                if finished:
                    progress.stop()

            return advance

        return start

    def close(self) -> None:
        for progress in self._progress:
            with contextlib.suppress(Exception):
                progress.stop()
        self._progress.clear()


_NUMERIC_COLUMNS = {"SIZE", "FILES", "VERSIONS", "LINKS", "COUNT"}


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under a header, columns separated by two spaces, numbers right-aligned; no colour, stable for scripts."""
    table = [list(columns), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if columns[i] in _NUMERIC_COLUMNS else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    )


def _settings(args: argparse.Namespace, *, missing_profile_ok: bool = False) -> ClientSettings:
    """The client settings: the command's flags over MREG_* variables, config.toml and the login profile."""
    return ClientSettings.load(
        flag_names=True,
        missing_profile_ok=missing_profile_ok,
        metadata_addr=args.metadata_addr,
        blob_addr=args.blob_addr,
        entity=args.entity,
        project=args.project,
        profile=args.profile,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        tls=True if args.tls else None,
        parallel=getattr(args, "parallel", None),
    )


def _credentials(args: argparse.Namespace) -> Credentials:
    """The token and TLS material the settings give (flags, then MREG_TOKEN, MREG_CA_CERT, ..., then the files)."""
    return _settings(args).credentials()


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.from_settings(_settings(args), use_cache=not getattr(args, "no_cache", False))


def cmd_push(args: argparse.Namespace, out: Output) -> None:
    metadata = _metadata_json(args.metadata)
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
            hash_progress=out.progress("hash"),
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
        "links": [link.to_dict() for link in result.links],
        "empty_directories_left_out": list(result.empty_directories_left_out),
    } | _push_unchanged(result)
    if result.empty_directories_left_out:
        shown = result.empty_directories_left_out[:5]
        more = len(result.empty_directories_left_out) - len(shown)
        print(
            f"mreg: note: a version holds files only, so {len(result.empty_directories_left_out)} empty "
            f"director{'y is' if len(result.empty_directories_left_out) == 1 else 'ies are'} not part of it: "
            f"{', '.join(shown)}{f' and {more} more' if more else ''}",
            file=sys.stderr,
        )
    verb = "pushed" if result.created else "unchanged, still"
    lines = [
        f"{verb} {version.name} ({result.files} files, {human_size(result.size_bytes)}, "
        f"{human_size(result.uploaded_bytes)} uploaded)"
    ]
    if version.aliases:
        lines.append(f"  aliases: {', '.join(version.aliases)}")
    lines += [f"  linked as {link.name}" for link in result.links]
    if result.updated_existing:
        lines.append(f"  content unchanged: updated {', '.join(result.updated_existing)} of {version.name}")
    if result.retention_deleted:
        deleted = [f"v{index}" for index in result.retention_deleted]
        data["retention_deleted"] = list(result.retention_deleted)
        lines.append(f"  retention policy deleted: {', '.join(deleted)}")
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
        f"pulled {version.name} into {args.dest} ({result.files} files, {human_size(result.size_bytes)})",
    )


def cmd_show(args: argparse.Namespace, out: Output) -> None:
    """A version (or a link and its version) with everything that describes it; a registered model's card too."""
    with _registry(args) as registry:
        try:
            resolution = registry.resolve(args.ref)
        except MregError as e:
            # A registered model without links names no version: show the model alone. A name nothing bears
            # (COLLECTION_NOT_FOUND) is no model either: asking would only add refused calls to the logs.
            maybe_model = e.code == "NOT_FOUND" and e.reason != "COLLECTION_NOT_FOUND"
            model = _registered_model_named(registry, args.ref) if maybe_model else None
            if model is None:
                raise
            out.result(model.to_dict(), "\n".join(_registered_model_lines(model)))
            return
        version = resolution.version
        protected = set(registry.get_artifact(version.artifact).protected_aliases)
        link = resolution.link
        model = registry.get_registered_model(link.registered_model) if link is not None else None
    data = version.to_dict()
    data["protected_aliases"] = [a for a in version.aliases if a in protected]
    lines = [
        f"{version.name}  ({data['state']}, type {version.type})",
        f"  digest:      {version.digest}",
        f"  aliases:     {_aliases_text(version.aliases, protected)}",
        f"  tags:        {', '.join(version.tags) or '-'}",
        f"  run:         {version.run or '-'}",
        f"  size:        {human_size(version.size_bytes)} in {version.file_count} files",
        f"  created:     {data['created']}",
        f"  committed:   {data['committed'] or '-'}",
    ]
    if data["metadata"]:
        lines.append(f"  metadata:    {json.dumps(data['metadata'], sort_keys=True)}")
    lines += _markdown_lines("description", version.description)
    if link is not None:
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
    lines += [f"    {e.sha256[:12]}  {e.size_bytes:>12}  {e.path}" for e in version.manifest]
    if model is not None:
        data["registered_model_card"] = model.to_dict()
        lines += _registered_model_lines(model)
    out.result(data, "\n".join(lines))


def cmd_ls(args: argparse.Namespace, out: Output) -> None:
    """Lists a project's collections, an artifact's versions or a registered model's links."""
    with _registry(args) as registry:
        entity, project = registry.entity, registry.project  # flags, else env, else the profile
        target = args.target or (f"{entity}/{project}" if entity and project else "")
        if not target:
            raise MregError("INVALID_ARGUMENT", "name what to list, or set MREG_ENTITY and MREG_PROJECT")
        limit = args.limit or None
        if ":" in target:
            raise MregError(
                "INVALID_ARGUMENT",
                f"{target} names a version, an alias or a link; ls lists an entity, a project, an artifact or a "
                f"registered model (mreg show {target} shows what it names)",
                reason="REFERENCE_INVALID",
            )
        parts = target.split("/")
        # A name short of ENTITY/PROJECT/NAME is a collection only with the defaults that complete it; the
        # default entity/project itself names a project, never a collection. Asking the service about any
        # other would only add refused calls to its logs and error metrics.
        maybe_collection = len(parts) >= 3 or (registry.entity is not None and (len(parts) == 2 or registry.project))
        if args.target and maybe_collection:
            refusal = _list_collection(registry, target, out, limit)
            if refusal is None:
                return
            if len(parts) >= 3:
                if refusal.code == "INVALID_ARGUMENT":
                    raise refusal
                raise MregError(
                    "NOT_FOUND", f"no artifact or registered model named {target}", reason="COLLECTION_NOT_FOUND"
                )
        if len(parts) == 1:
            _list_entity(registry, target, out, limit)
            return
        _list_project(registry, target, out, limit)


def _list_entity(registry: Registry, entity: str, out: Output, limit: int | None) -> None:
    """An entity's projects (those the caller may read that hold something)."""
    projects = list(registry.list_projects(entity, limit=limit))
    rows = [p.to_dict() for p in projects]
    out.table(rows, ["PROJECT", "CREATED"], [[p.name, _when(p.create_time)] for p in projects], "(nothing)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _when(moment: datetime | None) -> str:
    """A time to the second in UTC, for tables; "-" when unset."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _list_collection(registry: Registry, target: str, out: Output, limit: int | None) -> MregError | None:
    """Lists versions or links if ``target`` is a collection; if it is not one, the reason why (the artifact
    lookup's refusal if the name is malformed, else the registered model lookup's)."""
    # ENTITY/PROJECT may also read as a collection in the default entity, which the caller may not
    # be allowed to see: that refusal must not hide the project it may list.
    not_this = ("NOT_FOUND", "INVALID_ARGUMENT", *(("PERMISSION_DENIED",) if target.count("/") == 1 else ()))
    try:
        registry.get_artifact(target)
        versions = list(registry.list_versions(target, limit=limit))
        out.table(
            [v.to_dict(with_manifest=False) for v in versions],
            ["VERSION", "ALIASES", "SIZE", "FILES", "CREATED", "TAGS"],
            [
                [
                    f"v{v.index}",
                    ", ".join(v.aliases) or "-",
                    human_size(v.size_bytes),
                    str(v.file_count),
                    _when(v.create_time),
                    ", ".join(v.tags) or "-",
                ]
                for v in versions
            ],
            "(no versions)",
        )
        return None
    except MregError as e:
        if e.code not in not_this:
            raise
        as_artifact = e
    try:
        registry.get_registered_model(target)
    except MregError as e:
        if e.code not in not_this:
            raise
        return as_artifact if as_artifact.code == "INVALID_ARGUMENT" else e
    links = list(registry.list_links(target, limit=limit))
    out.table(
        [link.to_dict() for link in links],
        ["LINK", "ALIASES", "VERSION", "CREATED"],
        [
            [f"v{link.index}", ", ".join(link.aliases) or "-", link.version.name, _when(link.create_time)]
            for link in links
        ],
        "(no links)",
    )
    return None


def _list_project(registry: Registry, target: str, out: Output, limit: int | None) -> None:
    collections: list[Artifact | RegisteredModel] = [
        *registry.list_artifacts(target, limit=limit),
        *registry.list_registered_models(target, limit=limit),
    ]
    collections = collections[:limit]
    rows: list[dict[str, Any]] = []
    table: list[list[str]] = []
    for collection in collections:
        count = collection.link_count if isinstance(collection, RegisteredModel) else collection.version_count
        latest = collection.aliases.get("latest")
        rows.append(
            {
                "name": collection.name,
                "kind": "registered_model" if isinstance(collection, RegisteredModel) else "artifact",
                "type": collection.type,
                "count": count,
                "latest": latest,
                "created": json_time(collection.create_time),
            }
        )
        table.append(
            [
                collection.name.removeprefix(target + "/"),
                "registered model" if isinstance(collection, RegisteredModel) else "artifact",
                collection.type,
                _count(count, "link" if isinstance(collection, RegisteredModel) else "version"),
                f"v{latest}" if latest is not None else "-",
                _when(collection.create_time),
            ]
        )
    out.table(rows, ["NAME", "KIND", "TYPE", "COUNT", "LATEST", "CREATED"], table, "(nothing)")


def _expectation(_context: click.Context, _parameter: click.Parameter, text: str | None) -> tuple[int | None, bool]:
    """--expect as (the index the alias must name, whether it must be unset); anything else is a usage error."""
    if text is None:
        return None, False
    if text == "none":
        return None, True
    match = re.fullmatch(r"v?([0-9]+)", text)
    # expected_index is an int64: a bigger N would fail to encode rather than be refused.
    if match is None or int(match.group(1)) > INT64_MAX:
        raise click.BadParameter(f"takes vN, N (0 to {INT64_MAX}) or 'none', not {text!r}")
    return int(match.group(1)), False


def _removal_expectation(context: click.Context, parameter: click.Parameter, text: str | None) -> int | None:
    """--expect of ``alias rm``: the index the alias must name; 'none' has no meaning there (an unset alias
    cannot be removed)."""
    if text == "none":
        raise click.BadParameter("takes vN: the version the alias must name now for it to be removed")
    return _expectation(context, parameter, text)[0]


def cmd_alias_set(args: argparse.Namespace, out: Output) -> None:
    expected_index, expect_unset = args.expect
    with _registry(args) as registry:
        move = registry.set_alias(args.ref, args.alias, expected_index=expected_index, expect_unset=expect_unset)
    moved = f" (was v{move.previous_index})" if move.previous_index is not None else ""
    out.result(move.to_dict(), f"{move.collection}:{move.alias} -> v{move.index}{moved}")


def cmd_alias_rm(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        previous = registry.delete_alias(args.collection, args.alias, expected_index=args.expect)
    data = {"collection": args.collection, "alias": args.alias, "previous_version": previous}
    out.result(data, f"removed {args.collection}:{args.alias} (was v{previous})")


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
    data = response.link.to_dict() | {"created": response.created}
    verb = "linked" if response.created else "already linked"
    aliases = f"  ({', '.join(response.link.aliases)})" if response.link.aliases else ""
    out.result(data, f"{verb} {response.link.version.name} as {response.link.name}{aliases}")


def _confirm(args: argparse.Namespace, out: Output, question: str) -> None:
    """Asks on a terminal unless --yes; never with --json or when stdin is not a terminal (then it proceeds)."""
    if args.yes or out.as_json or not sys.stdin.isatty():
        return
    if not click.confirm(question, default=False, err=True):
        raise MregError("CANCELLED", "not confirmed; nothing was changed", reason="NOT_CONFIRMED")


def cmd_delete(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        if args.collection:
            if args.dry_run:
                if not _is_artifact(registry, args.ref):
                    registry.get_registered_model(args.ref)  # NOT_FOUND when it is neither
                out.result(
                    {"would_delete": args.ref, "kind": "collection", "dry_run": True},
                    f"would delete collection {args.ref} (refused by the service unless it is empty)",
                )
                return
            _confirm(args, out, f"delete the collection {args.ref}?")
            registry.delete_collection(args.ref)
            out.result({"deleted": args.ref, "kind": "collection"}, f"deleted {args.ref}")
            return
        if ":" not in args.ref:
            raise MregError(
                "INVALID_ARGUMENT", f"name the version to delete, e.g. {args.ref}:v3 (or pass --collection)"
            )
        target = registry.resolve(args.ref)
        if target.link is not None:
            aliases = [alias for alias in target.link.aliases if alias != LATEST]
            going = f" and its aliases {', '.join(aliases)}" if aliases else ""
            if args.dry_run:
                out.result(
                    {"would_delete": target.link.name, "kind": "link", "aliases": aliases, "dry_run": True},
                    f"would delete link {target.link.name} (-> {target.version.name}){going}; the version stays",
                )
                return
            _confirm(args, out, f"delete the link {target.link.name} (-> {target.version.name}){going}?")
            deleted = registry.delete_link(args.ref)
            removed = list(deleted.removed_aliases)  # `latest` is computed, never stored: never among them
            out.result(
                {"deleted": deleted.name, "kind": "link", "removed_aliases": removed},
                f"deleted link {deleted.name}" + (f" (removed aliases {', '.join(removed)})" if removed else ""),
            )
            return
        version = target.version
        if args.dry_run:
            _plan_version_deletion(registry, version, args.force, out)
            return
        _confirm(args, out, f"delete {version.name}{' and its aliases and links' if args.force else ''}?")
        response = registry.delete_version(version.name, force=args.force)
    data = {
        "deleted": response.version.name,
        "kind": "version",
        "removed_aliases": list(response.removed_aliases),
        "removed_links": list(response.removed_links),
        "removed_link_aliases": list(response.removed_link_aliases),
    }
    removed = list(response.removed_aliases) + list(response.removed_links) + list(response.removed_link_aliases)
    out.result(data, f"deleted {response.version.name}" + (f" (removed {', '.join(removed)})" if removed else ""))


def _plan_version_deletion(registry: Registry, version: Version, force: bool, out: Output) -> None:
    """What ``mreg delete VERSION [--force]`` would do, decided as DeleteVersion decides it: the aliases users
    set and the registered models' links to the version block it without --force, and --force removes them."""
    # The service moves `latest` itself and never counts it as holding a version.
    aliases = [alias for alias in version.aliases if alias != LATEST]
    # GetLineage lists the links in registered models the caller may read: with auth on, a link in one
    # it may not read still blocks the deletion but is not shown here.
    links = list(registry.lineage(version.name).links)
    # The registered models' aliases on those links go with them (their consumers resolve model:alias).
    link_aliases = {
        link: [alias for alias in found.aliases if alias != LATEST]
        for link in links
        if (found := registry.resolve(link).link) is not None
    }
    holders = [f"alias {alias}" for alias in aliases] + [
        f"link {link}" + (f" (with its aliases {', '.join(link_aliases[link])})" if link_aliases.get(link) else "")
        for link in links
    ]
    refused = bool(holders) and not force
    size = f"{human_size(version.size_bytes)}, {version.file_count} files"
    if not holders:
        text = f"would delete {version.name} ({size}); no alias or link names it"
    elif force:
        text = f"would delete {version.name} ({size}) and remove {', '.join(holders)}"
    else:
        text = (
            f"the service would refuse to delete {version.name} ({size}): {', '.join(holders)} "
            f"{'still names' if len(holders) == 1 else 'still name'} it; "
            "--force removes them too"
        )
    out.result(
        {
            "would_delete": version.name,
            "kind": "version",
            "aliases": aliases,
            "links": links,
            "link_aliases": [
                f"{link.rpartition(':')[0]}:{alias}" for link in links for alias in link_aliases.get(link, [])
            ],
            "refused_without_force": refused,
            "dry_run": True,
        },
        text,
    )


def _is_artifact(registry: Registry, name: str) -> bool:
    try:
        registry.get_artifact(name)
        return True
    except MregError as e:
        if e.code == "NOT_FOUND" or e.reason == "COLLECTION_KIND_MISMATCH":
            return False
        raise


def cmd_versions(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        versions = list(
            registry.list_versions(args.ref, filter=args.filter, order_by=args.order_by, limit=args.limit or None)
        )
    out.table(
        [v.to_dict(with_manifest=False) for v in versions],
        ["VERSION", "ALIASES", "SIZE", "CREATED", "TAGS", "METADATA"],
        [
            [
                f"v{v.index}",
                ", ".join(v.aliases) or "-",
                human_size(v.size_bytes),
                _when(v.create_time),
                ", ".join(v.tags) or "-",
                json.dumps(v.metadata, sort_keys=True) if v.metadata else "-",
            ]
            for v in versions
        ],
        "(no versions match)",
    )


def cmd_alias_history(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        events = list(registry.alias_history(args.collection, args.alias))
    out.table(
        [e.to_dict() for e in events],
        ["SEQUENCE", "TIME", "KIND", "FROM", "TO", "ACTOR"],
        [
            [f"#{e.sequence}", _when(e.create_time), e.kind, _index_of(e.before), _index_of(e.after), e.actor or "?"]
            for e in events
        ],
        "(no history)",
    )


def _index_of(state: Any) -> str:
    """An alias event's FROM or TO: the index, and on a registered model the version its link held."""
    if state is None or "index" not in state:
        return "-"
    index = f"v{int(state['index'])}"
    return f"{index} ({state['version']})" if state.get("version") else index


def cmd_alias_protect(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        protected = registry.set_alias_protection(args.collection, args.alias, not args.off)
    out.result(
        {"collection": args.collection, "protected_aliases": protected}, f"protected: {', '.join(protected) or '-'}"
    )


def cmd_lineage(args: argparse.Namespace, out: Output) -> None:
    refs = list(args.refs)
    if args.record:
        if not args.run or not refs:
            raise click.UsageError("--record needs --run RUN and the versions it used: --record REF...")
        args.record, args.ref = refs, None
    else:
        if len(refs) > 1:
            raise click.UsageError("give one version reference (or --run RUN --record REF...)")
        args.record, args.ref = [], refs[0] if refs else None
    if bool(args.ref) == bool(args.run):
        raise MregError("INVALID_ARGUMENT", "give a version reference or --run RUN")
    with _registry(args) as registry:
        if args.record:
            recorded = registry.record_run_inputs(args.run, args.record)
            out.result({"run": args.run, "inputs": recorded}, f"{args.run} used {', '.join(recorded)}")
            return
        lineage = registry.lineage(ref=args.ref or "", run=args.run or "")
    data = lineage.to_dict()
    if args.ref:
        text = (
            f"produced by: {lineage.producer_run or '(unknown)'}\nused by: {', '.join(lineage.consumer_runs) or '-'}"
            f"\nlinked as: {', '.join(lineage.links) or '-'}"
        )
    else:
        text = f"inputs: {', '.join(lineage.inputs) or '-'}\noutputs: {', '.join(lineage.outputs) or '-'}"
    out.result(data, text)


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
                for update in registry.watch(cursor, from_now=from_now, resource_prefix=args.prefix):
                    failures = 0
                    cursor, from_now = update.sequence, False
                    if update.event is None:
                        continue
                    _print_event(update.event, out)
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


def _print_event(event: Event, out: Output) -> None:
    if out.as_json:
        print(json.dumps(event.to_dict()), flush=True)
        return
    change = f" {_index_of(event.before)} -> {_index_of(event.after)}" if event.kind.startswith("alias") else ""
    when = _when(event.create_time)
    print(f"{when}  #{event.sequence} {event.kind} {event.resource}{change}  by {event.actor or '?'}", flush=True)


def cmd_retention_set(args: argparse.Namespace, out: Output) -> None:
    if (args.keep_last is None) == (not args.none):
        raise click.UsageError("give exactly one of --keep-last N and --none")
    keep_last = args.keep_last
    if keep_last is not None and not 1 <= keep_last <= INT32_MAX:  # keep_last is an int32
        raise click.UsageError(f"--keep-last takes N from 1 (the latest version always stays) to {INT32_MAX}")
    with _registry(args) as registry:
        if keep_last is not None:
            # The service says exactly what the policy would delete now (validate_only changes nothing).
            planned = list(registry.set_retention(args.artifact, keep_last, validate_only=True).deleted_indexes)
            if args.dry_run:
                names = [f"v{index}" for index in planned]
                out.result(
                    {"artifact": args.artifact, "keep_last": keep_last, "dry_run": True, "candidates": planned},
                    f"would delete {', '.join(names) or 'nothing'} from {args.artifact} (keep the last {keep_last})",
                )
                return
            if planned:
                _confirm(
                    args,
                    out,
                    f"keep the last {keep_last} of {args.artifact}, deleting "
                    f"{', '.join(f'v{index}' for index in planned)}?",
                )
        elif args.dry_run:
            out.result(
                {"artifact": args.artifact, "keep_last": None, "dry_run": True, "candidates": []},
                f"would remove the retention policy of {args.artifact}; nothing would be deleted",
            )
            return
        response = registry.set_retention(args.artifact, keep_last)
    deleted = [f"v{i}" for i in response.deleted_indexes]
    data = {"artifact": response.artifact.name, "keep_last": keep_last, "deleted": list(response.deleted_indexes)}
    policy = f"keep the last {keep_last}" if keep_last is not None else "keep everything"
    out.result(data, f"{response.artifact.name}: {policy}; deleted {', '.join(deleted) or 'nothing'}")


def cmd_retention_show(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        artifact = registry.get_artifact(args.artifact)
    keep_last = artifact.retention_keep_last
    policy = f"keep the last {keep_last} plus every aliased or linked version" if keep_last else "keep everything"
    out.result(
        {"artifact": artifact.name, "keep_last": keep_last, "versions": artifact.version_count},
        f"{artifact.name}: {policy} ({artifact.version_count} versions)",
    )


def cmd_gc(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        report = registry.collect_garbage(args.grace_seconds, args.dry_run)
        try:
            floor: int | None = registry.min_gc_grace_seconds()
        except MregError as e:
            # The sweep ran in the metadata service; only the note on the blob service's floor is missing.
            floor = None
            print(f"mreg: note: the blob service did not say its minimum grace: {e.message}", file=sys.stderr)
    data = {
        "examined_blobs": report.examined_blobs,
        "referenced_blobs": report.referenced_blobs,
        "deleted_blobs": report.deleted_blobs,
        "deleted_bytes": report.deleted_bytes,
        "removed_upload_parts": report.removed_upload_parts,
        "dry_run": args.dry_run,
        "blob_service_min_gc_grace_seconds": floor,
    }
    verb = "would delete" if args.dry_run else "deleted"
    held = (
        f"\nthe blob service keeps content used within its minimum grace of {_duration(floor)} "
        "(--min-gc-grace-seconds) whatever --grace-seconds says"
        if args.grace_seconds is not None and floor is not None and args.grace_seconds < floor
        else ""
    )
    out.result(
        data,
        f"{verb} {report.deleted_blobs} blobs ({human_size(report.deleted_bytes)}); "
        f"kept {report.referenced_blobs} referenced; removed {report.removed_upload_parts} stale upload parts{held}",
    )


# Units durations are shown in, largest first.
_TIME_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def _duration(seconds: int) -> str:
    """3600 -> "1h", 90 -> "90s": the largest unit that divides it."""
    for unit, length in _TIME_UNITS:
        if seconds >= length and seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def cmd_serve(args: argparse.Namespace, out: Output) -> None:
    try:
        from mreg.client.serve import WebUnavailable, serve
    except ModuleNotFoundError as e:
        # A client-only install (`pip install mreg`) lacks the services' libraries.
        raise MregError(
            "FAILED_PRECONDITION",
            f"mreg serve needs the server extra, which is not installed ({e.name} is missing): "
            "pip install 'mreg[server]' (from a clone: pip install '.[server]')",
        ) from e

    from mreg.server_runtime.transport import StartupError, TransportConfigError

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
            metrics_port=args.metrics_port,
            web_port=None if args.no_web else args.web_port,
        )
    except WebUnavailable as e:
        raise MregError("FAILED_PRECONDITION", str(e)) from e
    except TransportConfigError as e:
        # A setting the services refuse to start with is a usage error, as for `python -m mreg.*_service`.
        print(f"mreg serve: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e
    except StartupError as e:  # a port in use, a database that cannot be reached
        print(f"mreg serve: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from e


def cmd_web(args: argparse.Namespace, out: Output) -> None:
    """The web UI alone, as a client of the services the global options name (for production)."""
    try:
        from mreg.client.web import WebConfig, start
        from mreg.client.web.server import split_listen
    except ModuleNotFoundError as e:
        raise MregError(
            "FAILED_PRECONDITION",
            f"mreg web needs the web extra, which is not installed ({e.name} is missing): pip install 'mreg[web]'",
        ) from e
    from mreg.server_runtime import runtime, transport

    settings = _settings(args)
    credentials = replace(settings.credentials(), token=None)  # each user signs in with their own token
    secret = ""
    if args.session_secret_file:
        try:
            secret = Path(args.session_secret_file).read_text().strip()
        except OSError as e:
            raise MregError("FAILED_PRECONDITION", f"--session-secret-file: {e}") from e
    config = WebConfig(
        settings.metadata_addr,
        settings.blob_addr,
        credentials=credentials,
        session_secret=secret,
        secure_cookies=args.secure_cookies,
        default_entity=settings.entity or "",
        keepalive=settings.keepalive,
    )
    try:
        split_listen(args.listen)
    except ValueError as e:
        print(f"mreg web: error: --listen {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e
    with Registry.from_settings(settings, use_cache=False, credentials=credentials) as probe:
        try:
            authenticated = probe.whoami().authentication_enabled
        except MregError as e:
            if e.code != "UNAUTHENTICATED":
                raise
            authenticated = True
    try:
        transport.check_listen_address(args.listen, authenticated=authenticated, insecure=args.insecure, tls=False)
    except transport.TransportConfigError as e:
        print(f"mreg web: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e
    runtime.configure_logging()
    try:
        web = start(config, args.listen)
    except OSError as e:
        raise MregError("FAILED_PRECONDITION", f"cannot listen on {args.listen}: {e.strerror or e}") from e
    print(f"mreg web UI at {web.url}/ (metadata service {settings.metadata_addr}); stop with Ctrl-C", flush=True)
    runtime.wait_for_stop_signal()
    web.stop()


# Model cards and editing after push ------------------------------------------------------------


class UsageError(Exception):
    """A command line that asks for something the command cannot do: exit status 2, like argparse's."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(message)
        self.command = command
        context = click.get_current_context(silent=True)
        self.usage = context.get_usage() if context is not None else ""


def _usage_error(command: str, message: str) -> NoReturn:
    raise UsageError(command, message)


def _quote(text: str) -> str:
    return shlex.quote(text)


def _description(args: argparse.Namespace) -> str | None:
    """--description, or the text of --description-file (checked, 64 KiB at most), or None when neither is given."""
    if args.description_file is not None and args.description is not None:
        raise click.UsageError("give --description or --description-file, not both")
    if args.description_file is not None:
        return editing.read_description_file(args.description_file)
    if args.description is not None:
        return editing.check_description(args.description, "--description")
    return None


def _metadata_json(text: str | None, option: str = "--metadata") -> dict[str, Any] | None:
    """The JSON object of --metadata, or None when it is not given."""
    if text is None:
        return None
    if not text.strip():  # json.loads would say "Expecting value", which does not say what to give
        raise MregError(
            "INVALID_ARGUMENT", f"{option} must be a JSON object, e.g. '{{\"accuracy\": 0.93}}', not {text!r}"
        )

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


def _within(low: int, high: int, what: str) -> Callable[[click.Context, click.Parameter, int | None], int | None]:
    """A Click callback that refuses, as a usage error, a number outside ``low``..``high``: beyond what the
    protocol's field holds it would fail to encode (a Click range would print its bounds in --help)."""

    def check(_context: click.Context, _parameter: click.Parameter, value: int | None) -> int | None:
        if value is not None and not low <= value <= high:
            raise click.BadParameter(f"{value} is not {what} ({low} to {high})")
        return value

    return check


def _registered_model_named(registry: Registry, ref: str) -> RegisteredModel | None:
    """The registered model ``ref`` names when it is one (no selector), else None."""
    if ":" in ref:
        return None
    try:
        return registry.get_registered_model(ref)
    except MregError as e:
        if e.code == "NOT_FOUND" or e.reason == "COLLECTION_KIND_MISMATCH":
            return None
        raise


def _aliases_text(aliases: Sequence[str], protected: set[str]) -> str:
    marked = [f"{a} (protected)" if a in protected else a for a in aliases]
    return ", ".join(marked) or "-"


def _markdown_lines(label: str, text: str) -> list[str]:
    """A description (Markdown) as text, indented under its label; nothing when it is empty."""
    if not text:
        return []
    return [f"  {label}:"] + [f"    {line}".rstrip() for line in text.splitlines()]


def _registered_model_lines(model: RegisteredModel) -> list[str]:
    aliases = ", ".join(
        f"{alias} -> v{index}" + (" (protected)" if alias in model.protected_aliases else "")
        for alias, index in model.aliases.items()
    )
    return [
        f"registered model {model.name}  (type {model.type}, {model.link_count} links)",
        f"  aliases:     {aliases or '-'}",
        f"  tags:        {', '.join(model.tags) or '-'}",
        f"  created:     {json_time(model.create_time)}",
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
            out.result(updated.to_dict() | {"changed": changed}, "\n".join([header, *changes]))
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
    metadata_changes = editing.metadata_changes(dict(before.metadata), dict(after.metadata))
    if metadata_changes:
        changes.append(f"  metadata: {', '.join(metadata_changes)}")
    changed = [line.split(":")[0].strip() for line in changes]
    header = f"updated {after.name}" if changes else f"nothing changed: {after.name}"
    out.result(after.to_dict(with_manifest=False) | {"changed": changed}, "\n".join([header, *changes]))


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
    # Each use counts the duration from now, forward (a token's expiry) or back (a cache entry's last use).
    now = datetime.now(UTC)
    reach = min(datetime.max.replace(tzinfo=UTC) - now, now - datetime.min.replace(tzinfo=UTC))
    try:
        duration: timedelta | None = timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        duration = None
    if duration is None or duration > reach:
        raise argparse.ArgumentTypeError(f"{text!r} is too long: counted from now it would leave the years 1 to 9999")
    return duration


def cmd_token_create(args: argparse.Namespace, out: Output) -> None:
    scope = args.scope if args.scope is not None else ("*" if args.role == "admin" else None)
    if scope is None:
        raise click.UsageError(f"a {args.role} token needs --scope ENTITY[/PROJECT] (admin tokens take '*')")
    with _registry(args) as registry:
        token, secret = registry.create_token(args.name, args.role, scope, args.expires)
    _SECRETS.add(secret)
    data: dict[str, Any] = {"name": token.name, "token": secret, "role": token.role, "scope": token.scope}
    expires = json_time(token.expire_time)
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
    out.table(
        [t.to_dict() for t in tokens],
        ["NAME", "ROLE", "SCOPE", "STATUS", "CREATED", "EXPIRES", "CREATOR"],
        [[t.name, t.role, t.scope, _token_status(t), _when(t.create_time), _expiry(t), t.creator] for t in tokens],
        "(no tokens)",
    )


def _token_status(token: Token) -> str:
    return f"revoked {_when(token.revoke_time)}" if token.revoke_time is not None else token.status


def _expiry(token: Token) -> str:
    return _when(token.expire_time) if token.expire_time is not None else "never"


def cmd_token_revoke(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        token = registry.revoke_token(args.name)
    out.result(token.to_dict(), f"revoked {token.name}; both services refuse it within 60 seconds")


def _caller_text(data: dict[str, Any]) -> str:
    text = f"{data['name'] or '(anonymous)'}  {data['role']} on {data['scope'] or '*'}"
    if data["expires"]:
        text += f", expires {data['expires']}"
    return text if data["authentication_enabled"] else text + " (authentication is off)"


def cmd_whoami(args: argparse.Namespace, out: Output) -> None:
    with _registry(args) as registry:
        data = registry.whoami().to_dict()
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
    settings = _settings(args, missing_profile_ok=True)  # the profile being written may not exist yet
    token = _read_token(args)
    profile = profiles.Profile(
        metadata_addr=settings.metadata_addr,
        blob_addr=settings.blob_addr,
        entity=settings.entity,
        project=settings.project,
        ca_cert=str(settings.ca_cert.resolve()) if settings.ca_cert else None,
        token=token,
    )
    credentials = replace(settings.credentials(), token=token)
    with Registry.from_settings(settings, use_cache=False, credentials=credentials) as registry:
        data = registry.whoami().to_dict()  # a bad token fails here, before anything is written
    path = profiles.save(name, profile)
    data.update(profile=name, path=str(path), metadata_addr=profile.metadata_addr, blob_addr=profile.blob_addr)
    out.result(data, f"logged in as {_caller_text(data)}; profile {name!r} saved in {path}")


def cmd_logout(args: argparse.Namespace, out: Output) -> None:
    name = _profile_name(args)
    if not profiles.remove(name):
        raise MregError("NOT_FOUND", f"no profile named {name!r} in {profiles.profiles_path()}")
    out.result({"profile": name, "removed": True}, f"removed profile {name!r}")


def _redact(message: str) -> str:
    """``message`` without any token this process knows of (MREG_TOKEN, the profiles', those it handled)."""
    secrets = set(_SECRETS)
    if os.environ.get("MREG_TOKEN"):
        secrets.add(os.environ["MREG_TOKEN"])
    with contextlib.suppress(Exception):
        secrets.update(p.token for p in profiles.load_all().values() if p.token)
    with contextlib.suppress(Exception):  # a token in config.toml
        token = ClientSettings.load().token
        if token is not None:
            secrets.add(token.get_secret_value())
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "<token>")
    return message


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
    """The snapshot cache in the settings' cache_dir, limited to cache_max_size, without connecting to any service."""
    settings = ClientSettings.load()
    return SnapshotCache(settings.cache_dir, ContentCache(settings.cache_dir), settings.cache_max_size)


def cmd_config_show(args: argparse.Namespace, out: Output) -> None:
    """The effective client settings and where each came from (the token only as ``<set>``)."""
    settings = _settings(args)
    described = settings.describe()
    data = {"config_file": str(config_path()), "profiles_file": str(profiles.profiles_path()), "settings": described}
    rows = []
    for name, entry in described.items():
        value = entry["value"]
        if name == "cache_max_size":
            text = "unlimited" if value is None else f"{value} ({human_size(value)})"
        else:
            text = "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        rows.append([name, text, entry["source"]])
    out.table(data, ["SETTING", "VALUE", "SOURCE"], rows, "")


def _ago(moment: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, length in _TIME_UNITS:
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
    limit_text = human_size(limit) if limit is not None else "none"
    out.table(
        [_snapshot_json(s) for s in snapshots],
        ["REF", "VERSION", "FILES", "SIZE", "LAST USED"],
        [[s.artifact, f"v{s.version}", str(s.files), human_size(s.size_bytes), _ago(s.last_used)] for s in snapshots],
        "(no snapshots)",
    )
    if not out.as_json:
        print(
            f"{len(snapshots)} snapshots; {human_size(total)} on disk in {default_cache_dir()} "
            f"(shared content counted once; limit {limit_text})"
        )


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
    lines = [f"{verb} {s.ref} ({human_size(s.size_bytes)}, last used {_ago(s.last_used)})" for s in plan.snapshots]
    if plan.content:
        lines.append(f"{verb} {len(plan.content)} cached files no snapshot uses")
    lines.append(
        f"{'would free' if args.dry_run else 'freed'} {human_size(plan.freed_bytes)}; "
        f"cache {human_size(plan.size_after)}"
    )
    out.result(data, "\n".join(lines))


# Exit status of a command whose output pipe was closed by the reader (`mreg ls | head`): what
# a process killed by SIGPIPE reports, as cat or git do.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2  # click's, for any command line mreg refuses before doing anything


# The command line: Click parses it, the handlers above run it ------------------------------


def _installed_version() -> str:
    try:
        return importlib.metadata.version("mreg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _State:
    """What main needs to know about the command that ran: whether errors are printed as JSON."""

    json_errors = False


class MregGroup(click.Group):
    """mreg's command groups; Click suggests the closest command for a mistyped one ("Did you mean ...?")."""


# Options every command takes, before the command (`mreg --json ls`) or after it (`mreg ls --json`).
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--metadata-addr",),
        {"metavar": "HOST:PORT", "help": "the metadata service (env MREG_METADATA_ADDR; default localhost:50051)"},
    ),
    (
        ("--blob-addr",),
        {"metavar": "HOST:PORT", "help": "the blob service (env MREG_BLOB_ADDR; default localhost:50052)"},
    ),
    (("--entity",), {"help": "default entity (env MREG_ENTITY)"}),
    (("--project",), {"help": "default project (env MREG_PROJECT)"}),
    (("--json", "as_json"), {"is_flag": True, "help": "print JSON on stdout; errors as one JSON object on stderr"}),
    (("-q", "--quiet"), {"is_flag": True, "help": "no progress bars"}),
    (
        ("--profile",),
        {
            "help": "the profile: config.toml's [profiles.NAME] and the one mreg login saved "
            "(env MREG_PROFILE; default: 'default')"
        },
    ),
    (("--ca-cert",), {"metavar": "PEM", "help": "use TLS, trusting only these CA certificates (env MREG_CA_CERT)"}),
    (
        ("--client-cert",),
        {"metavar": "PEM", "help": "present this client certificate, for mutual TLS (env MREG_CLIENT_CERT)"},
    ),
    (("--client-key",), {"metavar": "PEM", "help": "the private key of --client-cert (env MREG_CLIENT_KEY)"}),
    (("--tls",), {"is_flag": True, "help": "use TLS, trusting the system's CA certificates (env MREG_TLS=1)"}),
]
GLOBAL_NAMES = [
    "metadata_addr",
    "blob_addr",
    "entity",
    "project",
    "as_json",
    "quiet",
    "profile",
    "ca_cert",
    "client_cert",
    "client_key",
    "tls",
]


def global_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for declarations, settings in reversed(GLOBAL_OPTIONS):
        function = click.option(*declarations, **settings)(function)
    return function


def transfer_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--parallel and --no-cache: only the commands that move file content take them."""
    function = click.option(
        "--no-cache", is_flag=True, help="skip the local hash and content caches (env MREG_CACHE_DIR)"
    )(function)
    return click.option(
        "--parallel", type=click.IntRange(1, 256), help="parallel transfer streams (env MREG_PARALLEL; default 8)"
    )(function)


def description_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option(
            "--description-file", metavar="PATH", help="read the description from a file, e.g. README.md ('-': stdin)"
        )(function)
        return click.option("--description", metavar="TEXT", help=f"{what}, at most 64 KiB of UTF-8")(function)

    return decorate


def _namespace(ctx: click.Context) -> argparse.Namespace:
    """The command's parameters, with each global option given before the command filling in one not given after."""
    values = dict(ctx.params)
    root = ctx.find_root().params
    for name in GLOBAL_NAMES:
        if values.get(name) in (None, False) and root.get(name) not in (None, False):
            values[name] = root[name]
    values["json"] = bool(values.pop("as_json", False))
    for key, value in values.items():
        if isinstance(value, tuple):
            values[key] = list(value)
    return argparse.Namespace(**values)


def _runner(handler: Callable[[argparse.Namespace, Output], None]) -> Callable[..., None]:
    @click.pass_context
    def run(ctx: click.Context, **_: Any) -> None:
        args = _namespace(ctx)
        out = Output(args.json, args.quiet, getattr(args, "json_lines", False))
        _State.json_errors = out.as_json
        try:
            handler(args, out)
        except click.UsageError as e:
            if e.ctx is None:  # raised by a handler: give it the command, so its usage and help hint are shown
                e.ctx = ctx
            raise
        except MregError as e:
            if e.code == "NOT_FOUND":
                raise _with_hint(args, e) from e
            raise
        finally:
            out.close()

    return run


def _with_hint(args: argparse.Namespace, error: MregError) -> MregError:
    """``error`` with a hint naming the collections of the project whose names are close to the reference's."""
    ref = next((getattr(args, n) for n in ("ref", "artifact", "collection", "target") if getattr(args, n, None)), None)
    if not ref or "did you mean" in error.message:
        return error
    try:
        with _registry(args) as registry:
            parts = ref.split(":")[0].split("/")
            name = parts[-1]
            if len(parts) >= 3:
                project = "/".join(parts[-3:-1])
            elif len(parts) == 2 and registry.entity:
                project = f"{registry.entity}/{parts[0]}"
            elif registry.entity and registry.project:
                project = f"{registry.entity}/{registry.project}"
            else:
                return error
            names = [a.name for a in registry.list_artifacts(project)]
            names += [m.name for m in registry.list_registered_models(project)]
    except Exception:  # a hint is a nicety: never let it hide the error itself
        return error
    short = {n.rsplit("/", 1)[-1]: n for n in names}
    close = difflib.get_close_matches(name, list(short), n=3, cutoff=0.6)
    if not close or name in close:
        return error
    hinted = MregError(
        error.code,
        f"{error.message}; did you mean {' or '.join(short[c] for c in close)}?",
        error.violations,
        reason=error.reason,
        metadata=error.metadata,
    )
    return hinted


def _leaf(
    group: click.Group, name: str, handler: Callable[[argparse.Namespace, Output], None], **settings: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """Declares command ``name`` of ``group``: its own parameters (the decorated stub's) plus the global options."""

    def decorate(stub: Callable[..., Any]) -> click.Command:
        params = getattr(stub, "__click_params__", [])
        function = global_options(_runner(handler))
        function.__click_params__ = [*params, *getattr(function, "__click_params__", [])]  # type: ignore[attr-defined]
        return group.command(name, **settings)(function)

    return decorate


def _stub(*_: Any, **__: Any) -> None:
    """Holds a command's own parameters for _leaf."""


def _show_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"mreg {_installed_version()}")
        ctx.exit()


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    cls=MregGroup,
    context_settings=CONTEXT,
    epilog="""\b
References are [[ENTITY/]PROJECT/]NAME[:vN|:ALIAS]; no selector means latest.
Global options go before or after the command: mreg --json ls acme/vision.
Exit status: 0 success, 1 error, 2 usage error, 130 interrupted, 141 output pipe closed.
Settings: flag > MREG_* env > config.toml > login profile > default (mreg config show).
Completion: eval "$(_MREG_COMPLETE=bash_source mreg)" (zsh_source, fish_source).

\b
Examples:
  mreg push ck acme/vision/resnet --alias candidate
  mreg ls acme/vision
  mreg versions acme/vision/resnet --filter 'metadata.val_loss < 0.2'""",
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version, help="print the version"
)
@global_options
def cli(**_: Any) -> None:
    """mreg: a model registry for training clusters."""


@click.argument("dir", type=click.Path(file_okay=False))
@click.argument("ref")
@click.option("--type", default="model", show_default=True, help="the artifact's type")
@click.option("--alias", multiple=True, help="an alias for the new version (repeatable)")
@click.option("--metadata", metavar="JSON", help="a JSON object, e.g. '{\"accuracy\": 0.91}'")
@description_options("the version's description (Markdown)")
@click.option("--tag", multiple=True, help="a tag (repeatable)")
@click.option("--link", multiple=True, metavar="REGISTERED_MODEL", help="link into this registered model (repeatable)")
@click.option("--create", is_flag=True, help="create --link registered models that do not exist")
@click.option("--run", default="", help="the run that produced this version (lineage)")
@click.option(
    "--update-existing",
    is_flag=True,
    help="when the content equals the latest version's, give that version the description, tags and "
    "metadata asked for (without it they are ignored, with a note on stderr)",
)
@transfer_options
def _push(*_: Any) -> None: ...


_leaf(
    cli,
    "push",
    cmd_push,
    help="Upload directory DIR as a new version of artifact REF ([[ENTITY/]PROJECT/]ARTIFACT).",
    short_help="upload a directory as a new version",
    epilog="\b\nExample:\n  mreg push ck acme/vision/resnet --alias candidate --metadata '{\"accuracy\": 0.93}'",
)(_push)


@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.option("--run", default="", help="record that this run used the version (lineage)")
@transfer_options
def _pull(*_: Any) -> None: ...


_leaf(
    cli,
    "pull",
    cmd_pull,
    help="Download version REF into directory DEST, verified.",
    short_help="download a version, verified",
)(_pull)


@click.argument("ref")
def _show(*_: Any) -> None: ...


_leaf(
    cli,
    "show",
    cmd_show,
    help="A version's (or link's) details and manifest; a registered model's card.",
    short_help="a version's (or link's) details and manifest",
)(_show)


@click.argument("target", required=False, metavar="[ENTITY[/PROJECT] | ARTIFACT | REGISTERED_MODEL]")
@click.option("--limit", type=click.IntRange(0), default=0, help="list at most N (0: all)")
@click.option("--json-lines", is_flag=True, help="one JSON object per line")
def _ls(*_: Any) -> None: ...


_leaf(
    cli,
    "ls",
    cmd_ls,
    help="List an entity's projects (those holding something you may read), a project's collections (type, "
    "count, latest, created), an artifact's versions (aliases, size, files, created, tags) or a registered "
    "model's links. Without a target, the default project (--entity/--project, MREG_ENTITY/MREG_PROJECT, "
    "config.toml or the profile's).",
    short_help="list an entity, a project, an artifact or a registered model",
    epilog="\b\nExamples:\n  mreg ls acme\n  mreg ls acme/vision\n  mreg ls acme/vision/resnet --limit 5\n"
    "  mreg ls acme/vision --json-lines",
)(_ls)


@click.argument("ref")
@click.argument("registered_model")
@click.option("--alias", multiple=True, help="an alias for the link (repeatable)")
@click.option(
    "--create",
    is_flag=True,
    help="create the registered model if it does not exist (without it, a missing one is NOT_FOUND)",
)
@description_options("with --create: the new registered model's card (Markdown)")
def _link(*_: Any) -> None: ...


_leaf(
    cli,
    "link",
    cmd_link,
    help="Link version REF into REGISTERED_MODEL.",
    short_help="link a version into a registered model",
)(_link)


@click.argument("ref")
@click.option("--force", is_flag=True, help="also remove the version's aliases and links")
@click.option("--collection", is_flag=True, help="delete the (empty) collection REF")
@click.option("--dry-run", is_flag=True, help="only show what would be deleted")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation on a terminal")
def _delete(*_: Any) -> None: ...


_leaf(
    cli,
    "delete",
    cmd_delete,
    help="Delete version REF (ARTIFACT:vN), a link (REGISTERED_MODEL:vN) or, with --collection, an empty "
    "collection. On a terminal it asks first unless --yes; with --json or a non-terminal stdin it does not ask.",
    short_help="delete a version, a link or an empty collection",
    epilog="\b\nExamples:\n  mreg delete acme/vision/resnet:v3 --dry-run\n"
    "  mreg delete acme/vision/resnet:v3 --force --yes",
)(_delete)

FILTER_HELP = """\b
Filter grammar (--filter):
  EXPR   := TERM [AND|OR TERM]...   with NOT and ( ) too
  TERM   := FIELD OP VALUE
  FIELD  := index | state | alias | tag | run | create_time | commit_time
            | size_bytes | file_count | metadata.KEY[.KEY...]
  OP     := = | != | < | <= | > | >=   (alias, tag, state, run: = and != only)
  VALUE  := number | "string" | 'string' | true | false
Times are RFC 3339 with a zone; only committed versions unless state is named.
Order (--order-by): index | create_time | size_bytes | metadata.KEY, then asc|desc.

\b
Example:
  mreg versions acme/vision/resnet --filter 'metadata.val_loss < 0.2 AND tag = "fp16"'
  mreg versions acme/vision/resnet --filter 'NOT alias = "archived"' --order-by 'metadata.val_loss asc'"""


@click.argument("ref")
@click.option("--filter", default="", metavar="EXPR", help="e.g. 'metadata.val_loss < 0.2 AND tag = \"fp16\"'")
@click.option("--order-by", default="", metavar="KEY", help="e.g. 'metadata.val_loss asc' (default: index desc)")
@click.option("--limit", type=click.IntRange(0), default=0, help="at most N versions (0: all)")
def _versions(*_: Any) -> None: ...


_leaf(
    cli,
    "versions",
    cmd_versions,
    help="Search the versions of artifact REF.",
    short_help="search an artifact's versions",
    epilog=FILTER_HELP,
)(_versions)


@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--run", help="show (or with --record, add to) a run's inputs and outputs")
@click.option("--record", is_flag=True, help="record that --run used the versions REF...")
def _lineage(*_: Any) -> None: ...


_leaf(
    cli,
    "lineage",
    cmd_lineage,
    help="Which run made version REF and which runs used it; or a run's inputs and outputs (--run).",
    short_help="which run made a version, which runs used it",
    epilog="\b\nExamples:\n  mreg lineage acme/vision/resnet:v3\n"
    "  mreg lineage --run acme/vision/eval-7 --record acme/vision/resnet:v3",
)(_lineage)


@click.option(
    "--since",
    type=int,
    default=0,
    metavar="CURSOR",
    callback=_within(0, INT64_MAX, "a sequence"),
    help="replay events after this sequence",
)
@click.option("--from-now", is_flag=True, help="skip the replay")
@click.option(
    "--prefix",
    default="",
    help="only resources under this prefix, in whole path segments "
    "(acme/vision/resnet matches resnet:v3, not resnet-large)",
)
@click.option("--limit", type=click.IntRange(0), default=0, help="stop after this many events")
@click.option("--json-lines", is_flag=True, help="one JSON object per event and line (as --json)")
def _watch(*_: Any) -> None: ...


_leaf(
    cli,
    "watch",
    cmd_watch,
    help="Stream change events (time, sequence, kind, resource, actor) until interrupted or --limit.",
    short_help="stream change events",
)(_watch)


@click.option(
    "--grace-seconds",
    type=int,
    callback=_within(0, INT64_MAX, "a number of seconds"),
    help="keep content used more recently (default one day)",
)
@click.option("--dry-run", is_flag=True, help="only report what would be deleted")
def _gc(*_: Any) -> None: ...


_leaf(
    cli, "gc", cmd_gc, help="Delete blob content no version references.", short_help="delete unreferenced blob content"
)(_gc)


@click.option("--data-dir", envvar="MREG_DATA_DIR", default=".mreg", show_default=True, help="(env MREG_DATA_DIR)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--metadata-port", type=click.IntRange(0, 65535), metavar="PORT", default=50051, show_default=True)
@click.option("--blob-port", type=click.IntRange(0, 65535), metavar="PORT", default=50052, show_default=True)
@click.option("--database-url", envvar="MREG_DATABASE_URL", help="default: SQLite in DIR (env MREG_DATABASE_URL)")
@click.option(
    "--auth",
    is_flag=True,
    default=lambda: os.environ.get("MREG_AUTH", "").lower() in ("1", "true", "yes", "on"),
    help="require tokens; the first start writes an admin token to DIR/admin.token (env MREG_AUTH=1)",
)
@click.option(
    "--tls-cert",
    default="",
    metavar="PEM",
    help="both services serve TLS with this certificate chain (needs --tls-key); it must name --host "
    "(localhost when --host is 0.0.0.0), and the metadata service trusts it to reach the blob service",
)
@click.option("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
@click.option(
    "--tls-client-ca",
    default="",
    metavar="PEM",
    help="require client certificates issued by these CAs (mutual TLS); the metadata service presents "
    "--tls-cert to the blob service, so that certificate must be issued by them too",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    default=lambda: int(os.environ.get("MREG_METRICS_PORT") or 0),
    show_default="0, off",
    help="serve both services' Prometheus metrics over HTTP on --host at this port (env MREG_METRICS_PORT)",
)
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    default=lambda: int(os.environ.get("MREG_WEB_PORT") or 8080),
    show_default="8080",
    help="serve the web UI over HTTP on --host at this port, 0 for any free one (env MREG_WEB_PORT)",
)
@click.option("--no-web", is_flag=True, help="do not start the web UI")
@click.option(
    "--insecure",
    is_flag=True,
    help="allow a non-loopback --host although callers are not authenticated (metrics never authenticate)",
)
def _serve(*_: Any) -> None: ...


_leaf(
    cli,
    "serve",
    cmd_serve,
    help="Run both services on SQLite and local disk, and the web UI (it prints its URL; --no-web turns it off).",
    short_help="run both services and the web UI",
)(_serve)


@click.option(
    "--listen",
    envvar="MREG_WEB_LISTEN",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="where to serve HTTP (port 0: any free one); a non-loopback address needs services with auth, "
    "or --insecure (env MREG_WEB_LISTEN)",
)
@click.option(
    "--session-secret-file",
    envvar="MREG_WEB_SESSION_SECRET_FILE",
    metavar="PATH",
    help="the key that signs session cookies; share it between replicas (default: a random one per process, "
    "so a restart signs everyone out) (env MREG_WEB_SESSION_SECRET_FILE)",
)
@click.option("--secure-cookies", is_flag=True, help="mark the session cookie Secure (when served behind HTTPS)")
@click.option(
    "--insecure", is_flag=True, help="allow a non-loopback --listen although the services do not authenticate"
)
def _web(*_: Any) -> None: ...


_leaf(
    cli,
    "web",
    cmd_web,
    help="Run the web UI alone, as a client of the services --metadata-addr and --blob-addr name (their TLS "
    "options apply; the token does not: each user signs in with their own).",
    short_help="run the web UI alone",
    epilog="""\b
Example:
  mreg web --metadata-addr meta.internal:50051 --blob-addr blobs.internal:50052 --listen 0.0.0.0:8080""",
)(_web)


# alias ...
@cli.group("alias", cls=MregGroup, context_settings=CONTEXT, short_help="set, remove, audit and protect aliases")
def alias_group() -> None:
    """Set, remove, audit and protect aliases."""


@click.argument("ref")
@click.argument("alias")
@click.option(
    "--expect",
    metavar="vN|none",
    callback=_expectation,
    help="move only if the alias names vN now (or is unset): a safe promotion",
)
def _alias_set(*_: Any) -> None: ...


_leaf(alias_group, "set", cmd_alias_set, help="Point ALIAS at the version REF names.")(_alias_set)


@click.argument("collection")
@click.argument("alias")
def _alias_pair(*_: Any) -> None: ...


@click.argument("collection")
@click.argument("alias")
@click.option(
    "--expect",
    metavar="vN",
    callback=_removal_expectation,
    help="remove only if the alias names vN now: a safe rollback of a promotion",
)
def _alias_rm(*_: Any) -> None: ...


_leaf(alias_group, "rm", cmd_alias_rm, help="Remove ALIAS from COLLECTION.")(_alias_rm)
_leaf(alias_group, "history", cmd_alias_history, help="Who moved ALIAS of COLLECTION, and when.")(_alias_pair)


@click.argument("collection")
@click.argument("alias")
@click.option("--off", is_flag=True, help="unprotect instead")
def _alias_protect(*_: Any) -> None: ...


_leaf(alias_group, "protect", cmd_alias_protect, help="Mark ALIAS of COLLECTION protected.")(_alias_protect)


# retention ...
@cli.group("retention", cls=MregGroup, context_settings=CONTEXT, short_help="per-artifact retention policies")
def retention_group() -> None:
    """Per-artifact retention policies."""


@click.argument("artifact")
@click.option(
    "--keep-last", type=int, metavar="N", help="N >= 1: the latest version, and anything aliased or linked, stays"
)
@click.option("--none", is_flag=True, help="remove the policy")
@click.option("--dry-run", is_flag=True, help="only show which versions the policy would delete")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation on a terminal")
def _retention_set(*_: Any) -> None: ...


_leaf(
    retention_group,
    "set",
    cmd_retention_set,
    help="Keep the last N versions of ARTIFACT plus every version with an alias or link; the others are "
    "deleted now and after each push. Asks first on a terminal when versions would go, unless --yes.",
    epilog="\b\nExample:\n  mreg retention set acme/vision/resnet --keep-last 5 --dry-run",
)(_retention_set)


@click.argument("artifact")
def _retention_show(*_: Any) -> None: ...


_leaf(retention_group, "show", cmd_retention_show, help="The retention policy of ARTIFACT.")(_retention_show)


# tokens, identity, profiles ...
@cli.group("token", cls=MregGroup, context_settings=CONTEXT, short_help="create, list and revoke tokens (admin)")
def token_group() -> None:
    """Create, list and revoke tokens (admin)."""


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(value)
        except argparse.ArgumentTypeError as e:
            self.fail(str(e), param, ctx)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parse_size(value)
        except MregError as e:
            self.fail(e.message, param, ctx)
        return value


class EditType(click.ParamType):
    """A --set KEY=VALUE or --unset KEY: a malformed one is a usage error (exit 2) naming the problem."""

    def __init__(self, parse: Callable[[str], editing.MetadataEdit], name: str) -> None:
        self.parse = parse
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return self.parse(value)
        except MregError as e:
            self.fail(e.message, param, ctx)


@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--scope", metavar="ENTITY[/PROJECT]", help="where the role applies ('*' for admin, its default)")
@click.option("--expires", type=DurationType(), help="e.g. 30d, 12h, 90m, 3600s")
def _token_create(*_: Any) -> None: ...


_leaf(
    token_group,
    "create",
    cmd_token_create,
    help="Create token NAME (1-64 letters, digits, '.', '_' or '-'; the actor its changes are recorded as) "
    "and print its secret, shown only once.",
)(_token_create)
_leaf(token_group, "ls", cmd_token_ls, help="List tokens (never their secrets).")(_stub)


@click.argument("name")
def _token_revoke(*_: Any) -> None: ...


_leaf(token_group, "revoke", cmd_token_revoke, help="Revoke token NAME.")(_token_revoke)
_leaf(
    cli, "whoami", cmd_whoami, help="The token's name, role and scope.", short_help="the token's name, role and scope"
)(_stub)


@click.option("--token", help="the token (default: read from stdin when piped, else prompted for without echo)")
def _login(*_: Any) -> None: ...


_leaf(
    cli,
    "login",
    cmd_login,
    help="Check a token and save it with the addresses as a profile.",
    short_help="check a token and save it as a profile",
)(_login)
_leaf(cli, "logout", cmd_logout, help="Remove a saved profile.", short_help="remove a saved profile")(_stub)


class UpdateCommand(click.Command):
    """Keeps the command line, so --set and --unset apply in the order given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["mreg_args"] = list(args)
        return super().parse_args(ctx, args)


def _ordered_edits(ctx: click.Context) -> list[editing.MetadataEdit]:
    args = ctx.meta.get("mreg_args", [])
    edits: list[editing.MetadataEdit] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            break
        for option, parse in (("--set", editing.parse_set), ("--unset", editing.parse_unset)):
            if token == option and index + 1 < len(args):
                edits.append(parse(args[index + 1]))
                index += 1
            elif token.startswith(option + "="):
                edits.append(parse(token.split("=", 1)[1]))
        index += 1
    return edits


def _update(args: argparse.Namespace, out: Output) -> None:
    args.metadata_edits = _ordered_edits(click.get_current_context())
    cmd_update(args, out)


@click.argument("ref", metavar="REF")
@description_options("the new description (Markdown; '' clears it)")
@click.option("--metadata", metavar="JSON", help="a JSON object merged into the metadata (RFC 7386)")
@click.option("--replace-metadata", is_flag=True, help="replace the metadata whole instead of merging")
@click.option(
    "--set",
    "set_",
    multiple=True,
    type=EditType(editing.parse_set, "KEY=VALUE"),
    metavar="KEY=VALUE",
    help="set a metadata key; VALUE is JSON when it parses (0.1, true, null, [1]) else a string; "
    "dotted keys nest (train.lr=0.1)",
)
@click.option(
    "--unset", multiple=True, type=EditType(editing.parse_unset, "KEY"), metavar="KEY", help="remove a metadata key"
)
@click.option("--add-tag", multiple=True, metavar="TAG")
@click.option("--remove-tag", multiple=True, metavar="TAG")
def _update_stub(*_: Any) -> None: ...


_leaf(
    cli,
    "update",
    _update,
    cls=UpdateCommand,
    help="Edit what describes a version (its files never change) or a registered model. REF with a selector, "
    "or an artifact, names a version; a registered model's name without a selector names the registered model.",
    short_help="edit a version's description, tags and metadata, or a model's card",
    epilog="""\b
Examples:
  mreg update acme/vision/resnet:v3 --set train.lr=0.1 --unset notes --add-tag fp16
  mreg update acme/vision/resnet:best --metadata '{"accuracy": 0.93}' --replace-metadata
  mreg update "acme/model-registry/Classifier" --description-file README.md --add-tag prod""",
)(_update_stub)


@click.argument("ref")
@transfer_options
def _download(*_: Any) -> None: ...


_leaf(
    cli,
    "download",
    cmd_download,
    help="Print the path of a read-only directory holding version REF, verified. The same version again "
    "downloads nothing and prints the same path; versions share the bytes of files they have in common.",
    short_help="download a version into the cache and print its directory",
    epilog="\b\nExample:\n  cd $(mreg download acme/vision/resnet:best)",
)(_download)


@cli.group("cache", cls=MregGroup, context_settings=CONTEXT, short_help="list and prune the download cache")
def cache_group() -> None:
    """List and prune the download cache (MREG_CACHE_DIR)."""


_leaf(cache_group, "ls", cmd_cache_ls, help="Snapshots in the cache: version, files, size, last use.")(_stub)


@click.option("--max-size", type=SizeType(), help="evict down to this size, e.g. 500MB, 2GiB, 20GB")
@click.option("--older-than", type=DurationType(), help="remove what was not used for this long: 7d, 12h")
@click.option("--dry-run", is_flag=True, help="only print what would be removed")
def _cache_prune(*_: Any) -> None: ...


_leaf(
    cache_group,
    "prune",
    cmd_cache_prune,
    help="Remove snapshots (least recently used first) and content no snapshot uses. Without options, evicts "
    "down to MREG_CACHE_MAX_SIZE (default 50GB).",
    epilog="\b\nExample:\n  mreg cache prune --older-than 7d --max-size 20GB --dry-run",
)(_cache_prune)


@cli.group("config", cls=MregGroup, context_settings=CONTEXT, short_help="show the client's effective settings")
def config_group() -> None:
    """The client's settings: flags > MREG_* environment > config.toml > mreg login profile > defaults."""


_leaf(
    config_group,
    "show",
    cmd_config_show,
    help="Print each client setting's effective value and where it came from: a flag, an MREG_* environment "
    "variable, config.toml (its [profiles.NAME] table with --profile), the mreg login profile, or the default. "
    "The token is shown only as <set>.",
    short_help="print the effective settings and their sources",
    epilog="\b\nExamples:\n  mreg config show\n  mreg config show --profile ci --json",
)(_stub)


class _WarningsOnStderr(logging.Handler):
    """The client library's warnings, worded as the command's own notes: ``mreg: warning: …`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):  # stderr as it is now: tests and callers swap it
            print(f"mreg: warning: {record.getMessage()}", file=sys.stderr)


def _say_library_warnings() -> None:
    library = logging.getLogger("mreg.client")
    if not any(isinstance(handler, _WarningsOnStderr) for handler in library.handlers):
        library.addHandler(_WarningsOnStderr(logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command. Exit status: 0 success, 1 error (one line on stderr), 2 usage error,
    130 interrupted, 141 output pipe closed by the reader."""
    _say_library_warnings()
    if argv is None and "_MREG_COMPLETE" in os.environ:
        cli.main(prog_name="mreg", complete_var="_MREG_COMPLETE")  # prints the completion script or candidates
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Set before parsing, so a command line Click refuses is reported as JSON too.
    _State.json_errors = _asks_for_json(arguments)
    try:
        with cli.make_context("mreg", arguments) as ctx:
            cli.invoke(ctx)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
    except click.exceptions.Exit as e:  # --help, --version
        raise SystemExit(e.exit_code) from None
    except click.UsageError as e:
        if _State.json_errors:
            usage = e.ctx.get_usage() if e.ctx is not None else ""
            _print_json_error("INVALID_ARGUMENT", e.format_message(), "USAGE", usage=usage)
        else:
            e.show()
        raise SystemExit(EXIT_USAGE) from None
    except click.Abort:
        print("\nmreg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MregError as e:
        return _fail(e.code, _said_to_a_cli_user(e), e.reason)
    except UsageError as e:
        if _State.json_errors:
            _print_json_error("INVALID_ARGUMENT", str(e), "USAGE", usage=e.usage)
        else:
            with contextlib.suppress(OSError, ValueError):
                print(f"mreg {e.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
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
        return _fail(error.code, error.message, error.reason)
    except sqlite3.Error as e:
        where = "the local cache"
        with contextlib.suppress(MregError):
            where += f" in {default_cache_dir()}"
        return _fail("FAILED_PRECONDITION", f"{where} is unusable ({e}); remove it or pass --no-cache")
    except grpc.RpcError as e:
        error = MregError.from_rpc(e)
        return _fail(error.code, _said_to_a_cli_user(error), error.reason)
    except Exception as e:  # the last resort: a bug, but still one line and no traceback
        log.debug("unexpected error", exc_info=True)
        return _fail("INTERNAL", f"unexpected {type(e).__name__}: {_redact(str(e))[:500]} (please report this)")
    return 0


def _said_to_a_cli_user(error: MregError) -> str:
    """The message of ``error`` for someone at the command line: the services word some for API callers."""
    if error.reason == "TOKEN_MISSING":  # the services tell API callers which header to send
        return "this command needs a token: set MREG_TOKEN, or save one once with `mreg login`"
    return error.message


def _asks_for_json(arguments: Sequence[str]) -> bool:
    """Whether the command line asks for JSON output (``--json`` or ``--json-lines`` anywhere before ``--``)."""
    for argument in arguments:
        if argument == "--":
            return False
        if argument in ("--json", "--json-lines"):
            return True
    return False


def _print_json_error(code: str, message: str, reason: str, **extra: str) -> None:
    """One JSON object on stderr, ``{code, reason, message}`` and ``extra``: the shape of every --json error."""
    with contextlib.suppress(OSError, ValueError):
        print(json.dumps({"code": code, "reason": reason, "message": _redact(message), **extra}), file=sys.stderr)


def _fail(code: str, message: str, reason: str = "") -> int:
    """One line on stderr, ``mreg: error: CODE: message``; with --json one JSON object {code, reason, message}."""
    if _State.json_errors:
        _print_json_error(code, message, reason)
    else:
        with contextlib.suppress(OSError, ValueError):
            print(f"mreg: error: {code}: {_redact(message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
