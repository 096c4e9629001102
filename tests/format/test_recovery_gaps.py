"""Recovery of a file whose footer survived: every intact batch is saved, each damaged one
is skipped and listed, and the gap is written into the recovered file's metadata.

Where each batch lies comes from pyarrow's own message reader walking the
intact file; which rows each batch held, from the rows written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.format import CaptureReader, CaptureWriter, make_schema, recover
from ebcap.format import schema as fs

SCHEMA = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})
BATCHES, PER_BATCH, PAYLOAD = 15, 40, 256
DROPS = {0: 3, 1: 0}


def write_capture(path: Path) -> pa.Table:
    """BATCHES flushed batches of PER_BATCH rows (random, so incompressible, payloads) and
    the empty batch carrying the totals; returns the rows."""
    rng = np.random.default_rng(7)
    with CaptureWriter(path, SCHEMA) as writer:
        for b in range(BATCHES):
            seq = np.arange(b * PER_BATCH, (b + 1) * PER_BATCH, dtype=np.uint64)
            lost = seq % 9 == 8
            writer.write(
                {
                    "seq": seq,
                    "cpu": (seq % 2).astype(np.uint16),
                    "ts_ns": 10_000 + seq * 3,
                    "kind": lost.astype(np.int8),
                    "lost": np.where(lost, 5, 0),
                    "round": (seq // 7).astype(np.uint32),
                    "data": [rng.bytes(PAYLOAD) for _ in range(PER_BATCH)],
                }
            )
            writer.flush()
        writer.close({fs.TOTAL_DROPS_PER_CPU: DROPS, fs.TOTAL_DROPS: sum(DROPS.values())})
    with CaptureReader(path) as reader:
        return reader.to_table()


def batch_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record batch message of an intact file."""
    source = pa.BufferReader(data)
    source.seek(8)
    spans = []
    start = source.tell()
    for message in pa.ipc.MessageReader.open_stream(source):
        if message.type == "record batch":
            spans.append((start, source.tell()))
        start = source.tell()
    return spans


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


@pytest.fixture
def capture(tmp_path: Path) -> tuple[bytes, pa.Table, list[tuple[int, int]]]:
    table = write_capture(tmp_path / "good.arrow")
    data = (tmp_path / "good.arrow").read_bytes()
    spans = batch_spans(data)
    assert len(spans) == BATCHES + 1
    return data, table, spans


def rows_of(table: pa.Table, batches: list[int]) -> pa.Table:
    """The rows of the given 0-based data batches, in order."""
    return pa.concat_tables([table.slice(b * PER_BATCH, PER_BATCH) for b in batches])


def test_damaged_payload_in_a_middle_batch_costs_that_batch_only(
    capture: tuple[bytes, pa.Table, list[tuple[int, int]]], tmp_path: Path
) -> None:
    data, table, spans = capture
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(flip(data, spans[5][1] - 100))  # in batch 6's payload bytes
    report = recover(bad, tmp_path / "fixed.arrow")
    kept = [b for b in range(BATCHES) if b != 5]
    assert report.batches_saved == BATCHES - 1  # 14 data batches; the totals batch is not one
    assert report.source_batches == BATCHES + 1
    assert report.rows_saved == len(kept) * PER_BATCH
    assert report.damage_offset == spans[5][0]
    assert report.reason.startswith("batch 6 of 16 is corrupt (column 'data' does not match")
    [skipped] = report.skipped
    assert (skipped.index, skipped.rows) == (5, PER_BATCH)
    assert (skipped.first_seq, skipped.last_seq) == (5 * PER_BATCH, 6 * PER_BATCH - 1)
    assert skipped.reason == "column 'data' does not match its checksum"
    assert report.rows_skipped == PER_BATCH and not report.complete
    assert report.totals_present and report.totals_recomputed
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        saved = reader.to_table()
        totals = reader.totals
        marker = reader.metadata[fs.META_RECOVERED]
    assert saved.equals(rows_of(table, kept))
    assert marker == {
        fs.RECOVERED_FROM: "bad.arrow",
        fs.RECOVERED_DAMAGE_OFFSET: spans[5][0],
        fs.RECOVERED_REASON: report.reason,
        fs.RECOVERED_SOURCE_BATCHES: BATCHES + 1,
        fs.RECOVERED_SKIPPED: [
            {
                fs.SKIPPED_BATCH: 6,
                fs.SKIPPED_ROWS: PER_BATCH,
                fs.SKIPPED_FIRST_SEQ: 5 * PER_BATCH,
                fs.SKIPPED_LAST_SEQ: 6 * PER_BATCH - 1,
                fs.SKIPPED_REASON: "column 'data' does not match its checksum",
            }
        ],
    }
    # never invented: the counts describe the rows saved; what describes the capture stays
    assert totals is not None and totals[fs.TOTAL_RECOVERED] is True
    samples = saved.filter(pa.compute.equal(saved["kind"].cast(pa.string()), "sample"))
    assert totals[fs.TOTAL_EVENTS] == samples.num_rows
    lost_rows = saved.filter(pa.compute.equal(saved["kind"].cast(pa.string()), "lost"))
    assert totals[fs.TOTAL_LOST] == pa.compute.sum(lost_rows["lost"]).as_py()
    assert totals[fs.TOTAL_DROPS_PER_CPU] == DROPS
    assert totals[fs.TOTAL_END_TIME].endswith("Z")


def test_a_batch_whose_header_is_damaged_is_skipped_with_its_rows_unknown(
    capture: tuple[bytes, pa.Table, list[tuple[int, int]]], tmp_path: Path
) -> None:
    data, table, spans = capture
    start = spans[2][0]
    garbage = b"\xee" * 24  # over the batch's flatbuffer header, after its length prefix
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(data[: start + 8] + garbage + data[start + 8 + len(garbage) :])
    report = recover(bad, tmp_path / "fixed.arrow")
    [skipped] = report.skipped
    assert (skipped.index, skipped.rows, skipped.first_seq) == (2, None, None)
    assert report.rows_skipped is None
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().equals(rows_of(table, [b for b in range(BATCHES) if b != 2]))
        entry = reader.metadata[fs.META_RECOVERED][fs.RECOVERED_SKIPPED]
    assert entry[0][fs.SKIPPED_BATCH] == 3 and entry[0][fs.SKIPPED_ROWS] is None


def test_damaged_totals_batch_means_recounted_totals_without_drops(
    capture: tuple[bytes, pa.Table, list[tuple[int, int]]], tmp_path: Path
) -> None:
    data, table, spans = capture
    totals_at = data.index(b'"events":', spans[-1][0])
    assert totals_at < spans[-1][1], "the totals are in the last batch"
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(flip(data, totals_at + 2))
    report = recover(bad, tmp_path / "fixed.arrow")
    assert report.skipped == () and not report.totals_present and report.totals_recomputed
    assert report.reason == ("batch 16 of 16 is corrupt (the totals do not match their checksum)")
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().equals(table)
        totals = reader.totals
    assert totals is not None and totals[fs.TOTAL_RECOVERED] is True
    assert fs.TOTAL_DROPS not in totals and fs.TOTAL_END_TIME not in totals


def test_two_damaged_batches_in_the_cli_summary(
    capture: tuple[bytes, pa.Table, list[tuple[int, int]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ebcap.cli import run

    data, table, spans = capture
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(flip(flip(data, spans[4][1] - 60), spans[10][1] - 60))
    fixed = tmp_path / "fixed.arrow"
    assert run(["recover", str(bad), "-o", str(fixed)]) == 0
    kept = [b for b in range(BATCHES) if b not in (4, 10)]
    events = sum(1 for k in rows_of(table, kept)["kind"].to_pylist() if k == fs.KIND_SAMPLE)
    assert capsys.readouterr().out.splitlines() == [
        f"saved 13 batches, {len(kept) * PER_BATCH} rows ({events} events), "
        f"to {fixed}; skipped 2 damaged batches:",
        f"  skipped batch 5 ({PER_BATCH} rows, seq 160..199): "
        "column 'data' does not match its checksum",
        f"  skipped batch 11 ({PER_BATCH} rows, seq 400..439): "
        "column 'data' does not match its checksum",
        "the saved file has a gap where each skipped batch was; "
        "its ebcap.recovered metadata lists them",
        "totals: events and lost recounted from the saved rows; "
        "end time, duration and drops kept from the capture",
        f"{bad} is unchanged: keep it to look into the skipped batches, or remove it",
    ]
    assert run(["replay", str(bad)]) == 2  # the same batches, numbered alike
    said = capsys.readouterr().err
    assert "batch 5 of 16 is damaged (column 'data' does not match" in said
    assert f"; `ebcap recover {bad} -o FIXED` saves the intact batches" in said
    assert run(["info", "--json", str(fixed)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(kept) * PER_BATCH
    assert [s[fs.SKIPPED_BATCH] for s in summary["recovered"][fs.RECOVERED_SKIPPED]] == [5, 11]
