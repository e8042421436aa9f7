"""`ptrack track`: the options reach the API (and its metadata); an ensemble id runs exactly as `ptrack ensemble`."""
from __future__ import annotations

import numpy as np

from pointtrack_cli import load_tracks


def test_frame_selection_is_recorded_as_given(tmp_path, cli, mp4_video):
    res = cli(["track", mp4_video, "--model", "lk", "--grid", 3, "--start", 2, "--stride", 2, "--end", 15,
               "--out", tmp_path / "o", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "o" / "tracks.npz")
    assert r.frame_indices.tolist() == [2, 4, 6, 8, 10, 12, 14]
    assert (r.meta["start"], r.meta["end"], r.meta["stride"]) == (2, 15, 2)


def test_track_with_an_ensemble_id_equals_ptrack_ensemble(tmp_path, cli, mp4_video):
    common = ["--grid", 3, "--select", "median", "--quiet", "--no-overlay", "--end", 10]
    a = cli(["track", mp4_video, "--model", "ensemble:lk,lk", "--out", tmp_path / "a", *common])
    b = cli(["ensemble", mp4_video, "--teachers", "lk,lk", "--out", tmp_path / "b", *common])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ra, rb = load_tracks(tmp_path / "a"), load_tracks(tmp_path / "b")
    for name in ("tracks", "visibility", "visibility_prob", "confidence", "queries", "frame_indices"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)
    with np.load(tmp_path / "a" / "selection.npz") as sa, np.load(tmp_path / "b" / "selection.npz") as sb:
        assert sorted(sa.files) == sorted(sb.files)
        for k in sa.files:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        assert sa["teachers"].tolist() == ["lk", "lk#2"]


def test_ensemble_id_refuses_single_tracker_options(tmp_path, cli, mp4_video):
    res = cli(["track", mp4_video, "--model", "ensemble:lk,lk", "--weights", tmp_path / "w.pth", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "ensemble:ID=PATH" in res.output
    res = cli(["track", mp4_video, "--model", "lk", "--select", "median", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "need an ensemble model" in res.output
    assert "Traceback" not in res.output


def test_unknown_preset_teacher_is_one_line(tmp_path, cli, mp4_video):
    res = cli(["ensemble", mp4_video, "--teachers", "lk,nope", "--select", "median", "--out", tmp_path / "o"])
    assert res.exit_code == 2
    assert "unknown teacher 'nope'" in res.output and "trackon-r" in res.output
    assert "Traceback" not in res.output
