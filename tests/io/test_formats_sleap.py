"""--format sleap: SLEAP's analysis HDF5 read back with h5py, in SLEAP's (transposed) layout."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.formats import sleap
from pointtrack_cli.io.writers import check_outputs
from tests.helpers.named_tracks import FRAMES, NAMES, named_result

h5py = pytest.importorskip("h5py")


def test_analysis_file_layout_and_values(tmp_path):
    r = named_result()
    sleap.save_sleap(r, tmp_path / "s.analysis.h5")
    with h5py.File(tmp_path / "s.analysis.h5", "r") as f:
        tracks, occ, scores = f["tracks"][:], f["track_occupancy"][:], f["point_scores"][:]
        assert [n.decode() for n in f["node_names"][:]] == NAMES
        assert [n.decode() for n in f["track_names"][:]] == ["track_0"]
        assert f["video_path"][()].decode() == "/data/mouse.mp4"
        assert json.loads(f["provenance"][()])["model"] == "lk"
        assert f["instance_scores"].shape == (1, 9) and f["edge_inds"].shape == (0, 2)
    assert tracks.shape == (1, 2, 3, 9) and occ.shape == (9, 1) and scores.shape == (1, 3, 9)
    # SLEAP's readers transpose: tracks.T is [frames, nodes, xy, tracks].
    xy = tracks.T[..., 0]
    np.testing.assert_allclose(xy[FRAMES], r.tracks, atol=1e-6)
    assert np.isnan(xy[[0, 1, 3, 5, 7]]).all() and np.isnan(xy[2, 1]).all()
    assert occ[:, 0].tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(scores[0].T[FRAMES][1:], r.visibility_prob[1:], atol=1e-6)
    assert np.isnan(scores[0, 1, 2])  # ear, frame 2: no estimate


def test_missing_h5py_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(PtrackError, match=r'--format sleap needs h5py.*pip install "ptrack\[sleap\]"'):
        check_outputs("npz,sleap", overlay=False)
