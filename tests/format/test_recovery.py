"""Recovery: cut a valid file anywhere; exactly the complete batches before the cut come back.

Ground truth for where each record batch ends comes from pyarrow's own
message reader walking the intact file, not from ebcap's recovery code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.errors import (
    BadFileError,
    NotAnArrowFileError,
    NotAnEbcapFileError,
    OutputExistsError,
    TruncatedFileError,
    UsageError,
)
from ebcap.format import CaptureReader, CaptureWriter, make_schema, recover
from ebcap.format import schema as fs
from ebcap.format.recovery import RecoveryReport
from ebcap.format.stream_end import (
    EOS_MARKER,
    REASON_CUT_AT_BOUNDARY,
    REASON_CUT_BEFORE_EOS,
    REASON_CUT_IN_EOS,
    REASON_NO_FOOTER,
    whole_stream_end,
)

SCHEMA = make_schema(
    [pa.field("pid", pa.uint32())], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"}
)
DROPS = {0: 2, 1: 5}


def rows(start: int, n: int, payload: int = 4, seed: int = 0) -> dict[str, object]:
    seq = np.arange(start, start + n, dtype=np.uint64)
    rng = np.random.default_rng(seed + start)
    lost = seq % 5 == 4
    return {
        "seq": seq,
        "cpu": seq % 2,
        "ts_ns": 5_000 + seq * 7,
        "kind": lost.astype(np.int8),
        "lost": np.where(lost, seq + 1, 0),
        "round": seq // 3,
        "data": [rng.bytes(payload) for _ in range(n)],
        "pid": seq + 100,
    }


def write_capture(path: Path, batches: int, per_batch: int, payload: int = 4) -> None:
    with CaptureWriter(path, SCHEMA) as writer:
        for b in range(batches):
            writer.write(rows(b * per_batch, per_batch, payload))
            writer.flush()
        writer.close({fs.TOTAL_DROPS_PER_CPU: DROPS, fs.TOTAL_DROPS: sum(DROPS.values())})


def batch_ends(data: bytes) -> tuple[int, list[int]]:
    """(end of the schema message, end offset of every record batch message) of an intact file."""
    source = pa.BufferReader(data)
    source.seek(8)
    messages = pa.ipc.MessageReader.open_stream(source)
    schema_end, ends = 0, []
    for message in messages:
        if message.type == "schema":
            schema_end = source.tell()
        elif message.type == "record batch":
            ends.append(source.tell())
    return schema_end, ends


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, pa.Table]:
    path = tmp_path_factory.mktemp("small") / "small.arrow"
    write_capture(path, batches=3, per_batch=2)
    with CaptureReader(path) as reader:
        table = reader.to_table()
    return path, path.read_bytes(), table


def test_every_cut_of_a_small_file(small: tuple[Path, bytes, pa.Table], tmp_path: Path) -> None:
    _, data, table = small
    schema_end, ends = batch_ends(data)
    assert len(ends) == 4  # three data batches and the empty one carrying the totals
    per_batch_rows = [2, 2, 2, 0]
    cut_path, fixed = tmp_path / "cut.arrow.partial", tmp_path / "fixed.arrow"
    outcomes = {"saved": 0, "refused": 0}
    for cut in range(1, len(data)):
        cut_path.write_bytes(data[:cut])
        with pytest.raises(TruncatedFileError):
            CaptureReader(cut_path)
        complete = sum(end <= cut for end in ends)
        if cut < schema_end or complete == 0:
            with pytest.raises(BadFileError, match="nothing to recover"):
                recover(cut_path, fixed, force=True)
            assert not fixed.exists()
            outcomes["refused"] += 1
            continue
        report = recover(cut_path, fixed, force=True)
        want_rows = sum(per_batch_rows[:complete])
        with_rows = sum(1 for n in per_batch_rows[:complete] if n)  # the totals batch is not one
        assert (report.batches_saved, report.rows_saved) == (with_rows, want_rows), cut
        assert report.damage_offset == ends[complete - 1] == report.bytes_used
        assert report.totals_present == (complete == 4)
        with CaptureReader(fixed) as reader:
            assert reader.to_table().equals(table.slice(0, want_rows)), cut
            assert (
                reader.metadata[fs.META_RECOVERED][fs.RECOVERED_DAMAGE_OFFSET] == ends[complete - 1]
            )
        outcomes["saved"] += 1
    assert outcomes["saved"] > 100 and outcomes["refused"] > 100


def test_recovered_totals_are_recomputed_and_marked(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path
) -> None:
    _, data, table = small
    _, ends = batch_ends(data)
    cut = tmp_path / "cut.partial"
    cut.write_bytes(data[: ends[1] + 10])  # two whole batches, the third begun
    report = recover(cut, tmp_path / "fixed.arrow")
    assert not report.totals_present and report.rows_saved == 4
    assert report.reason.startswith("batch 3 (counting from 1) is cut short")
    kept = table.slice(0, 4).to_pydict()
    events = {c: 0 for c in (0, 1)}
    lost = {c: 0 for c in (0, 1)}
    for c, k, n in zip(kept["cpu"], kept["kind"], kept["lost"], strict=True):
        if k == fs.KIND_SAMPLE:
            events[c] += 1
        else:
            lost[c] += n
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        totals = reader.totals
        recovered = reader.metadata[fs.META_RECOVERED]
    assert totals is not None
    assert totals[fs.TOTAL_RECOVERED] is True
    assert totals[fs.TOTAL_EVENTS_PER_CPU] == {c: n for c, n in events.items() if n}
    assert totals[fs.TOTAL_LOST_PER_CPU] == {c: n for c, n in lost.items() if n}
    assert fs.TOTAL_DROPS_PER_CPU not in totals  # unknowable: never invented
    assert fs.TOTAL_END_TIME not in totals
    assert recovered == {
        fs.RECOVERED_FROM: "cut.partial",
        fs.RECOVERED_DAMAGE_OFFSET: ends[1],
        fs.RECOVERED_REASON: report.reason,
    }


def test_footer_cut_keeps_the_original_totals(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path
) -> None:
    _, data, table = small
    cut = tmp_path / "cut.partial"
    cut.write_bytes(data[:-12])
    report = recover(cut, tmp_path / "fixed.arrow")
    assert report.totals_present and report.rows_saved == 6
    assert report.reason == "the stream ends cleanly but the footer is missing"
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.totals is not None
        assert reader.totals[fs.TOTAL_DROPS_PER_CPU] == DROPS
        assert reader.to_table().equals(table)


def test_a_valid_file_is_copied(small: tuple[Path, bytes, pa.Table], tmp_path: Path) -> None:
    path, _, table = small
    report = recover(path, tmp_path / "copy.arrow")
    assert report.complete and report.damage_offset is None
    assert report.reason == "the file is complete"
    assert (report.batches_saved, report.rows_saved, report.events_saved) == (3, 6, 5)
    with CaptureReader(path) as original, CaptureReader(tmp_path / "copy.arrow") as copy:
        assert copy.to_table().equals(table)
        assert copy.totals == original.totals
        assert fs.META_RECOVERED not in copy.metadata
        assert copy.metadata == original.metadata


@settings(max_examples=40, deadline=None)
@given(cut_fraction=st.floats(0.05, 0.999))
def test_cuts_of_a_larger_file(
    tmp_path_factory: pytest.TempPathFactory, cut_fraction: float
) -> None:
    tmp = tmp_path_factory.mktemp("large")
    path = tmp / "large.arrow"
    write_capture(path, batches=12, per_batch=150, payload=64)
    data = path.read_bytes()
    _, ends = batch_ends(data)
    cut = int(len(data) * cut_fraction)
    (tmp / "cut").write_bytes(data[:cut])
    complete = sum(end <= cut for end in ends)
    if complete == 0:
        with pytest.raises(BadFileError):
            recover(tmp / "cut", tmp / "fixed.arrow")
        return
    report = recover(tmp / "cut", tmp / "fixed.arrow")
    want = min(complete, 12) * 150
    assert report.rows_saved == want
    with CaptureReader(tmp / "fixed.arrow") as reader:
        seqs = reader.to_table().column("seq").to_pylist()
    assert seqs == list(range(want))


def test_refusals(small: tuple[Path, bytes, pa.Table], tmp_path: Path) -> None:
    path, _, _ = small
    with pytest.raises(UsageError, match="onto itself"):
        recover(path, path, force=True)
    existing = tmp_path / "exists.arrow"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        recover(path, existing)
    assert existing.read_bytes() == b"keep me"
    assert recover(path, existing, force=True).rows_saved == 6
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotAnArrowFileError):
        recover(text, tmp_path / "x.arrow")
    foreign = tmp_path / "foreign.arrow"
    with pa.ipc.new_file(foreign, pa.schema([pa.field("x", pa.int8())])) as w:
        w.write_batch(pa.record_batch([pa.array([1], pa.int8())], names=["x"]))
    with pytest.raises(NotAnEbcapFileError):
        recover(foreign, tmp_path / "x.arrow")
    with pytest.raises(BadFileError, match="no such file"):
        recover(tmp_path / "missing", tmp_path / "x.arrow")
    assert not (tmp_path / "x.arrow").exists()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 6))
def test_corruption_saves_a_prefix_or_fails_cleanly(
    tmp_path_factory: pytest.TempPathFactory, seed: int, flips: int
) -> None:
    tmp = tmp_path_factory.mktemp("flip")
    good = tmp / "good.arrow"
    write_capture(good, batches=4, per_batch=5)
    data = bytearray(good.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    (tmp / "bad").write_bytes(bytes(data))
    try:
        report = recover(tmp / "bad", tmp / "fixed.arrow")
    except BadFileError as exc:
        assert "\n" not in str(exc)
        return
    assert report.rows_saved <= 20
    with CaptureReader(tmp / "fixed.arrow") as reader:
        assert reader.num_rows == report.rows_saved


def test_dictionary_source_columns_come_back_as_their_values(tmp_path: Path) -> None:
    """Another tool may code a source column as a dictionary (the writer takes none): the
    recovered file holds its values, from a whole file and from one cut short."""
    schema = make_schema(
        [pa.field("label", pa.dictionary(pa.int32(), pa.string()))],
        {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "other-tool"},
    )
    kinds = pa.array(list(fs.KINDS))
    names = pa.array(["a", "b", "c"])
    labels = [[0, None, 1], [2, 0, 2]]
    path = tmp_path / "d.arrow"
    with pa.ipc.new_file(str(path), schema) as writer:
        for b, codes in enumerate(labels):
            values = rows(3 * b, 3)
            columns = [
                pa.DictionaryArray.from_arrays(pa.array(values["kind"], pa.int8()), kinds)
                if f.name == "kind"
                else pa.array(values[f.name], f.type)
                for f in fs.CORE_FIELDS
            ]
            label = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), names)
            writer.write_batch(pa.RecordBatch.from_arrays([*columns, label], schema=schema))
    data = path.read_bytes()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(data[: len(data) - 40])  # no footer: the stream's batches are saved
    for source in (path, cut):
        out = tmp_path / f"fixed-{source.name}"
        recover(source, out)
        with CaptureReader(out) as reader:
            assert reader.schema.field("label").type == pa.string()
            got = reader.to_table().column("label").to_pylist()
        assert got == ["a", None, "b", "c", "a", "c"]


def test_union_columns_are_recovered(tmp_path: Path) -> None:
    """Another tool's union column: the writer's empty totals batch holds one too."""
    kind = pa.sparse_union([pa.field("i", pa.int64()), pa.field("s", pa.string())])
    schema = make_schema([pa.field("u", kind)], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "x"})
    values = rows(0, 2)
    columns = [
        pa.DictionaryArray.from_arrays(pa.array(values["kind"], pa.int8()), pa.array(fs.KINDS))
        if f.name == "kind"
        else pa.array(values[f.name], f.type)
        for f in fs.CORE_FIELDS
    ]
    union = pa.UnionArray.from_sparse(
        pa.array([0, 1], pa.int8()), [pa.array([7, 0]), pa.array(["", "x"])], ["i", "s"]
    )
    path = tmp_path / "u.arrow"
    with pa.ipc.new_file(str(path), schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays([*columns, union], schema=schema))
    recover(path, tmp_path / "fixed.arrow")
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().column("u").to_pylist() == [7, "x"]


def _cut_file(data: bytes, tmp_path: Path) -> tuple[Path, RecoveryReport, str]:
    """``data`` written as a cut capture: its path, what recover saved of it (to
    ``fixed.arrow``) and the reader's refusal of it."""
    cut = tmp_path / "cut.partial"
    cut.write_bytes(data)
    report = recover(cut, tmp_path / "fixed.arrow")
    with pytest.raises(TruncatedFileError) as info:
        CaptureReader(cut)
    return cut, report, str(info.value)


@pytest.mark.parametrize("into", range(len(EOS_MARKER) + 1))
def test_a_cut_inside_the_end_of_stream_marker_is_named_so(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path, into: int
) -> None:
    """Not blamed on a batch 5 that never was: after the batch carrying the totals the
    writer puts only the marker, so even its first 0xFF bytes are the marker's, and a
    file that ends right after that batch lost nothing either. Every batch, totals
    included, is saved; the reader says the same."""
    _, data, table = small
    _, ends = batch_ends(data)
    assert data[ends[-1] : ends[-1] + len(EOS_MARKER)] == EOS_MARKER
    cut, report, refusal = _cut_file(data[: ends[-1] + into], tmp_path)
    reason = {0: REASON_CUT_BEFORE_EOS, len(EOS_MARKER): REASON_NO_FOOTER}.get(
        into, REASON_CUT_IN_EOS
    )
    assert report.reason == reason
    assert report.damage_offset == ends[-1] and not report.skipped
    assert report.totals_present and not report.totals_recomputed
    assert (report.batches_saved, report.rows_saved) == (3, table.num_rows)
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().equals(table)
    assert refusal == (
        f"{cut} is truncated ({reason}; no batch is cut short): run `ebcap recover {cut} -o FIXED`"
    )


@pytest.mark.parametrize("into", [1, 2, 3, 4, 5, 8, 100])
def test_a_cut_inside_a_batch_of_events_is_still_a_cut_batch(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path, into: int
) -> None:
    """The same leading 0xFF bytes after a batch that does not carry the totals begin
    the next batch: that batch is cut, and its rows are lost."""
    _, data, table = small
    _, ends = batch_ends(data)
    assert data[ends[1] : ends[1] + 4] == b"\xff" * 4  # batch 3, two rows, begins so
    _, report, refusal = _cut_file(data[: ends[1] + into], tmp_path)
    assert report.reason.startswith("batch 3 (counting from 1) is cut short or corrupt (")
    assert report.damage_offset == ends[1] and not report.totals_present
    assert (report.batches_saved, report.rows_saved) == (2, 4)
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().equals(table.slice(0, 4))
    assert "(no Arrow footer; the capture did not finish)" in refusal


def test_a_file_ending_between_batches_of_events_lost_the_rest(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path
) -> None:
    """Ending right after a batch that does not carry the totals is not the clean end
    that ending after the totals batch is: what came after is gone."""
    _, data, table = small
    _, ends = batch_ends(data)
    _, report, refusal = _cut_file(data[: ends[1]], tmp_path)
    assert report.reason == REASON_CUT_AT_BOUNDARY and not report.totals_present
    assert (report.batches_saved, report.rows_saved) == (2, 4)
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table().equals(table.slice(0, 4))
    assert "(no Arrow footer; the capture did not finish)" in refusal


@pytest.mark.parametrize(
    "tail", [b"\x00", b"\xff\x00", b"\xff\xff\xff\xfe", b"\xff" * 5, b"\xff\xff\xff\xff\x00\x01"]
)
def test_other_bytes_after_the_totals_batch_are_damage(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path, tail: bytes
) -> None:
    """Only a prefix of the marker is the marker: anything else after the last batch is
    damage, as before; the batches before it are saved all the same."""
    _, data, table = small
    _, ends = batch_ends(data)
    _, report, refusal = _cut_file(data[: ends[-1]] + tail, tmp_path)
    assert report.reason.startswith("batch 5 (counting from 1) is cut short or corrupt (")
    assert report.totals_present and report.rows_saved == table.num_rows
    assert "(no Arrow footer; the capture did not finish)" in refusal


def test_recovering_a_recovered_file_keeps_its_marker(
    small: tuple[Path, bytes, pa.Table], tmp_path: Path
) -> None:
    """The first recovery's gaps are still in the rows: the second marker nests the first."""
    _, data, _ = small
    _, ends = batch_ends(data)
    first = tmp_path / "first.partial"
    first.write_bytes(data[: ends[1] + 10])
    recover(first, tmp_path / "once.arrow")
    with CaptureReader(tmp_path / "once.arrow") as reader:
        earlier = reader.metadata[fs.META_RECOVERED]
    again = tmp_path / "again.partial"
    again.write_bytes((tmp_path / "once.arrow").read_bytes()[:-12])  # footer cut off
    recover(again, tmp_path / "twice.arrow")
    with CaptureReader(tmp_path / "twice.arrow") as reader:
        marker = reader.metadata[fs.META_RECOVERED]
    assert marker[fs.RECOVERED_FROM] == "again.partial"
    assert marker[fs.RECOVERED_EARLIER] == earlier
    assert earlier[fs.RECOVERED_FROM] == "first.partial"


@pytest.mark.parametrize("into", range(len(EOS_MARKER)))
def test_part_of_the_marker_after_a_batch_of_events_is_a_cut_batch(into: int) -> None:
    """0xFFFFFFFF and then zeros also begin a message whose header length is a multiple
    of 256: after a batch that does not carry the totals, even 5-7 bytes of the marker
    may be the start of a batch cut short, so nothing is called whole there."""
    rest = EOS_MARKER[:into]
    assert whole_stream_end(rest, after_totals=False) is None
    after_totals = REASON_CUT_IN_EOS if into else REASON_CUT_BEFORE_EOS
    assert whole_stream_end(rest, after_totals=True) == after_totals
    assert whole_stream_end(EOS_MARKER, after_totals=False) == REASON_NO_FOOTER
