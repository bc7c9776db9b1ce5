"""Lineage: which run produced a version and which runs used it as an input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mreg.metadata_service.catalog.common import Caller, resolve_version_row
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.views import version_name
from mreg.metadata_service.domain import Lineage
from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.references import parse_collection, parse_reference
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.principals import Role


class RunLineage:
    """Recording the versions a run used, and asking what a version or a run is connected to."""

    def __init__(self, database: Database, mutations: Mutations) -> None:
        self.db = database
        self.mutations = mutations

    def record_inputs(
        self, caller: Caller, run: str, references: Sequence[str], request_id: str = ""
    ) -> tuple[str, ...]:
        """Records that ``run`` used the versions ``references`` name; returns their version names."""
        run_name = str(parse_collection(run, caller.defaults, "run"))
        refs = [parse_reference(r, caller.defaults) for r in references]
        if not refs:
            raise InvalidArgument("name at least one version the run used", Reason.FIELD_INVALID, {"field": "versions"})

        def work(uow: UnitOfWork) -> tuple[tuple[str, ...], dict[str, Any]]:
            recorded = []
            for ref in refs:
                version, artifact = resolve_version_row(uow.repo, ref)
                uow.repo.add_run_input(run_name, version.id)
                recorded.append(f"{uow.repo.collection_full_name(artifact)}:v{version.index}")
            # A run's inputs are lineage, which no resolve shows.
            uow.record("run.inputs", run_name, after={"versions": recorded}, collection_id=None)
            return tuple(recorded), {"versions": recorded}

        arguments = (run_name, [str(r) for r in refs])
        return self.mutations.run(
            caller, "RecordRunInputs", request_id, arguments, work, lambda uow, key: tuple(key["versions"])
        )

    def of(self, caller: Caller, version_ref: str = "", run: str = "") -> Lineage:
        """The lineage of a version (its producer and consumers) or of a run (its inputs and outputs)."""
        if bool(version_ref) == bool(run):
            raise InvalidArgument("set exactly one of version and run", Reason.FIELD_INVALID, {"field": "subject"})

        def of_version(uow: UnitOfWork) -> Lineage:
            version, _ = resolve_version_row(uow.repo, parse_reference(version_ref, caller.defaults))
            # Only registered models the caller may read: a link's name would say one exists.
            links = tuple(
                f"{entity}/{project}/{model}:v{index}"
                for entity, project, model, index in uow.repo.links_to(version.id)
                if caller.may(Role.READER, entity, project)
            )
            return Lineage(version.producer_run or "", tuple(uow.repo.consumer_runs(version.id)), (), (), links)

        def of_run(uow: UnitOfWork) -> Lineage:
            name = str(parse_collection(run, caller.defaults, "run"))
            inputs = tuple(sorted(version_name(uow.repo, v) for v in uow.repo.run_inputs(name)))
            outputs = tuple(sorted(version_name(uow.repo, v) for v in uow.repo.run_outputs(name)))
            return Lineage("", (), inputs, outputs)

        return self.db.run(of_version if version_ref else of_run, write=False)
