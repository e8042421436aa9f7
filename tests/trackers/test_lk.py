"""The weight-free trackers (lk, protracker) recover known sub-pixel motion and lose points that leave the frame."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import VELOCITY
from pointtrack_cli import load_tracks
from pointtrack_cli.synthetic import translating_frames, translation_gt, write_mp4


@pytest.mark.parametrize("model", ["lk", "protracker"])
def test_weight_free_tracker_recovers_subpixel_translation(tmp_path, cli, model):
    T, H, W, v = 40, 120, 160, (1.3, 0.45)
    video = write_mp4(translating_frames(T, H, W, v, seed=11), tmp_path / "shift.mp4", fps=20)
    res = cli(["track", video, "--model", model, "--grid", 10, "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    gt = translation_gt(r.queries[:, 1:], T, v)
    err = np.linalg.norm(r.tracks - gt, axis=-1)
    assert r.visibility.mean() > 0.5
    assert err[r.visibility].mean() < 0.5
    def within(margin):
        return ((gt[..., 0] >= -0.5 - margin) & (gt[..., 0] <= W - 0.5 + margin)
                & (gt[..., 1] >= -0.5 - margin) & (gt[..., 1] <= H - 0.5 + margin))

    outside = ~within(1.0)  # clearly out (sub-pixel estimates at the very border are ambiguous)
    assert outside.sum() > 50, "the test must make points leave the frame"
    assert not r.visibility[outside].any(), "points outside the frame must be marked not visible"
    assert r.visibility[within(-2.0)].mean() > 0.9


def test_lk_tracks_backward_from_a_later_query(png_video, cli, tmp_path):
    res = cli(["track", png_video, "--model", "lk", "--point", "12,60,50", "--out", tmp_path, "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path)
    gt = translation_gt(np.array([[60 - 12 * VELOCITY[0], 50 - 12 * VELOCITY[1]]]), r.num_frames, VELOCITY)
    assert r.visibility[:12].all()
    assert np.abs(r.tracks[:, 0] - gt[:, 0]).max() < 0.5
