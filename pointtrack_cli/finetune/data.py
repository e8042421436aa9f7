"""Training data for ``ptrack finetune``: find videos, cut them into clips, read a clip at the training size.

* Discovery: every file under ``VIDEOS_DIR`` (recursively) that ffmpeg can read, and every folder holding
  images (an image sequence, frames in numeric order). Anything unreadable or too short is listed with the
  reason and skipped; it never stops the run.
* Clips: each video is cut into consecutive, non-overlapping clips of ``clip_len`` frames (after
  ``frame_stride``); a video shorter than ``clip_len`` but with at least ``min_frames`` frames
  (:data:`MIN_CLIP_FRAMES`: 16 online, 8 offline) gives one shorter clip. The clip list is fixed when a
  run starts (``RUN_DIR/data.json``), so pseudo-labels cached per clip stay valid across epochs and restarts.
* Sharding: clip ``i`` belongs to rank ``i % world_size`` (balanced even with fewer videos than GPUs);
  each rank walks its shard in a fresh seeded permutation every epoch, so step ``s`` of rank ``r`` always
  reads the same clip (exact resume).
* Frames are resized to the training resolution (``cv2.INTER_AREA`` when shrinking, which avoids
  aliasing; bilinear when enlarging); tracks live in pixels of those frames, (0, 0) = centre of the
  top-left pixel.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..errors import PtrackError
from ..io.video import IMAGE_EXTS, open_video

MIN_CLIP_FRAMES = {True: 16, False: 8}
"""Shortest clip for the online student (one full window of 16) and the offline one; shorter videos are skipped."""
SKIP_SUFFIXES = {".npz", ".npy", ".json", ".jsonl", ".txt", ".md", ".csv", ".pkl", ".pt", ".pth", ".safetensors", ".py"}
"""Files that are certainly not videos: listed as skipped without asking ffmpeg (fast on large trees)."""


@dataclass(frozen=True)
class VideoEntry:
    """A readable video: ``path`` (file or image folder), ``rel`` its path relative to VIDEOS_DIR, size and length."""

    path: str
    rel: str
    num_frames: int
    width: int
    height: int


@dataclass(frozen=True)
class Clip:
    """Frames ``start, start + stride, ...`` (``length`` of them) of video ``rel``; ``clip_id`` names its label files."""

    clip_id: str
    path: str
    rel: str
    start: int
    stride: int
    length: int

    def describe(self) -> str:
        return f"{self.rel}[{self.start}:{self.start + self.stride * self.length}:{self.stride}]"


@dataclass(frozen=True)
class Skipped:
    """A path under VIDEOS_DIR that gave no clips, and why."""

    path: str
    reason: str


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _probe(path: Path) -> tuple[int, int, int]:
    """(num_frames, width, height) of a video file or image folder; raises PtrackError when unreadable."""
    reader = open_video(path)
    return int(reader.source_num_frames), int(reader.source_size[0]), int(reader.source_size[1])


def discover_videos(
    root: str | Path, exclude: Iterable[str | Path] = (), on_item: Callable[[str], None] | None = None
) -> tuple[list[VideoEntry], list[Skipped]]:
    """Readable videos under ``root`` (sorted by relative path) and the skipped paths with reasons.

    exclude: folders not to enter (e.g. the run folder when it lies inside ``root``). Hidden files and
    folders (name starting with ``.``) are ignored. A folder with images is one image-sequence video;
    its other files and sub-folders are still scanned.
    """
    root = Path(root)
    if not root.is_dir():
        raise PtrackError(f"VIDEOS_DIR {root} is not a folder (give the folder that holds your videos)")
    excluded = {Path(p).resolve() for p in exclude}
    videos: list[VideoEntry] = []
    skipped: list[Skipped] = []

    def add(path: Path) -> None:
        rel = str(path.relative_to(root)) if path != root else "."
        if on_item is not None:
            on_item(rel)
        try:
            n, w, h = _probe(path)
        except PtrackError as exc:
            skipped.append(Skipped(rel, str(exc)))
            return
        except Exception as exc:  # ffmpeg oddities must never stop the run
            skipped.append(Skipped(rel, f"{type(exc).__name__}: {str(exc)[:160]}"))
            return
        videos.append(VideoEntry(str(path), rel, n, w, h))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(x for x in dirnames if not x.startswith(".") and (d / x).resolve() not in excluded)
        files = sorted(f for f in filenames if not f.startswith("."))
        if any(_is_image(Path(f)) for f in files):
            add(d)
        for f in files:
            p = d / f
            if _is_image(p):
                continue
            if p.suffix.lower() in SKIP_SUFFIXES:
                skipped.append(Skipped(str(p.relative_to(root)), "not a video (file type)"))
                continue
            add(p)
    videos.sort(key=lambda v: v.rel)
    skipped.sort(key=lambda s: s.path)
    return videos, skipped


def clip_id(rel: str, start: int, stride: int, length: int) -> str:
    """Stable short id of a clip (safe as a file name): readable stem + hash of the definition."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(rel).stem)[:40] or "video"
    h = hashlib.sha1(json.dumps([rel, start, stride, length]).encode()).hexdigest()[:10]
    return f"{stem}-{start:06d}-{h}"


def make_clips(
    videos: list[VideoEntry], clip_len: int, frame_stride: int = 1, max_clips_per_video: int | None = None,
    min_frames: int = MIN_CLIP_FRAMES[True],
) -> tuple[list[Clip], list[Skipped]]:
    """Cut every video into clips (see the module docstring); videos under ``min_frames`` are returned as skipped."""
    if clip_len < min_frames:
        raise PtrackError(f"--clip-len {clip_len} is too short: use at least {min_frames} frames")
    if frame_stride < 1:
        raise PtrackError(f"--frame-stride must be >= 1, got {frame_stride}")
    clips: list[Clip] = []
    skipped: list[Skipped] = []
    for v in videos:
        usable = (v.num_frames + frame_stride - 1) // frame_stride  # frames after striding
        if usable < min_frames:
            skipped.append(Skipped(v.rel, f"too short: {usable} frames after --frame-stride {frame_stride} (need {min_frames})"))
            continue
        count = max(1, usable // clip_len)
        if max_clips_per_video:
            count = min(count, max_clips_per_video)
        length = min(clip_len, usable)
        for k in range(count):
            start = k * clip_len * frame_stride
            clips.append(Clip(clip_id(v.rel, start, frame_stride, length), v.path, v.rel, start, frame_stride, length))
    return clips, skipped


def shard(clips: list[Clip], rank: int, world_size: int) -> list[Clip]:
    """Clips of ``rank``: every ``world_size``-th clip starting at ``rank``."""
    return clips[rank::world_size]


def clip_for_step(num_clips: int, step: int, seed: int, rank: int) -> int:
    """Index into the rank's shard used at ``step`` (0-based): a seeded permutation per epoch."""
    epoch, pos = divmod(step, num_clips)
    perm = np.random.default_rng([seed, epoch, rank, 7919]).permutation(num_clips)
    return int(perm[pos])


def resize_frames(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> ``[T, h, w, 3]`` (area when shrinking, bilinear when enlarging)."""
    h, w = hw
    if frames.shape[1:3] == (h, w):
        return np.ascontiguousarray(frames)
    shrink = h <= frames.shape[1] and w <= frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def read_clip(clip: Clip, hw: tuple[int, int]) -> np.ndarray:
    """The clip's frames at the training size, uint8 ``[T, h, w, 3]`` RGB.

    Raises PtrackError if the video became unreadable (callers skip the clip). Containers that decode fewer
    frames than announced give a shorter clip.
    """
    reader = open_video(clip.path, start=clip.start, end=clip.start + clip.stride * clip.length, stride=clip.stride)
    frames = reader.read_all()
    if len(frames) < 2:
        raise PtrackError(f"no frames could be decoded from {clip.describe()}")
    return resize_frames(frames, hw)


def clips_manifest(clips: list[Clip], skipped: list[Skipped]) -> dict:
    """JSON-ready description of the data (written to RUN_DIR/data.json)."""
    return {"clips": [asdict(c) for c in clips], "skipped": [asdict(s) for s in skipped]}
