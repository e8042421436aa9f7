"""LocoTrack network against the official code's fixtures (``tests/fixtures/locotrack/README.md``)."""
from __future__ import annotations

import json
import zlib
from functools import lru_cache

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.locotrack import expected_shapes, load_locotrack
from tests.helpers import FIXTURES
from tests.helpers.locotrack_weights import fill_state_dict, fill_value, official_shapes

DIR = FIXTURES / "locotrack"
MODEL_CASES = ["model_base_64x64_T8", "model_base_init64_res48x80_T6", "model_small_64x96_T6"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids the cost of synchronising threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_case(name: str) -> tuple[dict, dict]:
    data = dict(np.load(DIR / f"{name}.npz"))
    return data, json.loads(str(data["config"]))


@lru_cache(maxsize=None)
def run_case(name: str):
    """(model, features, outputs) of the float32 run of a model case."""
    data, cfg = load_case(name)
    model = load_locotrack(fill_state_dict(cfg["model_size"]), "fill rule", cfg["model_size"], cfg["num_pips_iter"],
                           tuple(cfg["initial_resolution"]))
    video = torch.from_numpy(data["video"]).float() / 255.0 * 2 - 1
    with torch.no_grad():
        feats = model.features(video)
        out = model.track(feats, torch.from_numpy(data["queries"]))
    return model, feats, out


def test_layout_matches_official_state_dict():
    for size in ("base", "small"):
        assert expected_shapes(size) == official_shapes(size)


def test_fill_rule_reproduces_generator_checksums():
    checks = json.loads((DIR / "weight_fill_check.json").read_text())
    for key in ["resnet_torch.initial_conv.weight", "resnet_torch.block_groups.2.blocks.1.bn_0.weight",
                "cmdtop.1.conv.0.1.weight", "torch_pips_mixer.transformer.layers.0.dense.2.bias", "occ_linear.weight"]:
        v = fill_value(key, tuple(checks[key]["shape"]))
        assert zlib.crc32(v.astype("<f4").tobytes()) == checks[key]["crc32_float32_le"], key


@pytest.mark.parametrize("name", MODEL_CASES)
def test_model_matches_official_float32(name):
    data, _ = load_case(name)
    _, _, out = run_case(name)
    np.testing.assert_allclose(out["tracks"].double().numpy(), data["tracks"], rtol=0, atol=data["tol_tracks"])
    for key in ("occlusion", "expected_dist"):
        np.testing.assert_allclose(out[key].double().numpy(), data[key], rtol=0, atol=data["tol_logits"])


def test_model_float64_reproduces_official_float64():
    """The sharpest check: in float64 every operation is the official one (~1e-13 px)."""
    data, cfg = load_case("model_base_init64_res48x80_T6")
    model = load_locotrack(fill_state_dict(cfg["model_size"]), "fill rule", cfg["model_size"], cfg["num_pips_iter"],
                           tuple(cfg["initial_resolution"])).double()
    video = torch.from_numpy(data["video"]).double() / 255.0 * 2 - 1
    with torch.no_grad():
        feats = model.features(video)
        q = torch.from_numpy(data["queries"]).double()
        support = model.query_support(feats, q, video.shape[0])
        qf = [s[:, 3, 3] for s in support]
        h, w = feats.hw
        q_init = q * torch.tensor([video.shape[0], 64, 64]) / torch.tensor([video.shape[0], h, w])
        points, occ, expd = model.initial_estimate(qf[1], qf[0], feats, q_init)
        out = model.track(feats, q)
    scale = np.array([w / 64, h / 64])
    np.testing.assert_allclose(points.numpy() * scale, data["tracks_iter0"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(occ.numpy(), data["occlusion_iter0"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(expd.numpy(), data["expected_dist_iter0"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["tracks"].numpy(), data["tracks"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["occlusion"].numpy(), data["occlusion"], rtol=0, atol=1e-9)


def test_points_are_independent():
    data, _ = load_case("model_small_64x96_T6")
    model, feats, both = run_case("model_small_64x96_T6")
    with torch.no_grad():
        alone = model.track(feats, torch.from_numpy(data["queries"])[2:3])
    torch.testing.assert_close(alone["tracks"][0], both["tracks"][2], rtol=0, atol=1e-4)


def test_lightning_prefix_and_wrong_layout():
    sd = fill_state_dict("base", prefix="model.")
    assert load_locotrack(sd, "ckpt").model_size == "base"
    with pytest.raises(PtrackError, match="does not match the LocoTrack \\(small\\) layout"):
        load_locotrack(sd, "ckpt", model_size="small")
    broken = dict(sd)
    broken.pop("model.occ_linear.bias")
    with pytest.raises(PtrackError, match="1 missing key"):
        load_locotrack(broken, "ckpt")
