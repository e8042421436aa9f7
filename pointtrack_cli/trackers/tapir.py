"""TAPIR and BootsTAPIR (``tapir``, ``bootstapir``) as :class:`Tracker`: the Track-On-R wrapper.

Reproduces gorkaydemir/track_on ``ensemble/bootstapir/bootstapir_predictor.py`` (``TAPIRPredictor``) around
the network of :mod:`pointtrack_cli.models.tapir`:

* frames as float 0..255 resized to ``S_h x S_w`` (256x256) with ``F.interpolate(mode="bilinear")``
  (align_corners=False), then mapped to [-1, 1] as ``x / 255 * 2 - 1``;
* query x scaled by ``S_w / W`` and y by ``S_h / H`` (tapnet's corner convention, no half-pixel shift) and
  handed to the model as (t, y, x);
* one model call over the whole clip: TAPIR is bidirectional, so every frame of every point is estimated
  (also before its query frame: ``backward`` is always True);
* outputs scaled back by ``W / S_w``, ``H / S_h``; ``visibility = (1 - sigmoid(occlusion)) *
  (1 - sigmoid(expected_dist)) > 0.5``.

ptrack's outputs: ``visibility_prob`` is that product (the probability the wrapper thresholds),
``confidence`` is ``1 - sigmoid(expected_dist)`` (the model's belief that its estimate is within its training
distance threshold of the truth).

Where ptrack deviates from the official wrapper (none changes a number beyond float rounding):

* resolution: the wrapper hard-codes 256x256; ``opts.resolution`` (``bootstapir@512x512``, ``--resolution``)
  replaces it. The network then adds refinement levels up to that size exactly as tapnet's model does for
  a larger input (tapnet's README: BootsTAPIR is often best at 512x512). Resolutions must be square and
  multiples of 8: the official PyTorch refinement samples non-square feature grids with the wrong x scale.
* frames are resized and encoded in chunks (never the whole clip as float), and points are refined in
  chunks sized by memory; the official random query permutation only reorders that work.
* memory: the clip's feature grids stay in memory for the whole run, so the tracker estimates what it
  needs before reading the video and refuses, with the estimate and the way out, when it does not fit.
* ``--vis-threshold`` replaces the 0.5 threshold on ``visibility_prob``.
* precision: always float32 (the official model runs float32; no GPU has measured bf16 against it).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PtrackError
from ..models.tapir import (
    ENCODER_CHUNK,
    INITIAL_RESOLUTION,
    NUM_PIPS_ITER,
    TAPIR,
    WORK_BYTES,
    feature_bytes_per_frame,
    load_tapir,
)
from .base import BuildOptions, FrameSource, ProgressFn, TrackOutput, Tracker
from .teacher import check_queries, resize_frames, scale_xy

VIS_THRESHOLD = 0.5
NATIVE_RESOLUTION = (256, 256)
GB = 1e9


def available_memory(device: torch.device) -> int | None:
    """Bytes the run can still allocate: free GPU memory on CUDA, ``MemAvailable`` on Linux, else None."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_resolution(hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in hw)
    if h != w or h % 8 or h < 64:
        raise PtrackError(
            f"TAPIR resolution {h}x{w} is not supported: it must be square and a multiple of 8, at least 64 "
            "(e.g. 256x256, the native one, or 512x512)"
        )
    return h, w


class TapirTracker(Tracker):
    """TAPIR / BootsTAPIR through the Track-On-R wrapper (see the module docstring)."""

    streaming = False
    backward = True

    def __init__(
        self,
        model: TAPIR,
        resolution: tuple[int, int] = NATIVE_RESOLUTION,
        device: str = "cpu",
        vis_threshold: float | None = None,
        memory_limit: int | None = None,
        name: str = "tapir",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.resolution = check_resolution(resolution)
        self.vis_threshold = float(VIS_THRESHOLD if vis_threshold is None else vis_threshold)
        self.memory_limit = memory_limit  # bytes; None = what the machine has available
        self.name = name

    # ---- settings and memory ------------------------------------------------------------------

    def settings(self) -> dict:
        m = self.model
        return {
            "model": self.name,
            "resolution": list(self.resolution),
            "initial_resolution": list(m.initial_resolution),
            "refinement_resolutions": [list(r) for r in m.levels_for(self.resolution)[1:]],
            "iters_per_level": m.num_pips_iter,
            "pyramid_level": m.pyramid_level,
            "extra_convs": m.extra_convs is not None,
            "visibility_rule": f"(1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > {self.vis_threshold}",
            "vis_threshold": self.vis_threshold,
            "confidence": "1 - sigmoid(expected_dist)",
            "coordinates": "Track-On-R wrapper: x * S_w / W, y * S_h / H in, inverse out (no half-pixel shift)",
            "precision": "fp32",
        }

    def memory_estimate(self, num_frames: int, height: int, width: int) -> dict[str, int]:
        """Bytes needed to track a clip of ``num_frames`` frames of ``height x width`` (besides the weights).

        frames: the decoded clip (uint8), held for the whole run; features: the feature grids at every
        resolution the network uses (:func:`~pointtrack_cli.models.tapir.feature_bytes_per_frame`); work: the
        encoder's activations for one chunk of frames plus the bounded temporaries of the tracking stage.
        """
        s = max(self.resolution)
        frames = num_frames * height * width * 3
        per_frame = feature_bytes_per_frame(self.resolution, self.model.pyramid_level, self.model.initial_resolution)
        features = num_frames * per_frame
        encoder = ENCODER_CHUNK * 64 * (s // 2) ** 2 * 4 * 6  # the widest ResNet activations, a few live copies
        work = encoder + 4 * WORK_BYTES
        return {"frames": frames, "features": features, "work": work, "total": frames + features + work}

    def check_memory(self, num_frames: int, height: int, width: int) -> None:
        """Raise :class:`PtrackError` with the estimate and the way out when the clip will not fit."""
        avail = self.memory_limit if self.memory_limit is not None else available_memory(self.device)
        if not avail or num_frames <= 0:
            return
        est = self.memory_estimate(num_frames, height, width)
        if est["total"] <= avail:
            return
        where = "GPU memory" if self.device.type == "cuda" else "memory"
        s_h, s_w = self.resolution
        ways = "track fewer frames (--end, --stride, or split the video)"
        if est["frames"] > 0.1 * est["total"]:
            ways += ", shrink the frames (--max-size)"
        if self.resolution != NATIVE_RESOLUTION:
            ways += f", or run at the native 256x256 (about {self._at_native(num_frames, height, width) / GB:.1f} GB)"
        raise PtrackError(
            f"{self.name}: tracking {num_frames} frames of {width}x{height} needs about {est['total'] / GB:.1f} GB "
            f"({est['frames'] / GB:.1f} GB decoded frames, {est['features'] / GB:.1f} GB feature grids at {s_h}x{s_w}, "
            f"{est['work'] / GB:.1f} GB working space) but only {avail / GB:.1f} GB of {where} is available: {ways}"
        )

    def _at_native(self, num_frames: int, height: int, width: int) -> int:
        saved = self.resolution
        self.resolution = NATIVE_RESOLUTION
        try:
            return self.memory_estimate(num_frames, height, width)["total"]
        finally:
            self.resolution = saved

    # ---- tracking -----------------------------------------------------------------------------

    def model_queries(self, queries: np.ndarray, input_hw: tuple[int, int]) -> torch.Tensor:
        """User queries ``[N, 3]`` (t, x, y input pixels) -> model queries ``[N, 3]`` (t, y, x model pixels)."""
        xy = scale_xy(queries[:, 1:3], input_hw, self.resolution)
        tyx = np.stack([queries[:, 0], xy[:, 1], xy[:, 0]], axis=1)
        return torch.as_tensor(tyx, dtype=torch.float32, device=self.device)

    def outputs(self, tracks: np.ndarray, occlusion: np.ndarray, expected_dist: np.ndarray,
                input_hw: tuple[int, int]) -> TrackOutput:
        """Raw model outputs (tracks ``[N, T, 2]`` model pixels, logits ``[N, T]``) -> :class:`TrackOutput`."""
        xy = scale_xy(np.asarray(tracks, np.float64).transpose(1, 0, 2), self.resolution, input_hw)
        occ, expd = np.asarray(occlusion, np.float64).T, np.asarray(expected_dist, np.float64).T
        confidence = 1 - 1 / (1 + np.exp(-expd))
        vis_prob = (1 - 1 / (1 + np.exp(-occ))) * confidence
        return TrackOutput(tracks=xy, visibility=vis_prob > self.vis_threshold, visibility_prob=vis_prob,
                           confidence=confidence)

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        t_hint = int(getattr(video, "num_frames", 0) or 0)
        queries = check_queries(queries, t_hint)
        self.check_memory(t_hint, int(video.height), int(video.width))
        frames = video.read_all()
        t, h, w = frames.shape[:3]
        queries = check_queries(queries, t)
        n = len(queries)
        reported = 0

        def advance(units: int) -> None:  # two stages, each worth the whole clip
            nonlocal reported
            frames_done = min(t, units // 2)
            if progress is not None and frames_done > reported:
                progress(frames_done - reported)
            reported = max(reported, frames_done)

        if n == 0 or t == 0:
            advance(2 * t)
            z = np.zeros((t, n))
            return TrackOutput(tracks=np.zeros((t, n, 2)), visibility=z.astype(bool), visibility_prob=z, confidence=z)
        model = self.model
        with torch.inference_mode():
            feats = model.new_features(t, self.resolution)
            for i in range(0, t, ENCODER_CHUNK):
                x = resize_frames(frames[i : i + ENCODER_CHUNK], self.resolution, self.device)
                model.add_frames(feats, i, x / 255.0 * 2 - 1)
                advance(i + x.shape[0])
            q = self.model_queries(queries, (h, w))
            out = model.track(feats, q, progress=lambda done: advance(t + (t * done) // n))
            del feats
            raw = [out[k].float().cpu().numpy() for k in ("tracks", "occlusion", "expected_dist")]
        advance(2 * t)
        return self.outputs(*raw, input_hw=(h, w))


def build(entry: dict, state_dict: dict[str, torch.Tensor], info: dict, opts: BuildOptions) -> TapirTracker:
    """The registry's builder for ``tapir`` / ``bootstapir`` (config: pyramid_level, extra_convs, resolutions)."""
    cfg = entry.get("config", {})
    model = load_tapir(
        state_dict,
        source=str(info.get("path", entry["id"])),
        pyramid_level=int(cfg.get("pyramid_level", 1)),
        extra_convs=bool(cfg.get("extra_convs", True)),
        initial_resolution=tuple(cfg.get("initial_resolution", INITIAL_RESOLUTION)),
        num_pips_iter=int(opts.iters or cfg.get("iters", NUM_PIPS_ITER)),
    )
    tracker = TapirTracker(
        model,
        resolution=tuple(opts.resolution or cfg.get("model_resolution", NATIVE_RESOLUTION)),
        device=opts.device,
        vis_threshold=opts.vis_threshold,
        name=entry["id"],
    )
    tracker.weights_info = info
    return tracker


__all__ = ["TapirTracker", "available_memory", "build", "check_resolution"]
