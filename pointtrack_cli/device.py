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

Host memory: :func:`check_memory` refuses, before a run starts, arrays that cannot fit in what the OS can give
(:func:`available_memory`), with the estimate and the way out.
"""
from __future__ import annotations

import os

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
    """``fp32``, ``bf16`` or ``fp16`` for ``use`` (see the table above) on a resolved ``device``.

    On the CPU: ``fp32``, except an explicit ``bf16`` for a tracker (CPU bf16 autocast; trackers whose wrapper
    has no CPU bf16 path run fp32 as before).
    """
    check_precision(precision)
    if not device.startswith("cuda"):
        return "bf16" if use == "tracker" and precision == "bf16" else "fp32"
    return AUTO_ON_CUDA[use] if precision == "auto" else precision


def autocast(device: str, precision: str):
    """The autocast context for a resolved ``precision`` (a no-op context for fp32)."""
    dtype = DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


# --------------------------------------------------------------------------------------------------
# Memory: refuse a run whose arrays cannot fit, before it starts, with the estimate and the way out

OUTPUT_BYTES_PER_POINT_FRAME = 52
"""Host memory per (point, frame) that every run holds whatever the tracker: the tracker's output (tracks
float32 x2, visibility, probability, confidence: 17 bytes), its float64 copy mapped to original pixels (16), the
float32 result (17) and its int32 ``anchor`` index (4), rounded down to 52 because the copies do not all live at
once."""


def available_memory() -> int | None:
    """Bytes of memory the OS can give this process now (Linux ``MemAvailable``; else physical memory; None if
    unknown, then nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """``123456789`` -> ``"117.7 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(needed: float, what: str, way_out: str) -> None:
    """One line when ``needed`` bytes exceed :func:`available_memory`: what needs it, both sizes, the way out."""
    avail = available_memory()
    if avail is not None and needed > avail:
        raise PtrackError(f"{what} needs about {format_bytes(needed)} of memory, more than the {format_bytes(avail)} "
                          f"available: {way_out}")
