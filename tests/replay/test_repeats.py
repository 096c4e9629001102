"""Repeating rows: found exactly, however subtly neighbours differ."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from ebcap.replay.repeats import DISTINCT_SAMPLE, distinct_rows

VARIANTS = (  # each differs from the first in one column, and only subtly
    (0, 0.0, "read", "read", True, 1),
    (0, -0.0, "read", "read", True, 1),
    (None, 0.0, "read", "read", True, 1),
    (0, 0.0, None, "read", True, 1),
    (0, 0.0, "", "read", True, 1),
    (0, 0.0, "read", "é", True, 1),
    (0, 0.0, "read", "read", False, 1),
    (0, 0.0, "read", "read", True, -1),
    (2**63, math.nan, "write", None, None, 3),
)


def repetitive_columns(rows: int, seed: int, run: int = 1) -> list[pa.Array]:
    """Columns of every type the text output reads, few distinct rows told apart subtly.

    ``run`` > 1 repeats each row that many times in a row, as a CPU's ring
    delivers a thread's events.
    """
    rng = np.random.default_rng(seed)
    pick = np.repeat(rng.integers(0, len(VARIANTS), size=rows // run + 1), run)[:rows]
    values = list(zip(*[VARIANTS[i] for i in pick], strict=True))
    return [
        pa.array(values[0], pa.uint64()),
        pa.array(values[1], pa.float64()),
        pa.array(values[2], pa.string()),
        pa.array(values[3], pa.string()).dictionary_encode(),
        pa.array(values[4], pa.bool_()),
        pa.array(values[5], pa.int8()),
    ]


@pytest.mark.parametrize("run", [1, 9])
def test_distinct_rows_groups_exactly_the_equal_rows(run: int) -> None:
    columns = repetitive_columns(3000, seed=4, run=run)
    found = distinct_rows(columns)
    assert found is not None
    example, index = found
    values = [list(zip(*[c.to_pylist() for c in columns], strict=True))[i] for i in range(3000)]

    def key(row: tuple) -> tuple:  # -0.0 and 0.0 print differently; NaN equals itself here
        return tuple(
            (repr(v), math.copysign(1, v)) if isinstance(v, float) else (repr(v), type(v))
            for v in row
        )

    groups: dict[int, set] = {}
    for row, code in zip(values, index.tolist(), strict=True):
        groups.setdefault(code, set()).add(key(row))
    assert all(len(keys) == 1 for keys in groups.values())
    assert len({next(iter(k)) for k in groups.values()}) == len(groups)  # distinct codes differ
    for code, row in enumerate(example.tolist()):
        assert index[row] == code


def test_distinct_rows_declines_when_rows_do_not_repeat() -> None:
    unique = pa.array(np.arange(5000, dtype=np.uint64))
    assert distinct_rows([unique]) is None
    assert distinct_rows([pa.array(np.zeros(DISTINCT_SAMPLE - 1, np.uint64))]) is None
    times = pa.array(np.zeros(5000, dtype="datetime64[ns]"))
    assert distinct_rows([times]) is None  # a type without a plain bit view
