"""``ebcap info``: human and JSON output checked against the file; every bad file is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.cli import run
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs

OFFSET = 1_700_000_000_000_000_000
META = fs.encode_metadata(
    {
        fs.META_TRANSPORT: "ringbuf",
        fs.META_SOURCE: "syscalls",
        fs.META_HOSTNAME: "box",
        fs.META_KERNEL: "6.18.0",
        fs.META_NCPUS: 2,
        fs.META_CPUS: [0, 1],
        fs.META_REALTIME_OFFSET: OFFSET,
        fs.META_BUFFER_SIZE: 1 << 24,
        fs.META_WAKEUP: "ringbuf:adaptive",
        fs.META_COMMAND: ["ebcap", "record", "-o", "run.arrow"],
    }
)
SCHEMA = make_schema([pa.field("pid", pa.uint32())], META)


def write(path: Path, n: int = 100) -> Path:
    """n rows: cpu = seq % 2, ts = 2 s + seq µs, every 10th a lost record of 3."""
    seq = np.arange(n, dtype=np.uint64)
    lost = seq % 10 == 9
    with CaptureWriter(path, SCHEMA, flush_rows=40) as writer:
        writer.write(
            {
                "seq": seq,
                "cpu": seq % 2,
                "ts_ns": 2_000_000_000 + seq * 1000,
                "kind": lost.astype(np.int8),
                "lost": np.where(lost, 3, 0),
                "round": np.zeros(n, np.uint32),
                "data": [b"\x00" * 16] * n,
                "pid": seq,
            }
        )
        writer.close({fs.TOTAL_DROPS_PER_CPU: {0: 4, 1: 0}, fs.TOTAL_DROPS: 4})
    return path


def test_human_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.arrow")
    assert run(["info", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line and line[0] != " "}
    assert "ringbuf (buffer 16.0 MiB, wakeup ringbuf:adaptive)" in lines["transport"]
    assert "box (kernel 6.18.0, 2 CPUs, recorded CPUs 0,1)" in lines["host"]
    assert "100 in 4 batches (90 samples, 10 lost records)" in lines["rows"]
    # samples at seq 0..98 except 9, 19, ...: ts 2.000000 s .. 2.000098 s
    assert "2023-11-14T22:13:22.000000000Z .. 2023-11-14T22:13:22.000098000Z" in lines["time span"]
    assert "(0.000098 s)" in lines["time span"]
    assert "2000000000 .. 2000098000 ns" in lines["monotonic"]
    assert f"({path.stat().st_size:,} bytes" in lines["size"]
    table = [line.split() for line in out.splitlines()[-4:]]
    # every 10th row (seq 9, 19, ...: odd, so cpu 1) is a lost record of 3 events
    assert table == [
        ["cpu", "events", "lost", "drops"],
        ["0", "50", "0", "4"],
        ["1", "40", "30", "0"],
        ["total", "90", "30", "4"],
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.arrow")
    assert run(["info", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 100 and data["batches"] == 4 and data["samples"] == 90
    assert data["events_per_cpu"] == {"0": 50, "1": 40}
    assert data["lost_per_cpu"] == {"1": 30}
    assert data["drops_per_cpu"] == {"0": 4, "1": 0}
    assert data["first_ts_ns"] == 2_000_000_000 and data["last_ts_ns"] == 2_000_098_000
    assert data["file_size"] == path.stat().st_size
    assert data["format_version"] == fs.FORMAT_VERSION
    assert data["transport"] == "ringbuf" and data["kernel"] == "6.18.0"
    assert data["compression_ratio"] > 0


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    good = write(tmp / "good.arrow")
    data = good.read_bytes()
    (tmp / "cut.arrow").write_bytes(data[: len(data) - 100])
    (tmp / "empty.arrow").write_bytes(b"")
    (tmp / "text.arrow").write_text("not arrow\n")
    (tmp / "dir.arrow").mkdir()
    foreign = tmp / "foreign.arrow"
    with pa.ipc.new_file(foreign, pa.schema([pa.field("x", pa.int8())])) as w:
        w.write_batch(pa.record_batch([pa.array([1], pa.int8())], names=["x"]))
    future = tmp / "future.arrow"
    meta = {**SCHEMA.metadata, fs.VERSION_KEY.encode(): b"99"}
    with pa.ipc.new_file(future, SCHEMA.with_metadata(meta)) as w:
        pass
    return {
        "cut": tmp / "cut.arrow",
        "empty": tmp / "empty.arrow",
        "text": tmp / "text.arrow",
        "dir": tmp / "dir.arrow",
        "foreign": foreign,
        "future": future,
        "missing": tmp / "missing.arrow",
    }


@pytest.mark.parametrize("name", ["cut", "empty", "text", "dir", "foreign", "future", "missing"])
@pytest.mark.parametrize("as_json", [False, True])
def test_bad_files_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, as_json: bool
) -> None:
    path = _bad_inputs(tmp_path)[name]
    assert run(["info", *(["--json"] if as_json else []), str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("ebcap: error: ")
    assert str(path) in captured.err


def test_truncated_file_points_to_recover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_inputs(tmp_path)["cut"]
    assert run(["info", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"ebcap: error: {path} is truncated (no Arrow footer; the capture did not finish): "
        f"run `ebcap recover {path} -o FIXED`\n"
    )


def test_python_dash_m(tmp_path: Path) -> None:
    path = write(tmp_path / "run.arrow")
    ok = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", "--json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == 100
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(path.read_bytes()[:500])
    bad = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", str(cut)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "ebcap recover" in bad.stderr
