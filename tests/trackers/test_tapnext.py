"""TAPNext wrapper (Track-On-R's TAPNextPredictor) against the official outputs, weights reading, and the CLI
at the real TAPNext-B configuration (tests/fixtures/tapnext)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.models.tapnext import load_tapnext
from pointtrack_cli.synthetic import write_png_folder
from pointtrack_cli.trackers import tapnext as tn
from pointtrack_cli.trackers.base import BuildOptions
from tests.helpers.tapnext_weights import FULL, REDUCED, fill_state_dict, load_case, one_thread, to_jax_arrays

ENTRY = {"id": "tapnext-test", "architecture": "tapnext", "config": {**REDUCED, "model_resolution": [256, 256]}}

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


class OnceVideo(ArrayVideo):
    """A source that can be iterated once and never read whole (a stream)."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__(frames)
        self.iterated = False

    def __iter__(self):
        assert not self.iterated, "the tracker iterated the video twice"
        self.iterated = True
        return iter(self.frames)

    def read_all(self):
        raise AssertionError("a streaming tracker must not read the whole video")


@pytest.fixture(scope="module")
def reduced_net():
    return load_tapnext(fill_state_dict(REDUCED), "fill rule", **REDUCED)


def _tracker(net, **kw) -> tn.TAPNextTracker:
    return tn.TAPNextTracker(net, **kw)


def _compare(case: dict, out, estimated: np.ndarray) -> None:
    """Tracks / visibility / probabilities / certainty where the tracker estimates (``estimated [T, N]``)."""
    ok = estimated & ~case["ambiguous_track"]
    err = np.abs(out.tracks - case["tracks"])[ok]
    assert err.max() <= case["tol_tracks"], err.max()
    vis_ok = estimated & ~case["ambiguous_vis"]
    assert np.array_equal(out.visibility[vis_ok], case["visibility"][vis_ok])
    prob = 1 / (1 + np.exp(-case["visible_logits"]))
    assert np.abs(out.visibility_prob - prob)[estimated].max() <= max(float(case["tol_visible_logits"]) / 4, 1e-6)
    assert np.abs(out.confidence - case["certainty"])[ok].max() <= case["tol_certainty"]


def test_predictor_matches_official(reduced_net):
    case = load_case("pred_default_72x100")
    trk = _tracker(reduced_net)
    video = OnceVideo(case["video"])
    done = []
    out = trk.track(video, case["queries"], progress=done.append)
    assert sum(done) == len(case["video"]) and trk.streaming and not trk.backward
    estimated = np.arange(len(case["video"]))[:, None] >= case["queries"][None, :, 0]
    _compare(case, out, estimated)
    # before the query frame: no estimate (the official unknown-token outputs are dropped)
    assert np.isnan(out.tracks[~estimated]).all() and not out.visibility[~estimated].any()
    assert (out.visibility_prob[~estimated] == 0).all() and (out.confidence[~estimated] == 0).all()
    # model queries: x * 256 / W, y * 256 / H, no half-pixel shift, as (t, y, x)
    mq = trk._model_queries(case["queries"], case["video"].shape[1:3])[0].numpy()
    assert np.allclose(mq, case["model_queries"], atol=1e-4)


def test_backward_pass_matches_official_reversed_run(reduced_net, monkeypatch):
    monkeypatch.setattr(tn, "OUTPUT_BLOCK", 3)  # 10 frames: outputs span 4 blocks, the last one partly filled
    case = load_case("pred_backward_72x100")
    trk = _tracker(reduced_net, backward=True)
    done = []
    out = trk.track(OnceVideo(case["video"]), case["queries"], progress=done.append)
    assert sum(done) == len(case["video"]) and trk.backward
    _compare(case, out, np.ones(case["visibility"].shape, bool))


def test_512_frames_keep_the_256_coordinate_frame(reduced_net):
    case = load_case("pred_512_48x64")
    trk = _tracker(reduced_net, resolution=(512, 512))
    out = trk.track(ArrayVideo(case["video"]), case["queries"])
    _compare(case, out, np.arange(len(case["video"]))[:, None] >= case["queries"][None, :, 0])
    assert trk.settings()["coordinate_frame"] == [256, 256]


def test_points_interact_and_batches_are_independent_runs(reduced_net):
    """Documented dependence: a point's track depends on the other points of its batch (attention), and a batch
    gives what tracking its points alone gives."""
    case = load_case("pred_default_72x100")
    q, video = case["queries"][:6], ArrayVideo(case["video"][:5])
    together = _tracker(reduced_net, resolution=(64, 64)).track(video, q)
    split = _tracker(reduced_net, resolution=(64, 64), max_points=4).track(video, q)
    alone = _tracker(reduced_net, resolution=(64, 64)).track(video, q[4:])
    assert np.array_equal(split.tracks[:, 4:], alone.tracks, equal_nan=True)
    assert np.array_equal(split.confidence[:, 4:], alone.confidence)
    assert not np.allclose(split.visibility_prob[:, :4], together.visibility_prob[:, :4], atol=1e-7)


def test_resolution_and_queries_errors(reduced_net):
    sd = fill_state_dict(REDUCED)
    with pytest.raises(PtrackError, match="multiple of its 8-pixel patch") as err:
        tn.build(ENTRY, sd, {"path": "w.pt"}, BuildOptions(resolution=(250, 256)))
    assert "\n" not in str(err.value)
    trk = _tracker(reduced_net)
    video = ArrayVideo(np.zeros((3, 16, 16, 3), np.uint8))
    with pytest.raises(PtrackError, match=r"query frame indices must lie in \[0, 2\]"):
        trk.track(video, np.array([[3.0, 1.0, 1.0]]))
    with pytest.raises(PtrackError, match="NaN"):
        trk.track(video, np.array([[0.0, np.nan, 1.0]]))
    empty = _tracker(reduced_net, resolution=(16, 16), backward=True).track(video, np.zeros((0, 3)))
    assert empty.tracks.shape == (3, 0, 2) and empty.visibility.shape == (3, 0)


def test_memory_estimate_refuses_with_the_way_out(reduced_net, monkeypatch):
    trk = _tracker(reduced_net)
    monkeypatch.setattr(tn, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(PtrackError, match=r"GiB are available; track at most ~\d+ points"):
        trk.track(ArrayVideo(np.zeros((2, 16, 16, 3), np.uint8)), np.zeros((5000, 3)))
    assert tn.default_max_points((256, 256)) == 7168 and tn.default_max_points((512, 512)) == 4096


def test_build_sets_name_info_and_settings():
    trk = tn.build(ENTRY, fill_state_dict(REDUCED), {"path": "w.pt", "source": "local file"}, BuildOptions(backward=True))
    assert trk.name == "tapnext-test" and trk.weights_info["path"] == "w.pt" and trk.backward
    s = trk.settings()
    assert s["resolution"] == [256, 256] and s["visibility_rule"] == "visible_logits > 0"
    json.dumps(s)


def test_read_weights_layouts(tmp_path):
    sd = fill_state_dict(REDUCED)
    # TAPNext++ layout: Lightning-style checkpoint, state_dict wrapper, "tapnext." prefix, extra entries
    ckpt = {"state_dict": {f"tapnext.{k}": v for k, v in sd.items()}, "epoch": 3, "global_step": 1200,
            "pytorch-lightning_version": "2.4.0", "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}]}
    torch.save(ckpt, tmp_path / "tapnextpp.ckpt")
    got = tn.read_weights(tmp_path / "tapnextpp.ckpt")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save(sd, tmp_path / "plain.pt")
    assert set(tn.read_weights(tmp_path / "plain.pt")) == set(sd)
    np.savez(tmp_path / "jax.npz", **to_jax_arrays(sd, REDUCED["num_heads"]))
    got = tn.read_weights(tmp_path / "jax.npz")
    assert set(got) == set(sd) - {"query_pos_embed"} and all(torch.equal(got[k], sd[k]) for k in got)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PtrackError, match="cannot read weights file"):
        tn.read_weights(tmp_path / "broken.pt")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(PtrackError, match="not a TAPNext .npz"):
        tn.read_weights(tmp_path / "other.npz")


def test_cli_real_configuration_from_jax_npz(tmp_path, cli):
    """TAPNext-B (194 M parameters) from a JAX .npz through `ptrack track FOLDER --model tapnext --resolution 64x64`,
    3 small frames (64x64 network input: 64 image tokens instead of 1,024 keeps the test short)."""
    case = load_case("full_npz_40x56_T3")
    np.savez(tmp_path / "tapnext_ckpt.npz", **to_jax_arrays(fill_state_dict(FULL), FULL["num_heads"]))
    folder = write_png_folder(case["video"], tmp_path / "frames")
    q = tmp_path / "q.csv"
    q.write_text("t,x,y\n" + "".join(f"{int(t)},{float(x)!r},{float(y)!r}\n" for t, x, y in case["queries"]))
    res = cli(["track", folder, "--model", "tapnext", "--weights", tmp_path / "tapnext_ckpt.npz", "--queries", q,
               "--resolution", "64x64", "--out", tmp_path / "out", "--no-overlay", "--quiet", "--format", "npz"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "out" / "tracks.npz", allow_pickle=False) as f:
        out = type("Out", (), {k: f[k] for k in ("tracks", "visibility", "visibility_prob", "confidence")})
    _compare(case, out, np.arange(3)[:, None] >= case["queries"][None, :, 0])
