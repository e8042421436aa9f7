"""TAPIR / BootsTAPIR network against the official tapnet code's outputs (tests/fixtures/tapir, README there).

Model-level cases: the official ``TAPIR`` module with fill-rule weights on a video already at model
resolution; every refinement iteration's tracks, occlusion and expected-distance logits, the final (averaged)
outputs, query features and (small cases) frame-0 feature grids. Three cases use a reduced initial resolution
(64x64, one of them with a second refinement level at 128x128, like ``bootstapir@512x512``); one runs the real
256x256 configuration.
"""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.tapir import (
    detect_variant,
    expected_shapes,
    feature_bytes_per_frame,
    load_tapir,
    refinement_resolutions,
)
from tests.helpers import FIXTURES
from tests.helpers.tapir_weights import fill_state_dict, official_shapes

FIX = FIXTURES / "tapir"
MODEL_CASES = sorted(p.stem for p in FIX.glob("model_*.npz"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small convolutions gain nothing from more, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_case(name: str) -> tuple[dict, dict]:
    z = dict(np.load(FIX / f"{name}.npz"))
    return z, json.loads(str(z["config"]))


def _model(cfg: dict, dtype=torch.float32):
    sd = fill_state_dict(cfg["variant"])
    m = load_tapir(sd, "fill rule", pyramid_level=cfg["pyramid_level"], extra_convs=cfg["extra_convs"],
                   initial_resolution=tuple(cfg["initial_resolution"]))
    return m.to(dtype)


def _tyx(queries: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    q = np.asarray(queries, np.float64)
    return torch.tensor(np.stack([q[:, 0], q[:, 2], q[:, 1]], axis=1), dtype=dtype)


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


@pytest.mark.parametrize("variant", ["tapir", "bootstapir"])
def test_layout_is_the_official_one(variant):
    pl, ec = {"tapir": (0, False), "bootstapir": (1, True)}[variant]
    assert expected_shapes(pl, ec) == official_shapes(variant)
    assert detect_variant(fill_state_dict(variant)) == (pl, ec)


@pytest.mark.parametrize("variant", ["tapir", "bootstapir"])
def test_fill_rule_is_bit_exact(variant):
    check = json.loads((FIX / "weight_fill_check.json").read_text())[variant]
    sd = fill_state_dict(variant)
    assert set(check) == set(sd)
    for k, v in sd.items():
        assert zlib.crc32(v.numpy().astype("<f4").tobytes()) == check[k]["crc32_float32_le"], k


@pytest.mark.parametrize("name", MODEL_CASES)
def test_model_matches_official(name):
    z, cfg = _load_case(name)
    m = _model(cfg)
    video = torch.from_numpy(z["video"]).float() / 255.0 * 2 - 1
    q = _tyx(z["queries"])
    with torch.inference_mode():
        feats = m.features(video)
        out = m.track(feats, q, keep_iterations=True)
        qfeats = m.query_features(feats, q)
    it = out["iterations"]
    tol_t, tol_l, tol_f = float(z["tol_tracks"]), float(z["tol_logits"]), float(z["tol_features"])
    assert len(it["tracks"]) == z["iter_tracks"].shape[0]
    for i in range(len(it["tracks"])):  # initialisation, then every refinement iteration
        assert _err(it["tracks"][i], z["iter_tracks"][i]) <= tol_t, f"tracks, iteration {i}"
        assert _err(it["occlusion"][i], z["iter_occlusion"][i]) <= tol_l, f"occlusion, iteration {i}"
        assert _err(it["expected_dist"][i], z["iter_expected_dist"][i]) <= tol_l, f"expected_dist, iteration {i}"
    assert _err(out["tracks"], z["tracks"]) <= tol_t
    assert _err(out["occlusion"], z["occlusion"]) <= tol_l
    assert _err(out["expected_dist"], z["expected_dist"]) <= tol_l
    assert _err(qfeats[0][1], z["query_coarse_l0"]) <= tol_f
    assert _err(qfeats[1][0], z["query_fine_l1"]) <= tol_f
    if "feat_coarse_f0" in z:  # channels last in the official layout
        assert _err(feats.coarse[feats.levels[0]][0][0].permute(1, 2, 0), z["feat_coarse_f0"]) <= tol_f
        assert _err(feats.fine[feats.levels[1]][0].permute(1, 2, 0), z["feat_fine_f0"]) <= tol_f


def test_official_layout_and_independent_points():
    """``forward`` takes the official batched layout; a point's track does not depend on the other points (nor
    on how points are chunked)."""
    z, cfg = _load_case("model_tapir_r64_T6")
    m = _model(cfg)
    video = torch.from_numpy(z["video"]).float() / 255.0 * 2 - 1
    q = _tyx(z["queries"])
    with torch.inference_mode():
        batched = m(video[None], q[None])
        feats = m.features(video)
        m.point_chunk = lambda num_frames: 2  # type: ignore[method-assign]
        chunked = m.track(feats, q)
        alone = m.track(feats, q[3:4])
    together = {k: v[0] for k, v in batched.items()}
    assert batched["tracks"].shape == (1,) + z["tracks"].shape
    assert _err(together["tracks"], z["tracks"]) <= float(z["tol_tracks"])
    assert _err(together["occlusion"], z["occlusion"]) <= float(z["tol_logits"])
    assert _err(chunked["tracks"], together["tracks"]) < 1e-4
    assert _err(alone["tracks"][0], together["tracks"][3]) < 1e-4
    assert _err(alone["occlusion"][0], together["occlusion"][3]) < 1e-4


def test_refinement_resolutions_follow_tapnet():
    # values of tapnet.torch.utils.generate_default_resolutions(size, (256, 256))
    assert refinement_resolutions((256, 256)) == [(256, 256)]
    assert refinement_resolutions((128, 128)) == [(256, 256)]
    assert refinement_resolutions((512, 512)) == [(256, 256), (512, 512)]
    assert refinement_resolutions((384, 384)) == [(256, 256), (384, 384)]
    assert refinement_resolutions((720, 720)) == [(256, 256), (424, 424), (720, 720)]
    assert refinement_resolutions((1024, 1024)) == [(256, 256), (512, 512), (1024, 1024)]


def test_feature_memory_per_frame():
    mb = 1 << 20
    assert feature_bytes_per_frame((256, 256), 0) == 3 * mb  # fine 64x64x128 + coarse 32x32x256, float32
    assert feature_bytes_per_frame((256, 256), 1) == 3 * mb + mb // 4  # + pooled 16x16x256
    assert feature_bytes_per_frame((512, 512), 1) == (3 + 12) * mb + (1 + 4) * mb // 4  # 256 and 512 levels


def test_wrong_checkpoints_are_one_line_errors():
    boots = fill_state_dict("bootstapir")
    with pytest.raises(PtrackError, match="bootstapir checkpoint but the tapir model.*--model bootstapir"):
        load_tapir(boots, "w.pt", pyramid_level=0, extra_convs=False)
    broken = dict(fill_state_dict("tapir"))
    del broken["torch_pips_mixer.linear_1.bias"]
    with pytest.raises(PtrackError, match="missing"):
        load_tapir(broken, "w.pt", pyramid_level=0, extra_convs=False)
    bad = dict(fill_state_dict("tapir"))
    bad["torch_pips_mixer.linear_1.bias"] = torch.full_like(bad["torch_pips_mixer.linear_1.bias"], float("nan"))
    with pytest.raises(PtrackError, match="non-finite"):
        load_tapir(bad, "w.pt", pyramid_level=0, extra_convs=False)
    with pytest.raises(PtrackError, match="does not match"):
        load_tapir({"foo": torch.zeros(1)}, "w.pt", pyramid_level=0, extra_convs=False)
