"""Mutations that run once per request id: a retry with the same id gets the first result back.

A mutation stores a fingerprint of its request and a small JSON key of its result under
the caller's request id, in the same transaction as the change. A retry of the same
request rebuilds the result from that key; a different request reusing the id is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from mreg.metadata_service.catalog.common import Caller
from mreg.metadata_service.domain import PendingRequest
from mreg.metadata_service.errors import InvalidArgument, Reason, RegistryError
from mreg.metadata_service.unit_of_work import Database, RequestAlreadyRecorded, UnitOfWork

T = TypeVar("T")

MAX_REQUEST_ID = 128
# How long a request id is remembered; the janitor forgets older ones.
REQUEST_RECORD_TTL = timedelta(hours=24)


def _validate_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(
            f"request_id must be at most {MAX_REQUEST_ID} printable characters",
            Reason.FIELD_INVALID,
            {"field": "request_id"},
        )
    return request_id


def _request_fingerprint(caller: Caller, method: str, request_id: str, arguments: tuple[Any, ...]) -> str:
    """What makes two requests under one id the same request; refuses a malformed id."""
    _validate_request_id(request_id)
    parts = (method, caller.defaults.entity, caller.defaults.project, *arguments)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Mutations:
    """Runs the catalog's changes, each in one write transaction, once per request id."""

    def __init__(self, database: Database) -> None:
        self.db = database

    def run(
        self,
        caller: Caller,
        method: str,
        request_id: str,
        arguments: tuple[Any, ...],
        work: Callable[[UnitOfWork], tuple[T, dict[str, Any]]],
        replay: Callable[[UnitOfWork, dict[str, Any]], T],
    ) -> T:
        """Runs a mutation in one transaction, once per request id.

        ``work`` returns the result and a small JSON key from which ``replay`` rebuilds
        that result when a retry arrives with the same request id. ``arguments`` are what
        makes two requests the same request.

        The request id is recorded at commit, by the transaction's last INSERT rather than
        claimed by its first, which saves a statement on every mutation (two on PostgreSQL,
        where the same statement appends the events): a retry is rare, and one that finds the
        id taken rolls back what it did and replays the first result instead. A concurrent
        request with the same id waits on that INSERT until the first commits.

        Raises:
            InvalidArgument: the request id is malformed, or was used for a different request.
        """
        fingerprint = _request_fingerprint(caller, method, request_id, arguments)

        def transaction(uow: UnitOfWork) -> T:
            result, key = work(uow)
            if request_id:
                uow.record_request_at_commit(PendingRequest(request_id, method, fingerprint, key))
            return result

        try:
            return self.db.run(transaction, write=True, actor=caller.actor)
        except RequestAlreadyRecorded:
            pass
        except RegistryError:
            # A retry of a request that already acted can fail where the first succeeded (its
            # version is committed, its alias gone…): the first outcome is still the answer.
            if not request_id or not self._replays(request_id):
                raise
        return self.db.run(lambda uow: self._replay(uow, request_id, method, fingerprint, replay), write=False)

    def run_together(
        self,
        actor: str,
        method: str,
        requests: Sequence[tuple[Caller, str, tuple[Any, ...]]],
        work: Callable[[UnitOfWork], list[tuple[T, dict[str, Any]]]],
    ) -> list[T]:
        """Runs mutations of one actor, each ``(caller, request_id, arguments)`` as ``run`` takes them, in one
        transaction: ``work`` returns each one's result and key, in order, and each is recorded under its id.

        Nothing is replayed here: if any id is recorded already the transaction raises RequestAlreadyRecorded,
        and the caller runs each mutation through ``run`` instead, as it does on any error.
        """
        fingerprints = [
            _request_fingerprint(caller, method, request_id, arguments) for caller, request_id, arguments in requests
        ]

        def transaction(uow: UnitOfWork) -> list[T]:
            outcomes = work(uow)
            for (_, request_id, _), fingerprint, (_, key) in zip(requests, fingerprints, outcomes, strict=True):
                if request_id:
                    uow.record_request_at_commit(PendingRequest(request_id, method, fingerprint, key))
            return [result for result, _ in outcomes]

        return self.db.run(transaction, write=True, actor=actor)

    def _replays(self, request_id: str) -> bool:
        return self.db.run(lambda uow: uow.repo.request_record(request_id) is not None, write=False)

    @staticmethod
    def _replay(
        uow: UnitOfWork,
        request_id: str,
        method: str,
        fingerprint: str,
        replay: Callable[[UnitOfWork, dict[str, Any]], T],
    ) -> T:
        earlier = uow.repo.request_record(request_id)
        assert earlier is not None, "request records are only forgotten after a day"
        if (earlier.method, earlier.fingerprint) != (method, fingerprint):
            raise InvalidArgument(
                f"request_id {request_id!r} was already used for a different request ({earlier.method})",
                Reason.REQUEST_ID_REUSED,
            )
        return replay(uow, earlier.result or {})
