"""Optical-flow sources for ProTracker's chains, and bilinear sampling of dense fields.

Rules:

* A flow field is ``[H, W, 2]`` float32 (dx, dy) in pixels: the pixel at ``(x, y)`` of the source
  frame moves to ``(x + dx, y + dy)`` in the target frame. Frames are ``[H, W, 3]`` uint8 RGB.
* A source is anything with ``__call__(src, dst) -> flow`` and a ``name`` (:class:`FlowSource`);
  the built-in ones need no weights: OpenCV DIS (default, preset ``medium``) and Farneback.
* Sampling a field outside the image clamps to the border: the flow near the edge is the best
  guess for points that have just left the frame.
"""
from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from pointtrack_cli.errors import PtrackError


class FlowSource(Protocol):
    """Anything that computes dense flow between two frames of the same size."""

    name: str

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Flow ``[H, W, 2]`` float32 from ``src`` to ``dst`` (both ``[H, W, 3]`` uint8 RGB)."""
        ...


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow:
    """OpenCV's DIS optical flow (Kroeger et al. 2016): no weights, a few ms per 256x256 pair.

    ``preset`` is ``"ultrafast"``, ``"fast"`` or ``"medium"`` (more accurate, ~3x slower than fast).
    """

    def __init__(self, preset: str = "medium") -> None:
        if preset not in _DIS_PRESETS:
            raise PtrackError(f"unknown DIS preset {preset!r} (use one of {', '.join(_DIS_PRESETS)})")
        self.preset = preset
        self.name = f"dis-{preset}"
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        a = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY) if src.ndim == 3 else src
        b = cv2.cvtColor(dst, cv2.COLOR_RGB2GRAY) if dst.ndim == 3 else dst
        return self._dis.calc(a, b, None)


class FarnebackFlow:
    """OpenCV's Farneback flow: a second weight-free source (slower and blurrier than DIS)."""

    name = "farneback"

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        a = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY) if src.ndim == 3 else src
        b = cv2.cvtColor(dst, cv2.COLOR_RGB2GRAY) if dst.ndim == 3 else dst
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def make_flow_source(spec: str | FlowSource) -> FlowSource:
    """``"dis"`` / ``"dis-fast"`` / ``"dis-medium"`` / ``"dis-ultrafast"`` / ``"farneback"``, or a source object."""
    if not isinstance(spec, str):
        return spec
    if spec == "dis":
        return DISFlow("medium")
    if spec.startswith("dis-"):
        return DISFlow(spec[4:])
    if spec == "farneback":
        return FarnebackFlow()
    raise PtrackError(f"unknown flow source {spec!r} (use dis, dis-fast, dis-medium, dis-ultrafast or farneback)")


def sample_bilinear(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``field`` ``[H, W, C]`` at pixel positions ``xy`` ``[N, 2]`` (x, y) -> ``[N, C]``.

    Positions outside the image are clamped to the border (flow near the edge is the best guess
    for points that have just left the frame).
    """
    h, w = field.shape[:2]
    x = np.clip(xy[:, 0], 0.0, w - 1.0)
    y = np.clip(xy[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    ax = (x - x0)[:, None].astype(np.float32)
    ay = (y - y0)[:, None].astype(np.float32)
    top = field[y0, x0] * (1 - ax) + field[y0, x1] * ax
    bot = field[y1, x0] * (1 - ax) + field[y1, x1] * ax
    return (top * (1 - ay) + bot * ay).astype(np.float32)
