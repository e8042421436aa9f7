"""--format coco: COCO keypoints (v = 2 visible, 1 occluded estimate, 0 none), read back as a query file."""
from __future__ import annotations

import json

import numpy as np

from pointtrack_cli.io.formats import coco
from pointtrack_cli.queries import load_named_query_file
from tests.helpers.named_tracks import FRAMES, NAMES, named_result


def test_one_image_and_annotation_per_frame(tmp_path):
    r = named_result()
    coco.save_coco(r, tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert [im["id"] for im in doc["images"]] == FRAMES.tolist() == [im["frame"] for im in doc["images"]]
    assert doc["images"][0]["file_name"] == "mouse/000002.png" and (doc["images"][0]["width"], doc["images"][0]["height"]) == (64, 48)
    assert doc["categories"][0]["keypoints"] == NAMES
    kp = np.array([a["keypoints"] for a in doc["annotations"]], float).reshape(4, 3, 3)
    assert kp[..., 2].tolist() == [[2, 0, 2], [2, 2, 2], [2, 2, 1], [2, 2, 2]]
    assert kp[0, 1].tolist() == [0, 0, 0]  # no estimate: x = y = v = 0
    np.testing.assert_allclose(kp[1:, :, :2], r.tracks[1:], atol=1e-3)
    assert [a["num_keypoints"] for a in doc["annotations"]] == [2, 3, 3, 3]
    assert [a["image_id"] for a in doc["annotations"]] == FRAMES.tolist()


def test_the_export_reads_back_as_named_queries(tmp_path):
    r = named_result()
    coco.save_coco(r, tmp_path / "c.json")
    rows, names = load_named_query_file(tmp_path / "c.json")
    est = np.isfinite(r.tracks).all(-1)
    t, n = np.nonzero(est)
    assert names == [NAMES[i] for i in n]
    np.testing.assert_allclose(rows, np.column_stack([FRAMES[t], r.tracks[t, n]]), atol=1e-3)
