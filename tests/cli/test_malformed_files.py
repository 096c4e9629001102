"""Arrow files that look like ebcap captures but break its rules: every reading command
refuses them with one line and exit 2 (no internal error), or reads them correctly.

They are written with plain pyarrow, as another tool would write them (so
without checksums): core columns marked nullable and holding nulls, core
columns out of order, a column name twice.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from ebcap.cli import run
from ebcap.format import CaptureReader
from ebcap.format import schema as fs

META = {
    fs.MAGIC_KEY: fs.MAGIC_VALUE,
    fs.VERSION_KEY: "1",
    fs.META_TRANSPORT: "perf",
    fs.META_SOURCE: "other-tool",
    fs.META_REALTIME_OFFSET: "0",
}
KINDS = pa.array(list(fs.KINDS), pa.string())

COMMANDS = {
    "info": ["info", "{f}"],
    "info --json": ["info", "--json", "{f}"],
    "replay": ["replay", "{f}"],
    "sorted": ["replay", "--sorted", "{f}"],
    "reorder": ["reorder", "{f}"],
    "sql": ["sql", "{f}", "SELECT sum(cpu) FROM events"],
    "export": ["export", "{f}", "-o", "{out}/x.csv"],
    "recover": ["recover", "{f}", "-o", "{out}/fixed.arrow"],
}


def columns(first_seq: int, cpu: list[int | None]) -> dict[str, pa.Array]:
    n = len(cpu)
    return {
        "seq": pa.array(range(first_seq, first_seq + n), pa.uint64()),
        "cpu": pa.array(cpu, pa.uint16()),
        "ts_ns": pa.array([1000 + first_seq + i for i in range(n)], pa.uint64()),
        "kind": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), KINDS),
        "lost": pa.array([0] * n, pa.uint64()),
        "round": pa.array([0] * n, pa.uint32()),
        "data": pa.array([b"abcd"] * n, pa.binary()),
    }


def write(path: Path, batches: list[dict[str, pa.Array]], order: list[str] | None = None) -> Path:
    """``batches`` with every field nullable (pyarrow's default), columns in ``order``
    (a name may repeat)."""
    names = order or list(fs.CORE_COLUMNS)
    schema = pa.schema([pa.field(n, batches[0][n].type) for n in names], metadata=META)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(pa.RecordBatch.from_arrays([batch[n] for n in names], schema=schema))
    return path


def outcomes(path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, tuple]:
    results = {}
    for name, argv in COMMANDS.items():
        capsys.readouterr()
        code = run([a.format(f=path, out=out) for a in argv])
        captured = capsys.readouterr()
        results[name] = (code, captured.out, captured.err)
    return results


def assert_refused(result: tuple, mentions: str) -> None:
    code, _, err = result  # replay may have printed the rows of the batches before
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("ebcap: error: ") and mentions in err, err
    assert "internal error" not in err


def test_nulls_in_a_core_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "nulls.arrow", [columns(0, [0, 1]), columns(2, [1, None, 0])])
    out = tmp_path / "out"
    out.mkdir()
    results = outcomes(path, out, capsys)
    for name, result in results.items():
        if name != "recover":
            assert_refused(result, "batch 2 of 2 is damaged (the core column 'cpu' holds nulls)")
    code, stdout, err = results["recover"]
    assert code == 0, err
    assert "batch 2 of 2 is corrupt (the core column 'cpu' holds nulls)" in stdout
    with CaptureReader(out / "fixed.arrow") as reader:
        assert reader.to_table()["seq"].to_pylist() == [0, 1]
        assert reader.schema.field("cpu").nullable is False  # as ebcap writes it


def test_core_columns_out_of_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    order = ["seq", "ts_ns", "cpu", "kind", "lost", "round", "data"]
    path = write(tmp_path / "order.arrow", [columns(0, [0, 1])], order)
    out = tmp_path / "out"
    out.mkdir()
    for result in outcomes(path, out, capsys).values():
        assert_refused(result, "the core columns are not first in order (found seq, ts_ns, cpu")
    assert list(out.iterdir()) == []


def test_a_column_name_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "twice.arrow", [columns(0, [0, 1])], [*fs.CORE_COLUMNS, "cpu"])
    out = tmp_path / "out"
    out.mkdir()
    for result in outcomes(path, out, capsys).values():
        assert_refused(result, "the column name 'cpu' appears more than once")
    assert list(out.iterdir()) == []


def test_nullable_core_columns_without_nulls_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the flag differs from what ebcap writes: every command reads the rows."""
    path = write(tmp_path / "nullable.arrow", [columns(0, [0, 1]), columns(2, [1, 1, 0])])
    out = tmp_path / "out"
    out.mkdir()
    for name, (code, _, err) in outcomes(path, out, capsys).items():
        assert code == 0, (name, err)
    with CaptureReader(out / "fixed.arrow") as reader:
        assert reader.to_table()["cpu"].to_pylist() == [0, 1, 1, 1, 0]


@pytest.mark.parametrize(
    ("key", "value", "shape"),
    [
        (fs.META_RECOVERED, "[1]", "a JSON object"),
        (fs.META_RECOVERED, '"x"', "a JSON object"),
        (fs.META_COMMAND, "5", "a list of strings"),
        (fs.META_COMMAND, '["ebcap", 5]', "a list of strings"),
        (fs.META_REALTIME_OFFSET, str(10**30), "a count of nanoseconds within 64 bits"),
        (fs.META_REALTIME_OFFSET, str(-(10**20)), "a count of nanoseconds within 64 bits"),
    ],
)
def test_badly_shaped_metadata_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, shape: str
) -> None:
    """Keys the commands use as a list, an object or a 64-bit offset (info prints the
    command and the recovery, replay --wall and export add the offset)."""
    batch = columns(0, [0, 1])
    schema = pa.schema([pa.field(n, batch[n].type) for n in fs.CORE_COLUMNS])
    schema = schema.with_metadata({**META, key: value})
    path = tmp_path / "meta.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(list(batch.values()), schema=schema))
    out = tmp_path / "out"
    out.mkdir()
    results = outcomes(path, out, capsys)
    capsys.readouterr()
    results["replay --wall"] = (run(["replay", "--wall", str(path)]), *capsys.readouterr())
    for result in results.values():
        assert_refused(result, f"{path}: metadata {key} is not {shape} (")
    assert list(out.iterdir()) == []
