"""Reading for replay: only the columns asked for, checked, in memory that does not grow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import Synthetic, build_table, write_table

from ebcap.errors import BadFileError
from ebcap.format import CaptureWriter
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.scan import iter_slices, slice_schema


def written(path: Path, table: pa.Table, batch_rows: int = 500) -> Path:
    """``table`` written by ebcap's own writer (so with per-batch checksums)."""
    schema = table.schema.with_metadata(table.schema.metadata)
    with CaptureWriter(path, schema, flush_rows=batch_rows) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write(batch)
    return path


def test_a_projection_reads_those_columns_and_the_ordering_keys(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=51, syscalls=True, lost_every=7, events_per_cpu=900))
    path = written(tmp_path / "c.arrow", table)
    with CaptureReader(path) as reader:
        slices = list(iter_slices(reader, columns=["comm", "pid"]))
        schema = slice_schema(reader, ["comm", "pid"])
    assert schema.names == ["seq", "cpu", "ts_ns", "kind", "pid", "comm"]  # file order
    read = pa.Table.from_batches(slices, schema=schema)
    assert read.equals(table.select(schema.names))


def test_a_missing_column_is_a_bad_file(tmp_path: Path) -> None:
    path = written(tmp_path / "c.arrow", build_table(Synthetic(seed=52, events_per_cpu=20)))
    with CaptureReader(path) as reader, pytest.raises(BadFileError, match="lacks the column"):
        list(reader.iter_batches(["nope"]))


def rewritten(source: Path, target: Path, change) -> Path:
    """A copy of ``source`` with ``change`` applied to each batch, checksums kept as they were."""
    with pa.memory_map(str(source)) as mm:
        ipc = pa.ipc.open_file(mm)
        with pa.ipc.new_file(str(target), ipc.schema) as out:
            for index in range(ipc.num_record_batches):
                batch, custom = ipc.get_batch_with_custom_metadata(index)
                out.write_batch(change(batch), custom_metadata=custom)
    return target


def test_values_changed_under_their_checksum_are_refused_in_a_projection(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=53, syscalls=True, events_per_cpu=300))
    path = written(tmp_path / "c.arrow", table)

    def swap_comm(batch: pa.RecordBatch) -> pa.RecordBatch:
        index = batch.schema.get_field_index("comm")
        values = [None if v is None else v[::-1] for v in batch.column(index).to_pylist()]
        return batch.set_column(index, batch.schema.field(index), pa.array(values, pa.string()))

    bad = rewritten(path, tmp_path / "bad.arrow", swap_comm)
    with CaptureReader(bad) as reader:
        assert len(list(reader.iter_batches(["pid"]))) == reader.num_batches  # comm not read
        with pytest.raises(BadFileError, match=r"batch 1 of \d+ is damaged \(column 'comm'"):
            list(iter_slices(reader, columns=["comm"]))


def test_without_checksums_every_value_is_validated(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=54, syscalls=True, events_per_cpu=50))
    comm = table.column("comm").combine_chunks()
    offsets = np.frombuffer(comm.buffers()[1], np.int32)[: len(comm) + 1]
    data = bytearray(comm.buffers()[2].to_pybytes())
    data[int(offsets[3])] = 0xFF  # not UTF-8, yet every buffer has the right size
    broken = pa.StringArray.from_buffers(
        len(comm), comm.buffers()[1], pa.py_buffer(bytes(data)), comm.buffers()[0]
    )
    index = table.schema.get_field_index("comm")
    table = table.set_column(index, table.schema.field(index), broken)
    assert fs.META_CHECKSUM.encode() not in table.schema.metadata
    path = write_table(tmp_path / "plain.arrow", table, batch_rows=1000)
    with CaptureReader(path) as reader, pytest.raises(BadFileError, match="Invalid UTF8"):
        list(reader.iter_batches(["comm"]))


def mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_pages_of_the_file_are_given_back_after_each_batch(tmp_path: Path) -> None:
    rows = 200_000
    rng = np.random.default_rng(55)
    table = build_table(Synthetic(seed=55, events_per_cpu=rows // 2, batch_rows=20_000))
    noise = rng.integers(0, 256, size=(table.num_rows, 48), dtype=np.uint8)  # incompressible
    index = table.schema.get_field_index("data")
    payloads = pa.array([bytes(r) for r in noise], pa.binary())
    table = table.set_column(index, table.schema.field(index), payloads)
    path = written(tmp_path / "big.arrow", table, batch_rows=20_000)
    size_kib = path.stat().st_size // 1024
    assert size_kib > 8_000
    with CaptureReader(path) as reader:
        peak = 0
        for _ in reader.iter_batches():
            peak = max(peak, mapped_kib(path))
        assert mapped_kib(path) < size_kib // 10
    assert peak < size_kib // 4  # about a batch, never the file
