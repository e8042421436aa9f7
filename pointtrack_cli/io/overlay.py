"""Overlay video: tracked points drawn on the original frames (written atomically)."""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Iterable

import cv2
import imageio_ffmpeg
import numpy as np

from .atomic import atomic_path

TRAIL = 8  # frames of fading trail behind each point


def point_colours(queries_y: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[N, 3]``: a rainbow over the query's y (red at the top, violet at the bottom).

    Like the CoTracker visualiser (gist_rainbow over the normalised query y), so colours identify a
    point by where it started, independent of its motion.
    """
    y = np.asarray(queries_y, np.float64)
    lo, hi = (float(np.nanmin(y)), float(np.nanmax(y))) if len(y) else (0.0, 1.0)
    norm = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
    rgb = [colorsys.hsv_to_rgb(0.83 * float(v), 1.0, 1.0) for v in norm]
    return (np.asarray(rgb, np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def draw_frame(
    frame: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray,
    valid: np.ndarray,
    colours: np.ndarray,
    t: int,
    radius: int,
) -> np.ndarray:
    """Draw frame ``t`` of ``tracks`` [T, N, 2] (original pixels) on ``frame`` [H, W, 3] RGB.

    ``valid`` [T, N] is False before a point's query frame and where coordinates are NaN: nothing is drawn
    there. Visible points are filled discs, occluded ones hollow circles; trails fade with age and join
    only visible positions (estimates behind an occluder are guesses: their jumps would hide the motion).
    """
    out = frame.copy()
    shift = 4  # sub-pixel drawing: coordinates in 1/16 pixel
    scale = 1 << shift
    for age in range(min(TRAIL, t), 0, -1):
        a, b = t - age, t - age + 1
        ok = valid[a] & valid[b] & visible[a] & visible[b]
        if not ok.any():
            continue
        layer = out.copy()
        p0 = np.round(tracks[a, ok] * scale).astype(np.int64)
        p1 = np.round(tracks[b, ok] * scale).astype(np.int64)
        for (x0, y0), (x1, y1), c in zip(p0, p1, colours[ok]):
            cv2.line(layer, (int(x0), int(y0)), (int(x1), int(y1)), tuple(int(v) for v in c), max(1, radius // 2), cv2.LINE_AA, shift)
        alpha = 0.7 * (1.0 - (age - 1) / TRAIL)
        out = cv2.addWeighted(layer, alpha, out, 1.0 - alpha, 0.0)
    ok = valid[t]
    pts = np.round(tracks[t, ok] * scale).astype(np.int64)
    for (x, y), c, v in zip(pts, colours[ok], visible[t, ok]):
        colour = tuple(int(k) for k in c)
        if v:
            cv2.circle(out, (int(x), int(y)), radius * scale, colour, -1, cv2.LINE_AA, shift)
        else:
            cv2.circle(out, (int(x), int(y)), radius * scale, colour, max(1, radius // 2), cv2.LINE_AA, shift)
    return out


def write_overlay(
    frames: Iterable[np.ndarray],
    tracks: np.ndarray,
    visibility: np.ndarray,
    query_index: np.ndarray,
    queries_y: np.ndarray,
    fps: float,
    path: str | Path,
    progress=None,
) -> Path:
    """Encode the overlay as H.264 MP4 at ``fps``; one output frame per input frame.

    frames: iterable of ``[H, W, 3]`` uint8 RGB at the original size, matching ``tracks`` [T, N, 2].
    query_index: ``[N]`` index (into T) of each point's query frame.
    """
    path = Path(path)
    T = tracks.shape[0]
    finite = np.isfinite(tracks).all(axis=-1)
    valid = finite & (np.arange(T)[:, None] >= np.asarray(query_index)[None, :])
    # Trackers that go backward give estimates before the query frame: draw those too.
    valid |= finite & visibility
    colours = point_colours(queries_y)
    writer = None
    with atomic_path(path) as tmp:
        try:
            for t, frame in enumerate(frames):
                if t >= T:
                    break
                h, w = frame.shape[:2]
                if writer is None:
                    radius = max(2, round(min(h, w) / 160))
                    # yuv420p (what every player reads) needs even sizes; odd sizes use yuv444p so the
                    # overlay keeps the video's exact size.
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (w, h), fps=fps, quality=7, macro_block_size=1,
                        pix_fmt_out="yuv420p" if (w % 2 == 0 and h % 2 == 0) else "yuv444p",
                        ffmpeg_log_level="error",
                    )
                    writer.send(None)
                writer.send(np.ascontiguousarray(draw_frame(frame, tracks, visibility, valid, colours, t, radius)))
                if progress:
                    progress(1)
        finally:
            if writer is not None:
                writer.close()
    return path
