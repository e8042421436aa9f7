"""What the export formats share: frames laid out densely from source frame 0, numbers as text, optional modules.

Pose tools (DeepLabCut, SLEAP, movement) take row ``i`` of a file as frame ``i`` of the video, so those exports hold
one row per source frame from 0 to the last tracked frame; frames ptrack did not track (before ``--start``, between
``--stride`` steps) hold no estimate.
"""
from __future__ import annotations

import importlib

import numpy as np

from ...errors import PtrackError
from ...result import TrackResult


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules among ``modules`` that do not import."""
    out = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def require(fmt: str, modules: tuple[str, ...], extra: str) -> None:
    """One line when ``--format fmt`` needs modules that are not installed, naming the extra that installs them."""
    gone = missing_modules(modules)
    if gone:
        raise PtrackError(f"--format {fmt} needs {' and '.join(gone)}, which is not installed: "
                          f"pip install \"ptrack[{extra}]\" (or leave {fmt} out of --format)")


def dense_frames(result: TrackResult) -> int:
    """Rows of a dense export: source frames 0 .. the last tracked frame."""
    return int(result.frame_indices[-1]) + 1 if result.num_frames else 0


def dense(values: np.ndarray, result: TrackResult, fill: float | bool = np.nan) -> np.ndarray:
    """``values [T, ...]`` on the tracked frames -> ``[F, ...]`` on source frames 0..last (``fill`` elsewhere)."""
    out = np.full((dense_frames(result),) + values.shape[1:], fill, dtype=np.result_type(values.dtype, np.asarray(fill)))
    out[result.frame_indices] = values
    return out


def has_estimate(result: TrackResult) -> np.ndarray:
    """``[T, N]`` True where a point has a position."""
    return np.isfinite(result.tracks).all(axis=-1)


def fmt(values: np.ndarray, spec: str) -> np.ndarray:
    """Numbers as text with ``%`` format ``spec``; NaN as an empty field."""
    values = np.asarray(values, np.float64)
    out = np.char.mod(spec, np.nan_to_num(values, nan=0.0))
    return np.where(np.isnan(values), "", out)


def join_columns(columns: list[np.ndarray]) -> list[str]:
    """Equal-length text columns -> comma-joined rows."""
    rows = columns[0]
    for c in columns[1:]:
        rows = np.char.add(np.char.add(rows, ","), c)
    return rows.tolist()


def video_name(result: TrackResult) -> str:
    """The name of the video a result was tracked on (its file or folder stem), ``video`` when unknown."""
    name = str(result.meta.get("video") or "").rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem if stem and not stem.startswith("<") else "video"
