"""CPU list parsing and the sysfs CPU sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebcap.bpf.cpus import online_cpus, parse_cpu_list, possible_cpus
from ebcap.errors import UsageError


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", [0]),
        ("0-1\n", [0, 1]),
        ("0,2-3", [0, 2, 3]),
        ("3,0-1,1", [0, 1, 3]),
        ("0-3,8-9", [0, 1, 2, 3, 8, 9]),
    ],
)
def test_parse_cpu_list(text: str, cpus: list[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "text", ["", "a", "1-", "-1", "3-1", "0,,1", "1.5", "0-x", "65536", "0-99999999999999999999"]
)
def test_parse_cpu_list_rejects_junk(text: str) -> None:
    with pytest.raises(UsageError):
        parse_cpu_list(text)


def test_sysfs_sets_match_the_machine() -> None:
    online = online_cpus()
    possible = possible_cpus()
    assert set(os.sched_getaffinity(0)) <= set(online)
    assert set(online) <= set(possible)
    assert len(online) == os.cpu_count()
    raw = Path("/sys/devices/system/cpu/possible").read_text()
    assert possible == parse_cpu_list(raw)
