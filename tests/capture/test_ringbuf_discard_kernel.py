"""Records a producer discards in a real BPF ring buffer are skipped, exactly those.

A program written with ebcap's assembler reserves a 16-byte record for every
run, writes its sequence number into it, and submits the even ones but
discards the odd ones (bpf_ringbuf_discard). Driven by BPF_PROG_TEST_RUN, the
kernel lays discarded records between committed ones, with the DISCARD bit
in their header: the reader must skip those and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import numpy as np
import pytest
from kernel_helpers import run_pinned

from ebcap.bpf import _sys
from ebcap.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R7,
    R8,
    W,
    add64_imm,
    alu64_imm,
    call,
    exit_,
    ja,
    jmp_imm,
    label,
    ld_imm64,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    resolve,
    st_mem,
    stx_mem,
)
from ebcap.bpf.cpus import online_cpus
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.capture.batch import EventBatch
from ebcap.capture.ringbuf_reader import RingBufReader

pytestmark = pytest.mark.privileged

MAGIC: Final = 0x0DDC0FFEE0DDF00D
RECORD = np.dtype([("seq", "<u8"), ("magic", "<u8")])
SPAN = 8 + RECORD.itemsize  # ring buffer header + record
TEST_RUN_INPUT = bytes(64)  # a socket filter needs at least an Ethernet header


def discarding_program(ring_fd: int, counter_fd: int) -> list:
    """seq = counter++; reserve 16 bytes; write seq and MAGIC; submit if even, else discard."""
    return resolve(
        [
            st_mem(W, FP, -8, 0),
            ld_map_fd(R1, counter_fd),
            mov64_reg(R2, FP),
            add64_imm(R2, -8),
            call("BPF_FUNC_map_lookup_elem"),
            jmp_imm("jeq", R0, 0, "out"),
            mov64_reg(R7, R0),
            ldx_mem(DW, R8, R7, 0),
            mov64_reg(R1, R8),
            add64_imm(R1, 1),
            stx_mem(DW, R7, R1, 0),
            ld_map_fd(R1, ring_fd),
            mov64_imm(R2, RECORD.itemsize),
            mov64_imm(R3, 0),
            call("BPF_FUNC_ringbuf_reserve"),
            jmp_imm("jeq", R0, 0, "out"),
            stx_mem(DW, R0, R8, 0),
            ld_imm64(R1, MAGIC),
            stx_mem(DW, R0, R1, 8),
            mov64_reg(R1, R8),
            alu64_imm("and", R1, 1),
            jmp_imm("jne", R1, 0, "discard"),
            mov64_reg(R1, R0),
            mov64_imm(R2, 0),
            call("BPF_FUNC_ringbuf_submit"),
            ja("out"),
            label("discard"),
            mov64_reg(R1, R0),
            mov64_imm(R2, 0),
            call("BPF_FUNC_ringbuf_discard"),
            label("out"),
            mov64_imm(R0, 0),
            exit_(),
        ]
    )


@contextmanager
def discarding_producer(ring_bytes: int) -> Iterator[tuple[RingBufReader, Program, Map]]:
    with (
        Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes, name="ebcap_t_disc") as ring,
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="ebcap_t_seq") as counter,
        Program.load(
            _sys.BPF_PROG_TYPE_SOCKET_FILTER,
            discarding_program(ring.fd, counter.fd),
            name="ebcap_t_disc",
        ) as program,
        RingBufReader(ring) as reader,
    ):
        yield reader, program, counter


def records(batch: EventBatch) -> np.ndarray:
    payloads = batch.fixed_payloads(RECORD.itemsize)
    assert payloads is not None, "payload lengths differ"
    return np.ascontiguousarray(payloads).view(RECORD).reshape(-1)


def produce(program: Program, n: int) -> None:
    run_pinned(online_cpus()[0], lambda: program.test_run(TEST_RUN_INPUT, repeat=n))


def test_discarded_records_are_skipped_and_counted() -> None:
    n = 200
    with discarding_producer(1 << 16) as (reader, program, counter):
        produce(program, n)
        batch = reader.read()
        assert len(reader.read()) == 0  # consumed past the discarded ones too
        assert struct.unpack("<Q", counter.lookup(bytes(4)) or b"")[0] == n
        assert reader.discarded == n // 2
        assert reader.bytes_read == n * SPAN  # every record, discarded or not
    got = records(batch)
    assert got["seq"].tolist() == list(range(0, n, 2))
    assert (got["magic"] == MAGIC).all()
    assert batch.num_samples == n // 2 and batch.num_lost == 0


def test_discards_between_commits_across_many_wraps() -> None:
    per_round, rounds = 101, 20  # odd: each round starts with the other parity
    ring_bytes = 4096
    assert per_round * SPAN < ring_bytes < per_round * rounds * SPAN // 10
    seen = []
    with discarding_producer(ring_bytes) as (reader, program, _):
        for _ in range(rounds):
            produce(program, per_round)
            seen.append(records(reader.read()))
        assert reader.discarded == per_round * rounds // 2
    seqs = np.concatenate(seen)["seq"]
    assert seqs.tolist() == list(range(0, per_round * rounds, 2))
