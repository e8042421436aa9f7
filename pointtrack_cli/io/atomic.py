"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash or error mid-write leaves the previous file (or nothing), never a partial one. Sets of files that
must appear together (a run's outputs) are :mod:`.outputs`' business; this module is about one file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Iterator

from ..errors import PtrackError, write_error


def fsync_path(path: Path) -> None:
    """Flush a file's data to the device (opened for writing where the OS requires it to flush)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
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
    protects against crashes of the process). An ``OSError`` on the way (disk full, I/O error) becomes a
    :class:`~pointtrack_cli.errors.WriteError` naming ``target`` (still an ``OSError``).
    """
    target = Path(target)
    tmp_path = create_temporary(target)
    try:
        yield tmp_path
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, target)
    except OSError as exc:  # disk full, I/O error, permission: one line naming the target (also an OSError)
        tmp_path.unlink(missing_ok=True)
        raise write_error(target, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def create_temporary(target: Path) -> Path:
    """Create an empty ``.<stem>.<random>.tmp<suffix>`` next to ``target`` and return its path.

    Created with mode 0o666 filtered by the umask, as ``open()`` creates files (``tempfile.mkstemp`` would give
    0o600 whatever the umask, and the rename would carry that mode to the output). ``O_EXCL`` makes the name
    ours alone; a clash (1 in 2^32 per try) draws another.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


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
