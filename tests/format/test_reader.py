"""The reader: metadata decoding, and one clear BadFileError for every bad file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ebcap
from ebcap.errors import (
    BadFileError,
    ClosedError,
    NotAnArrowFileError,
    NotAnEbcapFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from ebcap.format import CaptureReader, CaptureWriter, make_schema
from ebcap.format import schema as fs

META = fs.encode_metadata(
    {
        fs.META_TRANSPORT: "perf",
        fs.META_SOURCE: "syscalls",
        fs.META_NCPUS: 2,
        fs.META_CPUS: [0, 1],
        fs.META_COMMAND: ["ebcap", "record", "-o", "x.arrow"],
        fs.META_REALTIME_OFFSET: -5,
        fs.META_FLUSH_INTERVAL: 0.25,
        fs.META_SOURCE_LAYOUT: {"fields": [["ts", "u64"]]},
        fs.META_HOSTNAME: "host",
    }
)
SCHEMA = make_schema([pa.field("pid", pa.uint32())], {**META, "other.key": "kept"})


def rows(start: int, n: int) -> dict[str, object]:
    seq = np.arange(start, start + n, dtype=np.uint64)
    return {
        "seq": seq,
        "cpu": seq % 2,
        "ts_ns": seq * 10,
        "kind": [fs.KIND_SAMPLE] * n,
        "lost": np.zeros(n, np.uint64),
        "round": np.zeros(n, np.uint32),
        "data": [b"payload-%d" % s for s in seq],
        "pid": seq + 1,
    }


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    out = tmp_path / "cap.arrow"
    with CaptureWriter(out, SCHEMA, flush_rows=8) as writer:
        writer.write(rows(0, 20))
    return out


def write_plain(path: Path, schema: pa.Schema, n: int = 2) -> Path:
    """An Arrow IPC file written by pyarrow alone, with whatever schema the test wants."""
    columns = rows(0, n)
    data = {f.name: columns.get(f.name, [0] * n) for f in schema}
    with pa.ipc.new_file(path, schema) as w:
        w.write_batch(pa.RecordBatch.from_pydict(data, schema=schema))
    return path


def test_metadata_is_decoded(capture: Path) -> None:
    with ebcap.open(capture) as reader:
        assert isinstance(reader, CaptureReader)
        meta = reader.metadata
        assert meta[fs.META_NCPUS] == 2
        assert meta[fs.META_CPUS] == [0, 1]
        assert meta[fs.META_COMMAND] == ["ebcap", "record", "-o", "x.arrow"]
        assert meta[fs.META_REALTIME_OFFSET] == -5
        assert meta[fs.META_FLUSH_INTERVAL] == 0.25
        assert meta[fs.META_SOURCE_LAYOUT] == {"fields": [["ts", "u64"]]}
        assert meta[fs.VERSION_KEY] == fs.FORMAT_VERSION
        assert "other.key" not in meta  # only ebcap.* keys
        assert reader.schema.metadata[b"other.key"] == b"kept"
        assert reader.source_columns == ["pid"]
        assert reader.num_batches == 4  # 8 + 8 + 4 rows, then the totals batch
        assert reader.num_rows == 20
        assert reader.file_size == capture.stat().st_size
        frame = reader.to_pandas()
        assert frame["data"].tolist() == [b"payload-%d" % i for i in range(20)]
        assert frame["pid"].tolist() == list(range(1, 21))


def test_exports() -> None:
    assert ebcap.__all__ == ["EbcapError", "__version__", "open"]
    import ebcap.format as ef

    assert set(ef.__all__) == {
        "FORMAT_VERSION",
        "CaptureReader",
        "CaptureSummary",
        "CaptureWriter",
        "RecoveryReport",
        "make_schema",
        "open_capture",
        "recover",
        "summarize",
    }
    assert all(hasattr(ef, name) for name in ef.__all__)


def test_close_releases_the_mapping(capture: Path) -> None:
    reader = CaptureReader(capture)
    reader.to_table()
    assert str(capture) in Path("/proc/self/maps").read_text()
    reader.close()
    reader.close()
    assert str(capture) not in Path("/proc/self/maps").read_text()
    with pytest.raises(ClosedError):
        list(reader.iter_batches())
    with pytest.raises(ClosedError):
        _ = reader.totals


def test_file_without_totals_reads_as_none(tmp_path: Path) -> None:
    path = write_plain(tmp_path / "plain.arrow", SCHEMA)
    with CaptureReader(path) as reader:
        assert reader.totals is None
        assert reader.num_rows == 2


def _bad_files(tmp: Path) -> dict[str, tuple[Path, type[BadFileError], str]]:
    """name -> (path, error class, text the one-line message must hold)."""
    (tmp / "empty").write_bytes(b"")
    (tmp / "dir").mkdir()
    (tmp / "text").write_text("seq,cpu\n1,2\n")
    (tmp / "short").write_bytes(b"AR")
    stream_path = tmp / "stream"
    with pa.ipc.new_stream(stream_path, SCHEMA) as w:
        w.write_batch(pa.RecordBatch.from_pydict(rows(0, 2), schema=SCHEMA))
    foreign = write_plain(tmp / "foreign", pa.schema([pa.field("x", pa.int64())]))
    future = write_plain(
        tmp / "future", SCHEMA.with_metadata({**META, fs.MAGIC_KEY: "ebcap", fs.VERSION_KEY: "2"})
    )
    garbled = write_plain(
        tmp / "garbled", SCHEMA.with_metadata({**META, fs.MAGIC_KEY: "ebcap", fs.VERSION_KEY: "x"})
    )
    no_transport = {k: v for k, v in SCHEMA.metadata.items() if k != fs.META_TRANSPORT.encode()}
    bare = write_plain(tmp / "bare", SCHEMA.with_metadata(no_transport))
    bad_meta = write_plain(
        tmp / "badmeta", SCHEMA.with_metadata({**SCHEMA.metadata, fs.META_NCPUS.encode(): b"two"})
    )
    wrong_type = pa.schema(
        [pa.field("seq", pa.int32()), *list(SCHEMA)[1:]], metadata=SCHEMA.metadata
    )
    retyped = write_plain(tmp / "retyped", wrong_type)
    good = tmp / "good.arrow"
    with CaptureWriter(good, SCHEMA) as writer:
        writer.write(rows(0, 5))
    data = good.read_bytes()
    (tmp / "cut").write_bytes(data[: len(data) // 2])
    footer = bytearray(data)
    footer[-20:-10] = b"\xff" * 10  # inside the footer flatbuffer, before its length
    (tmp / "footer").write_bytes(bytes(footer))
    return {
        "missing": (tmp / "nope.arrow", BadFileError, "no such file"),
        "empty": (tmp / "empty", BadFileError, "is empty"),
        "dir": (tmp / "dir", BadFileError, "is a directory"),
        "text": (tmp / "text", NotAnArrowFileError, "not an Arrow IPC file"),
        "short": (tmp / "short", TruncatedFileError, "is truncated"),
        "stream": (stream_path, NotAnArrowFileError, "Arrow IPC stream"),
        "foreign": (foreign, NotAnEbcapFileError, "not an ebcap capture"),
        "future": (future, UnsupportedVersionError, "format version 2"),
        "garbled": (garbled, UnsupportedVersionError, "unknown format version"),
        "bare": (bare, NotAnEbcapFileError, fs.META_TRANSPORT),
        "badmeta": (bad_meta, BadFileError, fs.META_NCPUS),
        "retyped": (retyped, BadFileError, "'seq' is int32"),
        "cut": (tmp / "cut", TruncatedFileError, "is truncated (no Arrow footer"),
        "footer": (tmp / "footer", TruncatedFileError, "damaged Arrow footer"),
    }


BAD_NAMES = [
    "missing",
    "empty",
    "dir",
    "text",
    "short",
    "stream",
    "foreign",
    "future",
    "garbled",
    "bare",
    "badmeta",
    "retyped",
    "cut",
    "footer",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_files_raise_one_clear_error(tmp_path: Path, name: str) -> None:
    path, error, text = _bad_files(tmp_path)[name]
    with pytest.raises(error) as info:
        CaptureReader(path)
    message = str(info.value)
    assert type(info.value) is error
    assert text in message and "\n" not in message
    assert str(path) in message


def test_truncated_message_is_the_documented_one(tmp_path: Path) -> None:
    path, _, _ = _bad_files(tmp_path)["cut"]
    with pytest.raises(TruncatedFileError) as info:
        CaptureReader(path)
    assert str(info.value) == (
        f"{path} is truncated (no Arrow footer; the capture did not finish): "
        f"run `ebcap recover {path} -o FIXED`"
    )


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.arrow"
    path.write_bytes(b"ARROW1")
    monkeypatch.setattr("os.access", lambda *_: False)
    with pytest.raises(BadFileError, match="permission denied"):
        CaptureReader(path)


def test_bad_totals_are_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "cap.arrow"
    with pa.ipc.new_file(path, SCHEMA) as w:
        batch = pa.RecordBatch.from_pydict(rows(0, 2), schema=SCHEMA)
        w.write_batch(batch, custom_metadata={fs.TOTALS_KEY: json.dumps({"events_per_cpu": 3})})
    with CaptureReader(path) as reader:
        assert reader.num_rows == 2
        with pytest.raises(BadFileError, match="bad totals"):
            _ = reader.totals


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 8))
def test_corrupted_bytes_never_escape_as_anything_but_bad_file(
    tmp_path_factory: pytest.TempPathFactory, seed: int, flips: int
) -> None:
    """Random byte damage: reading either works or raises BadFileError, nothing else."""
    tmp = tmp_path_factory.mktemp("corrupt")
    good = tmp / "good.arrow"
    with CaptureWriter(good, SCHEMA, flush_rows=6) as writer:
        writer.write(rows(0, 20))
    data = bytearray(good.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    bad = tmp / "bad.arrow"
    bad.write_bytes(bytes(data))
    try:
        with CaptureReader(bad) as reader:
            _ = reader.totals
            _ = reader.num_rows
            for batch in reader.iter_batches():
                batch.to_pylist()
    except BadFileError as exc:
        assert "\n" not in str(exc)
