"""Feeds Watch streams from one reader of the event log, so open streams cost the database nothing extra.

Hundreds of Watch streams may be open. If each polled the database, idle streams alone
would load it, and every commit would cost one query per stream. Instead one thread per
process reads the log: at once when this process commits events, and every
``poll_seconds`` while any stream waits (other replicas commit too; on PostgreSQL they
also say so with NOTIFY, which wakes the reader at once). It keeps the most
recent events in memory, so a stream that wakes finds its events there; only a stream
further behind than that reads the database itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from mreg.metadata_service.domain import EventView

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# The PostgreSQL notification channel every commit of events signals (see db.follow_commits), so
# replicas read the log at once instead of at their next poll; the poll stays as the fallback.
EVENTS_CHANNEL = "mreg_events"
# Events kept in memory for streams to read; a stream further behind reads the database.
RECENT_EVENTS = 2000
_FETCH_PAGE = 500
# Streams woken at once when the log grows; the next ones wake when these come back to wait (they have sent
# what they found), or after WAVE_SECONDS at the latest. Woken all at once, hundreds of stream threads queued
# for the GIL together, and a unary call arriving then waited behind all of them (a p99 of 44-78 ms with 500
# streams receiving 10 commits/s).
WAVE_STREAMS = 16
WAVE_SECONDS = 0.01


# Where a resource name may end a path segment: "acme/vision/resnet" + "/..." or ":v3".
SEGMENT_ENDS = ("/", ":")


def matches_prefix(resource: str, prefix: str) -> bool:
    """True if ``prefix`` names whole path segments of ``resource``.

    "acme/vision/resnet" matches "acme/vision/resnet:v3" and "acme/vision/resnet" itself,
    not "acme/vision/resnet-large"; a prefix ending in "/" or ":" matches as written.
    """
    if not resource.startswith(prefix):
        return False
    return (
        not prefix
        or prefix.endswith(SEGMENT_ENDS)
        or len(resource) == len(prefix)
        or resource[len(prefix)] in SEGMENT_ENDS
    )


class EventFeed:
    """The recent end of the event log, shared by all Watch streams of this process."""

    def __init__(
        self,
        read_last_sequence: Callable[[], int],
        read_events: Callable[[int, int], list[EventView]],
        poll_seconds: float = POLL_SECONDS,
        capacity: int = RECENT_EVENTS,
        on_first_wait: Callable[[], None] | None = None,
    ) -> None:
        """
        Args:
            read_last_sequence: returns the sequence of the last committed event.
            read_events: ``(after, limit)`` returns up to ``limit`` events after ``after``,
                oldest first, unfiltered.
            on_first_wait: called once, when the first stream waits (the reader starts).
        """
        self._on_first_wait = on_first_wait
        self._read_last = read_last_sequence
        self._read_events = read_events
        self._poll_seconds = poll_seconds
        self._capacity = capacity
        self._lock = threading.Lock()
        self._committed = threading.Event()
        self._stopping = threading.Event()
        # Each waiting stream's wake-up event and the last sequence it saw.
        self._waiters: dict[threading.Event, int] = {}
        # The streams of the wave last woken that have not come back to wait yet.
        self._wave: set[threading.Event] = set()
        self._wave_back = threading.Condition(self._lock)
        # The cache holds every event with start < sequence <= end, in order; end = -1 until
        # the first read. Sequences are gap-free, so event i has sequence start + 1 + i.
        self._recent: deque[EventView] = deque()
        self._start = -1
        self._end = -1
        self._thread: threading.Thread | None = None
        # Set by a local commit, cleared when the reader reads: a stream that starts waiting
        # after a commit nobody read yet has the reader read at once, not at the next poll.
        self._stale = True

    def committed(self) -> None:
        """Called after this process commits events: read the log's end now."""
        self._stale = True
        self._committed.set()

    def recent_after(self, sequence: int, resource_prefix: str, limit: int) -> tuple[list[EventView], int] | None:
        """Events after ``sequence`` whose resource starts with the prefix, and the sequence read up to,
        if the cache covers ``sequence``; None if the caller must read the database."""
        with self._lock:
            if self._end < 0 or not self._start <= sequence <= self._end:
                return None
            found: list[EventView] = []
            for i in range(sequence - self._start, len(self._recent)):
                event = self._recent[i]
                if matches_prefix(event.resource, resource_prefix):
                    found.append(event)
                    if len(found) == limit:
                        return found, event.sequence
            return found, self._end

    def wait(self, seen: int, wake: threading.Event, timeout: float) -> None:
        """Blocks until the log holds an event after ``seen``, ``wake`` is set, or ``timeout`` passes.

        ``wake`` belongs to the caller, who may set it from elsewhere (e.g. when its
        client goes away) and clears it before reading again.
        """
        with self._lock:
            self._came_back(wake)
            if self._end > seen:
                return
            self._waiters[wake] = seen
            if self._stale:
                self._committed.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-feed", daemon=True)
                self._thread.start()
                if self._on_first_wait is not None:
                    self._on_first_wait()
        try:
            wake.wait(timeout)
        finally:
            with self._lock:
                self._waiters.pop(wake, None)

    def leave(self, wake: threading.Event) -> None:
        """Called when a stream ends: a wave need not wait for it to come back."""
        with self._lock:
            self._came_back(wake)

    def _came_back(self, wake: threading.Event) -> None:
        if wake in self._wave:
            self._wave.discard(wake)
            if not self._wave:
                self._wave_back.notify_all()

    def stop(self) -> None:
        self._stopping.set()
        self._committed.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._committed.wait(self._poll_seconds)
            self._committed.clear()
            with self._lock:
                if not self._waiters or self._stopping.is_set():
                    continue
                self._stale = False
            try:
                self._catch_up()
            except Exception:  # the feed must outlive a database hiccup; streams time out and retry
                log.warning("reading the event log failed; retrying", exc_info=True)
                continue
            with self._lock:
                due = [wake for wake, seen in self._waiters.items() if self._end > seen]
            self._wake_in_waves(due)

    def _wake_in_waves(self, due: list[threading.Event]) -> None:
        """Wakes ``due`` WAVE_STREAMS at a time, each wave once the one before came back (or WAVE_SECONDS)."""
        for first in range(0, len(due), WAVE_STREAMS):
            with self._lock:
                self._wave = set(due[first : first + WAVE_STREAMS])
                for wake in self._wave:
                    wake.set()
                deadline = time.monotonic() + WAVE_SECONDS
                while self._wave and not self._stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wave_back.wait(left)
                self._wave = set()

    def _catch_up(self) -> None:
        """Reads events up to the log's end into the cache (only this thread writes it)."""
        last = self._read_last()
        if self._end < 0 or last - self._end > self._capacity:
            # First read, or too far behind to be worth reading: an empty cache at the log's
            # end; streams behind it read the database.
            self._reset(last)
            return
        while self._end < last:
            events = self._read_events(self._end, _FETCH_PAGE)
            if not events:
                return
            if events[0].sequence != self._end + 1:
                # Not contiguous (should not happen: sequences are gap-free); start afresh.
                log.warning("event log skipped from %d to %d; resetting the cache", self._end, events[0].sequence)
                self._reset(last)
                return
            with self._lock:
                self._recent.extend(events)
                self._end = events[-1].sequence
                while len(self._recent) > self._capacity:
                    self._recent.popleft()
                    self._start += 1

    def _reset(self, last: int) -> None:
        with self._lock:
            self._recent.clear()
            self._start = self._end = last
