"""Command-line value parsers."""

from __future__ import annotations

import pytest

from ebcap.cli._values import parse_size, parse_wakeup
from ebcap.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64K", 65536), ("8MiB", 8 << 20), ("1g", 1 << 30), ("2 MB", 2 << 20)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text, "--buffer-size") == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5M", "12 parsecs", "M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="--buffer-size"):
        parse_size(text, "--buffer-size")


def test_wakeup_events_or_watermark() -> None:
    assert parse_wakeup("64") == (64, None)
    assert parse_wakeup("256K") == (None, 256 << 10)
    with pytest.raises(UsageError):
        parse_wakeup("0")
