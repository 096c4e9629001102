"""Looking for what killed recorders left on interfaces never stops a recording:
a lock held too long or a marker out of reach becomes a note."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from ebcap.capture import leftovers


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ebcap's /run directory moved under the test's own, with a short lock wait."""
    monkeypatch.setattr(leftovers, "RUN_DIR", tmp_path)
    monkeypatch.setattr(leftovers, "LOCK_FILE", tmp_path / "hooks.lock")
    monkeypatch.setattr(leftovers, "CLSACT_MARKERS", tmp_path / "clsact")
    monkeypatch.setattr(leftovers, "XDP_MARKERS", tmp_path / "xdp")
    monkeypatch.setattr(leftovers, "LOCK_TIMEOUT_S", 0.1)
    return tmp_path


def test_a_lock_held_by_another_process_is_a_note(run_dir: Path) -> None:
    fd = os.open(run_dir / "hooks.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: flock conflicts as across processes
        notes = leftovers.remove_leftovers()
    finally:
        os.close(fd)
    assert len(notes) == 1
    assert notes[0].startswith("could not look for what ebcap left on interfaces: ")
    assert "another ebcap process holds" in notes[0]
    assert leftovers.remove_leftovers() == []  # free again: nothing left, nothing said


def test_a_marker_that_cannot_be_removed_is_a_note(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = run_dir / "clsact"
    markers.mkdir()
    (markers / f"{leftovers.netns_id()}.999999").touch()  # of an interface that is gone

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    notes = leftovers.remove_leftovers()
    assert len(notes) == 1 and "Permission denied" in notes[0]
