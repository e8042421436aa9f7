"""Named points end to end: a later anchor corrects a lost point (every tracker kind, ensembles included), files
with anchors stay readable, every export format in one run, a missing library before any work, and the TAP-Vid
export scored by `ptrack eval`."""
from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from pointtrack_cli import load_tracks
from pointtrack_cli.synthetic import translating_frames, translation_gt, write_png_folder
from tests.helpers import VELOCITY

T = 24
START = np.array([40.0, 48.0])
GT = translation_gt(START[None], T, VELOCITY)[:, 0]  # [T, 2]
OCCLUDED = range(8, 12)


@pytest.fixture(scope="module")
def occluded_clip(tmp_path_factory):
    """The session clip's texture, with a flat grey square over the point on frames 8..11: LK loses it there
    and, plain LK, never finds it again."""
    frames = np.stack(list(translating_frames(T, 96, 128, VELOCITY, seed=3)))
    frames[list(OCCLUDED), 25:76, 15:76] = 128
    return write_png_folder(frames, tmp_path_factory.mktemp("occluded") / "clip")


def _anchors() -> list[str]:
    return ["--point", f"dot=0,{START[0]},{START[1]}", "--point", f"dot=16,{GT[16, 0]:.4f},{GT[16, 1]:.4f}"]


def _error(tracks: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Distance of ``tracks [len(frames), 2]`` from the ground truth on ``frames``."""
    return np.linalg.norm(tracks - GT[frames], axis=-1)


@pytest.fixture(scope="module")
def corrected(occluded_clip, tmp_path_factory):
    from tests.helpers import run_cli

    out = tmp_path_factory.mktemp("corrected")
    res = run_cli(["track", occluded_clip, "--model", "lk", *_anchors(), "--point", "corner=3,100,20", "--out", out,
                   "--no-overlay", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_a_later_anchor_corrects_the_lost_point(corrected, occluded_clip, cli, tmp_path):
    res = cli(["track", occluded_clip, "--model", "lk", "--point", f"dot=0,{START[0]},{START[1]}", "--out",
               tmp_path / "lost", "--no-overlay", "--quiet"])
    assert res.exit_code == 0, res.output
    lost = load_tracks(tmp_path / "lost")
    after = np.arange(12, T)
    assert _error(lost.tracks[after, 0], after).min() > 3 and not lost.visibility[after, 0].any()  # lost for good
    r = load_tracks(corrected)
    assert r.point_names == ["dot", "corner"] and r.num_points == 2
    np.testing.assert_allclose(r.queries, [[0, *START], [3, 100, 20]], atol=1e-3)  # each point's first anchor
    np.testing.assert_allclose(r.anchors[:2], [[0, 0, *START], [0, 16, *GT[16]]], atol=1e-3)
    assert r.anchor[:, 0].tolist() == [0] * 8 + [1] * 16  # frame 8: 8 frames from both anchors -> the later one
    assert (r.anchor[:, 1] == 2).all()
    good = np.r_[0:8, 12:T]
    assert _error(r.tracks[good, 0], good).max() < 0.5 and r.visibility[good, 0].all()
    with open(corrected / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows[:2]] == ["dot", "corner"]


def test_ensembles_merge_anchors_as_trackers_do(corrected, occluded_clip, cli, tmp_path):
    common = [*_anchors(), "--point", "corner=3,100,20", "--select", "median", "--no-overlay", "--quiet"]
    a = cli(["track", occluded_clip, "--model", "ensemble:lk,lk", "--out", tmp_path / "a", *common])
    b = cli(["ensemble", occluded_clip, "--teachers", "lk,lk", "--out", tmp_path / "b", *common])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    lk = load_tracks(corrected)
    for out in ("a", "b"):
        r = load_tracks(tmp_path / out)
        assert r.point_names == ["dot", "corner"]
        np.testing.assert_allclose(r.tracks, lk.tracks, atol=1e-4)  # the median of two identical teachers
        np.testing.assert_array_equal(r.anchor, lk.anchor)
        with np.load(tmp_path / out / "selection.npz") as s:
            assert s["candidates"].shape == (T, 2, 2, 2) and s["chosen"].shape == (T, 2)


def test_files_with_anchors_stay_readable_as_candidates(corrected, occluded_clip, cli, tmp_path):
    res = cli(["ensemble", occluded_clip, "--candidates", corrected / "tracks.npz", "--select", "median",
               "--out", tmp_path / "e", "--no-overlay", "--quiet"])
    assert res.exit_code == 0, res.output
    r, lk = load_tracks(tmp_path / "e"), load_tracks(corrected)
    assert r.point_names == ["dot", "corner"]
    np.testing.assert_allclose(r.queries, lk.queries)
    np.testing.assert_allclose(r.tracks, lk.tracks, atol=1e-4)


def test_every_format_in_one_run_then_the_rerun_is_skipped(occluded_clip, cli, tmp_path):
    pytest.importorskip("h5py"), pytest.importorskip("xarray"), pytest.importorskip("h5netcdf")
    args = ["track", occluded_clip, "--model", "lk", *_anchors(), "--end", "20", "--no-overlay", "--out", tmp_path / "o",
            "--format", "npz,csv,dlc,sleap,napari,coco,nc,tapvid", "--quiet"]
    res = cli(args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "o" / "ptrack.json").read_text())
    names = {f["name"] for f in manifest["files"]}
    assert {"tracks.npz", "tracks.csv", "dlc.csv", "sleap.analysis.h5", "napari_points.csv", "coco_keypoints.json",
            "movement.nc", "tapvid_davis.pkl"} <= names
    assert ("dlc.h5" in names) == manifest["job"]["files"]["dlc_h5"]
    assert "dot,dot,dot" in (tmp_path / "o" / "dlc.csv").read_text().splitlines()[1]
    res = cli(args)
    assert res.exit_code == 0 and "skipped" in res.output


def test_a_missing_library_stops_before_any_work(occluded_clip, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    res = cli(["track", occluded_clip, "--model", "lk", "--format", "npz,sleap", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert 'pip install "ptrack[sleap]"' in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_tapvid_export_is_a_benchmark_for_eval(cli, tmp_path):
    """On a 256x256 clip the export's points are the tracks themselves: re-tracking them with the same tracker
    scores (near) perfectly, and the tracks file itself (anchors included) scores exactly 1."""
    frames = np.stack(list(translating_frames(12, 256, 256, VELOCITY, seed=5)))
    clip = write_png_folder(frames, tmp_path / "walk")
    res = cli(["track", clip, "--model", "lk", "--grid", "3", "--point", "tip=0,60,60", "--point", "tip=8,65.6,62.4",
               "--format", "npz,tapvid", "--no-overlay", "--out", tmp_path / "o", "--quiet"])
    assert res.exit_code == 0, res.output
    data = tmp_path / "o" / "tapvid_davis.pkl"
    res = cli(["eval", "tapvid", "--dataset", "davis", "--data", data, "--model", "lk", "--json", tmp_path / "lk.json",
               "--quiet"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "lk.json").read_text())["mean"]
    assert got["average_pts_within_thresh"] > 0.99
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copy(tmp_path / "o" / "tracks.npz", preds / "walk.npz")
    res = cli(["eval", "score", "--predictions", preds, "--dataset", "davis", "--data", data, "--mode", "first",
               "--json", tmp_path / "score.json", "--quiet"])
    assert res.exit_code == 0, res.output
    score = json.loads((tmp_path / "score.json").read_text())["mean"]
    assert score["average_jaccard"] == pytest.approx(1.0) and score["occlusion_accuracy"] == pytest.approx(1.0)


def test_renaming_a_point_is_another_job(occluded_clip, cli, tmp_path):
    common = ["track", occluded_clip, "--model", "lk", "--end", "4", "--no-overlay", "--format", "npz", "--out", tmp_path / "o"]
    assert cli([*common, "--point", "nose=0,40,48", "--quiet"]).exit_code == 0
    res = cli([*common, "--point", "tail=0,40,48"])
    assert res.exit_code == 2 and "another job" in " ".join(res.output.split())
    assert load_tracks(tmp_path / "o").point_names == ["nose"]
