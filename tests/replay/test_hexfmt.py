"""Vectorised hex against Python's own formatting."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from ebcap.replay.hexfmt import (
    bytes_hex,
    payload_lengths,
    u64_hex,
    u64_hex_columns,
    u64_hex_joined,
)

u64s = st.lists(st.integers(0, 2**64 - 1), max_size=40)
blobs = st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=30)


@given(u64s)
def test_u64_hex_matches_python(values: list[int]) -> None:
    got = u64_hex(np.array(values, dtype=np.uint64)).to_pylist()
    assert got == [hex(v) for v in values]


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=30))
def test_u64_hex_joined_matches_python(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.uint64)
    b = np.array([p[1] for p in pairs], dtype=np.uint64)
    assert u64_hex_joined([a, b], ", ").to_pylist() == [f"{hex(x)}, {hex(y)}" for x, y in pairs]


@given(blobs, st.integers(0, 30), st.integers(0, 30), st.one_of(st.none(), st.integers(0, 20)))
def test_bytes_hex_matches_python_on_slices(
    values: list[bytes | None], start: int, length: int, limit: int | None
) -> None:
    array = pa.array(values, pa.binary()).slice(start, length)
    expected = [b"" if v is None else v for v in array.to_pylist()]
    assert bytes_hex(array, limit).to_pylist() == [v[:limit].hex() for v in expected]
    assert payload_lengths(array).tolist() == [len(v) for v in expected]


@given(
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5),
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3000),
    st.integers(1, 3000),
)
def test_u64_hex_columns_repeating_or_not(pool: list[int], spread: list[int], n: int) -> None:
    repeating = pa.array([pool[i % len(pool)] if i % 7 else None for i in range(n)], pa.uint64())
    varied = pa.array([spread[i % len(spread)] for i in range(n)], pa.uint64())
    got = u64_hex_columns([repeating, varied], ", ").to_pylist()
    assert got == [
        f"{hex(a or 0)}, {hex(b)}"
        for a, b in zip(repeating.to_pylist(), varied.to_pylist(), strict=True)
    ]
