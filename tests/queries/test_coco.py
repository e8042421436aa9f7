"""COCO keypoints files as query files: labelled keypoints become named queries on their image's frame."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.queries import load_named_query_file


def _coco(images, annotations, keypoints=("nose", "tail")) -> dict:
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "mouse", "keypoints": list(keypoints), "skeleton": []}]}


def _write(tmp_path, doc) -> str:
    p = tmp_path / "labels.json"
    p.write_text(json.dumps(doc))
    return p


def test_labelled_keypoints_are_named_queries_on_their_frame(tmp_path):
    doc = _coco(
        [{"id": 7, "file_name": "clip/000012.jpg"}, {"id": 8, "file_name": "img.png", "frame": 30}],
        [{"id": 1, "image_id": 7, "category_id": 1, "keypoints": [10, 20, 2, 0, 0, 0]},
         {"id": 2, "image_id": 8, "category_id": 1, "keypoints": [11, 21, 1, 40.5, 50, 2]}],
    )
    rows, names = load_named_query_file(_write(tmp_path, doc))
    # v = 0 (tail on image 7) is skipped; v = 1 (labelled, occluded) and v = 2 are queries.
    np.testing.assert_allclose(rows, [[12, 10, 20], [30, 11, 21], [30, 40.5, 50]])
    assert names == ["nose", "nose", "tail"]


def test_several_categories_prefix_the_names(tmp_path):
    doc = _coco([{"id": 1, "frame": 0}], [{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 4, 2]},
                                         {"image_id": 1, "category_id": 2, "keypoints": [5, 6, 2]}])
    doc["categories"].append({"id": 2, "name": "cat", "keypoints": ["ear"]})
    assert load_named_query_file(_write(tmp_path, doc))[1] == ["mouse.nose", "mouse.tail", "cat.ear"]


@pytest.mark.parametrize("images, annotations, message", [
    ([{"id": 1, "file_name": "still.png"}], [{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0]}],
     "gives no frame number"),
    ([{"id": 1, "frame": 0}], [{"image_id": 2, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0]}],
     "is not among the images"),
    ([{"id": 1, "frame": 0}], [{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 2]}], "x, y, v for each of the 2"),
    ([{"id": 1, "frame": 0}], [{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0]}] * 2,
     "one individual per category"),
    ([{"id": 1, "frame": 0}], [{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 0, 0, 0, 0]}],
     "no labelled keypoints"),
])
def test_malformed_coco_files_are_one_line(tmp_path, images, annotations, message):
    with pytest.raises(PtrackError, match=message):
        load_named_query_file(_write(tmp_path, _coco(images, annotations)))
