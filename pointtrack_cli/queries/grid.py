"""Grid and mask queries, placed as the official RealTracker predictor places them: at the model resolution, then
mapped to the video."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import PtrackError
from ..geometry import MODEL_RESOLUTION, model_to_input, official_grid


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
