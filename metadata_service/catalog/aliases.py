"""Aliases: moving and removing them (with compare-and-set), protecting them, and their history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from mreg.metadata_service.catalog.common import (
    Caller,
    collection_missing,
    find_collection,
    is_unborn,
    select_link,
    selected_index,
    version_missing,
)
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.resolution import context_and_selected_version
from mreg.metadata_service.catalog.views import event_view
from mreg.metadata_service.domain import AliasChange, CollectionKind, EventView, Page
from mreg.metadata_service.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason
from mreg.metadata_service.models import Collection
from mreg.metadata_service.pagination import decode_token, encode_token, page_size, sequence_key
from mreg.metadata_service.references import CollectionName, parse_collection, parse_reference, validate_alias
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.principals import Role


def require_alias_rights(caller: Caller, collection: Collection, name: CollectionName, alias: str) -> None:
    """A protected alias moves, goes or loses protection only by a MAINTAINER of the collection's project."""
    if alias in (collection.protected_aliases or ()) and not caller.principal.allows(
        Role.MAINTAINER, name.entity, name.project
    ):
        raise PermissionDenied(
            f"alias {alias!r} of {name} is protected: only a maintainer of {name.entity}/{name.project} may move "
            f"or remove it, and {caller.principal.name} is a {caller.principal.role.label} "
            f"of {caller.principal.scope}",
            Reason.ALIAS_PROTECTED,
            {"alias": alias, "principal": caller.principal.name},
        )


def move_alias(
    uow: UnitOfWork,
    caller: Caller,
    collection: Collection,
    name: CollectionName,
    alias: str,
    index: int,
    aliases: Mapping[str, int] | None = None,
) -> int | None:
    """Points ``alias`` at ``index``, recording the move if it changed anything; returns the previous index.

    ``aliases`` are the collection's aliases if the caller read them under the collection's lock:
    the alias's current index is then known, and not read again.
    """
    require_alias_rights(caller, collection, name, alias)
    if aliases is None:
        previous = uow.repo.set_alias(collection.id, alias, index)
    else:
        previous = aliases.get(alias)
        uow.repo.replace_alias(collection.id, alias, index, previous)
    if previous != index:
        before = None if previous is None else alias_target(uow, collection, previous)
        after = alias_target(uow, collection, index)
        uow.record("alias.set", f"{name}:{alias}", before=before, after=after, collection_id=collection.id)
    return previous


def remove_alias(
    uow: UnitOfWork, caller: Caller, collection: Collection, name: CollectionName, alias: str
) -> int | None:
    """Removes ``alias`` if set, recording it; returns the index it named."""
    require_alias_rights(caller, collection, name, alias)
    previous = uow.repo.delete_alias(collection.id, alias)
    if previous is not None:
        before = alias_target(uow, collection, previous)
        uow.record("alias.deleted", f"{name}:{alias}", before=before, collection_id=collection.id)
    return previous


def alias_target(uow: UnitOfWork, collection: Collection, index: int) -> dict[str, Any]:
    """What an alias event says it named: the index, and on a registered model the version the link at that
    index holds ("version": "entity/project/artifact:vN"), so a promotion audit reads which version went where
    without replaying every link event (a deleted link's index resolves no more)."""
    if collection.kind != CollectionKind.REGISTERED_MODEL.value:
        return {"index": index}
    link = uow.repo.find_link_by_index(collection.id, index)
    if link is None:
        return {"index": index}
    return {"index": index, "version": linked_version_name(uow, link.version_id)}


def linked_version_name(uow: UnitOfWork, version_id: int) -> str:
    """A linked (so committed) version's full name."""
    version = uow.repo.get_version(version_id)
    return f"{uow.repo.collection_full_name(uow.repo.get_collection(version.artifact_id))}:v{version.index}"


def _expectation(alias: str, current: int | None) -> dict[str, str]:
    """ErrorInfo metadata of ALIAS_EXPECTATION_FAILED: the alias and the index it names now ("" if unset)."""
    return {"alias": alias, "current_index": "" if current is None else str(current)}


def _check_expectation(
    name: CollectionName, alias: str, current: int | None, expected_index: int | None, expect_unset: bool
) -> None:
    """Compare-and-set: refuses the change unless the alias names what the caller expects."""
    holder = "is not set" if current is None else f"names v{current}"
    if expect_unset and current is not None:
        raise FailedPrecondition(
            f"alias {alias!r} of {name} {holder}; expected it unset",
            reason=Reason.ALIAS_EXPECTATION_FAILED,
            metadata=_expectation(alias, current),
        )
    if expected_index is not None and current != expected_index:
        raise FailedPrecondition(
            f"alias {alias!r} of {name} {holder}, not the expected v{expected_index}",
            reason=Reason.ALIAS_EXPECTATION_FAILED,
            metadata=_expectation(alias, current),
        )


class Aliases:
    """Setting, removing and protecting aliases of artifacts and registered models."""

    def __init__(self, database: Database, mutations: Mutations) -> None:
        self.db = database
        self.mutations = mutations

    def set(
        self,
        caller: Caller,
        target: str,
        alias: str,
        expected_index: int | None = None,
        expect_unset: bool = False,
        request_id: str = "",
    ) -> AliasChange:
        ref = parse_reference(target, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[AliasChange, dict[str, Any]]:
            uow.repo.lock_collection(ref.collection)
            # Under the collection's lock: the collection, its aliases, latest index and the selected version
            # in one statement.
            context, selected = context_and_selected_version(uow.repo.resolve_reads(), ref)
            if context is None or is_unborn(context.row):
                raise collection_missing(ref.collection, None)
            row = context.row
            if row.kind == CollectionKind.ARTIFACT.value:
                index = selected_index(context, ref, "version")
                if selected is None:
                    raise version_missing(context, index)
            else:
                link_index = select_link(uow.repo, context, ref).index
                assert link_index is not None
                index = link_index
            current = context.aliases.get(alias)
            _check_expectation(context.name, alias, current, expected_index, expect_unset)
            previous = move_alias(uow, caller, row, context.name, alias, index, context.aliases)
            change = AliasChange(str(context.name), alias, index, previous)
            return change, asdict(change)

        arguments = (str(ref), alias, expected_index, expect_unset)
        return self.mutations.run(caller, "SetAlias", request_id, arguments, work, lambda uow, key: AliasChange(**key))

    def delete(
        self, caller: Caller, collection: str, alias: str, expected_index: int | None = None, request_id: str = ""
    ) -> int:
        name = parse_collection(collection, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[int, dict[str, Any]]:
            row = find_collection(uow.repo, name, None, for_update=True)
            current = uow.repo.aliases(row.id).get(alias)
            if current is None:
                raise NotFound(
                    f"{CollectionKind(row.kind).label} {name} has no alias {alias!r}",
                    Reason.ALIAS_NOT_FOUND,
                    {"resource": f"{name}:{alias}", "alias": alias},
                )
            _check_expectation(name, alias, current, expected_index, False)
            remove_alias(uow, caller, row, name, alias)
            return current, {"previous": current}

        arguments = (str(name), alias, expected_index)
        return self.mutations.run(caller, "DeleteAlias", request_id, arguments, work, lambda uow, key: key["previous"])

    def set_protection(
        self, caller: Caller, collection: str, alias: str, protected: bool, request_id: str = ""
    ) -> tuple[str, ...]:
        name = parse_collection(collection, caller.defaults)
        validate_alias(alias)

        def work(uow: UnitOfWork) -> tuple[tuple[str, ...], dict[str, Any]]:
            row = find_collection(uow.repo, name, None, for_update=True)
            current = set(row.protected_aliases or ())
            changed = (alias in current) != protected
            current = current | {alias} if protected else current - {alias}
            row.protected_aliases = sorted(current)
            if changed:
                uow.record(
                    "alias.protected" if protected else "alias.unprotected",
                    f"{name}:{alias}",
                    collection_id=row.id,
                )
            return tuple(sorted(current)), {"protected": sorted(current)}

        arguments = (str(name), alias, protected)
        return self.mutations.run(
            caller, "SetAliasProtection", request_id, arguments, work, lambda uow, key: tuple(key["protected"])
        )

    def history(self, caller: Caller, collection: str, alias: str, size: int, token: str) -> Page[EventView]:
        """The moves and removals of an alias, newest first."""
        name = parse_collection(collection, caller.defaults)
        if not alias:
            raise InvalidArgument("alias is empty", Reason.REFERENCE_INVALID, {"field": "alias"})
        limit = page_size(size)
        resource = f"{name}:{alias}"
        listing = f"history:{resource}"
        before = decode_token(token, listing, sequence_key)

        def work(uow: UnitOfWork) -> Page[EventView]:
            rows = uow.repo.resource_events(resource, before, limit + 1)
            if not rows and before is None and uow.repo.find_collection(name) is None:
                # A deleted collection's history stays readable; a name that never had one is a typo.
                raise collection_missing(name, None)
            views = tuple(event_view(e) for e in rows[:limit])
            tokens = tuple(encode_token(listing, e.sequence) for e in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)
