"""--format tapvid: the DAVIS pickle that `ptrack eval` reads (its own restricted reader, not pickle.load)."""
from __future__ import annotations

import numpy as np

from pointtrack_cli.eval.datasets import open_dataset
from pointtrack_cli.io.formats import tapvid
from tests.helpers.named_tracks import named_result


def test_eval_reads_the_export(tmp_path):
    r = named_result()
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(r.num_frames)]
    tapvid.save_tapvid(r, frames, tmp_path / "tapvid_davis.pkl")
    (video,) = list(open_dataset("davis", tmp_path / "tapvid_davis.pkl"))
    assert video.name == "mouse" and video.frames.shape == (4, 256, 256, 3)
    assert video.frames[2].mean() == 20  # the frames in order, resized
    # points * 256 are pixels of the 256x256 frames, pixel centres mapped: x256 = (x + 0.5) * 256 / 64 - 0.5.
    expect = (r.tracks.astype(np.float64) + 0.5) * np.array([256 / 64, 256 / 48]) - 0.5
    got = video.points.transpose(1, 0, 2)
    est = np.isfinite(r.tracks).all(-1)
    np.testing.assert_allclose(got[est], expect[est], atol=1e-3)
    np.testing.assert_array_equal(video.occluded.T, ~(r.visibility & est))
