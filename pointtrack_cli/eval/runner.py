"""Run any :class:`~pointtrack_cli.trackers.base.Tracker` on TAP-Vid videos, and score predictions.

Data path per video: 256x256 frames + TAP-Vid queries ``(t, y, x)`` -> tracker queries ``(t, x, y)``
-> ``tracker.track(ArrayVideo(frames), queries)`` -> ``TrackOutput`` ``[T, N, ...]`` -> predictions
``[Q, T, 2]`` (x, y) and ``occluded [Q, T]`` at 256x256 -> :func:`~.metrics.video_metrics`.

Coordinates are passed to the tracker unchanged, as both official evaluators (tapnet, CoTracker) do:
the tracker sees the 256x256 frames and the query pixels of the protocol, and its predictions are
scored in the same space. NaN predictions are kept: the metric counts them as "not within".

Protocols:
* ``joint``: all queries of a video in one call, plus the official 5x5 global support grid (fast;
  CoTracker3's ``single_point=False``).
* ``single``: one call per query with the support points of the CoTracker3 paper: an 8x8 local
  grid (50 model pixels wide) around the query and the 5x5 global grid, all queried at frame 0,
  placed in the model's input space (default 384x512) and mapped back to the 256x256 frames.
Support points are added here, so trackers are built without their own support grid.

The per-video record and its NPZ file are :mod:`.predictions`; the teachers-vs-oracle comparison of an
ensemble is :mod:`.oracle`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import geometry as G
from ..errors import PtrackError
from ..io.video import ArrayVideo
from ..trackers.base import Tracker
from .datasets import Queries, TapVidDataset, make_video, sample_queries
from .metrics import video_metrics
from .oracle import compare_candidates
from ..io.identity import digest
from .predictions import (
    Prediction, load_prediction, prediction_filename, prediction_set, to_tracker_queries, write_prediction,
)

PROTOCOLS = ("joint", "single")
LOCAL_GRID = 8
LOCAL_EXTENT = 50.0  # model pixels
GLOBAL_GRID = 5


@dataclass
class VideoResult:
    """Per-video outcome: metrics (fractions), sizes and the tracker's wall time (None when scoring files)."""

    name: str
    num_frames: int
    num_queries: int
    metrics: dict[str, float]
    seconds: float | None = None
    extra: dict = field(default_factory=dict)


def global_grid(model_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """The official 5x5 global support grid, ``[25, 3]`` rows (t=0, x, y) in input pixels.

    Placed on the model's input frame (margin w/64) and mapped back with the align-corners scale.
    """
    glob = G.official_grid(GLOBAL_GRID, float(model_hw[0]), float(model_hw[1]))
    xy = G.model_to_input(glob, model_hw, input_hw)
    return np.concatenate([np.zeros((len(xy), 1)), xy], axis=1)


def local_grid(query_xy: np.ndarray, model_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """The official 8x8 local support grid around one query, ``[64, 3]`` rows (t=0, x, y) in input pixels.

    query_xy: ``(x, y)`` in input pixels. The grid spans ``LOCAL_EXTENT`` model pixels centred on the
    query in model space (margin extent/64), so the tracker sees it where the official predictor puts it.
    """
    qm = G.input_to_model(np.asarray(query_xy, np.float64).reshape(1, 2), model_hw, input_hw)[0]
    local = G.official_grid(LOCAL_GRID, LOCAL_EXTENT, LOCAL_EXTENT) + (qm - LOCAL_EXTENT / 2.0)
    xy = G.model_to_input(local, model_hw, input_hw)
    return np.concatenate([np.zeros((len(xy), 1)), xy], axis=1)


OCCLUSION_RULES = ("tracker", "cotracker3")


def _run(
    tracker: Tracker, video: ArrayVideo, queries: np.ndarray, keep: int, rule: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One tracker call; returns (tracks ``[T, keep, 2]``, visible ``[T, keep]``, extras ``{k: [T, keep, ...]}``)
    for the first ``keep`` queries (support points dropped). ``extras`` is the output's ``extras`` dict when the
    tracker returns one (:class:`~pointtrack_cli.ensemble.tracker.EnsembleTrackOutput`), else empty.

    rule 'tracker': the tracker's own thresholded visibility; 'cotracker3': visibility_prob x confidence
    > 0.6 (strict), the rule of CoTracker3's evaluation.
    """
    out = tracker.track(video, queries)
    t = video.num_frames
    if out.tracks.shape[:2] != (t, len(queries)):
        raise PtrackError(
            f"tracker {tracker.name!r} returned tracks of shape {out.tracks.shape} for {t} frames and "
            f"{len(queries)} queries (a tracker bug; report it)"
        )
    if rule == "cotracker3":
        visible = (out.visibility_prob.astype(np.float64) * out.confidence) > 0.6
    else:
        visible = out.visibility
    extras = {k: np.asarray(v)[:, :keep] for k, v in (getattr(out, "extras", None) or {}).items()}
    return out.tracks[:, :keep], visible[:, :keep], extras


def predict(
    tracker: Tracker,
    frames: np.ndarray,
    query_points: np.ndarray,
    protocol: str = "joint",
    model_hw: tuple[int, int] = G.MODEL_RESOLUTION,
    occlusion_rule: str = "tracker",
    support: bool = True,
) -> Prediction:
    """Track TAP-Vid queries ``[Q, 3]`` (t, y, x) through ``frames [T, H, W, 3]``.

    joint: all queries + the 5x5 global grid in one call. single: per query, the query + the 8x8
    local grid + the 5x5 global grid (support points at frame 0; only the query's track is kept).
    ``support=False`` sends the queries alone (how CoTracker3 evaluates its online model).
    ``model_hw`` is the tracker's input size, used only to place the support points. Build the tracker
    without its own support grid (``support_grid=False``) so the grid is not added twice.
    Returns predictions ``[Q, T, 2]`` (x, y) / ``occluded [Q, T]`` in the frames' pixels.
    """
    if protocol not in PROTOCOLS:
        raise PtrackError(f"unknown protocol {protocol!r} (use joint or single)")
    if occlusion_rule not in OCCLUSION_RULES:
        raise PtrackError(f"unknown occlusion rule {occlusion_rule!r} (use tracker or cotracker3)")
    t, h, w = frames.shape[:3]
    queries = to_tracker_queries(query_points)
    n = len(queries)
    tracks = np.full((t, n, 2), np.nan, np.float32)
    visible = np.zeros((t, n), bool)
    extras: dict[str, np.ndarray] = {}  # [T, Q, ...] while filling, like tracks
    start = time.perf_counter()
    if n:
        video = ArrayVideo(frames, fps=25.0)
        grid = global_grid(model_hw, (h, w)) if support else np.zeros((0, 3))
        if protocol == "joint":
            tracks[:], visible[:], extras = _run(tracker, video, np.concatenate([queries, grid]), n, occlusion_rule)
        else:
            for i, q in enumerate(queries):
                local = local_grid(q[1:], model_hw, (h, w)) if support else np.zeros((0, 3))
                batch = np.concatenate([q[None], local, grid])
                tr, vis, ext = _run(tracker, video, batch, 1, occlusion_rule)
                tracks[:, i], visible[:, i] = tr[:, 0], vis[:, 0]
                for k, v in ext.items():
                    if k not in extras:
                        extras[k] = np.empty((t, n) + v.shape[2:], v.dtype)
                    extras[k][:, i] = v[:, 0]
    seconds = time.perf_counter() - start
    return Prediction(
        np.ascontiguousarray(tracks.transpose(1, 0, 2)), np.ascontiguousarray(~visible.T), seconds,
        {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in extras.items()},
    )


def score(queries: Queries, pred: Prediction) -> dict[str, float]:
    """The 13 official metrics of one video (fractions)."""
    return video_metrics(
        queries.query_points, queries.occluded, queries.target_points, pred.occluded, pred.tracks, queries.mode
    )


def video_job(job: dict | None, name: str, index: int, mode: str, protocol: str) -> dict:
    """The job of one video's saved predictions (its set's key is the digest): the evaluation's ``job``, the video's
    name and index in the dataset, the query mode and protocol."""
    return {**(job or {}), "video": name, "index": index, "mode": mode, "protocol": protocol}


# ---------------------------------------------------------------------------------------------
# Whole-dataset loops (generators, so the caller can drive a progress bar)


def evaluate_tracker(
    tracker: Tracker,
    dataset: TapVidDataset,
    mode: str,
    protocol: str = "joint",
    *,
    limit: int | None = None,
    save_dir: Path | None = None,
    model_hw: tuple[int, int] = G.MODEL_RESOLUTION,
    occlusion_rule: str = "tracker",
    support: bool = True,
    meta: dict | None = None,
    oracle: bool = False,
    job: dict | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[VideoResult]:
    """Yield a :class:`VideoResult` per video (first ``limit`` videos), optionally saving predictions.

    oracle: the tracker must return candidates (``ensemble:...``); each result's ``extra["comparison"]``
    then holds the metrics of every teacher alone and of the per-frame oracle (see :mod:`.oracle`).
    save_dir: one output set per video (:func:`.predictions.prediction_set`), its job ``job`` + the video's name
    and index. A video whose complete set of the same job is there is not tracked again: its saved prediction
    is scored (``extra["resumed"]``), so a killed evaluation resumes. Another job's set is refused unless
    ``overwrite``.
    shard: ``(rank, world)``: only the videos ``k`` (of the first ``limit``) with ``k % world == rank`` are decoded
    and tracked (one process of a sharded run; the others' videos are skipped unread).
    """
    names = list(getattr(tracker, "teacher_names", []))
    rank, world = shard
    for k, (name, rec, where) in enumerate(islice(dataset.records(), limit)):
        if k % world != rank:
            continue
        video = make_video(name, rec, where, dataset.gt_scale)
        queries = sample_queries(video, mode)
        extra: dict = {}
        if save_dir is None:
            pred = predict(tracker, video.frames, queries.query_points, protocol, model_hw, occlusion_rule, support)
        else:
            vjob = video_job(job, video.name, k, mode, protocol)
            key = digest(vjob)
            with prediction_set(save_dir, video.name, overwrite) as outs:
                if outs.decide(key, vjob):
                    pred = load_prediction(outs.files[0], queries, video.num_frames)
                    extra["resumed"] = True
                else:
                    pred = predict(tracker, video.frames, queries.query_points, protocol, model_hw, occlusion_rule,
                                   support)
                    with outs.path(prediction_filename(video.name)) as p:
                        write_prediction(p, video, queries, pred, meta or {})
                    outs.commit(key, vjob)
        if oracle:
            if "candidates" not in pred.extras and len(queries):
                raise PtrackError(f"--oracle needs an ensemble model (ensemble:...); {tracker.name!r} returns no candidates")
            extra["comparison"] = compare_candidates(queries, pred, names)
        yield VideoResult(video.name, video.num_frames, len(queries), score(queries, pred), pred.seconds, extra)


def score_directory(
    pred_dir: Path, dataset: TapVidDataset, mode: str, *, limit: int | None = None
) -> Iterator[VideoResult]:
    """Yield a :class:`VideoResult` per video from ``<pred_dir>/<video>.npz`` prediction files."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise PtrackError(f"--predictions {pred_dir} is not a folder (give the folder of per-video .npz files)")
    for video in islice(dataset.videos(load_frames=False), limit):
        path = pred_dir / prediction_filename(video.name)
        if not path.is_file():
            raise PtrackError(
                f"no predictions for video {video.name!r}: {path} is missing (use --limit, or predict every video)"
            )
        queries = sample_queries(video, mode)
        pred = load_prediction(path, queries, video.num_frames)
        yield VideoResult(video.name, video.num_frames, len(queries), score(queries, pred))

