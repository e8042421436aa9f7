"""AllTracker as a :class:`Tracker`: the Track-On-R wrapper, gorkaydemir/track_on
``ensemble/alltracker/alltracker_predictor.py`` (``AllTrackerPredictor``), around :mod:`..models.alltracker`.

What the official wrapper does, reproduced exactly (``shared/specs/teachers.md``):

* frames as float 0..255 resized to 384x512 with ``F.interpolate(mode="bilinear")`` (align_corners=False);
  query x scaled by ``512 / W`` and y by ``384 / H`` (float32, tapnet's corner convention, no half-pixel shift);
* AllTracker is dense: for every distinct query frame ``q`` (ascending) the network tracks *every pixel* of
  frame ``q`` through frames ``q .. T-1`` (4 iterations, windows of 16 frames); ``forward_sliding`` when
  that is more than 128 frames, ``forward`` otherwise;
* a point's track is read at its query position rounded to the nearest pixel (half to even) and clamped to
  the frame: ``flow + (x_px, y_px)``, scaled back by ``W / 512``, ``H / 384``; ``visibility_prob`` is the
  product of the two visconf channels, ``visibility = visibility_prob > 0.6`` (compared in float32, as the
  official code); ``confidence`` is the second visconf channel.

So a point's result depends on its query frame and query pixel only, never on the other points. The cost
grows with the number of distinct query frames (one dense run over ``T - q`` frames each): a warning is
issued above :data:`WARN_QUERY_FRAMES` of them (``eval --mode strided`` queries every few frames, which makes
the cost quadratic in the length; use ``--mode first``, or one ``--grid-frame``, where possible).

Documented deviations (the only places ptrack's numbers differ from the official wrapper's):

* Before the query frame AllTracker gives no estimate (the official code reports the frozen query pixel,
  not visible): NaN, not visible, probability and confidence 0 -- unless ``backward``: then those frames come
  from the same wrapper run on the time-reversed clip (queries at ``T-1-t``), merged with
  :func:`.teacher.merge_before_query`.
* A query on the last frame: the official wrapper never runs the network and reports the rounded query
  pixel, not visible. ptrack reports the query point itself on its own frame, visible, probability and
  confidence 1.
* A query on the second-to-last frame: the official network returns a single flow (to the last frame),
  which the official wrapper writes into both frames. ptrack writes it into the last frame only and reports
  the query point itself (visible, 1, 1) on the query frame.
* Output scaling in float64 (:func:`.teacher.scale_xy`; the official code scales in float32: ~1e-5 px).
* Frames are resized and encoded lazily, per window, and the features of a frame are cached (up to
  :data:`FEATURE_CACHE_BYTES`) and reused by the dense runs of later query frames and by the backward pass,
  while such a run is still to come (one query frame, forward only: nothing is cached); the clip is padded
  as the official code does but its repeated last frame is encoded once. None of this changes a number beyond
  float rounding.
* ``--resolution HxW`` (or ``alltracker@HxW``) runs the wrapper at another size (the official wrapper with its
  ``interp_shape`` changed). Frames are padded to multiples of 64; at least 193 pixels a side are needed.
* Precision: fp32 on CPU; on CUDA ``--precision bf16|fp16`` runs under autocast (the official ensemble uses
  fp16 autocast; not measured here, no GPU).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from ..device import available_memory
from ..errors import PtrackError
from ..models.alltracker import AllTracker, check_resolution, input_padding, load_alltracker
from .base import BuildOptions, FrameSource, ProgressFn, TrackOutput, Tracker
from .teacher import merge_before_query, resize_frames, reverse_time, scale_xy

RESOLUTION = (384, 512)
ITERS = 4
VIS_THRESHOLD = 0.6
SLIDING_ABOVE = 128  # the official wrapper uses forward_sliding for runs of more than 128 frames
WARN_QUERY_FRAMES = 4  # warn when there are more distinct query frames than this
FEATURE_CACHE_BYTES = 1 << 30  # frame features kept for reuse across dense runs
MEMORY_MARGIN = 0.9  # refuse when the estimate exceeds this share of the available memory


# --------------------------------------------------------------------------------------------------
# Memory


def feature_bytes_per_frame(resolution: tuple[int, int], dim: int = 128) -> int:
    """Bytes of one frame's float32 features (``2 * dim`` channels at 1/8 of the padded frame)."""
    l, r, t, b = input_padding(*resolution)
    return 4 * 2 * dim * ((resolution[0] + t + b) // 8) * ((resolution[1] + l + r) // 8)


def window_bytes(resolution: tuple[int, int], seqlen: int = 16) -> int:
    """Working memory of one window: the correlation pyramid (``S (h w)^2`` float32 at level 0, 1/4 more for
    the coarser levels), ~4,000 float32 activations per feature pixel and frame in the update block and
    correlation lookup, and the convex upsampling (~40 float32 per full-resolution pixel and frame)."""
    l, r, t, b = input_padding(*resolution)
    hp, wp = resolution[0] + t + b, resolution[1] + l + r
    hw8 = (hp // 8) * (wp // 8)
    return int(4 * seqlen * (1.34 * hw8 * hw8 + 4000 * hw8 + 40 * hp * wp))


def estimate_bytes(num_frames: int, input_hw: tuple[int, int], resolution: tuple[int, int], num_points: int,
                   seqlen: int = 16, cached: bool = True) -> int:
    """Peak memory of a run: the decoded clip (uint8), the feature cache (``cached``: more than one dense run),
    one window's working memory, the outputs (float64 per point and frame) and the network (~70 MB) with the
    runtime."""
    t = num_frames
    clip = t * input_hw[0] * input_hw[1] * 3
    cache = min(FEATURE_CACHE_BYTES, t * feature_bytes_per_frame(resolution)) if cached else 0
    outputs = 2 * 8 * 6 * t * max(num_points, 1)
    return clip + cache + window_bytes(resolution, seqlen) + outputs + (300 << 20)


def available_bytes(device: str) -> int | None:
    """Free memory where the network runs: CUDA free memory, else the host's (:func:`..device.available_memory`)."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return available_memory()


# --------------------------------------------------------------------------------------------------
# The Tracker


class AllTrackerTracker(Tracker):
    """The ``AllTrackerPredictor`` wrapper as a :class:`Tracker` (see the module docstring).

    Args:
        model: an :class:`AllTracker` (``load_alltracker``).
        resolution: (h, w) the frames are resized to (official: 384x512).
        device: torch device string; precision: ``fp32`` (CPU always), ``bf16`` / ``fp16`` (CUDA autocast).
        iters: refinement iterations per window (official: 4).
        vis_threshold: threshold on ``visibility_prob`` (official: 0.6).
        backward: also estimate frames before each query frame (a pass over the reversed clip).
        sliding_above: runs longer than this use ``forward_sliding`` (official: 128).
        feature_cache_bytes: memory for frame features shared by the dense runs (0: none).
    """

    streaming = False

    def __init__(
        self,
        model: AllTracker,
        resolution: tuple[int, int] = RESOLUTION,
        device: str = "cpu",
        precision: str = "fp32",
        iters: int | None = None,
        vis_threshold: float | None = None,
        backward: bool = False,
        sliding_above: int = SLIDING_ABOVE,
        feature_cache_bytes: int = FEATURE_CACHE_BYTES,
    ) -> None:
        h, w = int(resolution[0]), int(resolution[1])
        model.check_resolution(h, w)
        if precision not in ("fp32", "bf16", "fp16"):
            raise PtrackError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.resolution = (h, w)
        self.precision = precision
        self.iters = ITERS if iters is None else int(iters)
        if self.iters < 1:
            raise PtrackError(f"AllTracker needs at least 1 iteration, got {self.iters}")
        self.vis_threshold = VIS_THRESHOLD if vis_threshold is None else float(vis_threshold)
        self.backward = bool(backward)
        self.sliding_above = int(sliding_above)
        self.feature_cache_bytes = int(feature_cache_bytes)
        self.name = "alltracker"
        self.last_memory_estimate: int | None = None
        self.last_dense_runs: list[tuple[int, int, bool]] = []  # (first frame, frames, sliding) per run, for tests

    def settings(self) -> dict:
        return {
            "resolution": list(self.resolution),
            "iters": self.iters,
            "window": self.model.seqlen,
            "sliding_above": self.sliding_above,
            "vis_threshold": self.vis_threshold,
            "backward": self.backward,
            "precision": self.precision if self.device.type == "cuda" else "fp32",
            "coordinates": "official wrapper arithmetic: x * S_w / W, y * S_h / H, no half-pixel shift; "
            "tracks read at the rounded query pixel",
            "visibility_prob": "visibility x confidence (the two visconf channels)",
            "confidence": "second visconf channel",
            "cost": "one dense run per distinct query frame",
        }

    def _autocast(self):
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    @staticmethod
    def _check_queries(queries: np.ndarray, num_frames: int) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(q).all():
            raise PtrackError("queries contain NaN or infinite values (fix the query file)")
        if len(q) and (q[:, 0].min() < 0 or q[:, 0].max() >= num_frames):
            raise PtrackError(
                f"query frame indices must lie in [0, {num_frames - 1}], got {q[:, 0].min():g}..{q[:, 0].max():g} "
                "(check --start/--stride and the query file)"
            )
        return q

    # ---- one pass (the official wrapper) ---------------------------------------------------------

    def query_pixels(self, queries: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
        """``[N, 2]`` int64 (x, y) model pixels the tracks are read at: the official float32 scaling, rounding
        half to even, clamping to the frame."""
        s_h, s_w = self.resolution
        q = torch.as_tensor(np.asarray(queries)[:, 1:3], dtype=torch.float32).clone()
        q[:, 0] *= s_w / input_hw[1]
        q[:, 1] *= s_h / input_hw[0]
        px = q.round().long()
        px[:, 0] = px[:, 0].clamp(0, s_w - 1)
        px[:, 1] = px[:, 1].clamp(0, s_h - 1)
        return px.numpy()

    def _pass(self, frames: np.ndarray, frame_ids: np.ndarray, queries: np.ndarray, cache: dict, step,
              more_after: bool = False) -> tuple:
        """The wrapper on ``frames`` ``[T, H, W, 3]`` (``frame_ids``: their indices in the clip, for the cache).

        Features go into ``cache`` only while a later dense run may read them (another query frame of this pass,
        or ``more_after``: a pass that follows); the last run needs none, each frame being encoded once per run.

        Returns tracks ``[T, N, 2]`` (model pixels), visibility_prob (float32 products) and confidence
        ``[T, N]``; frames before each query frame hold zeros.
        """
        t = len(frames)
        n = len(queries)
        tracks = np.zeros((t, n, 2), np.float64)
        prob = np.zeros((t, n), np.float32)
        conf = np.zeros((t, n), np.float32)
        px = self.query_pixels(queries, frames.shape[1:3])
        q_frames = queries[:, 0].astype(np.int64)  # .long(), as the official code
        per_frame = self.feature_cache_bytes and feature_bytes_per_frame(self.resolution, self.model.dim)
        to_model = np.array([self.resolution[1] / frames.shape[2], self.resolution[0] / frames.shape[1]])

        def query_itself(q: int, cols: np.ndarray) -> None:  # deviation for the last two frames, see module doc
            tracks[q, cols] = queries[cols, 1:3] * to_model
            prob[q, cols], conf[q, cols] = 1.0, 1.0

        def encoder(first: int, keep: bool):
            """Features of frames ``first + i`` (model input: resized, normalised, padded), through the cache;
            ``keep``: store new ones there for later runs."""

            def encode(idx: list[int]) -> torch.Tensor:
                ids = [int(frame_ids[first + i]) for i in idx]
                fresh: dict[int, torch.Tensor] = {}
                todo = [i for i, fid in zip(idx, ids) if fid not in cache]
                if todo:
                    x = resize_frames(frames[[first + i for i in todo]], self.resolution, self.device)
                    for i, f in zip(todo, self.model.encode(self.model.normalise(x))):
                        fresh[int(frame_ids[first + i])] = f
                        if keep and per_frame and (len(cache) + 1) * per_frame <= self.feature_cache_bytes:
                            cache[int(frame_ids[first + i])] = f
                return torch.stack([cache[fid] if fid in cache else fresh[fid] for fid in ids])

            return encode

        # latest query frame first: its frames are needed by every earlier run, so they are cached first
        runs = sorted(set(q_frames.tolist()), reverse=True)
        for k, q in enumerate(runs):
            cols = np.nonzero(q_frames == q)[0]
            length = t - q
            if length < 2:  # a query on the last frame: no run
                query_itself(q, cols)
                step(1)
                continue
            sliding = length > self.sliding_above
            self.last_dense_runs.append((q, length, sliding))
            pixels = torch.as_tensor(px[cols], device=self.device)
            keep = more_after or k < len(runs) - 1  # a later run reads these frames' features
            flow, visconf = self.model.track_clip(
                encoder(q, keep), length, self.resolution, self.iters, sliding, pixels, progress=step
            )
            flow = flow.float().cpu().numpy()  # [T', K, 2]
            visconf = visconf.float().cpu().numpy()
            first = q if length > 2 else q + 1  # 2 frames: the single flow is the last frame's
            tracks[first:, cols] = flow.astype(np.float64) + px[cols][None].astype(np.float64)
            prob[first:, cols] = visconf[..., 0] * visconf[..., 1]
            conf[first:, cols] = visconf[..., 1]
            if length == 2:  # the single flow is the last frame's; the query frame gets the query itself
                query_itself(q, cols)
        return tracks, prob, conf

    # ---- tracking ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        t, h, w = int(video.num_frames), int(video.height), int(video.width)
        queries = self._check_queries(queries, t)
        n = len(queries)
        self.last_dense_runs = []
        runs = len(np.unique(queries[:, 0].astype(np.int64))) * (2 if self.backward else 1)
        need = estimate_bytes(t, (h, w), self.resolution, n, self.model.seqlen, cached=runs > 1)
        self.last_memory_estimate = need
        avail = available_bytes(str(self.device))
        if avail is not None and need > MEMORY_MARGIN * avail:
            raise PtrackError(
                f"{self.name} needs about {need / 2**30:.1f} GiB for {t} frames at {self.resolution[0]}x{self.resolution[1]} "
                f"but {avail / 2**30:.1f} GiB are available; track fewer frames (--start/--end, --stride), shrink the "
                "decoded frames (--max-size) or use a lower --resolution"
            )
        frames = video.read_all()
        t = len(frames)
        queries = self._check_queries(queries, t)
        q_frames = sorted(set(queries[:, 0].astype(np.int64).tolist()))
        if len(q_frames) > WARN_QUERY_FRAMES:
            work = sum(t - q for q in q_frames) / max(t, 1)
            warnings.warn(
                f"{self.name} runs the dense network once per distinct query frame: {len(q_frames)} query frames here, "
                f"about {work:.1f}x the work of one pass over the clip{' (twice with --backward)' if self.backward else ''}; "
                "query fewer frames (e.g. one --grid-frame, or `eval --mode first` instead of strided) to make it cheaper",
                stacklevel=2,
            )
        rev_q = reverse_time(queries, t) if self.backward else None
        total = sum(t - q for q in q_frames) + (sum(q + 1 for q in q_frames) if self.backward else 0)
        prog = _Progress(progress, max(total, 1), t)
        cache: dict = {}
        with self._autocast():
            if n == 0:
                fw = (np.zeros((t, 0, 2)), np.zeros((t, 0), np.float32), np.zeros((t, 0), np.float32))
            else:
                fw = self._pass(frames, np.arange(t), queries, cache, prog, more_after=self.backward)
            if self.backward and n:
                bw = self._pass(frames[::-1], np.arange(t)[::-1], rev_q, cache, prog)
                fw = merge_before_query(fw, bw, queries[:, 0])
        cache.clear()
        prog.finish()
        tracks = scale_xy(fw[0], self.resolution, (h, w))
        prob = np.asarray(fw[1], np.float32)
        conf = np.asarray(fw[2], np.float32)
        visibility = prob > np.float32(self.vis_threshold)
        if not self.backward and n:
            before = np.arange(t)[:, None] < queries[None, :, 0].astype(np.int64)
            tracks[before] = np.nan
            visibility[before] = False
            prob, conf = prob.copy(), conf.copy()
            prob[before] = 0.0
            conf[before] = 0.0
        return TrackOutput(tracks=tracks, visibility=visibility, visibility_prob=prob, confidence=conf)


class _Progress:
    """Frames of dense runs (``total`` over all runs) -> frames of the video for ``progress``."""

    def __init__(self, fn: ProgressFn | None, total: int, frames: int) -> None:
        self.fn, self.total, self.frames, self.units, self.reported = fn, total, frames, 0, 0

    def __call__(self, units: int) -> None:
        self.units = min(self.total, self.units + units)
        self._report(self.units * self.frames // self.total)

    def finish(self) -> None:
        self._report(self.frames)

    def _report(self, done: int) -> None:
        if self.fn is not None and done > self.reported:
            self.fn(done - self.reported)
        self.reported = max(self.reported, done)


def build(entry: dict, state_dict: dict[str, torch.Tensor], info: dict, opts: BuildOptions) -> Tracker:
    """The tracker for registry ``entry`` (``config``: ``seqlen``, ``corr_levels``, ``corr_radius``,
    ``num_blocks``, ``dim``, ``model_resolution``, ``iters``) with the official state dict (or its
    ``{"model": ...}`` file)."""
    cfg = dict(entry.get("config") or {})
    model_kw = {k: int(cfg[k]) for k in ("seqlen", "corr_levels", "corr_radius", "num_blocks", "dim") if k in cfg}
    resolution = tuple(opts.resolution or cfg.get("model_resolution") or RESOLUTION)
    check_resolution(int(resolution[0]), int(resolution[1]), model_kw.get("corr_levels", 5))  # before building
    model = load_alltracker(state_dict, str(info.get("path") or entry["id"]), **model_kw)
    tracker = AllTrackerTracker(
        model, resolution=resolution, device=opts.device, precision=opts.precision,
        iters=opts.iters or cfg.get("iters"), vis_threshold=opts.vis_threshold, backward=opts.backward,
    )
    tracker.name = entry["id"]
    tracker.weights_info = info
    return tracker


__all__ = ["AllTrackerTracker", "build", "estimate_bytes", "feature_bytes_per_frame", "window_bytes"]
