"""AllTracker wrapper (``AllTrackerPredictor`` of track_on) against the official fixtures, its documented
deviations (before the query frame, queries on the last two frames), the backward pass, the cost warning, the
memory check, and the CLI end to end (``tests/fixtures/alltracker/README.md``)."""
from __future__ import annotations

import gc
import json
import warnings
import weakref

import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.models.alltracker import load_alltracker
from pointtrack_cli.synthetic import write_png_folder
from pointtrack_cli.trackers import alltracker
from pointtrack_cli.trackers.alltracker import AllTrackerTracker, estimate_bytes
from pointtrack_cli.trackers.base import BuildOptions
from pointtrack_cli.weights.registry import registry
from tests.helpers import FIXTURES
from tests.helpers.alltracker_weights import config_kwargs, fill_state_dict

DIR = FIXTURES / "alltracker"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids the cost of synchronising threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reduced_tracker(data: dict, **kw) -> AllTrackerTracker:
    model = load_alltracker(fill_state_dict("reduced"), "fill rule", **config_kwargs("reduced"))
    return AllTrackerTracker(model, tuple(int(v) for v in data["interp_shape"]), iters=int(data["iters"]),
                             sliding_above=int(data["sliding_above"]), **kw)


def load(name: str) -> dict:
    return dict(np.load(DIR / f"{name}.npz"))


def assert_matches_official(out, data: dict) -> None:
    """Frames t >= t_n within the fp32-vs-fp64 tolerance, except the documented deviations, checked here too."""
    q = data["queries"].astype(np.float64)
    t = len(data["video"])
    qt = q[:, 0].astype(int)
    frames = np.arange(t)[:, None]
    own = (frames == qt[None]) & (qt[None] >= t - 2)  # query frames on the last two frames: the query itself
    est = (frames >= qt[None]) & ~own
    tol = float(data["tol_tracks"])
    np.testing.assert_allclose(out.tracks[est], data["tracks"][est], rtol=0, atol=tol)
    np.testing.assert_allclose(out.visibility_prob[est], data["vis_prob"][est], rtol=0, atol=float(data["tol_vis_prob"]))
    clear = est & (np.abs(data["vis_prob"] - 0.6) > 10 * float(data["tol_vis_prob"]))
    np.testing.assert_array_equal(out.visibility[clear], data["visibility"][clear])
    assert out.visibility[est].any() and not out.visibility[est].all()
    # deviations: the query point itself on its own frame when it is one of the last two
    np.testing.assert_allclose(out.tracks[own], np.broadcast_to(q[None, :, 1:], (t,) + q[:, 1:].shape)[own], atol=1e-9)
    assert out.visibility[own].all() and (out.visibility_prob[own] == 1).all() and (out.confidence[own] == 1).all()
    # ... and no estimate before the query frame
    before = frames < qt[None]
    assert np.isnan(out.tracks[before]).all() and not out.visibility[before].any()
    assert (out.visibility_prob[before] == 0).all() and (out.confidence[before] == 0).all()
    assert np.isfinite(out.tracks[~before]).all()


def test_wrapper_matches_official():
    """Queries on frames 0, 3, 10 (2 frames left: single flow) and 11 (the last), some clamped to the frame."""
    data = load("pred_reduced_72x100_T12")
    tracker = reduced_tracker(data)
    done = []
    out = tracker.track(ArrayVideo(data["video"]), data["queries"], progress=done.append)
    assert_matches_official(out, data)
    assert sum(done) == len(data["video"])
    assert tracker.last_dense_runs == [(10, 2, False), (3, 9, False), (0, 12, False)]
    assert not tracker.backward and not tracker.streaming


def test_wrapper_sliding_branch_matches_official_without_feature_cache():
    """The official sliding threshold lowered to 12 (both sides): runs of 16 and 13 frames slide, 12 does not."""
    data = load("pred_reduced_sliding12_56x60_T16")
    tracker = reduced_tracker(data, feature_cache_bytes=0)
    out = tracker.track(ArrayVideo(data["video"]), data["queries"])
    assert_matches_official(out, data)
    assert tracker.last_dense_runs == [(4, 12, False), (3, 13, True), (0, 16, True)]


def test_backward_pass_is_the_wrapper_on_the_reversed_clip():
    """Frames before the query frame come from the wrapper run on the reversed clip (queries at T-1-t)."""
    data = load("pred_reduced_72x100_T12")
    video = data["video"][:5]
    q = np.array([[4, 30.3, 20.7], [3, 70.0, 50.2], [3, 99.0, 0.0]])  # the last two frames: cheap forward runs
    done = []
    tracker = reduced_tracker(data, backward=True)
    out = tracker.track(ArrayVideo(video), q, progress=done.append)
    assert tracker.backward and sum(done) == 5
    rq = q.copy()
    rq[:, 0] = 4 - q[:, 0]
    bw = reduced_tracker(data).track(ArrayVideo(np.ascontiguousarray(video[::-1])), rq)
    before = np.arange(5)[:, None] < q[None, :, 0]
    for a, b in ((out.tracks, bw.tracks), (out.visibility_prob, bw.visibility_prob), (out.confidence, bw.confidence)):
        np.testing.assert_allclose(a[before], b[::-1][before], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out.visibility[before], bw.visibility[::-1][before])
    np.testing.assert_allclose(out.tracks[3, 1:], q[1:, 1:], atol=1e-9)  # the query points themselves
    np.testing.assert_allclose(out.tracks[4, 0], q[0, 1:], atol=1e-9)
    assert np.isfinite(out.tracks).all() and (out.visibility_prob[before] > 0).all()


class FakeNet:
    """Stands in for the network in tests of the wrapper's bookkeeping (no computation)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, encode, num_frames, hw, iters, sliding, pixels, progress=None):
        if progress is not None:
            progress(num_frames)
        n = 1 if num_frames == 2 else num_frames
        return torch.zeros(n, len(pixels), 2), torch.full((n, len(pixels), 2), 0.9)


@pytest.fixture
def fake_tracker(monkeypatch):
    model = load_alltracker(fill_state_dict("reduced"), "fill rule", **config_kwargs("reduced"))
    monkeypatch.setattr(model, "track_clip", FakeNet(model))
    return AllTrackerTracker(model, (64, 64))


def test_runs_longer_than_128_frames_slide(fake_tracker):
    video = ArrayVideo(np.zeros((131, 8, 8, 3), np.uint8))
    q = np.array([[0, 1.0, 1.0], [2, 1.0, 1.0], [3, 1.0, 1.0], [3, 2.0, 2.0]])
    done = []
    out = fake_tracker.track(video, q, progress=done.append)
    assert fake_tracker.last_dense_runs == [(3, 128, False), (2, 129, True), (0, 131, True)]
    assert sum(done) == 131
    np.testing.assert_allclose(out.visibility_prob[3:, 2], 0.81, rtol=1e-6)  # visibility x confidence
    assert out.visibility[3:].all() and (out.confidence[3:, 2] == np.float32(0.9)).all()


class EncodingNet(FakeNet):
    """A :class:`FakeNet` that asks for every frame's features, then records how many frames the network encoded
    and how many of the frame features it encoded are still alive (held by the wrapper's feature cache) once done."""

    def __init__(self, model, monkeypatch):
        super().__init__(model)
        self.encoded, self.alive, self.refs = [], [], []
        encode = model.encode

        def spy(images):  # one tensor per frame, so that each frame's features can be watched
            frames = [f.clone() for f in encode(images)]
            self.refs += [weakref.ref(f) for f in frames]
            self.encoded[-1] += len(frames)
            return frames

        monkeypatch.setattr(model, "encode", spy)

    def __call__(self, encode, num_frames, hw, iters, sliding, pixels, progress=None):
        self.encoded.append(0)
        encode(list(range(num_frames)))
        gc.collect()
        self.alive.append(sum(r() is not None for r in self.refs))
        self.refs.clear()
        return super().__call__(encode, num_frames, hw, iters, sliding, pixels, progress)


@pytest.mark.parametrize("backward", [False, True])
def test_features_are_kept_only_for_later_runs(monkeypatch, backward):
    """Frame features are cached while a later dense run reads them, and not after: at 100 frames of 384x512
    the cache would hold ~0.3 GB that a single run (one query frame) never reads."""
    model = load_alltracker(fill_state_dict("reduced"), "fill rule", **config_kwargs("reduced"))
    net = EncodingNet(model, monkeypatch)
    monkeypatch.setattr(model, "track_clip", net)
    tracker = AllTrackerTracker(model, (64, 64), backward=backward)
    video = ArrayVideo(np.zeros((6, 8, 8, 3), np.uint8))
    tracker.track(video, np.array([[1, 1.0, 1.0], [3, 2.0, 2.0]]))
    # forward runs from frame 3, then from frame 1 (frames 3-5 come from the cache); the last run keeps nothing
    assert net.encoded[:2] == [3, 2]
    assert net.alive[:2] == ([3, 2] if backward else [3, 0])
    if backward:  # the reversed clip's runs: frame 0 is new (the forward runs started at 1), the rest cached
        assert net.encoded[2:] == [1, 0]
    net.encoded, net.alive = [], []
    tracker.track(video, np.array([[0, 1.0, 1.0]]))
    assert net.encoded[0] == 6 and net.alive[0] == (6 if backward else 0)


def test_many_query_frames_warn_about_the_cost(fake_tracker):
    video = ArrayVideo(np.zeros((10, 8, 8, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"once per distinct query frame: 5 query frames here, about 4.0x"):
        fake_tracker.track(video, np.array([[t, 1.0, 1.0] for t in range(5)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fake_tracker.track(video, np.array([[t, 1.0, 1.0] for t in range(4)]))


def test_memory_check_refuses_with_estimate_and_way_out(fake_tracker, monkeypatch):
    need = estimate_bytes(100, (480, 854), (384, 512), 400)
    assert 1.5e9 < need < 4e9
    monkeypatch.setattr(alltracker, "available_bytes", lambda device: 1 << 28)
    video = ArrayVideo(np.zeros((4, 8, 8, 3), np.uint8))
    video.read_all = lambda: pytest.fail("frames read before the memory check")
    with pytest.raises(PtrackError, match=r"needs about .* GiB for 4 frames at 64x64 but 0.2 GiB .*--max-size"):
        fake_tracker.track(video, np.array([[0, 5.0, 5.0]]))


def test_queries_out_of_range_and_resolution_errors():
    model = load_alltracker(fill_state_dict("reduced"), "fill rule", **config_kwargs("reduced"))
    tracker = AllTrackerTracker(model, (64, 64))
    with pytest.raises(PtrackError, match=r"query frame indices must lie in \[0, 2\]"):
        tracker.track(ArrayVideo(np.zeros((3, 8, 8, 3), np.uint8)), np.array([[3, 1.0, 1.0]]))
    with pytest.raises(PtrackError, match="AllTracker cannot run at 180x256"):
        alltracker.build(registry()["alltracker"], {"model": fill_state_dict("released")}, {"path": "w.pth"},
                         BuildOptions(resolution=(180, 256)))


def test_cli_track_folder_matches_official(tmp_path, cli):
    """``ptrack track`` on a 3-frame folder at --resolution 200x240 (the released configuration, padded to 256x256):
    points queried on frame 1 go through the single-flow mode, whose official output is the fixture."""
    data = load("model_released_flow_200x240_T2")
    video = np.concatenate([data["video"][1:], data["video"]])  # frame 0: anything; frames 1, 2: the fixture clip
    folder = write_png_folder(video, tmp_path / "frames")
    weights = tmp_path / "alltracker.pth"
    torch.save({"model": fill_state_dict("released")}, weights)  # the released file's layout
    px = data["pixels"][[0, 3, 10, 20, 40]].astype(np.float64)
    q = np.concatenate([np.concatenate([np.ones((len(px), 1)), px], 1), [[2, 33.0, 44.0]]])
    qfile = tmp_path / "q.csv"
    np.savetxt(qfile, q, delimiter=",", header="t,x,y", comments="", fmt="%.6f")
    res = cli(["track", folder, "--model", "alltracker", "--weights", weights, "--queries", qfile,
               "--resolution", "200x240", "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    idx = [0, 3, 10, 20, 40]
    tol = float(data["tol_flow"])
    np.testing.assert_allclose(r.tracks[2, :5], px + data["flow_px"][0, idx], rtol=0, atol=tol + 1e-4)
    prob = data["visconf_px"][0, idx, 0] * data["visconf_px"][0, idx, 1]
    np.testing.assert_allclose(r.visibility_prob[2, :5], prob, rtol=0, atol=1e-4)
    np.testing.assert_allclose(r.confidence[2, :5], data["visconf_px"][0, idx, 1], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(r.visibility[2, :5], prob > 0.6)
    np.testing.assert_allclose(r.tracks[1, :5], px, atol=1e-4)  # the query point on its own frame (deviation)
    np.testing.assert_allclose(r.tracks[2, 5], [33.0, 44.0], atol=1e-4)
    assert np.isnan(r.tracks[0]).all() and np.isnan(r.tracks[1, 5]).all()
    meta = json.loads(str(np.load(tmp_path / "out" / "tracks.npz")["meta"]))
    assert "alltracker" in json.dumps(meta)
