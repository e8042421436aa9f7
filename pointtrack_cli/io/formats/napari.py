"""``--format napari``: a Points layer CSV that napari's built-in reader opens (``napari_points.csv``).

Columns, in the layout of napari's Points CSV: ``index`` (the point's index; napari's own writer puts the row
number there, and its reader skips the column, so the point is repeated as the ``point`` property), ``axis-0``
(t: the source frame number, so the layer lines up with the video's frames), ``axis-1`` (y), ``axis-2`` (x), then
the properties ``point``, ``name``, ``visible`` (0/1), ``visibility_prob`` and
``confidence``. One row per frame and point with an estimate, frame by frame; none where there is no estimate.
napari's reader turns columns named ``axis-*`` into coordinates and every other column but ``index`` into a
property (integers, else floats, else text).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...result import TrackResult
from ..atomic import atomic_path
from .common import fmt, has_estimate, join_columns

NAME = "napari_points.csv"
FILES = (NAME,)
HEADER = "index,axis-0,axis-1,axis-2,point,name,visible,visibility_prob,confidence"


def save_napari(result: TrackResult, path: str | Path) -> Path:
    """Write napari's Points CSV (see the module docstring), atomically."""
    path = Path(path)
    est = has_estimate(result)
    names = np.array(result.point_names, dtype=str)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(HEADER + "\n")
            for t in range(result.num_frames):  # one frame at a time: memory stays flat
                n = np.nonzero(est[t])[0]
                if not len(n):
                    continue
                cols = [
                    n.astype(str),
                    np.full(len(n), str(int(result.frame_indices[t]))),
                    fmt(result.tracks[t, n, 1], "%.3f"),
                    fmt(result.tracks[t, n, 0], "%.3f"),
                    n.astype(str),
                    names[n],
                    result.visibility[t, n].astype(np.int8).astype(str),
                    fmt(result.visibility_prob[t, n], "%.5f"),
                    fmt(result.confidence[t, n], "%.5f"),
                ]
                f.write("\n".join(join_columns(cols)) + "\n")
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``napari_points.csv`` in the output set ``outs``."""
    with outs.path(NAME) as p:
        save_napari(result, p)
