"""Trackers: the :class:`Tracker` contract (``base``), the model-id registry (``registry``) and one wrapper per
tracker (``lk``, ``realtracker``, ``protracker/``, and the teachers ported from the Track-On-R wrappers)."""
from .base import BuildOptions, FrameSource, Tracker, TrackOutput
from .registry import WEIGHT_FREE, build_tracker, check_model_id, split_model_id, tracker_ids

__all__ = ["BuildOptions", "FrameSource", "Tracker", "TrackOutput", "WEIGHT_FREE", "build_tracker", "check_model_id",
           "split_model_id", "tracker_ids"]
