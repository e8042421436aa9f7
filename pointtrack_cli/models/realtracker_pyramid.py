"""RealTracker's feature pyramids: channels-last storage, joining / flipping / padding along time, sampling.

A pyramid is a list of 4 levels ``[B, T, 128, h_l, w_l]`` whose memory is ``[B, T, h_l, w_l, 128]``
(channels-last): the correlation gathers whole 128-channel vectors (:mod:`.realtracker_blocks`), so every helper
here keeps that storage. Pixel positions are feature units (pixels / :data:`STRIDE`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

STRIDE = 4


def sample_border(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``fmap [M, C, h, w]`` at pixel positions ``xy [M, P, Q, 2]`` -> ``[M, C, P, Q]``.

    Pixel centres at integers (align_corners=True); positions outside the map read the border pixels.
    (The convention of every sample RealTracker takes; the model itself samples through
    :func:`.realtracker_blocks.local_correlation`, which gives the same values.)
    """
    h, w = fmap.shape[-2:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=xy.dtype, device=xy.device)
    grid = xy * scale - 1
    return F.grid_sample(fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def nhwc(level: torch.Tensor) -> torch.Tensor:
    """A pyramid level ``[B, T, C, h, w]`` as contiguous ``[B, T, h, w, C]`` (free for channels-last storage)."""
    return level.permute(0, 1, 3, 4, 2).contiguous()


def nchw(level: torch.Tensor) -> torch.Tensor:
    """Inverse view of :func:`nhwc`: ``[B, T, h, w, C] -> [B, T, C, h, w]`` (no copy)."""
    return level.permute(0, 1, 4, 2, 3)


def empty_pyramid(like: list[torch.Tensor], frames: int) -> list[torch.Tensor]:
    """Uninitialised levels shaped like ``like`` (``[B, T', C, h, w]``) with ``frames`` frames, channels-last storage."""
    return [nchw(p.new_empty((p.shape[0], frames, p.shape[3], p.shape[4], p.shape[2]))) for p in like]


def cat_time(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Two pyramids joined along time (``a`` first), channels-last storage."""
    return [nchw(torch.cat([nhwc(x), nhwc(y)], dim=1)) for x, y in zip(a, b)]


def flip_time(pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
    """The pyramid of the time-reversed clip (fnet is per frame), channels-last storage."""
    return [nchw(nhwc(p).flip(1)) for p in pyramid]


def mask_support(support: list[torch.Tensor], active: torch.Tensor) -> list[torch.Tensor]:
    """Zero the query patches of points not yet started in this window (``active [B, N]`` bool).

    Their correlation is then all zeros (they still take part in attention), as the official code.
    """
    if bool(active.all()):
        return support  # no copy (large point sets)
    w = active.to(support[0].dtype)[:, :, None, None, None]
    return [f * w for f in support]


def pad_time(pyramid: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    """Repeat the last frame of every level until ``length`` frames (= padding the video, fnet is per frame)."""
    t = pyramid[0].shape[1]
    if t >= length:
        return pyramid
    return cat_time(pyramid, [p[:, -1:].expand(-1, length - t, -1, -1, -1) for p in pyramid])


__all__ = ["STRIDE", "cat_time", "empty_pyramid", "flip_time", "mask_support", "nchw", "nhwc", "no_autocast",
           "pad_time", "sample_border"]
