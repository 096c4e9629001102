"""ebcap: record and replay eBPF event streams into zstd-compressed Arrow IPC files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ebcap.errors import EbcapError

if TYPE_CHECKING:
    from ebcap.format.reader import CaptureReader

__version__ = "0.1.0"

__all__ = ["EbcapError", "__version__", "open"]


def open(path: str | os.PathLike[str]) -> CaptureReader:
    """Open an ebcap file for reading; see :class:`ebcap.format.CaptureReader`.

    Imported on first use so ``import ebcap`` (and the CLI) stay light.
    """
    from ebcap.format.reader import CaptureReader

    return CaptureReader(path)
