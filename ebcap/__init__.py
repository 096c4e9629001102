"""ebcap: record and replay eBPF event streams into zstd-compressed Arrow IPC files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ebcap.errors import EbcapError

if TYPE_CHECKING:
    from ebcap.capture_file import Capture

__version__ = "0.1.0"

__all__ = ["EbcapError", "__version__", "open"]


def open(path: str | os.PathLike[str]) -> Capture:
    """Open an ebcap file: metadata, totals, tables, ``.events()`` and ``.replay()``.

    Imported on first use so ``import ebcap`` (and the CLI) stay light.
    """
    from ebcap.capture_file import Capture

    return Capture(path)
