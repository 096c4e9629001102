"""How far the sort moved each row: counted as rows come out, against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.replay import moves
from ebcap.replay.moves import MoveCounter, earlier_greater


def brute_moved(order: list[int]) -> list[int]:
    """For rows coming out in ``order`` (arrival positions): rows delivered before each that
    come out after it."""
    out_at = {position: i for i, position in enumerate(order)}
    return [sum(1 for j in range(p) if out_at[j] > out_at[p]) for p in order]


@st.composite
def outputs(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """An output order of arrival positions 0..n-1 (nearly sorted, shuffled, or one very late
    event), cut into batches."""
    n = draw(st.integers(1, 300))
    shape = draw(st.sampled_from(["swaps", "shuffled", "late_first", "reversed_runs"]))
    order = list(range(n))
    if shape == "swaps":
        for _ in range(draw(st.integers(0, 20))):
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            order[i], order[j] = order[j], order[i]
    elif shape == "shuffled":
        order = draw(st.permutations(order))
    elif shape == "late_first":
        order = [n - 1, *range(n - 1)]
    else:
        width = draw(st.integers(1, 20))
        order = [
            p for start in range(0, n, width) for p in reversed(range(start, min(n, start + width)))
        ]
    cuts = sorted(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6)))
    return order, cuts


@settings(max_examples=300, deadline=None)
@given(outputs(), st.sampled_from([2, 5, 128]))
def test_moved_matches_brute_force_across_batches(
    case: tuple[list[int], list[int]], band: int
) -> None:
    order, cuts = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moves, "BAND", band)  # small bands reach the far-back and fallback paths
        patch.setattr(moves, "PIECE_ROWS", 7)
        counter = MoveCounter()
        got: list[int] = []
        for start, end in zip([0, *cuts], [*cuts, len(order)], strict=True):
            got += counter.moved(np.array(order[start:end], dtype=np.int64)).tolist()
    assert got == brute_moved(order)
    assert counter.intervals == 1  # everything out: one interval, [0, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), unique=True, max_size=400), st.sampled_from([1, 3, 128]))
def test_earlier_greater_counts_exactly(values: list[int], band: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moves, "BAND", band)
        got = earlier_greater(np.array(values, dtype=np.int64)).tolist()
    assert got == [sum(1 for v in values[:i] if v > x) for i, x in enumerate(values)]


def test_memory_follows_the_disorder_not_the_file() -> None:
    """One event delivered last and sorted first: two intervals while the rest streams out."""
    n = 300_000
    counter = MoveCounter()
    order = np.concatenate(([n - 1], np.arange(n - 1)))
    widest = 0
    first = None
    for start in range(0, n, 65_536):
        moved = counter.moved(order[start : start + 65_536])
        first = moved[0] if first is None else first
        assert start == 0 or not moved.any()
        widest = max(widest, counter.intervals)
    assert first == n - 1 and widest == 2 and counter.intervals == 1


@st.composite
def cpu_streams(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Arrival positions as a time sort hands them out: each CPU's rows in their delivery
    order (so its positions increase), the CPUs interleaved at random; sometimes one CPU's
    own rows are out of order, which the per-CPU count must notice and leave alone."""
    n = draw(st.integers(0, 200))
    cpus = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    positions = draw(st.permutations(list(range(n))))
    by_cpu: dict[int, list[int]] = {}
    for cpu, position in zip(cpus, positions, strict=True):
        by_cpu.setdefault(cpu, []).append(position)
    for cpu, own in by_cpu.items():
        own.sort(reverse=draw(st.integers(0, 9)) == 0 and len(own) > 1)
        by_cpu[cpu] = own
    taken = {cpu: 0 for cpu in by_cpu}
    values = []
    for cpu in cpus:
        values.append(by_cpu[cpu][taken[cpu]])
        taken[cpu] += 1
    return values, cpus


@settings(max_examples=300, deadline=None)
@given(cpu_streams())
def test_earlier_greater_by_cpu_counts_exactly(case: tuple[list[int], list[int]]) -> None:
    values, cpus = case
    got = earlier_greater(np.array(values, dtype=np.int64), np.array(cpus, dtype=np.int64))
    assert got.tolist() == [sum(1 for v in values[:i] if v > x) for i, x in enumerate(values)]


def test_the_per_cpu_count_is_used_only_while_every_cpu_keeps_its_order() -> None:
    in_order = np.array([0, 2, 1, 3, 5, 4], dtype=np.int64)
    cpus = np.array([0, 0, 1, 1, 0, 1], dtype=np.int64)
    descents = np.array([2, 5])  # below the running maximum 2, then 5
    assert moves._earlier_greater_by_group(in_order, cpus, descents) is not None
    one_cpu = np.zeros(6, dtype=np.int64)
    assert moves._earlier_greater_by_group(in_order, one_cpu, descents) is None


@st.composite
def two_cpu_time_orders(draw: st.DrawFn) -> tuple[list[int], list[int], list[int]]:
    """Rows of two CPUs, each CPU's timestamps increasing in delivery order, delivered
    interleaved at random: (arrival positions in time order, their CPUs, batch cuts)."""
    n = draw(st.integers(0, 150))
    cpus = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    clock = {0: 0, 1: 0}
    stamps = []
    for cpu in cpus:
        clock[cpu] += draw(st.integers(0, 5))  # ties within a CPU keep delivery order
        stamps.append(clock[cpu])
    order = sorted(range(n), key=lambda i: (stamps[i], cpus[i], i))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return order, [cpus[i] for i in order], cuts


@settings(max_examples=300, deadline=None)
@given(two_cpu_time_orders())
def test_the_two_cpu_closed_form_matches_brute_force(
    case: tuple[list[int], list[int], list[int]],
) -> None:
    order, cpus, cuts = case
    mover = moves.TwoCpuMover()
    got: list[int] = []
    for start, end in zip([0, *cuts], [*cuts, len(order)], strict=True):
        got += mover.moved(np.array(order[start:end]), np.array(cpus[start:end])).tolist()
    assert got == brute_moved(order)
