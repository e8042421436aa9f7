"""Query points: grids, masks, CSV/NPY/JSON files and ``--point t,x,y``.

Queries are float arrays ``[N, 3]`` with rows ``(t, x, y)``: ``t`` the frame index (after
``--start``/``--stride`` selection), ``x, y`` pixels of the original video, (0, 0) = centre of the
top-left pixel (the OpenCV convention).
"""
from __future__ import annotations

import numpy as np

MODEL_RESOLUTION = (384, 512)  # (h, w) the official RealTracker predictor places its grid at


def official_grid(g: int, h: float, w: float) -> np.ndarray:
    """The official ``get_points_on_a_grid(g, (h, w))``: ``[g*g, 2]`` (x, y), row-major (x fastest).

    Margin ``w/64`` on both axes (sic), spanning ``[m, w - m]`` / ``[m, h - m]``; ``g == 1`` gives the
    single point ``(w/2, h/2)``. Computed in float64.
    """
    if g < 1:
        raise ValueError("grid size must be >= 1")
    if g == 1:
        return np.array([[w / 2.0, h / 2.0]], dtype=np.float64)
    m = w / 64.0
    xs = np.linspace(m, w - m, g)
    ys = np.linspace(m, h - m, g)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.reshape(-1), gy.reshape(-1)], axis=-1)


def model_to_input(xy: np.ndarray, model_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Map pixel coordinates from the model frame to the input frame (align_corners=True resize).

    ``x_in = x_m * (W - 1) / (w_m - 1)``, likewise for y, as the official predictor does.
    """
    (hm, wm), (H, W) = model_hw, input_hw
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] *= (W - 1) / max(wm - 1, 1)
    out[..., 1] *= (H - 1) / max(hm - 1, 1)
    return out


def input_to_model(xy: np.ndarray, model_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`model_to_input`: ``x_m = x_in * (w_m - 1) / (W - 1)``."""
    (hm, wm), (H, W) = model_hw, input_hw
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] *= (wm - 1) / max(W - 1, 1)
    out[..., 1] *= (hm - 1) / max(H - 1, 1)
    return out


# --- user query sources --------------------------------------------------------------------------
import csv as _csv  # noqa: E402
import json as _json  # noqa: E402
from pathlib import Path  # noqa: E402

from .errors import PtrackError  # noqa: E402


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
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise PtrackError(f"cannot read {path}: {exc} (expected a float array [N, 3] of t, x, y)") from None
        return _check_rows(arr, str(path))
    if suffix == ".json":
        try:
            data = _json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PtrackError(f"{path} is not valid JSON: {exc}") from None
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
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise PtrackError(f"{path} is not a text CSV file (expected header t,x,y)") from None
    reader = _csv.reader(lines)
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
    import cv2

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
