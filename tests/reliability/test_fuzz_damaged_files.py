"""Damaged real captures against every reading command: truncation, bit flips, hypothesis.

The captures come from `ebcap record` (conftest). Every run goes through
``ebcap.cli.run`` in this process; :mod:`reliability.damage` says what counts
as a correct reaction. Over 10,000 cases in all: each test asserts how many
it ran.
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

FAST_READERS = ("info", "recover")
"""Run at every truncation offset; the others at every STRIDE-th one and around each message."""
STRIDE = 131

FLIPS = {
    "info": 120,
    "replay": 90,
    "sorted": 60,
    "reorder": 60,
    "export": 60,
    "recover": 90,
    "sql": 20,
}
"""Random single-bit flips per command and capture."""


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


def test_truncated_at_every_offset(
    captures: dict[str, Path], capsys: pytest.CaptureFixture[str], shm_dir: Path
) -> None:
    with DamageRunner(capsys, shm_dir, captures["getppid"]) as runner:
        data = runner.original
        boundaries = {
            s + d for s in message_starts(data) for d in (-1, 0, 1) if 0 <= s + d < len(data)
        }
        sampled = sorted(set(range(0, len(data), STRIDE)) | boundaries)
        cases = [
            (name, functools.partial(data.__getitem__, slice(cut)), f"the first {cut} bytes")
            for cut in range(len(data))
            for name in COMMANDS
            if name in FAST_READERS or cut in sampled
        ]
        judge_all(runner, cases)
    runner.verdicts.check()
    slow = len(COMMANDS) - len(FAST_READERS)
    assert runner.verdicts.cases == len(FAST_READERS) * len(data) + slow * len(sampled)
    assert runner.verdicts.same == 0, "a cut file passed for the whole one"
    assert runner.verdicts.partly_recovered > len(data) // 3, "cuts after a batch save it"


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
        for name, count in FLIPS.items():
            for bit in (rng.randrange(8 * len(data)) for _ in range(count)):
                what = f"bit {bit} flipped (byte {bit // 8})"
                cases.append((name, functools.partial(flipped, data, bit), what))
        judge_all(runner, cases)
    runner.verdicts.check()
    assert runner.verdicts.cases == sum(FLIPS.values())
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


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    capture=st.sampled_from(HYPOTHESIS_CAPTURES),
    command=st.sampled_from(sorted(set(COMMANDS) - {"sql"})),
    data=st.data(),
)
def test_arbitrary_damage(
    runners: dict[str, DamageRunner], capture: str, command: str, data: st.DataObject
) -> None:
    runner = runners[capture]
    how, offset, blob, length = data.draw(damage(len(runner.original)))
    damaged = apply(runner.original, how, offset, blob, length)
    runner.judge(command, damaged, f"{how} at {offset} ({len(blob)} bytes, length {length})")
    runner.verdicts.check()
