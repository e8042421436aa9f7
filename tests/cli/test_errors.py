"""Bad input: one clear line, exit code 2, never a traceback."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from tests.helpers import T


def _check(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    for n in needles:
        assert n in text, text


def test_help_and_version(cli):
    res = cli(["--help"])
    assert res.exit_code == 0 and "track" in res.output
    res = cli(["--version"])
    assert res.exit_code == 0 and "ptrack" in res.output


def test_missing_video(cli, tmp_path):
    _check(cli(["track", tmp_path / "missing.mp4", "--model", "lk"]), "video not found")


def test_corrupt_video(cli, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(3000))
    _check(cli(["track", bad, "--model", "lk", "--out", tmp_path / "o"]), "cannot read video", "corrupt")


def test_zero_frames(cli, tmp_path):
    (tmp_path / "frames").mkdir()
    _check(cli(["track", tmp_path / "frames", "--model", "lk", "--out", tmp_path / "o"]), "no frames")


def test_frame_range_outside_video(cli, png_video, tmp_path):
    _check(cli(["track", png_video, "--model", "lk", "--start", T + 5, "--out", tmp_path]), "beyond the last frame")


@pytest.mark.parametrize("point,needle", [
    ("0,500,10", "outside the 128x96 frame"),
    ("0,-3,10", "outside the 128x96 frame"),
    (f"{T + 2},10,10", "beyond the last frame"),
    ("0,nan,10", "NaN"),
])
def test_bad_query(cli, png_video, tmp_path, point, needle):
    _check(cli(["track", png_video, "--model", "lk", "--point", point, "--out", tmp_path]), needle)


def test_query_on_unselected_frame(cli, png_video, tmp_path):
    _check(cli(["track", png_video, "--model", "lk", "--stride", 2, "--point", "3,10,10", "--out", tmp_path]),
           "not among the tracked frames")


def test_malformed_csv_names_line(cli, png_video, tmp_path):
    q = tmp_path / "q.csv"
    q.write_text("t,x,y\n0,10,10\n0,ten,10\n")
    _check(cli(["track", png_video, "--model", "lk", "--queries", q, "--out", tmp_path / "o"]), "line 3")


def test_empty_mask(cli, png_video, tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((96, 128), np.uint8))
    _check(cli(["track", png_video, "--model", "lk", "--mask", tmp_path / "m.png", "--out", tmp_path / "o"]), "empty")


def test_output_not_writable(cli, png_video, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    real_access = os.access
    # CI runs as root, which may write anywhere: make the permission check see what a user would.
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) and mode & os.W_OK else real_access(p, mode))
    _check(cli(["track", png_video, "--model", "lk", "--out", ro]), "not writable")
    _check(cli(["track", png_video, "--model", "lk", "--out", "/dev/null/sub"]), "cannot create output folder")


def test_output_is_a_file(cli, png_video, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _check(cli(["track", png_video, "--model", "lk", "--out", f]), "not a folder")


def test_unknown_model(cli, png_video, tmp_path):
    _check(cli(["track", png_video, "--model", "nosuch", "--out", tmp_path]), "unknown model 'nosuch'", "lk")


def test_bad_resolution_and_format(cli, png_video, tmp_path):
    _check(cli(["track", png_video, "--model", "lk", "--resolution", "100x130", "--out", tmp_path]), "multiples of 4")
    _check(cli(["track", png_video, "--model", "lk", "--format", "xml", "--out", tmp_path]), "unknown format")
