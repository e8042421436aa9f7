"""The result of a tracking run and its on-disk form (``tracks.npz``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PtrackError
from .version import __version__

COORDINATES = "pixels of the original video, x then y; (0, 0) is the centre of the top-left pixel (OpenCV convention)"


@dataclass
class TrackResult:
    """Tracks of N points over T frames, in original-video pixels.

    tracks: ``[T, N, 2]`` float32 (x, y); NaN where there is no estimate (before a point's query frame
        for trackers that do not track backward).
    visibility: ``[T, N]`` bool; visibility_prob, confidence: ``[T, N]`` float32 in [0, 1].
    queries: ``[N, 3]`` float32 rows (t, x, y); t is the SOURCE frame number (as in ``frame_indices``).
    frame_indices: ``[T]`` int64 source frame numbers of the tracked frames (after --start/--stride).
    fps: frame rate of the source video; size: (w, h) of the source video.
    model: model id; meta: JSON-able dict (command, video, thresholds, weights source, ...).
    extra_files: further arrays written beside ``tracks.npz``, ``{file name: {array name: array}}`` (an
        ensemble's ``selection.npz``).
    """

    tracks: np.ndarray
    visibility: np.ndarray
    visibility_prob: np.ndarray
    confidence: np.ndarray
    queries: np.ndarray
    frame_indices: np.ndarray
    fps: float
    size: tuple[int, int]
    model: str
    meta: dict = field(default_factory=dict)
    ptrack_version: str = ""
    extra_files: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tracks = np.asarray(self.tracks, np.float32)
        self.visibility = np.asarray(self.visibility, bool)
        self.visibility_prob = np.asarray(self.visibility_prob, np.float32)
        self.confidence = np.asarray(self.confidence, np.float32)
        self.queries = np.asarray(self.queries, np.float32).reshape(-1, 3)
        self.frame_indices = np.asarray(self.frame_indices, np.int64)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.ptrack_version = self.ptrack_version or __version__

    @property
    def num_frames(self) -> int:
        return int(self.tracks.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.tracks.shape[1])

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays as stored in ``tracks.npz`` (no object arrays: loads with allow_pickle=False)."""
        return {
            "tracks": self.tracks,
            "visibility": self.visibility,
            "visibility_prob": self.visibility_prob,
            "confidence": self.confidence,
            "queries": self.queries,
            "frame_indices": self.frame_indices,
            "fps": np.float64(self.fps),
            "size": np.asarray(self.size, np.int64),
            "model": np.str_(self.model),
            "ptrack_version": np.str_(self.ptrack_version),
            "meta": np.str_(json.dumps(self.meta, default=str)),
        }


def load_tracks(path: str | Path) -> TrackResult:
    """Read a ``tracks.npz`` written by ptrack (or the output folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tracks.npz"
    if not path.is_file():
        raise PtrackError(f"tracks file not found: {path} (pass a tracks.npz or the output folder)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise PtrackError(f"cannot read {path}: {exc} (not a ptrack tracks.npz)") from None
    required = ("tracks", "visibility")
    missing = [k for k in required if k not in data]
    if missing:
        raise PtrackError(f"{path} is not a ptrack tracks file: missing {', '.join(missing)}")
    tracks = data["tracks"]
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise PtrackError(f"{path}: tracks must be [T, N, 2], got {tracks.shape}")
    T, N = tracks.shape[:2]
    vis = data["visibility"].astype(bool)
    return TrackResult(
        tracks=tracks,
        visibility=vis,
        visibility_prob=data.get("visibility_prob", vis.astype(np.float32)),
        confidence=data.get("confidence", np.ones((T, N), np.float32)),
        queries=data.get("queries", np.zeros((N, 3), np.float32)),
        frame_indices=data.get("frame_indices", np.arange(T)),
        fps=float(data.get("fps", 30.0)),
        size=tuple(int(v) for v in data.get("size", (0, 0))),
        model=str(data.get("model", "unknown")),
        meta=json.loads(str(data["meta"])) if "meta" in data else {},
        ptrack_version=str(data.get("ptrack_version", "")),
    )
