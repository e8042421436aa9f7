"""Query sources: official grid placement, masks, CSV/NPY/JSON files, --point."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.geometry import official_grid
from pointtrack_cli.queries import grid_queries, load_mask, load_query_file, parse_point


def test_official_grid_placement():
    # get_points_on_a_grid: margin w/64 on both axes, spanning [m, w - m], x fastest.
    g = official_grid(3, 384, 512)
    m = 512 / 64
    np.testing.assert_allclose(g[:3, 0], [m, 256, 512 - m])
    np.testing.assert_allclose(g[:3, 1], [m, m, m])
    np.testing.assert_allclose(g[-1], [512 - m, 384 - m])
    np.testing.assert_allclose(official_grid(1, 384, 512), [[256, 192]])


def test_grid_maps_model_resolution_to_input_pixels():
    q = grid_queries(2, frame=5, size=(1024, 768))  # input W=1024, H=768; model 384x512
    m = 8.0
    sx, sy = (1024 - 1) / (512 - 1), (768 - 1) / (384 - 1)
    np.testing.assert_allclose(q[:, 0], 5)
    np.testing.assert_allclose(q[0, 1:], [m * sx, m * sy])
    np.testing.assert_allclose(q[3, 1:], [(512 - m) * sx, (384 - m) * sy])


def test_mask_keeps_grid_points_inside(tmp_path):
    mask = np.zeros((96, 128), np.uint8)
    mask[:, 64:] = 255  # right half
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    m = load_mask(tmp_path / "m.png")
    q = grid_queries(10, 0, (128, 96), mask=m)
    assert 0 < len(q) < 100
    assert (q[:, 1] > 60).all()
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((96, 128), np.uint8))
    with pytest.raises(PtrackError, match="empty"):
        load_mask(tmp_path / "empty.png")


@pytest.mark.parametrize("header", ["t,x,y", "frame,x,y", "x,y,frame"])
def test_csv(tmp_path, header):
    cols = header.split(",")
    row = {"t": 2, "frame": 2, "x": 10.5, "y": 20.25}
    p = tmp_path / "q.csv"
    p.write_text(header + "\n" + ",".join(str(row[c]) for c in cols) + "\n\n")
    np.testing.assert_allclose(load_query_file(p), [[2, 10.5, 20.25]])


def test_npy_and_json(tmp_path):
    arr = np.array([[0, 1.5, 2.5], [3, 4, 5]])
    np.save(tmp_path / "q.npy", arr)
    np.testing.assert_allclose(load_query_file(tmp_path / "q.npy"), arr)
    (tmp_path / "a.json").write_text(json.dumps(arr.tolist()))
    np.testing.assert_allclose(load_query_file(tmp_path / "a.json"), arr)
    (tmp_path / "b.json").write_text(json.dumps([{"frame": 0, "x": 1.5, "y": 2.5}, {"t": 3, "x": 4, "y": 5}]))
    np.testing.assert_allclose(load_query_file(tmp_path / "b.json"), arr)


def test_malformed_inputs_name_the_problem(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("t,x,y\n0,1,2\n1,oops,3\n")
    with pytest.raises(PtrackError, match="line 3"):
        load_query_file(p)
    p.write_text("a,b,c\n0,1,2\n")
    with pytest.raises(PtrackError, match="line 1: header"):
        load_query_file(p)
    p.write_text("t,x,y\n0,nan,2\n")
    with pytest.raises(PtrackError, match="line 2: NaN"):
        load_query_file(p)
    with pytest.raises(PtrackError, match="not t,x,y"):
        parse_point("1,2")
    np.testing.assert_allclose(parse_point("4, 10.5, 7"), [[4, 10.5, 7]])
