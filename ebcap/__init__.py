"""ebcap: record and replay eBPF event streams into zstd-compressed Arrow IPC files."""

from __future__ import annotations

from ebcap.errors import EbcapError

__version__ = "0.1.0"

__all__ = ["EbcapError", "__version__"]
