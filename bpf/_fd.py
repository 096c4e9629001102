"""One kernel file descriptor owned by one Python object.

Maps and programs are fds: each closes exactly once (``close()`` again does
nothing), works as a context manager, and refuses use after close with a
:class:`~ebcap.errors.ClosedError` that names what was closed.
"""

from __future__ import annotations

import os
from typing import ClassVar

from ebcap.closing import ClosesOnExit
from ebcap.errors import ClosedError


class OwnedFd(ClosesOnExit):
    """Base of the objects that own a BPF fd."""

    kind: ClassVar[str] = "BPF object"
    """Said in errors: "map is closed"."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"{self.kind} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd; calling it again does nothing."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
