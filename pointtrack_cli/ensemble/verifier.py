"""The Track-On-R verifier in use: its weights, the model, and the one function that runs it.

``ptrack ensemble``, ``--model ensemble:...`` (track, eval) and the verifier recipe of ``ptrack finetune`` all
score candidates through :func:`run_verifier`; the network itself is :mod:`pointtrack_cli.models.verifier`.
Precision: ``auto`` is fp16 autocast on CUDA, as the official pipeline (see :mod:`pointtrack_cli.device`).
"""
from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch

from ..device import autocast
from ..errors import PtrackError
from ..models.allocator import release_freed_memory
from ..models.verifier import Verifier, expected_shapes, load_verifier
from ..weights.hub import describe, load_weights
from ..weights.state_dict import check_state_dict

VerifierArg = Union[tuple, Verifier]
"""``(state dict, info)`` from :func:`load_verifier_weights`, or a model from :func:`build_verifier`."""


SELECT_MEDIAN_HINT = "or choose a weight-free selection with --select median"


def load_verifier_weights(weights: str | Path | None, quiet: bool = True, hint: str = SELECT_MEDIAN_HINT) -> tuple[dict, dict]:
    """(state dict, source info) of the verifier; the error ends with ``hint`` (the caller's way out)."""
    try:
        return load_weights("verifier", weights, quiet=quiet)
    except PtrackError as exc:
        # The generic hint names --weights; the commands take the verifier's file as --verifier-weights.
        msg = re.sub(r"--weights\b", "--verifier-weights", str(exc))
        raise PtrackError(f"verifier weights unavailable: {msg}; {hint}") from None


def check_verifier_weights(weights: str | Path | None, quiet: bool = True) -> dict:
    """Load and check the verifier's weights now, keep only where they came from (``info``); the state dict
    is freed: :func:`reload_verifier_weights` reads it again when the verifier runs.

    An ensemble checks the file before its teachers run (a bad file fails in seconds, not after hours) but
    does not hold the tensors (44 MB) under the teachers' peak memory.
    """
    sd, info = load_verifier_weights(weights, quiet)
    check_state_dict(sd, expected_shapes(), describe(info), "Track-On-R verifier")
    del sd
    release_freed_memory()
    return info


def reload_verifier_weights(info: dict) -> tuple[dict, dict]:
    """``(state dict, info)`` again from the file :func:`check_verifier_weights` checked (its resolved path)."""
    sd, _ = load_verifier_weights(info["path"])
    return sd, info


def build_verifier(sd_and_info: tuple, device: str | torch.device) -> Verifier:
    """An eval-mode :class:`Verifier` on ``device`` from ``(state dict, info)``."""
    sd, info = sd_and_info
    return load_verifier(sd, describe(info)).to(device)


def free_memory() -> None:
    """Give freed models back (between teachers, after a verifier built for one call), to the OS included."""
    gc.collect()
    release_freed_memory()  # the holes the last model's tensors left in the heap, before the next one allocates
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_verifier(
    frames: np.ndarray,
    candidates: np.ndarray,
    queries: np.ndarray,
    absent: np.ndarray,
    verifier: VerifierArg,
    device: str | torch.device,
    precision: str,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Verifier logits ``[T, N, M]`` float32 for finite ``candidates [T, N, M, 2]`` in pixels of ``frames [T, H, W, 3]``.

    queries ``[N, 3]`` (t frame index, x, y); absent ``[T, N, M]`` True where a candidate has no estimate.
    verifier: ``(state dict, info)`` (the model is built for this call and freed after it) or a built model
    (kept, for callers that score many videos with one model). precision: resolved (fp32, bf16, fp16).
    progress(n): frames described so far.
    """
    own = isinstance(verifier, tuple)
    model = build_verifier(verifier, device) if own else verifier
    dev = next(model.parameters()).device
    with torch.inference_mode(), autocast(str(dev), precision):
        run = model.steps(frames, torch.from_numpy(candidates), torch.from_numpy(queries.astype(np.float32)),
                          torch.from_numpy(absent) if absent.any() else None)
        while True:
            try:
                done = next(run)
            except StopIteration as stop:
                logits = stop.value
                break
            if progress is not None:
                progress(done)
    out = logits.float().cpu().numpy()
    if own:
        del model
        free_memory()
    return out
