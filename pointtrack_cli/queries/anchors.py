"""Merging a point's anchors: each anchor was tracked as its own query; per frame one of them is the point.

:func:`merge_anchors` is the rule (a pure function of which anchor has an estimate where); :func:`gather` applies
a choice to any per-anchor array; :func:`attach_points` turns a result with one column per anchor into the result
with one column per point (``tracks.npz``'s ``queries``, ``point_names``, ``anchors`` and ``anchor``).
"""
from __future__ import annotations

import numpy as np

from ..result import TrackResult
from .points import QuerySet

ANCHOR_RULE = ("per frame, among the point's anchors with an estimate there, the one nearest in time "
               "(a tie: the later one); anchor [T, N] says which (-1: none)")


def merge_anchors(point: np.ndarray, anchor_t: np.ndarray, estimate: np.ndarray, num_points: int) -> np.ndarray:
    """Which anchor each point takes on each frame: ``[T, N]`` anchor index, -1 where none has an estimate.

    point: ``[A]`` the point of each anchor (every point in ``0..N-1`` has at least one anchor).
    anchor_t: ``[A]`` each anchor's frame, as an index into the ``T`` frames.
    estimate: ``[T, A]`` True where anchor ``a``'s track has a position on frame ``t``.

    The rule: on frame ``t`` the point takes, among its anchors with an estimate on ``t``, the one nearest in time
    (smallest ``|t - anchor_t|``); when two are equally near (one before ``t``, one after), the later one. An anchor's
    own frame therefore always takes that anchor, and a point with one anchor takes it wherever it has an estimate.
    """
    point = np.asarray(point, np.int64)
    anchor_t = np.asarray(anchor_t, np.int64)
    estimate = np.asarray(estimate, bool)
    T = estimate.shape[0]
    t = np.arange(T, dtype=np.int64)[:, None]
    out = np.full((T, num_points), -1, np.int64)
    counts = np.bincount(point, minlength=num_points)
    single = np.nonzero(counts[point] == 1)[0]  # anchors that are their point's only one
    out[:, point[single]] = np.where(estimate[:, single], single[None, :], -1)
    for n in np.nonzero(counts > 1)[0]:
        cols = np.nonzero(point == n)[0]
        # 2|t - t_a| - [t_a > t]: nearer first; at equal distance the anchor after t (the later one) ranks first.
        key = 2 * np.abs(t - anchor_t[None, cols]) - (anchor_t[None, cols] > t)
        key = np.where(estimate[:, cols], key, np.iinfo(np.int64).max)
        out[:, n] = np.where(estimate[:, cols].any(axis=1), cols[np.argmin(key, axis=1)], -1)
    return out


def gather(values: np.ndarray, which: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``values [T, A, ...]`` -> ``[T, N, ...]``: on each frame the anchor ``which [T, N]`` names, and where it is -1
    the anchor ``fallback [N]`` (the point's first anchor, which has no estimate there either)."""
    idx = np.where(which >= 0, which, np.asarray(fallback, np.int64)[None, :])
    idx = idx.reshape(idx.shape + (1,) * (values.ndim - 2))
    return np.take_along_axis(values, idx, axis=1)


def estimates(tracks: np.ndarray) -> np.ndarray:
    """``[T, A]`` True where a track ``[T, A, 2]`` has a position (finite x and y)."""
    return np.isfinite(tracks).all(axis=-1)


def attach_points(result: TrackResult, points: QuerySet) -> TrackResult:
    """``result`` tracked one column per anchor of ``points`` (in anchor order) -> one column per point.

    Tracks, visibility, visibility_prob and confidence are taken per frame from the anchor :func:`merge_anchors`
    picks; ``queries`` become each point's first anchor, and the result carries ``point_names``, ``anchors``
    ``[A, 4]`` and ``anchor [T, N]``. With one anchor per point the arrays are left as they are.
    """
    if result.num_points != points.num_anchors:
        raise ValueError(f"the result has {result.num_points} columns for {points.num_anchors} anchors")
    anchors = points.anchors.astype(np.float32)
    if points.num_anchors == points.num_points:  # result.anchor already is each point's own anchor where it has one
        result.point_names, result.anchors = list(points.names), anchors
        return result
    t_index = np.searchsorted(result.frame_indices, points.rows[:, 0].astype(np.int64))
    which = merge_anchors(points.point, t_index, estimates(result.tracks), points.num_points)
    first = points.first
    meta = {**result.meta, "anchors": ANCHOR_RULE}
    return TrackResult(
        tracks=gather(result.tracks, which, first), visibility=gather(result.visibility, which, first),
        visibility_prob=gather(result.visibility_prob, which, first), confidence=gather(result.confidence, which, first),
        queries=points.queries, frame_indices=result.frame_indices, fps=result.fps, size=result.size,
        model=result.model, meta=meta, ptrack_version=result.ptrack_version, extra_files=result.extra_files,
        point_names=list(points.names), anchors=anchors, anchor=which.astype(np.int32),
    )
