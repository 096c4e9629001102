"""Names checked before they reach the kernel: the whole string, a trailing newline too
(``$`` alone matches before one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebcap.bpf import links, tracefs
from ebcap.bpf.maps import encode_obj_name
from ebcap.errors import UsageError


@pytest.mark.parametrize("name", ["abc\n", "ebcap_events\n", "a" * 16, "a-b", "\n"])
def test_bad_object_names(name: str) -> None:
    with pytest.raises(UsageError, match="bad BPF object name"):
        encode_obj_name(name)


def test_good_object_names() -> None:
    assert encode_obj_name("ebcap_tp.buf") == b"ebcap_tp.buf"
    assert encode_obj_name("") == b""
    assert encode_obj_name("a" * 15) == b"a" * 15


@pytest.mark.parametrize(
    "spec", ["sched:sched_switch\n", "sched\n:sched_switch", "sched:\n", "sched:sched_switch\r"]
)
def test_tracepoint_specs_with_a_newline(spec: str) -> None:
    with pytest.raises(UsageError, match="bad tracepoint"):
        tracefs.split_spec(spec)


def test_tracepoint_ids_with_a_newline(tmp_path: Path) -> None:
    """Refused before any file under the tracefs root is read."""
    for category, name in (("sched\n", "sched_switch"), ("sched", "sched_switch\n")):
        with pytest.raises(UsageError, match="bad tracepoint name"):
            links.tracepoint_id(category, name, tmp_path)


def test_raw_tracepoint_name_with_a_newline() -> None:
    """Refused before the program is looked at (here there is none)."""
    with pytest.raises(UsageError, match="bad raw tracepoint name"):
        links.attach_raw_tracepoint(None, "sys_enter\n")  # type: ignore[arg-type]
