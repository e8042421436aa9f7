"""ProTracker on generated videos with known motion: accuracy and occlusion vs exact ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.models.cnn import BasicEncoder
from pointtrack_cli.trackers.base import BuildOptions
from pointtrack_cli.trackers.protracker import (MaskVideo, ProTracker, ProTrackerConfig, build, fuse_gaussians,
                                               lowest_variance)
from tests.helpers import VELOCITY, H, T, W
from tests.helpers.realtracker_weights import fill_state_dict

SIZE = 128


def _texture(size: int, seed: int) -> np.ndarray:
    """Multi-scale colour noise ``[size, size, 3]`` uint8: trackable everywhere, not periodic."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for sigma, amp in ((1.0, 0.5), (2.5, 1.0), (6.0, 1.0)):
        n = cv2.GaussianBlur(rng.standard_normal((size, size, 3)).astype(np.float32), (0, 0), sigma)
        img += amp * n / n.std()
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def _warp_video(tex: np.ndarray, mats: list[np.ndarray], size: int = SIZE) -> np.ndarray:
    """Frames ``[T, size, size, 3]``: ``tex`` mapped by the 2x3 texture->frame affine of each frame."""
    return np.stack([cv2.warpAffine(tex, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                     for m in mats])


def _gt(mats: list[np.ndarray], tex_xy: np.ndarray) -> np.ndarray:
    """Ground truth ``[T, N, 2]`` of texture points ``[N, 2]``."""
    return np.stack([tex_xy @ m[:, :2].T + m[:, 2] for m in mats])


def _rot(angle_deg: float, scale: float, centre: tuple[float, float], shift: tuple[float, float]) -> np.ndarray:
    m = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    m[:, 2] += shift
    return m


def _queries_at(gt: np.ndarray, t: int) -> np.ndarray:
    return np.concatenate([np.full((gt.shape[1], 1), float(t)), gt[t]], 1)


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    g = np.linspace(lo, hi, n)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread wake-ups would dominate
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Fusion maths


def test_fusion_rho_zero_is_inverse_variance():
    means = np.array([[[0.0, 0.0]], [[3.0, 6.0]]])
    var = np.array([[1.0], [2.0]])
    m, v, ok, w = fuse_gaussians(means, var, np.ones((2, 1), bool), rho=0.0)
    np.testing.assert_allclose(m[0], [1.0, 2.0], atol=1e-6)  # weights 2/3, 1/3
    np.testing.assert_allclose(v[0], 2.0 / 3.0, atol=1e-6)
    np.testing.assert_allclose(w[:, 0], [2 / 3, 1 / 3], atol=1e-6)
    assert ok[0]


@pytest.mark.parametrize("k,rho", [(2, 0.3), (4, 0.5), (7, 0.9)])
def test_fusion_equal_chains_correlated_variance(k, rho):
    # K equally good chains with correlation rho: variance var * (1 + (K - 1) rho) / K.
    means = np.random.default_rng(0).normal(size=(k, 1, 2))
    m, v, ok, _ = fuse_gaussians(means, np.full((k, 1), 2.0), np.ones((k, 1), bool), rho=rho)
    np.testing.assert_allclose(v[0], 2.0 * (1 + (k - 1) * rho) / k, rtol=1e-5)
    np.testing.assert_allclose(m[0], means[:, 0].mean(0), atol=1e-5)


def test_fusion_drops_negative_weights_and_invalid_chains():
    # With rho = 0.9 the weak chain would get a negative weight: it is dropped, not extrapolated.
    means = np.array([[[0.0, 0.0]], [[10.0, 0.0]], [[99.0, 99.0]]])
    var = np.array([[1.0], [100.0], [0.01]])
    valid = np.array([[True], [True], [False]])
    m, v, ok, w = fuse_gaussians(means, var, valid, rho=0.9)
    np.testing.assert_allclose(m[0], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(v[0], 1.0, atol=1e-6)
    assert w[2, 0] == 0 and w[1, 0] == 0
    m, v, ok, _ = fuse_gaussians(means, var, np.zeros((3, 1), bool), rho=0.5)
    assert not ok[0] and np.isnan(m[0]).all() and np.isinf(v[0])
    m, v, ok, _ = lowest_variance(means, var, valid)
    np.testing.assert_allclose(m[0], [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Known motion


def test_translation_tracks_within_half_pixel():
    tex = _texture(256, 1)
    t = 24
    mats = [_rot(0.0, 1.0, (0, 0), (-60 + 1.3 * k, -60 - 0.7 * k)) for k in range(t)]
    frames = _warp_video(tex, mats)
    pts = _grid(30.0, 98.0, 6)
    tex_xy = pts - mats[0][:, 2]
    gt = _gt(mats, tex_xy)
    out = ProTracker().track(ArrayVideo(frames), _queries_at(gt, 0))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert out.tracks.shape == (t, len(pts), 2)
    assert np.median(err) < 0.3, np.median(err)
    assert np.quantile(err, 0.95) < 1.0
    assert out.visibility.mean() > 0.97
    assert (out.visibility_prob[out.visibility] >= 0.5).all() and (out.visibility_prob[~out.visibility] < 0.5).all()


def test_queries_in_the_middle_are_tracked_both_ways():
    tex = _texture(256, 2)
    t = 20
    mats = [_rot(0.0, 1.0, (0, 0), (-60 + 1.1 * k, -60 + 0.9 * k)) for k in range(t)]
    frames = _warp_video(tex, mats)
    gt = _gt(mats, _grid(35.0, 90.0, 4) - mats[10][:, 2])
    out = ProTracker().track(ArrayVideo(frames), _queries_at(gt, 10))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert np.median(err[:10]) < 0.4 and np.median(err[11:]) < 0.4
    assert out.visibility[:10].mean() > 0.95
    np.testing.assert_allclose(out.tracks[10], gt[10], atol=1e-4)  # the query itself


def test_rotation_and_zoom():
    # 1.5 deg/frame for 24 frames (35 deg) and 10 % zoom: the geometry-aware filter must not
    # mistake the rotated patches for occlusions.
    tex = _texture(256, 3)
    t = 24
    mats = [_rot(1.5 * k, 1.0 + 0.004 * k, (128, 128), (-64, -64)) for k in range(t)]
    frames = _warp_video(tex, mats)
    pts = _grid(34.0, 94.0, 5)
    inv = cv2.invertAffineTransform(mats[0])
    gt = _gt(mats, pts @ inv[:, :2].T + inv[:, 2])
    out = ProTracker().track(ArrayVideo(frames), _queries_at(gt, 0))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert np.median(err) < 0.6, np.median(err)
    assert np.quantile(err, 0.9) < 1.5
    assert out.visibility.mean() > 0.9


def _occluder_video(t: int = 30):
    """Background drifting slowly; a flat grey bar sweeps left to right over the middle rows."""
    tex = _texture(256, 4)
    mats = [_rot(0.0, 1.0, (0, 0), (-64 + 0.5 * k, -64 + 0.3 * k)) for k in range(t)]
    frames = _warp_video(tex, mats)
    pts = _grid(20.0, 108.0, 6)
    gt = _gt(mats, pts - mats[0][:, 2])
    occ = np.zeros(gt.shape[:2], bool)
    deep = np.zeros(gt.shape[:2], bool)
    for k in range(t):
        x0 = -40 + 8 * k  # 36 px wide bar, rows 40..88
        frames[k, 40:89, max(x0, 0):max(x0 + 36, 0)] = (90, 140, 120)
        g = gt[k]
        dist = np.minimum.reduce([g[:, 0] - (x0 - 0.5), x0 + 35.5 - g[:, 0], g[:, 1] - 39.5, 88.5 - g[:, 1]])
        occ[k] = dist >= 0
        deep[k] = dist >= 9  # the 17 px descriptor patch lies wholly on the bar
    return frames, gt, occ, deep


def test_occluder_passing_over_points():
    frames, gt, occ, deep = _occluder_video()
    out = ProTracker().track(ArrayVideo(frames), _queries_at(gt, 0))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    vis = ~occ
    assert occ.sum() > 30 and deep.sum() > 10  # the bar really hides points
    # Occlusion decisions: accuracy overall; points well inside the bar are all caught (near its
    # edges the descriptor patch still sees half background, so some are missed there).
    assert (out.visibility == vis).mean() > 0.9
    assert (~out.visibility[deep]).mean() > 0.95
    assert (~out.visibility[occ]).mean() > 0.6
    # Points are found again after the bar has passed and stay accurate.
    hidden_once = occ.any(0)
    after = np.zeros_like(occ)
    for n in np.nonzero(hidden_once)[0]:
        last = np.nonzero(occ[:, n])[0].max()
        after[last + 2:, n] = True
    assert after.sum() > 20
    assert (err[after] < 2.0).mean() > 0.85
    assert out.visibility[after].mean() > 0.8
    assert (err[vis] < 2.0).mean() > 0.9


def test_point_leaves_and_reenters_frame():
    # Content slides right by 4 px/frame for 14 frames, then back: points near the right edge
    # leave the frame and come back.
    tex = _texture(256, 5)
    t = 30
    shift = [4.0 * min(k, 28 - k) if k <= 28 else 0.0 for k in range(t)]
    mats = [_rot(0.0, 1.0, (0, 0), (-64 + s, -64)) for s in shift]
    frames = _warp_video(tex, mats)
    xs = np.array([100.0, 106.0, 112.0, 118.0, 90.0, 60.0])
    pts = np.stack([xs, np.linspace(30, 100, len(xs))], -1)
    gt = _gt(mats, pts - mats[0][:, 2])
    out = ProTracker().track(ArrayVideo(frames), _queries_at(gt, 0))
    inside = (gt[..., 0] >= 0) & (gt[..., 0] <= SIZE - 1)
    assert (~inside).sum() > 20
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert (~out.visibility[~inside]).mean() > 0.9  # out of frame -> occluded
    back = inside & (np.arange(t)[:, None] >= 26)  # well after re-entering
    assert (err[back] < 2.0).mean() > 0.8
    assert out.visibility[back].mean() > 0.8


# ---------------------------------------------------------------------------------------------
# Options, ablations, plumbing


def _small_clip(t: int = 12):
    tex = _texture(256, 6)
    mats = [_rot(0.0, 1.0, (0, 0), (-60 + 1.0 * k, -60 + 0.5 * k)) for k in range(t)]
    frames = _warp_video(tex, mats)
    gt = _gt(mats, _grid(30.0, 95.0, 3) - mats[0][:, 2])
    return frames, gt


@pytest.mark.parametrize("kw", [dict(keypoints=False), dict(fusion=False), dict(backward_pass=False),
                                dict(feature_filter=False), dict(features="sift"), dict(flow="dis-fast"),
                                dict(flow_cache_mb=0), dict(rho=0.0)])
def test_switches_run_and_track(kw):
    frames, gt = _small_clip()
    tr = ProTracker.from_options(**kw)  # the flat keywords of the CLI's options and the benchmarks
    out = tr.track(ArrayVideo(frames), _queries_at(gt, 0))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert np.median(err) < 0.5
    s = tr.settings()
    for key, value in kw.items():
        if key not in ("flow", "flow_cache_mb"):
            assert s[key] == value


def test_flow_cache_does_not_change_results():
    frames, gt = _occluder_video(16)[:2]
    q = _queries_at(gt, 3)
    a = ProTracker().track(ArrayVideo(frames), q)
    b = ProTracker(ProTrackerConfig(flow_cache_mb=0)).track(ArrayVideo(frames), q)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    np.testing.assert_array_equal(a.visibility, b.visibility)


def test_realtracker_feature_path_with_an_fnet_module():
    torch.manual_seed(0)
    frames, gt = _small_clip(8)
    tr = ProTracker(features="realtracker", fnet=BasicEncoder())
    out = tr.track(ArrayVideo(frames), _queries_at(gt, 0))
    assert np.median(np.linalg.norm(out.tracks - gt, axis=-1)) < 0.5
    assert tr.settings()["features"] == "realtracker"


@pytest.mark.parametrize("name", ["{k:04d}.png", "{k1}.png"])
def test_mask_video_marks_object_points_outside_the_mask(tmp_path, name):
    # "{k1}.png": masks 1.png .. 12.png, whose name order (1, 10, 11, 12, 2, ...) is not their frame order.
    frames, gt = _small_clip(12)
    q = _queries_at(gt, 0)
    obj = np.zeros(len(q), bool)
    obj[:4] = True
    for k in range(12):
        m = np.zeros((SIZE, SIZE), np.uint8)
        if k < 5:  # the object's mask covers its points for 5 frames, then vanishes
            for x, y in gt[k, obj]:
                cv2.circle(m, (int(round(x)), int(round(y))), 6, 255, -1)
        cv2.imwrite(str(tmp_path / name.format(k=k, k1=k + 1)), m)
    out = ProTracker(mask_video=tmp_path).track(ArrayVideo(frames), q)
    assert out.visibility[:5].all()
    assert not out.visibility[5:, obj].any()
    assert out.visibility[5:, ~obj].mean() > 0.95  # background points (queried outside) unaffected


def test_mask_files_follow_frame_numbers_not_names(tmp_path):
    """Masks 1.png .. 12.png are frames 0 .. 11 in number order, as io/video orders a folder of frames."""
    for k in range(1, 13):
        m = np.zeros((4, 16), np.uint8)
        m[0, k] = 255  # mask k.png marks column k
        cv2.imwrite(str(tmp_path / f"{k}.png"), m)
    masks = MaskVideo(tmp_path, np.arange(3, 12, 2), (4, 16))  # --start 3 --stride 2: source frames 3, 5, ..., 11
    assert [p.name for p in masks.files] == ["4.png", "6.png", "8.png", "10.png", "12.png"]
    for t, k in enumerate(range(4, 13, 2)):
        assert np.nonzero(masks[t][0])[0].tolist() == [k]


def test_errors_are_ptrack_errors(tmp_path):
    with pytest.raises(PtrackError):
        ProTrackerConfig(rho=1.0)
    with pytest.raises(PtrackError):
        ProTrackerConfig(intervals=(0, 1))
    with pytest.raises(PtrackError):
        ProTracker(features="dino")
    with pytest.raises(PtrackError):
        ProTracker(features="realtracker")  # no fnet
    with pytest.raises(PtrackError):
        ProTracker(flow="raft")
    frames, gt = _small_clip(6)
    with pytest.raises(PtrackError):
        ProTracker().track(ArrayVideo(frames), np.array([[6.0, 10.0, 10.0]]))
    with pytest.raises(PtrackError):
        ProTracker(mask_video=tmp_path / "missing").track(ArrayVideo(frames), _queries_at(gt, 0))
    cv2.imwrite(str(tmp_path / "0000.png"), np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(PtrackError):
        ProTracker(mask_video=tmp_path).track(ArrayVideo(frames), _queries_at(gt, 0))


def test_progress_reports_every_frame_once_and_edge_cases():
    frames, gt = _small_clip(9)
    seen = []
    ProTracker().track(ArrayVideo(frames), _queries_at(gt, 4), progress=seen.append)
    assert sum(seen) == 9 and all(s > 0 for s in seen)
    out = ProTracker().track(ArrayVideo(frames), np.zeros((0, 3)))
    assert out.tracks.shape == (9, 0, 2)
    out = ProTracker().track(ArrayVideo(frames[:1]), _queries_at(gt, 0))
    np.testing.assert_allclose(out.tracks[0], gt[0], atol=1e-4)
    assert out.visibility.all()


def test_work_size_downscales_and_maps_back():
    tex = _texture(512, 7)
    t = 10
    mats = [_rot(0.0, 1.0, (0, 0), (-100 + 2.0 * k, -100 + 1.0 * k)) for k in range(t)]
    frames = _warp_video(tex, mats, size=256)
    gt = _gt(mats, _grid(60.0, 190.0, 3) - mats[0][:, 2])
    out = ProTracker(ProTrackerConfig(work_size=128)).track(ArrayVideo(frames), _queries_at(gt, 0))
    err = np.linalg.norm(out.tracks - gt, axis=-1)
    assert np.median(err) < 1.0  # tracked at half resolution, reported in input pixels
    np.testing.assert_allclose(out.tracks[0], gt[0], atol=1e-3)


def test_config_is_frozen_and_normalised():
    c = ProTrackerConfig(intervals=[8, 1, 2, 2], reacquire_frames=0, kp_radius=10)
    assert c.intervals == (1, 2, 8) and c.reacquire_frames == 1 and c.kp_radius == 10.0
    with pytest.raises(AttributeError):
        c.rho = 0.5  # type: ignore[misc]
    tr = ProTracker(c, features="sift")
    assert (tr.config.kp_threshold, tr.config.kp_margin) == (0.9, 0.2)  # per-descriptor defaults filled in
    assert ProTracker(ProTrackerConfig(kp_threshold=0.6)).config.kp_threshold == 0.6
    with pytest.raises(PtrackError, match="unknown ProTracker option"):
        ProTracker.from_options(keypoint=False)


def test_build_from_command_line_options():
    tr = build(BuildOptions(options={"features": "sift", "flow": "dis-fast"}), None)
    assert tr.settings()["features"] == "sift" and tr.settings()["flow"] == "dis-fast"
    assert tr.weights_info is None
    assert build(BuildOptions(resolution=(384, 512)), None).settings() == ProTracker().settings()
    for options, message in (({"features": "dino"}, "unknown features"), ({"flow": "raft"}, "unknown flow source"),
                             ({"colour": True}, "unknown ProTracker option")):
        with pytest.raises(PtrackError, match=message):
            build(BuildOptions(options=options), None)
    with pytest.raises(PtrackError, match="--features realtracker"):
        build(BuildOptions(), "w.pth")
    with pytest.raises(PtrackError, match="--resolution 8x8"):
        build(BuildOptions(resolution=(8, 8)), None)


# ---------------------------------------------------------------------------------------------
# Command line


def _cli_err(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return " ".join(res.output.split())


def test_cli_features_realtracker_takes_fnet_from_local_weights(tmp_path, cli, png_video):
    torch.save(fill_state_dict(False), tmp_path / "w.pth")
    res = cli(["track", png_video, "--model", "protracker", "--features", "realtracker", "--weights", tmp_path / "w.pth",
               "--point", "0,60,50", "--end", 8, "--out", tmp_path / "o", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "o")
    assert r.tracks.shape == (8, 1, 2)
    assert r.meta["tracker_settings"]["features"] == "realtracker"
    assert r.meta["weights"]["path"] == str((tmp_path / "w.pth").resolve())


def test_cli_mask_video_follows_start_and_stride(tmp_path, cli, png_video):
    """Mask image k belongs to source frame k, also when --start/--stride select other frames."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for k in range(T):
        m = np.zeros((H, W), np.uint8)
        if k < 10:  # the object's mask follows the queried point up to source frame 9, then vanishes
            cv2.circle(m, (int(round(60 + VELOCITY[0] * (k - 4))), int(round(50 + VELOCITY[1] * (k - 4)))), 8, 255, -1)
        cv2.imwrite(str(masks / f"{k:05d}.png"), m)
    res = cli(["track", png_video, "--model", "protracker", "--mask-video", masks, "--point", "4,60,50",
               "--point", "4,20,80", "--start", 2, "--stride", 2, "--out", tmp_path / "o", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "o")
    src = r.frame_indices
    assert r.visibility[src < 10, 0].all() and not r.visibility[src >= 10, 0].any()
    assert r.visibility[:, 1].all()  # queried off the object: the masks do not apply


def test_cli_protracker_option_errors(tmp_path, cli, png_video):
    base = ["track", png_video, "--out", tmp_path / "o", "--quiet", "--grid", 2]
    assert "only apply to --model protracker" in _cli_err(cli(base + ["--model", "lk", "--features", "sift"]))
    assert "unknown features" in _cli_err(cli(base + ["--model", "protracker", "--features", "dino"]))
    assert "unknown flow source" in _cli_err(cli(base + ["--model", "protracker", "--flow", "raft"]))
    msg = _cli_err(cli(base + ["--model", "protracker", "--weights", tmp_path / "w.pth"]))
    assert "--features realtracker" in msg
    msg = _cli_err(cli(base + ["--model", "protracker", "--features", "realtracker"]))  # hermetic HF: not cached
    assert "facebook/cotracker3" in msg and "--weights" in msg
    msg = _cli_err(cli(base + ["--model", "protracker", "--mask-video", tmp_path / "nope"]))
    assert "mask folder not found" in msg
    msg = _cli_err(cli(base + ["--model", "protracker", "--resolution", "8x8"]))
    assert "--resolution 8x8" in msg and "query" not in msg
