"""AllTracker network against the official implementation's outputs (``tests/fixtures/alltracker/README.md``):
the state-dict layout, the fill rule, ``Net.forward`` / ``forward_sliding`` in a reduced configuration, and the
released configuration on two frames."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.alltracker import AllTracker, expected_shapes, load_alltracker, window_starts
from tests.helpers import FIXTURES
from tests.helpers.alltracker_weights import config_kwargs, fill_state_dict, fill_value, official_shapes

DIR = FIXTURES / "alltracker"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids the cost of synchronising threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model(config: str) -> AllTracker:
    return load_alltracker(fill_state_dict(config), "fill rule", **config_kwargs(config))


def load(name: str) -> dict:
    return dict(np.load(DIR / f"{name}.npz"))


def video_tensor(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("config", ["released", "reduced"])
def test_state_dict_layout_is_the_official_one(config):
    assert expected_shapes(**config_kwargs(config)) == official_shapes(config)
    if config == "released":
        assert len(official_shapes(config)) == 236 and expected_shapes() == official_shapes(config)


def test_fill_rule_checksums():
    checks = json.loads((DIR / "weight_fill_check.json").read_text())
    for config in ("reduced", "released"):
        for key, c in checks[config].items():
            if config == "released" and key in checks["reduced"] and checks["reduced"][key]["shape"] == c["shape"]:
                continue
            v = fill_value(key, tuple(c["shape"]))
            assert zlib.crc32(np.ascontiguousarray(v, "<f4").tobytes()) == c["crc32_float32_le"], key


def test_load_accepts_the_released_wrapper_and_refuses_other_layouts():
    sd = fill_state_dict("reduced")
    kw = config_kwargs("reduced")
    net = load_alltracker({"model": sd}, "alltracker.pth", **kw)
    assert not net.training
    bad = dict(sd)
    bad.pop("flow_head.2.bias")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(PtrackError, match=r"alltracker.pth does not match the AllTracker layout: 1 missing.*1 unexpected"):
        load_alltracker(bad, "alltracker.pth", **kw)
    with pytest.raises(PtrackError, match="mis-shaped"):
        load_alltracker(sd, "alltracker.pth")  # reduced weights, released configuration


def test_window_starts_and_padding_follow_the_official_clip_layout():
    assert window_starts(3, 16) == [0]
    assert window_starts(16, 16) == [0]
    assert window_starts(17, 16) == [0, 8]
    assert window_starts(13, 8) == [0, 4, 8]
    assert window_starts(130, 16)[-1] == 120


def test_too_small_frames_are_refused_with_the_minimum():
    net = AllTracker()
    net.check_resolution(193, 256)  # padded to 256x256: the smallest accepted
    with pytest.raises(PtrackError, match="at least 256 pixels a side after padding, i.e. 193 or more"):
        net.check_resolution(192, 512)


@pytest.mark.parametrize("mode", ["forward", "sliding"])
def test_reduced_configuration_matches_official(mode):
    """13 frames, windows of 8 (3 windows, temporal padding), 64x96 padded to 64x128, 3 iterations."""
    data = load("model_reduced_64x96_T13")
    net = model("reduced")
    video = video_tensor(data["video"])
    px = data["pixels"]
    done = []

    def encode(idx):
        return net.encode(net.normalise(video[idx]))

    with torch.no_grad():
        flow, visconf = net.track_clip(encode, len(video), tuple(video.shape[-2:]), int(data["iters"]),
                                       mode == "sliding", progress=done.append)
    assert flow.shape == (13, 2, 64, 96) and sum(done) == len(video)
    tol_f, tol_v = float(data[f"{mode}_tol_flow"]), float(data[f"{mode}_tol_visconf"])
    np.testing.assert_allclose(flow[-1].numpy(), data[f"{mode}_flow_last"], rtol=0, atol=tol_f)
    np.testing.assert_allclose(visconf[-1].numpy(), data[f"{mode}_visconf_last"], rtol=0, atol=tol_v)
    at_px = flow[:, :, px[:, 1], px[:, 0]].transpose(1, 2).numpy()
    np.testing.assert_allclose(at_px, data[f"{mode}_flow_px"], rtol=0, atol=tol_f)
    np.testing.assert_allclose(visconf[:, :, px[:, 1], px[:, 0]].transpose(1, 2).numpy(), data[f"{mode}_visconf_px"],
                               rtol=0, atol=tol_v)
    assert np.abs(data[f"{mode}_flow_px"]).max() > 1.0  # the random network moves points
    other = "sliding" if mode == "forward" else "forward"
    assert np.abs(data[f"{mode}_flow_px"] - data[f"{other}_flow_px"]).max() > 100 * tol_f  # the modes differ


def test_reduced_two_frames_full_maps_match_official():
    """Two frames: the single-flow mode (S = 1, time embedding row 1); full maps, cropped from the padding."""
    data = load("model_reduced_flow_64x96_T2")
    net = model("reduced")
    with torch.no_grad():
        flow, visconf = net(video_tensor(data["video"]), iters=int(data["iters"]))
    assert flow.shape == (1, 2, 64, 96)
    np.testing.assert_allclose(flow[0].numpy(), data["flow_last"], rtol=0, atol=float(data["tol_flow"]))
    np.testing.assert_allclose(visconf[0].numpy(), data["visconf_last"], rtol=0, atol=float(data["tol_visconf"]))
    px = data["pixels"]
    np.testing.assert_allclose(flow[:, :, px[:, 1], px[:, 0]].transpose(1, 2).numpy(), data["flow_px"], rtol=0,
                               atol=float(data["tol_flow"]))


def test_released_configuration_two_frames_matches_official():
    """The released configuration (5 levels, radius 4, 3 blocks, 128 channels) on 200x240 (padded to 256x256)."""
    data = load("model_released_flow_200x240_T2")
    net = model("released")
    with torch.no_grad():
        flow, visconf = net(video_tensor(data["video"]), iters=int(data["iters"]), pixels=torch.from_numpy(data["pixels"]))
    np.testing.assert_allclose(flow.numpy(), data["flow_px"], rtol=0, atol=float(data["tol_flow"]))
    np.testing.assert_allclose(visconf.numpy(), data["visconf_px"], rtol=0, atol=float(data["tol_visconf"]))
