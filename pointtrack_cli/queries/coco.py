"""COCO keypoints files as query files: each labelled keypoint (v > 0) is a named query on its image's frame.

The file is a JSON object with ``images``, ``annotations`` and ``categories`` (the COCO keypoints layout):

* frame of an image: its ``frame`` field when present, else the last number in its ``file_name`` (folders and
  extension left out: ``clip/000012.jpg`` and ``frame_12.png`` are frame 12). Frames are source frame numbers.
* ``annotations``: ``keypoints`` is ``[x1, y1, v1, x2, y2, v2, ...]`` in the order of the category's ``keypoints``
  names; a keypoint with ``v > 0`` (1 labelled but occluded, 2 visible) becomes a query named after it, ``v = 0``
  (not labelled) is skipped. x, y are pixels with (0, 0) the centre of the top-left pixel, as COCO keypoints are
  integer pixel indices (ptrack's own convention: nothing is shifted).
* one individual: at most one annotation per image and category. With several categories the names are
  ``<category>.<keypoint>``.

A keypoint labelled on several images is one point with several anchors (see :mod:`.points`).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import PtrackError
from .points import check_name, check_rows

_NUMBER = re.compile(r"\d+")


def is_coco(data: object) -> bool:
    """A JSON document that is a COCO file (an object with ``images`` and ``annotations``)."""
    return isinstance(data, dict) and "annotations" in data and "images" in data


def image_frame(image: dict, path: Path) -> int:
    """The source frame number of a COCO ``image`` entry (see the module docstring)."""
    frame = image.get("frame")
    if frame is None:
        found = _NUMBER.findall(Path(str(image.get("file_name", ""))).stem)
        frame = found[-1] if found else None
    try:
        value = int(frame)
    except (TypeError, ValueError):
        value = -1
    if value < 0 or (isinstance(frame, float) and frame != value):
        raise PtrackError(f"{path}: image {image.get('id')!r} gives no frame number (add \"frame\": N to it, or a number "
                          "to its file_name)")
    return value


def _entries(data: dict, key: str, path: Path) -> list[dict]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PtrackError(f"{path}: '{key}' must be a list of objects (a COCO keypoints file)")
    return items


def read_coco(data: dict, path: Path, limit: int) -> tuple[np.ndarray, list]:
    """Rows ``[K, 3]`` (t, x, y) and their names from a parsed COCO keypoints document."""
    frames = {img.get("id"): image_frame(img, path) for img in _entries(data, "images", path)}
    categories = {}
    for cat in _entries(data, "categories", path):
        kps = cat.get("keypoints")
        if isinstance(kps, list) and kps:
            categories[cat.get("id")] = (str(cat.get("name", cat.get("id"))), [str(k) for k in kps])
    annotations = _entries(data, "annotations", path)
    used = {a.get("category_id") for a in annotations if a.get("keypoints")}
    rows, names, seen = [], [], set()
    for i, ann in enumerate(annotations):
        kp = ann.get("keypoints")
        if not kp:
            continue
        where = f"{path}, annotation {ann.get('id', i)!r}"
        if ann.get("image_id") not in frames:
            raise PtrackError(f"{where}: image_id {ann.get('image_id')!r} is not among the images")
        if ann.get("category_id") not in categories:
            raise PtrackError(f"{where}: category {ann.get('category_id')!r} has no 'keypoints' names")
        cname, kp_names = categories[ann["category_id"]]
        if (ann["image_id"], ann["category_id"]) in seen:
            raise PtrackError(f"{where}: a second annotation of category {cname!r} on image {ann['image_id']!r} "
                              "(ptrack reads one individual per category: split the file, or give each its own category)")
        seen.add((ann["image_id"], ann["category_id"]))
        try:
            triples = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
        except (TypeError, ValueError):
            triples = np.zeros((0, 3))
        if len(triples) != len(kp_names) or len(kp) != 3 * len(kp_names):
            raise PtrackError(f"{where}: 'keypoints' must hold x, y, v for each of the {len(kp_names)} keypoints of "
                              f"category {cname!r}, got {len(kp)} numbers")
        frame = frames[ann["image_id"]]
        for k, (x, y, v) in enumerate(triples):
            if v > 0:
                label = kp_names[k] if len(used) == 1 else f"{cname}.{kp_names[k]}"
                names.append(check_name(label, where))
                rows.append([frame, x, y])
        if len(rows) > limit:
            raise PtrackError(f"{path} holds more than the {limit:,} labelled keypoints a query file may hold "
                              "(split the points over several runs)")
    if not rows:
        raise PtrackError(f"{path} holds no labelled keypoints (COCO keypoints with v > 0)")
    return check_rows(np.array(rows), str(path)), names
