"""RealTracker (CoTracker3) as a :class:`Tracker`: the official predictor wrappers (spec sec. 12).

* offline (``online=False``, ``streaming=False``): ``CoTrackerPredictor`` behaviour. The clip is resized
  to the model resolution (bilinear, align_corners=True), queries are rescaled with
  ``(w_m - 1) / (W - 1)``, a 6x6 support grid (query frame 0) is appended to explicit queries, the model
  runs 6 iterations over the whole clip, optionally again on the time-reversed clip (frames before a
  query frame then come from that pass), ``visibility = vis > 0.9``, the query frame is overwritten with
  the query point (visible), and coordinates are mapped back with ``(W - 1) / (w_m - 1)``.
* online (``online=True``, ``streaming=True``): ``CoTrackerOnlinePredictor`` with the ``online_demo.py``
  chunk protocol (chunks ``[0, 16), [8, 24), ...``, the last one shorter). The video is iterated once,
  frame by frame; only the features of the last 16 frames are kept. ``visibility = vis * conf > 0.6``;
  no query-frame overwrite (official behaviour).

Extensions beyond the official predictors (documented choices):

* Output convention of :class:`Tracker`: frames before a point's query frame hold NaN / not visible /
  probability 0 unless ``backward`` (the raw model gives coordinates there; the fixture-level functions
  below keep them, only :meth:`RealTrackerTracker.track` masks).
* ``backward`` for the online model: a second streaming pass over the reversed video with query frames
  ``T-1-t``, merged like the offline predictor. Streaming readers cannot go backwards, so during the
  forward pass the frames, already resized to the model resolution, are spilled as float16 to a
  temporary file (``np.memmap``; ~1.2 MB per frame at 384x512) and read back in reverse. float16 keeps
  the resized 0..255 values to within 0.125 (less than the 8-bit input quantisation); memory stays
  bounded by the 16-frame window.
* Point batches: at most ``max_points`` user points go through the model together; every batch gets its
  own copy of the 6x6 support grid, so results depend on the batch composition only. The default is
  :func:`default_max_points`, a memory estimate (see there); the features of the video are computed once
  and shared by all batches.
* Video shorter than 9 frames, online: processed as one chunk (the official demo returns nothing).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PtrackError
from ..models.allocator import reuse_freed_memory
from ..models.realtracker import RealTracker, load_realtracker
from ..models.realtracker_pyramid import cat_time, empty_pyramid, flip_time
from ..geometry import input_to_model, model_to_input, official_grid
from .base import BuildOptions, FrameSource, PassProgress, ProgressFn, TrackOutput, Tracker

SUPPORT_GRID_SIZE = 6
ITERS = 6
OFFLINE_VIS_THRESHOLD = 0.9
ONLINE_VIS_THRESHOLD = 0.6
PAIR_BUDGET = 640_000  # (point, frame) pairs in one model call, see default_max_points
POINT_BUDGET = 12_000  # points per call regardless of frames (support features ~0.2 MB per point)

# model_fn(model_queries [N', 3] float64 model pixels, reverse) -> raw (coords [T, N', 2], vis [T, N'], conf [T, N'])
# for the clip (reverse=False) or the time-reversed clip (reverse=True, outputs in reversed time order).
ModelFn = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------------
# Pure pre/post-processing (float64 numpy; the official predictors' arithmetic)


def default_max_points(window_frames: int) -> int:
    """Points per model call from a memory estimate, for ``window_frames`` frames refined jointly.

    The refinement holds per (point, frame) pair ~6 KB of float32 transformer tokens (384 channels, a few
    live copies; the correlation is computed in bounded chunks) and per point ~0.2 MB of query patch
    features (4 levels x 7x7x128, plus one masked copy). ``PAIR_BUDGET`` = 640k pairs (~4 GB) and
    ``POINT_BUDGET`` = 12k points (~2.4 GB) keep a call near 7 GB plus the video features (~8.4 MB per
    frame at 384x512): a 100x100 grid runs in one batch online (16-frame windows) and offline for clips
    up to 64 frames, and fits a 24 GB GPU; longer offline clips are split into more batches.
    """
    return int(max(16, min(POINT_BUDGET, PAIR_BUDGET // max(1, window_frames))))


def prepare_queries(
    queries: np.ndarray, input_hw: tuple[int, int], model_hw: tuple[int, int], support_grid: bool
) -> np.ndarray:
    """User queries ``[N, 3]`` (t, x, y input pixels) -> model queries ``[N', 3]`` (model pixels).

    ``x' = x (w_m - 1) / (W - 1)``; with ``support_grid`` the official 6x6 grid at frame 0 is appended
    (``N' = N + 36``, support points last).
    """
    q = np.array(queries, dtype=np.float64).reshape(-1, 3)
    q[:, 1:] = input_to_model(q[:, 1:], model_hw, input_hw)
    if support_grid:
        grid = official_grid(SUPPORT_GRID_SIZE, model_hw[0], model_hw[1])
        q = np.concatenate([q, np.concatenate([np.zeros((len(grid), 1)), grid], axis=1)], axis=0)
    return q


def reverse_queries(model_queries: np.ndarray, num_frames: int) -> np.ndarray:
    """Queries for the time-reversed clip: frame ``t -> T - 1 - t``."""
    q = np.array(model_queries, dtype=np.float64, copy=True)
    q[:, 0] = num_frames - q[:, 0] - 1
    return q


def merge_backward(
    fw: tuple[np.ndarray, np.ndarray, np.ndarray],
    bw_reversed: tuple[np.ndarray, np.ndarray, np.ndarray],
    query_t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``t < t_n`` of each point take coords / vis / conf from the reversed pass (given in reversed order)."""
    t = fw[0].shape[0]
    before = np.arange(t)[:, None] < np.asarray(query_t, dtype=np.float64)[None, :]
    coords = np.where(before[..., None], bw_reversed[0][::-1], fw[0])
    vis = np.where(before, bw_reversed[1][::-1], fw[1])
    conf = np.where(before, bw_reversed[2][::-1], fw[2])
    return coords, vis, conf


def offline_postprocess(
    coords: np.ndarray,
    vis: np.ndarray,
    model_queries: np.ndarray,
    n_user: int,
    input_hw: tuple[int, int],
    model_hw: tuple[int, int],
    vis_threshold: float = OFFLINE_VIS_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Offline predictor output: drop support points, ``vis > thr``, overwrite the query frame, map back.

    coords ``[T, N', 2]`` model pixels, vis ``[T, N']`` -> tracks ``[T, N, 2]`` input pixels, visibility bool.
    """
    tracks = np.array(coords[:, :n_user], dtype=np.float64, copy=True)
    visibility = np.asarray(vis[:, :n_user]) > vis_threshold
    qt = model_queries[:n_user, 0].astype(np.int64)  # int cast, as the official code
    cols = np.arange(n_user)
    tracks[qt, cols] = model_queries[:n_user, 1:3]
    visibility[qt, cols] = True
    return model_to_input(tracks, model_hw, input_hw), visibility


def online_postprocess(
    coords: np.ndarray,
    vis: np.ndarray,
    conf: np.ndarray,
    n_user: int,
    input_hw: tuple[int, int],
    model_hw: tuple[int, int],
    vis_threshold: float = ONLINE_VIS_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Online predictor output: drop support points, ``vis * conf > thr``, map back (no query overwrite)."""
    tracks = model_to_input(np.asarray(coords[:, :n_user], dtype=np.float64), model_hw, input_hw)
    visibility = np.asarray(vis[:, :n_user], dtype=np.float64) * np.asarray(conf[:, :n_user], dtype=np.float64)
    return tracks, visibility > vis_threshold


def split_points(n: int, max_points: int | None) -> list[slice]:
    """Consecutive point batches of at most ``max_points`` (one batch if None)."""
    if n == 0:
        return []
    size = n if not max_points else max(1, int(max_points))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def offline_predict(
    model_fn: ModelFn,
    queries: np.ndarray,
    num_frames: int,
    input_hw: tuple[int, int],
    model_hw: tuple[int, int],
    support_grid: bool = True,
    backward: bool = False,
    vis_threshold: float = OFFLINE_VIS_THRESHOLD,
    max_points: int | None = None,
) -> dict:
    """The offline predictor around ``model_fn`` (spec sec. 12a), in point batches.

    Returns ``tracks [T, N, 2]`` input pixels (every frame, as the official predictor), ``visibility``
    ``[T, N]`` bool, raw ``vis`` / ``conf`` ``[T, N]`` (backward-merged), and ``model_queries`` (list, one
    ``[N_b', 3]`` array per batch). All forward calls come before the reversed ones.
    """
    queries = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
    batches = split_points(len(queries), max_points)
    mqs = [prepare_queries(queries[b], input_hw, model_hw, support_grid) for b in batches]
    raws = [model_fn(mq, False) for mq in mqs]
    if backward:
        bws = [model_fn(reverse_queries(mq, num_frames), True) for mq in mqs]
        raws = [merge_backward(fw, bw, mq[:, 0]) for fw, bw, mq in zip(raws, bws, mqs)]
    t, n = num_frames, len(queries)
    out = {
        "tracks": np.zeros((t, n, 2)),
        "visibility": np.zeros((t, n), dtype=bool),
        "vis": np.zeros((t, n)),
        "conf": np.zeros((t, n)),
        "model_queries": mqs,
    }
    for b, mq, (coords, vis, conf) in zip(batches, mqs, raws):
        k = b.stop - b.start
        tracks, visibility = offline_postprocess(coords, vis, mq, k, input_hw, model_hw, vis_threshold)
        out["tracks"][:, b], out["visibility"][:, b] = tracks, visibility
        out["vis"][:, b], out["conf"][:, b] = vis[:, :k], conf[:, :k]
    return out


# --------------------------------------------------------------------------------------------------
# Streaming core of the online model


def _grow(arr: np.ndarray, need: int) -> np.ndarray:
    if arr.shape[0] >= need:
        return arr
    new = np.zeros((max(need, 2 * arr.shape[0]),) + arr.shape[1:], dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


def run_online(
    model: RealTracker,
    frames: Iterable[torch.Tensor],
    batches: list[np.ndarray],
    iters: int = ITERS,
    num_frames_hint: int = 16,
    on_chunk: Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    on_final: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream model-resolution frames ``[3, h_m, w_m]`` (0..255) through the online model, chunk protocol
    of ``online_demo.py`` (chunks ``[8k, 8k + 16)``, the last one ``[8k, T)``).

    ``batches``: model queries ``[N_b, 3]`` per point batch (each batch has its own streaming state; the
    frame features are shared). Returns raw coords ``[T, N', 2]``, vis, conf ``[T, N']`` float32
    (batches concatenated). ``on_chunk(s, e, coords[:e], vis[:e], conf[:e])`` is called after every chunk
    (what the official predictor returns at that call); ``on_final(k)`` when ``k`` more frames are final.
    """
    s_len = model.window_len
    step = s_len // 2
    device = next(model.parameters()).device
    sizes = [len(b) for b in batches]
    offsets = np.cumsum([0] + sizes)
    n_all = int(offsets[-1])
    states = [model.init_streaming() for _ in batches]
    qts = [torch.as_tensor(b, dtype=torch.float32, device=device)[None] for b in batches]
    cap = max(num_frames_hint, s_len)
    # float32 storage (what the model returns): [T, N] arrays are the only state that grows with the video.
    coords = np.zeros((cap, n_all, 2), np.float32)
    vis, conf = np.zeros((cap, n_all), np.float32), np.zeros((cap, n_all), np.float32)
    cache: list[torch.Tensor] | None = None  # features of frames [ind, ind + 8) from the previous chunk
    pending: list[torch.Tensor] = []
    ind, seen, final = 0, 0, 0

    def process(t_c: int) -> None:
        nonlocal cache, coords, vis, conf, final
        new = model.encode(torch.stack(pending)[None])
        pending.clear()
        pyr = new if cache is None else cat_time(cache, new)
        assert pyr[0].shape[1] == t_c
        coords, vis, conf = _grow(coords, ind + t_c), _grow(vis, ind + t_c), _grow(conf, ind + t_c)
        for state, q, o0, o1 in zip(states, qts, offsets[:-1], offsets[1:]):
            c, v, f = model.step_pyramid(state, pyr, q, iters)
            coords[ind : ind + t_c, o0:o1] = c[0].float().cpu().numpy()
            vis[ind : ind + t_c, o0:o1] = v[0].float().cpu().numpy()
            conf[ind : ind + t_c, o0:o1] = f[0].float().cpu().numpy()
        cache = [p[:, step:] for p in pyr] if t_c == s_len else None
        if on_chunk is not None:
            on_chunk(ind, ind + t_c, coords[: ind + t_c], vis[: ind + t_c], conf[: ind + t_c])
        done = ind + (step if t_c == s_len else t_c)
        if on_final is not None and done > final:
            on_final(done - final)
        final = max(final, done)

    for frame in frames:
        pending.append(frame)
        seen += 1
        if seen == ind + s_len:
            process(s_len)
            ind += step
    if seen > 0 and (ind == 0 or seen > ind + step):
        process(seen - ind)
    if on_final is not None and seen > final:
        on_final(seen - final)
    return coords[:seen], vis[:seen], conf[:seen]


# --------------------------------------------------------------------------------------------------
# The Tracker


class _Spill:
    """Model-resolution frames spilled as float16 to a temporary file, read back newest first."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        fd, self.path = tempfile.mkstemp(prefix="ptrack_rt_", suffix=".f16")
        self.file = os.fdopen(fd, "wb")
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        self.file.write(frame.detach().to("cpu", torch.float16).numpy().tobytes())
        self.count += 1

    def reversed_frames(self, device: torch.device) -> Iterator[torch.Tensor]:
        self.file.close()
        if self.count == 0:
            return
        mm = np.memmap(self.path, dtype=np.float16, mode="r", shape=(self.count,) + self.shape)
        for i in range(self.count - 1, -1, -1):
            yield torch.from_numpy(np.array(mm[i], dtype=np.float32)).to(device)
        del mm

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class RealTrackerTracker(Tracker):
    """RealTracker offline / online predictor as a :class:`Tracker` (see the module docstring).

    Args:
        model: a :class:`RealTracker` (``load_realtracker``); its ``model_resolution`` is set to ``resolution``.
        online: True for the online model (streaming), False for the offline one.
        resolution: (h, w) model resolution, multiples of 4 (official: 384x512).
        support_grid: append the 6x6 support grid to the queries (official for explicit queries; pass
            False for grid queries, the official grid mode has none).
        backward: also track before each query frame (reversed pass).
        vis_threshold: threshold on vis (offline, default 0.9) or vis*conf (online, default 0.6).
        device: torch device string; precision: "fp32" | "bf16" | "fp16" (autocast on CUDA; on the CPU "bf16"
            runs under CPU bf16 autocast, "fp16" runs fp32).
        max_points: user points per model call (default :func:`default_max_points`).
        iters: refinement iterations (official predictors: 6).
    """

    def __init__(
        self,
        model: RealTracker,
        online: bool,
        resolution: tuple[int, int] = (384, 512),
        support_grid: bool = True,
        backward: bool = False,
        vis_threshold: float | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        max_points: int | None = None,
        iters: int = ITERS,
    ) -> None:
        if bool(model.online) != bool(online):
            kind = "online" if model.online else "offline"
            raise PtrackError(
                f"the loaded RealTracker is the {kind} model but online={online} was asked (load the matching checkpoint)"
            )
        h, w = (int(resolution[0]), int(resolution[1]))
        if h % 4 or w % 4 or h < 32 or w < 32:
            raise PtrackError(f"RealTracker resolution {h}x{w} must be multiples of 4 and at least 32x32 (e.g. 384x512)")
        if precision not in ("fp32", "bf16", "fp16"):
            raise PtrackError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model.model_resolution = (h, w)
        self.online = online
        self.resolution = (h, w)
        self.support_grid = support_grid
        self.backward = backward
        self.streaming = online
        self.name = "realtracker-online" if online else "realtracker-offline"
        default_thr = ONLINE_VIS_THRESHOLD if online else OFFLINE_VIS_THRESHOLD
        self.vis_threshold = float(default_thr if vis_threshold is None else vis_threshold)
        self.precision = precision
        self.max_points = max_points
        self.iters = iters

    # ---- helpers ------------------------------------------------------------------------------

    def settings(self) -> dict:
        return {
            "model": self.name,
            "resolution": list(self.resolution),
            "window": self.model.window_len,
            "iters": self.iters,
            "support_grid": self.support_grid,
            "backward": self.backward,
            "visibility_rule": ("vis * conf" if self.online else "vis") + f" > {self.vis_threshold}",
            "vis_threshold": self.vis_threshold,
            "query_frame_overwrite": not self.online,
            "precision": self.precision if self.device.type == "cuda" or self.precision == "bf16" else "fp32",
            "max_points": self.max_points,
        }

    def _autocast(self):
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if self.device.type == "cpu" and self.precision == "bf16":
            # Opt-in only: on the fixtures bf16 deviates far beyond the float32 tolerances (README "Speed").
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _resize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[k, H, W, 3]`` -> float ``[k, 3, h_m, w_m]`` (0..255, bilinear, align_corners=True)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) == self.resolution:
            return x
        return F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=True)

    @staticmethod
    def _check_queries(queries: np.ndarray, num_frames: int) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != 3:
            raise PtrackError(f"queries must be an [N, 3] array of (t, x, y), got shape {q.shape}")
        if not np.isfinite(q).all():
            raise PtrackError("queries contain NaN or infinite values (fix the query file)")
        if len(q) and num_frames > 0 and (q[:, 0].min() < 0 or q[:, 0].max() >= num_frames):
            raise PtrackError(
                f"query frame indices must lie in [0, {num_frames - 1}], got {q[:, 0].min():g}..{q[:, 0].max():g} "
                "(check --start/--stride and the query file)"
            )
        return q

    def _finish(self, tracks, visibility, vis, conf, queries: np.ndarray) -> TrackOutput:
        """Apply the Tracker convention: NaN / not visible before the query frame unless backward."""
        tracks = np.asarray(tracks, dtype=np.float64).copy()
        visibility, vis, conf = np.asarray(visibility).copy(), np.asarray(vis).copy(), np.asarray(conf).copy()
        if not self.backward and len(queries):
            before = np.arange(tracks.shape[0])[:, None] < np.floor(queries[:, 0])[None, :]
            tracks[before] = np.nan
            visibility[before] = False
            vis[before] = 0.0
            conf[before] = 0.0
        return TrackOutput(tracks=tracks, visibility=visibility, visibility_prob=vis, confidence=conf)

    # ---- tracking -----------------------------------------------------------------------------

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        queries = self._check_queries(queries, int(getattr(video, "num_frames", 0) or 0))
        # On the CPU large tensors are reused instead of page-faulted in for every frame, and handed back at the
        # end (models/allocator.py).
        reuse = reuse_freed_memory() if self.device.type == "cpu" else contextlib.nullcontext()
        with reuse, torch.inference_mode(), self._autocast():
            if self.online:
                return self._track_online(video, queries, progress)
            return self._track_offline(video, queries, progress)

    def _track_offline(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None) -> TrackOutput:
        frames = video.read_all()
        t, h, w = frames.shape[:3]
        queries = self._check_queries(queries, t)
        n = len(queries)
        if n == 0 or t == 0:
            if progress is not None and t:
                progress(t)
            return self._finish(np.zeros((t, n, 2)), np.zeros((t, n), bool), np.zeros((t, n)), np.zeros((t, n)), queries)
        max_points = self.max_points or default_max_points(t)
        n_batches = len(split_points(n, max_points))
        prog = PassProgress(progress, 1 + n_batches * (2 if self.backward else 1))
        model = self.model
        # Features once for the whole clip (fnet is per frame), shared by every batch; the reversed pass
        # reuses them flipped in time instead of recomputing them.
        pyramid: list[torch.Tensor] = []
        step = max(1, model.fnet_chunk)
        for i in range(0, t, step):
            part = model.encode(self._resize(frames[i : i + step])[None])
            if not pyramid:
                pyramid = empty_pyramid(part, t)
            for dst, src in zip(pyramid, part):
                dst[:, i : i + src.shape[1]] = src
            prog(part[0].shape[1])
        state: dict = {"reversed": False, "pyramid": pyramid}
        del pyramid  # only `state` holds the features (replaced by their time flip for the reversed pass)

        def model_fn(mq: np.ndarray, reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if reverse and not state["reversed"]:
                state["pyramid"] = flip_time(state["pyramid"])
                state["reversed"] = True
            q = torch.as_tensor(mq, dtype=torch.float32, device=self.device)[None]
            c, v, f, _ = model.forward_pyramid(state["pyramid"], q, iters=self.iters)
            prog(t)
            return (c[0].double().cpu().numpy(), v[0].double().cpu().numpy(), f[0].double().cpu().numpy())

        out = offline_predict(
            model_fn,
            queries,
            t,
            (h, w),
            self.resolution,
            support_grid=self.support_grid,
            backward=self.backward,
            vis_threshold=self.vis_threshold,
            max_points=max_points,
        )
        return self._finish(out["tracks"], out["visibility"], out["vis"], out["conf"], queries)

    def _track_online(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None) -> TrackOutput:
        h, w = int(video.height), int(video.width)
        n = len(queries)
        hint = int(getattr(video, "num_frames", 0) or 0)
        max_points = self.max_points or default_max_points(self.model.window_len)
        batches = split_points(n, max_points)
        mqs = [prepare_queries(queries[b], (h, w), self.resolution, self.support_grid) for b in batches]
        prog = PassProgress(progress, 2 if self.backward else 1)
        spill = _Spill((3,) + self.resolution) if self.backward else None
        try:

            def forward_frames() -> Iterator[torch.Tensor]:
                for frame in video:
                    x = self._resize(np.asarray(frame)[None])[0]
                    if spill is not None:
                        spill.write(x)
                    yield x

            if n == 0:
                t = 0
                for _ in forward_frames():
                    t += 1
                    prog(1)
                return self._finish(np.zeros((t, 0, 2)), np.zeros((t, 0), bool), np.zeros((t, 0)), np.zeros((t, 0)), queries)
            fw = run_online(self.model, forward_frames(), mqs, self.iters, hint, on_final=prog)
            t = fw[0].shape[0]
            self._check_queries(queries, t)  # the true length is known only now
            if self.backward and spill is not None:
                rev = [reverse_queries(mq, t) for mq in mqs]
                bw = run_online(self.model, spill.reversed_frames(self.device), rev, self.iters, t, on_final=prog)
                query_t = np.concatenate([mq[:, 0] for mq in mqs])
                fw = merge_backward(fw, bw, query_t)
        finally:
            if spill is not None:
                spill.close()
        tracks, visibility = np.zeros((t, n, 2)), np.zeros((t, n), bool)
        vis, conf = np.zeros((t, n)), np.zeros((t, n))
        col = 0
        for b, mq in zip(batches, mqs):
            k = b.stop - b.start
            sl = slice(col, col + len(mq))
            tr, vi = online_postprocess(
                fw[0][:, sl], fw[1][:, sl], fw[2][:, sl], k, (h, w), self.resolution, self.vis_threshold
            )
            tracks[:, b], visibility[:, b] = tr, vi
            vis[:, b], conf[:, b] = fw[1][:, sl][:, :k], fw[2][:, sl][:, :k]
            col += len(mq)
        return self._finish(tracks, visibility, vis, conf, queries)


__all__ = [
    "RealTrackerTracker",
    "default_max_points",
    "merge_backward",
    "offline_postprocess",
    "offline_predict",
    "online_postprocess",
    "prepare_queries",
    "reverse_queries",
    "run_online",
    "split_points",
]


def build(entry: dict, state_dict: dict[str, torch.Tensor], info: dict, opts: BuildOptions) -> RealTrackerTracker:
    """The registry's builder: RealTracker online/offline from an official-layout state dict."""
    online = entry["architecture"] == "realtracker-online"
    net = load_realtracker(state_dict, online=online, source=str(info.get("path", entry["id"])))
    tracker = RealTrackerTracker(
        net, online=online, resolution=opts.resolution or tuple(entry["config"]["model_resolution"]),
        support_grid=opts.support_grid, backward=opts.backward, vis_threshold=opts.vis_threshold,
        device=opts.device, precision=opts.precision, iters=opts.iters or ITERS,
    )
    tracker.name = entry["id"]
    tracker.weights_info = info
    return tracker
