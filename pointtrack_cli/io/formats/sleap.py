"""``--format sleap``: SLEAP's analysis HDF5 (``sleap.analysis.h5``), via h5py (``pip install "ptrack[sleap]"``).

The points are the nodes of one track (one individual, ``track_0``); arrays are stored as SLEAP stores them
(transposed for MATLAB), one frame per source frame from 0 to the last tracked frame:

* ``tracks`` ``(1, 2, N, F)`` float64 x, y, NaN where there is no estimate;
* ``track_occupancy`` ``(F, 1)`` uint8, 1 on frames where any point has an estimate;
* ``point_scores`` ``(1, N, F)`` float64 ``visibility_prob`` (NaN: no estimate); ``instance_scores`` and
  ``tracking_scores`` ``(1, F)`` NaN (ptrack has none);
* ``node_names`` the point names, ``track_names`` ``[track_0]``, ``edge_names``/``edge_inds`` empty (no skeleton),
  ``video_path``, ``video_ind`` 0, ``labels_path`` empty, ``provenance`` JSON (ptrack version, model, command).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...result import TrackResult
from ..atomic import atomic_path
from .common import dense, has_estimate, require

NAME = "sleap.analysis.h5"
FILES = (NAME,)
MODULES = ("h5py",)
EXTRA = "sleap"
TRACK = "track_0"


def check() -> None:
    require("sleap", MODULES, EXTRA)


def save_sleap(result: TrackResult, path: str | Path) -> Path:
    """Write SLEAP's analysis HDF5 (see the module docstring), atomically."""
    import h5py  # optional dependency (ptrack[sleap]), checked before tracking

    path = Path(path)
    est = has_estimate(result)
    xy = dense(result.tracks.astype(np.float64), result)  # [F, N, 2]
    scores = dense(np.where(est, result.visibility_prob, np.nan).astype(np.float64), result)  # [F, N]
    occupied = dense(est.any(axis=1), result, False).astype(np.uint8)  # [F]
    F = len(occupied)
    provenance = {"software": "ptrack", "ptrack_version": result.ptrack_version, "model": result.model,
                  "command": result.meta.get("command")}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("tracks", data=xy.transpose(2, 1, 0)[None], compression="gzip")
            f.create_dataset("track_occupancy", data=occupied[:, None], compression="gzip")
            f.create_dataset("point_scores", data=scores.T[None], compression="gzip")
            f.create_dataset("instance_scores", data=np.full((1, F), np.nan), compression="gzip")
            f.create_dataset("tracking_scores", data=np.full((1, F), np.nan), compression="gzip")
            f.create_dataset("node_names", data=np.array([n.encode() for n in result.point_names], dtype="S"))
            f.create_dataset("track_names", data=np.array([TRACK.encode()], dtype="S"))
            f.create_dataset("edge_names", data=np.zeros((0, 2), dtype="S1"))
            f.create_dataset("edge_inds", data=np.zeros((0, 2), dtype=np.int64))
            f.create_dataset("video_path", data=str(result.meta.get("video", "")))
            f.create_dataset("video_ind", data=0)
            f.create_dataset("labels_path", data="")
            f.create_dataset("provenance", data=json.dumps(provenance, default=str))
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``sleap.analysis.h5`` in the output set ``outs``."""
    with outs.path(NAME) as p:
        save_sleap(result, p)
