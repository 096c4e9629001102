"""The CLI skeleton: help, version, and usage errors as one line."""

from __future__ import annotations

import subprocess
import sys

from ebcap import __version__
from ebcap.cli import SHORT_HELP, app, run


def test_version(capsys) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ebcap {__version__}"


def test_help_lists_commands(capsys) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Record and replay eBPF event streams" in out


def test_help_lists_every_command_with_its_whole_line(capsys, monkeypatch) -> None:
    """Each command on a line of its own with its one-line description, not cut mid-phrase."""
    monkeypatch.setenv("COLUMNS", "80")  # the usual terminal: every line fits in it
    assert run(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:\n", 1)[1].splitlines()
    names = [info.name for info in app.registered_commands]
    assert sorted(names) == sorted(SHORT_HELP), "a command without a one-line description"
    assert len(listed) == len(names)
    for line, name in zip(listed, names, strict=True):
        assert line.split(None, 1) == [name, SHORT_HELP[name]]
        assert not line.endswith("...")


def test_help_shows_examples(capsys) -> None:
    assert run(["--help"]) == 0
    top = capsys.readouterr().out
    assert "Examples:" in top and "\n    ebcap record -o run.arrow" in top
    for info in app.registered_commands:
        assert run([info.name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Example" in text, f"ebcap {info.name} --help shows no example"
        assert f"\n    ebcap {info.name} " in text, f"ebcap {info.name}: no example runs it"


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


def test_the_command_line_loads_no_kernel_layer() -> None:
    """Every command pays for what `import ebcap.cli` loads: the BPF layer (ctypes, the
    syscall wrappers, the assembler) only loads once a command needs the kernel."""
    code = (
        "import sys, ebcap.cli; print(sorted(m for m in sys.modules if m.startswith('ebcap.bpf')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
