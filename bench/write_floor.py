#!/usr/bin/env python3
"""The write side's floor: CPU time per event to checksum, compress and write one batch.

The ring buffer target asks a consumer on one CPU to keep pace with a producer
that, unpaced, makes one event every ~83 ns. This measures the part of ebcap's
per-event cost that no drain change can remove: what the writer thread does to
a 65,536-row batch of the anchor's events (`ts:u64,cpu:u32,seq:u32,pad:Nx`,
padding words = ts ^ 0x5a5aa5a5c3c33c3c), with the file's columns, one thread,
as `ebcap record` writes them (CRC-32 of each column, then Arrow IPC with zstd
at each level, `use_threads=False`, bytes counted, not stored). No ring, no drain, no
Python per event: a lower bound for the whole recorder.

    python3 bench/write_floor.py [--sizes 24,256] [--levels 1,-1,-5,none] [--reps 20]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.format import checksum
from ebcap.format import schema as fs
from ebcap.format.writer import zstd_codec

ROWS = 65_536
PAD_XOR = np.uint64(0x5A5AA5A5C3C33C3C)
PRODUCER_NS = 83.0
"""The anchor's unpaced producer, one CPU: ~12 M events/s (docs/PERFORMANCE.md)."""


def anchor_batch(size: int) -> pa.RecordBatch:
    """One batch shaped like a recording of the anchor producer on one CPU."""
    rng = np.random.default_rng(1)
    ts = (10**12 + np.cumsum(rng.integers(60, 110, ROWS))).astype(np.uint64)
    seq = np.arange(ROWS, dtype=np.uint64)
    words = np.empty((ROWS, size // 8), dtype=np.uint64)
    words[:, 0] = ts
    words[:, 1] = seq.astype(np.uint64)  # cpu 0 in the low half, seq in the high half
    words[:, 1] <<= np.uint64(32)
    words[:, 2:] = (ts ^ PAD_XOR)[:, None]
    offsets = np.arange(0, (ROWS + 1) * size, size, dtype=np.int32)
    data = pa.BinaryArray.from_buffers(
        pa.binary(), ROWS, [None, pa.py_buffer(offsets), pa.py_buffer(words.tobytes())]
    )
    kind = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(ROWS, dtype=np.int8)), pa.array(["sample", "lost"])
    )
    columns = {
        "seq": pa.array(seq),
        "cpu": pa.array(np.zeros(ROWS, dtype=np.uint16)),
        "ts_ns": pa.array(ts),
        "kind": kind,
        "lost": pa.array(np.zeros(ROWS, dtype=np.uint64)),
        "round": pa.array(np.ones(ROWS, dtype=np.uint32)),
        "data": data,
        "ev_seq": pa.array(seq.astype(np.uint32)),
    }
    return pa.RecordBatch.from_pydict(columns)


class CountingSink(io.RawIOBase):
    """A file that keeps only the count of bytes written (the disk is not measured)."""

    written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.written += n
        return n


def write_cost(batch: pa.RecordBatch, level: str, reps: int) -> tuple[float, float]:
    """CPU ns per event of the writer's work, and file bytes per event."""
    codec = None if level == "none" else zstd_codec(int(level))
    options = pa.ipc.IpcWriteOptions(compression=codec, use_threads=False)
    times = []
    schema_crc = checksum.schema_crc(batch.schema)
    sink = CountingSink()
    with pa.ipc.new_file(pa.PythonFile(sink, mode="w"), batch.schema, options=options) as w:
        for _ in range(reps):
            start = time.thread_time()
            crcs = checksum.batch_checksums(batch, schema_crc)
            w.write_batch(batch, custom_metadata={fs.CHECKSUMS_KEY: crcs})
            times.append(time.thread_time() - start)
    return statistics.median(times) / ROWS * 1e9, sink.written / (reps * ROWS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="24,256")
    parser.add_argument("--levels", default="1,-1,-5,none")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if not all(size >= 16 and size % 8 == 0 for size in sizes):
        parser.error("--sizes: the anchor's events are multiples of 8 bytes, at least 16")
    print(f"writer thread, ns per event (median of {args.reps} batches of {ROWS} rows)")
    print(f"the unpaced anchor producer makes one event every ~{PRODUCER_NS:.0f} ns\n")
    print("| event size | zstd level | ns/event | share of the producer's interval | B/event |")
    print("|---|---|---|---|---|")
    for size in sizes:
        batch = anchor_batch(size)
        for level in args.levels.split(","):
            ns, per_event = write_cost(batch, level, args.reps)
            print(f"| {size} | {level} | {ns:.0f} | {ns / PRODUCER_NS:.0%} | {per_event:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
