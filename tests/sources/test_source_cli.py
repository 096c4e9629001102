"""Source specs and `--list-sources` patterns on the command line: one line and exit 2
for what cannot work, patterns matched against whole specs."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability.harness import is_one_line_error, run_cli

from ebcap.bpf.programs.packet import SNAPLEN_MAX, SNAPLEN_MIN
from ebcap.capture.sources import spec_matches


@pytest.mark.parametrize(
    ("spec", "pattern", "hit"),
    [
        ("xdp:eth0", "xdp:*", True),
        ("tracepoint:xdp:xdp_exception", "xdp:*", False),
        ("tracepoint:xdp:xdp_exception", "tracepoint:xdp:*", True),
        ("tracepoint:sched:sched_switch", "sched:*", True),
        ("tracepoint:sched:sched_switch", "sched_sw*", True),
        ("tracepoint:sched:sched_switch", "tracepoint:sched_sw*", False),
        ("tc:eth0:egress", "tc:eth0:e*", True),
        ("tc:eth0:egress", "eth0", True),
        ("tc:eth0:egress", "tc:*:ingress", False),
        ("syscalls", "sys*", True),
        ("tracepoint:syscalls:sys_enter_openat", "*openat", True),
    ],
)
def test_patterns_match_whole_specs(spec: str, pattern: str, hit: bool) -> None:
    assert spec_matches(spec, pattern) is hit


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["-s", "tc:lo"], "tc:lo:ingress or tc:lo:egress"),
        (["-s", "tc:lo:sideways"], "tc:lo:ingress or tc:lo:egress"),
        (["-s", "tc:lo:ingress", "--snaplen", str(SNAPLEN_MIN - 1)], "snaplen"),
        (["-s", "tc:lo:egress", "--snaplen", str(SNAPLEN_MAX + 1)], "snaplen"),
        (["-s", "xdp:lo", "--snaplen", str(SNAPLEN_MIN - 1)], "snaplen"),
        (["-s", "xdp:lo", "--snaplen", str(SNAPLEN_MAX + 1)], "snaplen"),
        (["-s", "tc:lo:ingress", "--replace-xdp"], "--replace-xdp"),
    ],
)
def test_bad_packet_specs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], mentions: str
) -> None:
    outcome = run_cli(capsys, ["record", "-o", str(tmp_path / "x.arrow"), *argv])
    assert is_one_line_error(outcome), outcome.describe()
    assert mentions in outcome.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.privileged
def test_list_sources_patterns(capsys: pytest.CaptureFixture[str]) -> None:
    listed = run_cli(capsys, ["record", "--list-sources", "xdp:*"])
    assert listed.code == 0 and "xdp:lo" in listed.out.split()
    assert all(line.startswith("xdp:") for line in listed.out.splitlines())
    sched = run_cli(capsys, ["record", "--list-sources", "sched:*"]).out.split()
    assert "tracepoint:sched:sched_switch" in sched
    assert all(spec.startswith("tracepoint:sched:") for spec in sched)
    nothing = run_cli(capsys, ["record", "--list-sources", "nosuchthing"])
    assert is_one_line_error(nothing), nothing.describe()
    assert "no source matches 'nosuchthing'" in nothing.err and nothing.out == ""


@pytest.mark.privileged
def test_unknown_tracepoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["record", "-o", str(tmp_path / "x.arrow"), "-s", "tracepoint:sched:nosuch"]
    outcome = run_cli(capsys, argv)
    assert is_one_line_error(outcome), outcome.describe()
    assert "no tracepoint sched:nosuch" in outcome.err
    assert list(tmp_path.iterdir()) == []
