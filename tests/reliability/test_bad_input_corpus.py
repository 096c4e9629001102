"""A corpus of inputs that are not (whole) ebcap files, against every reading command.

Each must be refused with one line and exit 2 (``recover`` may save what is
there), in process and, for a few, through the real entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability.harness import assert_one_line_error, files_in, run_cli

from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs


def capture_bytes(tmp_path: Path) -> bytes:
    schema = make_schema(
        [], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test", fs.META_REALTIME_OFFSET: "0"}
    )
    path = tmp_path / "source.arrow"
    with CaptureWriter(path, schema) as writer:
        writer.write(
            {
                "seq": np.arange(4, dtype=np.uint64),
                "cpu": np.zeros(4, np.uint16),
                "ts_ns": np.arange(4, dtype=np.uint64),
                "kind": np.zeros(4, np.int8),
                "lost": np.zeros(4, np.uint64),
                "round": np.zeros(4, np.uint32),
                "data": [b"data"] * 4,
            }
        )
    data = path.read_bytes()
    path.unlink()
    return data


def arrow_file(path: Path, schema: pa.Schema, stream: bool = False) -> None:
    batch = pa.RecordBatch.from_pylist([{"x": 1}], schema=schema)
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, schema) as writer:
            writer.write_batch(batch)


def ebcap_like(version: str) -> pa.Schema:
    meta = {
        fs.MAGIC_KEY: fs.MAGIC_VALUE,
        fs.VERSION_KEY: version,
        fs.META_TRANSPORT: "perf",
        fs.META_SOURCE: "x",
    }
    return pa.schema([pa.field("x", pa.int64())], metadata=meta)


def make(tmp_path: Path, name: str) -> Path:
    """The corpus entry ``name`` as a file in ``tmp_path``."""
    path = tmp_path / f"{name}.arrow"
    good = capture_bytes(tmp_path)
    builders: dict[str, Callable[[], None]] = {
        "empty": lambda: path.write_bytes(b""),
        "text": lambda: path.write_text("seq,cpu,ts_ns\n1,0,5\n"),
        "random bytes": lambda: path.write_bytes(np.random.default_rng(1).bytes(4096)),
        "magic only": lambda: path.write_bytes(b"ARROW1\0\0"),
        "magic at both ends": lambda: path.write_bytes(b"ARROW1\0\0" + bytes(64) + b"ARROW1"),
        "footer only": lambda: path.write_bytes(b"ARROW1\0\0" + good[-1024:]),
        "arrow stream": lambda: arrow_file(path, pa.schema([("x", pa.int64())]), stream=True),
        "plain arrow file": lambda: arrow_file(path, pa.schema([("x", pa.int64())])),
        "ebcap version 99": lambda: arrow_file(path, ebcap_like("99")),
        "ebcap version text": lambda: arrow_file(path, ebcap_like("one")),
        "ebcap without core columns": lambda: arrow_file(path, ebcap_like("1")),
        "parquet": lambda: pq.write_table(pa.table({"x": [1, 2]}), path),
        "json": lambda: path.write_text(json.dumps({"ebcap.format": "ebcap"})),
        "capture cut in half": lambda: path.write_bytes(good[: len(good) // 2]),
        "capture without its first byte": lambda: path.write_bytes(good[1:]),
        "capture in reverse": lambda: path.write_bytes(good[::-1]),
        "directory": lambda: path.mkdir(),
    }
    builders[name]()
    return path


CORPUS = sorted(
    [
        "empty", "text", "random bytes", "magic only", "magic at both ends", "footer only",
        "arrow stream", "plain arrow file", "ebcap version 99", "ebcap version text",
        "ebcap without core columns", "parquet", "json", "capture cut in half",
        "capture without its first byte", "capture in reverse", "directory",
    ]
)  # fmt: skip

COMMANDS = {
    "info": ["info", "{f}"],
    "replay": ["replay", "{f}"],
    "sorted": ["replay", "--sorted", "{f}"],
    "reorder": ["reorder", "{f}"],
    "sql": ["sql", "{f}", "SELECT count(*) FROM events"],
    "export": ["export", "{f}", "-o", "{out}/x.parquet"],
    "recover": ["recover", "{f}", "-o", "{out}/fixed.arrow"],
}


@pytest.mark.parametrize("entry", CORPUS)
def test_every_command_refuses(
    entry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(tmp_path, entry)
    out = tmp_path / "out"
    out.mkdir()
    for name, argv in COMMANDS.items():
        outcome = run_cli(capsys, [a.format(f=path, out=out) for a in argv])
        assert_one_line_error(outcome)
        assert files_in(out) == [], f"{name} left a file"


@pytest.mark.parametrize(
    ("entry", "command"),
    [("random bytes", "info"), ("capture cut in half", "replay"), ("ebcap version 99", "sql")],
)
def test_the_entry_point_refuses(entry: str, command: str, tmp_path: Path) -> None:
    path = make(tmp_path, entry)
    argv = [a.format(f=path, out=tmp_path) for a in COMMANDS[command]]
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ebcap: error: ")
