"""Export formats for the tools people continue in: one module per format, each staging its files in an output set.

| format | files | needs |
|---|---|---|
| ``dlc`` | ``dlc.csv`` (+ ``dlc.h5`` with pandas and tables) | -- (``ptrack[dlc]`` for the .h5) |
| ``sleap`` | ``sleap.analysis.h5`` | h5py (``ptrack[sleap]``) |
| ``napari`` | ``napari_points.csv`` | -- |
| ``coco`` | ``coco_keypoints.json`` | -- |
| ``nc`` | ``movement.nc`` | xarray, h5netcdf (``ptrack[nc]``) |
| ``tapvid`` | ``tapvid_davis.pkl`` | -- (holds the frames at 256x256) |

:func:`check_export` runs before any tracking (a missing library: one line naming the extra, nothing written);
:func:`write_export` stages a format's files (``outs.path``), so they appear with the rest of the set.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from ...result import TrackResult
from ..outputs import OutputSet
from ..video import Video
from . import coco, dlc, napari, nc, sleap, tapvid


@dataclass(frozen=True)
class ExportFormat:
    """One ``--format``: the files it may write, its check (before tracking) and its writer."""

    name: str
    files: tuple[str, ...]
    check: Callable[[], None]
    write: Callable[[TrackResult, OutputSet, Callable[[], Video]], None]


def _check_dlc() -> None:
    if not dlc.h5_available():
        warnings.warn("--format dlc writes dlc.csv only: DeepLabCut's .h5 needs pandas and tables "
                      "(pip install \"ptrack[dlc]\")", stacklevel=3)


def _nothing() -> None:
    return None


EXPORTS: dict[str, ExportFormat] = {
    "dlc": ExportFormat("dlc", dlc.FILES, _check_dlc, dlc.write),
    "sleap": ExportFormat("sleap", sleap.FILES, sleap.check, sleap.write),
    "napari": ExportFormat("napari", napari.FILES, _nothing, napari.write),
    "coco": ExportFormat("coco", coco.FILES, _nothing, coco.write),
    "nc": ExportFormat("nc", nc.FILES, nc.check, nc.write),
    "tapvid": ExportFormat("tapvid", tapvid.FILES, _nothing, tapvid.write),
}
EXPORT_FILES = tuple(f for e in EXPORTS.values() for f in e.files)


def check_export(name: str) -> None:
    """Before tracking: one line (PtrackError) when format ``name`` needs a library that is not installed."""
    EXPORTS[name].check()


def export_variant(formats: tuple[str, ...]) -> dict:
    """What the files of ``formats`` depend on besides the result (part of the job key): whether ``dlc.h5`` is
    written. Empty when nothing does."""
    return {"dlc_h5": dlc.h5_available()} if "dlc" in formats else {}


def write_export(name: str, result: TrackResult, outs: OutputSet, video: Callable[[], Video]) -> None:
    """Stage format ``name``'s files of ``result`` in ``outs``; ``video()`` opens the frames (``tapvid`` only)."""
    EXPORTS[name].write(result, outs, video)
