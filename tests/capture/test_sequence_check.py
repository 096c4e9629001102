"""The streaming per-CPU sequence check against a whole-array count of the same numbers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.capture.sequence_check import CpuSequence


def whole(numbers: list[int]) -> tuple[int, int, int, int]:
    """(distinct, missing below the highest, duplicates, below the one before) at once."""
    if not numbers:
        return 0, 0, 0, 0
    distinct = len(set(numbers))
    behind = sum(1 for a, b in zip([-1, *numbers], numbers, strict=False) if b < a)
    return distinct, max(numbers) + 1 - distinct, len(numbers) - distinct, behind


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """A CPU's numbers as a recording may hold them (drops, reordering, repeats), in batches."""
    n = draw(st.integers(0, 300))
    numbers = [i for i in range(n) if draw(st.integers(0, 9)) > 1]  # drops
    for _ in range(draw(st.integers(0, 5))):
        if len(numbers) > 1:
            i, j = draw(st.integers(0, len(numbers) - 1)), draw(st.integers(0, len(numbers) - 1))
            numbers[i], numbers[j] = numbers[j], numbers[i]
    for _ in range(draw(st.integers(0, 3))):
        if numbers:
            numbers.insert(draw(st.integers(0, len(numbers))), draw(st.sampled_from(numbers)))
    cuts = sorted(draw(st.lists(st.integers(0, len(numbers)), max_size=6)))
    return numbers, cuts


@settings(max_examples=400, deadline=None)
@given(streams())
def test_streaming_counts_equal_the_whole_array_counts(case: tuple[list[int], list[int]]) -> None:
    numbers, cuts = case
    check = CpuSequence()
    for start, end in zip([0, *cuts], [*cuts, len(numbers)], strict=True):
        check.add(np.array(numbers[start:end], dtype=np.int64))
    got = (check.received, check.holes if numbers else 0, check.duplicates, check.out_of_order)
    assert got == whole(numbers)


def test_memory_follows_the_gaps_not_the_events() -> None:
    check = CpuSequence()
    for start in range(0, 1_000_000, 10_000):
        check.add(np.arange(start, start + 9_000, dtype=np.int64))  # a burst dropped after each
    assert check.received == 900_000 and check.holes == 99 * 1_000
    assert len(check.starts) == 99  # one range per burst of drops below the highest number
