"""Track-On-R verifier against the official fixtures (tests/fixtures/verifier, README tolerances).

Weights come from the README's fill rule, saved as a DDP-style checkpoint and read back through
the same loader as a released checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli.weights.state_dict import read_state_dict
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.verifier import Verifier, expected_shapes, load_verifier
from pointtrack_cli.ensemble.selection import majority_visibility, select_verifier, softmax
from tests.helpers.verifier_weights import fill_state_dict, official_keys
from tests.helpers import FIXTURES

FIX = FIXTURES / "verifier"
CASES = {"s": "case_s_T8_48x64.npz", "a": "case_a_T24_96x128.npz", "b": "case_b_T30_72x112.npz"}


def load_case(name: str) -> dict[str, np.ndarray]:
    with np.load(FIX / CASES[name]) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def filled() -> dict[str, torch.Tensor]:
    return fill_state_dict()


@pytest.fixture(scope="module")
def ckpt(filled, tmp_path_factory) -> Path:
    """The official training container: {"model": DDP state dict with "module." keys, "epoch": ...}."""
    path = tmp_path_factory.mktemp("verifier") / "verifier.pt"
    torch.save({"model": {"module." + k: v for k, v in filled.items()}, "epoch": 3, "best_delta_avg": 0.5}, path)
    return path


@pytest.fixture(scope="module")
def model(ckpt) -> Verifier:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_verifier(read_state_dict(ckpt), str(ckpt))


_runs: dict = {}
_features: dict = {}


def features_s(model: Verifier):
    """Case s and its per-frame features F1 (fp32), computed once and shared by several tests."""
    if "s" not in _features:
        z = load_case("s")
        with torch.no_grad():
            _features["s"] = (z, model.frame_features(torch.from_numpy(z["video"]).float().permute(0, 3, 1, 2)))
    return _features["s"]


def run(model: Verifier, name: str, dtype=torch.float32):
    """Forward one fixture case (cached per module: the CNN at 384x512 dominates the cost).

    Case s in fp32 goes through precomputed features (shared with other tests); the full
    video path is covered by case s in fp64 and by cases a and b.
    """
    key = (name, dtype)
    if key not in _runs:
        z = load_case(name)
        feats = features_s(model)[1] if (name, dtype) == ("s", torch.float32) else None
        m = model.to(dtype)
        with torch.no_grad():
            logits, inter = m(z["video"], torch.from_numpy(z["candidate_tracks"]), torch.from_numpy(z["queries"]),
                              features=feats, return_intermediates=True)
        model.float()
        _runs[key] = (z, logits.double().numpy(), {k: v.double().numpy() for k, v in inter.items()})
    return _runs[key]


def test_key_list_matches_model():
    keys = official_keys()
    assert len(keys) == 212
    assert sum(int(np.prod(s)) for _, s in keys) == 11_329_126
    assert list(expected_shapes().items()) == [(k, s) for k, s in keys]  # official order too


@pytest.mark.parametrize("name", ["s", pytest.param("a", marks=pytest.mark.slow), pytest.param("b", marks=pytest.mark.slow)])
def test_fixture_fp32(model, name):
    z, logits, inter = run(model, name)
    assert np.abs(logits - z["rank_logits"]).max() < 1e-4
    assert np.abs(logits - z["rank_logits_fp64"]).max() < 1e-4
    assert np.abs(softmax(logits) - z["probs"]).max() < 1e-4
    # Intermediates pin down where a mismatch would start.
    for k in ("q_init", "q_local", "q_out", "fvis_probe"):
        assert np.abs(inter[k] - z[k]).max() < 1e-4, k
    assert np.abs(inter["time_emb_used"] - z["time_emb_used"]).max() < 1e-6
    fl, ref = inter["f_local"], z["f_local"]
    assert np.abs(fl[..., :256] - ref[..., :256]).max() < 1e-4
    assert np.abs(fl[..., 256:290] - ref[..., 256:290]).max() < 2e-3
    assert np.abs(fl[..., 290:] - ref[..., 290:]).max() < 1e-6
    assert abs(model.sim_scale.item() - float(z["sim_scale"])) < 1e-6
    assert abs(model.displacement_scale.item() - float(z["displacement_scale"])) < 1e-6

    # Selection: arg-max (exact where the fp64 margin is clear) and strict majority visibility.
    sel = select_verifier(z["candidate_tracks"], z["candidate_visibility"], logits)
    clear = z["top2_margin_fp64"] > 5e-4
    assert np.array_equal(sel.chosen[clear], z["selected_index"][clear])
    l64 = z["rank_logits_fp64"]
    picked = np.take_along_axis(l64, sel.chosen[..., None], -1)[..., 0]
    assert np.all(l64.max(-1)[~clear] - picked[~clear] <= 5e-4)
    assert np.array_equal(sel.tracks[clear], z["selected_tracks"][clear])
    assert np.array_equal(sel.visibility, z["selected_visibility"])
    assert np.array_equal(majority_visibility(z["candidate_visibility"]), z["selected_visibility"])


def test_fixture_fp64(model):
    z, logits, _ = run(model, "s", torch.float64)
    assert np.abs(logits - z["rank_logits_fp64"]).max() < 1e-12


@pytest.fixture(scope="module")
def case_s_features(model):
    return features_s(model)


def _logits(model, z, cand, queries, feats, mask=None):
    with torch.no_grad():
        return model(z["video"], torch.from_numpy(cand), torch.from_numpy(queries), mask, features=feats).numpy()


def test_permutation_and_point_independence(model, case_s_features):
    z, feats = case_s_features
    cand, q = z["candidate_tracks"], z["queries"]
    base = _logits(model, z, cand, q, feats)
    assert np.abs(base - z["rank_logits"]).max() < 1e-4
    rng = np.random.default_rng(0)
    perm = rng.permutation(cand.shape[2])
    permuted = _logits(model, z, cand[:, :, perm], q, feats)
    assert np.abs(permuted - base[:, :, perm]).max() < 1e-5  # no teacher identity is encoded
    pts = np.array([4, 1, 3])
    subset = _logits(model, z, cand[:, pts], q[pts], feats)
    assert np.abs(subset - base[:, pts]).max() < 1e-5  # points never interact


def test_hidden_candidate_equals_removed_candidate(model, case_s_features):
    """ptrack extension: a masked candidate is as if that teacher were not there (logit -inf)."""
    z, feats = case_s_features
    cand, q = z["candidate_tracks"], z["queries"]
    mask = np.zeros(cand.shape[:3], dtype=bool)
    mask[:, :, 2] = True
    hidden = _logits(model, z, cand, q, feats, torch.from_numpy(mask))
    removed = _logits(model, z, cand[:, :, [0, 1, 3]], q, feats)
    assert np.all(np.isneginf(hidden[:, :, 2]))
    assert np.abs(hidden[:, :, [0, 1, 3]] - removed).max() < 1e-5


def test_deformable_attention_orders_agree(filled):
    """Both evaluation orders of the deformable attention (chosen by token count) compute the same function."""
    import pointtrack_cli.models.verifier as V

    model = load_verifier(filled, "fill rule").double()
    gen = torch.Generator().manual_seed(0)
    pyramid = V.Verifier.pyramid(torch.randn(2, 256, 96, 128, generator=gen, dtype=torch.float64))
    tokens = torch.randn(2, 7, 256, generator=gen, dtype=torch.float64)
    ref = torch.rand(2, 7, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2  # some footprints leave the map
    att = model.local_encoder[1].mha
    with torch.no_grad():
        old = V.SAMPLE_FIRST_MAX_TOKENS
        try:
            V.SAMPLE_FIRST_MAX_TOKENS = 10**9
            a = att(tokens, ref, pyramid)
            V.SAMPLE_FIRST_MAX_TOKENS = -1
            b = att(tokens, ref, pyramid)
        finally:
            V.SAMPLE_FIRST_MAX_TOKENS = old
    assert (a - b).abs().max() < 1e-10


def test_query_outside_video_rejected(model, case_s_features):
    z, feats = case_s_features
    q = z["queries"].copy()
    q[0, 0] = 8  # T = 8
    with pytest.raises(ValueError, match="query frames"):  # the network's contract; callers check queries first
        _logits(model, z, z["candidate_tracks"], q, feats)


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "module_prefix"])
def test_checkpoint_layouts(filled, tmp_path, layout):
    sd = dict(list(filled.items()))
    obj = {
        "plain": sd,
        "model": {"model": sd, "optimizer": {"state": {}}, "epoch": 1},
        "state_dict": {"state_dict": sd},
        "module_prefix": {"module." + k: v for k, v in sd.items()},
    }[layout]
    path = tmp_path / f"{layout}.pt"
    torch.save(obj, path)
    model = load_verifier(read_state_dict(path), str(path))
    got = model.state_dict()
    for k in ("time_emb", "cnn_encoder.conv1.weight", "layers.5.mha2.in_proj_weight", "f_projection.weight"):
        assert torch.equal(got[k], filled[k])
    assert not model.training


def test_mismatched_checkpoint_error(filled):
    sd = dict(filled)
    sd.pop("layers.5.norm3.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["q_projection.weight"] = torch.zeros(128, 256)
    with pytest.raises(PtrackError) as err:
        load_verifier(sd, "bad.pt")
    msg = str(err.value)
    assert "bad.pt" in msg and "missing" in msg and "unexpected" in msg and "mis-shaped" in msg
    with pytest.raises(PtrackError):  # a CoTracker3-like checkpoint is not a verifier
        load_verifier({"fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, "cotracker.pth")


def test_read_state_dict_roundtrip(ckpt, filled):
    sd = read_state_dict(ckpt)
    assert set(sd) == set(filled)
