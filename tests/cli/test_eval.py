"""``ptrack eval tapvid`` / ``ptrack eval score`` end to end on the mini TAP-Vid datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pointtrack_cli.api as api
from pointtrack_cli.eval.metrics import METRIC_NAMES
from pointtrack_cli.eval.runner import predict
from pointtrack_cli.trackers.base import Tracker, TrackOutput
from tests.helpers import FIXTURES, run_cli
from tests.helpers.realtracker_weights import fill_state_dict

FIXTURES = FIXTURES / "tapvid"
MINI = {
    "davis": FIXTURES / "mini_davis.pkl",
    "rgb_stacking": FIXTURES / "mini_rgb_stacking.pkl",
    "kinetics": FIXTURES / "mini_kinetics",
    "robotap": FIXTURES / "mini_robotap",
}
SUMMARY = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
# The README's reference numbers for the stored baselines on mini DAVIS (means over videos).
STATED = {
    ("first", "noisy"): (0.538338, 0.675966, 0.893665),
    ("strided", "noisy"): (0.544380, 0.676128, 0.900263),
    ("first", "zero"): (0.055963, 0.117149, 0.753586),
    ("strided", "zero"): (0.095741, 0.181268, 0.798225),
}


def run(*args) -> object:
    return run_cli(["eval", *args])


class ZeroMotion(Tracker):
    """Test tracker: every point stays at its query position, visible on every frame."""

    name = "zero-motion"
    backward = True

    def track(self, video, queries, progress=None):
        q = np.asarray(queries, np.float64)
        t = video.num_frames
        tracks = np.broadcast_to(q[None, :, 1:3], (t, len(q), 2))
        ones = np.ones((t, len(q)), np.float32)
        return TrackOutput(tracks, ones > 0, ones, ones)


@pytest.fixture
def zero_tracker(monkeypatch):
    """Make ``--model zero-motion`` build the test tracker (and record the build arguments).

    Patched where ``pointtrack_cli.api.build_tracker`` looks single trackers up (the registry's builder).
    """
    calls = []
    real = api.build_single_tracker

    def build(model, **kw):
        calls.append((model, kw))
        return ZeroMotion() if model == "zero-motion" else real(model, **kw)

    monkeypatch.setattr(api, "build_single_tracker", build)
    return calls


def _write_baseline(tmp_path: Path, mode: str, kind: str) -> Path:
    """One NPZ per video from the fixture's baseline predictions, in a mix of accepted layouts."""
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    out = tmp_path / f"{kind}_{mode}"
    out.mkdir()
    for vi, name in enumerate(z["video_names"]):
        qp = z[f"{mode}__{vi}__query_points"][0]
        if kind == "noisy":
            tracks, occ = z[f"{mode}__{vi}__noisy__pred_tracks"], z[f"{mode}__{vi}__noisy__pred_occluded"]
        else:
            shape = z[f"{mode}__{vi}__target_points"].shape
            tracks = np.broadcast_to(qp[None, :, None, [2, 1]], shape)
            occ = np.zeros(shape[:3], bool)
        if vi == 0:  # TAP-Vid order with the batch axis, as the official code produces it
            np.savez(out / f"{name}.npz", tracks=tracks, occluded=occ)
        elif vi == 1:  # frames first, as ptrack writes
            np.savez(out / f"{name}.npz", tracks=tracks[0].swapaxes(0, 1), occluded=occ[0].T, query_points=qp)
        else:  # TAP-Vid order, said explicitly
            np.savez(out / f"{name}.npz", tracks=tracks[0], visibility=~occ[0], layout="QT")
    return out


@pytest.mark.parametrize("mode", ["first", "strided"])
@pytest.mark.parametrize("kind", ["noisy", "zero"])
def test_score_mini_davis_stated_metrics(tmp_path, mode, kind):
    preds = _write_baseline(tmp_path, mode, kind)
    res = run("score", "--predictions", preds, "--dataset", "davis", "--data", MINI["davis"], "--mode", mode,
              "--json", tmp_path / "s.json", "--plot", tmp_path / "s.png", "--quiet")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "s.json").read_text())
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    for k, stated in zip(SUMMARY, STATED[(mode, kind)]):
        assert abs(got["mean"][k] - z[f"{mode}__mean__{kind}__{k}"]) <= 1e-6
        assert abs(got["mean"][k] - stated) <= 5e-7  # the README rounds to 6 decimals
    assert got["num_videos"] == 3 and set(got["mean"]) == set(METRIC_NAMES)
    for vi, v in enumerate(got["videos"]):
        for k in METRIC_NAMES:
            assert abs(v["metrics"][k] - z[f"{mode}__{vi}__{kind}__{k}"]) <= 1e-6
    assert f"{100 * STATED[(mode, kind)][0]:.1f}" in res.output  # the AJ mean is in the table
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_errors(tmp_path):
    preds = _write_baseline(tmp_path, "strided", "noisy")
    res = run("score", "--predictions", preds, "--dataset", "davis", "--data", MINI["davis"], "--mode", "first")
    assert res.exit_code == 2 and "another --mode" in res.output
    (preds / "synth-bramble.npz").unlink()
    res = run("score", "--predictions", preds, "--dataset", "davis", "--data", MINI["davis"], "--mode", "strided")
    assert res.exit_code == 2 and "synth-bramble" in res.output
    # --limit scores only the videos that are there
    res = run("score", "--predictions", preds, "--dataset", "davis", "--data", MINI["davis"], "--mode", "strided",
              "--limit", "1", "--json", tmp_path / "one.json", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "one.json").read_text())["num_videos"] == 1
    res = run("score", "--predictions", tmp_path / "missing", "--dataset", "davis", "--data", MINI["davis"])
    assert res.exit_code == 2 and "not a folder" in res.output


@pytest.mark.parametrize("ds", list(MINI))
def test_tapvid_every_dataset_with_zero_motion_tracker(tmp_path, zero_tracker, ds):
    """A tracker that predicts the query position reproduces the official zero-motion baseline on every layout."""
    res = run("tapvid", "--dataset", ds, "--data", MINI[ds], "--model", "zero-motion", "--json", tmp_path / "r.json", "--quiet")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text())
    z = np.load(FIXTURES / f"expected_mini_{ds}.npz")
    for k in SUMMARY:
        assert abs(got["mean"][k] - z[f"first__mean__zero__{k}"]) <= 1e-6, k
    for vi, v in enumerate(got["videos"]):
        assert v["name"] == str(z["video_names"][vi])
        for k in METRIC_NAMES:
            assert abs(v["metrics"][k] - z[f"first__{vi}__zero__{k}"]) <= 1e-6
    model, kw = zero_tracker[-1]
    assert model == "zero-motion" and kw["backward"] is False and kw["support_grid"] is False


@pytest.mark.parametrize("protocol", ["joint", "single"])
def test_tapvid_strided_protocols_limit_and_predictions(tmp_path, zero_tracker, protocol):
    out = tmp_path / "preds"
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--model", "zero-motion", "--mode", "strided",
              "--protocol", protocol, "--limit", "2", "--json", tmp_path / "r.json", "--save-predictions", out)
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text())
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    assert got["num_videos"] == 2 and got["protocol"] == protocol and got["query_mode"] == "strided"
    for vi, v in enumerate(got["videos"]):
        assert abs(v["metrics"]["average_jaccard"] - z[f"strided__{vi}__zero__average_jaccard"]) <= 1e-6
    assert sorted(p.name for p in out.iterdir()) == ["synth-aurora.npz", "synth-aurora.ptrack.json",
                                                     "synth-bramble.npz", "synth-bramble.ptrack.json"]
    npz = np.load(out / "synth-aurora.npz")
    q = z["strided__0__query_points"][0]
    assert npz["tracks"].shape == (24, len(q), 2) and npz["occluded"].shape == (24, len(q))
    assert np.array_equal(npz["query_points"], q) and np.array_equal(npz["queries"], q[:, [0, 2, 1]])
    assert np.array_equal(npz["trackgroup"], z["strided__0__trackgroup"][0])
    assert str(npz["query_mode"]) == "strided" and str(npz["layout"]) == "TQ"
    assert zero_tracker[-1][1]["backward"] is True  # strided scores frames before the query


def test_tapvid_bad_input(tmp_path, zero_tracker):
    common = ["--model", "zero-motion", "--quiet"]
    res = run("tapvid", "--dataset", "davis", "--data", MINI["rgb_stacking"], *common)
    assert res.exit_code == 2 and "rgb_stacking" in res.output
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--limit", "0", *common)
    assert res.exit_code == 2 and "--limit" in res.output
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--json", tmp_path / "r.txt", *common)
    assert res.exit_code == 2 and ".json" in res.output
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--resolution", "big", *common)
    assert res.exit_code == 2 and "HxW" in res.output
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--model", "no-such-model", "--quiet")
    assert res.exit_code == 2 and "no-such-model" in res.output
    res = run("tapvid", "--help")
    assert res.exit_code == 0 and "pickle" in res.output.lower()


# ---------------------------------------------------------------------------------------------
# The real weight-free tracker, end to end


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_tapvid_lk_end_to_end_and_rescore(tmp_path, mode):
    out = tmp_path / "preds"
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--model", "lk", "--mode", mode,
              "--json", tmp_path / "lk.json", "--save-predictions", out, "--plot", tmp_path / "lk.png")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "lk.json").read_text())
    assert got["model"] == "lk" and got["num_videos"] == 3 and got["seconds_per_video"] > 0
    zero = np.load(FIXTURES / "expected_mini_davis.npz")[f"{mode}__mean__zero__average_pts_within_thresh"]
    # LK follows the textured shapes: far better than standing still, far from perfect.
    assert zero + 0.1 < got["mean"]["average_pts_within_thresh"] < 0.95
    assert "synth-aurora" in res.output and "mean (3 videos)" in res.output
    assert (tmp_path / "lk.png").stat().st_size > 1000
    # The saved predictions score to exactly the same numbers.
    res = run("score", "--predictions", out, "--dataset", "davis", "--data", MINI["davis"], "--mode", mode,
              "--json", tmp_path / "re.json", "--quiet")
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "re.json").read_text())
    for k in METRIC_NAMES:
        assert again["mean"][k] == pytest.approx(got["mean"][k], abs=1e-12)


def test_tapvid_lk_single_protocol(tmp_path):
    res = run("tapvid", "--dataset", "rgb_stacking", "--data", MINI["rgb_stacking"], "--model", "lk", "--protocol", "single",
              "--limit", "1", "--json", tmp_path / "s.json", "--quiet")
    assert res.exit_code == 0, res.output
    single = json.loads((tmp_path / "s.json").read_text())
    res = run("tapvid", "--dataset", "rgb_stacking", "--data", MINI["rgb_stacking"], "--model", "lk", "--limit", "1",
              "--json", tmp_path / "j.json", "--quiet")
    joint = json.loads((tmp_path / "j.json").read_text())
    assert single["num_videos"] == joint["num_videos"] == 1
    # LK tracks every point on its own, so the support points cannot change its answer.
    for k in METRIC_NAMES:
        assert single["mean"][k] == pytest.approx(joint["mean"][k], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# The runner: what the tracker is given


class Recorder(ZeroMotion):
    """Zero-motion tracker that keeps every query batch it is given; visibility_prob 0.9, confidence 0.5."""

    def __init__(self):
        self.batches = []

    def track(self, video, queries, progress=None):
        self.batches.append(np.array(queries))
        out = super().track(video, queries)
        return TrackOutput(out.tracks, out.visibility, np.full_like(out.visibility_prob, 0.9),
                           np.full_like(out.confidence, 0.5))


def test_runner_queries_and_support_points():
    frames = np.zeros((6, 256, 256, 3), np.uint8)
    qp = np.array([[0.0, 10.0, 20.0], [3.0, 100.0, 50.0]])  # (t, y, x)
    rec = Recorder()
    pred = predict(rec, frames, qp, "joint")
    (batch,) = rec.batches
    assert batch.shape == (2 + 25, 3)
    assert np.array_equal(batch[:2], [[0, 20, 10], [3, 50, 100]])  # (t, x, y) for the tracker
    assert (batch[2:, 0] == 0).all()
    # the 5x5 grid spans [8, 504] x [8, 376] at 384x512, mapped to 256x256 with the align-corners scale
    np.testing.assert_allclose(batch[2, 1:], [8 * 255 / 511, 8 * 255 / 383])
    np.testing.assert_allclose(batch[-1, 1:], [504 * 255 / 511, 376 * 255 / 383])
    assert pred.tracks.shape == (2, 6, 2) and np.array_equal(pred.tracks[1, 5], [50, 100])

    rec = Recorder()
    predict(rec, frames, qp, "single")
    assert [len(b) for b in rec.batches] == [1 + 64 + 25] * 2
    second = rec.batches[1]
    assert np.array_equal(second[0], [3, 50, 100]) and (second[1:, 0] == 0).all()
    local = second[1:65, 1:]
    # the local grid is centred on the query in model space (align-corners mapping is linear through 0)
    np.testing.assert_allclose(local.mean(axis=0), [50, 100], atol=1e-9)
    np.testing.assert_allclose(np.ptp(local, axis=0), [(50 - 2 * 50 / 64) * 255 / 511, (50 - 2 * 50 / 64) * 255 / 383])

    rec = Recorder()
    predict(rec, frames, qp, "joint", support=False)
    assert [len(b) for b in rec.batches] == [2]


def test_runner_occlusion_rules():
    frames = np.zeros((4, 256, 256, 3), np.uint8)
    qp = np.array([[0.0, 10.0, 20.0]])
    assert not predict(Recorder(), frames, qp, "joint").occluded.any()  # the tracker's own visibility
    assert predict(Recorder(), frames, qp, "joint", occlusion_rule="cotracker3").occluded.all()  # 0.9 * 0.5 <= 0.6


class ForwardOnly(ZeroMotion):
    """Zero motion from the query frame on; NaN and not visible before it (a tracker without a backward pass)."""

    name = "forward-only"
    backward = False

    def track(self, video, queries, progress=None):
        out = super().track(video, queries)
        before = np.arange(video.num_frames)[:, None] < np.asarray(queries)[None, :, 0]
        tracks = np.array(out.tracks)
        tracks[before] = np.nan
        return TrackOutput(tracks, out.visibility & ~before, out.visibility_prob, out.confidence)


def test_tapvid_nan_predictions_before_the_query(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "build_single_tracker", lambda model, **kw: ForwardOnly())
    out = tmp_path / "p"
    res = run("tapvid", "--dataset", "davis", "--data", MINI["davis"], "--model", "forward-only", "--mode", "strided",
              "--limit", "1", "--json", tmp_path / "r.json", "--save-predictions", out)
    assert res.exit_code == 0, res.output
    assert "does not track backwards" in res.output
    got = json.loads((tmp_path / "r.json").read_text())["videos"][0]["metrics"]
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    # NaN counts as "not within": strictly worse than zero motion everywhere, but still a number
    assert 0 < got["average_pts_within_thresh"] < z["strided__0__zero__average_pts_within_thresh"]
    assert np.isnan(np.load(out / "synth-aurora.npz")["tracks"]).any()
    res = run("score", "--predictions", out, "--dataset", "davis", "--data", MINI["davis"], "--mode", "strided",
              "--limit", "1", "--json", tmp_path / "s.json", "--quiet")
    assert json.loads((tmp_path / "s.json").read_text())["videos"][0]["metrics"] == got


# ---------------------------------------------------------------------------------------------
# A neural tracker through the same interface (synthetic weights in the official key layout)


@pytest.mark.slow
def test_tapvid_realtracker_with_local_weights(tmp_path):
    weights = tmp_path / "offline.pth"
    torch.save(fill_state_dict(False), weights)
    res = run("tapvid", "--dataset", "rgb_stacking", "--data", MINI["rgb_stacking"], "--model", "realtracker-offline",
              "--weights", weights, "--resolution", "64x64", "--device", "cpu", "--limit", "1",
              "--json", tmp_path / "r.json", "--quiet")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["num_videos"] == 1 and got["model"] == "realtracker-offline"
    assert got["occlusion_rule"] == "cotracker3" and got["model_resolution"] == [64, 64]
    assert all(np.isfinite(v) for v in got["mean"].values())
