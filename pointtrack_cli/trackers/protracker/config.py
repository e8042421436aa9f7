"""ProTracker's tuning knobs: one frozen :class:`ProTrackerConfig`, with the defaults and why they are so.

Run-level choices (the flow source, the descriptor type, the mask folder, the device, a loaded
``fnet``) are arguments of :class:`~pointtrack_cli.trackers.protracker.tracker.ProTracker`, not
fields here: a config says *how* to track, whatever the clip, the machine or the weights.

Units: pixels of the working frames (``work_size``), variances in px^2 per axis, similarities are
descriptor cosines in ``[-1, 1]``. The defaults were chosen on TAP-Vid-style generated clips (see
``benchmarks/protracker_ablation.py``); the reasons for the less obvious ones:

* ``flow_var0 = 0.25`` px^2 is DIS's sub-pixel floor. ``fb_var_gain = 0.5``: if the forward and
  backward vectors have independent errors of variance ``s^2`` per axis, the forward-backward
  residual ``e`` has ``E[e^2] = 4 s^2``, so ``e^2 / 4`` estimates the per-axis variance of one
  vector (a gain of 0.25); we use a larger gain because errors that are consistent in both
  directions are not seen by the check at all.
* ``rho = 0.8``: chains overlap in history, so their errors are correlated; with ``rho = 0`` many
  agreeing chains would make the variance collapse.
* ``reacquire_sim`` / ``reacquire_frames``: the longer a point was occluded, the longer the only
  chains left, and long-range flows land on wrong but forward-backward-consistent places, where a
  chance match of 0.5 is common; so coming back needs a clearer match than staying visible.
* ``kp_threshold`` / ``kp_margin`` default per descriptor type (:data:`KEYPOINT_ACCEPTANCE`):
  chosen so that most accepted ``patch`` keypoints lie within 2 px; ``realtracker``'s are a guess.
* Memory: ``flow_cache_mb`` (256 MiB = 512 flows at 256x256, 128 at 512x512) bounds the flows kept
  between the passes; ``work_size`` bounds the frames kept for the whole clip (see ``run.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pointtrack_cli.errors import PtrackError

KEYPOINT_ACCEPTANCE: dict[str, tuple[float, float]] = {
    "patch": (0.85, 0.1),
    "sift": (0.9, 0.2),
    "realtracker": (0.8, 0.1),
}
"""Default ``(kp_threshold, kp_margin)`` per descriptor type."""


@dataclass(frozen=True)
class ProTrackerConfig:
    """ProTracker's tuning knobs (see the module docstring). Values are normalised on construction."""

    intervals: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Frame offsets chained besides the query frame (MFT-style; sorted, duplicates dropped)."""
    rho: float = 0.8
    """Correlation coefficient between chain errors, in ``[0, 1)`` (0: plain product of Gaussians)."""
    fusion: bool = True
    """Ablation switch: False takes the lowest-variance chain instead of fusing them."""
    keypoints: bool = True
    """Ablation switch: False never searches or fuses long-term keypoints."""
    backward_pass: bool = True
    """Ablation switch: False skips the pass that revisits points the forward pass left occluded."""
    feature_filter: bool = True
    """Ablation switch: False never marks a point occluded for a poor descriptor match."""
    filter_threshold: float = 0.5
    """Cosine with the query descriptor below which the feature filter marks a point occluded."""
    backward_min_sim: float = 0.5
    """Cosine a backward-pass estimate needs to replace an occlusion decision of the forward pass."""
    reacquire_sim: float = 0.7
    """Cosine a point needs to count as visible again after ``reacquire_frames`` or more occluded frames."""
    reacquire_frames: int = 8
    """Occluded frames after which ``reacquire_sim`` applies in full (the bar rises linearly before; >= 1)."""
    kp_threshold: float | None = None
    """Similarity a keypoint needs to be accepted (None: :data:`KEYPOINT_ACCEPTANCE` of the descriptor type)."""
    kp_margin: float | None = None
    """Uniqueness: the best match must beat the best outside its 5x5-cell neighbourhood by this (None: per type)."""
    kp_radius: float = 12.0
    """Keypoint search half-window (px) around a flow estimate."""
    kp_radius_lost: float = 32.0
    """Keypoint search half-window (px) when the flow lost the point (grows to twice this with the time lost)."""
    kp_var: float = 0.5
    """Variance of a keypoint observation (px^2)."""
    fb_threshold: float = 1.0
    """Forward-backward residual (px) above which a chain is dropped (plus 5 % of the flow length)."""
    flow_var0: float = 0.25
    """Variance floor of one flow vector (px^2): ``var_flow = flow_var0 + fb_var_gain * residual^2``."""
    fb_var_gain: float = 0.5
    """Gain of the squared forward-backward residual in a flow vector's variance."""
    min_contrast: float = 3.0
    """patch features only: query patches with a lower std (grey levels) are neither filtered nor searched."""
    work_size: int | None = 512
    """Frames whose longer side exceeds this are downscaled to it (None: never); thresholds are in these pixels."""
    max_query_flows: int = 2
    """At most this many distinct query frames get a direct chain per frame."""
    flow_cache_mb: float = 256.0
    """Memory for reusing flow fields between passes (0: always recompute)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho < 1.0:
            raise PtrackError(f"rho must be in [0, 1), got {self.rho}")
        if not self.intervals or min(self.intervals) < 1:
            raise PtrackError("intervals must be positive frame offsets, e.g. 1,2,4,8,16,32")
        normalised = {
            "intervals": tuple(sorted(set(int(k) for k in self.intervals))),
            "reacquire_frames": max(1, int(self.reacquire_frames)),
            "max_query_flows": int(self.max_query_flows),
            "kp_threshold": None if self.kp_threshold is None else float(self.kp_threshold),
            "kp_margin": None if self.kp_margin is None else float(self.kp_margin),
        }
        for name in ("rho", "filter_threshold", "backward_min_sim", "reacquire_sim", "kp_radius", "kp_radius_lost",
                     "kp_var", "fb_threshold", "flow_var0", "fb_var_gain", "min_contrast", "flow_cache_mb"):
            normalised[name] = float(getattr(self, name))
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: the only way to normalise in place

    def for_features(self, features: str) -> ProTrackerConfig:
        """This config with ``kp_threshold`` / ``kp_margin`` filled in for descriptor type ``features``."""
        kp, margin = KEYPOINT_ACCEPTANCE[features]
        return replace(
            self,
            kp_threshold=kp if self.kp_threshold is None else self.kp_threshold,
            kp_margin=margin if self.kp_margin is None else self.kp_margin,
        )
