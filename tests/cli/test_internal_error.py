"""A bug in ebcap still ends in one line, which keeps what the code noted on the way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebcap.cli import run
from ebcap.format import info


def test_a_bug_is_one_line_with_its_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthetic import write_capture

    path = tmp_path / "c.arrow"
    write_capture(path)

    def broken(*args: object, **kwargs: object) -> None:
        exc = ZeroDivisionError("division by zero")
        exc.add_note("the rows flushed before are in run.arrow.partial")
        raise exc

    monkeypatch.setattr(info, "summarize", broken)
    monkeypatch.delenv("EBCAP_DEBUG", raising=False)
    assert run(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("ebcap: error: internal error: ZeroDivisionError: division by zero")
    assert "; the rows flushed before are in run.arrow.partial" in err
