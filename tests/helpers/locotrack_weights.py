"""Deterministic synthetic LocoTrack weights (the fixtures' fill rule, ``tests/fixtures/locotrack/README.md``).

The crc32 rule of ``fixtures/realtracker``, with normalisation scales told apart by shape: every official key
gets ``z = default_rng(crc32(key)).standard_normal(shape)`` (float64), then

* conv / linear weights (2+ dimensions): ``z / sqrt(fan_in)``, fan_in = ``prod(shape[1:])``;
* 1-D ``weight`` (every InstanceNorm, GroupNorm and LayerNorm scale of LocoTrack): ``1 + 0.05 z``;
* everything else (biases): ``0.02 z``;

cast to float32 once. Exceptions: none. Keys and shapes come from the committed ``state_dict_shapes.json``
(written by the fixture generator from the official module).
"""
from __future__ import annotations

import json
import zlib
from functools import lru_cache

import numpy as np
import torch

from tests.helpers import FIXTURES

SHAPES_FILE = FIXTURES / "locotrack" / "state_dict_shapes.json"


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the fill rule assigns to ``key`` with the official ``shape``."""
    z = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
    if len(shape) >= 2 and key.endswith("weight"):
        v = z / np.sqrt(float(np.prod(shape[1:])))
    elif key.endswith("weight"):
        v = 1.0 + 0.05 * z
    else:
        v = 0.02 * z
    return v.astype(np.float32)


def official_shapes(model_size: str = "base") -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the official state dict (no ``model.`` prefix), from the committed list."""
    data = json.loads(SHAPES_FILE.read_text())
    return {k: tuple(v) for k, v in data[model_size].items()}


@lru_cache(maxsize=2)
def _filled(model_size: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(fill_value(k, s)) for k, s in official_shapes(model_size).items()}


def fill_state_dict(model_size: str = "base", prefix: str = "") -> dict[str, torch.Tensor]:
    """The official-layout state dict filled by the rule (a new dict; do not modify the tensors in place).

    ``prefix="model."`` gives the keys of the Lightning checkpoint's ``state_dict``.
    """
    return {prefix + k: v for k, v in _filled(model_size).items()}


def lightning_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """A dict shaped like the released Lightning checkpoints (lightning 2.3.3 ``Trainer`` with the official
    ``LocoTrackModel``, AdamW + OneCycleLR, ``ModelCheckpoint``): ``state_dict`` with ``model.``-prefixed keys
    and the training metadata around it (loops, callbacks, optimizer and scheduler states; abbreviated but with
    the same value types: ints, floats, strings, bools, tuples, None and tensors)."""
    first = next(iter(state_dict.values()))
    progress = {"total": {"ready": 2, "completed": 2}, "current": {"ready": 2, "completed": 2}}
    return {
        "epoch": 0,
        "global_step": 2,
        "pytorch-lightning_version": "2.3.3",
        "state_dict": {"model." + k: v for k, v in state_dict.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 2},
                               "epoch_loop.batch_progress": {**progress, "is_last_batch": False},
                               "epoch_loop.manual_optimization.optim_step_progress": progress,
                               "epoch_progress": progress}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/average_pts_within_thresh', 'mode': 'max', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "val/average_pts_within_thresh", "best_model_score": torch.tensor(0.6),
                "best_model_path": "/ckpt/epoch=0-step=2.ckpt", "current_score": torch.tensor(0.6),
                "dirpath": "/ckpt", "best_k_models": {"/ckpt/epoch=0-step=2.ckpt": torch.tensor(0.6)},
                "kth_best_model_path": "", "kth_value": torch.tensor(float("-inf")), "last_model_path": "/ckpt/last.ckpt",
            }
        },
        "optimizer_states": [{
            "state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.zeros_like(first), "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 1e-3, "weight_decay": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "amsgrad": False,
                              "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                              "fused": None, "initial_lr": 4e-5, "max_lr": 1e-3, "min_lr": 4e-9,
                              "max_momentum": 0.95, "base_momentum": 0.85, "params": [0]}],
        }],
        "lr_schedulers": [{"total_steps": 300000, "_schedule_phases": [{"end_step": 899.0, "start_lr": "initial_lr",
                                                                        "end_lr": "max_lr"}],
                           "_anneal_func_type": "cos", "cycle_momentum": True, "use_beta1": True, "base_lrs": [4e-5],
                           "last_epoch": 2, "_step_count": 3, "_last_lr": [4.1e-5]}],
    }
