"""The event feed that Watch streams share: one reader of the log, recent events in memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mreg.metadata_service import event_feed
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


def _streams_waiting(feed: EventFeed, count: int, on_wake: Callable[[threading.Event], None]) -> list[threading.Thread]:
    """``count`` streams waiting past sequence 0, each calling ``on_wake`` with its event once woken."""

    def stream(wake: threading.Event) -> None:
        feed.wait(0, wake, 30)
        on_wake(wake)

    threads = [threading.Thread(target=stream, args=(threading.Event(),)) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(feed._waiters) < count and time.monotonic() < deadline:  # every stream is waiting
        time.sleep(0.005)
    return threads


def test_streams_are_woken_a_wave_at_a_time_each_wave_once_the_last_came_back(monkeypatch) -> None:
    # Hundreds of streams woken at once queue together for the GIL, and a unary call arriving then waits behind
    # all of them: no more than a wave is woken at a time, the next once the last has sent and come back.
    monkeypatch.setattr(event_feed, "WAVE_SECONDS", 30.0)  # only coming back lets the next wave go
    log = FakeLog()
    feed = EventFeed(log.last, log.after, poll_seconds=60)
    awake, most_awake, woken = 0, 0, 0
    counting = threading.Lock()

    def send_then_come_back(wake: threading.Event) -> None:
        nonlocal awake, most_awake, woken
        with counting:
            awake += 1
            woken += 1
            most_awake = max(most_awake, awake)
        time.sleep(0.02)  # sending what it found
        with counting:
            awake -= 1
        feed.leave(wake)  # as a stream that ends does; one that waits again comes back the same way

    try:
        streams = _streams_waiting(feed, 3 * event_feed.WAVE_STREAMS + 5, send_then_come_back)
        log.append("acme/vision/a")
        feed.committed()
        for thread in streams:
            thread.join(timeout=20)
        assert woken == len(streams), "every stream was woken"
        assert most_awake <= event_feed.WAVE_STREAMS
    finally:
        feed.stop()


def test_a_wave_whose_streams_never_come_back_lets_the_next_go_after_a_moment(monkeypatch) -> None:
    monkeypatch.setattr(event_feed, "WAVE_SECONDS", 0.05)
    log = FakeLog()
    feed = EventFeed(log.last, log.after, poll_seconds=60)
    woken: list[float] = []
    try:
        streams = _streams_waiting(feed, 2 * event_feed.WAVE_STREAMS + 1, lambda wake: woken.append(time.monotonic()))
        started = time.monotonic()
        log.append("acme/vision/a")
        feed.committed()
        for thread in streams:
            thread.join(timeout=20)
        assert len(woken) == len(streams)
        assert max(woken) - started < 5, "a stream that is gone or stuck sending holds no one up for long"
    finally:
        feed.stop()
