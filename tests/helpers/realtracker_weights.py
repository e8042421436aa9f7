"""Deterministic synthetic RealTracker weights (the fixtures' weight-fill rule, README sec. 1).

Every official key gets ``z = default_rng(crc32(key)).standard_normal(shape)`` (float64), scaled by
``1/sqrt(fan_in)`` for conv/linear weights, ``1 + 0.05 z`` for the affine LayerNorm weights and
``0.02 z`` otherwise, cast to float32 once. The one documented exception:
``updateformer.vis_conf_head.weight`` is additionally multiplied by 0.25.
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import torch

from pointtrack_cli.models.realtracker import expected_shapes

_EXCEPTION = "updateformer.vis_conf_head.weight"


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the fill rule assigns to ``key`` with the official ``shape``."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    z = rng.standard_normal(shape)
    if len(shape) >= 2 and key.endswith("weight"):
        v = z / np.sqrt(float(np.prod(shape[1:])))
        if key == _EXCEPTION:
            v = v * 0.25
    elif key.endswith("weight") and "norm" in key:
        v = 1.0 + 0.05 * z
    else:
        v = 0.02 * z
    return v.astype(np.float32)


@lru_cache(maxsize=1)
def _filled_offline() -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(fill_value(k, shape)) for k, shape in expected_shapes(False).items()}


def fill_state_dict(online: bool) -> dict[str, torch.Tensor]:
    """The official-layout state dict (188 keys, float32) filled by the rule; ``time_emb`` is 16 (online) or 60 frames.

    The rule depends only on key and shape, so the two variants share every tensor but ``time_emb``.
    Filling takes a few seconds, so the tensors are computed once per process and shared between calls
    (a new dict each time; do not modify the tensors in place).
    """
    sd = dict(_filled_offline())
    if online:
        sd["time_emb"] = torch.from_numpy(fill_value("time_emb", expected_shapes(True)["time_emb"]))
    return sd
