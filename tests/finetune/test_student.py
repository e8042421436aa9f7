"""The student: the loss of a batch against the spec's formula, the learning-rate schedule, a few optimiser steps."""
from __future__ import annotations

import numpy as np
import torch

from pointtrack_cli.finetune import FinetuneConfig
from pointtrack_cli.finetune.labels import ClipLabels
from pointtrack_cli.finetune.student import Batch, build_student, compute_loss, lr_factor, make_optimizer, optimizer_step
from pointtrack_cli.synthetic import translating_frames, translation_gt
from tests.finetune.runs import HW
from tests.helpers.realtracker_weights import fill_state_dict


def reference_loss(windows, starts, gt, vis, valid, gamma=0.8):
    """The spec formula in float64 NumPy, written independently of losses.py."""
    v_terms, o_terms = [], []
    for preds, s0 in zip(windows, starts):
        n, s = len(preds), preds[0].shape[0]
        g, v, m = gt[s0:s0 + s], vis[s0:s0 + s].astype(np.float64), valid[s0:s0 + s].astype(np.float64)
        acc_v = acc_o = 0.0
        for i, p in enumerate(preds):
            d = p.astype(np.float64) - g
            hub = np.where(np.abs(d) <= 6, 0.5 * d * d, 6 * (np.abs(d) - 3)).mean(-1)
            acc_v += gamma ** (n - 1 - i) * (hub * m * v).sum() / (1e-6 + (m * v).sum())
            acc_o += gamma ** (n - 1 - i) * (np.abs(d).mean(-1) * m * (1 - v)).sum() / (1e-6 + (m * (1 - v)).sum())
        v_terms.append(acc_v / n)
        o_terms.append(acc_o / n)
    return 0.05 * np.mean(v_terms) + 0.01 * np.mean(o_terms)


def test_batch_loss_of_online_student_equals_formula():
    """Real model, 2 sliding windows, 2 iterations: compute_loss == the formula on its own predictions."""
    torch.manual_seed(0)
    model = build_student(fill_state_dict(True), True, HW, "fill rule", torch.device("cpu"))
    rng = np.random.default_rng(1)
    t, n = 20, 3
    frames = rng.integers(0, 256, (t, *HW, 3)).astype(np.uint8)
    queries = np.array([[0, 10, 20], [5, 40, 30], [12, 50, 10]], np.float32)
    gt = (queries[None, :, 1:] + rng.normal(0, 4, (t, n, 2))).astype(np.float32)
    vis = rng.random((t, n)) > 0.3
    valid = rng.random((t, n)) > 0.1
    cfg = FinetuneConfig("", "", iters=2)
    batch = Batch(frames, ClipLabels(queries, gt, vis, valid, "test"))
    with torch.no_grad():
        got = compute_loss(model, batch, cfg, torch.device("cpu"))
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None]
        _, _, _, train = model(video, torch.from_numpy(queries)[None], iters=2, is_train=True)
    assert train.starts == [0, 8]
    windows = [[c[0].numpy() for c in w] for w in train.coords]
    after_query = np.arange(t)[:, None] >= queries[None, :, 0]  # online: t >= t_query
    want = reference_loss(windows, train.starts, gt.astype(np.float64), vis, valid & after_query)
    assert abs(float(got.total) - want) <= 1e-5 * max(1.0, abs(want)), (float(got.total), want)


def test_cosine_schedule_without_warmup():
    assert lr_factor(0, 100) == 1.0
    assert abs(lr_factor(50, 100) - (0.5 + 0.5 / (25 * 1e4))) < 1e-12
    assert abs(lr_factor(100, 100) - 1 / (25 * 1e4)) < 1e-12
    assert all(lr_factor(s, 100) > lr_factor(s + 1, 100) for s in range(100))


def test_overfitting_a_fixed_batch_lowers_the_loss():
    model = build_student(fill_state_dict(False), False, HW, "fill rule", torch.device("cpu"))
    cfg = FinetuneConfig("", "", iters=1, lr=1e-5, steps=1000)
    opt, sched = make_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    frames = np.stack(list(translating_frames(8, *HW, (1.0, 0.5), seed=4)))
    xy = np.stack([rng.uniform(8, 56, 6), rng.uniform(8, 40, 6)], 1)
    queries = np.concatenate([np.zeros((6, 1)), xy], 1).astype(np.float32)
    gt = translation_gt(xy, 8, (1.0, 0.5)).astype(np.float32)
    batch = Batch(frames, ClipLabels(queries, gt, np.ones((8, 6), bool), np.ones((8, 6), bool), "gt"))
    losses = []
    for _ in range(4):
        parts = compute_loss(model, batch, cfg, torch.device("cpu"))
        optimizer_step(model, opt, sched, parts.total, cfg)
        losses.append(float(parts.total.detach()))
    print("losses", losses)
    assert np.mean(losses[1:]) < 0.5 * losses[0]
