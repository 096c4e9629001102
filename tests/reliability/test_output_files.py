"""Output files: created 0600 whatever the umask, never overwritten without --force,
never truncated when a forced run fails to start or fails midway."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from reliability.harness import (
    assert_one_line_error,
    ebcap_process,
    files_in,
    run_cli,
    run_record,
    wait_for,
    workload,
)

from ebcap.errors import OutputExistsError
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs
from ebcap.format.writer import partial_path

OLD = b"an older file that must survive\n"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: files come out 0600 because ebcap asks for it, not thanks to the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def write_capture(path: Path, n: int = 16) -> None:
    schema = make_schema(
        [],
        {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "syscalls", fs.META_REALTIME_OFFSET: "0"},
    )
    with CaptureWriter(path, schema) as writer:
        writer.write(
            {
                "seq": np.arange(n, dtype=np.uint64),
                "cpu": np.arange(n, dtype=np.uint16) % 2,
                "ts_ns": 1_000_000 + 1000 * np.arange(n, dtype=np.uint64),
                "kind": np.zeros(n, np.int8),
                "lost": np.zeros(n, np.uint64),
                "round": np.zeros(n, np.uint32),
                "data": [b"payload!"] * n,
            }
        )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


OUTPUTS = {
    "replay text": ["replay", "{in}", "-o", "{out}.txt"],
    "replay jsonl.zst": ["replay", "{in}", "-o", "{out}.jsonl.zst"],
    "sql csv": ["sql", "{in}", "SELECT * FROM events", "--format", "csv", "-o", "{out}.csv"],
    "export parquet": ["export", "{in}", "-o", "{out}.parquet"],
    "export csv": ["export", "{in}", "-o", "{out}.csv"],
    "reorder plot": ["reorder", "{in}", "--plot", "{out}.png"],
    "recover": ["recover", "{in}", "-o", "{out}.arrow"],
}


def expand(argv: list[str], directory: Path) -> tuple[list[str], Path]:
    out = str(directory / "out")
    args = [a.format(**{"in": directory / "in.arrow", "out": out}) for a in argv]
    target = next(Path(a) for a in args if a.startswith(out))
    return args, target


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_outputs_are_owner_only(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], open_umask: None
) -> None:
    write_capture(tmp_path / "in.arrow")
    argv, target = expand(OUTPUTS[case], tmp_path)
    outcome = run_cli(capsys, argv)
    assert outcome.code == 0, outcome.describe()
    assert mode(target) == 0o600
    assert files_in(tmp_path) == sorted(["in.arrow", target.name]), "a temporary file stayed"


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_existing_output_needs_force(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_capture(tmp_path / "in.arrow")
    argv, target = expand(OUTPUTS[case], tmp_path)
    target.write_bytes(OLD)
    assert_one_line_error(run_cli(capsys, argv), mentions="exists")
    assert target.read_bytes() == OLD
    assert run_cli(capsys, [*argv, "--force"]).code == 0
    assert target.read_bytes() != OLD and mode(target) == 0o600


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_forced_run_on_bad_input_keeps_the_old_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The input is cut short: the command fails after it was allowed to replace the output."""
    write_capture(tmp_path / "whole.arrow")
    whole = (tmp_path / "whole.arrow").read_bytes()
    (tmp_path / "in.arrow").write_bytes(whole[: len(whole) // 2])
    argv, target = expand(OUTPUTS[case], tmp_path)
    target.write_bytes(OLD)
    before = files_in(tmp_path)
    assert_one_line_error(run_cli(capsys, [*argv, "--force"]))
    assert target.read_bytes() == OLD
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("case", sorted(OUTPUTS))
@pytest.mark.parametrize("place", ["/proc", "/sys"])
def test_a_directory_that_takes_no_files_is_one_line(
    case: str, place: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new files (ENOENT), /sys refuses them (EACCES, even to root)."""
    write_capture(tmp_path / "in.arrow")
    argv, target = expand(OUTPUTS[case], tmp_path)
    argv = [str(Path(place) / target.name) if a == str(target) else a for a in argv]
    assert_one_line_error(run_cli(capsys, argv), mentions=f"{place}/{target.name}")
    assert files_in(tmp_path) == ["in.arrow"]


@pytest.mark.privileged
def test_recording_is_owner_only_while_running_and_after(tmp_path: Path, open_umask: None) -> None:
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    with workload(30.0, 20, 0.002) as pid:
        proc = ebcap_process("record", "-o", out, "--pid", pid, "--ready-file", ready)
        wait_for(ready)
        partial_mode = mode(partial_path(out))
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert partial_mode == 0o600
    assert mode(out) == 0o600


START_FAILURES = {
    "unknown source": ["-s", "nosuch"],
    "unknown tracepoint": ["-s", "tracepoint:nosuch:thing"],
    "bad buffer size": ["-b", "12Q"],
    "kernel refuses the attachment": ["-s", "xdp:lo", "--xdp-mode", "native"],
    "nothing pinned": ["--pin", "/sys/fs/bpf/ebcap-nosuch", "--layout", "ts:u64"],
}
"""Ways a forced recording fails before it has anything to write, early or in the kernel."""


@pytest.mark.privileged
@pytest.mark.parametrize("case", sorted(START_FAILURES))
def test_forced_record_that_fails_to_start_keeps_the_old_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.arrow"
    out.write_bytes(OLD)
    argv = ["record", "-o", out, "--force", "--duration", "1", *START_FAILURES[case]]
    outcome = run_cli(capsys, argv)
    assert outcome.code in (1, 2) and outcome.err.count("\n") == 1, outcome.describe()
    assert out.read_bytes() == OLD
    assert files_in(tmp_path) == ["run.arrow"], "a .partial stayed behind"


@pytest.mark.privileged
def test_an_unfinished_capture_is_not_replaced_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.arrow"
    partial_path(out).write_bytes(OLD)
    outcome = run_cli(capsys, ["record", "-o", out, "--count", "1"])
    assert_one_line_error(outcome, mentions="ebcap recover")
    assert partial_path(out).read_bytes() == OLD
    assert not out.exists()


def test_writer_refuses_to_publish_over_a_file_that_appeared(tmp_path: Path) -> None:
    """Another process created the output while recording: the data stays in .partial."""
    out = tmp_path / "run.arrow"
    schema = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})
    writer = CaptureWriter(out, schema)
    out.write_bytes(OLD)
    with pytest.raises(OutputExistsError, match="appeared during the capture"):
        writer.close()
    assert out.read_bytes() == OLD
    assert pa.ipc.open_file(str(partial_path(out))).num_record_batches == 1


@pytest.mark.privileged
@pytest.mark.parametrize("planted", ["output", "partial"])
def test_forced_record_replaces_a_planted_symlink_not_its_target(
    planted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a shared directory someone may plant NAME or NAME.partial as a symlink to a
    file of ours: --force replaces the link, and never writes through it."""
    victim = tmp_path / "victim"
    victim.write_bytes(OLD)
    out = tmp_path / "run.arrow"
    (out if planted == "output" else partial_path(out)).symlink_to(victim)
    outcome = run_record(capsys, ["-o", out, "--force", "--count", "1"])
    assert outcome.code == 0, outcome.describe()
    assert victim.read_bytes() == OLD
    assert not out.is_symlink() and mode(out) == 0o600


def test_forced_export_replaces_a_planted_symlink_not_its_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_capture(tmp_path / "in.arrow")
    victim = tmp_path / "victim"
    victim.write_bytes(OLD)
    out = tmp_path / "out.csv"
    out.symlink_to(victim)
    outcome = run_cli(capsys, ["export", tmp_path / "in.arrow", "-o", out, "--force"])
    assert outcome.code == 0, outcome.describe()
    assert victim.read_bytes() == OLD
    assert not out.is_symlink() and mode(out) == 0o600


@pytest.mark.privileged
def test_a_json_summary_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``ebcap record --json | true``: the reader is gone; the file is whole, status 0."""
    out = tmp_path / "run.arrow"
    proc = ebcap_process("record", "-o", out, "--duration", "0.5", "--json")
    assert proc.stdout is not None
    proc.stdout.close()  # nobody reads the summary
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stderr == "" and out.exists()
