"""TAP-Vid metrics, computed exactly as the official ``compute_tapvid_metrics`` does (float64).

Shapes: ``query_points [B, Q, 3]`` rows ``(t, y, x)`` (y before x, as in TAP-Vid), ``*_occluded`` bool
``[B, Q, T]`` (True = NOT visible), ``*_tracks [B, Q, T, 2]`` (x, y). All coordinates are pixels of the
256x256 evaluation frames. Every metric is computed per video (batch element); the benchmark number
is the unweighted mean of the per-video values (:func:`mean_over_videos`), never a pooled value.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
"""Distance thresholds in pixels at 256x256."""

METRIC_NAMES: tuple[str, ...] = (
    "occlusion_accuracy",
    *(f"pts_within_{d}" for d in THRESHOLDS),
    *(f"jaccard_{d}" for d in THRESHOLDS),
    "average_jaccard",
    "average_pts_within_thresh",
)
"""The 13 official output keys, in the official order."""

QUERY_MODES = ("first", "strided")


def evaluation_mask(query_frames: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """Which ``(q, t)`` entries are scored: ``[..., T]`` bool from query times ``[...]``.

    'first' scores frames strictly after the query frame; 'strided' every frame but the query frame.
    Query times are rounded with ``np.round`` (halves to even), as the official code does.
    """
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
    tq = np.round(np.asarray(query_frames, dtype=np.float64)).astype(np.int64)
    if tq.size and (tq.min() < 0 or tq.max() >= num_frames):
        raise ValueError(f"query frames must lie in [0, {num_frames - 1}], got {tq.min()}..{tq.max()}")
    t = np.arange(num_frames)
    if query_mode == "first":
        return t > tq[..., None]
    return t != tq[..., None]


def compute_tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
    get_trackwise_metrics: bool = False,
) -> dict[str, np.ndarray]:
    """The 13 TAP-Vid metrics, each ``[B]`` (or ``[B, Q]`` with ``get_trackwise_metrics``), float64.

    * occlusion_accuracy = sum(E * [pred_occ == gt_occ]) / sum(E)
    * pts_within_d = sum(E * V * C_d) / sum(E * V) (predicted occlusion is ignored)
    * jaccard_d = TP / (sum(E * V) + FP), TP = sum(E * V * P * C_d), FP = sum(E * P * (~V | ~C_d))
    with E the evaluation mask, V = GT visible, P = predicted visible, C_d = squared error < d^2
    (strict; NaN predictions are never within). 0/0 gives NaN, as in the official code.
    """
    qp = np.asarray(query_points, dtype=np.float64)
    gt_occ = np.asarray(gt_occluded, dtype=bool)
    pr_occ = np.asarray(pred_occluded, dtype=bool)
    # float64 matters: float32 moves points across the strict thresholds (metrics_float64_boundary).
    gt = np.asarray(gt_tracks, dtype=np.float64)
    pr = np.asarray(pred_tracks, dtype=np.float64)
    if qp.ndim != 3 or qp.shape[-1] != 3:
        raise ValueError(f"query_points must be [B, Q, 3] (t, y, x), got {qp.shape}")
    b, q = qp.shape[:2]
    if gt_occ.ndim != 3 or gt_occ.shape[:2] != (b, q):
        raise ValueError(f"gt_occluded must be [B, Q, T] = [{b}, {q}, T], got {gt_occ.shape}")
    t = gt_occ.shape[2]
    for name, arr, shape in (
        ("pred_occluded", pr_occ, (b, q, t)),
        ("gt_tracks", gt, (b, q, t, 2)),
        ("pred_tracks", pr, (b, q, t, 2)),
    ):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")

    axes = (2,) if get_trackwise_metrics else (1, 2)
    evaluated = evaluation_mask(qp[..., 0], t, query_mode)
    visible = ~gt_occ
    pred_visible = ~pr_occ
    sq_dist = np.sum(np.square(pr - gt), axis=-1)  # NaN stays NaN, and NaN < x is False

    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["occlusion_accuracy"] = np.sum((pr_occ == gt_occ) & evaluated, axis=axes) / np.sum(evaluated, axis=axes)
        n_visible = np.sum(visible & evaluated, axis=axes)
        within_all, jaccard_all = [], []
        for d in THRESHOLDS:
            within = sq_dist < np.square(d)
            correct = within & visible & evaluated
            frac = np.sum(correct, axis=axes) / n_visible
            true_pos = np.sum(correct & pred_visible, axis=axes)
            # A visible prediction is a false positive when the GT is occluded or the point is too far.
            false_pos = np.sum((~visible | ~within) & pred_visible & evaluated, axis=axes)
            jac = true_pos / (n_visible + false_pos)
            out[f"pts_within_{d}"] = frac
            out[f"jaccard_{d}"] = jac
            within_all.append(frac)
            jaccard_all.append(jac)
        out["average_jaccard"] = np.mean(np.stack(jaccard_all, axis=-1), axis=-1)
        out["average_pts_within_thresh"] = np.mean(np.stack(within_all, axis=-1), axis=-1)
    return {k: out[k] for k in METRIC_NAMES}


def mean_over_videos(per_video: Sequence[Mapping[str, float]] | Mapping[str, np.ndarray]) -> dict[str, float]:
    """Benchmark aggregation: the unweighted ``np.mean`` over videos of each metric (NaN propagates).

    Accepts a list of per-video ``{metric: value}`` dicts or one ``{metric: [B]}`` dict.
    """
    if isinstance(per_video, Mapping):
        return {k: float(np.mean(np.asarray(per_video[k], dtype=np.float64))) for k in METRIC_NAMES if k in per_video}
    if not per_video:
        return {k: float("nan") for k in METRIC_NAMES}
    return {k: float(np.mean(np.array([float(v[k]) for v in per_video], dtype=np.float64))) for k in METRIC_NAMES}


def video_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
) -> dict[str, float]:
    """Metrics of one video from unbatched arrays (``[Q, 3]``, ``[Q, T]``, ``[Q, T, 2]``) as plain floats."""
    res = compute_tapvid_metrics(
        np.asarray(query_points)[None],
        np.asarray(gt_occluded)[None],
        np.asarray(gt_tracks)[None],
        np.asarray(pred_occluded)[None],
        np.asarray(pred_tracks)[None],
        query_mode,
    )
    return {k: float(v[0]) for k, v in res.items()}
