"""``tapir`` / ``bootstapir`` trackers against the official Track-On-R wrapper (``TAPIRPredictor``) fixtures.

Predictor-level cases (tests/fixtures/tapir/pred_*.npz): the official wrapper on small clips (non-square
input sizes, queries on several frames) with fill-rule weights; three use a reduced initial resolution
(wrapper resolution 64x64, and 128x128 to exercise a second refinement level like ``bootstapir@512x512``),
one runs the real 256x256 TAPIR. Plus the wrapper arithmetic alone (network stubbed with the official raw
outputs), the memory refusal, resolution checks, and ``ptrack track`` end to end.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.synthetic import write_png_folder
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.trackers.base import BuildOptions
from pointtrack_cli.trackers.tapir import TapirTracker, build
from tests.helpers import FIXTURES
from tests.helpers.tapir_weights import fill_state_dict

FIX = FIXTURES / "tapir"
PRED_CASES = sorted(p.stem for p in FIX.glob("pred_*.npz"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small convolutions gain nothing from more, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case(name: str) -> tuple[dict, dict]:
    z = dict(np.load(FIX / f"{name}.npz"))
    return z, json.loads(str(z["config"]))


def _entry(cfg: dict) -> dict:
    return {
        "id": cfg["variant"],
        "kind": "tracker",
        "architecture": "tapir",
        "config": {
            "pyramid_level": cfg["pyramid_level"],
            "extra_convs": cfg["extra_convs"],
            "initial_resolution": cfg["initial_resolution"],
            "model_resolution": cfg["interp_shape"],
            "iters": 4,
        },
    }


def _tracker(cfg: dict, **opts) -> TapirTracker:
    return build(_entry(cfg), fill_state_dict(cfg["variant"]), {"source": "test"}, BuildOptions(**opts))


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


@pytest.mark.parametrize("name", PRED_CASES)
def test_tracker_matches_official_wrapper(name):
    z, cfg = _case(name)
    tr = _tracker(cfg)
    done = []
    out = tr.track(ArrayVideo(z["video"]), z["queries"].astype(np.float64), progress=done.append)
    assert sum(done) == cfg["T"]
    assert out.tracks.shape == z["tracks"].shape  # every frame is estimated (bidirectional)
    assert np.isfinite(out.tracks).all()
    assert _err(out.tracks, z["tracks"]) <= float(z["tol_tracks"])
    assert _err(out.visibility_prob, z["visibility_prob"]) <= float(z["tol_prob"])
    assert _err(out.confidence, z["confidence"]) <= float(z["tol_prob"])
    sure = ~z["visibility_ambiguous"]
    np.testing.assert_array_equal(out.visibility[sure], z["visibility"][sure])
    assert tr.backward and not tr.streaming


def test_wrapper_arithmetic_is_exact():
    """Network stubbed with the official (float64) raw outputs: the pre/post-processing is the wrapper's."""
    z, cfg = _case("pred_bootstapir_r64_T8_60x80")
    tr = _tracker(cfg)
    seen = {}

    def fake_track(feats, queries, **kw):
        seen["queries"] = queries.double().numpy()
        return {"tracks": torch.from_numpy(z["model_tracks"]), "occlusion": torch.from_numpy(z["model_occlusion"]),
                "expected_dist": torch.from_numpy(z["model_expected_dist"])}

    tr.model.add_frames = lambda *a, **k: None
    tr.model.track = fake_track
    out = tr.track(ArrayVideo(z["video"]), z["queries"].astype(np.float64))
    assert _err(seen["queries"], z["model_queries"]) < 1e-5  # float32 model input
    assert _err(out.tracks, z["tracks"]) < 2e-5  # TrackOutput stores float32
    assert _err(out.visibility_prob, z["visibility_prob"]) < 1e-7
    assert _err(out.confidence, z["confidence"]) < 1e-7
    np.testing.assert_array_equal(out.visibility, z["visibility"])


class _NoRead(ArrayVideo):
    def read_all(self):
        raise AssertionError("the video must not be read when the estimate does not fit")


def test_memory_estimate_refuses_long_clips():
    z, cfg = _case("pred_tapir_r64_T8_60x80")
    tr = _tracker(cfg)
    tr.memory_limit = 10 << 20
    with pytest.raises(PtrackError) as info:
        tr.track(_NoRead(z["video"]), z["queries"].astype(np.float64))
    msg = str(info.value)
    assert "\n" not in msg and "GB" in msg and "fewer frames" in msg
    # the estimate grows with the clip: 2,000 frames of 1080p need the decoded frames plus ~3.4 MB per frame
    big = TapirTracker(tr.model, resolution=(256, 256))
    big.model.initial_resolution = (256, 256)  # the released models' (this fixture model starts at 64x64)
    est = big.memory_estimate(2000, 1080, 1920)
    assert est["frames"] == 2000 * 1080 * 1920 * 3
    assert est["features"] == 2000 * 3 * (1 << 20)  # TAPIR: no pooled level
    big.memory_limit = 8 * 10**9
    with pytest.raises(PtrackError, match="--max-size"):
        big.check_memory(2000, 1080, 1920)
    big.check_memory(100, 480, 640)  # fits


def test_resolution_rules():
    _, cfg = _case("pred_tapir_r64_T8_60x80")
    with pytest.raises(PtrackError, match="square"):
        _tracker(cfg, resolution=(256, 320))
    with pytest.raises(PtrackError, match="multiple of 8"):
        _tracker(cfg, resolution=(260, 260))
    tr = _tracker(cfg, resolution=(128, 128), vis_threshold=0.3)
    s = tr.settings()
    assert s["resolution"] == [128, 128] and s["refinement_resolutions"] == [[64, 64], [128, 128]]
    assert s["vis_threshold"] == 0.3 and tr.name == "tapir"


def test_empty_queries():
    z, cfg = _case("pred_tapir_r64_T8_60x80")
    out = _tracker(cfg).track(ArrayVideo(z["video"]), np.zeros((0, 3)))
    assert out.tracks.shape == (cfg["T"], 0, 2) and out.visibility.shape == (cfg["T"], 0)


def test_cli_track_matches_official_wrapper(tmp_path, cli):
    """``ptrack track FOLDER --model tapir --weights W.pt --queries Q.csv``: the real 256x256 TAPIR end to end."""
    z, cfg = _case("pred_tapir_256_T3_40x52")
    assert cfg["interp_shape"] == [256, 256] and cfg["initial_resolution"] == [256, 256]
    folder = write_png_folder(z["video"], tmp_path / "frames")
    weights = tmp_path / "tapir_checkpoint_panning.pt"
    torch.save(fill_state_dict("tapir"), weights)
    q = tmp_path / "q.csv"
    np.savetxt(q, z["queries"], delimiter=",", header="t,x,y", comments="", fmt="%.6f")
    res = cli(["track", folder, "--model", "tapir", "--weights", weights, "--queries", q, "--out", tmp_path / "out",
               "--quiet", "--no-overlay", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    assert r.tracks.shape == z["tracks"].shape
    assert _err(r.tracks, z["tracks"]) <= float(z["tol_tracks"])
    sure = ~z["visibility_ambiguous"]
    np.testing.assert_array_equal(r.visibility[sure], z["visibility"][sure])
    assert _err(r.visibility_prob, z["visibility_prob"]) <= max(float(z["tol_prob"]), 1e-6)
