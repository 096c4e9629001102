"""`ebcap reorder` on the command line: text, --json and --plot."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Synthetic, write_capture

from ebcap.cli import run


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    return path, write_capture(path, Synthetic(seed=71, ncpus=2, lost_every=11))


def late_by_loop(table: pa.Table) -> list[int]:
    out, high = [], None
    for row in table.to_pylist():
        if row["kind"] != "sample":
            continue
        if high is not None and row["ts_ns"] < high:
            out.append(high - row["ts_ns"])
        high = row["ts_ns"] if high is None else max(high, row["ts_ns"])
    return out


def test_json_report(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    assert run(["reorder", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    late = late_by_loop(table)
    samples = sum(1 for k in table.column("kind").to_pylist() if k == "sample")
    assert data["file"] == str(path)
    assert (data["samples"], data["late"]) == (samples, len(late))
    assert data["late_percent"] == round(100 * len(late) / samples, 4)
    assert data["window"]["ns"] == max(late)
    assert data["lateness_us"]["max"] == max(late) / 1e3
    assert sum(p["count"] for p in data["cpu_pairs"]) == len(late)
    assert sum(v["late"] for v in data["per_cpu"].values()) == len(late)


def test_text_report_and_plot(capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    png = tmp_path / "r.png"
    assert run(["reorder", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    late = late_by_loop(table)
    assert f"sort window needed  {max(late):,} ns" in out
    assert f"late                {len(late):,} (" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert run(["reorder", str(path), "--plot", str(png)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.arrow"
    bad.write_bytes(b"ARROW1\0\0garbage")
    assert run(["reorder", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ebcap: error:")


def late_rounds_by_loop(table: pa.Table) -> list[dict[str, int]]:
    """Every drain round with a late sample: its samples, late ones, and the worst lateness."""
    rounds: dict[int, dict[str, int]] = {}
    high = None
    for row in table.to_pylist():
        if row["kind"] != "sample":
            continue
        entry = rounds.setdefault(
            row["round"], {"round": row["round"], "samples": 0, "late": 0, "max_lateness_ns": 0}
        )
        entry["samples"] += 1
        if high is not None and row["ts_ns"] < high:
            entry["late"] += 1
            entry["max_lateness_ns"] = max(entry["max_lateness_ns"], high - row["ts_ns"])
        high = row["ts_ns"] if high is None else max(high, row["ts_ns"])
    return [entry for _, entry in sorted(rounds.items()) if entry["late"]]


def test_rounds_with_late_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json lists every round with a late event; the text shows the worst ten."""
    path = tmp_path / "long.arrow"
    table = write_capture(path, Synthetic(seed=72, ncpus=3, events_per_cpu=1500, lost_every=13))
    want = late_rounds_by_loop(table)
    assert len(want) > 30
    assert run(["reorder", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rounds"]["late"] == want
    worst = sorted(want, key=lambda r: (-r["late"], r["round"]))[:10]
    assert data["rounds"]["most_late"] == worst
    assert data["rounds"]["with_late"] == len(want)
    assert data["percentiles"] == {"lateness": "exact", "displacement": "exact"}
    assert run(["reorder", str(path)]) == 0
    out = capsys.readouterr().out
    assert "percentiles         exact (nearest rank)" in out
    table_lines = out[out.index("round (most late)") :].splitlines()[1:11]
    assert [line.split()[:3] for line in table_lines] == [
        [str(r["round"]), f"{r['samples']:,}", f"{r['late']:,}"] for r in worst
    ]


@pytest.mark.parametrize(
    ("name", "magic"), [("r.jpg", b"\xff\xd8\xff"), ("r.svg", b"<?xml"), ("r.pdf", b"%PDF")]
)
def test_plot_format_follows_the_name(capture, tmp_path: Path, name: str, magic: bytes) -> None:
    path, _ = capture
    assert run(["reorder", str(path), "--plot", str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_unknown_plot_format_is_refused(
    capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = capture
    assert run(["reorder", str(path), "--plot", str(tmp_path / "r.bmp")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "picture format" in err and ".png" in err
    assert not (tmp_path / "r.bmp").exists()


def test_without_matplotlib_plot_is_refused_before_the_analysis(
    capture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from ebcap.replay import reorder

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a)
    )

    def analysed(*_: object, **__: object) -> None:
        raise AssertionError("the capture was analysed before the refusal")

    monkeypatch.setattr(reorder, "analyze", analysed)
    path, _ = capture
    assert run(["reorder", str(path), "--plot", str(tmp_path / "r.png")]) == 1
    assert capsys.readouterr().err == (
        "ebcap: error: --plot needs matplotlib, which is not installed: "
        "pip install 'ebcap[analysis]'\n"
    )
    assert not (tmp_path / "r.png").exists()
