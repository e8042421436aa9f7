"""Named query sources: a name column in CSV/JSON, --point NAME=t,x,y, and how they combine into points."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.queries import build_query_set, load_named_query_file, parse_named_point


def test_csv_name_column_and_empty_cells(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text("frame,name,x,y\n0,nose,10,20\n3,,11,21\n5,nose,12,22\n")
    rows, names = load_named_query_file(p)
    np.testing.assert_allclose(rows, [[0, 10, 20], [3, 11, 21], [5, 12, 22]])
    assert names == ["nose", None, "nose"]


def test_json_objects_take_a_name(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps([{"t": 1, "x": 2, "y": 3, "name": "left_wrist"}, [4, 5, 6]]))
    rows, names = load_named_query_file(p)
    np.testing.assert_allclose(rows, [[1, 2, 3], [4, 5, 6]])
    assert names == ["left_wrist", None]


def test_point_option_with_and_without_a_name():
    row, name = parse_named_point("tail.tip=12, 30.5, 7")
    np.testing.assert_allclose(row, [[12, 30.5, 7]])
    assert name == "tail.tip"
    assert parse_named_point("1,2,3")[1] is None
    with pytest.raises(PtrackError, match="NAME=t,x,y"):
        parse_named_point("nose=1,2")


@pytest.mark.parametrize("text", ["left wrist,0,1,2", '"say ""hi""",0,1,2', "a/b,0,1,2"])
def test_names_that_exports_could_not_hold_are_refused(tmp_path, text):
    p = tmp_path / "q.csv"
    p.write_text("name,t,x,y\n" + text + "\n")
    with pytest.raises(PtrackError, match="line 2"):
        load_named_query_file(p)


def test_sources_combine_into_points_and_anchors(tmp_path):
    video = ArrayVideo(np.zeros((10, 48, 64, 3), np.uint8))
    p = tmp_path / "q.csv"
    p.write_text("t,x,y,name\n4,10,10,nose\n0,20,20,\n")
    qs = build_query_set(video, queries=p, points=["nose=1,12,12", "2,30,30", "ear=3,5,5"], grid=2)
    # Points in order of first appearance; unnamed points (file row, --point, grid) are p<index>.
    assert qs.names == ("nose", "p1", "p2", "ear", "p4", "p5", "p6", "p7")
    assert qs.num_anchors == 9 and qs.explicit
    # nose's anchors sorted by frame; its first anchor is the query.
    np.testing.assert_allclose(qs.anchors[:2], [[0, 1, 12, 12], [0, 4, 10, 10]])
    np.testing.assert_allclose(qs.queries[0], [1, 12, 12])
    assert qs.row_names[:3] == ["nose", "nose", "p1"]


def test_unnamed_queries_keep_their_order(tmp_path):
    video = ArrayVideo(np.zeros((10, 48, 64, 3), np.uint8))
    q = np.array([[5, 1, 1], [0, 2, 2], [5, 3, 3]], float)
    qs = build_query_set(video, queries=q, points=["1,4,4"])
    np.testing.assert_array_equal(qs.rows, np.concatenate([q, [[1, 4, 4]]]))
    assert qs.names == ("p0", "p1", "p2", "p3")
