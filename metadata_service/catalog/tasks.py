"""Periodic tasks shared by replicas: each runs on one replica at a time, once per interval.

Every replica runs a janitor thread that offers each periodic task (pending-version
expiry, garbage collection) to :meth:`PeriodicTasks.run_if_due`. A task runs only on the
replica that takes its lease, a row in ``task_leases``: taking it is one conditional
UPDATE, so it works alike on PostgreSQL and SQLite. When the task ends the lease is freed
and the task is due again an interval later, whichever replica asks then. A replica that
dies while running a task never frees its lease; the lease lapses after ``lease`` and the
next replica to ask takes the task over. A task must therefore finish well within its
lease, or be safe to overlap (garbage collection keeps its own lease for that reason).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mreg.metadata_service.models import utcnow
from mreg.metadata_service.unit_of_work import Database, UnitOfWork

log = logging.getLogger(__name__)

DEFAULT_TASK_LEASE = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class TaskHolder:
    """The replica holding a task's lease, and until when."""

    owner: str
    until: datetime


class PeriodicTasks:
    """This replica's side of the task leases.

    Args:
        database: the database all replicas share.
        owner: this replica's name in the leases (a random one by default).
        lease: how long a lease lasts: after that a holder is presumed dead.
    """

    def __init__(self, database: Database, owner: str | None = None, lease: timedelta = DEFAULT_TASK_LEASE) -> None:
        self.db = database
        self.owner = owner or uuid.uuid4().hex
        self.lease = lease

    def try_take(self, name: str) -> bool:
        """Takes the lease on task ``name`` if nobody holds it (or its lease lapsed) and it is due; True if taken."""
        now = utcnow()
        return self.db.run(lambda uow: uow.repo.take_task_lease(name, self.owner, now, now + self.lease), write=True)

    def release(self, name: str, next_run_at: datetime) -> None:
        """Frees this replica's lease on ``name``; the task is due again at ``next_run_at``."""
        released = self.db.run(lambda uow: uow.repo.release_task_lease(name, self.owner, next_run_at), write=True)
        if not released:
            log.warning("task %s outlasted its %s lease; another replica may have run it too", name, self.lease)

    def schedule(self, name: str, first_run_at: datetime) -> bool:
        """Makes task ``name`` first due at ``first_run_at`` unless it is scheduled already (it ran, or another
        replica scheduled it first); True if this call set the schedule.

        The schedule lives in the database, not in a replica's memory, so replicas that restart more often
        than the task's interval still find it due once the interval from the fleet's first start passed.
        """
        return self.db.run(lambda uow: uow.repo.schedule_task(name, first_run_at), write=True)

    def run_if_due(self, name: str, interval: timedelta, task: Callable[[], object]) -> bool:
        """Runs ``task`` if this replica takes its lease; returns whether it ran.

        The task is due again ``interval`` after it started, so a replica offering it every
        ``interval`` (as the janitor does, waiting after each run) finds it due each time.

        Raises:
            Whatever ``task`` raises (the lease is freed, and the task due an interval later).
        """
        started = utcnow()
        if not self.try_take(name):
            return False
        try:
            task()
        finally:
            self.release(name, started + interval)
        return True

    def holder(self, name: str) -> TaskHolder | None:
        """Who holds task ``name``'s lease now, if anyone (a lapsed lease counts as none)."""

        def work(uow: UnitOfWork) -> TaskHolder | None:
            row = uow.repo.task_lease(name)
            if row is None or row.owner is None or row.lease_until is None or row.lease_until < utcnow():
                return None
            return TaskHolder(row.owner, row.lease_until)

        return self.db.run(work, write=False)
