"""User-facing errors: the CLI prints the message as one line and exits with code 2."""
from __future__ import annotations

import errno


class PtrackError(Exception):
    """A problem with the user's input or environment.

    The message names the problem and the fix in one line, e.g.
    ``"video not found: clip.mp4 (check the path)"``. The CLI catches it, prints it without a
    traceback and exits with :attr:`exit_code`.
    """

    exit_code = 2


class WriteError(PtrackError, OSError):
    """An output could not be written (disk full, I/O error, permission refused late): one line naming the path.

    Also an :class:`OSError`, so code that handles failed writes as such keeps working; the CLI shows it as
    any :class:`PtrackError`. Built by :func:`write_error` where the write happens (``io/``), so Python callers
    get the same message as the command line.
    """


_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another output folder",
    errno.EACCES: "permission denied: choose another output folder",
    errno.EPERM: "permission denied: choose another output folder",
    errno.EROFS: "the filesystem is read-only: choose another output folder",
    errno.EIO: "input/output error: the disk or network share may be failing",
    errno.EFBIG: "the file is too large for this filesystem",
}


def write_error(path: object, exc: OSError) -> WriteError:
    """``OSError`` raised while writing ``path`` -> :class:`WriteError` (message: path, reason, what to do)."""
    # A WriteError from a lower write (a temporary file) is named again after the file the user asked for.
    reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
    hint = _WRITE_HINTS.get(exc.errno or -1)
    err = WriteError(f"cannot write {path}: {reason}" + (f" ({hint})" if hint else ""))
    err.errno, err.reason = exc.errno, reason
    return err


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler so that ``finally`` blocks and context managers
    clean up exactly as for Ctrl-C (a ``KeyboardInterrupt``); the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum
