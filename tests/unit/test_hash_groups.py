"""Files to hash are split into tasks of about HASH_GROUP_BYTES: small files together, large ones alone."""

from __future__ import annotations

from mreg.client.registry import HASH_GROUP_BYTES, _hash_groups


def test_small_files_share_tasks_and_a_large_file_ends_its_own() -> None:
    small, large = 40 << 10, HASH_GROUP_BYTES + 1
    sizes = [small] * 1000 + [large] + [small] * 3
    indexes = list(range(100, 100 + len(sizes)))
    groups = _hash_groups(indexes, sizes)
    # Every file once, in order; no task but the last holds less than the target, none more than one file over it.
    assert [i for group in groups for i in group] == indexes
    size_of = dict(zip(indexes, sizes, strict=True))
    totals = [sum(size_of[i] for i in group) for group in groups]
    assert all(total >= HASH_GROUP_BYTES for total in totals[:-1])
    assert all(total - size_of[group[-1]] < HASH_GROUP_BYTES for total, group in zip(totals, groups, strict=True))
    assert len(groups) < 10  # 1004 files in a handful of tasks, not 1004
    assert any(group[-1] == 1100 for group in groups)  # the large file (index 1100) ends a task


def test_nothing_to_hash_is_no_task() -> None:
    assert _hash_groups([], []) == []
