"""The student's track loss for pseudo-label fine-tuning (spec ``realtracker.md`` sec. 13-14).

Pure functions on tensors; pixels of the training-size frames, frames first (``[B, S, N, 2]``).

For each window ``w`` of the student's output (offline: one window = the clip; online: windows of 16
frames every 8) and its ``n`` per-iteration predictions ``P_0 .. P_{n-1}``::

    seq(f, mask) = (1/n) * sum_i gamma^(n-1-i) * sum_{b,s,k} f(P_i - G)[b,s,k] * mask[b,s,k]
                                                  / (1e-6 + sum mask)
    f_vis(d)  = mean_xy Huber_6(d)     Huber_6(d) = 0.5 d^2 if |d| <= 6 else 6 (|d| - 3)
    f_occ(d)  = mean_xy |d|
    L_w = 0.05 * seq(f_vis, valid * vis) + 0.01 * seq(f_occ, valid * (1 - vis))
    L   = mean_w L_w

``G`` = pseudo tracks, ``vis`` = pseudo visibility (0/1), ``valid`` = which (frame, point) entries carry a
label: the model's mask (online student: ``t >= t_query``; offline: all), times the label's validity
(NaN guard, too few SIFT points). No visibility or confidence loss: that head is frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

GAMMA = 0.8
HUBER_DELTA = 6.0
VISIBLE_WEIGHT = 0.05
OCCLUDED_WEIGHT = 0.01
EPS = 1e-6


def huber(d: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    """Element-wise Huber: ``0.5 d^2`` for ``|d| <= delta``, else ``delta (|d| - delta / 2)``."""
    a = d.abs()
    return torch.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / (1e-6 + sum(mask))`` over all elements (0 when the mask is empty)."""
    return (x * mask).sum() / (EPS + mask.sum())


def sequence_loss(
    preds: Sequence[torch.Tensor],
    gt: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = GAMMA,
    kind: str = "huber",
    delta: float = HUBER_DELTA,
) -> torch.Tensor:
    """Gamma-discounted loss over the ``n`` iterations of one window.

    preds: ``n`` tensors ``[B, S, N, 2]`` pixels; gt ``[B, S, N, 2]``; mask ``[B, S, N]`` (0/1 or weights).
    kind: ``huber`` (delta pixels) or ``l1``; the per-element loss is averaged over x and y.
    Returns ``(1/n) sum_i gamma^(n-1-i) masked_mean(loss_i, mask)`` (float32 scalar).
    """
    n = len(preds)
    if n == 0:
        raise ValueError("no predictions")
    gt = gt.float()
    mask = mask.float()
    total = gt.new_zeros(())
    for i, p in enumerate(preds):
        d = p.float() - gt
        elem = huber(d, delta) if kind == "huber" else d.abs()
        total = total + gamma ** (n - 1 - i) * masked_mean(elem.mean(-1), mask)
    return total / n


@dataclass
class TrackLoss:
    """The loss (``total``, differentiable) and its two unweighted terms (averaged over windows)."""

    total: torch.Tensor
    visible: torch.Tensor
    occluded: torch.Tensor


def track_loss(
    coords: Sequence[Sequence[torch.Tensor]],
    starts: Sequence[int],
    gt: torch.Tensor,
    vis_gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    gamma: float = GAMMA,
    huber_delta: float = HUBER_DELTA,
    visible_weight: float = VISIBLE_WEIGHT,
    occluded_weight: float = OCCLUDED_WEIGHT,
    occluded_term: bool = True,
) -> TrackLoss:
    """The fine-tuning loss of the module docstring.

    coords: per window, the per-iteration predictions ``[B, S_w, N, 2]`` (pixels); window ``w`` covers
        frames ``starts[w] .. starts[w] + S_w - 1`` of the clip.
    gt ``[B, T, N, 2]`` pseudo tracks (non-finite entries must have ``valid == 0``; they are zeroed here);
    vis_gt ``[B, T, N]`` pseudo visibility (bool or 0/1); valid ``[B, T, N]`` (bool or 0/1).
    occluded_term: False skips the L1 term on occluded points (``--train-only-visible``).
    """
    if len(coords) != len(starts) or not coords:
        raise ValueError("coords and starts must list the same, non-zero number of windows")
    valid = valid.float()
    vis = vis_gt.float()
    gt = torch.nan_to_num(gt.float(), nan=0.0, posinf=0.0, neginf=0.0)
    vis_terms, occ_terms = [], []
    for preds, s0 in zip(coords, starts):
        s = preds[0].shape[1]
        sl = slice(s0, s0 + s)
        g, v, m = gt[:, sl], vis[:, sl], valid[:, sl]
        vis_terms.append(sequence_loss(preds, g, m * v, gamma, "huber", huber_delta))
        if occluded_term:
            occ_terms.append(sequence_loss(preds, g, m * (1 - v), gamma, "l1"))
    visible = torch.stack(vis_terms).mean()
    occluded = torch.stack(occ_terms).mean() if occ_terms else visible.new_zeros(())
    total = visible_weight * visible + (occluded_weight * occluded if occluded_term else 0.0)
    return TrackLoss(total, visible.detach(), occluded.detach())
