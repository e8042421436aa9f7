"""``--format coco``: COCO keypoints (``coco_keypoints.json``), one image and one annotation per tracked frame.

* ``images``: ``id`` = the source frame number, ``frame`` (the same), ``file_name`` ``<video>/<frame:06d>.png`` (a name
  only: no image is written), ``width``, ``height``.
* ``annotations``: one per image (``id`` = image id + 1, ``category_id`` 1, ``iscrowd`` 0); ``keypoints``
  ``[x, y, v] * N`` in the category's keypoint order, ``v`` = 2 visible, 1 estimated but occluded, 0 no estimate
  (then x = y = 0); ``num_keypoints`` (v > 0), ``bbox``/``area`` around the estimates, ``score`` the mean
  ``confidence`` of the estimates.
* ``categories``: one, ``points``, whose ``keypoints`` are the point names (no skeleton).

Coordinates are pixels with (0, 0) the centre of the top-left pixel: COCO keypoints are pixel indices, so nothing
is shifted. ptrack reads this file back as a query file (``--queries coco_keypoints.json``): every keypoint with
v > 0 becomes an anchor.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...result import TrackResult
from ..atomic import atomic_path
from .common import has_estimate, video_name

NAME = "coco_keypoints.json"
FILES = (NAME,)
CATEGORY = "points"


def visibility_flags(result: TrackResult) -> np.ndarray:
    """``[T, N]`` COCO's v: 2 visible, 1 estimated but occluded, 0 no estimate."""
    est = has_estimate(result)
    return np.where(est, np.where(result.visibility, 2, 1), 0).astype(np.int64)


def coco_document(result: TrackResult) -> dict:
    """The COCO keypoints document of ``result`` (see the module docstring)."""
    w, h = result.size
    stem = video_name(result)
    v = visibility_flags(result)
    images, annotations = [], []
    for t in range(result.num_frames):
        frame = int(result.frame_indices[t])
        images.append({"id": frame, "frame": frame, "file_name": f"{stem}/{frame:06d}.png", "width": w, "height": h})
        xy = np.where(v[t, :, None] > 0, np.round(result.tracks[t].astype(np.float64), 3), 0.0)
        kp = np.concatenate([xy, v[t, :, None]], axis=1)
        seen = v[t] > 0
        if seen.any():
            lo, hi = xy[seen].min(axis=0), xy[seen].max(axis=0)
            bbox = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
            score = float(np.mean(result.confidence[t, seen]))
        else:
            bbox, score = [0.0, 0.0, 0.0, 0.0], 0.0
        annotations.append({
            "id": frame + 1, "image_id": frame, "category_id": 1, "iscrowd": 0,
            "keypoints": [int(c) if k % 3 == 2 else float(c) for k, c in enumerate(kp.reshape(-1))],
            "num_keypoints": int(seen.sum()), "bbox": bbox, "area": round(bbox[2] * bbox[3], 3), "score": round(score, 5),
        })
    return {
        "info": {"description": f"ptrack tracks of {stem}", "ptrack_version": result.ptrack_version,
                 "model": result.model, "video": str(result.meta.get("video", "")),
                 "coordinates": "pixels, (0, 0) = centre of the top-left pixel (COCO keypoint pixel indices)",
                 "v": "2 visible, 1 estimated but occluded, 0 no estimate"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CATEGORY, "supercategory": "ptrack", "keypoints": list(result.point_names),
                        "skeleton": []}],
    }


def save_coco(result: TrackResult, path: str | Path) -> Path:
    """Write the COCO keypoints file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(coco_document(result)), encoding="utf-8")
    return path


def write(result: TrackResult, outs, video) -> None:
    """Stage ``coco_keypoints.json`` in the output set ``outs``."""
    with outs.path(NAME) as p:
        save_coco(result, p)
