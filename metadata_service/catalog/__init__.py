"""The metadata service's domain: its use cases, one module each, composed by :class:`MetadataCatalog`.

Every public method of a use case is one transaction (``Database.run``). Methods take
reference strings and the caller's defaults, validate everything before touching the
database, and return views from ``metadata_service.domain``.

- ``versions``: create, commit (with the content check), resolve, search, files, delete, expiry
- ``collections``: artifacts and registered models as wholes
- ``editing``: UpdateVersion and UpdateRegisteredModel (descriptions, tags, metadata)
- ``links``, ``aliases``, ``lineage``, ``retention``: what their names say
- ``garbage``: blob garbage collection and the protocol that keeps it from racing commits
- ``tasks``: leases that keep each periodic task (expiry, GC) to one replica at a time
- ``events``: reading and following (Watch) the event log
- ``tokens``: the tokens callers authenticate with
- ``idempotency``: mutations run once per request id; ``views``: rows to views;
  ``common``: the caller, input checks and name lookups all of them share
"""

from __future__ import annotations

from datetime import timedelta

from mreg.metadata_service.catalog.aliases import Aliases
from mreg.metadata_service.catalog.collections import Collections
from mreg.metadata_service.catalog.common import BlobService
from mreg.metadata_service.catalog.editing import Edits
from mreg.metadata_service.catalog.events import Events
from mreg.metadata_service.catalog.garbage import DEFAULT_CONTENT_CHECK_CACHE, GarbageCollector
from mreg.metadata_service.catalog.idempotency import Mutations
from mreg.metadata_service.catalog.lineage import RunLineage
from mreg.metadata_service.catalog.links import Links
from mreg.metadata_service.catalog.retention import Retention
from mreg.metadata_service.catalog.tasks import PeriodicTasks
from mreg.metadata_service.catalog.tokens import Tokens
from mreg.metadata_service.catalog.versions import DEFAULT_PENDING_TTL, Versions
from mreg.metadata_service.event_feed import POLL_SECONDS
from mreg.metadata_service.unit_of_work import Database


class MetadataCatalog:
    """The catalog of artifacts, versions, registered models and their links: one instance serves all RPCs.

    It only composes the use cases, which share one database and one blob service.
    """

    def __init__(
        self,
        database: Database,
        content: BlobService,
        pending_ttl: timedelta = DEFAULT_PENDING_TTL,
        watch_poll_seconds: float = POLL_SECONDS,
        content_check_cache: timedelta = DEFAULT_CONTENT_CHECK_CACHE,
    ) -> None:
        mutations = Mutations(database)
        self.versions = Versions(database, content, mutations, pending_ttl, content_check_cache)
        self.collections = Collections(database, mutations)
        self.edits = Edits(mutations)
        self.links = Links(database, mutations)
        self.aliases = Aliases(database, mutations)
        self.lineage = RunLineage(database, mutations)
        self.retention = Retention(mutations)
        self.garbage = GarbageCollector(database, content)
        self.events = Events(database, watch_poll_seconds)
        self.tokens = Tokens(database)
        self.tasks = PeriodicTasks(database)

    def stop(self) -> None:
        """Stops the event feed's reader thread."""
        self.events.stop()
