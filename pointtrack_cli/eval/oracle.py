"""The ensemble's headroom: each teacher alone and the per-frame oracle (Track-On-R, Figure 2).

Input per video: the ensemble's candidates ``[Q, T, M, 2]`` (x, y at 256x256; NaN = the teacher gave no
estimate) and each teacher's own visibility flags ``[Q, T, M]``, as
:class:`~pointtrack_cli.ensemble.tracker.EnsembleTracker` returned them for the official queries.
Every number is computed by :func:`~.metrics.video_metrics` (the official metric code), never re-derived.

Oracle, as the official evaluator (``evaluation/evaluator.py``) defines it: per query and frame the
candidate closest (Euclidean) to the ground-truth position, **with the ground-truth visibility**. So its
OA is 1 by construction and its AJ counts only position errors; it is an upper bound of what any
per-frame selection among these candidates can reach in <δ_avg (every teacher's <δ_avg, and the
verifier's, are <= the oracle's on every video; the median is not a candidate and can exceed it).
Choices where the definition is silent:

* GT-occluded frames: the closest candidate to the annotated position is taken as elsewhere; it does not
  matter, because with GT visibility those frames score neither position nor a false positive.
* No candidate has an estimate (possible only before the query frame when no teacher tracks backward,
  i.e. in ``strided`` mode): the oracle has no estimate either (NaN). The metric counts it as not within
  any threshold, and as a false positive for AJ where the GT is visible, exactly as for any tracker.

Teachers alone are scored with their own visibility flags (the ones that vote in the ensemble), not
with ``--occlusion-rule``.
"""
from __future__ import annotations

import warnings

import numpy as np

from .datasets import Queries
from .metrics import video_metrics
from .predictions import Prediction


def oracle_tracks(candidates: np.ndarray, gt_tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (q, t) the candidate closest to the ground truth.

    candidates ``[Q, T, M, 2]``, gt_tracks ``[Q, T, 2]`` (pixels). Returns (tracks ``[Q, T, 2]`` float64,
    NaN where no candidate has an estimate; chosen ``[Q, T]`` int64 candidate index, -1 there).
    Exact distance ties go to the first candidate (``argmin``).
    """
    cand = np.asarray(candidates, np.float64)
    gt = np.asarray(gt_tracks, np.float64)
    dist = np.sqrt(np.sum(np.square(cand - gt[:, :, None, :]), axis=-1))  # NaN where the candidate is absent
    dist = np.where(np.isfinite(dist), dist, np.inf)
    chosen = np.argmin(dist, axis=-1).astype(np.int64)
    chosen[~np.isfinite(dist).any(-1)] = -1
    idx = np.clip(chosen, 0, None)[..., None, None]
    tracks = np.take_along_axis(cand, np.broadcast_to(idx, chosen.shape + (1, 2)), axis=2)[:, :, 0]
    tracks[chosen < 0] = np.nan
    return tracks, chosen


def compare_candidates(queries: Queries, pred: Prediction, names: list[str]) -> dict:
    """Metrics of one video for every teacher alone and for the oracle (module docstring for the rules).

    Returns ``{"teachers": {name: {metric: value}}, "oracle": {metric: value}}`` (fractions).
    """
    q, t = queries.occluded.shape
    cand = pred.extras.get("candidates")
    vis = pred.extras.get("candidate_visibility")
    if cand is None:  # a video without queries: nothing was tracked, metrics are NaN like the main ones
        cand = np.full((q, t, len(names), 2), np.nan)
        vis = np.zeros((q, t, len(names)), bool)
    if cand.shape[2] != len(names):
        raise ValueError(f"{cand.shape[2]} candidates but {len(names)} teacher names")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN candidates; 0/0 metrics of empty videos

        def metrics(tracks: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
            return video_metrics(queries.query_points, queries.occluded, queries.target_points, occluded, tracks,
                                 queries.mode)

        teachers = {name: metrics(cand[:, :, m], ~vis[:, :, m]) for m, name in enumerate(names)}
        best, _ = oracle_tracks(cand, queries.target_points)
        oracle = metrics(best, queries.occluded)  # ground-truth visibility, as the official oracle
    return {"teachers": teachers, "oracle": oracle}
