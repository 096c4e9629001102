"""ebcap: record and replay eBPF event streams into zstd-compressed Arrow IPC files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ebcap.errors import EbcapError

if TYPE_CHECKING:
    from ebcap.capture_file import Capture

__version__ = "0.1.0"

__all__ = ["EbcapError", "__version__", "open"]

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "format" / "__init__.py").is_file():
    # Run from a source checkout (``python -m ebcap`` in its root puts this folder first
    # on sys.path): the subpackages live beside it, where pyproject.toml maps them from.
    __path__.append(str(_CHECKOUT))


def open(path: str | os.PathLike[str]) -> Capture:
    """Open an ebcap file: metadata, totals, tables, ``.events()`` and ``.replay()``.

    Imported on first use so ``import ebcap`` (and the CLI) stay light.
    """
    from ebcap.capture_file import Capture

    return Capture(path)
