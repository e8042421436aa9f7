"""Pixel geometry shared by queries and trackers: the official grid and the resize maps between frames.

Coordinates are pixels, x before y. ``model_to_input``/``input_to_model`` are the align_corners=True maps
of the RealTracker predictor (``x_in = x_m (W - 1) / (w_m - 1)``); teachers ported from the Track-On-R
wrappers use their own corner-convention maps (``trackers/teacher.py``).
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
