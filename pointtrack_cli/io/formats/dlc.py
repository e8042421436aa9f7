"""``--format dlc``: DeepLabCut's tracking output, as its single-animal CSV and (with pandas + tables) its ``.h5``.

``dlc.csv``: three header rows ``scorer`` / ``bodyparts`` / ``coords`` (scorer ``ptrack``, a body part per point
name, ``x, y, likelihood`` each), then one row per source frame from 0 to the last tracked frame, led by the frame
number; likelihood is ``visibility_prob``; cells are empty where there is no estimate (DeepLabCut's own NaN).
``dlc.h5``: the same table as a pandas DataFrame under the key ``df_with_missing`` (HDF5 "table" format, as
DeepLabCut writes it; napari-deeplabcut and movement open it). Written only when pandas and tables import
(``pip install "ptrack[dlc]"``); otherwise ``--format dlc`` writes the CSV and warns once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...result import TrackResult
from ..atomic import atomic_path
from .common import dense, fmt, has_estimate, missing_modules

CSV_NAME = "dlc.csv"
H5_NAME = "dlc.h5"
FILES = (CSV_NAME, H5_NAME)
H5_MODULES = ("pandas", "tables")
SCORER = "ptrack"
COORDS = ("x", "y", "likelihood")


def h5_available() -> bool:
    """Whether ``dlc.h5`` can be written (pandas and tables import)."""
    return not missing_modules(H5_MODULES)


def table(result: TrackResult) -> np.ndarray:
    """``[F, 3N]`` float64: x, y, likelihood per point, one row per source frame 0..last (NaN: no estimate)."""
    est = has_estimate(result)
    like = np.where(est, result.visibility_prob, np.nan)
    per = np.concatenate([result.tracks.astype(np.float64), like[..., None]], axis=-1)  # [T, N, 3]
    return dense(per, result).reshape(-1, 3 * result.num_points)


def save_dlc_csv(result: TrackResult, path: str | Path) -> Path:
    """Write DeepLabCut's CSV (see the module docstring), atomically."""
    path = Path(path)
    names = result.point_names
    values = table(result)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(",".join(["scorer"] + [SCORER] * 3 * len(names)) + "\n")
            f.write(",".join(["bodyparts"] + [n for n in names for _ in COORDS]) + "\n")
            f.write(",".join(["coords"] + list(COORDS) * len(names)) + "\n")
            for i, row in enumerate(values.reshape(len(values), -1, 3)):  # one frame at a time: memory stays flat
                cells = np.concatenate([fmt(row[:, :2], "%.3f"), fmt(row[:, 2:], "%.5f")], axis=1)
                f.write(",".join([str(i)] + cells.reshape(-1).tolist()) + "\n")
    return path


def save_dlc_h5(result: TrackResult, path: str | Path) -> Path:
    """Write DeepLabCut's ``.h5`` (a DataFrame under ``df_with_missing``), atomically; needs pandas and tables."""
    import pandas as pd  # optional dependency (ptrack[dlc]), checked before tracking

    path = Path(path)
    columns = pd.MultiIndex.from_product([[SCORER], result.point_names, list(COORDS)],
                                         names=["scorer", "bodyparts", "coords"])
    values = table(result)
    df = pd.DataFrame(values, index=np.arange(len(values)), columns=columns)
    with atomic_path(path) as tmp:
        df.to_hdf(tmp, key="df_with_missing", format="table", mode="w")
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``dlc.csv`` (and ``dlc.h5`` when pandas and tables import) in the output set ``outs``."""
    with outs.path(CSV_NAME) as p:
        save_dlc_csv(result, p)
    if h5_available():
        with outs.path(H5_NAME) as p:
            save_dlc_h5(result, p)
