"""Deterministic synthetic TAPIR / BootsTAPIR weights (the fixtures' weight-fill rule, fixtures/tapir/README.md).

Every official key gets ``z = default_rng(crc32(key)).standard_normal(shape)`` (float64), then
``z / sqrt(fan_in)`` for conv / linear weights (``fan_in = prod(shape[1:])``), ``1 + 0.05 z`` for the 1-D
weights (all of them normalisation scales: instance norms ``bn_*`` and layer norms) and ``0.02 z`` for
everything else (biases), cast to float32 once. The two exceptions are in :data:`EXCEPTIONS`.
The keys and shapes come from the committed lists ``tests/fixtures/tapir/state_dict_<variant>.txt``.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tapir"
# key -> (factor, offset): ``v = v * factor + offset`` in float64 before the cast (README sec. 1 says why)
EXCEPTIONS: dict[str, tuple[float, float]] = {
    "torch_pips_mixer.linear_1.weight": (0.5, 0.0),
    "torch_cost_volume_track_mods.occ_out.bias": (1.0, -1.5),
}


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the fill rule assigns to ``key`` with the official ``shape``."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    z = rng.standard_normal(shape)
    if len(shape) >= 2 and key.endswith("weight"):
        v = z / np.sqrt(float(np.prod(shape[1:])))
    elif key.endswith("weight"):
        v = 1.0 + 0.05 * z
    else:
        v = 0.02 * z
    if key in EXCEPTIONS:
        factor, offset = EXCEPTIONS[key]
        v = v * factor + offset
    return v.astype(np.float32)


def official_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official state dict (``tapir`` or ``bootstapir``), in the official order."""
    out = {}
    for line in (FIXTURES / f"state_dict_{variant}.txt").read_text().splitlines():
        key, shape = line.split()
        out[key] = tuple(int(d) for d in shape.split(","))
    return out


@lru_cache(maxsize=2)
def _filled(variant: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(fill_value(k, s)) for k, s in official_shapes(variant).items()}


def fill_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The official-layout state dict of ``variant`` filled by the rule (a new dict; do not modify the tensors)."""
    return dict(_filled(variant))
