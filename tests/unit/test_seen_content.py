"""What the metadata service remembers of the content the blob service said it holds (garbage.SeenContent)."""

from __future__ import annotations

from mreg.metadata_service.catalog.garbage import SeenContent

A, B, C = ("a" * 64, 1), ("b" * 64, 2), ("c" * 64, 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_content_counts_as_seen_only_if_every_blob_was_and_under_the_oldest_epoch_of_them() -> None:
    seen = SeenContent(ttl=60, clock=Clock())
    seen.saw([A, B], epoch=7)
    seen.saw([B, C], epoch=9)  # seen again later: the later epoch holds for B
    assert seen.epoch_if_all_seen([A, B, C]) == 7
    assert seen.epoch_if_all_seen([B, C]) == 9
    assert seen.epoch_if_all_seen([C, ("d" * 64, 4)]) is None
    assert seen.epoch_if_all_seen([("a" * 64, 2)]) is None  # the same hash at another size is another blob


def test_what_was_seen_longer_ago_than_the_ttl_is_asked_about_again() -> None:
    clock = Clock()
    seen = SeenContent(ttl=60, clock=clock)
    seen.saw([A], epoch=1)
    clock.now += 30
    seen.saw([B], epoch=2)
    clock.now += 31
    assert seen.epoch_if_all_seen([A]) is None
    assert seen.epoch_if_all_seen([B]) == 2


def test_the_least_recently_seen_blobs_go_first_beyond_the_limit() -> None:
    seen = SeenContent(ttl=60, limit=2, clock=Clock())
    seen.saw([A, B], epoch=1)
    seen.saw([A], epoch=1)
    seen.saw([C], epoch=1)
    assert seen.epoch_if_all_seen([B]) is None
    assert seen.epoch_if_all_seen([A, C]) == 1


def test_a_ttl_of_zero_remembers_nothing_even_within_the_same_instant() -> None:
    seen = SeenContent(ttl=0, clock=Clock())  # the clock never moves: only the ttl can refuse
    seen.saw([A, B], epoch=7)
    assert seen.epoch_if_all_seen([A]) is None
