"""The event feed that Watch streams share: one reader of the log, recent events in memory."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from mreg.metadata_service.domain import EventView
from mreg.metadata_service.event_feed import EventFeed


class FakeLog:
    """An event log that counts how often it is read."""

    def __init__(self) -> None:
        self.events: list[EventView] = []
        self.reads = 0
        self.lock = threading.Lock()

    def append(self, resource: str) -> None:
        with self.lock:
            sequence = len(self.events) + 1
            self.events.append(EventView(sequence, "kind", resource, None, None, "", datetime.now(UTC)))

    def last(self) -> int:
        with self.lock:
            self.reads += 1
            return len(self.events)

    def after(self, sequence: int, limit: int) -> list[EventView]:
        with self.lock:
            self.reads += 1
            return self.events[sequence : sequence + limit]


def wait_past(feed: EventFeed, seen: int) -> None:
    """Waits (generously) until the feed holds events after ``seen``."""
    feed.wait(seen, threading.Event(), 30)
    assert feed.recent_after(seen, "", 1000) not in (None, ([], seen)), f"the feed never passed {seen}"


def test_streams_read_new_events_from_memory_and_the_log_is_read_once_per_change() -> None:
    log = FakeLog()
    log.append("acme/vision/a")
    feed = EventFeed(log.last, log.after, poll_seconds=60)
    try:
        assert feed.recent_after(0, "", 10) is None, "nothing is cached before anyone waits"
        feed.wait(0, threading.Event(), 30)  # the first waiter has the feed read the log's end
        log.append("acme/vision/b")
        log.append("acme/other/c")
        feed.committed()
        wait_past(feed, 1)
        reads = log.reads
        for _ in range(500):  # five hundred streams wake up and read
            events, reached = feed.recent_after(1, "acme/vision/", 10)  # type: ignore[misc]
            assert [e.resource for e in events] == ["acme/vision/b"]
            assert reached == 3
        assert log.reads == reads, "streams read memory, not the log"
        # A limit stops at the last event returned, so the stream continues from there.
        assert [e.sequence for e in feed.recent_after(1, "", 1)[0]] == [2]  # type: ignore[index]
        assert feed.recent_after(1, "", 1)[1] == 2  # type: ignore[index]
    finally:
        feed.stop()


def test_a_stream_outside_the_cached_range_is_sent_to_the_database() -> None:
    log = FakeLog()
    for i in range(5):
        log.append(f"r{i}")
    feed = EventFeed(log.last, log.after, poll_seconds=60, capacity=2)
    try:
        feed.wait(0, threading.Event(), 30)  # the cache starts at the log's end, sequence 5
        log.append("s0")
        log.append("s1")
        feed.committed()
        feed.wait(5, threading.Event(), 30)
        log.append("s2")  # the oldest cached event gives way
        feed.committed()
        feed.wait(7, threading.Event(), 30)
        assert feed.recent_after(1, "", 10) is None, "older than the cache"
        events, reached = feed.recent_after(6, "", 10)  # type: ignore[misc]
        assert [e.sequence for e in events] == [7, 8] and reached == 8
        assert feed.recent_after(9, "", 10) is None, "ahead of the cache"
    finally:
        feed.stop()


def test_a_waiting_stream_wakes_when_its_own_event_is_set() -> None:
    log = FakeLog()
    feed = EventFeed(log.last, log.after, poll_seconds=60)
    try:
        wake = threading.Event()
        timer = threading.Timer(0.05, wake.set)
        timer.start()
        feed.wait(0, wake, 30)  # returns on wake, long before the timeout
        assert wake.is_set()
    finally:
        feed.stop()
