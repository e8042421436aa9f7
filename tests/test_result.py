"""tracks.npz's named points: point_names, anchors and anchor are written, read back, and checked when foreign."""
from __future__ import annotations

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.writers import save_arrays, save_npz
from pointtrack_cli.result import TrackResult, load_tracks
from tests.helpers.named_tracks import NAMES, named_result


def test_names_and_anchors_round_trip(tmp_path):
    r = named_result()
    save_npz(r, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as z:  # plain arrays: no pickle needed
        assert z["point_names"].tolist() == NAMES
        assert z["anchors"].shape == (3, 4) and z["anchor"].dtype == np.int32
    back = load_tracks(tmp_path / "t.npz")
    assert back.point_names == NAMES
    np.testing.assert_array_equal(back.anchors, r.anchors)
    np.testing.assert_array_equal(back.anchor, r.anchor)


def test_defaults_for_files_without_them(tmp_path):
    r = named_result()
    arrays = {k: v for k, v in r.to_npz_dict().items() if k not in ("point_names", "anchors", "anchor")}
    save_arrays(arrays, tmp_path / "old.npz")
    back = load_tracks(tmp_path / "old.npz")
    assert back.point_names == ["p0", "p1", "p2"]
    np.testing.assert_array_equal(back.anchors[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(back.anchors[:, 1:], r.queries)
    assert back.anchor[0].tolist() == [0, -1, 2]  # -1: no estimate (NaN track)


@pytest.mark.parametrize("key, value, message", [
    ("point_names", np.array(["a", "b"]), "must be 3 strings"),
    ("point_names", np.array(["a", "a", "b"]), "a name twice"),
    ("point_names", np.array(["a", "b c", "d"]), "the name 'b c'"),
    ("anchors", np.array([[0, 2, 1, 1], [1, 2, 1, 1]], np.float32), "every point 0..2 at least one anchor"),
    ("anchors", np.array([[0, 2, 1, 1], [1, 2, 1, np.nan], [2, 2, 1, 1]], np.float32), "NaN or infinite"),
    ("anchor", np.full((4, 3), 5, np.int32), "outside -1..2"),
    ("anchor", np.zeros((4, 3), np.float32), "it must be numeric"),
])
def test_foreign_point_arrays_are_checked(tmp_path, key, value, message):
    arrays = named_result().to_npz_dict()
    arrays[key] = value
    save_arrays(arrays, tmp_path / "bad.npz")
    with pytest.raises(PtrackError, match=message):
        load_tracks(tmp_path / "bad.npz")


def test_a_result_without_points_names_them_after_their_column():
    r = TrackResult(tracks=np.zeros((2, 3, 2)), visibility=np.ones((2, 3), bool), visibility_prob=np.ones((2, 3)),
                    confidence=np.ones((2, 3)), queries=np.zeros((3, 3)), frame_indices=[0, 1], fps=1, size=(4, 4),
                    model="m")
    assert r.point_names == ["p0", "p1", "p2"] and r.anchor.tolist() == [[0, 1, 2]] * 2
