"""The spec's track loss (pure functions): the Huber term, and a hand-computed value of the whole loss."""
from __future__ import annotations

import torch

from pointtrack_cli.finetune.losses import huber, track_loss


def test_huber_matches_spec_piecewise():
    d = torch.tensor([-10.0, -6.0, -1.0, 0.0, 2.0, 6.0, 7.5])
    want = [6 * (10 - 3), 18.0, 0.5, 0.0, 2.0, 18.0, 6 * (7.5 - 3)]
    assert torch.allclose(huber(d), torch.tensor(want))


def test_track_loss_hand_computed_value():
    # One window, n = 2 iterations, one frame, point 0 visible, point 1 occluded.
    gt = torch.zeros(1, 1, 2, 2)
    p0 = torch.tensor([[[[2.0, 0.0], [4.0, 0.0]]]])
    p1 = torch.tensor([[[[10.0, 0.0], [1.0, 1.0]]]])
    vis = torch.tensor([[[True, False]]])
    valid = torch.ones(1, 1, 2)
    out = track_loss([[p0, p1]], [0], gt, vis, valid)
    # visible: it0 mean(Huber(2), Huber(0)) = 1, it1 mean(6*(10-3), 0) = 21 -> (0.8*1 + 21) / 2
    # occluded: it0 mean(|4|, 0) = 2, it1 mean(1, 1) = 1 -> (0.8*2 + 1) / 2; masked means divide by 1 + 1e-6.
    want = (0.05 * (0.8 * 1 + 21) / 2 + 0.01 * (0.8 * 2 + 1) / 2) / (1 + 1e-6)
    assert abs(float(out.total) - want) < 5e-7 * want  # float32
    assert abs(float(out.visible) - 10.9 / (1 + 1e-6)) < 1e-6 and abs(float(out.occluded) - 1.3 / (1 + 1e-6)) < 1e-6
    # NaN labels where valid is 0 do not leak; only-visible drops the occluded term.
    gt_nan = gt.clone()
    gt_nan[0, 0, 1] = float("nan")
    masked = track_loss([[p0, p1]], [0], gt_nan, vis, torch.tensor([[[1.0, 0.0]]]), occluded_term=False)
    assert abs(float(masked.total) - 0.05 * 10.9 / (1 + 1e-6)) < 5e-7
