"""A full disk while recording: one clear line, a non-zero exit, and the file up to the
last complete batch recoverable; nothing else on the file system touched. On both
transports (perf and the ring buffer).

The test mounts a small tmpfs of its own (and always unmounts it), holding one
unrelated file that must come out unchanged.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from reliability.harness import (
    assert_syscall_rows_intact,
    ebcap_run,
    files_in,
    run_cli,
    samples_of,
    workload,
)

from ebcap.format.reader import CaptureReader
from ebcap.format.writer import partial_path

pytestmark = pytest.mark.privileged

OTHER = b"an unrelated file on the same file system\n"
TRANSPORTS = ["perf", "ringbuf"]


@pytest.fixture
def small_fs(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` bytes holding ``other.txt``; unmounted afterwards."""
    mountpoint = Path(tempfile.mkdtemp(prefix="ebcap-full-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={request.param},mode=0700", "ebcap-test", mountpoint],
        check=True,
    )
    try:
        (mountpoint / "other.txt").write_bytes(OTHER)
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", mountpoint], check=True)
        mountpoint.rmdir()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("small_fs", [1 << 20], indirect=True)
def test_disk_full_after_some_batches(
    small_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], transport: str
) -> None:
    programs = ebcap_programs()
    out = small_fs / "run.arrow"
    with workload(30.0, 100, 0.001) as pid:
        done = ebcap_run(
            *("record", "-o", out, "-t", transport, "--pid", str(pid)),
            *("--flush-interval", "0.1", "--duration", "25"),
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    match = re.fullmatch(
        rf"ebcap: error: disk full writing {partial_path(out)}: the (\d+) rows flushed before "
        rf"are recoverable with `ebcap recover {partial_path(out)} -o FIXED`\n",
        done.stderr,
    )
    assert match, done.stderr
    flushed = int(match[1])
    assert files_in(small_fs) == ["other.txt", "run.arrow.partial"]
    assert (small_fs / "other.txt").read_bytes() == OTHER
    fixed = tmp_path / "fixed.arrow"
    outcome = run_cli(capsys, ["recover", partial_path(out), "-o", fixed])
    assert outcome.code == 0, outcome.describe()
    with CaptureReader(fixed) as reader:
        table = reader.to_table()
    assert table.num_rows == flushed > 0, "recover saves exactly the rows said to be flushed"
    assert table["seq"].to_pylist() == list(range(flushed))
    assert set(samples_of(table)["pid"].to_pylist()) == {pid}
    assert_syscall_rows_intact(table)
    assert ebcap_programs_left(programs) == set()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("small_fs", [256 << 10], indirect=True)
def test_disk_full_before_the_first_batch(small_fs: Path, transport: str) -> None:
    programs = ebcap_programs()
    out = small_fs / "run.arrow"
    with workload(30.0, 100_000, 0.0) as pid:
        done = ebcap_run(
            "record", "-o", out, "-t", transport, "--pid", str(pid), "--duration", "25"
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"ebcap: error: disk full writing {partial_path(out)}: nothing had been flushed yet\n"
    )
    assert files_in(small_fs) == ["other.txt"], "an empty .partial was left behind"
    assert (small_fs / "other.txt").read_bytes() == OTHER
    assert ebcap_programs_left(programs) == set()
