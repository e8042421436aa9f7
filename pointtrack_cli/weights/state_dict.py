"""Reading checkpoint files safely and checking them against a model's expected key layout.

Files are read with safetensors or ``torch.load(..., weights_only=True)``: torch's restricted unpickler, which
rebuilds tensors and plain containers (dict, list, str, numbers) and refuses any other Python object. Its
refusal message advises turning ``weights_only`` off, which would run the code a crafted file
carries; ptrack never quotes that advice (:func:`python_objects_refused`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file

from ..errors import PtrackError

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "ema_state_dict", "module", "net", "weights")


def python_objects_refused(exc: BaseException) -> str | None:
    """When ``exc`` is ``torch.load(weights_only=True)`` refusing a file: why, in ptrack's words; else None.

    Names the Python object the file asks for (e.g. ``builtins.exec``), never torch's hint to retry with
    ``weights_only`` turned off.
    """
    text = str(exc)
    if "Weights only load failed" not in text and "Unsupported global" not in text:
        return None
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
    named = f" (it names {m.group(1)})" if m else ""
    return (f"it holds Python objects besides tensors and plain containers{named}; ptrack refuses such files "
            "because loading them could run code")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/``.safetensors`` file into a flat ``{key: tensor}`` dict.

    Unwraps ``{"model": sd}``-style containers and strips a ``module.`` prefix (DDP checkpoints).
    Raises :class:`PtrackError` for a missing, truncated or non-checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise PtrackError(f"weights file not found: {path} (check the path given to --weights)")
    try:
        if path.suffix == ".safetensors":
            sd: object = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or containing pickled objects
        refused = python_objects_refused(exc)
        if refused:
            raise PtrackError(f"cannot read weights file {path}: {refused} (use the official checkpoint, or a "
                              ".safetensors file)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtrackError(
            f"cannot read weights file {path}: {first[:200]} "
            "(the file is truncated, corrupt or not a plain state dict; download it again)"
        ) from None
    for _ in range(3):  # nested wrappers such as {"model": {"state_dict": ...}}
        if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping):
        raise PtrackError(f"weights file {path} does not hold a state dict (got {type(sd).__name__})")
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PtrackError(f"weights file {path} holds no tensors (not a model checkpoint)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def check_state_dict(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    model_name: str,
) -> None:
    """Raise one clear :class:`PtrackError` if keys are missing, unexpected or mis-shaped.

    ``expected`` maps each key to its shape (e.g. from ``model.state_dict()``).
    """
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k} {tuple(sd[k].shape)} != {tuple(s)}" for k, s in expected.items() if k in sd and tuple(sd[k].shape) != tuple(s)
    ]
    if not (missing or unexpected or shaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if shaped:
        parts.append(f"{len(shaped)} mis-shaped, e.g. {'; '.join(shaped[:3])}")
    raise PtrackError(
        f"{source} does not match the {model_name} layout: {'; '.join(parts)} "
        f"(pass a checkpoint for {model_name}, or choose the matching --model)"
    )
