"""Writers for ``tracks.npz`` and ``tracks.csv`` (every file written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..result import TrackResult
from .atomic import atomic_path

CSV_HEADER = "frame,point,x,y,visible,visibility_prob,confidence"


def save_npz(result: TrackResult, path: str | Path, extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``result`` (plus optional extra arrays) as an uncompressed NPZ, atomically."""
    arrays = result.to_npz_dict()
    if extra:
        arrays.update(extra)
    return save_arrays(arrays, path)


def save_arrays(arrays: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Write plain arrays to ``path`` (.npz) atomically; object arrays are refused (no pickles)."""
    path = Path(path)
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; it would need pickle to load")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def _fmt(values: np.ndarray, fmt: str) -> np.ndarray:
    """Format floats, leaving NaN as an empty field."""
    out = np.char.mod(fmt, np.nan_to_num(values, nan=0.0))
    return np.where(np.isnan(values), "", out)


def save_csv(result: TrackResult, path: str | Path) -> Path:
    """Long-form CSV: one row per (frame, point): ``frame,point,x,y,visible,visibility_prob,confidence``.

    ``frame`` is the source frame number; x, y are original pixels (empty when there is no estimate).
    """
    path = Path(path)
    T, N = result.num_frames, result.num_points
    point = np.arange(N).astype(str)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(CSV_HEADER + "\n")
            for t in range(T):  # one frame at a time keeps memory flat for long videos
                cols = [
                    np.full(N, str(int(result.frame_indices[t]))),
                    point,
                    _fmt(result.tracks[t, :, 0].astype(np.float64), "%.3f"),
                    _fmt(result.tracks[t, :, 1].astype(np.float64), "%.3f"),
                    result.visibility[t].astype(np.int8).astype(str),
                    _fmt(result.visibility_prob[t].astype(np.float64), "%.5f"),
                    _fmt(result.confidence[t].astype(np.float64), "%.5f"),
                ]
                rows = cols[0]
                for c in cols[1:]:
                    rows = np.char.add(np.char.add(rows, ","), c)
                if N:
                    f.write("\n".join(rows.tolist()) + "\n")
    return path
