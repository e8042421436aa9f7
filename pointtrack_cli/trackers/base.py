"""The tracker interface every model implements (LK, RealTracker, ProTracker, the ensemble, ...).

Data path: a :class:`FrameSource` (frames ``[H, W, 3]`` uint8 RGB) and queries ``[N, 3]`` rows
``(t, x, y)`` go in; a :class:`TrackOutput` comes out. Coordinates are pixels of the frames the
tracker is given, x before y, (0, 0) = centre of the top-left pixel; ``t`` indexes the frames
of the source (0 .. T-1). Frames first: tracks are ``[T, N, 2]``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

ProgressFn = Callable[[int], None]
"""Called with the number of frames just finished (for a progress bar)."""


class PassProgress:
    """Frames of several passes over the video (forward, backward, point batches) -> frames of the video for a
    :data:`ProgressFn`: ``passes`` frames of work make one frame of progress."""

    def __init__(self, fn: ProgressFn | None, passes: int) -> None:
        self.fn, self.passes, self.units, self.reported = fn, max(1, passes), 0, 0

    def __call__(self, units: int) -> None:
        self.units += units
        frames = self.units // self.passes
        if self.fn is not None and frames > self.reported:
            self.fn(frames - self.reported)
        self.reported = max(self.reported, frames)


class FrameSource(Protocol):
    """A video the tracker can iterate once or more (streaming) or read whole."""

    num_frames: int
    height: int
    width: int
    fps: float

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames ``[H, W, 3]`` uint8 RGB, in order, one at a time."""
        ...

    def read_all(self) -> np.ndarray:
        """All frames as one array ``[T, H, W, 3]`` uint8 RGB."""
        ...


@dataclass
class TrackOutput:
    """What a tracker returns, in pixels of the frames it was given.

    tracks: ``[T, N, 2]`` float32 (x, y); NaN where the tracker gives no estimate.
    visibility: ``[T, N]`` bool (thresholded as the model's own predictor does).
    visibility_prob: ``[T, N]`` float32 in [0, 1], the raw visibility probability.
    confidence: ``[T, N]`` float32 in [0, 1].
    """

    tracks: np.ndarray
    visibility: np.ndarray
    visibility_prob: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        self.tracks = np.asarray(self.tracks, dtype=np.float32)
        self.visibility = np.asarray(self.visibility, dtype=bool)
        self.visibility_prob = np.asarray(self.visibility_prob, dtype=np.float32)
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        t, n = self.tracks.shape[:2]
        for name in ("visibility", "visibility_prob", "confidence"):
            if getattr(self, name).shape != (t, n):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(t, n)}")


def blank_before_query(tracks: np.ndarray, visibility: np.ndarray, query_index: np.ndarray) -> None:
    """In place: a forward-only tracker has no estimate before each point's query frame.

    tracks ``[T, N, 2]`` get NaN and visibility ``[T, N]`` False at frames ``t < query_index[n]``.
    """
    before = np.arange(len(tracks))[:, None] < np.asarray(query_index, np.int64)[None, :]
    tracks[before] = np.nan
    visibility[before] = False


class Tracker(ABC):
    """Frames + queries in, tracks out.

    Attributes:
        name: model id as the user types it (``lk``, ``realtracker-offline``, ...).
        streaming: True when :meth:`track` only iterates the source once, frame by frame, so memory
            does not grow with video length; False when it needs the whole clip (``read_all``).
        backward: True when points are also tracked before their query frame; otherwise those
            frames hold NaN and not-visible.
        weights_info: where the weights came from (path or Hub repo/file/revision), for metadata.
    """

    name: str = "tracker"
    streaming: bool = False
    backward: bool = False
    weights_info: dict | None = None

    @abstractmethod
    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        """Track ``queries`` ``[N, 3]`` (t, x, y) through ``video``; returns ``[T, N, ...]`` arrays."""

    def settings(self) -> dict:
        """Settings that shaped the result (thresholds, resolution, ...), stored in the NPZ metadata."""
        return {}

    def memory_bytes(self, num_frames: int, num_points: int, frame_hw: tuple[int, int]) -> int:
        """Host memory this tracker needs for ``num_points`` over ``num_frames`` frames of ``frame_hw`` (h, w),
        beyond the output arrays every run holds (:data:`~pointtrack_cli.device.OUTPUT_BYTES_PER_POINT_FRAME`).

        Checked before tracking, so a run that cannot fit stops with the estimate instead of an allocation
        error. 0 (the default) means bounded: e.g. a tracker that batches points from its own estimate.
        """
        return 0


@dataclass
class BuildOptions:
    """What the caller asks of a tracker it builds (see :func:`pointtrack_cli.trackers.registry.build_tracker`).

    device / precision are already resolved (``cpu``, ``cuda``, ``cuda:1``; ``fp32``, ``bf16``, ``fp16``).
    resolution: model input (h, w); None = the registry entry's default. backward: also estimate frames
    before each query frame (trackers that always do ignore it). vis_threshold: None = the official one.
    support_grid: RealTracker's extra grid for explicit queries. iters: refinement iterations of iterative
    models (None = official). options: model-specific keyword arguments. quiet: no download progress.
    """

    device: str = "cpu"
    precision: str = "fp32"
    resolution: tuple[int, int] | None = None
    backward: bool = False
    vis_threshold: float | None = None
    support_grid: bool = True
    iters: int | None = None
    options: dict = field(default_factory=dict)
    quiet: bool = True
