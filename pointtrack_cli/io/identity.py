"""Identities for job keys: digests of JSON-able descriptions, arrays and files, without reading large inputs.

A job key (:mod:`.outputs`) must change whenever the result could: an input replaced on disk, other weights,
other queries, another option. Videos and weights are identified by path, size and modification time (reading
them to checksum would cost as much as decoding); queries and in-memory frames by a sha256 of their bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..weights.registry import registry
from .video import Video


def digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON (sorted keys, no spaces); non-JSON values go through ``str``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(a: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes: equal digests mean equal arrays."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's content, read in 1 MiB chunks (memory stays flat for large overlays)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_identity(path: str | Path | None) -> dict | None:
    """``{"path", "size", "mtime_ns"}`` of a file, or of a folder ``{"path", "files", "digest"}`` (every plain
    file's name, size and mtime: an image sequence changes when any frame does). None for None; a path that
    does not exist is identified by its name alone (the run then fails on it anyway)."""
    if path is None:
        return None
    p = Path(path)
    try:
        resolved = str(p.resolve())
        if p.is_dir():
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(p) if e.is_file())
            return {"path": resolved, "files": len(entries), "digest": digest(entries)}
        st = p.stat()
        return {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(p)}


def video_identity(video: Video) -> dict:
    """A video selection: the source (path, size, time; frames in memory by checksum), which source frames,
    at which size."""
    source = path_identity(video.path) if video.path.exists() else {"frames": array_digest(video.read_all())}
    return {"source": source, "frames": array_digest(np.asarray(video.frame_indices, np.int64)),
            "size": [video.width, video.height]}


def weights_identity(model: str, weights: str | Path | None) -> Any:
    """The weights model id ``model`` (``ID`` or ``ID@HxW``) runs with: a local file (:func:`path_identity`), the
    registry's source (Hub repo, file and revision, or URL), or None (a weight-free tracker without weights)."""
    if weights is not None:
        return path_identity(weights)
    entry = registry().get(model.split("@")[0])
    if entry is None:
        return None
    return {k: entry.get(k) for k in ("repo_id", "filename", "revision", "url") if entry.get(k)}
