"""``ebcap info``: human and JSON output checked against the file; every bad file is one line."""

from __future__ import annotations

import json
import os
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
    assert data["lost_per_cpu"] == {"0": 0, "1": 30}  # every recorded CPU, 0 included
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
    path = _bad_inputs(tmp_path)["cut"]  # its footer cut off, its stream whole
    assert run(["info", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"ebcap: error: {path} is truncated (the stream ends cleanly but the footer is "
        f"missing; no batch is cut short): run `ebcap recover {path} -o FIXED`\n"
    )
    mid = tmp_path / "mid.arrow"
    mid.write_bytes(path.read_bytes()[:500])  # cut well before its last batch
    assert run(["info", str(mid)]) == 2
    assert capsys.readouterr().err == (
        f"ebcap: error: {mid} is truncated (no Arrow footer; the capture did not finish): "
        f"run `ebcap recover {mid} -o FIXED`\n"
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


def test_json_fields_against_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.arrow")
    assert run(["info", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    # samples at seq 0..98 except 9, 19, ...: ts 2 s + seq µs; the offset makes them wall time
    assert data["first_wall"] == "2023-11-14T22:13:22.000000000Z"
    assert data["last_wall"] == "2023-11-14T22:13:22.000098000Z"
    assert data["hostname"] == "box" and data["ncpus"] == 2 and data["cpus"] == [0, 1]
    assert data["bytes_per_event"] == pytest.approx(path.stat().st_size / 90)  # per sample
    with pa.ipc.open_file(path) as plain:
        raw = sum(plain.get_batch(i).nbytes for i in range(plain.num_record_batches))
    assert data["uncompressed_bytes"] == raw
    assert data["compression_ratio"] == pytest.approx(raw / path.stat().st_size)


def test_bytes_per_event_counts_sample_events_like_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "run.arrow")
    assert run(["info", str(path)]) == 0
    per_sample = path.stat().st_size / 90  # 100 rows, 10 of them lost records
    assert f"{per_sample:.1f} bytes per sample event" in capsys.readouterr().out


def test_recorded_cpus_without_rows_are_listed_with_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = {**META, **fs.encode_metadata({fs.META_NCPUS: 4, fs.META_CPUS: [0, 1, 3]})}
    path = tmp_path / "run.arrow"
    with CaptureWriter(path, make_schema([pa.field("pid", pa.uint32())], meta)) as writer:
        writer.write(
            {
                "seq": np.arange(3, dtype=np.uint64),
                "cpu": np.array([0, 0, 1], np.uint16),
                "ts_ns": np.arange(3, dtype=np.uint64),
                "kind": np.array([0, 1, 0], np.int8),
                "lost": np.array([0, 7, 0], np.uint64),
                "round": np.zeros(3, np.uint32),
                "data": [b"x"] * 3,
                "pid": np.zeros(3, np.uint32),
            }
        )
        writer.close({fs.TOTAL_DROPS_PER_CPU: {0: 2}, fs.TOTAL_DROPS: 2})
    assert run(["info", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["events_per_cpu"] == {"0": 1, "1": 1, "3": 0}
    assert data["lost_per_cpu"] == {"0": 7, "1": 0, "3": 0}
    assert data["drops_per_cpu"] == {"0": 2, "1": 0, "3": 0}
    assert run(["info", str(path)]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()[-5:]]
    assert table == [
        ["cpu", "events", "lost", "drops"],
        ["0", "1", "7", "2"],
        ["1", "1", "0", "0"],
        ["3", "0", "0", "0"],
        ["total", "2", "7", "2"],
    ]


def test_special_files_are_not_regular_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        assert run(["info", path]) == 2
        assert capsys.readouterr().err == (
            f"ebcap: error: {path} is not a regular file (a device, pipe or socket)\n"
        )


def test_a_pipe_as_dev_stdin_is_not_a_regular_file() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", "/dev/stdin"],
        input="not a capture\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "ebcap: error: /dev/stdin is not a regular file (a device, pipe or socket)\n"
    )


@pytest.mark.parametrize("command", ["info", "recover"])
def test_an_empty_path_is_named_as_such(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["info", ""] if command == "info" else ["recover", "", "-o", str(tmp_path / "x")]
    assert run(argv) == 2
    assert capsys.readouterr().err == "ebcap: error: the input path is empty\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", ["delete", "insert"])
def test_bytes_shifted_inside_the_payloads_are_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    """info reads the core columns only; bytes removed from or added to the payloads of
    the last batch leave those whole, but not the file's layout."""
    good = write(tmp_path / "good.arrow")
    data = good.read_bytes()
    at = data.rindex(b"\x00" * 16 * 3)  # inside the last batch's payloads (16 zero bytes each)
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(
        data[:at] + data[at + 5 :] if change == "delete" else data[:at] + b"12345" + data[at:]
    )
    assert run(["info", "--json", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ebcap: error: {bad} is damaged (") and err.count("\n") == 1
    assert err.endswith(f"run `ebcap recover {bad} -o FIXED`\n")
