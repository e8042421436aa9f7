"""Outputs: tracks.npz / tracks.csv / overlay.mp4 contents, load_tracks round trip, atomic writes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import H, T, W
from pointtrack_cli import load_tracks
from pointtrack_cli.io import writers
from pointtrack_cli.io.video import open_video


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, png_video):
    from tests.helpers import run_cli

    out = tmp_path_factory.mktemp("out")
    res = run_cli(["track", png_video, "--model", "lk", "--grid", "4", "--point", "5,60,40", "--out", out, "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_npz_schema(out_dir):
    with np.load(out_dir / "tracks.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    N = 17
    assert d["tracks"].shape == (T, N, 2) and d["tracks"].dtype == np.float32
    assert d["visibility"].shape == (T, N) and d["visibility"].dtype == bool
    assert d["visibility_prob"].dtype == np.float32 and d["confidence"].dtype == np.float32
    assert d["queries"].shape == (N, 3) and d["queries"].dtype == np.float32
    np.testing.assert_array_equal(d["frame_indices"], np.arange(T))
    np.testing.assert_array_equal(d["size"], [W, H])
    assert str(d["model"]) == "lk" and str(d["ptrack_version"])
    meta = json.loads(str(d["meta"]))
    assert "top-left pixel" in meta["coordinates"] and "track" in meta["command"]
    # Explicit points come first, then the grid; the --point query sits at its position on its frame.
    np.testing.assert_allclose(d["queries"][0], [5, 60, 40])
    np.testing.assert_allclose(d["tracks"][5, 0], [60, 40])


def test_csv_long_form_matches_npz(out_dir):
    r = load_tracks(out_dir)
    with open(out_dir / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["frame", "point", "name", "x", "y", "visible", "visibility_prob", "confidence"]
    assert len(rows) == r.num_frames * r.num_points
    row = rows[7 * r.num_points + 3]  # frame 7, point 3
    assert (int(row["frame"]), int(row["point"]), row["name"]) == (7, 3, "p3")
    assert float(row["x"]) == pytest.approx(r.tracks[7, 3, 0], abs=1e-3)
    assert int(row["visible"]) == int(r.visibility[7, 3])


def test_load_tracks_round_trip(out_dir, tmp_path):
    r = load_tracks(out_dir / "tracks.npz")
    writers.save_npz(r, tmp_path / "again.npz")
    r2 = load_tracks(tmp_path / "again.npz")
    for k in ("tracks", "visibility", "visibility_prob", "confidence", "queries", "frame_indices"):
        np.testing.assert_array_equal(getattr(r, k), getattr(r2, k))
    assert (r2.fps, r2.size, r2.model, r2.meta) == (r.fps, r.size, r.model, r.meta)


def test_overlay_frame_count_and_size(out_dir):
    v = open_video(out_dir / "overlay.mp4")
    assert (v.num_frames, v.width, v.height) == (T, W, H)


def test_before_query_frame_is_nan_for_forward_only(png_video):
    from pointtrack_cli.api import run_tracker
    from pointtrack_cli.trackers.lk import LKTracker

    video = open_video(png_video)
    q = np.array([[6.0, 50.0, 40.0]])
    tracks, vis, _, _ = run_tracker(LKTracker(backward=False), video, q)
    assert np.isnan(tracks[:6]).all() and not vis[:6].any()
    assert np.isfinite(tracks[6:]).all()


def test_format_and_no_overlay(png_video, tmp_path, cli):
    res = cli(["track", png_video, "--model", "lk", "--grid", "2", "--format", "csv", "--no-overlay", "--out", tmp_path, "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptrack.json", "tracks.csv"]  # the manifest, last


def test_existing_output_folder_is_reused(png_video, tmp_path, cli):
    (tmp_path / "tracks.csv").write_text("old")
    (tmp_path / "keep.txt").write_text("mine")
    res = cli(["track", png_video, "--model", "lk", "--grid", "2", "--no-overlay", "--out", tmp_path, "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tracks.csv").read_text().startswith("frame,point")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_atomic_write_leaves_no_partial_file(out_dir, tmp_path, monkeypatch):
    r = load_tracks(out_dir)
    target = tmp_path / "tracks.npz"
    target.write_bytes(b"previous")

    def broken_savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(writers.np, "savez", broken_savez)
    with pytest.raises(OSError):
        writers.save_npz(r, target)
    assert target.read_bytes() == b"previous"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["tracks.npz"]  # no temp file left behind

    monkeypatch.setattr(writers, "_fmt", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        writers.save_csv(r, tmp_path / "tracks.csv")
    assert not (tmp_path / "tracks.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tracks.npz"]


def test_overlay_draws_discs_hollow_circles_and_visible_trails_only():
    from pointtrack_cli.io.overlay import draw_frame

    frame = np.zeros((40, 120, 3), np.uint8)
    # Point 0 moves right along y=10, visible throughout; point 1 along y=30, occluded at frame 2 and 3.
    xs = np.array([10.0, 30.0, 50.0, 70.0])
    tracks = np.stack([np.stack([xs, np.full(4, 10.0)], -1), np.stack([xs, np.full(4, 30.0)], -1)], 1)
    visible = np.array([[True, True], [True, True], [True, False], [True, False]])
    valid = np.ones((4, 2), bool)
    colours = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
    out = draw_frame(frame, tracks, visible, valid, colours, 3, radius=3)
    assert out[10, 40, 0] > 50  # trail of the visible point between frames 1 and 2
    assert out[30, 40].max() == 0 and out[30, 60].max() == 0  # no trail through the occluded frames
    assert out[30, 20, 1] > 50  # the part of its trail where it was visible remains
    assert out[10, 70, 0] == 255  # visible: a filled disc at the current position
    assert out[30, 70].max() == 0 and out[30, 73, 1] > 100  # occluded: a hollow circle
