"""Wakes Watch streams when the event log advances, at the cost of one query per change.

An idle Watch stream must cost next to nothing: hundreds of them may be open. Instead of
each stream polling the database, one thread reads the log's last sequence number: at
once when this process commits events, and every ``poll_seconds`` while any stream
waits (other replicas commit too). A stream sleeps until the log passes the sequence it
has seen, then reads its events once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class EventFeed:
    """Tells waiting streams when the event log holds events after the sequence they saw."""

    def __init__(self, read_last_sequence: Callable[[], int], poll_seconds: float = POLL_SECONDS) -> None:
        self._read_last = read_last_sequence
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._committed = threading.Event()
        self._stopping = threading.Event()
        # Each waiting stream's wake-up event and the last sequence it saw.
        self._waiters: dict[threading.Event, int] = {}
        # The highest sequence known to be committed; it only grows, so a stale value is
        # still a true lower bound.
        self._last = -1
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """Called after this process commits events: read the log's end now."""
        self._committed.set()

    def wait(self, seen: int, wake: threading.Event, timeout: float) -> None:
        """Blocks until the log holds an event after ``seen``, ``wake`` is set, or ``timeout`` passes.

        ``wake`` belongs to the caller, who may set it from elsewhere (e.g. when its
        client goes away) and clears it before reading the log again.
        """
        with self._lock:
            if self._last > seen:
                return
            self._waiters[wake] = seen
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-feed", daemon=True)
                self._thread.start()
        try:
            wake.wait(timeout)
        finally:
            with self._lock:
                self._waiters.pop(wake, None)

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
            try:
                last = self._read_last()
            except Exception:  # the feed must outlive a database hiccup; streams time out and retry
                log.warning("reading the event log's end failed; retrying", exc_info=True)
                continue
            with self._lock:
                self._last = max(self._last, last)
                for wake, seen in self._waiters.items():
                    if self._last > seen:
                        wake.set()
