"""A thread-safe map that keeps the most recently used values, within a bound on their summed weight."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(value: object) -> int:
    return 1


class WeightedLru(Generic[K, V]):
    """Values by key, least recently used first out once their weights sum past ``max_weight``.

    A value heavier than the whole bound is not kept at all, so one huge value cannot push out
    thousands of small ones. Weights default to 1: a bound on the number of values.
    """

    def __init__(self, max_weight: int, weight: Callable[[V], int] = _one) -> None:
        self.max_weight = max_weight
        self._weight = weight
        self._values: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            kept = self._values.get(key)
            if kept is None:
                return None
            self._values.move_to_end(key)
            return kept[0]

    def put(self, key: K, value: V) -> None:
        """Keeps ``value`` as the most recently used, in place of what ``key`` held."""
        weight = self._weight(value)
        if weight > self.max_weight:
            return
        with self._lock:
            previous = self._values.pop(key, None)
            if previous is not None:
                self._held -= previous[1]
            self._values[key] = (value, weight)
            self._held += weight
            while self._held > self.max_weight:
                _, (_, evicted) = self._values.popitem(last=False)
                self._held -= evicted
