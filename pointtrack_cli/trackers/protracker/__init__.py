"""ProTracker: probabilistic integration of optical-flow chains and long-term keypoints (``--model protracker``).

After Zhang et al., "ProTracker: Probabilistic Integration for Robust and Accurate Point Tracking"
(2025), rebuilt without learned parts by default. Units: pixels of the working frames, x before y;
variances are per axis (an isotropic 2-D Gaussian ``N(mu, var * I)``), in px^2.

In one sentence: each point's position in frame ``i`` is the fusion of Gaussian estimates carried
from earlier frames by optical flow (their variance from forward-backward consistency), checked and
re-anchored by matching the query's descriptor, then revisited by a backward pass where it was
lost. Where the paper learns (flow uncertainty, descriptors, masks), this version uses a rule or a
pluggable part; each module's docstring states its rules and why:

* ``tracker.py``  the :class:`ProTracker` ``Tracker``: working resolution, inputs, outputs.
* ``config.py``   :class:`ProTrackerConfig`, every tuning knob with its default and reason.
* ``run.py``      one run: flow chains and their uncertainty, keypoints, the feature filter, the
  forward and backward passes, memory.
* ``fusion.py``   consensus and the correlated product of Gaussians.
* ``descriptors.py``  patch / SIFT / RealTracker-fnet descriptors and the keypoint search.
* ``masks.py``    per-frame object masks (``--mask-video``).
* ``flow.py``     optical-flow sources (OpenCV DIS by default; no weights).

:func:`build` is the registry's entry point (``pointtrack_cli.trackers.registry``): it checks the
command-line options before any work and loads RealTracker's feature network for
``--features realtracker``.
"""
from __future__ import annotations

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.geometry import official_grid
from pointtrack_cli.trackers.base import BuildOptions
from pointtrack_cli.weights.hub import load_weights

from .config import KEYPOINT_ACCEPTANCE, ProTrackerConfig
from .descriptors import (FEATURES, FeatureMap, FnetFeatures, PatchFeatures, SiftFeatures, check_feature_name,
                          fnet_from_state_dict)
from .flow import DISFlow, FarnebackFlow, FlowSource, make_flow_source, sample_bilinear
from .fusion import consensus, fuse_gaussians, lowest_variance
from .masks import MaskVideo, check_mask_folder
from .tracker import RUN_OPTIONS, ProTracker, check_option_names

__all__ = [
    "DISFlow", "FEATURES", "FarnebackFlow", "FeatureMap", "FlowSource", "FnetFeatures", "KEYPOINT_ACCEPTANCE",
    "MaskVideo", "PatchFeatures", "ProTracker", "ProTrackerConfig", "RUN_OPTIONS", "SiftFeatures", "build",
    "check_options", "check_resolution", "consensus", "fnet_from_state_dict", "fuse_gaussians", "lowest_variance",
    "make_flow_source", "sample_bilinear",
]

FNET_SOURCE = "realtracker-offline"
"""Registry id whose checkpoint provides the ``fnet`` for ``features="realtracker"``."""


def check_resolution(resolution: tuple[int, int] | None) -> None:
    """Raise a :class:`PtrackError` naming ``--resolution`` when the official grid placed there leaves the frame.

    ProTracker tracks at the video's own size (down to ``work_size``), so ``--resolution`` only places
    ``--grid`` points: on the official grid at that resolution (margin ``W/64`` px), mapped to the video
    with the align-corners map. Below one pixel of margin (``W < 64``, or ``H`` under ``W/64 + 1``) the
    outer grid points land outside the frame, which would otherwise surface as an error about a query.
    """
    if resolution is None:
        return
    h, w = (int(v) for v in resolution)
    if h < 1 or w < 1:
        raise PtrackError(f"--resolution {h}x{w}: height and width must be positive, e.g. 384x512")
    corners = official_grid(2, float(h), float(w))  # [4, 2] (x, y): the extreme grid points
    inside = (corners >= 0).all() and (corners[:, 0] <= w - 1).all() and (corners[:, 1] <= h - 1).all()
    if not inside:
        raise PtrackError(
            f"--resolution {h}x{w} is too small to place the grid: its margin (width/64 = {w / 64:g} px) must be at "
            "least 1 px, so width >= 64 and height >= width/64 + 1. protracker tracks at the video's own size and "
            "--resolution only places the grid: drop it, or give e.g. 384x512"
        )


def check_options(options: dict, resolution: tuple[int, int] | None = None) -> None:
    """Check ProTracker's options (``features``, ``flow``, ``mask_video``, config fields) and ``--resolution``.

    Raises a :class:`PtrackError` for an unknown option, descriptor type or flow source, a missing mask
    folder, or a resolution the grid cannot be placed at; cheap, so it runs before any weights are loaded.
    """
    check_option_names(options)
    check_feature_name(options.get("features", "patch"))
    make_flow_source(options.get("flow", "dis"))  # raises for an unknown name; cheap to build
    if options.get("mask_video") is not None:
        check_mask_folder(options["mask_video"])
    check_resolution(resolution)


def build(opts: BuildOptions, weights: str | None) -> ProTracker:
    """The registry's builder: a ProTracker from the command line's ``opts.options`` (features, flow, mask_video).

    ``features="realtracker"`` takes RealTracker's feature network (``fnet``) from ``weights`` or the Hub
    (the ``realtracker-offline`` checkpoint) and runs it on ``opts.device``; any other features need no
    weights, so ``weights`` is then an error.
    """
    options = dict(opts.options)
    check_options(options, opts.resolution)
    info = None
    if options.get("features") == "realtracker":
        sd, info = load_weights(FNET_SOURCE, weights, quiet=opts.quiet)
        options["fnet"] = fnet_from_state_dict(sd, source=str(info.get("path", FNET_SOURCE)))
        options.setdefault("device", opts.device)
        del sd
    elif weights is not None:
        raise PtrackError("--weights with --model protracker is only used by --features realtracker "
                          "(the default features need no weights)")
    tracker = ProTracker.from_options(**options)
    tracker.weights_info = info
    return tracker
