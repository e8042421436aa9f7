"""Deterministic synthetic AllTracker weights (the fixtures' fill rule, ``tests/fixtures/alltracker/README.md``).

The crc32 rule of ``fixtures/realtracker``, with normalisation scales told apart by shape: every official key
gets ``z = default_rng(crc32(key)).standard_normal(shape)`` (float64), then

* conv / linear weights (2+ dimensions): ``z / sqrt(fan_in)``, fan_in = ``prod(shape[1:])``;
* 1-D ``weight`` (every LayerNorm scale of AllTracker): ``1 + 0.05 z``;
* everything else: ``0.02 z``;

with four documented exceptions (README sec. 1), cast to float32 once:

* ``*.layer_scale`` (ConvNeXt / time-attention residual scales, official init 1e-6): ``0.1 + 0.02 z``, so
  the residual branches matter;
* ``flow_head.2.weight``: the plain rule x 0.1 (keeps the random model's flows within a few pixels);
* ``visconf_head.2.weight``: the plain rule x 0.01 and ``visconf_head.2.bias``: ``0.05 + 0.02 z`` (the
  visconf logits are summed over iterations and windows and multiplied by 8 when upsampled; with the plain
  rule every probability saturates at 0 or 1);
* ``time_emb`` (buffer): ``z`` (unit scale, like the sin-cos table it replaces, so it is tested).

Keys and shapes come from the committed ``state_dict_shapes.json`` (written by the fixture generator from
the official module, for the released and the reduced configuration).
"""
from __future__ import annotations

import json
import zlib
from functools import lru_cache

import numpy as np
import torch

from tests.helpers import FIXTURES

SHAPES_FILE = FIXTURES / "alltracker" / "state_dict_shapes.json"


# The exceptions (README sec. 1): keys whose value is ``a + b z``, and extra factors on the plain matrix rule.
AFFINE: dict[str, tuple[float, float]] = {"visconf_head.2.bias": (0.05, 0.02), "time_emb": (0.0, 1.0)}
LAYER_SCALE = (0.1, 0.02)  # every key ending in ``layer_scale``
FACTOR: dict[str, float] = {"flow_head.2.weight": 0.1, "visconf_head.2.weight": 0.01}


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the fill rule assigns to ``key`` with the official ``shape``."""
    z = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
    if key in AFFINE or key.endswith("layer_scale"):
        offset, scale = AFFINE.get(key, LAYER_SCALE)
        v = offset + scale * z
    elif len(shape) >= 2 and key.endswith("weight"):  # conv / linear: fan-in scaling
        v = z / np.sqrt(float(np.prod(shape[1:]))) * FACTOR.get(key, 1.0)
    elif key.endswith("weight"):  # 1-D: LayerNorm scales
        v = 1.0 + 0.05 * z
    else:
        v = 0.02 * z
    return v.astype(np.float32)


def official_shapes(config: str = "released") -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the official state dict for ``config`` (``released`` or ``reduced``)."""
    data = json.loads(SHAPES_FILE.read_text())
    return {k: tuple(v) for k, v in data[config]["shapes"].items()}


def config_kwargs(config: str = "released") -> dict:
    """Constructor keywords of :class:`pointtrack_cli.models.alltracker.AllTracker` for ``config``."""
    return dict(json.loads(SHAPES_FILE.read_text())[config]["config"])


@lru_cache(maxsize=2)
def _filled(config: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(fill_value(k, s)) for k, s in official_shapes(config).items()}


def fill_state_dict(config: str = "released") -> dict[str, torch.Tensor]:
    """The official-layout state dict filled by the rule (a new dict; do not modify the tensors in place)."""
    return dict(_filled(config))
