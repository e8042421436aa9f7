"""One device and precision policy for every part of ptrack.

``--device auto`` means CUDA when torch sees a GPU, else the CPU. ``--precision auto`` has one default per
use, each stated here and nowhere else:

================  =========================  ===========================================================
use               auto on CUDA               why
================  =========================  ===========================================================
``tracker``       fp32                       no GPU has yet measured bf16/fp16 against the fixtures
``verifier``      fp16                       the official Track-On-R pipeline runs the verifier under fp16
``finetune``      bf16                       the official fine-tuning recipes train under bf16 autocast
================  =========================  ===========================================================

On the CPU ``auto`` is always fp32. An explicit ``fp32``, ``bf16`` or ``fp16`` is honoured on CUDA; on the
CPU a tracker honours ``bf16`` (autocast) where its wrapper supports it, the other uses run fp32.
"""
from __future__ import annotations

import torch

from .errors import PtrackError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_ON_CUDA = {"tracker": "fp32", "verifier": "fp16", "finetune": "bf16"}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validates explicit choices."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PtrackError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PtrackError(f"--device {device} was asked for but no CUDA GPU is available (use --device cpu or auto)")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PtrackError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: str, use: str = "tracker") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``use`` (see the table above) on a resolved ``device``."""
    check_precision(precision)
    if not device.startswith("cuda"):
        return "fp32"
    return AUTO_ON_CUDA[use] if precision == "auto" else precision


def autocast(device: str, precision: str):
    """The autocast context for a resolved ``precision`` (a no-op context for fp32)."""
    dtype = DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
