"""What a test run accepts, checked before any kernel call: its u32 fields."""

from __future__ import annotations

import pytest

from ebcap.bpf.prog import U32_MAX, check_test_run_input
from ebcap.errors import UsageError


@pytest.mark.parametrize(
    ("data", "repeat", "ctx", "message"),
    [
        (64, 2**32 + 3, None, r"repeat must be 1\.\.4294967295, not 4294967299"),
        (64, 0, None, "repeat must be"),
        (64, -1, None, "repeat must be"),
        (2**32, 1, None, "test run data of 4294967296 bytes: at most 4294967295"),
        (64, 1, 2**32 + 1, "test run ctx of 4294967297 bytes"),
    ],
)
def test_values_beyond_their_u32_fields_are_refused(
    data: int, repeat: int, ctx: int | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        check_test_run_input(data, repeat, ctx)


def test_the_whole_u32_range_is_accepted() -> None:
    check_test_run_input(U32_MAX, U32_MAX, U32_MAX)
    check_test_run_input(0, 1)
