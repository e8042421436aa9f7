"""Pyramidal Lucas-Kanade tracker (OpenCV), forward-backward checked. Needs no weights.

Each point is tracked frame to frame from its query frame forward to the end and backward to
frame 0. A step is trusted when LK converges, the point stays inside the frame and tracking the
result back lands within ``fb_threshold`` pixels of where it started. A point whose step fails,
leaves the frame or is off by more than ``lost_factor * fb_threshold`` is lost for the rest of
that sweep (plain LK cannot re-identify it) and keeps its last estimate, marked not visible.

Frames are streamed once; grey copies are spilled to a temporary memory-mapped file only when a
backward pass is needed, so memory does not grow with video length.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import PtrackError
from .base import BuildOptions, FrameSource, ProgressFn, Tracker, TrackOutput


class LKTracker(Tracker):
    """Pyramidal LK with forward-backward consistency.

    visibility_prob = 2^-(fb/fb_threshold)^2 (0.5 exactly at the threshold), zero when LK fails or the
    point is outside the frame; visible = visibility_prob > 0.5. confidence = exp(-err/err_scale) with
    err OpenCV's mean absolute patch difference (grey levels), a measure of appearance agreement.
    """

    name = "lk"
    streaming = True

    def __init__(
        self,
        backward: bool = True,
        win_size: int = 21,
        max_level: int = 3,
        fb_threshold: float = 1.0,
        err_scale: float = 20.0,
        lost_factor: float = 3.0,
    ) -> None:
        self.backward = backward
        self.win_size = win_size
        self.max_level = max_level
        self.fb_threshold = fb_threshold
        self.err_scale = err_scale
        self.lost_factor = lost_factor
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)

    def settings(self) -> dict:
        return {
            "win_size": self.win_size,
            "max_level": self.max_level,
            "fb_threshold_px": self.fb_threshold,
            "vis_threshold": 0.5,
            "backward": self.backward,
        }

    def memory_bytes(self, num_frames: int, num_points: int, frame_hw: tuple[int, int]) -> int:
        """float64 tracks and float32 probability/confidence while sweeping (24 bytes per point and frame); the
        grey frames of the backward pass go to a memory-mapped file, not to memory."""
        return 24 * num_frames * num_points

    def _step(self, grey_a: np.ndarray, grey_b: np.ndarray, pts: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Track ``pts`` [K, 2] from grey image a to b; returns new points, vis prob, confidence, lost flags."""
        p0 = pts.astype(np.float32).reshape(-1, 1, 2)
        lk = dict(winSize=(self.win_size, self.win_size), maxLevel=self.max_level, criteria=self._criteria)
        p1, st1, err = cv2.calcOpticalFlowPyrLK(grey_a, grey_b, p0, None, **lk)
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(grey_b, grey_a, p1, None, **lk)
        p1 = p1.reshape(-1, 2).astype(np.float64)
        fb = np.linalg.norm(p0b.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & np.isfinite(p1).all(axis=1)
        h, w = hw
        inside = (p1[:, 0] >= -0.5) & (p1[:, 0] <= w - 0.5) & (p1[:, 1] >= -0.5) & (p1[:, 1] <= h - 0.5)
        prob = np.where(ok & inside, np.exp2(-np.square(fb / self.fb_threshold)), 0.0)
        # err is undefined where LK failed (may be garbage or negative): only read it where ok.
        conf = np.where(ok, np.exp(-np.clip(np.nan_to_num(err.ravel(), nan=np.inf), 0, None) / self.err_scale), 0.0)
        # Plain LK cannot re-identify a point: once it fails, leaves the frame or jumps (large forward-backward
        # error), any later "track" would follow some other texture. Such points are lost for the sweep.
        lost = ~ok | ~inside | (fb > self.lost_factor * self.fb_threshold)
        new = np.where(lost[:, None], pts, p1)
        return new, prob.astype(np.float32), conf.astype(np.float32), lost

    def _sweep(self, frames, q: np.ndarray, forward: bool, out: tuple[np.ndarray, ...], hw: tuple[int, int]) -> int:
        """Track through ``frames`` ((t, grey) pairs in sweep order), filling ``out`` = (tracks, prob, conf).

        Forward: points start at their query frame and move to later frames; backward: to earlier ones.
        Returns the number of frames seen.
        """
        tracks, prob, conf = out
        qt = q[:, 0].astype(np.int64)
        cur = q[:, 1:3].copy()
        lost = np.zeros(len(q), bool)
        prev, seen = None, 0
        for t, grey in frames:
            started = qt < t if forward else qt > t
            active = np.nonzero(started & ~lost)[0]
            if prev is not None and len(active):
                cur[active], prob[t, active], conf[t, active], dead = self._step(prev, grey, cur[active], hw)
                lost[active] |= dead
            tracks[t, started] = cur[started]  # lost points keep their last estimate, visibility 0
            if forward:
                here = qt == t
                tracks[t, here] = q[here, 1:3]
                prob[t, here], conf[t, here] = 1.0, 1.0
            prev, seen = grey, seen + 1
        return seen

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        q = np.asarray(queries, dtype=np.float64)
        T, N = video.num_frames, len(q)
        out = (np.full((T, N, 2), np.nan, np.float64), np.zeros((T, N), np.float32), np.zeros((T, N), np.float32))
        need_bw = self.backward and bool((q[:, 0] > 0).any())
        hw = (video.height, video.width)
        with tempfile.TemporaryDirectory(prefix="ptrack_lk_") as tmp:
            greys = None
            if need_bw:
                greys = np.lib.format.open_memmap(Path(tmp) / "grey.npy", mode="w+", dtype=np.uint8, shape=(T, *hw))

            def forward_frames():
                for t, frame in enumerate(video):
                    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                    if greys is not None:
                        greys[t] = grey
                    yield t, grey
                    if progress:
                        progress(1)

            seen = self._sweep(forward_frames(), q, True, out, hw)
            if seen < T:  # the container announced more frames than it decoded
                out, T = tuple(a[:seen] for a in out), seen
            if greys is not None:
                self._sweep(((t, np.asarray(greys[t])) for t in range(T - 1, -1, -1)), q, False, out, hw)
                del greys
        tracks, prob, conf = out
        return TrackOutput(tracks=tracks, visibility=prob > 0.5, visibility_prob=prob, confidence=conf)


def build(opts: BuildOptions, weights: str | None) -> LKTracker:
    """The registry's builder (LK always tracks both ways and needs no weights)."""
    if weights is not None:
        raise PtrackError("--weights is not used by --model lk (a weight-free tracker): drop it, or choose a model with weights")
    return LKTracker(backward=True)
