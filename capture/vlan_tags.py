"""Putting back the VLAN tag the kernel took out of a frame before tc saw it.

On tc ingress the kernel has moved a frame's outer 802.1Q/802.1ad tag into
skb metadata before the hook runs (and on egress through a device that
inserts tags itself, it never was in the bytes): the program's ``pkt_len``
and ``packet`` lack those 4 bytes and send the tag alongside, as
``vlan_proto``/``vlan_tci`` (:mod:`ebcap.bpf.programs.packet`). As libpcap
does with the tag of ``PACKET_AUXDATA``, the recorder puts it back after the
two MAC addresses, so a recording holds the frame as it was on the wire:
``pkt_len`` counts the tag, and the packet bytes, the decoded columns, replay's
summaries and pcapng all carry it.

The snapshot length still bounds what is kept: ``cap_len`` stays
``min(pkt_len, snaplen)``, so a frame cut at the snaplen ends 4 bytes earlier
once its tag is in (those bytes are zeroed). A frame captured shorter than
its two MAC addresses (a failed copy) gets no tag, only the longer
``pkt_len``. ``vlan_proto``/``vlan_tci`` stay in the event as the kernel
gave them. Vectorised over a drain: a batch without tagged frames is
returned as it is, with one 2-byte read per row.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ebcap.bpf.programs.packet import PACKET_EVENT, PACKET_OFFSET, field_offset
from ebcap.capture.batch import EventBatch
from ebcap.format.packet_headers import ETH_ALEN, VLAN_HLEN
from ebcap.format.schema import KIND_SAMPLE_CODE

TAG_AT: Final = 2 * ETH_ALEN
"""Where the tag goes in the frame: after the destination and source MAC addresses."""
_U32: Final = np.arange(4)


_PROTO: Final = field_offset("vlan_proto")
_TCI: Final = field_offset("vlan_tci")
_PKT_LEN: Final = field_offset("pkt_len")
_CAP_LEN: Final = field_offset("cap_len")


def _read_u16(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    return values[at].astype(np.int64) | (values[at + 1].astype(np.int64) << 8)


def _read_u32(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (values[at[:, None] + _U32].astype(np.int64) << (8 * _U32)).sum(axis=1)


def _write_u32(values: np.ndarray, at: np.ndarray, numbers: np.ndarray) -> None:
    values[at[:, None] + _U32] = numbers.astype("<u4").view(np.uint8).reshape(-1, 4)


def reinsert_tags(batch: EventBatch, snaplen: int) -> EventBatch:
    """``batch`` with every tag the kernel took out put back into its frame (see above)."""
    starts = batch.offsets[:-1]
    events = np.flatnonzero(
        (batch.kind == KIND_SAMPLE_CODE) & (batch.lengths >= PACKET_EVENT.itemsize)
    )
    if len(events) == 0:
        return batch
    proto = _read_u16(batch.values, starts[events] + _PROTO)
    tagged = events[proto != 0]
    if len(tagged) == 0:
        return batch
    proto = proto[proto != 0]
    tci = _read_u16(batch.values, starts[tagged] + _TCI)
    wire = _read_u32(batch.values, starts[tagged] + _PKT_LEN)
    cap = _read_u32(batch.values, starts[tagged] + _CAP_LEN)
    fits = cap >= TAG_AT  # the MAC addresses are there: the tag goes after them
    tag = np.stack([proto >> 8, proto & 0xFF, tci >> 8, tci & 0xFF], axis=1).astype(np.uint8)
    at = starts[tagged[fits]] + PACKET_OFFSET + TAG_AT
    values = np.insert(batch.values, np.repeat(at, VLAN_HLEN), tag[fits].reshape(-1))
    grown = np.zeros(len(batch), dtype=np.int64)
    grown[tagged[fits]] = VLAN_HLEN
    offsets = batch.offsets.copy()
    offsets[1:] += np.cumsum(grown)
    new_starts = offsets[:-1][tagged]
    kept = np.where(fits, np.minimum(cap + VLAN_HLEN, snaplen), cap)
    _write_u32(values, new_starts + _PKT_LEN, wire + VLAN_HLEN)
    _write_u32(values, new_starts + _CAP_LEN, kept)
    # Frame bytes past the snaplen, pushed there by the tag: zero, as past any cap_len.
    past = kept[:, None] + _U32
    cut = fits[:, None] & (past < (cap + VLAN_HLEN)[:, None])
    values[((new_starts + PACKET_OFFSET)[:, None] + past)[cut]] = 0
    return EventBatch(
        cpu=batch.cpu,
        ts_ns=batch.ts_ns,
        kind=batch.kind,
        lost=batch.lost,
        offsets=offsets,
        values=values,
    )
