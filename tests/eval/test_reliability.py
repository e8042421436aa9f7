"""Issue 16 in ``ptrack eval``: predictions saved as one output set per video (a stopped evaluation resumes, another
job's predictions are refused, ``eval score`` refuses an incomplete video), foreign prediction files checked array by
array, and the TAP-Vid unpickler's size cap."""
from __future__ import annotations

import io
import json
import pickle
import shutil

import numpy as np
import pytest

import pointtrack_cli.api as api
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.eval.datasets import _ArrayUnpickler, load_pickle
from pointtrack_cli.eval.predictions import load_prediction
from pointtrack_cli.io.outputs import FAIL_ENV
from pointtrack_cli.trackers.base import Tracker, TrackOutput
from tests.helpers import FIXTURES, run_cli

MINI = FIXTURES / "tapvid" / "mini_davis.pkl"
VIDEOS = ("synth-aurora", "synth-bramble")


class Still(Tracker):
    """Every point stays at its query position; counts its calls."""

    name = "still"
    backward = True
    calls = 0

    def track(self, video, queries, progress=None):
        Still.calls += 1
        q = np.asarray(queries, np.float64)
        t = video.num_frames
        ones = np.ones((t, len(q)), np.float32)
        return TrackOutput(np.broadcast_to(q[None, :, 1:3], (t, len(q), 2)), ones > 0, ones, ones)


@pytest.fixture
def still(monkeypatch):
    real = api.build_single_tracker
    monkeypatch.setattr(api, "build_single_tracker", lambda model, **kw: Still() if model == "still" else real(model, **kw))
    Still.calls = 0
    return Still


def tapvid(out, *extra):
    return run_cli(["eval", "tapvid", "--dataset", "davis", "--data", MINI, "--model", "still", "--limit", "2",
                    "--save-predictions", out, *map(str, extra)])


def test_a_stopped_evaluation_resumes_from_the_videos_it_finished(still, tmp_path, monkeypatch):
    out = tmp_path / "preds"
    monkeypatch.setenv(FAIL_ENV, f"write:{VIDEOS[1]}.npz")  # the disk fills while saving the second video
    res = tapvid(out, "--quiet")
    assert res.exit_code == 2 and "No space left on device" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == [f"{VIDEOS[0]}.npz", f"{VIDEOS[0]}.ptrack.json"]  # no staging
    monkeypatch.delenv(FAIL_ENV)
    still.calls = 0
    res = tapvid(out, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert still.calls == 1  # only the second video was tracked
    assert "resumed: 1 video(s)" in " ".join(res.output.split())
    videos = json.loads((tmp_path / "r.json").read_text())["videos"]
    assert [v.get("resumed", False) for v in videos] == [True, False]
    # the same numbers as an uninterrupted run
    assert tapvid(tmp_path / "fresh", "--json", tmp_path / "f.json", "--quiet").exit_code == 0
    fresh = json.loads((tmp_path / "f.json").read_text())["videos"]
    assert [v["metrics"] for v in videos] == [v["metrics"] for v in fresh]


def test_another_jobs_predictions_are_refused_unless_overwrite(still, tmp_path):
    out = tmp_path / "preds"
    assert tapvid(out, "--quiet").exit_code == 0
    res = tapvid(out, "--protocol", "single", "--quiet")
    assert res.exit_code == 2 and "another job" in res.output and "--overwrite" in res.output
    still.calls = 0
    res = tapvid(out, "--protocol", "single", "--overwrite", "--quiet")
    assert res.exit_code == 0, res.output
    assert still.calls > 2  # recomputed (single: one call per query)
    assert json.loads((out / f"{VIDEOS[0]}.ptrack.json").read_text())["job"]["protocol"] == "single"


def test_score_refuses_an_incomplete_video_and_a_failed_run_removes_its_new_folder(still, tmp_path, monkeypatch):
    out = tmp_path / "preds"
    assert tapvid(out, "--quiet").exit_code == 0
    # what a kill mid-commit of the second video leaves: no manifest, a staging folder
    (out / f"{VIDEOS[1]}.ptrack.json").unlink()
    (out / f".{VIDEOS[1]}.ptrack.json.staging-0badc0de").mkdir()
    res = run_cli(["eval", "score", "--predictions", out, "--dataset", "davis", "--data", MINI, "--limit", "2"])
    assert res.exit_code == 2 and "incomplete output set" in res.output and VIDEOS[1] in res.output
    monkeypatch.setenv(FAIL_ENV, f"write:{VIDEOS[0]}.npz")
    assert tapvid(tmp_path / "new", "--quiet").exit_code == 2
    assert not (tmp_path / "new").exists()


def _prediction(tmp_path, **arrays):
    path = tmp_path / f"{VIDEOS[0]}.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda t, q: {"tracks": np.zeros((t, q, 2), complex), "occluded": np.zeros((t, q), bool)}, "holds complex values"),
    (lambda t, q: {"tracks": np.full((t, q, 2), "1"), "occluded": np.zeros((t, q), bool)}, "holds string values"),
    (lambda t, q: {"tracks": np.full((t, q, 2), 1e30), "occluded": np.zeros((t, q), bool)}, "coordinate 1e+30"),
    (lambda t, q: {"tracks": np.full((t, q, 2), np.inf), "occluded": np.zeros((t, q), bool)}, "infinite values"),
    (lambda t, q: {"tracks": np.zeros((t, q, 2)), "occluded": np.full((t, q), "no")}, "'occluded' holds string"),
    (lambda t, q: {"tracks": np.zeros((t, q, 2)), "occluded": np.full((t, q), np.nan)}, "'occluded' holds NaN"),
    (lambda t, q: {"tracks": np.zeros((t, q, 2)), "occluded": np.zeros((t, q), bool), "layout": np.array(3)},
     "'layout' must be a string"),
])
def test_foreign_prediction_files_are_checked(tmp_path, make, needle):
    from pointtrack_cli.eval.datasets import open_dataset, sample_queries

    video = next(open_dataset("davis", MINI).videos(load_frames=False))
    queries = sample_queries(video, "first")
    path = _prediction(tmp_path, **make(video.num_frames, len(queries)))
    with pytest.raises(PtrackError) as err:
        load_prediction(path, queries, video.num_frames)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)
    # NaN tracks are a tracker's "no estimate": accepted
    path = _prediction(tmp_path, tracks=np.full((video.num_frames, len(queries), 2), np.nan),
                       occluded=np.zeros((video.num_frames, len(queries)), bool))
    assert np.isnan(load_prediction(path, queries, video.num_frames).tracks).all()


def test_tapvid_unpickler_caps_array_sizes(tmp_path):
    # _reconstruct(ndarray, (2**30,), b'b'): 65 bytes that would allocate 1 GiB
    gib = b"\x80\x04cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00@\x85C\x01b\x87R."
    direct = b"\x80\x04cnumpy\nndarray\nJ\x00\x00\x00@\x85\x85R."  # ndarray((2**30,)) called directly
    for blob, needle in ((gib, "refusing an array of 1,073,741,824 bytes"), (direct, "refusing to call numpy.ndarray")):
        path = tmp_path / "crafted.pkl"
        path.write_bytes(blob)
        with pytest.raises(PtrackError, match=needle):
            load_pickle(path)
    # NumPy's own pickles, protocol 2 and 4, still load; so does the fixture dataset
    data = {"a": np.arange(12.0).reshape(3, 4), "b": [np.zeros(3, np.uint8)], "c": np.float32(2)}
    for proto in (2, 4):
        got = _ArrayUnpickler(io.BytesIO(pickle.dumps(data, protocol=proto))).load()
        np.testing.assert_array_equal(got["a"], data["a"])
    shutil.copy(MINI, tmp_path / "mini.pkl")
    assert len(load_pickle(tmp_path / "mini.pkl")) == 3
