"""LocoTrack wrapper (``LocoTrackPredictor`` of track_on) against the official fixtures, its weights reader,
its memory check, and the CLI end to end (``tests/fixtures/locotrack/README.md``)."""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.models.locotrack import load_locotrack
from pointtrack_cli.synthetic import write_png_folder
from pointtrack_cli.trackers import locotrack
from pointtrack_cli.trackers.base import BuildOptions
from pointtrack_cli.trackers.locotrack import LocoTrackTracker, check_memory, read_weights
from tests.helpers import FIXTURES
from tests.helpers.locotrack_weights import fill_state_dict, lightning_checkpoint

DIR = FIXTURES / "locotrack"
ENTRY = {  # as in the weights registry
    "id": "locotrack", "kind": "tracker", "architecture": "locotrack",
    "config": {"model_size": "base", "model_resolution": [256, 256], "initial_resolution": [256, 256], "iters": 4},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids the cost of synchronising threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The fill-rule weights in the layout of the released ``locotrack_base.ckpt`` ({"state_dict": model.* keys})."""
    path = tmp_path_factory.mktemp("weights") / "locotrack_base.ckpt"
    torch.save({"state_dict": OrderedDict(fill_state_dict("base", prefix="model."))}, path)
    return path


def load_case(name: str) -> tuple[dict, dict]:
    data = dict(np.load(DIR / f"{name}.npz"))
    return data, json.loads(str(data["config"]))


def assert_matches_wrapper(out, data: dict) -> None:
    """Tracks within the fp32-vs-fp64 tolerance; visibility equal away from the 0.5 threshold; probabilities."""
    np.testing.assert_allclose(out.tracks, data["tracks"], rtol=0, atol=data["tol_tracks"])
    prob = data["visibility_prob"]
    clear = np.abs(prob - 0.5) > 1e-3
    np.testing.assert_array_equal(out.visibility[clear], data["visibility"][clear])
    np.testing.assert_allclose(out.visibility_prob, prob, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.confidence, 1 / (1 + np.exp(data["expected_dist"].T)), rtol=0, atol=1e-4)
    assert out.visibility.any() and not out.visibility.all()


def test_wrapper_reduced_resolution_matches_official():
    """The official wrapper with interp_shape and initial_resolution 64x64: 10 frames, queries on every frame."""
    data, cfg = load_case("pred_base_64_T10_60x90")
    model = load_locotrack(fill_state_dict("base"), "fill rule", "base", 4, tuple(cfg["initial_resolution"]))
    tracker = LocoTrackTracker(model, tuple(cfg["resolution"]))
    done = []
    out = tracker.track(ArrayVideo(data["video"]), data["queries"], progress=done.append)
    assert_matches_wrapper(out, data)
    assert sum(done) == len(data["video"])
    assert tracker.backward and not tracker.streaming
    assert np.isfinite(out.tracks).all()  # bidirectional: frames before the query frame are estimated


def test_build_real_configuration_matches_official():
    """256x256, 4 iterations, LocoTrack-B: the released configuration, through build()."""
    data, _ = load_case("pred_base_256_T3_40x56")
    tracker = locotrack.build(ENTRY, fill_state_dict("base", prefix="model."), {"source": "test"}, BuildOptions())
    assert tracker.name == "locotrack" and tracker.settings()["resolution"] == [256, 256]
    assert_matches_wrapper(tracker.track(ArrayVideo(data["video"]), data["queries"]), data)


def test_read_weights_released_and_full_lightning_checkpoints(tmp_path, ckpt):
    sd = read_weights(ckpt)
    assert len(sd) == 147 and "occ_linear.weight" in sd
    full = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(fill_state_dict("base")), full)
    sd_full = read_weights(full)
    assert sd_full.keys() == sd.keys()
    torch.testing.assert_close(sd_full["cost_conv.weight"], sd["cost_conv.weight"])


def test_read_weights_refuses_other_objects(tmp_path):
    ck = lightning_checkpoint({"occ_linear.bias": torch.zeros(2)})
    ck["hyper_parameters"] = argparse.Namespace(lr=1e-3)  # an object weights_only does not rebuild
    bad = tmp_path / "bad.ckpt"
    torch.save(ck, bad)
    with pytest.raises(PtrackError, match="refuses such files") as info:
        read_weights(bad)
    assert "weights_only=False" not in str(info.value)  # never advise running a file's code
    (tmp_path / "cut.ckpt").write_bytes(bad.read_bytes()[:100])
    with pytest.raises(PtrackError, match="cannot read weights file"):
        read_weights(tmp_path / "cut.ckpt")


def test_memory_check_refuses_with_estimate_and_way_out(monkeypatch):
    need = check_memory("locotrack", 100, (480, 854), (256, 256), 400, available=None)
    assert 0.9e9 < need < 4e9  # ~7.3 MB features + 2 MB frames per frame, a point chunk, the runtime
    with pytest.raises(PtrackError, match=r"3000 frames at 256x256 need about .* GiB but 2.0 GiB .*--max-size"):
        check_memory("locotrack", 3000, (480, 854), (256, 256), 400, available=2 << 30)
    model = load_locotrack(fill_state_dict("base"), "fill rule")
    tracker = LocoTrackTracker(model)
    monkeypatch.setattr(locotrack, "available_bytes", lambda device: 1 << 20)
    video = ArrayVideo(np.zeros((4, 32, 32, 3), np.uint8))
    video.read_all = lambda: pytest.fail("frames read before the memory check")
    with pytest.raises(PtrackError, match="holds the features of the whole clip"):
        tracker.track(video, np.array([[0, 5.0, 5.0]]))


def test_resolution_must_be_a_multiple_of_8():
    model = load_locotrack(fill_state_dict("base"), "fill rule")
    with pytest.raises(PtrackError, match="multiple of 8"):
        LocoTrackTracker(model, (250, 256))


def test_cli_track_folder_matches_official(tmp_path, cli, ckpt):
    data, _ = load_case("pred_base_256_T3_40x56")
    folder = write_png_folder(data["video"], tmp_path / "frames")
    q = tmp_path / "q.csv"
    np.savetxt(q, data["queries"], delimiter=",", header="t,x,y", comments="", fmt="%.6f")
    res = cli(["track", folder, "--model", "locotrack", "--weights", ckpt, "--queries", q,
               "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    np.testing.assert_allclose(r.tracks, data["tracks"], rtol=0, atol=data["tol_tracks"])
    np.testing.assert_array_equal(r.visibility, data["visibility"])
    np.testing.assert_allclose(r.visibility_prob, data["visibility_prob"], rtol=0, atol=1e-4)


def test_cli_anthro_without_weights_says_where_to_get_them(tmp_path, cli):
    folder = write_png_folder(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "frames")
    res = cli(["track", folder, "--model", "anthro-locotrack", "--out", tmp_path / "out", "--quiet"])
    assert res.exit_code == 2
    assert "drive.google.com" in res.output and "--weights" in res.output
