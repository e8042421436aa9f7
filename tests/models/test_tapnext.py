"""TAPNext network against the official implementation's outputs (tests/fixtures/tapnext, reduced configuration)."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.tapnext import (
    TAPNext,
    convert_jax_checkpoint,
    expected_shapes,
    load_tapnext,
    sincos_posemb_2d,
    tracker_certainty,
)
from pointtrack_cli.models.tapnext_blocks import linear_scan, parallel_scan
from tests.helpers.tapnext_weights import (
    FIXTURE_DIR,
    FULL,
    REDUCED,
    fill_state_dict,
    fill_value,
    formula_video,
    load_case,
    one_thread,
    to_jax_arrays,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (FIXTURE_DIR / name).read_text().splitlines():
        key, shape = line.split(" ", 1)
        out[key] = tuple(json.loads(shape))
    return out


@pytest.fixture(scope="module")
def models() -> dict[torch.dtype, TAPNext]:
    net = load_tapnext(fill_state_dict(REDUCED), "fill rule", **REDUCED)
    return {torch.float32: net, torch.float64: load_tapnext(fill_state_dict(REDUCED), "fill rule", **REDUCED).double()}


def _stream(model: TAPNext, video: torch.Tensor, queries: torch.Tensor):
    state = model.init_state(queries)
    outs = []
    with torch.no_grad():
        for t in range(video.shape[1]):
            tr, lg, vl, state = model.step(model.embed_frames(video[:, t : t + 1]), state)
            outs.append((tr, lg, vl))
    return [torch.cat([o[i] for o in outs], dim=1)[0] for i in range(3)]


def _check(case: dict, key: str, got: np.ndarray, tol: float | None = None, mask_key: str | None = "ambiguous_track") -> None:
    want = case[key].astype(np.float64)
    tol = float(case[f"tol_{key}"]) if tol is None else tol
    diff = np.abs(np.asarray(got, np.float64) - want)
    if mask_key is not None and diff.ndim >= 2:
        m = case[mask_key].reshape(case[mask_key].shape + (1,) * (diff.ndim - case[mask_key].ndim))
        diff = np.where(np.broadcast_to(m, diff.shape), 0.0, diff)
    assert np.nanmax(diff) <= tol, f"{key}: max |err| {np.nanmax(diff):.3g} > tol {tol:.3g}"


def test_layout_matches_official_lists():
    assert expected_shapes(**REDUCED) == _shapes("state_dict_reduced.txt")
    full = expected_shapes(**FULL)
    assert full == _shapes("state_dict_full.txt")
    n_params = sum(int(np.prod(s)) for k, s in full.items() if k != "query_pos_embed")
    assert 193e6 < n_params < 195e6  # TAPNext-B: ~194 M parameters


def test_fill_rule_checksums():
    check = json.loads((FIXTURE_DIR / "weight_fill_check.json").read_text())
    assert {k: float(v) for k, v in check["exceptions"].items()} == {"coordinate_head.6.weight": 8.0}
    assert {k: float(v) for k, v in check["offsets"].items()} == {"visible_head.6.bias": 1.0}
    sd = fill_state_dict(REDUCED)
    for key, info in check["keys"].items():
        if key.startswith("full:"):
            key = key[5:]
            value = fill_value(key, tuple(info["shape"]))
        else:
            value = sd[key].numpy()
        assert list(value.shape) == info["shape"]
        assert zlib.crc32(value.astype("<f4").tobytes()) == info["crc32_float32_le"], key


def test_sincos_table_matches_buffer():
    table = sincos_posemb_2d(256, 256, 64)
    assert table.shape == (1, 65536, 64)
    # pixel (y=3, x=5), first x frequency is 1: sin(5), and the y block starts at width / 2
    assert torch.allclose(table[0, 3 * 256 + 5, [0, 16, 32, 48]].double(),
                          torch.tensor([np.sin(5.0), np.cos(5.0), np.sin(3.0), np.cos(3.0)]), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_matches_official(models, dtype):
    case = load_case("model_stream_T8")
    video = torch.from_numpy(formula_video(8, 256, 256)).to(dtype)
    q = torch.from_numpy(case["queries_tyx"]).float().to(dtype)[None]  # the official inputs are float32
    tracks, logits, vis = _stream(models[dtype], video, q)
    tol = None if dtype == torch.float32 else 1e-6
    _check(case, "tracks_yx_model", tracks.numpy(), tol)
    _check(case, "track_logits", logits.numpy(), None if tol is None else 1e-5, None)
    _check(case, "visible_logits", vis[..., 0].numpy(), tol, "ambiguous_vis")
    cert = tracker_certainty(tracks, logits)[..., 0]
    _check(case, "certainty", cert.numpy(), tol)


@pytest.mark.parametrize("parallel", [False, True])
def test_whole_clip_matches_official(models, parallel):
    """The multi-frame forward (official: linear scan in eval mode); the parallel scan gives the same result."""
    case = load_case("model_clip_T8")
    video = torch.from_numpy(formula_video(8, 256, 256))
    q = torch.from_numpy(case["queries_tyx"]).float()[None]
    with torch.no_grad():
        tracks, logits, vis, _ = models[torch.float32](video, q, parallel=parallel)
    _check(case, "tracks_yx_model", tracks[0].numpy())
    _check(case, "visible_logits", vis[0, ..., 0].numpy(), None, "ambiguous_vis")


@pytest.mark.parametrize("name,hw", [("model_stream_512x512_T3", (512, 512)), ("model_stream_192x320_T3", (192, 320))])
def test_interpolated_position_embedding(models, name, hw):
    case = load_case(name)
    video = torch.from_numpy(formula_video(3, *hw))
    q = torch.from_numpy(case["queries_tyx"]).float()[None]
    tracks, logits, vis = _stream(models[torch.float32], video, q)
    _check(case, "tracks_yx_model", tracks.numpy())
    _check(case, "visible_logits", vis[..., 0].numpy(), None, "ambiguous_vis")
    _check(case, "certainty", tracker_certainty(tracks, logits)[..., 0].numpy())


def test_certainty_on_official_outputs():
    case = load_case("pred_default_72x100")
    got = tracker_certainty(torch.from_numpy(case["tracks_yx_model"]), torch.from_numpy(case["track_logits"].astype(np.float64)))
    assert np.abs(got[..., 0].numpy() - case["certainty"]).max() < 1e-6  # logits stored as float32


def test_parallel_scan_equals_linear_scan():
    g = torch.Generator().manual_seed(0)
    for length in (1, 2, 5, 8, 13):
        a = torch.rand(3, length, 7, generator=g, dtype=torch.float64)
        x = torch.randn(3, length, 7, generator=g, dtype=torch.float64)
        h0 = torch.randn(3, 7, generator=g, dtype=torch.float64)
        assert torch.allclose(parallel_scan(a, x, h0), linear_scan(a, x, h0), atol=1e-12)


def test_streaming_equals_whole_clip(models):
    """Frame by frame with the state == all frames at once (same recurrence)."""
    video = torch.from_numpy(formula_video(4, 64, 64)).double()
    q = torch.tensor([[0, 10.0, 20.0], [1, 40.0, 33.0], [3, 5.0, 60.0]], dtype=torch.float64)[None]
    tracks_s, logits_s, vis_s = _stream(models[torch.float64], video, q)
    with torch.no_grad():
        tracks_c, logits_c, vis_c, _ = models[torch.float64](video, q)
    assert torch.allclose(logits_s, logits_c[0], atol=1e-9) and torch.allclose(vis_s, vis_c[0], atol=1e-9)


def test_jax_conversion_roundtrip_and_official_key_list():
    sd = fill_state_dict(REDUCED)
    back = convert_jax_checkpoint(to_jax_arrays(sd, REDUCED["num_heads"]))
    assert set(back) == set(sd) - {"query_pos_embed"}
    assert all(torch.equal(back[k], sd[k]) for k in back)
    # the official JAX layout of TAPNext-B (from tapnet's converter), one layer: shapes map onto the module
    jax = {k: np.zeros(s, np.float32) for k, s in _shapes("jax_keys_full.txt").items()
           if "encoderblock_" not in k or "encoderblock_0/" in k}
    conv = convert_jax_checkpoint(jax)
    want = expected_shapes(**{**FULL, "depth": 1})
    assert {k: tuple(v.shape) for k, v in conv.items()} == {k: s for k, s in want.items() if k != "query_pos_embed"}


def test_wrong_layout_is_one_line():
    sd = fill_state_dict(REDUCED)
    with pytest.raises(PtrackError) as err:
        load_tapnext(sd, "w.pt", **{**REDUCED, "depth": 3})
    assert "missing" in str(err.value) and "\n" not in str(err.value)
    bad = dict(sd)
    bad["lin_proj.bias"] = torch.zeros(65)
    with pytest.raises(PtrackError, match="mis-shaped"):
        load_tapnext(bad, "w.pt", **REDUCED)
    nan = dict(sd)
    nan["lin_proj.bias"] = torch.full((64,), float("nan"))
    with pytest.raises(PtrackError, match="non-finite"):
        load_tapnext(nan, "w.pt", **REDUCED)
    no_buffer = {k: v for k, v in sd.items() if k != "query_pos_embed"}
    assert torch.equal(load_tapnext(no_buffer, "w.npz", **REDUCED).query_pos_embed, sd["query_pos_embed"])
