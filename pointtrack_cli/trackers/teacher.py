"""Pre/post-processing shared by the teachers ported from the Track-On-R wrappers (``../shared/specs/teachers.md``).

The official wrappers (gorkaydemir/track_on ``ensemble/*/..._predictor.py``) all do the same arithmetic:
frames as float 0..255 resized with ``F.interpolate(mode="bilinear", align_corners=False)`` to the model's
``S_h x S_w``; query x scaled by ``S_w / W`` and y by ``S_h / H`` (tapnet's corner convention) with no
half-pixel shift; outputs scaled back by ``W / S_w``, ``H / S_h``. ptrack reproduces that exactly and does
not "correct" it to its own pixel-centre convention: a teacher's numbers are the official wrapper's numbers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PtrackError


def check_queries(queries: np.ndarray, num_frames: int) -> np.ndarray:
    """User queries as float64 ``[N, 3]`` (t, x, y); one line for a wrong shape, non-finite values, or query frames
    outside ``0..num_frames-1`` (``num_frames`` 0: the length is not known yet, frames unchecked)."""
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise PtrackError(f"queries must be an [N, 3] array of (t, x, y), got shape {q.shape}")
    if not np.isfinite(q).all():
        raise PtrackError("queries contain NaN or infinite values (fix the query file)")
    if len(q) and num_frames > 0 and (q[:, 0].min() < 0 or q[:, 0].max() > num_frames - 1):
        raise PtrackError(
            f"query frame indices must lie in [0, {num_frames - 1}], got {q[:, 0].min():g}..{q[:, 0].max():g} "
            "(check --start/--stride and the query file)"
        )
    return q


def resize_frames(frames: np.ndarray | torch.Tensor, hw: tuple[int, int], device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, S_h, S_w]`` in 0..255 (bilinear, align_corners=False)."""
    x = torch.as_tensor(np.asarray(frames)).to(device).permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


def scale_xy(xy: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """``x * to_w / from_w``, ``y * to_h / from_h`` (float64; no half-pixel shift, as the wrappers)."""
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] *= to_hw[1] / from_hw[1]
    out[..., 1] *= to_hw[0] / from_hw[0]
    return out


def reverse_time(queries: np.ndarray, num_frames: int) -> np.ndarray:
    """Queries ``[N, 3]`` (t, x, y) for the time-reversed clip: ``t -> T - 1 - t``."""
    q = np.array(queries, dtype=np.float64, copy=True)
    q[:, 0] = num_frames - 1 - q[:, 0]
    return q


def merge_before_query(forward: tuple[np.ndarray, ...], backward_reversed: tuple[np.ndarray, ...],
                       query_t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Frames ``t < t_n`` of point n from the reversed pass (arrays ``[T, N, ...]``, that pass in reversed order)."""
    t = forward[0].shape[0]
    before = np.arange(t)[:, None] < np.asarray(query_t, np.float64)[None, :]
    out = []
    for fw, bw in zip(forward, backward_reversed):
        mask = before.reshape(before.shape + (1,) * (fw.ndim - 2))
        out.append(np.where(mask, bw[::-1], fw))
    return tuple(out)
