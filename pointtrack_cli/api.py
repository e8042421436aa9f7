"""Python API: ``track(video, ...)`` runs a tracker on a video and returns a :class:`TrackResult`.

Data path: video (streamed) -> queries (original pixels) -> tracker (model pixels inside) -> tracks
mapped back to original pixels -> writers (see :func:`write_outputs`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import queries as Q
from .errors import PtrackError
from .io.video import VideoReader, open_video
from .result import COORDINATES, TrackResult
from .trackers import Tracker, build_tracker
from .trackers.base import blank_before_query


def build_queries(
    video: VideoReader,
    *,
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    queries: str | Path | np.ndarray | None = None,
    points: Sequence[str] = (),
    model_hw: tuple[int, int] = Q.MODEL_RESOLUTION,
) -> tuple[np.ndarray, bool]:
    """All query sources combined: ``([N, 3] (t, x, y) in source pixels with source frame numbers, explicit)``.

    ``explicit`` is True when any point came from a file, ``--point`` or a mask (the official predictor then
    adds its support grid). With no source at all, a 10x10 grid is used.
    """
    parts: list[np.ndarray] = []
    explicit = False
    if queries is not None:
        parts.append(queries if isinstance(queries, np.ndarray) else Q.load_query_file(queries))
        explicit = True
    for p in points:
        parts.append(Q.parse_point(p))
        explicit = True
    if grid is not None or mask is not None or not parts:
        frame = int(video.frame_indices[0]) if grid_frame is None else int(grid_frame)
        m = Q.load_mask(mask, model_hw) if mask is not None else None
        parts.append(Q.grid_queries(grid or 10, frame, video.source_size, model_hw, m))
        explicit = explicit or mask is not None
    q = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in parts], axis=0)
    return q, explicit


def validate_queries(q: np.ndarray, video: VideoReader) -> np.ndarray:
    """Check queries against the video; returns each query's index into the selected frames ``[N]``."""
    if not np.isfinite(q).all():
        raise PtrackError("queries contain NaN or infinite values (give finite t, x, y)")
    w, h = video.source_size
    last = int(video.source_num_frames - 1)
    for i, (t, x, y) in enumerate(q):
        if t != int(t) or t < 0:
            raise PtrackError(f"query {i}: frame {t:g} is not a frame number (use an integer >= 0)")
        if t > last:
            raise PtrackError(f"query {i}: frame {int(t)} is beyond the last frame ({last}) of the video")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise PtrackError(
                f"query {i}: ({x:g}, {y:g}) is outside the {w}x{h} frame (x in [0, {w - 1}], y in [0, {h - 1}])"
            )
    pos = np.searchsorted(video.frame_indices, q[:, 0].astype(np.int64))
    pos = np.clip(pos, 0, len(video.frame_indices) - 1)
    missing = np.nonzero(video.frame_indices[pos] != q[:, 0].astype(np.int64))[0]
    if len(missing):
        i = int(missing[0])
        raise PtrackError(
            f"query {i}: frame {int(q[i, 0])} is not among the tracked frames "
            f"({int(video.frame_indices[0])}..{int(video.frame_indices[-1])} step {video.frame_indices[1] - video.frame_indices[0] if len(video.frame_indices) > 1 else 1}); "
            "adjust --start/--end/--stride or the query"
        )
    return pos


def run_tracker(
    tracker: Tracker,
    video: VideoReader,
    q: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, ...]:
    """Run ``tracker`` on ``video`` for source-pixel queries ``q``; returns source-pixel arrays.

    Returns (tracks [T, N, 2], visibility, visibility_prob, confidence) after mapping back to the
    original pixels and blanking frames before each query when the tracker does not go backward.
    """
    t_index = validate_queries(q, video)
    model_q = np.concatenate([t_index[:, None].astype(np.float64), video.from_source(q[:, 1:3])], axis=1)
    out = tracker.track(video, model_q, progress=progress)
    T = video.num_frames
    tracks = video.to_source(out.tracks.astype(np.float64))[:T]
    vis, prob, conf = out.visibility[:T].copy(), out.visibility_prob[:T], out.confidence[:T]
    if not tracker.backward:
        blank_before_query(tracks, vis, t_index)
    return tracks.astype(np.float32), vis, prob, conf


def track(
    video: str | Path | VideoReader,
    *,
    model: str = "lk",
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    queries: str | Path | np.ndarray | None = None,
    points: Sequence[str] = (),
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    max_size: int | None = None,
    weights: str | Path | None = None,
    device: str = "auto",
    resolution: tuple[int, int] | None = None,
    backward: bool = False,
    precision: str = "auto",
    vis_threshold: float | None = None,
    support_grid: bool = True,
    progress: Callable[[int], None] | None = None,
    quiet: bool = True,
    tracker: Tracker | None = None,
) -> TrackResult:
    """Track points through ``video`` (a file ffmpeg reads, a folder of numbered images, or a VideoReader).

    Queries: any mix of ``grid`` (N x N points on ``grid_frame``, official RealTracker placement),
    ``mask`` (grid points where the mask image is non-zero), ``queries`` (CSV/NPY/JSON file or an array
    ``[N, 3]`` of (t, x, y)) and ``points`` (``"t,x,y"`` strings); t is a source frame number, x, y are
    pixels of the original video. With none given, a 10x10 grid on the first frame.

    Returns a :class:`TrackResult` with tracks ``[T, N, 2]`` in original pixels.
    """
    if isinstance(video, VideoReader):
        reader = video  # already opened with its selection (start/end/stride/max_size are ignored)
    else:
        reader = open_video(video, start=start, end=end, stride=stride, max_size=max_size)
    model_hw = tuple(resolution) if resolution else Q.MODEL_RESOLUTION
    q, explicit = build_queries(
        reader, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=points, model_hw=model_hw
    )
    if tracker is None:
        tracker = build_tracker(
            model, weights=str(weights) if weights else None, device=device, resolution=resolution,
            backward=backward, precision=precision, quiet=quiet, vis_threshold=vis_threshold,
            support_grid=support_grid and explicit,
        )
    t0 = time.perf_counter()
    tracks, vis, prob, conf = run_tracker(tracker, reader, q, progress)
    elapsed = time.perf_counter() - t0
    meta = {
        "command": " ".join(sys.argv),
        "video": str(reader.path.resolve()),
        "coordinates": COORDINATES,
        "queries_t": "source frame number (see frame_indices)",
        "model": tracker.name,
        "tracker_settings": tracker.settings(),
        "weights": tracker.weights_info or "none (weight-free tracker)",
        "start": start, "end": end, "stride": stride, "max_size": max_size,
        "tracked_size": [reader.width, reader.height],
        "seconds": round(elapsed, 3),
    }
    return TrackResult(
        tracks=tracks, visibility=vis, visibility_prob=prob, confidence=conf, queries=q,
        frame_indices=reader.frame_indices, fps=reader.fps, size=reader.source_size, model=tracker.name, meta=meta,
    )


def write_outputs(
    result: TrackResult,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("npz", "csv"),
    overlay: bool = True,
    video: VideoReader | None = None,
    extra_npz: dict[str, dict[str, np.ndarray]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``tracks.npz`` / ``tracks.csv`` / ``overlay.mp4`` (and ``extra_npz`` files) into ``out_dir``.

    Every file is written atomically. ``video`` (the same selection as the result) is needed for the overlay.
    """
    from .io.atomic import ensure_out_dir
    from .io.overlay import write_overlay
    from .io.writers import save_arrays, save_csv, save_npz

    out = ensure_out_dir(out_dir)
    written: list[Path] = []
    if "npz" in formats:
        written.append(save_npz(result, out / "tracks.npz"))
    if "csv" in formats:
        written.append(save_csv(result, out / "tracks.csv"))
    for name, arrays in (extra_npz or {}).items():
        written.append(save_arrays(arrays, out / name))
    if overlay:
        if video is None:
            raise ValueError("the overlay needs the video")
        q_index = np.searchsorted(result.frame_indices, result.queries[:, 0].astype(np.int64))
        fps = result.fps / max(1, int(video.frame_indices[1] - video.frame_indices[0]) if len(video.frame_indices) > 1 else 1)
        written.append(
            write_overlay(video.source_frames(), result.tracks, result.visibility, q_index, result.queries[:, 2],
                          fps, out / "overlay.mp4", progress)
        )
    return written
