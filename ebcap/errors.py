"""The one error tree of ebcap.

Every failure a user can cause or meet is an :class:`EbcapError`; the CLI turns
it into one line on stderr and its ``exit_code``. Anything else escaping is a
bug in ebcap.

::

    EbcapError                      exit 1
    ├── UsageError                  exit 2  a bad option value or combination
    ├── OutputExistsError           exit 2  refusing to overwrite without --force
    ├── BadFileError                exit 2  an input file ebcap cannot use
    │   ├── NotAnArrowFileError             not Arrow IPC at all
    │   ├── NotAnEbcapFileError             Arrow, but not written by ebcap
    │   ├── UnsupportedVersionError         a format version this ebcap cannot read
    │   └── TruncatedFileError              cut short: no footer; `ebcap recover` helps
    ├── KernelError                 exit 1  the kernel said no
    │   ├── MissingCapabilityError          names CAP_BPF / CAP_PERFMON / CAP_SYS_ADMIN
    │   ├── NotSupportedError               names the kernel feature
    │   ├── VerifierError                   carries the verifier log
    │   └── BpfObjectNotFoundError          a pin, map or program id that is not there
    ├── CaptureError                exit 1  recording failed midway (disk full, ...)
    │   └── OutputWriteError                writing the output failed; ``reason`` says why
    └── ClosedError                 exit 1  used after close() (a caller bug, not a fault)

A Ctrl-C ends a command with :data:`INTERRUPTED_EXIT` and one line.
"""

from __future__ import annotations

INTERRUPTED_EXIT = 130
"""128 + SIGINT, as shells report a command Ctrl-C ended."""


class EbcapError(Exception):
    """Base of every error ebcap raises on purpose."""

    exit_code = 1


class UsageError(EbcapError):
    """A command-line value or combination that cannot work."""

    exit_code = 2


class MissingPackageError(EbcapError):
    """An optional package a command needs is not installed (the ``analysis`` extra)."""


def require_package(module: str, purpose: str) -> None:
    """Fail in one line, before any work, when ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(
            f"{purpose} needs {module}, which is not installed: pip install 'ebcap[analysis]'"
        )


class OutputExistsError(EbcapError):
    """The output file exists and --force was not given."""

    exit_code = 2


class BadFileError(EbcapError):
    """An input file ebcap cannot read."""

    exit_code = 2


class NotAnArrowFileError(BadFileError):
    """The file is not an Arrow IPC file."""


class NotAnEbcapFileError(BadFileError):
    """An Arrow file without ebcap's metadata."""


class UnsupportedVersionError(BadFileError):
    """Written by a newer (or unknown) ebcap format version."""


class TruncatedFileError(BadFileError):
    """The file has no valid footer: a capture that ended abruptly."""


class KernelError(EbcapError):
    """A syscall failed; ``errno`` keeps the kernel's answer."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class MissingCapabilityError(KernelError):
    """EPERM/EACCES from the kernel: ``capability`` names what is missing."""

    def __init__(self, message: str, capability: str, errno: int = 0) -> None:
        super().__init__(message, errno)
        self.capability = capability


class NotSupportedError(KernelError):
    """This kernel lacks a feature; ``feature`` names it."""

    def __init__(self, message: str, feature: str, errno: int = 0) -> None:
        super().__init__(message, errno)
        self.feature = feature


class VerifierError(KernelError):
    """The verifier rejected a program; ``log`` is its full output."""

    def __init__(self, message: str, log: str, errno: int = 0) -> None:
        super().__init__(message, errno)
        self.log = log


class BpfObjectNotFoundError(KernelError):
    """A pinned path, map id or program id that does not exist."""


class CaptureError(EbcapError):
    """Recording stopped on a fault (e.g. disk full); the file keeps what was flushed."""


class OutputWriteError(CaptureError):
    """Writing an output file failed (disk full, I/O error); ``reason`` is the short cause,
    ``errno`` the system's (ENOSPC, ...)."""

    def __init__(self, message: str, reason: str, errno: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.errno = errno


class ClosedError(EbcapError):
    """An object was used after close()."""
