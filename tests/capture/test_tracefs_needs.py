"""A tracepoint source reads its format in tracefs: a process that may not (tracefs is
root's only here) or cannot mount it is told so with the other capabilities, at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebcap.bpf import tracefs
from ebcap.capture import privileges
from ebcap.cli import run


def test_tracefs_needs_follow_the_mount_and_its_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(privileges.fs, "mounted_tracefs", lambda: None)
    assert list(privileges.tracefs_needs()) == ["CAP_SYS_ADMIN"]
    (tmp_path / "events").mkdir()
    monkeypatch.setattr(privileges.fs, "mounted_tracefs", lambda: str(tmp_path))
    assert privileges.tracefs_needs() == {}  # this process may read it
    monkeypatch.setattr(privileges.os, "access", lambda *_, **__: False)
    needs = privileges.tracefs_needs()
    assert (
        list(needs) == ["CAP_DAC_READ_SEARCH"]
        and str(tmp_path / "events") in needs["CAP_DAC_READ_SEARCH"]
    )


def test_an_unreadable_tracefs_is_named_with_the_other_capabilities_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(privileges.os, "access", lambda *_, **__: False)
    monkeypatch.setattr("ebcap.bpf.caps.effective_capabilities", lambda: 0)

    def read(*_: object, **__: object) -> None:
        raise AssertionError("the format was read before the capabilities were checked")

    monkeypatch.setattr(tracefs, "read_format", read)
    out = tmp_path / "run.arrow"
    argv = ["record", "-o", str(out), "-s", "tracepoint:sched:sched_switch", "-t", "ringbuf"]
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "ebcap: error: recording needs CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH"
    )
    assert list(tmp_path.iterdir()) == []
    assert run([*argv[:-2], "-s", "tracepoint:no-such"]) == 2  # a bad name is still usage
