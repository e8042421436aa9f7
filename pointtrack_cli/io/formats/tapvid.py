"""``--format tapvid``: the tracks as a TAP-Vid DAVIS pickle (``tapvid_davis.pkl``), so reviewed tracks become a local
benchmark: ``ptrack eval tapvid --dataset davis --data tapvid_davis.pkl --model ...``.

The pickle is ``{video name: {"video": uint8 [T, 256, 256, 3], "points": float32 [N, T, 2], "occluded": bool
[N, T]}}``, the layout of the official ``tapvid_davis.pkl`` that :mod:`pointtrack_cli.eval.datasets` reads:

* ``video``: the tracked frames resized to 256x256 (OpenCV, area filter when shrinking, Lanczos when growing).
  It holds every frame in memory while it is written: 192 KiB per frame (1,000 frames: 188 MiB).
* ``points``: x, y normalised so that ``points * 256`` are pixels of the 256x256 frames in ptrack's convention,
  (0, 0) the centre of the top-left pixel (the evaluation hands them to the tracker unchanged):
  ``x256 = (x + 0.5) * 256 / W - 0.5``, likewise y. 0 where there is no estimate.
* ``occluded``: True where the point is not visible or has no estimate.

The video name is the video's file (or folder) stem. Written with pickle protocol 4, whose arrays the
evaluation's restricted unpickler accepts.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ...errors import PtrackError
from ...result import TrackResult
from ..atomic import atomic_path
from .common import has_estimate, video_name

NAME = "tapvid_davis.pkl"
FILES = (NAME,)
SIZE = 256
PROTOCOL = 4


def resize_frame(frame: np.ndarray, size: int = SIZE) -> np.ndarray:
    """One RGB frame ``[H, W, 3]`` -> ``[size, size, 3]`` uint8."""
    h, w = frame.shape[:2]
    shrink = h >= size and w >= size
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)


def normalised_points(result: TrackResult, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(points ``[N, T, 2]`` float32 normalised, occluded ``[N, T]`` bool), see the module docstring."""
    w, h = result.size
    est = has_estimate(result)
    xy = result.tracks.astype(np.float64)
    x256 = (xy[..., 0] + 0.5) * size / w - 0.5
    y256 = (xy[..., 1] + 0.5) * size / h - 0.5
    pts = np.where(est[..., None], np.stack([x256, y256], axis=-1) / size, 0.0)
    occluded = ~(result.visibility & est)
    return pts.transpose(1, 0, 2).astype(np.float32), occluded.T.copy()


def save_tapvid(result: TrackResult, frames: Iterable[np.ndarray], path: str | Path) -> Path:
    """Write the TAP-Vid DAVIS pickle from ``result`` and its tracked frames at the original size, atomically."""
    path = Path(path)
    video = np.empty((result.num_frames, SIZE, SIZE, 3), np.uint8)
    n = 0
    for n, frame in enumerate(frames, start=1):
        if n > result.num_frames:
            break
        video[n - 1] = resize_frame(frame)
    if n < result.num_frames:
        raise PtrackError(f"the video gave {n} frames for the {result.num_frames} tracked ones (was it changed since "
                          "tracking?): track it again")
    points, occluded = normalised_points(result)
    data = {video_name(result): {"video": video, "points": points, "occluded": occluded}}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=PROTOCOL)
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``tapvid_davis.pkl`` in the output set ``outs``; ``video()`` gives the frames the result was tracked on."""
    with outs.path(NAME) as p:
        save_tapvid(result, video().source_frames(), p)
