"""Query sampling for pseudo-label fine-tuning (spec ``realtracker.md`` sec. 14, ``get_sift_sampled_pts``).

Queries are rows ``(t, x, y)``: ``t`` a frame index of the clip, ``x, y`` pixels of the training-size frames.
"""
from __future__ import annotations

import cv2
import numpy as np

SIFT_FRAMES = 8
EARLY_FRACTION = 0.25


def sift_frames(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """The 8 frames SIFT runs on: drawn uniformly (with repetition) from ``[0, int(0.25 T)]`` (inclusive).

    Biased towards the start so that points are tracked over most of the clip.
    """
    hi = int(EARLY_FRACTION * num_frames)
    return rng.integers(0, hi + 1, size=SIFT_FRAMES)


def sift_queries(frames: np.ndarray, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """SIFT keypoints as queries: ``([N, 3] float32 (t, x, y), enough)``.

    frames: uint8 ``[T, H, W, 3]`` RGB. On each of the 8 frames of :func:`sift_frames`, OpenCV SIFT with
    ``nfeatures = N // 8`` keeps its strongest keypoints; each gives ``(frame, int(x), int(y))`` (truncated),
    in the order found; the first ``N`` are kept. The RGB frame goes to OpenCV as is, so its grey
    conversion treats it as BGR (the official quirk, kept so the same points are found).

    If fewer than ``N`` keypoints are found the queries are ``N`` uniform random points (frame from
    the same early range, position over the frame) and ``enough`` is False: the official recipe then
    zeroes the sample's loss mask (the caller does that).
    """
    t, h, w = frames.shape[:3]
    if num_points < 1:
        raise ValueError("num_points must be >= 1")
    per_frame = max(1, num_points // SIFT_FRAMES)
    sift = cv2.SIFT_create(nfeatures=per_frame)
    rows: list[tuple[float, float, float]] = []
    for f in sift_frames(t, rng):
        keypoints = sift.detect(np.ascontiguousarray(frames[int(f)]), None)
        rows.extend((float(f), float(int(kp.pt[0])), float(int(kp.pt[1]))) for kp in keypoints)
    if len(rows) >= num_points:
        return np.asarray(rows[:num_points], dtype=np.float32), True
    return random_queries(num_points, t, (h, w), rng), False


def random_queries(num_points: int, num_frames: int, hw: tuple[int, int], rng: np.random.Generator,
                   early: bool = True) -> np.ndarray:
    """``[N, 3]`` uniform random queries: frame in ``[0, int(0.25 T)]`` (or any frame if not ``early``), x, y in the frame."""
    h, w = hw
    hi = int(EARLY_FRACTION * num_frames) if early else num_frames - 1
    t = rng.integers(0, hi + 1, size=num_points).astype(np.float32)
    x = rng.uniform(0, w - 1, size=num_points).astype(np.float32)
    y = rng.uniform(0, h - 1, size=num_points).astype(np.float32)
    return np.stack([t, x, y], axis=1)
