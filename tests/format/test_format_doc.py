"""docs/FORMAT.md against the code: every key the code defines or writes, every core and
source column (with its type), and the layout description are documented.

The keys come from format/schema.py and from files written along the
recorder's own code paths that need no kernel: the metadata of a recording
(``capture_metadata``) and the totals it closes a file with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from ebcap.bpf.tracefs import parse_format
from ebcap.capture.assemble import RowAssembler
from ebcap.capture.bench import BenchSource
from ebcap.capture.layout import parse_layout
from ebcap.capture.metadata import capture_metadata
from ebcap.capture.packet_source import XdpSource
from ebcap.capture.recorder import RecordOptions, _totals
from ebcap.capture.sources import PinnedSource, Source, SyscallsSource
from ebcap.capture.tracepoint_source import TracepointSource
from ebcap.format import CaptureReader, CaptureWriter, make_schema
from ebcap.format import schema as fs
from ebcap.format.counts import CpuCounts

DOC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
FIXTURES = Path(__file__).resolve().parents[1] / "sources" / "fixtures"
TEXT = DOC.read_text(encoding="utf-8")
CONSTANT_PREFIXES = ("META_", "TOTAL_", "RECOVERED_", "SKIPPED_")


def documented(name: str) -> bool:
    return f"`{name}`" in TEXT


def schema_constants() -> dict[str, str]:
    keys = {name: getattr(fs, name) for name in dir(fs) if name.startswith(CONSTANT_PREFIXES)}
    keys.update(MAGIC_KEY=fs.MAGIC_KEY, VERSION_KEY=fs.VERSION_KEY)
    keys.update(TOTALS_KEY=fs.TOTALS_KEY, CHECKSUMS_KEY=fs.CHECKSUMS_KEY)
    return {name: value for name, value in keys.items() if isinstance(value, str)}


@pytest.mark.parametrize(("constant", "key"), sorted(schema_constants().items()))
def test_every_key_in_schema_py_is_documented(constant: str, key: str) -> None:
    assert documented(key), f"{constant} = {key!r} is not in docs/FORMAT.md"


def test_every_core_column_is_documented_with_its_type() -> None:
    for field in fs.CORE_FIELDS:
        row = table_row(field.name)
        assert row is not None, f"core column {field.name!r} is not in a table of FORMAT.md"
        assert str(field.type).split("<")[0] in row, (field.name, field.type, row)


def recording(tmp_path: Path, source: Source) -> Path:
    """A file written as ``ebcap record`` writes it: its metadata, its totals."""
    opts = RecordOptions(output=tmp_path / "run.arrow", command=["ebcap", "record"])
    recorder = SimpleNamespace(source=source, transport="perf", cpus=[0, 1])
    schema = make_schema(source.arrow_fields(), capture_metadata(recorder, opts))
    writer = CaptureWriter(opts.output, schema)
    rows = RowAssembler(source, writer.schema, CpuCounts())
    writer.close(_totals(rows, SimpleNamespace(total={0: 0, 1: 0}), 1.0))
    return opts.output


@pytest.mark.parametrize(
    "source",
    [
        SyscallsSource(),
        BenchSource(64),
        XdpSource("lo"),
        PinnedSource("/sys/fs/bpf/x", parse_layout("ts:u64,cpu:u32,seq:u32,name:char[8],pad:4x")),
    ],
    ids=["syscalls", "bench", "xdp", "pinned"],
)
def test_every_key_a_recording_writes_is_documented(tmp_path: Path, source: Source) -> None:
    with CaptureReader(recording(tmp_path, source)) as reader:
        metadata = reader.metadata
        totals = reader.totals or {}
        schema = reader.schema
    for key in (fs.META_SOURCE_LAYOUT, fs.META_COMMAND, fs.META_CPUS):  # "compact JSON"
        raw = schema.metadata[key.encode()].decode()
        assert raw == json.dumps(json.loads(raw), separators=(",", ":")), (key, raw)
    assert {fs.META_SOURCE_LAYOUT, fs.META_COMMAND, fs.META_CPUS} <= set(metadata)
    missing = [key for key in [*metadata, *totals] if not documented(key)]
    assert missing == [], f"written but not in docs/FORMAT.md: {missing}"
    layout = metadata[fs.META_SOURCE_LAYOUT]
    described = [*layout, *(key for field in layout["fields"] for key in field)]
    assert [key for key in described if not documented(key)] == []
    for field in layout["fields"]:
        assert re.fullmatch(r"[ui](8|16|32|64)|f(32|64)|(char|bytes)\[\d+\]", field["type"])
    for field in list(schema)[len(fs.CORE_FIELDS) :]:
        if source.spec.startswith("pin:"):
            continue  # named by the user: see test_the_pinned_layout_type_mapping
        row = table_row(field.name)
        assert row is not None, f"column {field.name!r} of {source.spec} is not documented"
        assert f"`{field.type}`" in row, (field.name, field.type, row)


def test_the_pinned_layout_type_mapping() -> None:
    """--layout fields become columns of the types the doc's paragraph lists."""
    spec = "ts:u64,cpu:u32,seq:u32,a:i16,b:f32,c:f64,d:char[8],e:bytes[4],f:u8,pad:2x"
    fields = {f.name: f.type for f in parse_layout(spec).arrow_fields()}
    assert fields == {
        "ev_seq": pa.uint32(),
        "a": pa.int16(),
        "b": pa.float32(),
        "c": pa.float64(),
        "d": pa.string(),
        "e": pa.binary(),
        "f": pa.uint8(),
    }
    paragraph = TEXT[TEXT.index("**`--pin PATH --layout SPEC`**") :]
    for words in ("`ev_`", "`f32` as `float`", "`f64` as `double`", "`char[N]` as `string`",
                  "`bytes[N]` as `binary`", "`i8`..`i64` as\n`int8`..`int64`"):  # fmt: skip
        assert words in paragraph[:1200], words


def test_tracepoint_columns_have_the_documented_types() -> None:
    documented_types = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                        "uint64", "string", "binary", "fixed_size_list", "bool"}  # fmt: skip
    table = TEXT[TEXT.index("**`tracepoint:CAT:NAME`**") : TEXT.index("**`xdp:IFACE`")]
    undocumented = {k for k in documented_types if f"`{k}" not in table and "int" not in k}
    assert not undocumented, f"the tracepoint type table lacks {undocumented}"
    seen: set[str] = set()
    for path in sorted(FIXTURES.glob("*.format")):  # real format files of this kernel
        raw = path.stem.startswith("raw_syscalls")
        category = "raw_syscalls" if raw else path.stem.split("_", 1)[0]
        fmt = parse_format(path.read_text(), category)
        source = TracepointSource(fmt.category, fmt.name, fmt=fmt)
        for field in source.arrow_fields():
            kind = str(field.type).split("<")[0]
            seen.add(kind)
            assert kind in documented_types, (path.name, field.name, field.type)
            assert field.name not in fs.CORE_COLUMNS
    assert {"string", "int32", "uint64"} <= seen


def table_row(name: str) -> str | None:
    """The first table row of FORMAT.md naming column ``name`` (or a range ``x0``..``x5``)."""
    for line in TEXT.splitlines():
        if not line.startswith("|"):
            continue
        first = line.split("|")[1]
        if f"`{name}`" in first:
            return line
        ranged = re.search(r"`(\w+?)(\d+)`\.\.`\1(\d+)`", first)
        if ranged and re.fullmatch(rf"{ranged[1]}(\d+)", name):
            number = int(name[len(ranged[1]) :])
            if int(ranged[2]) <= number <= int(ranged[3]):
                return line
    return None
