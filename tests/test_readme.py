"""The README's analysis snippets run as written, on a real capture."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _snippets() -> list[str]:
    return SNIPPET.findall(README.read_text(encoding="utf-8"))


def test_readme_has_pandas_polars_and_duckdb_snippets() -> None:
    joined = "\n".join(_snippets())
    for library in ("pandas", "polars", "duckdb"):
        assert f"import {library}" in joined or f"{library}," in joined


@pytest.mark.privileged
@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    from ebcap.capture.recorder import Recorder, RecordOptions
    from ebcap.capture.sources import SyscallsSource

    calls = []
    source = SyscallsSource(pid=os.getpid(), exclude_pid=0)
    options = RecordOptions(output=Path("run.arrow"), buffer_bytes=1 << 20)
    Recorder(source, options).run(
        should_stop=lambda: bool(calls),
        on_started=lambda: calls.extend(os.getppid() for _ in range(500)),
    )
    namespace: dict[str, object] = {}
    exec(compile(_snippets()[index], f"README snippet {index}", "exec"), namespace)
    frame = namespace.get("df", namespace.get("events"))
    if frame is not None:  # the snippet loaded the capture: it holds our 500 getppid calls
        column = frame["syscall"]
        names = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
        assert names.count("getppid") >= 500
