"""Late events per drain round, for ``ebcap reorder``: the worst rounds, and all, in bounded memory.

A drain round's rows are read together and arrive together, so a round is
a contiguous stretch of the file; its entry is complete when the next one
starts. The :data:`TOP_ROUNDS` rounds with the most late events are kept in
memory; every round with a late event is appended to an anonymous
temporary file, a fixed-size record each, and read back a block at a time
when listed (``ebcap reorder --json``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Final

import numpy as np

TOP_ROUNDS: Final = 10
"""Rounds with the most late events kept for the text report."""
BUFFER_ROUNDS: Final = 4096
"""Round records held before they go to the temporary file (and read back at a time)."""
ROUND_RECORD: Final = np.dtype(
    [("round", "<u8"), ("samples", "<u8"), ("late", "<u8"), ("max_lateness_ns", "<u8")]
)
"""One round with late events, as stored and listed."""


class RoundLog:
    """Per-round sample and late counts of a capture walked in arrival order."""

    def __init__(self, top: int = TOP_ROUNDS) -> None:
        self.top_size = top
        self.rounds = 0
        """Rounds seen (contiguous stretches of one round number)."""
        self.with_late = 0
        self.max_late = 0
        self._top = np.zeros(0, dtype=ROUND_RECORD)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._file: IO[bytes] | None = None
        self._open: np.ndarray | None = None
        """The round still being read (it may go on in the next slice)."""

    def add(self, rounds: np.ndarray, late: np.ndarray, lateness: np.ndarray) -> None:
        """The samples of one slice, in arrival order: round, late or not, lateness (ns)."""
        if not len(rounds):
            return
        starts = np.concatenate(([0], np.flatnonzero(np.diff(rounds) != 0) + 1))
        entries = np.zeros(len(starts), dtype=ROUND_RECORD)
        entries["round"] = rounds[starts]
        entries["samples"] = np.diff(np.append(starts, len(rounds)))
        entries["late"] = np.add.reduceat(late.astype(np.uint64), starts)
        entries["max_lateness_ns"] = np.maximum.reduceat(
            np.where(late, lateness, 0).astype(np.uint64), starts
        )
        if self._open is not None:
            if self._open["round"] == entries[0]["round"]:
                entries[0]["samples"] += self._open["samples"]
                entries[0]["late"] += self._open["late"]
                entries[0]["max_lateness_ns"] = max(
                    entries[0]["max_lateness_ns"], self._open["max_lateness_ns"]
                )
            else:
                self._close_rounds(self._open[None])
        self._close_rounds(entries[:-1])
        self._open = entries[-1].copy()

    def finish(self) -> None:
        """The last round is complete."""
        if self._open is not None:
            self._close_rounds(self._open[None])
            self._open = None

    def _close_rounds(self, entries: np.ndarray) -> None:
        self.rounds += len(entries)
        late = entries[entries["late"] > 0]
        if not len(late):
            return
        self.with_late += len(late)
        self.max_late = max(self.max_late, int(late["late"].max()))
        both = np.concatenate((self._top, late))
        order = np.lexsort((both["round"], -both["late"].astype(np.int64)))
        self._top = both[order[: self.top_size]]
        self._buffer.append(late)
        self._buffered += len(late)
        if self._buffered >= BUFFER_ROUNDS:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            # held across calls, closed by close(): no with-block can span that
            self._file = tempfile.TemporaryFile(prefix="ebcap-rounds-")  # noqa: SIM115
        self._file.seek(0, 2)
        for part in self._buffer:
            self._file.write(part.tobytes())
        self._buffer, self._buffered = [], 0

    def top(self) -> list[dict[str, int]]:
        """The rounds with the most late events, most first (ties: earlier round first)."""
        return [_as_dict(entry) for entry in self._top]

    def __iter__(self) -> Iterator[dict[str, int]]:
        """Every round with a late event, in file order."""
        if self._file is not None:
            self._file.seek(0)
            while chunk := self._file.read(BUFFER_ROUNDS * ROUND_RECORD.itemsize):
                for entry in np.frombuffer(chunk, dtype=ROUND_RECORD):
                    yield _as_dict(entry)
        for part in self._buffer:
            for entry in part:
                yield _as_dict(entry)

    def close(self) -> None:
        """Remove the temporary file. Idempotent."""
        file, self._file = self._file, None
        if file is not None:
            file.close()


def _as_dict(entry: np.void) -> dict[str, int]:
    return {name: int(entry[name]) for name in ROUND_RECORD.names or ()}
