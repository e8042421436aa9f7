"""Model ids -> :class:`Tracker` objects: the weight-free trackers and every tracker of the weights registry.

A model id is a registry id (``realtracker-offline``, ``bootstapir``, ...) or a weight-free one (``lk``,
``protracker``), optionally followed by ``@HxW`` to run the network at another input resolution
(``bootstapir@512x512``). Each registry entry names its ``architecture``: the module of ``trackers/`` that
wraps it and provides ``build(entry, state_dict, info, opts)`` and, when the official file is not a plain
state dict, ``read_weights(path)``.
"""
from __future__ import annotations

import re
from types import ModuleType

from ..device import resolve_device, resolve_precision
from ..errors import PtrackError
from ..weights.hub import load_weights
from ..weights.registry import registry
from . import alltracker, lk, locotrack, protracker, realtracker, tapir, tapnext
from .base import BuildOptions, Tracker

WEIGHT_FREE = {
    "lk": (lk, "pyramidal Lucas-Kanade (OpenCV), forward-backward checked"),
    "protracker": (protracker, "probabilistic integration of optical-flow chains and long-term keypoints (OpenCV DIS flow)"),
}
# architecture in registry.json -> module of trackers/ that builds it
ARCHITECTURES: dict[str, ModuleType] = {
    "realtracker-offline": realtracker,
    "realtracker-online": realtracker,
    "locotrack": locotrack,
    "tapir": tapir,
    "tapnext": tapnext,
    "alltracker": alltracker,
}
_RESOLUTION = re.compile(r"^(?P<id>[^@]+)@(?P<h>\d+)x(?P<w>\d+)$")


def tracker_ids() -> list[str]:
    """Every model id :func:`build_tracker` accepts (without ``@HxW``)."""
    return sorted(WEIGHT_FREE) + [k for k, v in registry().items() if v.get("kind") == "tracker"]


def split_model_id(model: str) -> tuple[str, tuple[int, int] | None]:
    """``"bootstapir@512x512"`` -> ``("bootstapir", (512, 512))``; ``"lk"`` -> ``("lk", None)``."""
    m = _RESOLUTION.match(model)
    if m is None:
        if "@" in model:
            raise PtrackError(f"--model {model!r}: the resolution suffix is @HxW, e.g. {model.split('@')[0]}@512x512")
        return model, None
    return m["id"], (int(m["h"]), int(m["w"]))


def check_model_id(model: str) -> str:
    """The base id of ``model`` if it is known, else one line listing the ids."""
    base, _ = split_model_id(model)
    if base not in tracker_ids():
        raise PtrackError(f"unknown model {base!r} (choose one of: {', '.join(tracker_ids())}; see `ptrack models`)")
    return base


def architecture_module(entry: dict) -> ModuleType:
    """The ``trackers/`` module wrapping ``entry``'s architecture."""
    module = ARCHITECTURES.get(entry.get("architecture", ""))
    if module is None:
        raise PtrackError(f"model {entry['id']!r} has an unknown architecture {entry.get('architecture')!r} in the weights registry")
    return module


def build_tracker(
    model: str,
    *,
    weights: str | None = None,
    device: str = "auto",
    resolution: tuple[int, int] | None = None,
    backward: bool = False,
    precision: str = "auto",
    quiet: bool = True,
    vis_threshold: float | None = None,
    support_grid: bool = True,
    iters: int | None = None,
    options: dict | None = None,
) -> Tracker:
    """Build the tracker for model id ``model`` (see the module docstring).

    weights: local checkpoint overriding the registry's download. resolution: model input (h, w); an
    ``@HxW`` suffix of the id sets it too (the explicit argument wins). backward: also track before each
    query's frame (trackers that always do ignore it). iters: refinement iterations of iterative models.
    options: model-specific keyword arguments (``protracker``: features, flow, mask_video).
    """
    base, id_hw = split_model_id(model)
    dev = resolve_device(device)
    opts = BuildOptions(
        device=dev, precision=resolve_precision(precision, dev, "tracker"), resolution=resolution or id_hw,
        backward=backward, vis_threshold=vis_threshold, support_grid=support_grid, iters=iters,
        options=dict(options or {}), quiet=quiet,
    )
    if opts.options and base != "protracker":
        raise PtrackError(f"options {', '.join(sorted(opts.options))} only apply to --model protracker, not {model!r}")
    if base in WEIGHT_FREE:
        tracker = WEIGHT_FREE[base][0].build(opts, weights)
    else:
        entry = registry().get(base)
        if entry is None or entry.get("kind") != "tracker":
            check_model_id(base)  # raises with the list of ids
        module = architecture_module(entry)
        sd, info = load_weights(base, weights, quiet=quiet, reader=getattr(module, "read_weights", None))
        tracker = module.build(entry, sd, info, opts)
        del sd
    if id_hw is not None and resolution is None:
        tracker.name = model  # the id as typed, so outputs say which resolution ran
    return tracker
