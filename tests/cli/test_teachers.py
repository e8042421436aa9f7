"""Every ported teacher works wherever a tracker id is accepted: `track`, `eval tapvid`, `ensemble --teachers`.

Fill-rule weights in the official file layout, at a small resolution (``ID@HxW``) so that CPU runs stay short;
fidelity itself is tested per teacher in tests/models and tests/trackers.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pointtrack_cli import load_tracks
from tests.helpers import FIXTURES
from tests.helpers.teachers import WRITERS, small_id, teacher_checkpoint

TEACHERS = sorted(WRITERS)


def davis_one_query_frame(path):
    """mini_davis' first video cut to 12 frames, with only the points visible on frame 0: ``eval --mode first``
    then gives every teacher one query frame (AllTracker runs once per distinct query frame: 6 dense runs on the
    whole video took 4 of the suite's minutes)."""
    with open(FIXTURES / "tapvid" / "mini_davis.pkl", "rb") as f:
        name, v = next(iter(pickle.load(f).items()))
    keep = ~v["occluded"][:, 0]
    cut = {"video": v["video"][:12], "points": v["points"][keep, :12], "occluded": v["occluded"][keep, :12]}
    with open(path, "wb") as f:
        pickle.dump({name: cut}, f)
    return path


@pytest.mark.parametrize("model_id", TEACHERS)
def test_teacher_in_track_eval_and_ensemble(tmp_path, cli, mp4_video, model_id):
    w = teacher_checkpoint(model_id, tmp_path / "w")
    tid = small_id(model_id)
    res = cli(["track", mp4_video, "--model", tid, "--weights", w, "--grid", 3, "--end", 8, "--out", tmp_path / "t",
               "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "t")
    assert r.tracks.shape == (8, 9, 2) and r.model == tid

    res = cli(["eval", "tapvid", "--dataset", "davis", "--data", davis_one_query_frame(tmp_path / "davis.pkl"),
               "--model", tid, "--weights", w, "--quiet", "--json", tmp_path / "e.json"])
    assert res.exit_code == 0, res.output
    mean = json.loads((tmp_path / "e.json").read_text())["mean"]
    assert 0.0 <= mean["average_jaccard"] <= 1.0

    res = cli(["ensemble", mp4_video, "--teachers", f"{tid}={w},lk", "--select", "median", "--grid", 3, "--end", 8,
               "--out", tmp_path / "n", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "n" / "selection.npz") as z:
        assert z["teachers"].tolist() == [tid, "lk"]
        assert z["candidates"].shape == (8, 9, 2, 2)
