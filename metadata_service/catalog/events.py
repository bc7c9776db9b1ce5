"""The event log: reading it, and following it as a Watch stream does.

Every change appends events in its own transaction. A stream follows the log through the
process's :class:`EventFeed` (recent events in memory, one reader for all streams) and
sends a heartbeat with the sequence reached while nothing it wants happens.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mreg.metadata_service.catalog.views import event_view
from mreg.metadata_service.db import follow_commits
from mreg.metadata_service.domain import EventView
from mreg.metadata_service.errors import InvalidArgument, OutOfRange, Reason
from mreg.metadata_service.event_feed import EVENTS_CHANNEL, POLL_SECONDS, EventFeed
from mreg.metadata_service.unit_of_work import Database, UnitOfWork

# A Watch stream with nothing to say still sends the reached sequence at least this often.
HEARTBEAT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class WatchItem:
    """One message of a Watch stream: an event, or (``event`` None) how far the log has been read."""

    sequence: int
    event: EventView | None = None


class Events:
    """Reading and following the event log; owns this process's event feed."""

    def __init__(self, database: Database, poll_seconds: float = POLL_SECONDS) -> None:
        self.db = database
        self._stopping = threading.Event()
        self.feed = EventFeed(
            lambda: self.db.run(lambda uow: uow.repo.last_event_sequence(), write=False),
            lambda after, limit: self.db.run(
                lambda uow: [event_view(e) for e in uow.repo.events_after(after, "", limit)], write=False
            ),
            poll_seconds=poll_seconds,
            on_first_wait=self._listen_to_other_replicas,
        )
        database.add_commit_listener(self.feed.committed)

    def _listen_to_other_replicas(self) -> None:
        """Started with the first Watch stream: only a process that has streams holds a LISTEN connection."""
        threading.Thread(
            target=follow_commits,
            args=(self.db.engine, EVENTS_CHANNEL, self.feed.committed, self._stopping),
            name="event-listener",
            daemon=True,
        ).start()

    def after(self, sequence: int, resource_prefix: str = "", limit: int = 500) -> tuple[list[EventView], int]:
        """Returns events after ``sequence`` (oldest first) and the last sequence committed."""
        if sequence < 0:
            raise InvalidArgument(
                f"start_after must not be negative (got {sequence})", Reason.FIELD_INVALID, {"field": "start_after"}
            )

        def work(uow: UnitOfWork) -> tuple[list[EventView], int]:
            last = uow.repo.last_event_sequence()
            rows = uow.repo.events_after(sequence, resource_prefix, limit)
            return [event_view(e) for e in rows], last

        return self.db.run(work, write=False)

    def follow(self, sequence: int, resource_prefix: str = "", limit: int = 500) -> tuple[list[EventView], int]:
        """Like ``after``, for streams following the log: served from the recent events this
        process keeps in memory when they cover ``sequence``, so open streams cost no queries."""
        if sequence < 0:
            raise InvalidArgument(
                f"start_after must not be negative (got {sequence})", Reason.FIELD_INVALID, {"field": "start_after"}
            )
        cached = self.feed.recent_after(sequence, resource_prefix, limit)
        return cached if cached is not None else self.after(sequence, resource_prefix, limit)

    def watch(
        self,
        start_after: int,
        resource_prefix: str,
        *,
        from_now: bool,
        wake: threading.Event,
        is_active: Callable[[], bool],
    ) -> Iterator[WatchItem]:
        """Follows the log for as long as ``is_active()``: events after ``start_after`` whose resource
        starts with ``resource_prefix``, and heartbeats.

        The first item says where the stream starts (the log's end with ``from_now``).
        Whoever sets ``wake`` (e.g. when the client goes away) ends a wait at once.
        """
        cursor = start_after
        if from_now:
            _, cursor = self.after(0, limit=0)
        else:
            self._check_cursor(start_after)
        # The first message tells the consumer the stream is live and where it starts.
        yield WatchItem(cursor)
        seen = cursor
        last_sent = time.monotonic()
        # Streams opened together would send their heartbeats together, in bursts that
        # delay unary calls; each stream beats at its own interval within the bound.
        heartbeat = HEARTBEAT_SECONDS * random.uniform(0.5, 1.0)
        try:
            while True:
                wake.clear()
                if not is_active():
                    return
                events, reached = self.follow(cursor, resource_prefix)
                for event in events:
                    yield WatchItem(event.sequence, event)
                    cursor = event.sequence
                if events:
                    last_sent = time.monotonic()
                    continue
                # Nothing after the cursor matches up to `reached`: wait for the log to grow.
                seen = max(seen, reached, cursor)
                if time.monotonic() - last_sent >= heartbeat:
                    # Filtered consumers learn how far the log has advanced without matching events.
                    cursor = seen
                    yield WatchItem(cursor)
                    last_sent = time.monotonic()
                # An idle stream sleeps until the log passes what it has seen, or ``wake`` is set.
                self.feed.wait(seen, wake, heartbeat - (time.monotonic() - last_sent))
        finally:
            self.feed.leave(wake)  # a wave of wake-ups need not wait for a stream that has gone

    def _check_cursor(self, start_after: int) -> None:
        """Refuses a cursor past the last committed event, which a stream would silently wait behind.

        Such a cursor comes from another registry, or outlived a restore from an older backup; the
        events committed until the log caught up with it would never be sent.
        """
        _, last = self.follow(start_after, limit=0)
        if start_after > last:
            raise OutOfRange(
                f"start_after {start_after} is beyond the end of the event log (its last event is {last}): "
                "resume from a sequence this registry sent, or from 0 to replay the whole log",
                Reason.FIELD_INVALID,
                {"field": "start_after", "last_sequence": str(last)},
            )

    def stop(self) -> None:
        self._stopping.set()
        self.feed.stop()
