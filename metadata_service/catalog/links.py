"""Links: a registered model's members, each naming a version of an artifact of the same type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mreg.metadata_service.catalog.aliases import alias_target, move_alias, require_alias_rights
from mreg.metadata_service.catalog.common import (
    Caller,
    find_collection,
    resolve_version_row,
    select_link,
    validate_aliases,
)
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import collection_context, link_view, link_view_by_id
from mreg.metadata_service.domain import CollectionKind, LinkView, Page
from mreg.metadata_service.errors import FailedPrecondition, Reason
from mreg.metadata_service.models import Collection, Link, Version, utcnow
from mreg.metadata_service.pagination import decode_token, encode_token, index_key, page_size
from mreg.metadata_service.references import (
    CollectionName,
    parse_collection,
    parse_reference,
    parse_selected_reference,
)
from mreg.metadata_service.unit_of_work import Database, UnitOfWork


def link_version(
    uow: UnitOfWork,
    caller: Caller,
    version: Version,
    artifact: Collection,
    rm_name: CollectionName,
    aliases: Sequence[str],
) -> tuple[LinkView, bool, int]:
    """Links a version into a registered model (once) and moves ``aliases`` to the link.

    Returns:
        (view, whether the link is new, link id)
    """
    repo = uow.repo
    rm = find_collection(repo, rm_name, CollectionKind.REGISTERED_MODEL, for_update=True)
    if rm.type != artifact.type:
        raise FailedPrecondition(
            f"registered model {rm_name} holds versions of type {rm.type!r}; "
            f"this version's artifact has type {artifact.type!r}",
            reason=Reason.TYPE_MISMATCH,
            metadata={"expected_type": rm.type, "actual_type": artifact.type},
        )
    link = repo.find_link_to_version(rm.id, version.id)
    created = link is None
    if link is None:
        link = repo.add_link(
            Link(registered_model_id=rm.id, index=repo.allocate_index(rm), version_id=version.id, created_at=utcnow())
        )
        source = f"{repo.collection_full_name(artifact)}:v{version.index}"
        uow.record(
            "link.created",
            f"{rm_name}:v{link.index}",
            after={"index": link.index, "version": source},
            collection_id=rm.id,
        )
    for alias in aliases:
        move_alias(uow, caller, rm, rm_name, alias, link.index)
    _, view = link_view(repo, link, collection_context(repo, rm), with_manifest=False)
    return view, created, link.id


def unlink(uow: UnitOfWork, caller: Caller, link: Link, link_name: str) -> list[str]:
    """Deletes a link and the aliases of its registered model that named it, recording each; returns those
    aliases. A protected one goes only as ``require_alias_rights`` allows.

    Raises:
        PermissionDenied: a protected alias names the link and the caller may not remove it.
    """
    rm = uow.repo.get_collection(link.registered_model_id)
    rm_name = uow.repo.collection_full_name(rm)
    for alias, index in uow.repo.aliases(rm.id).items():
        if index == link.index:
            require_alias_rights(caller, rm, rm_name, alias)
    target = alias_target(uow, rm, link.index)
    removed = uow.repo.delete_aliases_at(rm.id, link.index)
    for alias in removed:
        uow.record("alias.deleted", f"{rm_name}:{alias}", before=target, collection_id=rm.id)
    version = uow.repo.get_version(link.version_id)
    uow.repo.delete_link(link)
    # The version by name, as link.created names it; its uid too, as before.
    before = {**target, "version_uid": version.uid}
    uow.record("link.deleted", link_name, before=before, collection_id=rm.id)
    return removed


class Links:
    """Creating, listing and deleting links."""

    def __init__(self, database: Database, mutations: Mutations) -> None:
        self.db = database
        self.mutations = mutations

    def create(
        self,
        caller: Caller,
        version_ref: str,
        registered_model: str,
        aliases: Sequence[str] = (),
        request_id: str = "",
    ) -> tuple[LinkView, bool]:
        ref = parse_reference(version_ref, caller.defaults)
        rm_name = parse_collection(registered_model, caller.defaults, "registered model")
        clean_aliases = validate_aliases(aliases)

        def work(uow: UnitOfWork) -> tuple[tuple[LinkView, bool], dict[str, Any]]:
            version, artifact = resolve_version_row(uow.repo, ref)
            view, created, link_id = link_version(uow, caller, version, artifact, rm_name, clean_aliases)
            return (view, created), {"link_id": link_id, "created": created}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[LinkView, bool]:
            return link_view_by_id(uow.repo, key["link_id"]), key["created"]

        arguments = (str(ref), str(rm_name), clean_aliases)
        return self.mutations.run(caller, "CreateLink", request_id, arguments, work, replay)

    def delete(self, caller: Caller, reference: str, request_id: str = "") -> tuple[str, tuple[str, ...]]:
        """Deletes a link; returns its name and the aliases removed with it."""
        ref = parse_selected_reference(reference, caller.defaults, "link")

        def work(uow: UnitOfWork) -> tuple[tuple[str, tuple[str, ...]], dict[str, Any]]:
            row = find_collection(uow.repo, ref.collection, CollectionKind.REGISTERED_MODEL, for_update=True)
            link = select_link(uow.repo, collection_context(uow.repo, row), ref)
            name = f"{ref.collection}:v{link.index}"
            removed = tuple(unlink(uow, caller, link, name))
            return (name, removed), {"name": name, "aliases": list(removed)}

        def replay(uow: UnitOfWork, key: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
            return key["name"], tuple(key.get("aliases", ()))

        return self.mutations.run(caller, "DeleteLink", request_id, (str(ref),), work, replay)

    def list(self, caller: Caller, parent: str, size: int, token: str) -> Page[LinkView]:
        name = parse_collection(parent, caller.defaults, "registered model")
        limit = page_size(size)
        listing = f"links:{name}"
        before = decode_token(token, listing, index_key)

        def work(uow: UnitOfWork) -> Page[LinkView]:
            row = find_collection(uow.repo, name, CollectionKind.REGISTERED_MODEL)
            context = collection_context(uow.repo, row)
            rows = uow.repo.list_links(row.id, before, limit + 1)
            views = tuple(link_view(uow.repo, link, context, with_manifest=False)[1] for link in rows[:limit])
            tokens = tuple(encode_token(listing, link.index) for link in rows[:limit])
            return Page(views, tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)
