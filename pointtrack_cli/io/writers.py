"""Writers for ``tracks.npz`` and ``tracks.csv`` (every file written atomically), and a result's whole file set.

:func:`write_result` writes ``tracks.npz`` / ``tracks.csv`` / the export formats (:mod:`.formats`: dlc, sleap,
napari, coco, nc, tapvid) / the result's ``extra_files`` / ``overlay.mp4`` into an :class:`~.outputs.OutputSet`'s
staging folder; the set's commit then makes them appear together. :func:`check_outputs` checks the formats asked
for before any tracking (an export whose library is missing: one line naming the extra).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import PtrackError
from ..result import TrackResult
from .atomic import atomic_path
from .formats import EXPORT_FILES, EXPORTS, check_export, write_export
from .outputs import OutputSet
from .overlay import write_overlay
from .video import Video, open_video

CSV_HEADER = "frame,point,name,x,y,visible,visibility_prob,confidence"
FORMATS = ("npz", "csv")  # the default
ALL_FORMATS = FORMATS + tuple(EXPORTS)
OUTPUT_NAMES = ("tracks.npz", "tracks.csv", "overlay.mp4", "selection.npz") + EXPORT_FILES  # every name a set may hold


def check_outputs(formats: Sequence[str] | str, overlay: bool = True) -> tuple[str, ...]:
    """``"npz,csv,dlc"`` or a sequence -> checked tuple of formats; one line if one is unknown, if an export's
    library is missing (naming the extra that installs it), or if nothing would be written."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    fmt = tuple(dict.fromkeys(f.strip() for f in items if f.strip()))
    bad = [f for f in fmt if f not in ALL_FORMATS]
    if bad:
        raise PtrackError(f"--format {','.join(fmt)!r}: unknown format {bad[0]!r} (choose from {','.join(ALL_FORMATS)})")
    if not fmt and not overlay:
        raise PtrackError("nothing to write: --format is empty and --no-overlay is given (choose --format npz,csv "
                          "or drop --no-overlay)")
    for f in fmt:
        if f in EXPORTS:
            check_export(f)
    return fmt


def write_result(
    result: TrackResult,
    outs: OutputSet,
    *,
    formats: Sequence[str] = FORMATS,
    overlay: bool = True,
    video: Video | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stage ``result``'s files in ``outs``: ``tracks.npz``, ``tracks.csv`` and the export formats (as ``formats``
    asks), its ``extra_files`` and ``overlay.mp4`` (drawn on ``video``, the frames the result was tracked on; without
    one the video named in ``result.meta`` is opened again with the same selection; ``tapvid`` reads it too)."""
    if "npz" in formats:
        with outs.path("tracks.npz") as p:
            save_npz(result, p)
    if "csv" in formats:
        with outs.path("tracks.csv") as p:
            save_csv(result, p)

    opened = [video] if video is not None else []

    def frames() -> Video:  # opened once, when the first writer needs the frames
        if not opened:
            opened.append(reopen(result))
        return opened[0]

    for f in formats:
        if f in EXPORTS:
            write_export(f, result, outs, frames)
    for name, arrays in result.extra_files.items():
        with outs.path(name) as p:
            save_arrays(arrays, p)
    if overlay:
        video = frames()
        q_index = np.searchsorted(result.frame_indices, result.queries[:, 0].astype(np.int64))
        step = int(video.frame_indices[1] - video.frame_indices[0]) if len(video.frame_indices) > 1 else 1
        with outs.path("overlay.mp4") as p:
            write_overlay(video.source_frames(), result.tracks, result.visibility, q_index, result.queries[:, 2],
                          result.fps / max(1, step), p, progress)


def reopen(result: TrackResult) -> Video:
    """The frames a result was tracked on, from its metadata (for the overlay)."""
    m = result.meta
    path = Path(str(m.get("video", "")))
    if not path.exists():
        raise PtrackError(f"the overlay needs the video, and {path} is gone: pass video=... or overlay=False")
    return open_video(path, start=int(m.get("start") or 0), end=m.get("end"), stride=int(m.get("stride") or 1),
                      max_size=m.get("max_size"))


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
    """Long-form CSV: one row per (frame, point): ``frame,point,name,x,y,visible,visibility_prob,confidence``.

    ``frame`` is the source frame number; ``point`` the column in ``tracks.npz``, ``name`` its name; x, y are
    original pixels (empty when there is no estimate).
    """
    path = Path(path)
    T, N = result.num_frames, result.num_points
    point = np.arange(N).astype(str)
    names = np.array(result.point_names, dtype=str)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(CSV_HEADER + "\n")
            for t in range(T):  # one frame at a time keeps memory flat for long videos
                cols = [
                    np.full(N, str(int(result.frame_indices[t]))),
                    point,
                    names,
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
