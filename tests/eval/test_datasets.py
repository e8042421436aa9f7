"""TAP-Vid readers and query sampling against the official reader outputs, plus tiny hand-written files."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.eval.datasets import (
    decode_frames,
    lanczos_resize,
    load_pickle,
    open_dataset,
    sample_queries,
    sample_queries_first,
    sample_queries_strided,
)
from pointtrack_cli.eval.metrics import METRIC_NAMES, mean_over_videos
from pointtrack_cli.eval.predictions import Prediction
from pointtrack_cli.eval.runner import score
from tests.helpers import FIXTURES

FIXTURES = FIXTURES / "tapvid"
MINI = {
    "davis": FIXTURES / "mini_davis.pkl",
    "rgb_stacking": FIXTURES / "mini_rgb_stacking.pkl",
    "kinetics": FIXTURES / "mini_kinetics",
    "robotap": FIXTURES / "mini_robotap",
}
SUMMARY = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


@pytest.fixture(scope="module")
def mini_videos() -> dict[str, list]:
    return {ds: list(open_dataset(ds, path)) for ds, path in MINI.items()}


# ---------------------------------------------------------------------------------------------
# Official reader outputs (expected_mini_*.npz)


@pytest.mark.parametrize("ds", list(MINI))
def test_reader_matches_official(ds, mini_videos):
    z = np.load(FIXTURES / f"expected_mini_{ds}.npz")
    videos = mini_videos[ds]
    assert [v.name for v in videos] == [str(n) for n in z["video_names"]]
    for vi, v in enumerate(videos):
        assert v.frames.shape[1:] == (256, 256, 3) and v.frames.dtype == np.uint8
        # PIL Lanczos is reproduced exactly, so the frame means match to float precision.
        np.testing.assert_allclose(v.frames.reshape(len(v.frames), -1, 3).mean(1), z[f"{vi}__resized_frame_mean"], atol=1e-9)
        for mode in ("first", "strided"):
            q = sample_queries(v, mode)
            pre = f"{mode}__{vi}__"
            assert np.array_equal(q.query_points, z[pre + "query_points"][0])
            assert np.array_equal(q.target_points, z[pre + "target_points"][0])
            assert np.array_equal(q.occluded, z[pre + "occluded"][0])
            if mode == "strided":
                assert np.array_equal(q.trackgroup, z[pre + "trackgroup"][0])
            assert q.query_points.dtype == np.float64 and q.target_points.dtype == np.float64


def test_davis_resized_crops_exact(mini_videos):
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    f0 = mini_videos["davis"][0].frames[0]
    assert np.array_equal(f0[96:160, 96:160], z["0__resized_frame0_center_crop_uint8"])
    assert np.array_equal(f0[0:32, 0:32], z["0__resized_frame0_corner_crop_uint8"])


def test_kinetics_jpeg_decoding_exact():
    z = np.load(FIXTURES / "expected_mini_kinetics.npz")
    shard = load_pickle(FIXTURES / "mini_kinetics" / "0000_of_0010.pkl")
    assert isinstance(shard, list) and shard[0]["video"].dtype.kind == "S"
    for vi, rec in enumerate(shard):
        frames = decode_frames(rec["video"], "test")
        np.testing.assert_allclose(frames.reshape(len(frames), -1, 3).mean(1), z[f"{vi}__decoded_frame_mean"], atol=1e-9)
    assert np.array_equal(decode_frames(shard[0]["video"], "test")[0], z["0__decoded_frame0_uint8"])


@pytest.mark.parametrize("ds", list(MINI))
@pytest.mark.parametrize("mode", ["first", "strided"])
def test_baseline_metrics_end_to_end(ds, mode, mini_videos):
    """Zero-motion and the stored noisy predictions, scored through the runner: per video and mean to 1e-6."""
    z = np.load(FIXTURES / f"expected_mini_{ds}.npz")
    per = {"zero": [], "noisy": []}
    for vi, v in enumerate(mini_videos[ds]):
        q = sample_queries(v, mode)
        zero = Prediction(np.broadcast_to(q.query_points[:, None, [2, 1]], q.target_points.shape), np.zeros_like(q.occluded))
        pre = f"{mode}__{vi}__noisy__"
        noisy = Prediction(z[pre + "pred_tracks"][0], z[pre + "pred_occluded"][0])
        for name, pred in (("zero", zero), ("noisy", noisy)):
            m = score(q, pred)
            per[name].append(m)
            for k in METRIC_NAMES:
                assert abs(m[k] - z[f"{mode}__{vi}__{name}__{k}"]) <= 1e-6, (name, vi, k)
    for name in per:
        mean = mean_over_videos(per[name])
        keys = METRIC_NAMES if name == "noisy" else SUMMARY
        for k in keys:
            assert abs(mean[k] - z[f"{mode}__mean__{name}__{k}"]) <= 1e-6, (name, k)


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_cotracker_255_mode(mode):
    z = np.load(FIXTURES / "expected_mini_davis.npz")
    per = []
    for vi, v in enumerate(open_dataset("davis", MINI["davis"], gt_scale=255).videos(load_frames=False)):
        q = sample_queries(v, mode)
        pre = f"cotracker__{mode}__{vi}__"
        assert np.array_equal(q.query_points, z[pre + "query_points"][0])
        assert np.array_equal(q.target_points, z[pre + "target_points"][0].astype(np.float64))
        zero = Prediction(np.broadcast_to(q.query_points[:, None, [2, 1]], q.target_points.shape), np.zeros_like(q.occluded))
        per.append(score(q, zero))
    mean = mean_over_videos(per)
    for k in SUMMARY:
        assert abs(mean[k] - z[f"cotracker__{mode}__mean__zero__{k}"]) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Query sampling by hand

OCC = np.array(
    [
        # t: 0  1  2  3  4  5  6  7  8  9  10 11
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # visible throughout
        [1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0],  # first visible at 3, visible at stride frame 5
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # never visible
        [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],  # fly-by: visible 1..3 only, on no stride frame
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # visible at 10 (a stride frame) and 11
    ],
    dtype=bool,
)


def _points(n: int, t: int) -> np.ndarray:
    """Distinct (x, y) per (track, frame): x = 10 n + t, y = 100 + 10 n + t / 2."""
    nn, tt = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
    return np.stack([10.0 * nn + tt, 100.0 + 10.0 * nn + tt / 2], axis=-1)


def test_sample_queries_first_by_hand():
    pts = _points(*OCC.shape)
    q = sample_queries_first(OCC, pts)
    assert q.trackgroup.tolist() == [0, 1, 3, 4]  # the never-visible track is dropped
    assert q.query_points.tolist() == [[0, 100, 0], [3, 111.5, 13], [1, 130.5, 31], [10, 145, 50]]  # (t, y, x)
    assert np.array_equal(q.target_points, pts[[0, 1, 3, 4]]) and np.array_equal(q.occluded, OCC[[0, 1, 3, 4]])


def test_sample_queries_strided_by_hand():
    pts = _points(*OCC.shape)
    q = sample_queries_strided(OCC, pts)
    # frame-major: frame 0 -> track 0; frame 5 -> tracks 0, 1; frame 10 -> tracks 0, 4. Track 3 is dropped.
    assert q.trackgroup.tolist() == [0, 0, 1, 0, 4]
    assert q.query_points[:, 0].tolist() == [0, 5, 5, 10, 10]
    assert q.query_points[2].tolist() == [5, 112.5, 15]
    assert np.array_equal(q.target_points, pts[[0, 0, 1, 0, 4]])


def test_sample_queries_no_visible_track():
    occ = np.ones((2, 6), bool)
    pts = _points(2, 6)
    assert len(sample_queries_first(occ, pts)) == 0 and len(sample_queries_strided(occ, pts)) == 0


# ---------------------------------------------------------------------------------------------
# Tiny hand-written files in each official layout


def _record(t: int, h: int, w: int, n: int = 5, seed: int = 0, points_dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    pts = rng.uniform(0.05, 0.95, (n, t, 2)).astype(points_dtype)
    occ = rng.random((n, t)) < 0.3
    occ[0] = False
    return {"video": video, "points": pts, "occluded": occ}


def _dump(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def _jpeg_record(rec: dict) -> dict:
    """Kinetics layout: np.array(tuple of JPEG bytes) (fixed-width bytes dtype), float64 points."""
    frames = tuple(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in rec["video"])
    return {"video": np.array(frames), "points": rec["points"].astype(np.float64), "occluded": rec["occluded"]}


def test_davis_layout(tmp_path):
    recs = {"cow": _record(7, 20, 30, seed=1), "bear": _record(6, 20, 30, seed=2)}
    path = _dump(recs, tmp_path / "tapvid_davis.pkl")
    for data in (path, tmp_path):  # the file, or the folder holding it
        videos = list(open_dataset("davis", data))
        assert [v.name for v in videos] == ["cow", "bear"]  # insertion order, not sorted
    v = videos[0]
    assert v.frames.shape == (7, 256, 256, 3) and v.source_hw == (20, 30)
    assert np.array_equal(v.points, recs["cow"]["points"].astype(np.float64) * 256)
    assert np.array_equal(v.occluded, recs["cow"]["occluded"])


def test_rgb_stacking_layout_is_not_resized_at_256(tmp_path):
    recs = [_record(5, 256, 256, seed=3), _record(6, 256, 256, seed=4)]
    videos = list(open_dataset("rgb_stacking", _dump(recs, tmp_path / "tapvid_rgb_stacking.pkl")))
    assert [v.name for v in videos] == ["0", "1"]
    assert np.array_equal(videos[1].frames, recs[1]["video"])  # already 256x256: frames untouched


def test_kinetics_layout_shards(tmp_path):
    shard0 = [_jpeg_record(_record(5, 24, 40, seed=5)), _jpeg_record(_record(4, 24, 40, seed=6))]
    shard1 = {"a": _jpeg_record(_record(6, 24, 40, seed=7))}  # the official reader also takes dict shards
    _dump(shard0, tmp_path / "0000_of_0010.pkl")
    _dump(shard1, tmp_path / "0001_of_0010.pkl")
    _dump([_record(3, 8, 8)], tmp_path / "unrelated.pkl")  # not matched by the shard glob
    ds = open_dataset("kinetics", tmp_path)
    videos = list(ds)
    assert [v.name for v in videos] == ["0", "1", "a"] and ds.estimated_total == 3
    v = videos[0]
    assert v.points.dtype == np.float64 and np.array_equal(v.points, shard0[0]["points"] * 256)
    ref = lanczos_resize(np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                                   for b in shard0[0]["video"]]))
    assert np.array_equal(v.frames, ref)


def test_robotap_layout_splits(tmp_path):
    _dump({"robo-b": _record(5, 16, 24, seed=8)}, tmp_path / "robotap_split1.pkl")
    _dump({"robo-a": _record(5, 16, 24, seed=9)}, tmp_path / "robotap_split0.pkl")
    assert [v.name for v in open_dataset("robotap", tmp_path)] == ["robo-a", "robo-b"]  # splits in sorted order


def test_limit_reads_lazily(tmp_path):
    """Videos are decoded one at a time: a broken later video does not stop the first from being read."""
    bad = _record(5, 20, 30, seed=10)
    bad["video"] = bad["video"][:2]
    path = _dump({"good": _record(5, 20, 30, seed=11), "bad": bad}, tmp_path / "tapvid_davis.pkl")
    it = iter(open_dataset("davis", path))
    assert next(it).name == "good"
    with pytest.raises(PtrackError, match="2 frames but 'points' cover 5"):
        next(it)


# ---------------------------------------------------------------------------------------------
# Bad files and wrong datasets give one clear PtrackError


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _dump({"x": _Evil()}, tmp_path / "tapvid_davis.pkl")
    with pytest.raises(PtrackError, match="refusing to load"):
        list(open_dataset("davis", path))
    assert not (tmp_path / "EVIL_MARKER").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a pickle at all", "not a readable TAP-Vid pickle"),
        (pickle.dumps({"v": {"video": 1}})[:-5], "not a readable"),
        (pickle.dumps("hello"), "holds a str"),
        (pickle.dumps({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8)}}), "missing key"),
        (pickle.dumps({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8), "points": np.zeros((3, 2, 2), np.float32),
                             "occluded": np.zeros((3, 5), bool)}}), "'occluded' is"),
        (pickle.dumps({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8), "points": np.full((3, 2, 2), 120.0, np.float32),
                             "occluded": np.zeros((3, 2), bool)}}), "not normalised"),
        (pickle.dumps({"v": {"video": np.zeros((2, 4, 4), np.float32), "points": np.zeros((3, 2, 2), np.float32),
                             "occluded": np.zeros((3, 2), bool)}}), "'video' is a float32"),
        (pickle.dumps({"v": {"video": np.array([b"notjpeg", b"notjpeg"]), "points": np.zeros((3, 2, 2), np.float32),
                             "occluded": np.zeros((3, 2), bool)}}), "not a decodable JPEG"),
        (pickle.dumps({}), "holds no videos"),
    ],
    ids=["garbage", "truncated", "str", "missing-keys", "occluded-shape", "pixels", "float-video", "bad-jpeg", "empty"],
)
def test_malformed_files(tmp_path, content, match):
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(content)
    with pytest.raises(PtrackError, match=match):
        list(open_dataset("davis", path))


def test_wrong_dataset_errors(tmp_path):
    _dump([_record(3, 16, 16)], tmp_path / "stack" / "tapvid_rgb_stacking.pkl")
    _dump({"a": _record(3, 16, 16)}, tmp_path / "mine.pkl")
    _dump([_record(3, 16, 16)], tmp_path / "mine_list.pkl")
    _dump({"a": _record(3, 16, 16)}, tmp_path / "robo" / "robotap_split0.pkl")
    with pytest.raises(PtrackError, match="looks like a TAP-Vid-rgb_stacking file"):
        open_dataset("davis", tmp_path / "stack" / "tapvid_rgb_stacking.pkl")
    with pytest.raises(PtrackError, match="use --dataset rgb_stacking"):
        list(open_dataset("davis", tmp_path / "mine_list.pkl"))
    with pytest.raises(PtrackError, match="use --dataset davis"):
        list(open_dataset("rgb_stacking", tmp_path / "mine.pkl"))
    with pytest.raises(PtrackError, match="use --dataset robotap"):
        open_dataset("kinetics", tmp_path / "robo")
    with pytest.raises(PtrackError, match="without tapvid_davis.pkl"):
        open_dataset("davis", tmp_path / "robo")
    with pytest.raises(PtrackError, match="does not exist"):
        open_dataset("davis", tmp_path / "nope.pkl")
    with pytest.raises(PtrackError, match="no RoboTAP split files"):
        open_dataset("robotap", tmp_path / "stack")
    with pytest.raises(PtrackError, match="unknown dataset"):
        open_dataset("sintel", tmp_path / "mine.pkl")


# ---------------------------------------------------------------------------------------------
# The PIL-exact Lanczos resize


def test_lanczos_resize_basic_properties():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    assert np.array_equal(lanczos_resize(f), f)  # no resize at 256x256
    const = np.full((1, 90, 120, 3), 77, np.uint8)
    assert np.array_equal(lanczos_resize(const), np.full((1, 256, 256, 3), 77, np.uint8))  # weights sum to 1
    assert lanczos_resize(f[:, :100, :180]).shape == (2, 256, 256, 3)


def test_lanczos_resize_matches_pil_when_available():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    # Landscape sizes (TAP-Vid's videos): Pillow >= 13 may change the pass order for much taller images.
    for h, w in [(96, 128), (48, 48), (72, 128), (480, 854), (255, 257), (17, 1000), (512, 512)]:
        f = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(f[0]).resize((256, 256), Image.Resampling.LANCZOS))
        assert np.array_equal(lanczos_resize(f)[0], ref), (h, w)


@pytest.mark.parametrize("protocol", [0, 2])
def test_old_numpy_pickles_load(tmp_path, protocol):
    """Pickles written by NumPy 1.x (``numpy.core``) and old protocols (bytes via ``_codecs.encode``) load."""
    rec = _record(3, 8, 10, seed=12)
    data = pickle.dumps({"v": rec}, protocol=protocol).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    if protocol == 0:
        assert b"numpy.core.multiarray" in data and b"_codecs" in data
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(data)
    (v,) = open_dataset("davis", path)
    assert np.array_equal(v.occluded, rec["occluded"]) and np.array_equal(v.points, rec["points"].astype(np.float64) * 256)
