"""Running every command on a damaged copy of a capture, and judging what it did.

A command given damaged input may do exactly two things: refuse it (exit 2,
one ``ebcap: error:`` line, no output file left behind), or succeed with
exactly the output it gives for the intact file (the damage hit bytes that
do not matter, such as padding). ``recover`` may also succeed with less: the
rows of the first k batches, unchanged, in a file marked as recovered, less
the damaged batches it lists there as skipped.
Anything else (another exit code, a traceback, a different answer, a hang)
fails the test.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from reliability.harness import Outcome, is_one_line_error, run_cli

from ebcap.format import schema as fs

CASE_SECONDS = 10.0
"""Longest any single run on a small damaged file may take: longer counts as a hang."""

Argv = Callable[[Path, Path], list[str | Path]]

COMMANDS: dict[str, Argv] = {
    "info": lambda f, out: ["info", "--json", f],
    "replay": lambda f, out: ["replay", f],
    "sorted": lambda f, out: ["replay", "--sorted", "--format", "jsonl", f],
    "reorder": lambda f, out: ["reorder", "--json", f],
    "sql": lambda f, out: ["sql", f, "SELECT * FROM events ORDER BY seq", "--format", "jsonl"],
    "export": lambda f, out: ["export", f, "-o", out / "export.jsonl"],
    "recover": lambda f, out: ["recover", f, "-o", out / "fixed.arrow"],
}
OUTPUT_FILES = {"export": "export.jsonl", "recover": "fixed.arrow"}


def read_rows(path: Path) -> tuple[pa.Table, list[int], dict[bytes, bytes]]:
    """All rows of an ebcap file read with plain pyarrow, batch ends, schema metadata."""
    with pa.ipc.open_file(str(path)) as f:
        batches = [f.get_batch(i) for i in range(f.num_record_batches)]
        ends, total = [], 0
        for batch in batches:
            total += batch.num_rows
            ends.append(total)
        return pa.Table.from_batches(batches, f.schema), ends, dict(f.schema.metadata or {})


@dataclass
class Reference:
    """What each command gives for the intact capture, run at the same path."""

    stdout: dict[str, str]
    files: dict[str, bytes]
    rows: pa.Table
    batch_ends: list[int]
    metadata: dict[bytes, bytes]


@dataclass
class Verdicts:
    """Tally of the outcomes, and the first few cases that broke the rules."""

    refused: int = 0
    same: int = 0
    partly_recovered: int = 0
    failures: list[str] = field(default_factory=list)
    per_command: dict[str, int] = field(default_factory=dict)
    """Cases judged per command (any outcome)."""

    @property
    def cases(self) -> int:
        return self.refused + self.same + self.partly_recovered + len(self.failures)

    def add(self, other: Verdicts) -> None:
        self.refused += other.refused
        self.same += other.same
        self.partly_recovered += other.partly_recovered
        self.failures += other.failures
        for name, count in other.per_command.items():
            self.per_command[name] = self.per_command.get(name, 0) + count

    def check(self) -> None:
        assert not self.failures, (
            f"{len(self.failures)} of {self.cases} damaged files were mishandled:\n"
            + "\n".join(self.failures[:15])
        )


class DamageRunner:
    """Writes damaged bytes to one file and runs one command on them.

    Paths are relative to the current directory, which the runner enters on
    ``with``: a forked helper then works in a sibling directory and still
    produces byte-identical output (see :func:`judge_all`).
    """

    def __init__(self, capsys: pytest.CaptureFixture[str], work: Path, original: Path) -> None:
        self.capsys = capsys
        self.work = work
        self.input = Path("input.arrow")
        self.out = Path("out")
        self.original = original.read_bytes()
        self.verdicts = Verdicts()
        self._cwd: str | None = None
        self.reference: Reference

    def __enter__(self) -> DamageRunner:
        self._cwd = os.getcwd()
        self.enter(self.work / "main")
        self.reference = self._reference()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cwd is not None:
            os.chdir(self._cwd)

    def enter(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        os.chdir(directory)
        self.out.mkdir(exist_ok=True)

    def _reference(self) -> Reference:
        self.input.write_bytes(self.original)
        stdout, files = {}, {}
        for name in COMMANDS:
            outcome = self._run(name)
            assert outcome.code == 0, f"{name} on the intact capture: {outcome.describe()}"
            stdout[name] = outcome.out
            if name in OUTPUT_FILES:
                files[name] = (self.out / OUTPUT_FILES[name]).read_bytes()
            self._clear_out()
        rows, ends, metadata = read_rows(self.input)
        return Reference(stdout, files, rows, ends, metadata)

    def _run(self, name: str) -> Outcome:
        return run_cli(self.capsys, COMMANDS[name](self.input, self.out))

    def _clear_out(self) -> None:
        for leftover in self.out.iterdir():
            leftover.unlink()

    def judge(self, name: str, data: bytes, what: str) -> None:
        """Run command ``name`` on ``data`` and file the outcome under ``what``."""
        self.input.write_bytes(data)
        self.verdicts.per_command[name] = self.verdicts.per_command.get(name, 0) + 1
        start = time.monotonic()
        outcome = self._run(name)
        elapsed = time.monotonic() - start
        problem = self._problem(name, outcome)
        if elapsed > CASE_SECONDS:
            problem = f"took {elapsed:.1f} s"
        self._clear_out()
        if problem:
            self.verdicts.failures.append(f"{name} on {what}: {problem}")

    def _problem(self, name: str, outcome: Outcome) -> str:
        leftovers = sorted(p.name for p in self.out.iterdir())
        if outcome.code == 2:
            if not is_one_line_error(outcome):
                return f"refused without one error line: {outcome.describe()}"
            if leftovers:
                return f"refused but left {leftovers}"
            self.verdicts.refused += 1
            return ""
        if outcome.code != 0:
            return outcome.describe()
        if name == "recover":
            return self._recovered_problem(outcome)
        if outcome.out != self.reference.stdout[name]:
            return f"exit 0 with different output: {outcome.out[:200]!r}"
        if name in OUTPUT_FILES:
            written = (self.out / OUTPUT_FILES[name]).read_bytes()
            if written != self.reference.files[name]:
                return "exit 0 with a different output file"
        self.verdicts.same += 1
        return ""

    def _recovered_problem(self, outcome: Outcome) -> str:
        """Recovered rows must be the first k batches of the capture, unchanged."""
        try:
            rows, _, metadata = read_rows(self.out / OUTPUT_FILES["recover"])
        except (pa.ArrowException, OSError) as exc:
            return f"recovered an unreadable file: {exc}"
        ref = self.reference
        if outcome.out == ref.stdout["recover"]:
            if not rows.equals(ref.rows) or metadata != ref.metadata:
                return "claims the file was complete but changed it"
            self.verdicts.same += 1
            return ""
        marker = fs.META_RECOVERED.encode()
        if marker not in metadata:
            return f"saved a part without marking it recovered: {outcome.out[:200]!r}"
        if {k: v for k, v in metadata.items() if k != marker} != ref.metadata:
            return "saved a part under a changed schema"
        skipped = {
            entry[fs.SKIPPED_BATCH]
            for entry in json.loads(metadata[marker]).get(fs.RECOVERED_SKIPPED, [])
        }
        expected = self._first_batches(rows.num_rows, skipped)
        if expected is None:
            return (
                f"saved {rows.num_rows} rows, not the first whole batches {ref.batch_ends} "
                f"less the skipped ones {sorted(skipped)}"
            )
        if not rows.equals(expected):
            return "saved rows that differ from the capture's"
        self.verdicts.partly_recovered += 1
        return ""

    def _first_batches(self, rows: int, skipped: set[int]) -> pa.Table | None:
        """The rows of the capture's first batches, less those listed as skipped (numbered
        from 1), that add up to ``rows``; None if no such prefix does."""
        ref = self.reference
        parts, total, start = [], 0, 0
        for number, end in enumerate(ref.batch_ends, start=1):
            if total == rows and number not in skipped:
                break
            if number not in skipped:
                parts.append(ref.rows.slice(start, end - start))
                total += end - start
            start = end
        if total != rows:
            return None
        return pa.concat_tables(parts) if parts else ref.rows.slice(0, 0)


Case = tuple[str, Callable[[], bytes], str]
"""(command, a function making the damaged bytes, a description for failures)."""

IN_PARENT_ONLY = ("sql",)
"""DuckDB starts threads of its own: its cases stay in this process, never in a fork."""


def judge_all(runner: DamageRunner, cases: Sequence[Case]) -> None:
    """Judge ``cases`` on two CPUs: half here, half in a forked copy of this process.

    The fork is the same interpreter state (same CLI, same capsys), working in a
    sibling directory; it sends its tally back through a pipe. The cases that must
    stay here count towards this process's half.
    """
    here = [c for c in cases if c[0] in IN_PARENT_ONLY]
    others = [c for c in cases if c[0] not in IN_PARENT_ONLY]
    quota = max(0, len(cases) // 2 - len(here))
    picked = {len(others) * i // quota for i in range(quota)} if quota else set()
    mine = here + [c for i, c in enumerate(others) if i in picked]
    theirs = [c for i, c in enumerate(others) if i not in picked]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: judge, report, and leave without running any cleanup
        status = 1
        try:
            os.close(read_end)
            runner.verdicts = Verdicts()
            runner.enter(runner.work / "helper")
            for name, make, what in theirs:
                runner.judge(name, make(), what)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(asdict(runner.verdicts)))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        for name, make, what in mine:
            runner.judge(name, make(), what)
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
    assert status == 0 and payload, f"the helper process failed (wait status {status})"
    runner.verdicts.add(Verdicts(**pickle.loads(payload)))
