"""Damaged real captures against every reading command: truncation, bit flips, hypothesis.

The captures come from `ebcap record` (conftest). Every run goes through
``ebcap.cli.run`` in this process; :mod:`reliability.damage` says what counts
as a correct reaction. Every command (info, replay, replay --sorted, reorder,
sql, export, recover) gets at least TRUNCATIONS cuts spread over the whole
file, FLIPS bit flips on each of the 5 captures and HYPOTHESIS_EXAMPLES
hypothesis cases: each test asserts how many cases it ran per command.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability.conftest import CAPTURES
from reliability.damage import COMMANDS, DamageRunner, judge_all

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(300)]

TRUNCATIONS = 1500
"""Cut offsets per command: every message boundary and BOUNDARY_REACH bytes either side,
then random offsets (the command's own) over the whole file."""
BOUNDARY_REACH = 4
SPREAD = 10
"""Each command's cuts must fall in every tenth of the file, at least MIN_PER_TENTH times."""
MIN_PER_TENTH = 50

FLIPS = 100
"""Random single-bit flips per command and capture."""
HYPOTHESIS_EXAMPLES = 100
"""Hypothesis cases per command."""


def message_starts(data: bytes) -> list[int]:
    """Offsets where the IPC messages of a complete file begin (and the footer)."""
    starts = []
    stream = pa.BufferReader(data)
    stream.seek(8)
    while True:
        starts.append(stream.tell())
        try:
            pa.ipc.read_message(stream)
        except (pa.ArrowException, OSError, EOFError):
            return starts


def cut_short(data: bytes, size: int) -> bytes:
    return data[:size]


def cut_offsets(name: str, size: int, boundaries: set[int]) -> list[int]:
    """Where to cut a file of ``size`` bytes for command ``name`` (see TRUNCATIONS)."""
    rest = sorted(set(range(size)) - boundaries)
    drawn = random.Random(f"cuts-{name}").sample(rest, TRUNCATIONS - len(boundaries))
    return sorted(boundaries | set(drawn))


def test_truncated_over_the_whole_file(
    captures: dict[str, Path], capsys: pytest.CaptureFixture[str], shm_dir: Path
) -> None:
    with DamageRunner(capsys, shm_dir, captures["getppid"]) as runner:
        data = runner.original
        boundaries = {
            s + d
            for s in message_starts(data)
            for d in range(-BOUNDARY_REACH, BOUNDARY_REACH + 1)
            if 0 <= s + d < len(data)
        }
        assert len(message_starts(data)) >= 6 and len(boundaries) < TRUNCATIONS // 2
        offsets = {name: cut_offsets(name, len(data), boundaries) for name in COMMANDS}
        cases = [
            (name, functools.partial(cut_short, data, cut), f"the first {cut} bytes")
            for name, cuts in offsets.items()
            for cut in cuts
        ]
        judge_all(runner, cases)
    runner.verdicts.check()
    assert runner.verdicts.per_command == {name: len(cuts) for name, cuts in offsets.items()}
    for name, cuts in offsets.items():
        assert len(cuts) == TRUNCATIONS and boundaries <= set(cuts), name
        tenths = [sum(1 for c in cuts if c * SPREAD // len(data) == t) for t in range(SPREAD)]
        assert min(tenths) >= MIN_PER_TENTH, f"{name}: cuts per tenth of the file {tenths}"
    assert runner.verdicts.same == 0, "a cut file passed for the whole one"
    recovers = len(offsets["recover"])
    assert runner.verdicts.partly_recovered > recovers // 2, "cuts after a batch save it"


def flipped(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_random_bit_flips(
    capture: str,
    captures: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    shm_dir: Path,
) -> None:
    with DamageRunner(capsys, shm_dir, captures[capture]) as runner:
        data = runner.original
        rng = random.Random(f"flips-{capture}")
        cases = []
        for name in COMMANDS:
            for bit in (rng.randrange(8 * len(data)) for _ in range(FLIPS)):
                what = f"bit {bit} flipped (byte {bit // 8})"
                cases.append((name, functools.partial(flipped, data, bit), what))
        judge_all(runner, cases)
    runner.verdicts.check()
    assert runner.verdicts.per_command == dict.fromkeys(COMMANDS, FLIPS)
    detected = runner.verdicts.refused + runner.verdicts.partly_recovered  # recover skips it
    assert detected > runner.verdicts.cases // 2, "most bytes are checked data"


@st.composite
def damage(draw: st.DrawFn, size: int) -> tuple[str, int, bytes, int]:
    """(how, offset, bytes, length) of one piece of damage to a file of ``size`` bytes."""
    how = draw(st.sampled_from(["overwrite", "zero", "insert", "delete", "copy", "tail"]))
    offset = draw(st.integers(0, size - 1))
    blob = draw(st.binary(min_size=1, max_size=64))
    length = draw(st.integers(1, 512))
    return how, offset, blob, length


def apply(data: bytes, how: str, offset: int, blob: bytes, length: int) -> bytes:
    if how == "overwrite":
        return data[:offset] + blob + data[offset + len(blob) :]
    if how == "zero":
        return data[:offset] + bytes(min(length, len(data) - offset)) + data[offset + length :]
    if how == "insert":
        return data[:offset] + blob + data[offset:]
    if how == "delete":
        return data[:offset] + data[offset + length :]
    if how == "copy":  # a run of the file's own bytes somewhere else: plausible-looking damage
        source = length % len(data)
        piece = data[source : source + len(blob) * 8]
        return data[:offset] + piece + data[offset + len(piece) :]
    return data[:offset] + blob  # "tail": cut short, then garbage


HYPOTHESIS_CAPTURES = ("perf", "lost")


@pytest.fixture
def runners(
    captures: dict[str, Path], capsys: pytest.CaptureFixture[str], shm_dir: Path
) -> Iterator[dict[str, DamageRunner]]:
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(DamageRunner(capsys, shm_dir / name, captures[name]))
            for name in HYPOTHESIS_CAPTURES
        }


@pytest.mark.parametrize("command", COMMANDS)
def test_arbitrary_damage(runners: dict[str, DamageRunner], command: str) -> None:
    @settings(
        max_examples=HYPOTHESIS_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(capture=st.sampled_from(HYPOTHESIS_CAPTURES), data=st.data())
    def damaged(capture: str, data: st.DataObject) -> None:
        runner = runners[capture]
        how, offset, blob, length = data.draw(damage(len(runner.original)))
        damaged = apply(runner.original, how, offset, blob, length)
        runner.judge(command, damaged, f"{how} at {offset} ({len(blob)} bytes, length {length})")
        runner.verdicts.check()

    damaged()
    ran = sum(r.verdicts.per_command.get(command, 0) for r in runners.values())
    assert ran == HYPOTHESIS_EXAMPLES
