"""``--format nc``: a ``movement`` poses dataset as netCDF (``movement.nc``), via xarray + h5netcdf
(``pip install "ptrack[nc]"``).

The layout of movement 0.15.0's poses datasets (``movement.validators.datasets.ValidPosesInputs``):

* ``position`` ``(time, space, keypoints, individuals)`` float64, NaN where there is no estimate;
* ``confidence`` ``(time, keypoints, individuals)`` float64, ``visibility_prob`` (NaN: no estimate);
* coordinates ``time`` (seconds: source frame / fps, one entry per source frame from 0 to the last tracked frame),
  ``space`` ``[x, y]``, ``keypoints`` the point names, ``individuals`` ``[id_0]``;
* attributes ``ds_type`` ``poses``, ``fps``, ``time_unit`` ``seconds``, ``source_software`` ``ptrack``,
  ``source_file`` (the video), ``ptrack_version``, ``model``.

movement opens it with ``xarray.open_dataset`` (its napari widget's "movement (netCDF)" loader does the same).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...result import TrackResult
from ..atomic import atomic_path
from .common import dense, has_estimate, require

NAME = "movement.nc"
FILES = (NAME,)
MODULES = ("xarray", "h5netcdf")
EXTRA = "nc"
MOVEMENT_CHECKED = "0.15.0"
"""The movement release whose dimension names this layout was checked against."""
DIMS = ("time", "space", "keypoints", "individuals")
INDIVIDUAL = "id_0"


def check() -> None:
    require("nc", MODULES, EXTRA)


def poses_dataset(result: TrackResult):
    """The ``movement`` poses dataset of ``result`` (an ``xarray.Dataset``; see the module docstring)."""
    import xarray as xr  # optional dependency (ptrack[nc]), checked before tracking

    est = has_estimate(result)
    xy = dense(result.tracks.astype(np.float64), result)  # [F, N, 2]
    conf = dense(np.where(est, result.visibility_prob, np.nan).astype(np.float64), result)  # [F, N]
    time = np.arange(len(xy), dtype=np.float64) / float(result.fps)
    return xr.Dataset(
        data_vars={
            "position": (DIMS, xy.transpose(0, 2, 1)[..., None]),
            "confidence": (DIMS[:1] + DIMS[2:], conf[..., None]),
        },
        coords={"time": time, "space": ["x", "y"], "keypoints": list(result.point_names), "individuals": [INDIVIDUAL]},
        attrs={"ds_type": "poses", "fps": float(result.fps), "time_unit": "seconds", "source_software": "ptrack",
               "source_file": str(result.meta.get("video", "")), "ptrack_version": result.ptrack_version,
               "model": result.model},
    )


def save_nc(result: TrackResult, path: str | Path) -> Path:
    """Write the poses dataset as netCDF (HDF5 via h5netcdf), atomically."""
    path = Path(path)
    ds = poses_dataset(result)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``movement.nc`` in the output set ``outs``."""
    with outs.path(NAME) as p:
        save_nc(result, p)
