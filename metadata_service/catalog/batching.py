"""Concurrent commits to one artifact, run together in one transaction (group commit).

Commits to one artifact serialize on its row lock, and each holds it through its own statements and
its COMMIT, whose flush to disk is the slowest of them: sixteen jobs committing to one artifact would
otherwise queue for the lock one by one, however many cores and connections there are. Here a commit
that finds one already running for its key (in this process) waits for it instead; when it ends, the
commits that waited run together, in the order they arrived, in one transaction that takes the lock,
allocates their indexes and commits once for all of them. A commit that finds none running runs at
once, alone, so a lone client pays nothing for this. If the shared transaction fails, for whatever
reason, each of its commits runs again alone, as if it had never waited, and gets its own answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")

# Members of one shared transaction, at most: its statements grow with them, and one member's failure
# runs them all again alone.
DEFAULT_MAX_TOGETHER = 32


class _Waiting(Generic[M, R]):
    """A commit queued behind a running one, and what it is told when woken: its result, to lead the
    next group (``group``), or to run alone."""

    __slots__ = ("alone", "group", "member", "result", "woken")

    def __init__(self, member: M) -> None:
        self.member = member
        self.woken = threading.Event()
        self.result: R | None = None
        self.group: list[_Waiting[M, R]] | None = None
        self.alone = False


class CommitQueue(Generic[M, R]):
    """Runs commits with the same key one group at a time, the commits that queued meanwhile together."""

    def __init__(
        self,
        alone: Callable[[M], R],
        together: Callable[[Sequence[M]], list[R]],
        max_together: int = DEFAULT_MAX_TOGETHER,
    ) -> None:
        """``alone`` runs one commit in its own transaction; ``together`` runs several in one, returning
        their results in order, or raises to have each run alone."""
        self._alone = alone
        self._together = together
        self._max_together = max_together
        self._lock = threading.Lock()
        # Commits waiting, by key; a key is present while a group of its commits runs.
        self._waiting: dict[Hashable, list[_Waiting[M, R]]] = {}
        # Called with the size of each group that ran together (the service's metrics count them).
        self.on_together: Callable[[int], None] = lambda size: None

    def busy(self) -> bool:
        """Whether a commit of any key is running (one arriving now may have to wait for it)."""
        return bool(self._waiting)

    def run(self, key: Hashable, member: M) -> R:
        """Runs ``member``'s commit, alone or together with others of ``key``; raises what its commit raises."""
        me: _Waiting[M, R] = _Waiting(member)
        with self._lock:
            queue = self._waiting.get(key)
            if queue is None:
                self._waiting[key] = []
            else:
                queue.append(me)
        if queue is None:
            try:
                return self._alone(member)
            finally:
                self._hand_on(key)
        me.woken.wait()
        if me.alone:
            return self._alone(member)
        if me.group is None:
            assert me.result is not None
            return me.result
        return self._lead(key, me.group)

    def _lead(self, key: Hashable, group: list[_Waiting[M, R]]) -> R:
        """Runs a group (its first member is this thread's own commit) and wakes the others with their results."""
        me, others = group[0], group[1:]
        try:
            if not others:
                return self._alone(me.member)
            try:
                results = self._together([waiting.member for waiting in group])
            except Exception:
                log.debug("%d commits run together failed; each runs alone", len(group), exc_info=True)
            else:
                self.on_together(len(group))
                for waiting, result in zip(others, results[1:], strict=True):
                    waiting.result = result
                    waiting.woken.set()
                return results[0]
            for waiting in others:
                waiting.alone = True
                waiting.woken.set()
            return self._alone(me.member)
        finally:
            for waiting in others:
                if not waiting.woken.is_set():  # only if something escaped above: never leave one waiting
                    waiting.alone = True
                    waiting.woken.set()
            self._hand_on(key)

    def _hand_on(self, key: Hashable) -> None:
        """Wakes the first commit that queued behind the group just run, to lead those queued with it."""
        with self._lock:
            queue = self._waiting[key]
            if not queue:
                del self._waiting[key]
                return
            group = queue[: self._max_together]
            del queue[: self._max_together]
        group[0].group = group
        group[0].woken.set()
