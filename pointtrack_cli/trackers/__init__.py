"""Tracker registry: turn a model id (``lk``, ``realtracker-offline``, ...) into a :class:`Tracker`."""
from __future__ import annotations

from .base import ArrayVideo, FrameSource, Tracker, TrackOutput
from ..errors import PtrackError

__all__ = ["ArrayVideo", "FrameSource", "Tracker", "TrackOutput", "build_tracker", "tracker_ids"]

WEIGHT_FREE = {"lk": "pyramidal Lucas-Kanade (OpenCV), forward-backward checked"}


def tracker_ids() -> list[str]:
    """Every model id ``build_tracker`` accepts."""
    from ..weights import registry

    return sorted(WEIGHT_FREE) + [k for k, v in registry().items() if v.get("kind") == "tracker"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validates explicit choices."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PtrackError("--device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PtrackError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return device


def build_tracker(
    model: str,
    *,
    weights: str | None = None,
    device: str = "auto",
    resolution: tuple[int, int] | None = None,
    backward: bool = False,
    precision: str = "auto",
    quiet: bool = False,
    vis_threshold: float | None = None,
    support_grid: bool = True,
) -> Tracker:
    """Build the tracker for model id ``model``.

    weights: local checkpoint path overriding the registry's Hub download.
    resolution: model input (h, w) in pixels for neural models; ``None`` keeps the model default.
    backward: also track before each query's frame (trackers that always do ignore it).
    """
    if model == "lk":
        from .lk import LKTracker

        return LKTracker(backward=True)
    from ..weights import registry

    entry = registry().get(model)
    if entry is None or entry.get("kind") != "tracker":
        raise PtrackError(f"unknown model {model!r} (choose one of: {', '.join(tracker_ids())}; see `ptrack models`)")
    arch = entry["architecture"]
    if arch in ("realtracker-offline", "realtracker-online"):
        from .realtracker import build_realtracker

        return build_realtracker(
            model, entry, weights=weights, device=resolve_device(device), resolution=resolution, backward=backward,
            precision=precision, quiet=quiet, vis_threshold=vis_threshold, support_grid=support_grid,
        )
    raise PtrackError(f"model {model!r} has an unknown architecture {arch!r} in the weights registry")
