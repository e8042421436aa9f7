"""A small TrackResult with named points, gaps and skipped frames, for the export-format tests.

Three points (``nose``, ``ear``, ``p2``) on source frames 2, 4, 6, 8 of a 64x48 video (``--start 2 --stride 2``):
``ear`` has no estimate on frame 2 (NaN), ``p2`` is estimated but not visible on frame 6.
"""
from __future__ import annotations

import numpy as np

from pointtrack_cli.result import TrackResult

NAMES = ["nose", "ear", "p2"]
FRAMES = np.array([2, 4, 6, 8])
SIZE = (64, 48)


def named_result() -> TrackResult:
    T, N = len(FRAMES), len(NAMES)
    t = np.arange(T, dtype=np.float32)[:, None]
    tracks = np.stack([10 + 2 * t + np.arange(N) * 15, 5 + t + np.arange(N) * 10], axis=-1).astype(np.float32)
    tracks[0, 1] = np.nan
    vis = np.ones((T, N), bool)
    vis[0, 1] = False
    vis[2, 2] = False
    prob = np.where(vis, 0.9, 0.2).astype(np.float32)
    prob[0, 1] = 0.0
    conf = np.full((T, N), 0.75, np.float32)
    queries = np.array([[2, 10, 5], [4, 27, 16], [2, 40, 25]], np.float32)
    return TrackResult(tracks=tracks, visibility=vis, visibility_prob=prob, confidence=conf, queries=queries,
                       frame_indices=FRAMES, fps=25.0, size=SIZE, model="lk", point_names=NAMES,
                       meta={"video": "/data/mouse.mp4", "command": "ptrack track mouse.mp4"})
