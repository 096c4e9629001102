"""The CLI skeleton: help, version, and usage errors as one line."""

from __future__ import annotations

import subprocess
import sys

from ebcap import __version__
from ebcap.cli import run


def test_version(capsys) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ebcap {__version__}"


def test_help_lists_commands(capsys) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Record and replay eBPF event streams" in out


def test_unknown_command_is_one_line_exit_2(capsys) -> None:
    assert run(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ebcap: error:")


def test_python_dash_m_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebcap", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"ebcap {__version__}"
