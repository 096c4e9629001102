"""Line assembly: every fast path against plain Python string building."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.replay.lines import (
    Decimal,
    bounded_ranges,
    digit_counts,
    either,
    join_lines,
    number_text,
    padded_digits,
    spread_lines,
    uniform_chars,
    zero_padded,
)
from ebcap.replay.text import relative_seconds

U64 = st.integers(0, 2**64 - 1)


def strings(array: pa.Array) -> list[str]:
    return array.to_pylist()


@given(st.lists(U64, min_size=1, max_size=60), st.integers(1, 20))
def test_padded_digits_and_zero_padding(values: list[int], width: int) -> None:
    array = np.array(values, dtype=np.uint64)
    padded = zero_padded(array, width)
    text = (
        [row.tobytes().decode() for row in padded]
        if isinstance(padded, np.ndarray)
        else strings(padded)
    )
    assert text == [f"{v:0{width}d}" for v in values]
    fitting = array[array < 10**width] if width < 20 else array
    chars = padded_digits(fitting, width)
    assert [row.tobytes().decode() for row in chars] == [f"{int(v):0{width}d}" for v in fitting]


@given(st.lists(st.one_of(st.integers(10**6, 10**7 - 1), U64), max_size=60))
def test_number_text(values: list[int]) -> None:
    text = number_text(np.array(values, dtype=np.uint64))
    got = (
        [row.tobytes().decode() for row in text] if isinstance(text, np.ndarray) else strings(text)
    )
    assert got == [str(v) for v in values]


@given(st.lists(U64, max_size=60))
def test_digit_counts(values: list[int]) -> None:
    counts = digit_counts(np.array(values, dtype=np.uint64))
    assert counts.tolist() == [len(str(v)) for v in values]


# A piece of a line and what it says row by row.
CONSTANT = st.text(alphabet="ab :[]#\n", max_size=4)


@st.composite
def pieces(draw: st.DrawFn, rows: int) -> tuple[object, list[str]]:
    kind = draw(st.sampled_from(["constant", "uniform", "ragged", "block", "decimal", "sliced"]))
    if kind == "constant":
        text = draw(CONSTANT)
        return text, [text] * rows
    if kind == "decimal":
        top = draw(st.sampled_from([9, 999, 10**7, 2**64 - 1]))
        values = draw(st.lists(st.integers(0, top), min_size=rows, max_size=rows))
        return Decimal(np.array(values, dtype=np.uint64)), [str(v) for v in values]
    if kind == "block":
        width = draw(st.integers(0, 5))
        text = [draw(st.text(alphabet="xyz0", min_size=width, max_size=width)) for _ in range(rows)]
        block = np.frombuffer("".join(text).encode(), np.uint8).reshape(rows, width)
        return block, text
    if kind == "uniform":
        width = draw(st.integers(0, 4))
        text = [draw(st.text(alphabet="uvw", min_size=width, max_size=width)) for _ in range(rows)]
        return pa.array(text, pa.string()), text
    if kind == "sliced":  # an array that is a slice of a longer one (offset into its buffers)
        text = [draw(st.text(alphabet="pq", max_size=3)) for _ in range(rows + 2)]
        return pa.array(text, pa.string()).slice(1, rows), text[1 : rows + 1]
    values = [draw(st.one_of(st.none(), st.text(alphabet="mn", max_size=5))) for _ in range(rows)]
    return pa.array(values, pa.string()), ["" if v is None else v for v in values]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_join_lines_is_concatenation(data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 12))
    parts = data.draw(st.lists(pieces(rows), min_size=1, max_size=7))
    got = join_lines([piece for piece, _ in parts], rows)
    expected = ["".join(text[i] for _, text in parts) for i in range(rows)]
    assert strings(got) == expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_spread_lines_puts_each_line_at_its_row(data: st.DataObject) -> None:
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=1, max_size=15)))
    count = int(mask.sum())
    parts = data.draw(st.lists(pieces(count), min_size=1, max_size=5)) if count else []
    got = spread_lines(mask, [piece for piece, _ in parts], "-")
    lines = iter(["".join(text[i] for _, text in parts) for i in range(count)])
    assert strings(got) == [next(lines) if set_ else "-" for set_ in mask]


def test_numbers_of_many_widths_are_laid_out_per_width_or_joined() -> None:
    rng = np.random.default_rng(3)
    for spread in (3, 19):  # few widths (one block per width) and many (the plain join)
        values = rng.integers(0, 10**spread, size=5000, dtype=np.uint64) // rng.integers(
            1, 10**spread, size=5000, dtype=np.uint64
        )
        other = np.arange(5000, dtype=np.uint64) * np.uint64(7919)
        got = join_lines(["<", Decimal(values), "|", Decimal(other), ">"], 5000)
        assert strings(got) == [f"<{a}|{b}>" for a, b in zip(values, other, strict=True)]


def test_uniform_chars_sees_through_slices_and_refuses_nulls() -> None:
    array = pa.array(["aa", "bb", "cc", "d"], pa.string())
    chars = uniform_chars(array.slice(0, 3))
    assert chars is not None and chars.tobytes() == b"aabbcc"
    assert uniform_chars(array) is None
    assert uniform_chars(pa.array(["ab", None], pa.string())) is None
    assert uniform_chars(pa.array(["ab", "cd"], pa.large_string())).tobytes() == b"abcd"


def test_either() -> None:
    mask = np.array([False, True, True, False, True])
    values = pa.array(["x", "yy", "z"], pa.string())
    assert strings(either(mask, values, "-")) == ["-", "x", "yy", "-", "z"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**62), min_size=1, max_size=50),
    st.integers(0, 2**62),
)
def test_relative_seconds_match_the_printed_form(stamps: list[int], origin: int) -> None:
    got = join_lines(relative_seconds(np.array(stamps, dtype=np.uint64), origin), len(stamps))
    expected = []
    for ts in stamps:
        delta = ts - origin
        text = f"{'-' if delta < 0 else ''}{abs(delta) // 10**9}.{abs(delta) % 10**9:09d}"
        expected.append(text.rjust(14))
    assert strings(got) == expected


@pytest.mark.parametrize("rows", [1, 7, 70_000])
def test_a_long_constant_line(rows: int) -> None:
    assert strings(join_lines(["a", "", "b"], rows)) == ["ab"] * rows


def test_bounded_ranges_cut_where_values_pass_the_limit() -> None:
    sizes = [10, 10, 25, 0, 5, 5, 5, 40, 1]
    batch = pa.record_batch(
        {
            "n": pa.array(range(len(sizes))),
            "data": pa.array([b"x" * s for s in sizes]),
            "text": pa.array(["" if s else None for s in sizes], pa.large_string()),
        }
    )
    assert bounded_ranges(batch, 1 << 20) == [(0, len(sizes))]
    assert bounded_ranges(batch, 20) == [(0, 2), (2, 3), (3, 7), (7, 8), (8, 9)]
    assert bounded_ranges(batch.slice(2, 5), 20) == [(0, 1), (1, 5)]
    assert bounded_ranges(batch.slice(0, 0), 20) == []
    for limit in range(1, 50):  # every range within the limit or one row; all rows, in order
        ranges = bounded_ranges(batch, limit)
        assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
        assert all(sum(sizes[a:b]) <= limit or b - a == 1 for a, b in ranges)
