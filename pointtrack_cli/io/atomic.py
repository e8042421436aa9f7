"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash or error mid-write leaves the previous file (or nothing), never a partial one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import PtrackError


def _fsync_path(path: Path) -> None:
    """Flush a file's data to the device (opened for writing where the OS requires it to flush)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (makes a rename durable); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``, on error it is removed.

    The temporary name (``.<stem>.<random>.tmp<suffix>``) keeps the target's suffix, so tools that pick a
    format from the extension (ffmpeg, numpy) still work. A killed process can leave that temporary file
    behind, never a partial ``target``. ``durable=True`` also fsyncs the file before the rename and the
    folder after it, so a power cut cannot expose the new name before its data (the rename alone only
    protects against crashes of the process).
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            _fsync_path(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(target.parent)


def ensure_out_dir(out_dir: str | Path) -> Path:
    """Create the output folder if needed and check that it is writable."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PtrackError(f"output path {out} exists and is not a folder (choose another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtrackError(f"cannot create output folder {out}: {exc.strerror} (choose another --out)") from None
    if not out.is_dir():
        raise PtrackError(f"output path {out} exists and is not a folder (choose another --out)")
    if not os.access(out, os.W_OK | os.X_OK):
        raise PtrackError(f"output folder {out} is not writable (choose another --out)")
    return out
