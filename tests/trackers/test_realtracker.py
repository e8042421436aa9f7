"""RealTracker predictor wrappers (offline / online) against the official predictor fixtures.

Two levels of checks:
* exact pre/post-processing: the model is stubbed with the stored raw ``model_*`` outputs, so
  ``model_queries``, ``tracks`` and ``visibility`` must match to ~1e-9 (resize factors, support grid,
  backward merge, thresholds, query-frame overwrite);
* end to end with the float32 model through :class:`RealTrackerTracker`, at the README tolerances.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.realtracker import load_realtracker
from pointtrack_cli.geometry import model_to_input, official_grid
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.trackers.realtracker import (
    RealTrackerTracker,
    default_max_points,
    offline_predict,
    online_postprocess,
    prepare_queries,
    run_online,
)
from tests.helpers.realtracker_weights import fill_state_dict
from tests.helpers import FIXTURES

FIX = FIXTURES / "realtracker"
EXACT = 1e-9


def load_case(name: str) -> tuple[dict, dict]:
    d = np.load(FIX / f"{name}.npz")
    return {k: d[k] for k in d.files}, json.loads(str(d["config"]))


def user_queries(case: dict, cfg: dict) -> tuple[np.ndarray, bool]:
    """Queries in input pixels and whether the support grid is added (grid mode: as the lead's CLI builds it)."""
    if "queries" in case:
        return case["queries"].astype(np.float64), bool(cfg.get("add_support_grid", cfg["runner"] == "pred_offline"))
    hm, wm = cfg["model_resolution"]
    grid = model_to_input(official_grid(cfg["grid_size"], hm, wm), (hm, wm), (cfg["H"], cfg["W"]))
    t = np.full((len(grid), 1), float(cfg["grid_query_frame"]))
    return np.concatenate([t, grid], axis=1), False


def report(name: str, got, want, tol: float) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    finite = np.isfinite(want)
    err = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
    print(f"{name}: max|err| {err:.3g} tol {tol:.3g} ratio {err / tol:.3f}")
    assert np.array_equal(np.isnan(got), ~finite), f"{name}: NaN pattern differs"
    assert err <= tol, f"{name}: max|err| {err:.3g} > tol {tol:.3g}"


# --------------------------------------------------------------------------------------------------
# Exact pre/post-processing with the stored raw model outputs


OFFLINE_CASES = [
    "pred_offline_queries_72x100",
    "pred_offline_grid_72x100",
    "pred_offline_backward_72x100",
    "pred_offline_default_res_60x80",
]
ONLINE_CASES = ["pred_online_grid_72x100", "pred_online_queries_default_res_72x100"]


@pytest.mark.parametrize("name", OFFLINE_CASES)
def test_offline_processing_exact(name):
    case, cfg = load_case(name)
    queries, support = user_queries(case, cfg)
    calls = []

    def stub(mq: np.ndarray, reverse: bool):
        calls.append(reverse)
        if reverse:
            report("model_bw_queries", mq, case["model_bw_queries"], EXACT)
            return case["model_bw_coords"], case["model_bw_vis"], case["model_bw_conf"]
        report("model_queries", mq, case["model_queries"], EXACT)
        return case["model_fw_coords"], case["model_fw_vis"], case["model_fw_conf"]

    out = offline_predict(
        stub,
        queries,
        cfg["T"],
        (cfg["H"], cfg["W"]),
        tuple(cfg["model_resolution"]),
        support_grid=support,
        backward=bool(cfg.get("backward_tracking", False)),
    )
    assert calls == ([False, True] if cfg.get("backward_tracking") else [False])
    report("tracks", out["tracks"], case["tracks"], EXACT)
    assert np.array_equal(out["visibility"], case["visibility"])


@pytest.mark.parametrize("name", ONLINE_CASES)
def test_online_processing_exact(name):
    case, cfg = load_case(name)
    queries, support = user_queries(case, cfg)
    hw, mhw = (cfg["H"], cfg["W"]), tuple(cfg["model_resolution"])
    mq = prepare_queries(queries, hw, mhw, support)
    report("model_queries", mq, case["model_queries"], EXACT)
    for k in range(len(cfg["chunks"])):
        tracks, vis = online_postprocess(
            case[f"model_coords_call{k}"], case[f"model_vis_call{k}"], case[f"model_conf_call{k}"], len(queries), hw, mhw
        )
        report(f"tracks_call{k}", tracks, case[f"tracks_call{k}"], EXACT)
        assert np.array_equal(vis, case[f"visibility_call{k}"])


def test_offline_point_batches_get_their_own_support_grid():
    hw, mhw, t = (60, 80), (96, 128), 5
    queries = np.array([[0, 10.0, 20.0], [2, 30.0, 5.0], [4, 79.0, 59.0], [1, 0.0, 0.0], [3, 40.0, 40.0]])
    seen = []

    def stub(mq: np.ndarray, reverse: bool):
        seen.append(mq.copy())
        coords = np.broadcast_to(mq[None, :, 1:] + np.arange(t)[:, None, None], (t, len(mq), 2)).copy()
        return coords, np.full((t, len(mq)), 0.95), np.full((t, len(mq)), 0.5)

    out = offline_predict(stub, queries, t, hw, mhw, support_grid=True, max_points=2)
    assert [len(m) for m in seen] == [38, 38, 37]  # 2 + 2 + 1 user points, each + 36 support points
    for m in seen:
        np.testing.assert_array_equal(m[-36:], seen[0][-36:])
    mq = prepare_queries(queries, hw, mhw, False)
    want = model_to_input(mq[None, :, 1:] + np.arange(t)[:, None, None], mhw, hw)
    want[queries[:, 0].astype(int), np.arange(5)] = queries[:, 1:]
    np.testing.assert_allclose(out["tracks"], want, atol=1e-9)
    assert out["visibility"].all()


def test_default_max_points():
    assert default_max_points(16) >= 10_000  # a 100x100 grid in one online batch
    assert default_max_points(60) >= 10_000
    assert 1_000 < default_max_points(600) < 10_000


# --------------------------------------------------------------------------------------------------
# End to end through the Tracker, float32 model


def make_tracker(cfg: dict, support: bool, **kw) -> RealTrackerTracker:
    online = not cfg["offline"]
    model = load_realtracker(fill_state_dict(online), online, "synthetic")
    return RealTrackerTracker(model, online, resolution=tuple(cfg["model_resolution"]), support_grid=support, **kw)


def check_tracker_case(name: str) -> None:
    case, cfg = load_case(name)
    queries, support = user_queries(case, cfg)
    backward = bool(cfg.get("backward_tracking", False))
    tracker = make_tracker(cfg, support, backward=backward)
    done = []
    out = tracker.track(ArrayVideo(case["video"]), queries, progress=done.append)
    assert sum(done) == cfg["T"]
    n = len(queries)
    tol_c, tol_v, tol_f = float(case["tol_coords"]), float(case["tol_vis"]), float(case["tol_conf"])
    if cfg["offline"]:
        tracks, vis_b, amb = case["tracks"], case["visibility"], case["visibility_ambiguous"]
        vis, conf = case["model_fw_vis"][:, :n], case["model_fw_conf"][:, :n]
        if backward:
            before = np.arange(cfg["T"])[:, None] < queries[None, :, 0]
            vis = np.where(before, case["model_bw_vis"][::-1, :n], vis)
            conf = np.where(before, case["model_bw_conf"][::-1, :n], conf)
    else:
        k = len(cfg["chunks"]) - 1  # the tracker returns what the last call returns
        tracks, vis_b, amb = case[f"tracks_call{k}"], case[f"visibility_call{k}"], case[f"visibility_ambiguous_call{k}"]
        vis, conf = case[f"model_vis_call{k}"][:, :n], case[f"model_conf_call{k}"][:, :n]
    if not backward:  # Tracker convention: nothing before the query frame
        before = np.arange(cfg["T"])[:, None] < queries[None, :, 0]
        tracks = np.where(before[..., None], np.nan, tracks)
        vis_b, vis, conf = vis_b & ~before, np.where(before, 0, vis), np.where(before, 0, conf)
    report("tracks", out.tracks, tracks, tol_c)
    report("visibility_prob", out.visibility_prob, vis, tol_v)
    report("confidence", out.confidence, conf, tol_f)
    assert np.array_equal(out.visibility[~amb], vis_b[~amb])
    print(f"ambiguous visibility entries skipped: {int(amb.sum())}")


@pytest.mark.parametrize("name", ["pred_offline_queries_72x100", "pred_offline_grid_72x100", "pred_offline_backward_72x100"])
def test_offline_tracker(name):
    check_tracker_case(name)


def test_cpu_bf16_is_opt_in_and_reported():
    """``--precision bf16`` on the CPU runs under bf16 autocast (settings say so) and stays near the fp32 result, but
    far outside the fixtures' float32 tolerance: that is why fp32 stays the CPU default (README, Speed)."""
    case, cfg = load_case("pred_offline_queries_72x100")
    queries, support = user_queries(case, cfg)
    fp32 = make_tracker(cfg, support).track(ArrayVideo(case["video"]), queries)
    tracker = make_tracker(cfg, support, precision="bf16")
    assert tracker.settings()["precision"] == "bf16"
    out = tracker.track(ArrayVideo(case["video"]), queries)
    err = np.abs(out.tracks - fp32.tracks)
    print(f"bf16 vs fp32 on CPU: max {np.nanmax(err):.3g} px, median {np.nanmedian(err):.3g} px, "
          f"visibility agreement {(out.visibility == fp32.visibility).mean():.4f} (fixture tol {case['tol_coords']:.3g})")
    assert np.isfinite(out.tracks[np.isfinite(fp32.tracks)]).all()
    assert np.nanmedian(err) < 2.0 and np.nanmax(err) > float(case["tol_coords"])


@pytest.mark.slow  # full 384x512 model on CPU (~10-30 s); still runs by default
def test_offline_tracker_default_res():
    check_tracker_case("pred_offline_default_res_60x80")


def test_online_tracker_grid():
    check_tracker_case("pred_online_grid_72x100")


@pytest.mark.slow  # full 384x512 model on CPU (~10-30 s); still runs by default
def test_online_tracker_default_res():
    check_tracker_case("pred_online_queries_default_res_72x100")


# --------------------------------------------------------------------------------------------------
# Online streaming protocol, backward pass, settings and errors


def test_online_chunk_protocol():
    """Chunks [0,16), [8,24), ... and a last shorter one, each frame iterated once (online_demo.py)."""
    model = load_realtracker(fill_state_dict(True), True, "synthetic", model_resolution=(32, 32))
    protocol = {5: [(0, 5)], 16: [(0, 16)], 17: [(0, 16), (8, 17)], 24: [(0, 16), (8, 24)], 25: [(0, 16), (8, 24), (16, 25)]}
    for t, want in protocol.items():
        frames = (torch.full((3, 32, 32), float(i)) for i in range(t))
        chunks: list[tuple[int, int]] = []
        finals: list[int] = []
        coords, vis, conf = run_online(
            model,
            frames,
            [np.array([[0.0, 5.0, 5.0]])],
            iters=0,
            on_chunk=lambda s, e, *_: chunks.append((s, e)),
            on_final=finals.append,
        )
        assert chunks == want and sum(finals) == t and coords.shape == (t, 1, 2)


def test_online_backward_equals_forward_on_reversed_video():
    """Backward online pass = forward pass on the reversed clip (frames at model size: the float16 spill is exact)."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)
    queries = np.array([[0.0, 10.0, 12.0], [6.0, 30.0, 20.0], [11.0, 40.0, 8.0]])
    cfg = {"offline": False, "model_resolution": [32, 48]}
    # No support grid: the reversed pass moves support points to frame T-1 (as the official offline one).
    both = make_tracker(cfg, False, backward=True, iters=1).track(ArrayVideo(frames), queries)
    fwd = make_tracker(cfg, False, iters=1).track(ArrayVideo(frames), queries)
    rq = queries.copy()
    rq[:, 0] = 11 - rq[:, 0]
    rev = make_tracker(cfg, False, iters=1).track(ArrayVideo(frames[::-1].copy()), rq)
    before = np.arange(12)[:, None] < queries[None, :, 0]
    assert np.isnan(fwd.tracks[before]).all() and np.isfinite(both.tracks).all()
    np.testing.assert_allclose(both.tracks[before], rev.tracks[::-1][before], atol=1e-5)
    np.testing.assert_allclose(both.tracks[~before], fwd.tracks[~before], atol=1e-5)
    np.testing.assert_array_equal(both.visibility[~before], fwd.visibility[~before])


def test_settings_and_errors():
    cfg = {"offline": True, "model_resolution": [32, 32]}
    tracker = make_tracker(cfg, True)
    s = tracker.settings()
    assert s["vis_threshold"] == 0.9 and s["iters"] == 6 and s["resolution"] == [32, 32] and s["window"] == 60
    assert tracker.streaming is False and tracker.name == "realtracker-offline"
    video = ArrayVideo(np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(PtrackError, match="query frame"):
        tracker.track(video, np.array([[4.0, 1.0, 1.0]]))
    with pytest.raises(PtrackError, match="precision"):
        make_tracker(cfg, True, precision="int8")
    model = load_realtracker(fill_state_dict(False), False, "synthetic")
    with pytest.raises(PtrackError, match="offline model"):
        RealTrackerTracker(model, online=True)
    out = tracker.track(video, np.zeros((0, 3)))
    assert out.tracks.shape == (4, 0, 2)
