"""Generated videos with known motion, for the demo, the tests and the benchmarks.

Everything is procedural (seeded random texture moved by a known affine motion), so ground-truth
positions are exact: a point at ``p`` in frame 0 is at ``A_t p + b_t`` in frame t.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import cv2
import imageio_ffmpeg
import numpy as np


def texture(h: int, w: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture ``[h, w, 3]`` uint8 with strong local gradients (trackable everywhere)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), blur)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6) * 255.0
    return img.astype(np.uint8)


def translating_frames(
    num_frames: int, height: int, width: int, velocity: tuple[float, float] = (0.7, 0.3), seed: int = 0
) -> Iterator[np.ndarray]:
    """Frames ``[H, W, 3]`` of a texture moving by ``velocity`` (vx, vy) pixels per frame.

    Content at ``(x, y)`` in frame 0 is at ``(x + vx t, y + vy t)`` in frame t (see :func:`translation_gt`).
    Frames are produced one by one, so arbitrarily long videos cost constant memory.
    """
    base = texture(height, width, seed)
    for t in range(num_frames):
        m = np.array([[1.0, 0.0, velocity[0] * t], [0.0, 1.0, velocity[1] * t]], np.float64)
        # BORDER_REFLECT keeps texture flowing in at the edges (no flat areas LK could not track).
        yield cv2.warpAffine(base, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def translation_gt(points_xy: np.ndarray, num_frames: int, velocity: tuple[float, float]) -> np.ndarray:
    """Ground-truth tracks ``[T, N, 2]`` for frame-0 points ``[N, 2]`` under :func:`translating_frames`."""
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    return np.asarray(points_xy, np.float64)[None] + t * np.asarray(velocity, np.float64)[None, None]


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 24.0, quality: int = 9) -> Path:
    """Encode RGB frames as H.264 MP4 (high quality by default, so tests measure tracking, not codec noise)."""
    path = Path(path)
    writer = None
    for frame in frames:
        if writer is None:
            h, w = frame.shape[:2]
            writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=quality, macro_block_size=1,
                                                 ffmpeg_log_level="error")
            writer.send(None)
        writer.send(np.ascontiguousarray(frame))
    if writer is not None:
        writer.close()
    return path


def write_png_folder(frames: Iterable[np.ndarray], folder: str | Path) -> Path:
    """Write frames as ``00000.png, 00001.png, ...`` (the DAVIS layout, lossless)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder
