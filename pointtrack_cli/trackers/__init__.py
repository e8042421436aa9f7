"""Tracker registry: turn a model id (``lk``, ``realtracker-offline``, ...) into a :class:`Tracker`."""
from __future__ import annotations

from .base import ArrayVideo, FrameSource, Tracker, TrackOutput
from ..errors import PtrackError

__all__ = ["ArrayVideo", "FrameSource", "Tracker", "TrackOutput", "build_tracker", "tracker_ids"]

WEIGHT_FREE = {
    "lk": "pyramidal Lucas-Kanade (OpenCV), forward-backward checked",
    "protracker": "probabilistic integration of optical-flow chains and long-term keypoints (OpenCV DIS flow)",
}


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
    iters: int | None = None,
    options: dict | None = None,
) -> Tracker:
    """Build the tracker for model id ``model``.

    weights: local checkpoint path overriding the registry's Hub download.
    resolution: model input (h, w) in pixels for neural models; ``None`` keeps the model default.
    backward: also track before each query's frame (trackers that always do ignore it).
    iters: refinement iterations of iterative models (RealTracker: 6, as the official predictors).
    options: model-specific keyword arguments; for ``protracker`` those of
        :class:`~pointtrack_cli.trackers.protracker.ProTracker` (``features``, ``flow``, ``mask_video``, ...).
        ``features="realtracker"`` takes RealTracker's feature network from ``weights`` or the Hub.
    """
    if options and model != "protracker":
        raise PtrackError(f"options {', '.join(sorted(options))} only apply to --model protracker, not {model!r}")
    if model == "lk":
        from .lk import LKTracker

        return LKTracker(backward=True)
    if model == "protracker":
        return _build_protracker(dict(options or {}), weights, device, quiet)
    from ..weights import registry

    entry = registry().get(model)
    if entry is None or entry.get("kind") != "tracker":
        raise PtrackError(f"unknown model {model!r} (choose one of: {', '.join(tracker_ids())}; see `ptrack models`)")
    arch = entry["architecture"]
    if arch in ("realtracker-offline", "realtracker-online"):
        from ..models.realtracker import load_realtracker
        from ..weights import load_weights
        from .realtracker import RealTrackerTracker

        dev = resolve_device(device)
        online = arch == "realtracker-online"
        sd, info = load_weights(model, weights, quiet=quiet)
        net = load_realtracker(sd, online=online, source=str(info.get("path", model)))
        del sd
        tracker = RealTrackerTracker(
            net, online=online, resolution=resolution or tuple(entry["config"]["model_resolution"]),
            support_grid=support_grid, backward=backward, vis_threshold=vis_threshold, device=dev,
            precision=resolve_precision(precision, dev), **({"iters": iters} if iters else {}),
        )
        tracker.name = model
        tracker.weights_info = info
        return tracker
    raise PtrackError(f"model {model!r} has an unknown architecture {arch!r} in the weights registry")


def _build_protracker(options: dict, weights: str | None, device: str, quiet: bool) -> Tracker:
    """ProTracker; with ``features="realtracker"`` its descriptors come from RealTracker's ``fnet``."""
    from .protracker import ProTracker, fnet_from_state_dict

    info = None
    if options.get("features") == "realtracker":
        from ..weights import load_weights

        sd, info = load_weights("realtracker-offline", weights, quiet=quiet)
        options["fnet"] = fnet_from_state_dict(sd, source=str(info.get("path", "realtracker-offline")))
        options.setdefault("device", resolve_device(device))
        del sd
    elif weights is not None:
        raise PtrackError("--weights with --model protracker is only used by --features realtracker "
                          "(the default features need no weights)")
    tracker = ProTracker(**options)
    tracker.weights_info = info
    return tracker


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp32. CPU always runs fp32.

    No GPU was available to measure whether bf16/fp16 match fp32 on the fixtures, so ``auto`` stays
    fp32 on CUDA too; pass --precision bf16 to opt in.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise PtrackError(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)")
    if precision == "auto" or not device.startswith("cuda"):
        return "fp32"
    return precision
