"""``ebcap recover``: what it saved and where the damage starts; exit 2 on unusable input."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.cli import run
from ebcap.format import CaptureReader, CaptureWriter, make_schema, recover
from ebcap.format import schema as fs

SCHEMA = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})


def write(
    path: Path, batches: int = 3, per_batch: int = 10, payload: Callable[[], bytes] = lambda: b"abc"
) -> list[int]:
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
                    "data": [payload() for _ in range(per_batch)],
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
    assert out[1].startswith(
        f"damage starts at byte {ends[1]:,}: batch 3 (counting from 1) is cut short"
    )
    assert out[2] == "totals: recomputed from the saved rows (BPF drop counts unknown)"
    assert out[3] == f"{broken} is unchanged and can now be removed"
    with CaptureReader(fixed) as reader:
        assert reader.to_table().column("seq").to_pylist() == list(range(20))


def test_recover_a_complete_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "run.arrow"
    write(good)
    assert run(["recover", str(good), "--output", str(tmp_path / "copy.arrow")]) == 0
    assert capsys.readouterr().out == (
        f"{good} is complete: copied 3 batches, 30 rows (30 events) to {tmp_path / 'copy.arrow'}\n"
        "totals: kept from the end of the capture\n"
        f"{good} is unchanged and can now be removed\n"
    )


@pytest.mark.parametrize(
    ("cut", "batches", "totals"),
    [
        ("none", 3, "totals: kept from the end of the capture"),
        ("footer", 3, "totals: kept from the end of the capture"),
        ("batch 3", 2, "totals: recomputed from the saved rows (BPF drop counts unknown)"),
    ],
)
def test_batches_are_counted_alike_whole_or_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: str, batches: int, totals: str
) -> None:
    """The empty batch that carries the totals is never counted as a batch: whether it
    was saved is the totals line's to say, for a whole file as for a cut one."""
    good = tmp_path / "run.arrow"
    ends = write(good)
    data = good.read_bytes()
    source = tmp_path / "source.arrow"
    source.write_bytes({"none": data, "footer": data[:-12], "batch 3": data[: ends[1] + 5]}[cut])
    fixed = tmp_path / "fixed.arrow"
    assert run(["recover", str(source), "-o", str(fixed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = batches * 10
    assert f" {batches} batches, {rows} rows ({rows} events) to {fixed}" in lines[0]
    assert lines[0].startswith(f"{source} is complete: copied" if cut == "none" else "saved")
    assert lines[-2] == totals
    report = recover(source, tmp_path / "again.arrow")
    assert (report.batches_saved, report.rows_saved) == (batches, rows)
    with CaptureReader(fixed) as reader:
        written = [reader.batch(i).num_rows for i in range(reader.num_batches)]
    assert [n for n in written if n] == [10] * batches


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


def cut_capture(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """``name`` holding the first two of three batches of a capture and a bit of the third,
    as a killed recording leaves NAME.partial; returns its path and bytes."""
    good = tmp_path / "source" / "good.arrow"
    good.parent.mkdir()
    ends = write(good)
    data = good.read_bytes()[: ends[1] + 5]
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("existing", [None, "force", "no-force"])
def test_the_documented_command_recovers_name_partial_into_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str | None
) -> None:
    """`ebcap recover run.arrow.partial -o run.arrow`: the input is the writer's usual work
    file for the output. It is only read: not deleted, not truncated, not written to."""
    partial, data = cut_capture(tmp_path, "run.arrow.partial")
    out = tmp_path / "run.arrow"
    argv = ["recover", str(partial), "-o", str(out)]
    if existing is not None:
        out.write_bytes(b"an older file")
    if existing == "force":
        argv.append("--force")
    if existing == "no-force":
        assert run(argv) == 2
        assert "exists" in capsys.readouterr().err
        assert out.read_bytes() == b"an older file" and partial.read_bytes() == data
        return
    assert run(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"saved 2 batches, 20 rows (20 events) to {out} from the first")
    assert lines[-1] == f"{partial} is unchanged and can now be removed"
    assert partial.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.arrow",
        "run.arrow.partial",
        "source",
    ]
    with CaptureReader(out) as reader:
        assert reader.to_table().column("seq").to_pylist() == list(range(20))
        assert reader.metadata[fs.META_RECOVERED][fs.RECOVERED_FROM] == "run.arrow.partial"


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_input_linked_as_the_work_file_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    saved, data = cut_capture(tmp_path, "saved.partial")
    work = tmp_path / "run.arrow.partial"
    if link == "hard":
        os.link(saved, work)
    else:
        work.symlink_to(saved)
    assert run(["recover", str(saved), "-o", str(tmp_path / "run.arrow"), "--force"]) == 0
    assert saved.read_bytes() == data and work.read_bytes() == data
    assert work.is_symlink() == (link == "symbolic")
    with CaptureReader(tmp_path / "run.arrow") as reader:
        assert reader.num_rows == 20


def test_another_captures_work_file_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NAME.partial of a recording still running (or to recover later) is not ours to
    delete, even with --force: recovery writes beside it."""
    other, _ = cut_capture(tmp_path, "other.partial")
    unfinished = tmp_path / "run.arrow.partial"
    unfinished.write_bytes(b"another capture, still being written")
    assert run(["recover", str(other), "-o", str(tmp_path / "run.arrow"), "--force"]) == 0
    assert unfinished.read_bytes() == b"another capture, still being written"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["other.partial", "run.arrow", "run.arrow.partial", "source"]


def test_recovering_onto_the_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial, data = cut_capture(tmp_path, "run.arrow.partial")
    link = tmp_path / "run.arrow"
    link.symlink_to(partial)
    assert run(["recover", str(partial), "-o", str(link), "--force"]) == 2
    assert "onto itself" in capsys.readouterr().err
    assert partial.read_bytes() == data and link.is_symlink()


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 512 KiB tmpfs of our own (unmounted afterwards)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="ebcap-recover-full-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "ebcap-test", mountpoint],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", mountpoint], check=True)
        mountpoint.rmdir()


def incompressible_capture(path: Path, batches: int, per_batch: int, payload: int) -> None:
    rng = np.random.default_rng(3)
    write(path, batches, per_batch, lambda: rng.bytes(payload))


@pytest.mark.privileged  # mounts a tmpfs
def test_disk_full_leaves_the_input_and_nothing_else(
    small_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The input fills most of a small file system; its copy cannot fit."""
    good = tmp_path / "good.arrow"
    incompressible_capture(good, batches=6, per_batch=25, payload=2000)  # ~300 KB
    data = good.read_bytes()[:-100]  # the footer cut off: a .partial
    partial = small_fs / "run.arrow.partial"
    partial.write_bytes(data)
    out = small_fs / "run.arrow"
    assert run(["recover", str(partial), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"ebcap: error: disk full writing {out}: nothing was saved; {partial} is unchanged: "
        "free some space and run it again\n"
    )
    assert partial.read_bytes() == data
    assert sorted(p.name for p in small_fs.iterdir()) == ["run.arrow.partial"]


@pytest.mark.parametrize("into", [2, 6])
def test_every_command_says_the_file_is_cut_inside_its_end_of_stream_marker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], into: int
) -> None:
    """A file cut after its last batch, the one carrying the totals, lost no events:
    `info` and `replay` refuse it in one line saying so, `recover` keeps everything."""
    good = tmp_path / "run.arrow"
    write(good)
    data = good.read_bytes()
    eos = data.rindex(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    cut = tmp_path / "run.arrow.partial"
    cut.write_bytes(data[: eos + into])
    reason = "the file is cut inside the end-of-stream marker after its last batch"
    for command in ("info", "replay"):
        assert run([command, str(cut)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"ebcap: error: {cut} is truncated ({reason}; no batch is cut short): "
            f"run `ebcap recover {cut} -o FIXED`\n"
        )
    fixed = tmp_path / "fixed.arrow"
    assert run(["recover", str(cut), "-o", str(fixed)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"saved 3 batches, 30 rows (30 events) to {fixed} from the first {eos:,} "
        f"of {eos + into:,} bytes",
        f"damage starts at byte {eos:,}: {reason}",
        "totals: kept from the end of the capture",
        f"{cut} is unchanged and can now be removed",
    ]
