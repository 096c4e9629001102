"""`ebcap replay` through the CLI entry point and as a real process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import zstandard
from synthetic import Synthetic, parse, write_capture

from ebcap.cli import run


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    spec = Synthetic(seed=51, ncpus=3, syscalls=True, lost_every=10, disorder_cpu=2)
    return path, write_capture(path, spec)


def test_text_to_stdout_in_both_orders(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    assert run(["replay", str(path)]) == 0
    out, err = capsys.readouterr()
    assert [int(parse(line)["seq"]) for line in out.splitlines()] == table.column("seq").to_pylist()
    # CPU 2 delivered its own events out of order: arrival order notices it too, at the end.
    assert err.startswith("ebcap: note: CPU 2's own stream is out of timestamp order")
    assert len(err.splitlines()) == 1 and "sort" not in err
    assert run(["replay", "--sorted", str(path)]) == 0
    out, err = capsys.readouterr()
    rows = {r["seq"]: r for r in table.to_pylist()}
    keys = [
        (rows[s]["ts_ns"], rows[s]["cpu"], s)
        for s in (int(parse(x)["seq"]) for x in out.splitlines())
    ]
    assert keys == sorted(keys) and len(keys) == table.num_rows
    # The note says so, on stderr only.
    assert err.startswith("ebcap: note: CPU 2's own stream is out of timestamp order")
    assert err.rstrip().endswith("the sort is still exact")
    assert "\x1b" not in out


@pytest.mark.parametrize(("name", "fmt"), [("o.jsonl.zst", "jsonl"), ("o.csv.zst", "csv")])
def test_compressed_output_named_by_extension(capture, tmp_path: Path, name: str, fmt: str) -> None:
    path, table = capture
    out = tmp_path / name
    assert run(["replay", str(path), "--sorted", "-o", str(out)]) == 0
    text = zstandard.ZstdDecompressor().stream_reader(out.read_bytes()).read().decode()
    lines = text.splitlines()
    if fmt == "jsonl":
        assert len(lines) == table.num_rows
        assert list(json.loads(lines[0])) == table.schema.names
    else:
        assert len(lines) == table.num_rows + 1
        assert lines[0].split(",")[0] == '"seq"'


def test_filters_and_limit_on_the_command_line(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    args = ["replay", str(path), "--cpu", "0,2", "--kind", "sample", "--limit", "7", "-f", "jsonl"]
    assert run(args) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = [r for r in table.to_pylist() if r["cpu"] in (0, 2) and r["kind"] == "sample"][:7]
    assert [g["seq"] for g in got] == [w["seq"] for w in want]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.arrow"], "no such file"),
        (["{capture}", "--kind", "nope"], "--kind must be one of"),
        (["{capture}", "--cpu", "x"], "bad CPU list"),
        (["{capture}", "--format", "xml"], "--format must be one of"),
        (["{capture}", "--speed", "-1"], "--speed must be a positive number"),
        (["{capture}", "-o", "{capture}"], "is the input"),
        (["{capture}", "-o", "{dir}/no/such/out.txt"], "does not exist"),
        (["{capture}", "-o", "{dir}/out.arrow"], "cannot tell the format"),
        (["{capture}", "-o", "{dir}/out.json"], "name the output .jsonl"),
        (["{capture}", "--limit", "ten"], "--limit"),
        (["{text}"], "not an Arrow IPC file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capture, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    path, _ = capture
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    filled = [a.format(capture=path, dir=tmp_path, text=text) for a in args]
    assert run(["replay", *filled]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err and err.startswith("ebcap: error:")


def test_existing_output_needs_force(capture, tmp_path: Path, capsys) -> None:
    path, table = capture
    out = tmp_path / "out.txt"
    out.write_text("precious")
    assert run(["replay", str(path), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "precious"
    assert run(["replay", str(path), "-o", str(out), "--force"]) == 0
    assert len(out.read_text().splitlines()) == table.num_rows


def test_piping_into_head_ends_quietly(capture) -> None:
    path, _ = capture
    big = path.with_name("big.arrow")
    write_capture(big, Synthetic(seed=52, events_per_cpu=30_000, syscalls=True))
    pipeline = f"{sys.executable} -m ebcap replay --sorted {big} | head -1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.stderr == ""
    assert result.returncode == 0
    assert parse(result.stdout.strip())["time"] == "0.000000000"


def test_command_modules_import_the_library_lazily() -> None:
    """`ebcap --help` must not pay for pyarrow, DuckDB or matplotlib through these commands."""
    code = (
        "import sys; import ebcap.cli.replay, ebcap.cli.reorder, ebcap.cli.sql, ebcap.cli.export; "
        "print(sorted(m for m in ('ebcap.replay', 'pyarrow', 'duckdb', 'matplotlib') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["replay", "reorder", "export", "sql"])
def test_truncated_capture_points_to_recover(
    capture, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path, _ = capture
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    extra = {"export": ["-o", str(tmp_path / "x.csv")], "sql": ["SELECT 1"]}.get(command, [])
    assert run([command, str(cut), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "truncated" in err and "ebcap recover" in err
    assert not (tmp_path / "x.csv").exists()


def test_a_cpu_the_capture_lacks_is_warned_about(
    capture, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = capture
    assert run(["replay", str(path), "--cpu", "1,7-9"]) == 0
    out, err = capsys.readouterr()
    assert {parse(line)["cpu"] for line in out.splitlines()} == {"001"}
    assert "ebcap: warning: the capture has no CPUs 7-9 (its CPUs: 0-2)" in err
    assert run(["replay", str(path), "--cpu", "99", "--sorted"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no CPU 99 (its CPUs: 0-2)" in err


def test_sorted_notes_what_the_first_pass_found_before_the_first_line(capture) -> None:
    """A CPU's own disorder is known before anything is printed: `| head -1` shows it."""
    path, _ = capture
    pipeline = f"{sys.executable} -m ebcap replay --sorted {path} 2>&1 | head -1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert result.stdout.startswith("ebcap: note: CPU 2's own stream is out of timestamp order")


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> bytes:
    """What `ebcap ARGS` prints when its stdout is a terminal (a pseudo-terminal here)."""
    import pty

    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ebcap", *args],
            stdout=follower,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        os.close(follower)
        follower = -1
        out = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        assert process.wait(timeout=60) == 0
        return bytes(out)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_colour_on_a_terminal_unless_no_color(capture) -> None:
    path, table = capture
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = run_on_a_terminal(["replay", "--sorted", str(path)], env)
    lines = coloured.decode().splitlines()
    assert len(lines) == table.num_rows
    assert all("\x1b[" in line for line in lines)
    assert any("\x1b[35m  [moved ahead of" in line for line in lines)  # markers coloured too
    plain = run_on_a_terminal(["replay", "--sorted", str(path)], {**env, "NO_COLOR": "1"})
    assert b"\x1b" not in plain
    strip = re.compile(r"\x1b\[[0-9;]*m")
    assert [strip.sub("", line) for line in lines] == plain.decode().splitlines()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_through_a_link_to_stdout_writes_to_stdout(
    capture, tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], force: list[str]
) -> None:
    """`-o /dev/stdout` when stdout is a regular file (here pytest's capture file): not
    "exists, use --force", and with --force no rename over the link. A link of our own to
    /proc/self/fd/1 stands in for /dev/stdout (never touched by a test)."""
    path, table = capture
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    assert os.path.isfile(link)  # stdout is a regular file
    assert run(["replay", str(path), "-f", "jsonl", "-o", str(link), *force]) == 0
    out, err = capfdbinary.readouterr()
    assert [json.loads(line)["seq"] for line in out.splitlines()] == table.column("seq").to_pylist()
    assert b"exists" not in err
    assert os.readlink(link) == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.arrow", "stdout"]


def test_the_format_option_takes_any_case(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    assert run(["replay", str(path), "-f", "JSONL"]) == 0
    out = capsys.readouterr().out
    assert [json.loads(line)["seq"] for line in out.splitlines()] == table.column("seq").to_pylist()


@pytest.mark.parametrize("command", ["replay", "sql", "export"])
def test_dash_is_stdout_even_with_a_file_named_dash(
    capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
    command: str,
) -> None:
    """``-o -`` is stdout; a file named ``-`` in the directory is neither an obstacle nor
    written (``./-`` names it)."""
    path, table = capture
    monkeypatch.chdir(tmp_path)
    Path("-").write_bytes(b"precious")
    argv = {
        "replay": ["replay", str(path), "-f", "jsonl"],
        "sql": ["sql", str(path), "SELECT seq FROM events", "-f", "jsonl"],
        "export": ["export", str(path), "-f", "jsonl"],
    }[command]
    assert run([*argv, "-o", "-"]) == 0
    out = capfdbinary.readouterr().out
    assert [json.loads(line)["seq"] for line in out.splitlines()] == table.column("seq").to_pylist()
    assert Path("-").read_bytes() == b"precious"
