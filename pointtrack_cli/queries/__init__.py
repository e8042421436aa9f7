"""Query points from every source: grids, masks, CSV/NPY/JSON/COCO files and ``--point [NAME=]t,x,y``; checked
against a video; named points with several anchors, merged per frame.

Queries are float arrays ``[N, 3]`` with rows ``(t, x, y)``: ``t`` a source frame number, ``x, y`` pixels of
the original video, (0, 0) = centre of the top-left pixel (the OpenCV convention). Grids are placed as the
official RealTracker predictor places them: at the model resolution, then mapped to the video.

Points have names (files' ``name`` column, ``--point NAME=t,x,y``, COCO keypoint names; unnamed points are
``p<index>``); rows sharing a name are one point's anchors (:mod:`.points`), each tracked as its own query and
merged frame by frame (:mod:`.anchors`). :func:`build_query_set` gives the points and anchors,
:func:`build_queries` the plain rows.

Limits, checked before anything is allocated: a query file holds at most :data:`MAX_QUERY_ROWS` rows; a grid
whose arrays cannot fit in memory is refused with the estimate (:func:`~pointtrack_cli.device.check_memory`);
more points on one frame than the frame has pixels is allowed but warned about (``warnings.warn``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..device import OUTPUT_BYTES_PER_POINT_FRAME, check_memory
from ..errors import PtrackError
from ..geometry import MODEL_RESOLUTION
from ..io.video import Video
from .anchors import ANCHOR_RULE, attach_points, gather, merge_anchors
from .files import read_query_file
from .grid import grid_queries, load_mask
from .points import NAME_PATTERN, QuerySet, default_name, group_points, parse_named_point, parse_point

__all__ = ["ANCHOR_RULE", "DEFAULT_GRID", "MAX_QUERY_ROWS", "NAME_PATTERN", "QuerySet", "attach_points", "build_queries",
           "build_query_set", "check_grid_memory", "default_name", "gather", "grid_queries", "group_points", "load_mask",
           "load_named_query_file", "load_query_file", "merge_anchors", "parse_named_point", "parse_point",
           "validate_queries"]

DEFAULT_GRID = 10  # with no query source at all
MAX_QUERY_ROWS = 1_000_000
"""Most rows a query file may hold (CSV, NPY or JSON): a million points already need ~48 MB per tracked frame."""


def load_named_query_file(path: str | Path) -> tuple[np.ndarray, list]:
    """Rows ``[K, 3]`` (t, x, y) and a name or None per row, from a CSV (header ``t,x,y`` or ``frame,x,y``, optional
    ``name``), ``.npy``, ``.json`` (rows, or objects with an optional ``name``) or a COCO keypoints ``.json``."""
    return read_query_file(path, MAX_QUERY_ROWS)  # the limit read now: tests and callers may lower it


def load_query_file(path: str | Path) -> np.ndarray:
    """Queries ``[N, 3]`` (t, x, y) from a query file (see :func:`load_named_query_file`), names dropped."""
    return load_named_query_file(path)[0]


def build_query_set(
    video: Video,
    *,
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    queries: str | Path | np.ndarray | None = None,
    points: Sequence[str] = (),
    model_hw: tuple[int, int] = MODEL_RESOLUTION,
) -> QuerySet:
    """All query sources combined into named points and their anchors (a :class:`QuerySet`).

    Order: the file's rows, then ``points`` (``"t,x,y"`` or ``"NAME=t,x,y"``), then the grid (or mask) points,
    which are unnamed. ``explicit`` is True when any point came from a file, ``--point`` or a mask (the official
    predictor then adds its support grid). With no source at all, a 10x10 grid is used.
    """
    if grid is not None and grid < 1:
        raise PtrackError(f"--grid {grid}: give at least 1 (a GRID x GRID lattice of points), or leave it out")
    parts: list[np.ndarray] = []
    names: list = []
    explicit = False
    if queries is not None:
        if isinstance(queries, np.ndarray):
            rows, given = queries, [None] * len(queries.reshape(-1, 3))
        else:
            rows, given = load_named_query_file(queries)
        parts.append(rows)
        names += given
        explicit = True
        _warn_if_denser_than_pixels(parts[-1], video, "the queries")
    for p in points:
        row, name = parse_named_point(p)
        parts.append(row)
        names.append(name)
        explicit = True
    if grid is not None or mask is not None or not parts:
        frame = int(video.frame_indices[0]) if grid_frame is None else int(grid_frame)
        m = load_mask(mask, model_hw) if mask is not None else None
        g = DEFAULT_GRID if grid is None else int(grid)
        check_grid_memory(g, video.num_frames)
        w, h = video.source_size
        if g * g > w * h:
            warnings.warn(f"--grid {g} places {g * g:,} points on a {w}x{h} frame, more points than pixels "
                          "(neighbours will track the same pixel; a smaller --grid is as informative)", stacklevel=2)
        parts.append(grid_queries(g, frame, video.source_size, model_hw, m))
        names += [None] * len(parts[-1])
        explicit = explicit or mask is not None
    q = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in parts], axis=0)
    return group_points(q, names, explicit)


def build_queries(video: Video, **sources) -> tuple[np.ndarray, bool]:
    """All query sources combined: ``([A, 3] (t, x, y) in source pixels with source frame numbers, explicit)``.

    ``sources``: the keyword arguments of :func:`build_query_set` (grid, grid_frame, mask, queries, points,
    model_hw). The rows are its anchors, one per row, grouped by point (without names or repeated names: the file's
    rows, then ``points``, then the grid, as given). ``explicit`` is True when any point came from a file,
    ``--point`` or a mask. With no source at all, a 10x10 grid is used.
    """
    qs = build_query_set(video, **sources)
    return qs.rows, qs.explicit


def check_grid_memory(g: int, num_frames: int) -> None:
    """Refuse a ``g x g`` grid whose arrays cannot fit in memory, before building it (one line, the estimate)."""
    n = g * g
    # grid placement (float64 x, y), the queries (float64 t, x, y), then the outputs over every frame
    needed = n * (16 + 24) + n * max(1, num_frames) * OUTPUT_BYTES_PER_POINT_FRAME
    check_memory(needed, f"--grid {g} ({n:,} points over {num_frames} frames)",
                 "track fewer points (a smaller --grid) or fewer frames (--end, --stride)")


def _warn_if_denser_than_pixels(q: np.ndarray, video: Video, what: str) -> None:
    """Warn when more points sit on one frame than it has pixels (allowed: points may share a pixel)."""
    q = np.asarray(q, np.float64).reshape(-1, 3)
    w, h = video.source_size
    if len(q) <= w * h:
        return
    _, counts = np.unique(q[:, 0], return_counts=True)
    if counts.max() > w * h:
        warnings.warn(f"{what} put {int(counts.max()):,} points on one {w}x{h} frame, more points than pixels "
                      "(neighbours will track the same pixel)", stacklevel=3)


def validate_queries(q: np.ndarray, video: Video, names: Sequence[str] | None = None) -> np.ndarray:
    """Check queries against the video; returns each query's index into the selected frames ``[N]``.

    names: the point name of each query, for the messages (``query 3 (nose)``).
    """
    if not np.isfinite(q).all():
        raise PtrackError("queries contain NaN or infinite values (give finite t, x, y)")
    w, h = video.source_size
    last = int(video.source_num_frames - 1)
    label = (lambda i: f"query {i}") if names is None else (lambda i: f"query {i} ({names[i]})")  # noqa: E731
    for i, (t, x, y) in enumerate(q):
        if t != int(t) or t < 0:
            raise PtrackError(f"{label(i)}: frame {t:g} is not a frame number (use an integer >= 0)")
        if t > last:
            raise PtrackError(f"{label(i)}: frame {int(t)} is beyond the last frame ({last}) of the video")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise PtrackError(
                f"{label(i)}: ({x:g}, {y:g}) is outside the {w}x{h} frame (x in [0, {w - 1}], y in [0, {h - 1}])"
            )
    pos = np.searchsorted(video.frame_indices, q[:, 0].astype(np.int64))
    pos = np.clip(pos, 0, len(video.frame_indices) - 1)
    missing = np.nonzero(video.frame_indices[pos] != q[:, 0].astype(np.int64))[0]
    if len(missing):
        i = int(missing[0])
        raise PtrackError(
            f"{label(i)}: frame {int(q[i, 0])} is not among the tracked frames "
            f"({int(video.frame_indices[0])}..{int(video.frame_indices[-1])} step {video.frame_indices[1] - video.frame_indices[0] if len(video.frame_indices) > 1 else 1}); "
            "adjust --start/--end/--stride or the query"
        )
    return pos
