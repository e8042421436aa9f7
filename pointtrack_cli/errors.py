"""User-facing errors: the CLI prints the message as one line and exits with code 2."""
from __future__ import annotations


class PtrackError(Exception):
    """A problem with the user's input or environment.

    The message names the problem and the fix in one line, e.g.
    ``"video not found: clip.mp4 (check the path)"``. The CLI catches it, prints it without a
    traceback and exits with :attr:`exit_code`.
    """

    exit_code = 2
