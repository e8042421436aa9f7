"""Deterministic verifier weights from the fixture README's fill rule (no download needed).

``fill_state_dict()`` returns the 212 official keys of ``tests/fixtures/verifier/verifier_state_dict.txt``
filled as the reference did, so tests exercise the same loader and key mapping as a real checkpoint.
"""
from __future__ import annotations

import zlib
from tests.helpers import FIXTURES

import numpy as np
import torch

KEY_LIST = FIXTURES / "verifier" / "verifier_state_dict.txt"
EXCEPTIONS = {"displacement_scale": 16.0, "sim_scale_raw": 10.0}


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) in official state-dict order, read from the copied key list."""
    out = []
    for line in KEY_LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")[:2]
        out.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())))
    return out


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The README rule: crc32-seeded normal draws, scaled by fan-in / norm gain / 0.02."""
    if key in EXCEPTIONS:
        return np.array(EXCEPTIONS[key], dtype=np.float32)
    z = np.random.default_rng(zlib.crc32(key.encode())).standard_normal(shape)
    if len(shape) >= 2 and key.endswith("weight"):
        value = z / np.sqrt(np.prod(shape[1:]))
    elif key.endswith("weight") and "norm" in key:
        value = 1 + 0.05 * z
    else:
        value = 0.02 * z
    return np.asarray(value, dtype=np.float32)


def fill_state_dict() -> dict[str, torch.Tensor]:
    """All official keys -> float32 tensors (11,329,126 values)."""
    return {k: torch.from_numpy(fill_value(k, s)) for k, s in official_keys()}
