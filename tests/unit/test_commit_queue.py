"""The queue that runs concurrent commits to one artifact together (catalog.batching), on threads.

Each test holds the first commit inside its transaction until the others have queued behind it, so
what runs together is decided, not left to the scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from mreg.metadata_service.catalog.batching import CommitQueue


class Committer:
    """Runs "commits" that are strings: alone answers ``alone:X``, together ``together:X``. A commit
    named in ``hold`` blocks alone until released; one named in ``refuse`` fails, alone and together."""

    def __init__(self, refuse: Sequence[str] = (), fail_together: bool = False) -> None:
        self.refuse = set(refuse)
        self.fail_together = fail_together
        self.held = threading.Event()
        self.release = threading.Event()
        self.groups: list[list[str]] = []
        self.alone_runs: list[str] = []
        self.lock = threading.Lock()

    def alone(self, member: str) -> str:
        with self.lock:
            self.alone_runs.append(member)
        if member.startswith("hold"):
            self.held.set()
            assert self.release.wait(10)
        if member in self.refuse:
            raise ValueError(f"refused {member}")
        return f"alone:{member}"

    def together(self, members: Sequence[str]) -> list[str]:
        with self.lock:
            self.groups.append(list(members))
        if self.fail_together or self.refuse.intersection(members):
            raise RuntimeError("the shared transaction failed")
        return [f"together:{member}" for member in members]


def queue_of(committer: Committer, max_together: int = 32) -> CommitQueue[str, str]:
    return CommitQueue(committer.alone, committer.together, max_together)


def queued_behind_a_held_commit(
    queue: CommitQueue[str, str], committer: Committer, members: list[str], pool: ThreadPoolExecutor, key: str = "a"
) -> tuple[Future[str], list[Future[str]]]:
    """Starts ``hold`` and waits until it runs, then starts ``members`` one by one, each queued before the next."""
    held = pool.submit(queue.run, key, "hold")
    assert committer.held.wait(10)
    futures = []
    for member in members:
        futures.append(pool.submit(queue.run, key, member))
        wait_until_queued(queue, key, len(futures))
    return held, futures


def wait_until_queued(queue: CommitQueue[str, str], key: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(queue._waiting.get(key, ())) != count:
        assert time.monotonic() < deadline, f"{count} commits did not queue"
        time.sleep(0.001)


def test_a_lone_commit_runs_alone_at_once() -> None:
    committer = Committer()
    queue = queue_of(committer)

    assert queue.run("a", "x") == "alone:x"
    assert queue.run("a", "y") == "alone:y"
    assert committer.groups == []
    assert queue._waiting == {}


def test_commits_that_queued_behind_a_running_one_run_together_in_arrival_order() -> None:
    committer = Committer()
    queue = queue_of(committer)
    sizes: list[int] = []
    queue.on_together = sizes.append
    with ThreadPoolExecutor(8) as pool:
        held, futures = queued_behind_a_held_commit(queue, committer, ["b", "c", "d", "e"], pool)
        committer.release.set()

        assert held.result(10) == "alone:hold"
        assert [f.result(10) for f in futures] == ["together:b", "together:c", "together:d", "together:e"]
    assert committer.groups == [["b", "c", "d", "e"]]
    assert sizes == [4]
    assert queue._waiting == {}


def test_a_group_is_at_most_max_together_and_the_rest_run_in_the_next() -> None:
    committer = Committer()
    queue = queue_of(committer, max_together=3)
    with ThreadPoolExecutor(8) as pool:
        _, futures = queued_behind_a_held_commit(queue, committer, ["b", "c", "d", "e", "f"], pool)
        committer.release.set()

        assert [f.result(10) for f in futures] == [
            "together:b",
            "together:c",
            "together:d",
            "together:e",
            "together:f",
        ]
    assert committer.groups == [["b", "c", "d"], ["e", "f"]]


def test_one_commit_queued_alone_runs_alone() -> None:
    committer = Committer()
    queue = queue_of(committer)
    with ThreadPoolExecutor(4) as pool:
        _, (only,) = queued_behind_a_held_commit(queue, committer, ["b"], pool)
        committer.release.set()

        assert only.result(10) == "alone:b"
    assert committer.groups == []


def test_when_the_shared_transaction_fails_each_commit_runs_alone_and_gets_its_own_answer() -> None:
    committer = Committer(refuse=["c"])
    queue = queue_of(committer)
    with ThreadPoolExecutor(8) as pool:
        _, (b, c, d) = queued_behind_a_held_commit(queue, committer, ["b", "c", "d"], pool)
        committer.release.set()

        assert b.result(10) == "alone:b"
        with pytest.raises(ValueError, match="refused c"):
            c.result(10)
        assert d.result(10) == "alone:d"
    assert committer.groups == [["b", "c", "d"]]
    assert sorted(committer.alone_runs) == ["b", "c", "d", "hold"]
    assert queue._waiting == {}


def test_a_commit_that_fails_alone_still_hands_on_to_those_queued_behind_it() -> None:
    committer = Committer(refuse=["hold"])
    queue = queue_of(committer)
    with ThreadPoolExecutor(8) as pool:
        held, futures = queued_behind_a_held_commit(queue, committer, ["b", "c"], pool)
        committer.release.set()

        with pytest.raises(ValueError, match="refused hold"):
            held.result(10)
        assert [f.result(10) for f in futures] == ["together:b", "together:c"]


def test_commits_with_other_keys_do_not_wait() -> None:
    committer = Committer()
    queue = queue_of(committer)
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(queue.run, "a", "hold")
        assert committer.held.wait(10)

        assert pool.submit(queue.run, "b", "x").result(10) == "alone:x"
        committer.release.set()
        assert held.result(10) == "alone:hold"
