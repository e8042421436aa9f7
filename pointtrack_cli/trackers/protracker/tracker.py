"""The ProTracker :class:`~pointtrack_cli.trackers.base.Tracker`: working resolution, inputs and outputs.

What happens inside one run (chains, fusion, keypoints, filter, passes) is ``run.py``; this module
turns a video and queries into that run and its state into a :class:`TrackOutput`.

Rules:

* **Working resolution.** Thresholds are in working pixels, so frames whose longer side exceeds
  ``work_size`` are downscaled to it (``INTER_AREA``); queries go in and tracks come out through
  the pixel-centre map ``x_work = (x + 0.5) * s - 0.5``.
* **Memory.** The tracker needs the whole clip (``streaming=False``, ``read_all``); see ``run.py``.
* **Both directions.** Frames before a point's query frame are tracked too (``backward`` is True).
* **Masks** (``mask_video``) belong to source frames: the video's ``frame_indices`` (after
  ``--start``/``--stride``) pick them.
* **visibility_prob** is >= 0.5 exactly where the point is visible, and grows with the descriptor
  match: ``0.5 + 0.5 * clip((sim - thr) / (1 - thr))`` when visible, ``0.49 * clip(sim / thr)`` when
  occluded (0 when no chain reached the point), with ``thr = filter_threshold``.
* **confidence** is how tight the fused Gaussian is: ``1 / (1 + var / 4)`` (1 at the query, 0.5 at
  4 px^2 variance), halved where the point is occluded.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
from torch import nn

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.trackers.base import FrameSource, ProgressFn, Tracker, TrackOutput

from .config import ProTrackerConfig
from .descriptors import make_extractor
from .flow import FlowSource, make_flow_source
from .masks import MaskVideo
from .run import TrackingRun

RUN_OPTIONS = ("flow", "features", "fnet", "mask_video", "device")
"""Keyword arguments of :class:`ProTracker` besides its config (see :meth:`ProTracker.from_options`)."""


def check_option_names(options: dict) -> None:
    """Raise a :class:`PtrackError` naming the keys of ``options`` that are neither run options nor config fields."""
    knobs = {f.name for f in fields(ProTrackerConfig)}
    unknown = sorted(set(options) - knobs - set(RUN_OPTIONS))
    if unknown:
        raise PtrackError(f"unknown ProTracker option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(RUN_OPTIONS)}, {', '.join(sorted(knobs))})")


class ProTracker(Tracker):
    """Flow-chain + keypoint probabilistic tracker (see the package docstring). Weight-free by default.

    Args:
        config: the tuning knobs (:class:`ProTrackerConfig`; None: the defaults).
        flow: flow source: ``"dis"`` (= ``"dis-medium"``), ``"dis-fast"``, ``"dis-ultrafast"``,
            ``"farneback"`` or an object with ``__call__(src, dst) -> [H, W, 2]`` (see ``flow.py``).
        features: ``"patch"`` (default), ``"sift"`` or ``"realtracker"`` (needs ``fnet``).
        fnet: feature CNN for ``features="realtracker"`` (a loaded ``BasicEncoder``).
        mask_video: folder of per-frame object masks (optional, see ``masks.py``).
        device: torch device for ``fnet``.

    ``ProTracker.from_options(features="sift", keypoints=False)`` takes the same in one flat set of
    keywords. ``debug = True`` keeps the last run's state (``last_run``) with decision codes.
    """

    name = "protracker"
    streaming = False
    backward = True

    def __init__(
        self,
        config: ProTrackerConfig | None = None,
        *,
        flow: str | FlowSource = "dis",
        features: str = "patch",
        fnet: nn.Module | None = None,
        mask_video: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.extractor = make_extractor(features, fnet, device)
        self.flow = make_flow_source(flow)
        self.features = features
        self.config = (config or ProTrackerConfig()).for_features(features)
        self.mask_video = mask_video
        self.debug = False
        self.last_run: TrackingRun | None = None

    @classmethod
    def from_options(cls, **options) -> ProTracker:
        """A ProTracker from one flat set of keywords: :data:`RUN_OPTIONS` and :class:`ProTrackerConfig` fields.

        This is how the CLI's / API's ``options`` dict (``features``, ``flow``, ``mask_video``, ...) and the
        benchmarks' ablation switches (``keypoints=False``, ...) reach the tracker. Unknown names are a
        :class:`PtrackError`.
        """
        check_option_names(options)
        knobs = {f.name for f in fields(ProTrackerConfig)}
        config = ProTrackerConfig(**{k: v for k, v in options.items() if k in knobs})
        return cls(config, **{k: v for k, v in options.items() if k in RUN_OPTIONS})

    def settings(self) -> dict:
        c = self.config
        return {
            "flow": getattr(self.flow, "name", type(self.flow).__name__),
            "features": self.features,
            "intervals": list(c.intervals),
            "rho": c.rho,
            "fusion": c.fusion,
            "keypoints": c.keypoints,
            "backward_pass": c.backward_pass,
            "feature_filter": c.feature_filter,
            "filter_threshold": c.filter_threshold,
            "backward_min_sim": c.backward_min_sim,
            "reacquire_sim": c.reacquire_sim,
            "reacquire_frames": c.reacquire_frames,
            "kp_threshold": c.kp_threshold,
            "kp_margin": c.kp_margin,
            "kp_radius": c.kp_radius,
            "kp_radius_lost": c.kp_radius_lost,
            "kp_var": c.kp_var,
            "fb_threshold": c.fb_threshold,
            "flow_var0": c.flow_var0,
            "fb_var_gain": c.fb_var_gain,
            "min_contrast": c.min_contrast,
            "mask_video": None if self.mask_video is None else str(self.mask_video),
            "work_size": c.work_size,
        }

    def memory_bytes(self, num_frames: int, num_points: int, frame_hw: tuple[int, int]) -> int:
        """The whole clip at the working resolution (RGB), 27 bytes of estimates per point and frame, 13 KB of
        query patches per point and the flow cache (see ``run.py``)."""
        h, w = frame_hw
        work = self.config.work_size
        s = min(1.0, work / max(h, w)) if work else 1.0
        frames = num_frames * max(1, round(h * s)) * max(1, round(w * s)) * 3
        return int(frames + 27 * num_frames * num_points + 13_000 * num_points + self.config.flow_cache_mb * 2**20)

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        frames = np.asarray(video.read_all())
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise PtrackError(f"expected RGB frames [T, H, W, 3], got {frames.shape}")
        t_all, H, W = frames.shape[:3]
        q = np.asarray(queries, np.float64).reshape(-1, 3)
        n = len(q)
        qt = np.round(q[:, 0]).astype(np.int64)
        if n and (qt.min() < 0 or qt.max() >= t_all):
            raise PtrackError(f"query frame out of range: the video has {t_all} frames (0..{t_all - 1})")
        # Working resolution: thresholds are in working pixels, so large videos are downscaled.
        work_size = self.config.work_size
        s = 1.0
        if work_size is not None and max(H, W) > work_size:
            s = work_size / max(H, W)
        h, w = (max(1, round(H * s)), max(1, round(W * s))) if s != 1.0 else (H, W)
        sx, sy = w / W, h / H
        if (h, w) != (H, W):
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        qxy = np.stack([(q[:, 1] + 0.5) * sx - 0.5, (q[:, 2] + 0.5) * sy - 0.5], -1).astype(np.float32)
        masks = None
        if self.mask_video is not None:
            indices = np.asarray(getattr(video, "frame_indices", np.arange(t_all)), np.int64)[:t_all]
            masks = MaskVideo(self.mask_video, indices, (h, w))
        run = TrackingRun(self.config, self.flow, self.extractor, frames, qt, qxy, masks, progress, debug=self.debug)
        run.execute()
        if self.debug:
            self.last_run = run
        tracks = run.est.copy()
        tracks[..., 0] = (tracks[..., 0] + 0.5) / sx - 0.5
        tracks[..., 1] = (tracks[..., 1] + 0.5) / sy - 0.5
        vis = run.vis
        sim = np.nan_to_num(run.sim, nan=1.0)
        thr = self.config.filter_threshold
        # visibility_prob >= 0.5 exactly where visible; it grows with the descriptor match.
        span = max(1.0 - thr, 1e-6)
        p_vis = 0.5 + 0.5 * np.clip((sim - thr) / span, 0.0, 1.0)
        p_occ = 0.49 * np.clip(sim / max(thr, 1e-6), 0.0, 1.0) * run.had_chain
        vis_prob = np.where(vis, p_vis, p_occ)
        # Confidence: how tight the fused Gaussian is (1 at the query, 0.5 at 4 px^2 variance).
        conf = np.where(np.isfinite(run.var), 1.0 / (1.0 + np.nan_to_num(run.var, posinf=1e6) / 4.0), 0.0)
        conf = np.where(vis, conf, 0.5 * conf)
        return TrackOutput(tracks=tracks, visibility=vis, visibility_prob=vis_prob, confidence=conf)
