"""The student: its model, optimiser and schedule, the loss of one batch, one optimiser step, its evaluation.

Schedule: ``lr(s) = lr * (f + (1 - f) * (1 + cos(pi * s / K)) / 2)`` for ``s`` completed steps of ``K``, ``f =
1 / (25 * 1e4)`` (OneCycleLR's final floor; pct_start 0 = no warm-up), through ``LambdaLR``.
The student's ``vis_conf_head`` is frozen (not given to the optimizer, ``requires_grad=False``).
Precision: a resolved ``fp32`` / ``bf16`` / ``fp16`` (:func:`pointtrack_cli.device.resolve_precision` with use
``finetune``: bf16 on CUDA by default, fp32 on CPU); fp16 goes with a gradient scaler.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..device import autocast, resolve_precision
from ..eval import evaluate_tracker, mean_over_videos, open_dataset
from ..models.realtracker import load_realtracker
from ..trackers.realtracker import RealTrackerTracker
from .config import FinetuneConfig
from .labels import ClipLabels
from .losses import TrackLoss, track_loss

FINAL_LR_FRACTION = 1.0 / (25 * 1e4)
FROZEN_PREFIX = "updateformer.vis_conf_head."
# Frames per feature-network call of the student: with checkpointing, the backward pass of one call holds that
# call's activations (~0.3 GB per frame at 384x512).
STUDENT_FNET_CHUNK = 2
# (point, frame) pairs per correlation chunk of the student (inference: 4096). A chunk's backward holds its 8x8
# neighbourhood gathers (~100 MB per pyramid level at 4096 pairs), their bilinear blend and the blend's slice
# gradients, whatever the resolution (384 points x 16 frames = 6144 pairs per window); measured at the issue-15
# configuration, 1024 took 0.37 GB off the step's peak.
STUDENT_CORR_CHUNK = 1024


def build_student(sd: dict, online: bool, hw: tuple[int, int], source: str, device: torch.device,
                  checkpointing: bool = True):
    """The student in train mode with ``vis_conf_head`` frozen; ``model_resolution`` = the training size.

    ``checkpointing`` (activation checkpointing, on by default): the backward pass recomputes each feature-network
    chunk, correlation chunk and transformer block instead of keeping their activations for every window and
    iteration of the clip. Same gradients; the memory of a step no longer grows with clip length x points x
    iterations (the autograd graph held ~18 GB for two 24-frame clips at 64x96 with 384 points and 4 iterations;
    see ``benchmarks/finetune_step.py``), for about a third more compute per step.
    """
    model = load_realtracker(sd, online=online, source=source, model_resolution=hw).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN_PREFIX))
    model.checkpointing = checkpointing
    if checkpointing:
        model.fnet_chunk = STUDENT_FNET_CHUNK
        model.corr_chunk = STUDENT_CORR_CHUNK
    return model.train()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lr_factor(step: int, total: int) -> float:
    """Cosine decay without warm-up from 1 to ``FINAL_LR_FRACTION`` over ``total`` steps (see the module docstring)."""
    s = min(max(step, 0), total)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * s / max(total, 1)))


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig):
    """AdamW over the trainable parameters and its LambdaLR cosine schedule."""
    opt = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total))
    return opt, sched


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The gradient scaler: active only for fp16 on CUDA (bf16 and fp32 need none); saved with the state either way."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")


@dataclass
class Batch:
    """One training sample: frames ``[T, H, W, 3]`` uint8 and its labels (pixels of those frames)."""

    frames: np.ndarray
    labels: ClipLabels
    clip: str = ""
    teacher: str = ""


def compute_loss(model, batch: Batch, cfg: FinetuneConfig, device: torch.device, precision: str = "fp32") -> TrackLoss:
    """The student's loss on ``batch`` (differentiable). ``model`` may be wrapped in DDP; ``precision`` resolved."""
    lab = batch.labels
    video = torch.from_numpy(np.ascontiguousarray(batch.frames)).to(device).permute(0, 3, 1, 2).float()[None]
    queries = torch.from_numpy(np.asarray(lab.queries, np.float32)).to(device)[None]
    with autocast(str(device), precision):
        _, _, _, train = model(video, queries, iters=cfg.iters, is_train=True)
    gt = torch.from_numpy(np.asarray(lab.tracks, np.float32)).to(device)[None]
    vis = torch.from_numpy(np.asarray(lab.visibility, bool)).to(device)[None]
    valid = torch.from_numpy(np.asarray(lab.valid, bool)).to(device)[None] & train.valid.bool()
    return track_loss(
        train.coords, train.starts, gt, vis, valid, gamma=cfg.gamma, huber_delta=cfg.huber_delta,
        visible_weight=cfg.visible_weight, occluded_weight=cfg.occluded_weight, occluded_term=not cfg.train_only_visible,
    )


def optimizer_step(model, opt, sched, loss: torch.Tensor, cfg: FinetuneConfig, scaler=None) -> float:
    """Backward, clip, step; returns the gradient norm before clipping."""
    params = trainable_parameters(model)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return float(norm)


def sample_length(num_frames: int, cfg: FinetuneConfig, online: bool) -> int:
    """Clip length used this step: all frames online; uniform in ``[ceil(T * fraction), T]`` offline (python ``random``)."""
    if online:
        return num_frames
    low = max(1, min(num_frames, math.ceil(num_frames * cfg.min_length_fraction)))
    return random.randint(low, num_frames)


def evaluate_student(model, cfg: FinetuneConfig, online: bool, device: torch.device) -> dict[str, float]:
    """TAP-Vid metrics (fractions) of the current weights through the ``eval`` code (``ptrack eval`` defaults:
    queried-first, joint protocol with the 5x5 support grid, CoTracker3's occlusion rule), at the training precision."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    net = load_realtracker(sd, online=online, source="finetune student", model_resolution=tuple(cfg.resolution))
    tracker = RealTrackerTracker(net, online=online, resolution=tuple(cfg.resolution), support_grid=False,
                                 device=device, precision=resolve_precision(cfg.precision, str(device), "finetune"))
    ds = open_dataset(cfg.eval_dataset, cfg.eval_data)
    results = list(evaluate_tracker(tracker, ds, "first", "joint", limit=cfg.eval_limit,
                                    model_hw=tuple(cfg.resolution), occlusion_rule="cotracker3"))
    m = mean_over_videos([r.metrics for r in results])
    return {"aj": m["average_jaccard"], "delta_avg": m["average_pts_within_thresh"], "oa": m["occlusion_accuracy"],
            "videos": len(results)}
