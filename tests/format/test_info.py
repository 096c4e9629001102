"""The capture summary against ground truth computed from the generated rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.errors import BadFileError
from ebcap.format import CaptureReader, CaptureWriter, make_schema, summarize
from ebcap.format import schema as fs
from ebcap.format.info import wall_clock_iso

OFFSET = 1_700_000_000_123_456_789  # CLOCK_REALTIME - CLOCK_MONOTONIC
META = fs.encode_metadata(
    {
        fs.META_TRANSPORT: "perf",
        fs.META_SOURCE: "syscalls",
        fs.META_KERNEL: "6.18.0",
        fs.META_HOSTNAME: "box",
        fs.META_NCPUS: 4,
        fs.META_CPUS: [0, 1, 2, 3],
        fs.META_REALTIME_OFFSET: OFFSET,
        fs.META_BUFFER_SIZE: 1 << 20,
        fs.META_WAKEUP: "events:1",
        fs.META_START_TIME: "2023-11-14T22:13:20Z",
        fs.META_COMMAND: ["ebcap", "record", "-o", "x.arrow"],
        fs.META_EBCAP_VERSION: "0.1.0",
    }
)
SCHEMA = make_schema([pa.field("comm", pa.string())], META)


def generated(n: int, seed: int) -> dict[str, np.ndarray | list[object]]:
    rng = np.random.default_rng(seed)
    kind = (rng.random(n) < 0.1).astype(np.int8)
    return {
        "seq": np.arange(n, dtype=np.uint64),
        "cpu": rng.integers(0, 4, n).astype(np.uint16),
        "ts_ns": rng.integers(10**9, 2 * 10**9, n).astype(np.uint64),
        "kind": kind,
        "lost": np.where(kind == 1, rng.integers(1, 1000, n), 0).astype(np.uint64),
        "round": np.zeros(n, np.uint32),
        "data": [rng.bytes(int(k)) for k in rng.integers(0, 64, n)],
        "comm": ["bash"] * n,
    }


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray | list[object]]]:
    data = generated(3000, seed=3)
    out = tmp_path / "cap.arrow"
    with CaptureWriter(out, SCHEMA, flush_rows=1000) as writer:
        writer.write(data)
        writer.close({fs.TOTAL_DROPS_PER_CPU: {0: 0, 1: 0, 2: 7, 3: 0}, fs.TOTAL_DROPS: 7})
    return out, data


def test_summary_matches_the_rows(
    capture: tuple[Path, dict[str, np.ndarray | list[object]]],
) -> None:
    path, data = capture
    cpu, kind, ts, lost = (np.asarray(data[k]) for k in ("cpu", "kind", "ts_ns", "lost"))
    samples = kind == 0
    with CaptureReader(path) as reader:
        s = summarize(reader)
    assert s.rows == 3000 and s.batches == 4
    assert s.samples == int(samples.sum()) and s.lost_records == int((~samples).sum())
    assert s.events_per_cpu == {c: int((samples & (cpu == c)).sum()) for c in range(4)}
    assert s.lost_per_cpu == {c: int(lost[~samples & (cpu == c)].sum()) for c in range(4)}
    assert s.drops_per_cpu == {0: 0, 1: 0, 2: 7, 3: 0}
    assert s.counts_from == "totals"
    assert s.first_ts_ns == int(ts[samples].min()) and s.last_ts_ns == int(ts[samples].max())
    assert s.duration_s == pytest.approx((s.last_ts_ns - s.first_ts_ns) / 1e9)
    wall = dt.datetime.fromisoformat(s.first_wall.replace("Z", "+00:00"))
    assert wall.timestamp() == pytest.approx((s.first_ts_ns + OFFSET) / 1e9, abs=1e-6)
    assert s.file_size == path.stat().st_size
    with pa.ipc.open_file(path) as plain:
        raw = sum(plain.get_batch(i).nbytes for i in range(plain.num_record_batches))
    assert s.uncompressed_bytes == raw
    assert s.compression_ratio == pytest.approx(raw / s.file_size)
    assert s.bytes_per_event == pytest.approx(s.file_size / int(samples.sum()))  # per sample
    assert (s.transport, s.source, s.kernel, s.hostname, s.ncpus) == (
        "perf",
        "syscalls",
        "6.18.0",
        "box",
        4,
    )
    assert s.command == ["ebcap", "record", "-o", "x.arrow"]
    assert s.source_columns == ["comm"] and s.recovered is None
    assert s.end_time is not None and s.end_time.endswith("Z")
    as_json = s.to_dict()
    assert as_json["events_per_cpu"] == {str(c): n for c, n in s.events_per_cpu.items()}
    assert as_json["path"] == str(path)


def test_without_totals_counts_come_from_the_rows(tmp_path: Path) -> None:
    data = generated(200, seed=5)
    path = tmp_path / "plain.arrow"
    with pa.ipc.new_file(path, SCHEMA) as w:  # a file written without ebcap's writer
        kinds = pa.DictionaryArray.from_arrays(pa.array(data["kind"]), pa.array(list(fs.KINDS)))
        w.write_batch(pa.RecordBatch.from_pydict({**data, "kind": kinds}, schema=SCHEMA))
    with CaptureReader(path) as reader:
        s = summarize(reader)
    cpu, kind = np.asarray(data["cpu"]), np.asarray(data["kind"])
    assert s.counts_from == "rows"
    per_cpu = {c: int(((kind == 0) & (cpu == c)).sum()) for c in range(4)}
    assert s.events_per_cpu == {c: n for c, n in per_cpu.items() if n}
    assert sum(per_cpu.values()) == s.samples > 0
    assert s.drops_per_cpu is None and s.end_time is None


def test_no_samples_means_no_time_span(tmp_path: Path) -> None:
    path = tmp_path / "empty.arrow"
    with CaptureWriter(path, SCHEMA):
        pass
    with CaptureReader(path) as reader:
        s = summarize(reader)
    assert s.rows == 0 and s.first_ts_ns is None and s.duration_s is None
    assert s.bytes_per_event is None
    assert s.events_per_cpu == s.lost_per_cpu == {0: 0, 1: 0, 2: 0, 3: 0}  # every recorded CPU


def test_wall_clock_keeps_nanoseconds() -> None:
    assert wall_clock_iso(1, 1_700_000_000_000_000_000) == "2023-11-14T22:13:20.000000001Z"
    assert wall_clock_iso(999_999_999, 0) == "1970-01-01T00:00:00.999999999Z"


def test_the_summary_decodes_the_core_columns_only(
    capture: tuple[Path, dict[str, np.ndarray | list[object]]], tmp_path: Path
) -> None:
    """Payloads and source columns changed under their checksums: reading them would fail
    (as replay does), so a summary that succeeds, with the same numbers, never read them."""
    path, _ = capture
    bad = tmp_path / "payloads-changed.arrow"
    with pa.memory_map(str(path)) as mm:
        ipc = pa.ipc.open_file(mm)
        with pa.ipc.new_file(str(bad), ipc.schema) as out:
            for index in range(ipc.num_record_batches):
                batch, custom = ipc.get_batch_with_custom_metadata(index)
                for name in ("data", "comm"):
                    i = batch.schema.get_field_index(name)
                    column = batch.column(i)
                    values = [
                        v[::-1] + (b"!" if name == "data" else "!") for v in column.to_pylist()
                    ]
                    batch = batch.set_column(
                        i, batch.schema.field(i), pa.array(values, column.type)
                    )
                out.write_batch(batch, custom_metadata=custom)
    with CaptureReader(bad) as reader:
        with pytest.raises(BadFileError, match="does not match its checksum"):
            reader.to_table()
        changed = summarize(reader)
    with CaptureReader(path) as reader:
        original = summarize(reader)
    assert (changed.rows, changed.samples, changed.events_per_cpu, changed.lost_per_cpu) == (
        original.rows,
        original.samples,
        original.events_per_cpu,
        original.lost_per_cpu,
    )
    assert (changed.first_ts_ns, changed.last_ts_ns) == (original.first_ts_ns, original.last_ts_ns)
