"""The context-manager half of everything ebcap opens: leaving a ``with`` closes it.

Maps, programs, links, ring readers, capture readers, SQL sessions and
spill files each have an idempotent ``close()``; they all enter and leave a
``with`` block the same way, written here once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosesOnExit:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` however the block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
