"""The writer: flushing on time and rows, file mode, never clobbering, totals, validation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import WRITER_SCHEMA as SCHEMA
from synthetic import batches_on_disk
from synthetic import writer_rows as rows

from ebcap.errors import CaptureError, ClosedError, OutputExistsError, UsageError
from ebcap.format import CaptureReader, CaptureWriter, make_schema, recover
from ebcap.format import schema as fs
from ebcap.format.writer import partial_path


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- flushing ------------------------------------------------------------------


def test_batch_appears_on_disk_after_the_flush_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "cap.arrow"
    writer = CaptureWriter(out, SCHEMA, flush_interval=1.0, clock=clock)
    part = partial_path(out)
    writer.write(rows(0, 5))
    clock.now += 0.5
    writer.write(rows(5, 5))
    assert not writer.maybe_flush()
    assert batches_on_disk(part) == []
    clock.now += 0.5  # the oldest buffered row has now waited 1.0 s
    assert writer.maybe_flush()
    assert batches_on_disk(part) == [10]
    assert not writer.maybe_flush()  # nothing buffered: nothing to do
    clock.now += 0.2
    writer.write(rows(10, 3))  # starts a new interval
    clock.now += 0.9
    assert not writer.maybe_flush()
    clock.now += 0.1
    writer.write(rows(13, 1))  # a write past the interval flushes by itself
    assert batches_on_disk(part) == [10, 4]
    writer.close()
    with CaptureReader(out) as reader:
        assert [b.num_rows for b in reader.iter_batches()] == [10, 4, 0]


def test_real_clock_flushes_after_a_short_interval(tmp_path: Path) -> None:
    import time

    out = tmp_path / "cap.arrow"
    with CaptureWriter(out, SCHEMA, flush_interval=0.05) as writer:
        writer.write(rows(0, 3))
        assert batches_on_disk(partial_path(out)) == []
        time.sleep(0.1)
        assert writer.maybe_flush()
        assert batches_on_disk(partial_path(out)) == [3]


def test_row_threshold_flushes_and_splits(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    with CaptureWriter(out, SCHEMA, flush_rows=10, clock=FakeClock()) as writer:
        for start in range(0, 25, 5):
            writer.write(rows(start, 5))
        assert batches_on_disk(partial_path(out)) == [10, 10]
        writer.write(rows(25, 23))
        assert batches_on_disk(partial_path(out)) == [10, 10, 10, 10, 8]
        assert writer.rows_written == 48
    with CaptureReader(out) as reader:
        table = reader.to_table()
    assert table.column("seq").to_pylist() == list(range(48))


# -- files on disk -------------------------------------------------------------


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    old = os.umask(0)
    try:
        writer = CaptureWriter(out, SCHEMA)
        writer.write(rows(0, 3))
        writer.flush()
        assert stat.S_IMODE(partial_path(out).stat().st_mode) == 0o600
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not partial_path(out).exists()


def test_refuses_to_overwrite_and_leaves_the_file_untouched(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="exists") as info:
        CaptureWriter(out, SCHEMA)
    assert "\n" not in str(info.value)
    assert out.read_bytes() == b"precious"
    assert not partial_path(out).exists()


@pytest.mark.parametrize("force", [False, True])
def test_a_name_of_an_open_descriptor_is_refused(tmp_path: Path, force: bool) -> None:
    """`-o /dev/stdout` (stdout a regular file): renaming the finished capture over the
    name would replace the /dev/stdout symlink. A link of our own stands in for it."""
    target = tmp_path / "file"
    target.write_bytes(b"precious")
    fd = os.open(target, os.O_WRONLY)
    try:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{fd}")
        with pytest.raises(UsageError, match="names an open descriptor"):
            CaptureWriter(link, SCHEMA, force=force)
        assert os.readlink(link) == f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "stdout"]


def test_force_replaces_only_at_the_final_rename(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    out.write_bytes(b"precious")
    writer = CaptureWriter(out, SCHEMA, force=True)
    writer.write(rows(0, 4))
    writer.flush()
    assert out.read_bytes() == b"precious"
    writer.abort()  # a failed capture must not cost the old file
    assert out.read_bytes() == b"precious"
    partial_path(out).unlink()
    with CaptureWriter(out, SCHEMA, force=True) as writer:
        writer.write(rows(0, 4))
    with CaptureReader(out) as reader:
        assert reader.num_rows == 4


def test_an_unfinished_capture_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    partial_path(out).write_bytes(b"unfinished")
    with pytest.raises(OutputExistsError, match="unfinished capture"):
        CaptureWriter(out, SCHEMA)
    assert partial_path(out).read_bytes() == b"unfinished"


def test_force_writes_beside_an_unfinished_capture_and_never_removes_it(tmp_path: Path) -> None:
    """NAME.partial may be a crashed capture to recover, or a running one's."""
    out = tmp_path / "cap.arrow"
    partial_path(out).write_bytes(b"unfinished")
    failed = CaptureWriter(out, SCHEMA, force=True)
    assert failed.partial_path == tmp_path / "cap.arrow.new.partial"
    failed.abort()  # nothing flushed: its own work file goes, the other stays
    assert partial_path(out).read_bytes() == b"unfinished"
    with CaptureWriter(out, SCHEMA, force=True) as writer:
        writer.write(rows(0, 4))
    with CaptureReader(out) as reader:
        assert reader.num_rows == 4
    assert partial_path(out).read_bytes() == b"unfinished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.arrow", "cap.arrow.partial"]


def test_a_symbolic_link_to_nothing_is_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="exists"):
        CaptureWriter(out, SCHEMA)
    assert out.is_symlink()
    with CaptureWriter(out, SCHEMA, force=True) as writer:  # the link itself is replaced
        writer.write(rows(0, 4))
    assert not out.is_symlink() and not (tmp_path / "nowhere").exists()
    with CaptureReader(out) as reader:
        assert reader.num_rows == 4


def test_output_appearing_during_the_capture_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    writer = CaptureWriter(out, SCHEMA)
    writer.write(rows(0, 4))
    out.write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError, match="appeared"):
        writer.close()
    assert out.read_bytes() == b"someone else's"
    with CaptureReader(partial_path(out)) as reader:  # the footer was written before the rename
        assert reader.num_rows == 4
    with pytest.raises(ClosedError, match="not renamed"):
        writer.close()
    writer.abort()
    assert partial_path(out).exists()


def test_bad_destinations(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        CaptureWriter(tmp_path / "missing" / "cap.arrow", SCHEMA)
    with pytest.raises(UsageError, match="is a directory"):
        CaptureWriter(tmp_path, SCHEMA, force=True)
    with pytest.raises(UsageError, match="flush interval"):
        CaptureWriter(tmp_path / "a.arrow", SCHEMA, flush_interval=0)
    with pytest.raises(UsageError, match="flush rows"):
        CaptureWriter(tmp_path / "a.arrow", SCHEMA, flush_rows=0)
    assert list(tmp_path.iterdir()) == []


# -- finishing -----------------------------------------------------------------


def test_totals_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    data = rows(0, 50)
    with CaptureWriter(out, SCHEMA) as writer:
        writer.write(data)
        writer.close({"drops_per_cpu": {0: 3, 2: np.uint64(1)}, "drops": 4, "duration_s": 1.5})
    cpu, kind, lost = (np.asarray(data[k]) for k in ("cpu", "kind", "lost"))
    events = {c: int(np.sum((cpu == c) & (kind == 0))) for c in range(4)}
    lost_per_cpu = {c: int(lost[(cpu == c) & (kind == 1)].sum()) for c in range(4)}
    with CaptureReader(out) as reader:
        totals = reader.totals
    assert totals is not None
    assert totals["events_per_cpu"] == {c: n for c, n in events.items() if n}
    assert totals["lost_per_cpu"] == {c: n for c, n in lost_per_cpu.items() if n}
    assert totals["events"] == sum(events.values()) == 50 - 8
    assert totals["lost"] == int(lost.sum())
    assert totals["drops_per_cpu"] == {0: 3, 2: 1}
    assert totals["drops"] == 4 and totals["duration_s"] == 1.5
    assert totals["end_time"].endswith("Z")
    # Stored as plain JSON on the last batch, readable without ebcap:
    with pa.ipc.open_file(out) as plain:
        last = plain.get_batch_with_custom_metadata(plain.num_record_batches - 1)
        stored = json.loads(last.custom_metadata[fs.TOTALS_KEY.encode()])
    assert stored["drops_per_cpu"] == {"0": 3, "2": 1}


def test_caller_totals_win_and_bad_totals_leave_the_writer_open(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    writer = CaptureWriter(out, SCHEMA)
    writer.write(rows(1, 3))
    with pytest.raises(ValueError, match="drops_per_cpu"):
        writer.close({"drops_per_cpu": {0: -1}})
    with pytest.raises(ValueError, match="events"):
        writer.close({"events": 1.5})
    assert writer.close({"events_per_cpu": {"7": 9}, "end_time": "then"}) == out
    assert writer.close() == out  # idempotent
    with CaptureReader(out) as reader:
        assert reader.totals is not None
        assert reader.totals["events_per_cpu"] == {7: 9}
        assert reader.totals["end_time"] == "then"


def test_closed_and_aborted_writers_refuse_work(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "a.arrow", SCHEMA)
    writer.close()
    with pytest.raises(ClosedError):
        writer.write(rows(0, 1))
    writer.abort()  # no-op after close
    assert (tmp_path / "a.arrow").exists()
    other = CaptureWriter(tmp_path / "b.arrow", SCHEMA)
    other.abort()
    other.abort()
    with pytest.raises(ClosedError):
        other.close()


def test_abort_keeps_a_recoverable_partial_only_when_something_was_flushed(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    with pytest.raises(RuntimeError), CaptureWriter(out, SCHEMA) as writer:
        writer.write(rows(0, 5))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # nothing flushed: nothing left
    with pytest.raises(RuntimeError), CaptureWriter(out, SCHEMA) as writer:
        writer.write(rows(0, 5))
        writer.flush()
        writer.write(rows(5, 5))  # buffered only: lost with the crash
        raise RuntimeError("boom")
    assert not out.exists()
    report = recover(partial_path(out), tmp_path / "fixed.arrow")
    assert report.rows_saved == 5 and not report.totals_present


def test_no_fd_left_open(tmp_path: Path) -> None:
    before = open_fds()
    for i in range(5):
        with CaptureWriter(tmp_path / f"{i}.arrow", SCHEMA) as writer:
            writer.write(rows(0, 3))
        with CaptureReader(tmp_path / f"{i}.arrow") as reader:
            reader.to_table()
        aborted = CaptureWriter(tmp_path / f"x{i}.arrow", SCHEMA)
        aborted.abort()
        with pytest.raises(OutputExistsError):
            CaptureWriter(tmp_path / f"{i}.arrow", SCHEMA)
    assert open_fds() == before


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("pid"), "missing"),
        (lambda r: r.update(extra=[1, 2, 3]), "unexpected"),
        (lambda r: r.update(cpu=["a", "b", "c"]), "'cpu'"),
        (lambda r: r.update(cpu=[1, None, 2]), "'cpu' has nulls"),
        (lambda r: r.update(kind=["sample", "dropped", "lost"]), "kind must be one of"),
        (lambda r: r.update(kind=[0, 1, 2]), "kind codes"),
        (lambda r: r.update(data=[b"x"]), "different lengths"),
        (lambda r: r.update(seq=[3, 2, 4]), "strictly increasing"),
        (lambda r: r.update(lost=[-1, 0, 0]), "'lost'"),
        (lambda r: r.update(ts_ns=[1.5, 2, 3]), "'ts_ns' does not fit uint64: a value with a"),
    ],
)
def test_rows_that_do_not_fit_the_schema_are_refused(tmp_path: Path, change, message) -> None:
    data = rows(0, 3)
    change(data)
    with CaptureWriter(tmp_path / "cap.arrow", SCHEMA) as writer:
        with pytest.raises(ValueError, match=message):
            writer.write(data)
        writer.write(rows(0, 3))  # the writer is still usable


def test_seq_must_keep_increasing_across_writes(tmp_path: Path) -> None:
    with CaptureWriter(tmp_path / "cap.arrow", SCHEMA) as writer:
        writer.write(rows(0, 3))
        with pytest.raises(ValueError, match="strictly increasing"):
            writer.write(rows(2, 3))


def test_kind_in_any_form_lands_on_the_fixed_dictionary(tmp_path: Path) -> None:
    out = tmp_path / "cap.arrow"
    reversed_dict = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, 1], pa.int8()), pa.array(["lost", "sample"])
    )
    with CaptureWriter(out, SCHEMA) as writer:
        writer.write({**rows(0, 3), "kind": ["lost", "sample", "sample"]})
        writer.write({**rows(3, 3), "kind": reversed_dict})
        writer.write({**rows(6, 3), "kind": np.array([1, 1, 0], np.uint8)})
        batch = pa.RecordBatch.from_pydict({**rows(9, 2), "kind": ["sample", "lost"]})
        writer.write(batch)
    with CaptureReader(out) as reader:
        kinds = reader.to_table().column("kind").to_pylist()
        expected = "lost sample sample  sample lost sample  lost lost sample  sample lost"
        assert kinds == expected.split()
        dictionary = reader.batch(0).column("kind").dictionary.to_pylist()
    assert dictionary == list(fs.KINDS)


def test_schema_must_come_from_make_schema(tmp_path: Path) -> None:
    plain = pa.schema(list(fs.CORE_FIELDS))
    with pytest.raises(ValueError, match="make_schema"):
        CaptureWriter(tmp_path / "a.arrow", plain)
    with pytest.raises(ValueError, match="dictionary"):
        CaptureWriter(
            tmp_path / "a.arrow",
            make_schema([pa.field("comm", pa.dictionary(pa.int32(), pa.string()))]),
        )
    assert list(tmp_path.iterdir()) == []


# -- disk full -----------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 192 KiB tmpfs: a real ENOSPC."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.privileged
def test_disk_full_is_one_capture_error_and_the_flushed_rows_survive(
    tiny_fs: Path, tmp_path: Path
) -> None:
    out = tiny_fs / "cap.arrow"
    fds = open_fds()
    writer = CaptureWriter(out, SCHEMA, flush_rows=100)
    rng = np.random.default_rng(7)
    written = 0
    with pytest.raises(CaptureError) as info:
        while True:  # incompressible payloads fill 192 KiB within ~20 batches
            data = rows(written, 100, payload=200)
            data["data"] = [rng.bytes(200) for _ in range(100)]
            writer.write(data)
            written += 100
    message = str(info.value)
    assert "\n" not in message and message.startswith("disk full writing")
    assert "ebcap recover" in message
    flushed = writer.rows_written
    assert 0 < flushed <= written
    with pytest.raises(CaptureError):  # and it stays failed
        writer.write(rows(10**6, 1))
    writer.abort()
    assert open_fds() == fds
    report = recover(partial_path(out), tmp_path / "fixed.arrow")
    assert report.rows_saved == flushed
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().column("seq").to_pylist() == list(range(flushed))


@pytest.mark.privileged
def test_disk_full_inside_one_large_flush_keeps_the_pieces_written(
    tiny_fs: Path, tmp_path: Path
) -> None:
    """One flush of 1,000 rows goes out as ten batches of 100: those that landed before
    the disk filled are counted, kept and recovered (a ring buffer drain can be that big)."""
    out = tiny_fs / "cap.arrow"
    rng = np.random.default_rng(9)
    data = rows(0, 1000, payload=200)
    data["data"] = [rng.bytes(200) for _ in range(1000)]  # 200 KB incompressible > 192 KiB
    writer = CaptureWriter(out, SCHEMA, flush_rows=100)
    with pytest.raises(CaptureError) as info:
        writer.write(data)
        writer.flush()
    flushed = writer.rows_written
    assert 0 < flushed < 1000 and flushed % 100 == 0
    assert f"the {flushed} rows flushed before are recoverable" in str(info.value)
    writer.abort()
    report = recover(partial_path(out), tmp_path / "fixed.arrow")
    assert report.rows_saved == flushed


@pytest.mark.privileged
def test_disk_full_before_any_flush_leaves_nothing(tiny_fs: Path) -> None:
    out = tiny_fs / "cap.arrow"
    rng = np.random.default_rng(8)
    data = rows(0, 1000, payload=256)
    data["data"] = [rng.bytes(256) for _ in range(1000)]  # 256 KB incompressible > 192 KiB
    writer = CaptureWriter(out, SCHEMA)
    writer.write(data)
    with pytest.raises(CaptureError, match="nothing had been flushed yet"):
        writer.flush()
    assert list(tiny_fs.iterdir()) == []


@pytest.mark.parametrize("level", [-5, 1, 9])
def test_zstd_level_trades_size_and_keeps_every_value(tmp_path: Path, level: int) -> None:
    def write(path: Path, zstd_level: int) -> int:
        with CaptureWriter(path, SCHEMA, zstd_level=zstd_level) as writer:
            data = rows(0, 20_000, payload=64)
            data["data"] = [bytes(range(i % 200, i % 200 + 40)) * 2 for i in range(20_000)]
            writer.write(data)
        return path.stat().st_size

    size = write(tmp_path / "level.arrow", level)
    default = write(tmp_path / "default.arrow", 1)
    if level < 1:
        assert size > default
    elif level > 1:
        assert size < default
    with CaptureReader(tmp_path / "level.arrow") as chosen:
        table = chosen.to_table()
    with CaptureReader(tmp_path / "default.arrow") as usual:
        assert table.equals(usual.to_table())


def test_zstd_level_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="zstd level"):
        CaptureWriter(tmp_path / "x.arrow", SCHEMA, zstd_level=99)
    assert list(tmp_path.iterdir()) == []
