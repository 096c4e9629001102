"""``ebcap recover``: what it saved and where the damage starts; exit 2 on unusable input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.cli import run
from ebcap.format import CaptureReader, CaptureWriter, make_schema
from ebcap.format import schema as fs

SCHEMA = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})


def write(path: Path, batches: int = 3, per_batch: int = 10) -> list[int]:
    """A capture of ``batches`` flushed batches; returns the file size after each flush."""
    sizes = []
    partial = path.with_name(path.name + ".partial")
    with CaptureWriter(path, SCHEMA) as writer:
        for b in range(batches):
            seq = np.arange(b * per_batch, (b + 1) * per_batch, dtype=np.uint64)
            writer.write(
                {
                    "seq": seq,
                    "cpu": seq % 2,
                    "ts_ns": seq,
                    "kind": np.zeros(per_batch, np.int8),
                    "lost": np.zeros(per_batch, np.uint64),
                    "round": np.zeros(per_batch, np.uint32),
                    "data": [b"abc"] * per_batch,
                }
            )
            writer.flush()
            sizes.append(partial.stat().st_size)
    return sizes


def test_recover_a_cut_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "run.arrow"
    ends = write(good)
    broken = tmp_path / "run.arrow.partial"
    broken.write_bytes(good.read_bytes()[: ends[1] + 5])
    fixed = tmp_path / "fixed.arrow"
    assert run(["recover", str(broken), "-o", str(fixed)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"saved 2 batches, 20 rows (20 events) to {fixed} from the first {ends[1]:,} "
        f"of {ends[1] + 5:,} bytes"
    )
    assert out[1].startswith(f"damage starts at byte {ends[1]:,}: batch 3 is cut short")
    assert out[2] == "totals: recomputed from the saved rows (BPF drop counts unknown)"
    with CaptureReader(fixed) as reader:
        assert reader.to_table().column("seq").to_pylist() == list(range(20))


def test_recover_a_complete_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "run.arrow"
    write(good)
    assert run(["recover", str(good), "--output", str(tmp_path / "copy.arrow")]) == 0
    assert capsys.readouterr().out == (
        f"{good} is complete: copied 4 batches, 30 rows (30 events) to {tmp_path / 'copy.arrow'}\n"
    )


def test_output_exists_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "run.arrow"
    write(good)
    existing = tmp_path / "existing.arrow"
    existing.write_bytes(b"keep")
    assert run(["recover", str(good), "-o", str(existing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err
    assert existing.read_bytes() == b"keep"
    assert run(["recover", str(good), "-o", str(existing), "--force"]) == 0
    with CaptureReader(existing) as reader:
        assert reader.num_rows == 30


@pytest.mark.parametrize("name", ["nothing", "schema-cut", "text", "empty", "missing", "foreign"])
def test_unusable_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    good = tmp_path / "run.arrow"
    ends = write(good)
    data = good.read_bytes()
    path = tmp_path / f"{name}.bin"
    if name == "nothing":
        path.write_bytes(data[: ends[0] - 3])  # schema whole, first batch not
    elif name == "schema-cut":
        path.write_bytes(data[:40])
    elif name == "text":
        path.write_text("hello\n")
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "foreign":
        with pa.ipc.new_file(path, pa.schema([pa.field("x", pa.int8())])) as w:
            w.write_batch(pa.record_batch([pa.array([1], pa.int8())], names=["x"]))
    fixed = tmp_path / "fixed.arrow"
    assert run(["recover", str(path), "-o", str(fixed)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("ebcap: error: ")
    assert not fixed.exists() and not fixed.with_name("fixed.arrow.partial").exists()


def test_missing_output_option_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["recover", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--output" in err


def test_python_dash_m(tmp_path: Path) -> None:
    good = tmp_path / "run.arrow"
    ends = write(good)
    broken = tmp_path / "broken"
    broken.write_bytes(good.read_bytes()[: ends[0] + 1])
    proc = subprocess.run(
        [sys.executable, "-m", "ebcap", "recover", str(broken), "-o", str(tmp_path / "f.arrow")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"saved 1 batch, 10 rows (10 events) to {tmp_path / 'f.arrow'}")
