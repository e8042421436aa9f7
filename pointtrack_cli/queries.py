"""Query points from every source: grids, masks, CSV/NPY/JSON files and ``--point t,x,y``; checked against a video.

Queries are float arrays ``[N, 3]`` with rows ``(t, x, y)``: ``t`` a source frame number, ``x, y`` pixels of
the original video, (0, 0) = centre of the top-left pixel (the OpenCV convention). Grids are placed as the
official RealTracker predictor places them: at the model resolution, then mapped to the video.

Limits, checked before anything is allocated: a query file holds at most :data:`MAX_QUERY_ROWS` rows; a grid
whose arrays cannot fit in memory is refused with the estimate (:func:`~pointtrack_cli.device.check_memory`);
more points on one frame than the frame has pixels is allowed but warned about (``warnings.warn``).
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .device import OUTPUT_BYTES_PER_POINT_FRAME, check_memory
from .errors import PtrackError
from .geometry import MODEL_RESOLUTION, model_to_input, official_grid
from .io.video import Video

DEFAULT_GRID = 10  # with no query source at all
MAX_QUERY_ROWS = 1_000_000
"""Most rows a query file may hold (CSV, NPY or JSON): a million points already need ~48 MB per tracked frame."""


def _too_many(path: Path, n: int | str) -> PtrackError:
    return PtrackError(f"{path} holds {n} queries, more than the {MAX_QUERY_ROWS:,} a query file may hold "
                       "(split the points over several runs)")



def _check_rows(rows: np.ndarray, source: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise PtrackError(f"{source}: queries must be rows of (t, x, y), got shape {rows.shape}")
    bad = np.nonzero(~np.isfinite(rows).all(axis=1))[0]
    if len(bad):
        raise PtrackError(f"{source}: query {int(bad[0])} has NaN or infinite values (give finite t, x, y)")
    return rows


def parse_point(text: str) -> np.ndarray:
    """``"t,x,y"`` -> ``[1, 3]``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise PtrackError(f"--point {text!r} is not t,x,y (e.g. --point 0,120.5,64)")
    return _check_rows(np.array([vals]), f"--point {text}")


def load_query_file(path: str | Path) -> np.ndarray:
    """Queries ``[N, 3]`` (t, x, y) from a CSV (header ``t,x,y`` or ``frame,x,y``), ``.npy`` or ``.json``.

    JSON: a list of ``[t, x, y]`` or of objects with keys ``t``/``frame``, ``x``, ``y``.
    """
    path = Path(path)
    if not path.is_file():
        raise PtrackError(f"queries file not found: {path} (check the path given to --queries)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")  # the header first: refuse huge files unread
        except Exception as exc:
            raise PtrackError(f"cannot read {path}: {exc} (expected a float array [N, 3] of t, x, y)") from None
        if arr.ndim >= 1 and arr.shape[0] > MAX_QUERY_ROWS:
            raise _too_many(path, f"{arr.shape[0]:,}")
        if arr.dtype.kind not in "biuf":
            raise PtrackError(f"{path}: queries must be numbers (t, x, y), got an array of dtype {arr.dtype}")
        return _check_rows(np.array(arr), str(path))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a UTF-8 BOM is skipped
        except (ValueError, UnicodeDecodeError) as exc:
            raise PtrackError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, list) and len(data) > MAX_QUERY_ROWS:
            raise _too_many(path, f"{len(data):,}")
        rows = []
        for i, item in enumerate(data if isinstance(data, list) else [None]):
            if isinstance(item, dict):
                t = item.get("t", item.get("frame"))
                row = [t, item.get("x"), item.get("y")]
            else:
                row = item
            try:
                rows.append([float(v) for v in row])
                if len(row) != 3:
                    raise ValueError
            except (TypeError, ValueError):
                raise PtrackError(f"{path}: entry {i} is not (t, x, y) (use [t, x, y] or {{\"t\":..,\"x\":..,\"y\":..}})") from None
        return _check_rows(np.array(rows).reshape(-1, 3), str(path))
    # CSV (any other suffix)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Excel's UTF-8 BOM is not a header char
    except UnicodeDecodeError:
        raise PtrackError(f"{path} is not a text CSV file (expected header t,x,y)") from None
    reader = csv.reader(lines)
    header = next(reader, None)
    cols = [c.strip().lower() for c in header] if header else []
    tcol = "t" if "t" in cols else ("frame" if "frame" in cols else None)
    if tcol is None or "x" not in cols or "y" not in cols:
        raise PtrackError(f"{path}, line 1: header must contain t (or frame), x and y, got {','.join(cols) or 'nothing'}")
    idx = [cols.index(tcol), cols.index("x"), cols.index("y")]
    rows = []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        try:
            row = [float(rec[i]) for i in idx]
        except (ValueError, IndexError):
            raise PtrackError(f"{path}, line {lineno}: expected numbers for t, x, y, got {','.join(rec)!r}") from None
        if not np.isfinite(row).all():
            raise PtrackError(f"{path}, line {lineno}: NaN or infinite value (give finite t, x, y)")
        rows.append(row)
        if len(rows) > MAX_QUERY_ROWS:
            raise _too_many(path, "more than that")
    if not rows:
        raise PtrackError(f"{path} holds no queries (add rows t,x,y below the header)")
    return np.array(rows, dtype=np.float64)


def grid_queries(
    g: int, frame: int, size: tuple[int, int], model_hw: tuple[int, int] = MODEL_RESOLUTION,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """``g x g`` grid at source frame ``frame`` as the official predictor places it: ``[K, 3]`` (t, x, y).

    Placed at the model resolution ``model_hw`` and mapped to input pixels of ``size`` (w, h). With a mask
    ``[h_m, w_m]`` (already resized to the model resolution), only points on non-zero mask pixels are kept,
    read at the rounded grid positions as the official predictor does.
    """
    if g < 1:
        raise PtrackError(f"--grid must be >= 1, got {g}")
    hm, wm = model_hw
    pts = official_grid(g, hm, wm)
    if mask is not None:
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, wm - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, hm - 1)
        pts = pts[mask[yi, xi] > 0]
        if len(pts) == 0:
            raise PtrackError("the mask selects none of the grid points (use a larger mask or a denser --grid)")
    w, h = size
    xy = model_to_input(pts, model_hw, (h, w))
    return np.concatenate([np.full((len(xy), 1), float(frame)), xy], axis=1)


def load_mask(path: str | Path, model_hw: tuple[int, int] = MODEL_RESOLUTION) -> np.ndarray:
    """Mask image -> ``[h_m, w_m]`` uint8 at the model resolution (nearest neighbour), non-zero = keep."""
    path = Path(path)
    if not path.is_file():
        raise PtrackError(f"mask not found: {path} (check the path given to --mask)")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PtrackError(f"cannot read mask {path} (give a PNG/JPG image, non-zero where points should go)")
    if img.ndim == 3:
        img = img.max(axis=2)
    if not (img > 0).any():
        raise PtrackError(f"mask {path} is empty (all zero): mark the region to track with non-zero pixels")
    hm, wm = model_hw
    return cv2.resize((img > 0).astype(np.uint8), (wm, hm), interpolation=cv2.INTER_NEAREST)


def build_queries(
    video: Video,
    *,
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    queries: str | Path | np.ndarray | None = None,
    points: Sequence[str] = (),
    model_hw: tuple[int, int] = MODEL_RESOLUTION,
) -> tuple[np.ndarray, bool]:
    """All query sources combined: ``([N, 3] (t, x, y) in source pixels with source frame numbers, explicit)``.

    ``explicit`` is True when any point came from a file, ``--point`` or a mask (the official predictor then
    adds its support grid). With no source at all, a 10x10 grid is used.
    """
    if grid is not None and grid < 1:
        raise PtrackError(f"--grid {grid}: give at least 1 (a GRID x GRID lattice of points), or leave it out")
    parts: list[np.ndarray] = []
    explicit = False
    if queries is not None:
        parts.append(queries if isinstance(queries, np.ndarray) else load_query_file(queries))
        explicit = True
        _warn_if_denser_than_pixels(parts[-1], video, "the queries")
    for p in points:
        parts.append(parse_point(p))
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
        explicit = explicit or mask is not None
    q = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in parts], axis=0)
    return q, explicit


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


def validate_queries(q: np.ndarray, video: Video) -> np.ndarray:
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
