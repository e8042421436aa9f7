"""Per-frame object masks for ProTracker (optional; the paper uses SAM).

Rules:

* ``--mask-video`` is a folder of mask images, one per source frame, non-zero = object. The images
  are put in frame order by the same rule as a folder of video frames
  (:func:`pointtrack_cli.io.video.numbered_images`: the last number in the name, then the name), so
  ``1.png, 2.png, ..., 10.png`` are frames 1, 2, ..., 10 and not 1, 10, 2, ...; the k-th image in
  that order is the mask of source frame k, also when ``--start``/``--stride`` select other frames.
* A point queried inside its query frame's mask is an *object point*: its estimates and keypoints
  outside the object mask of a frame count as occluded. Points queried outside the mask are not
  affected.
* Masks are resized to the working resolution with nearest-neighbour sampling, read on demand and
  kept in a small LRU cache (40 frames), so long clips do not hold every mask in memory.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import numbered_images


def check_mask_folder(folder: str | Path) -> Path:
    """``folder`` as a Path; a :class:`PtrackError` when it is not a folder."""
    p = Path(folder)
    if not p.is_dir():
        raise PtrackError(f"mask folder not found: {p} (give a folder of per-frame mask images)")
    return p


class MaskVideo:
    """Per-frame object masks from a folder of images (in frame-number order, one per frame; non-zero = object).

    ``frame_indices`` ``[T]``: the source frame number of each tracked frame (after --start/--stride);
    the k-th image (in frame-number order) is the mask of source frame k.
    """

    def __init__(self, folder: str | Path, frame_indices: np.ndarray, size_hw: tuple[int, int]) -> None:
        p = check_mask_folder(folder)
        files = numbered_images(p)
        need = int(np.max(frame_indices)) + 1 if len(frame_indices) else 0
        if len(files) < need:
            raise PtrackError(
                f"mask folder {p} has {len(files)} images but frame {need - 1} of the video is tracked "
                "(give one mask image per video frame, numbered in frame order)"
            )
        self.files = [files[int(k)] for k in frame_indices]
        self.size_hw = size_hw
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, t: int) -> np.ndarray:
        """Mask ``[h, w]`` bool of tracked frame ``t`` at the working resolution."""
        if t in self._cache:
            return self._cache[t]
        m = cv2.imread(str(self.files[t]), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise PtrackError(f"cannot read mask image {self.files[t]} (use PNG/JPEG)")
        h, w = self.size_hw
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        self._cache[t] = m > 0
        while len(self._cache) > 40:
            self._cache.popitem(last=False)
        return self._cache[t]


def inside_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``[N]`` bool: is the pixel nearest to each ``xy`` ``[N, 2]`` on ``mask`` ``[h, w]`` (False outside or NaN)."""
    h, w = mask.shape
    u = np.round(np.nan_to_num(xy[:, 0], nan=-1)).astype(np.int64)
    v = np.round(np.nan_to_num(xy[:, 1], nan=-1)).astype(np.int64)
    ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.zeros(len(xy), bool)
    out[ok] = mask[v[ok], u[ok]]
    return out
