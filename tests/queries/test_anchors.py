"""Anchor merging: the rule (nearest anchor in time with an estimate, ties to the later one) and its application."""
from __future__ import annotations

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.queries import attach_points, gather, group_points, merge_anchors
from pointtrack_cli.result import TrackResult


def test_nearest_anchor_in_time_wins_and_a_tie_goes_to_the_later_one():
    # One point, anchors on frames 0 and 6 of 10 frames, both with estimates everywhere.
    which = merge_anchors(np.array([0, 0]), np.array([0, 6]), np.ones((10, 2), bool), 1)[:, 0]
    assert which.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # frame 3 is 3 from both: the later anchor


def test_only_anchors_with_an_estimate_count():
    est = np.ones((8, 3), bool)
    est[:4, 1] = False  # the point's second anchor (frame 5) has nothing before frame 4
    est[6:, 2] = False  # a single-anchor point that stops at frame 6
    which = merge_anchors(np.array([0, 0, 1]), np.array([0, 5, 2]), est, 2)
    assert which[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # frame 3 is nearer 5, but anchor 1 has no estimate
    assert which[:, 1].tolist() == [2, 2, 2, 2, 2, 2, -1, -1]
    est[:, :2] = False
    assert (merge_anchors(np.array([0, 0, 1]), np.array([0, 5, 2]), est, 2)[:, 0] == -1).all()


def test_three_anchors_and_the_anchor_frames_take_their_own_anchor():
    t_a = np.array([2, 9, 15])
    which = merge_anchors(np.zeros(3, int), t_a, np.ones((20, 3), bool), 1)[:, 0]
    assert which[t_a].tolist() == [0, 1, 2]
    assert which.tolist() == [0] * 6 + [1] * 6 + [2] * 8  # ties at 5.5 (none) and 12 -> the later anchor


def _result(tracks: np.ndarray, queries: np.ndarray) -> TrackResult:
    T, N = tracks.shape[:2]
    vis = np.isfinite(tracks).all(-1)
    return TrackResult(tracks=tracks, visibility=vis, visibility_prob=vis * 0.9, confidence=np.full((T, N), 0.5),
                       queries=queries, frame_indices=np.arange(10, 10 + T), fps=10.0, size=(64, 48), model="x")


def test_attach_points_merges_columns_into_points():
    # Rows: nose@10, ear@11, nose@14 -> points nose (anchors 0, 1), ear (anchor 2) after grouping.
    qs = group_points(np.array([[10, 1, 1], [11, 5, 5], [14, 9, 9]]), ["nose", "ear", "nose"])
    assert qs.names == ("nose", "ear") and qs.point.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(qs.queries, [[10, 1, 1], [11, 5, 5]])
    T = 6
    tracks = np.stack([np.full((T, 2), 1.0), np.full((T, 2), 9.0), np.full((T, 2), 5.0)], axis=1)  # anchor order
    tracks[0, 2] = np.nan  # ear has no estimate on frame 10
    r = attach_points(_result(tracks, qs.rows), qs)
    assert r.num_points == 2 and r.point_names == ["nose", "ear"]
    assert r.anchor[:, 0].tolist() == [0, 0, 1, 1, 1, 1]  # frames 10..15; frame 12 ties (2 each side) -> later
    assert r.anchor[:, 1].tolist() == [-1, 2, 2, 2, 2, 2]
    np.testing.assert_array_equal(r.tracks[:, 0, 0], [1, 1, 9, 9, 9, 9])
    assert np.isnan(r.tracks[0, 1]).all() and not r.visibility[0, 1]
    np.testing.assert_array_equal(r.queries, [[10, 1, 1], [11, 5, 5]])
    np.testing.assert_array_equal(r.anchors, [[0, 10, 1, 1], [0, 14, 9, 9], [1, 11, 5, 5]])
    assert "nearest in time" in r.meta["anchors"]


def test_one_anchor_per_point_leaves_the_arrays_alone():
    qs = group_points(np.array([[10, 1, 1], [10, 5, 5]]), [None, "tip"])
    tracks = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    r = attach_points(_result(tracks, qs.rows), qs)
    np.testing.assert_array_equal(r.tracks, tracks)
    assert r.point_names == ["p0", "tip"] and r.anchor.tolist() == [[0, 1]] * 6


def test_gather_any_trailing_shape():
    vals = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out = gather(vals, np.array([[2, -1], [0, 1]]), np.array([0, 1]))
    np.testing.assert_array_equal(out, [[vals[0, 2], vals[0, 1]], [vals[1, 0], vals[1, 1]]])


@pytest.mark.parametrize("names, message", [
    (["a", "a"], "two anchors on frame 0"),
    (["p1", None], "also the name ptrack gives unnamed point 1"),
])
def test_grouping_refuses_ambiguous_points(names, message):
    with pytest.raises(PtrackError, match=message):
        group_points(np.array([[0, 1, 1], [0, 5, 5]]), names)
