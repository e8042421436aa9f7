"""ProTracker speed: frames/s at 256x256 with 1,000 points (a 32x32 grid minus 24), CPU.

Usage: python benchmarks/protracker_speed.py [--frames 40] [--points 1000] [--size 256] [--threads 2]
       [--variants full no-keypoints dis-fast]

The clip is a generated texture under slow translation + rotation, with a bar sweeping across it
(so the backward pass has occluded points to revisit). Queries are on frame 0 (one forward pass +
backward pass), and a second timing puts them on the middle frame (both time directions, as
TAP-Vid 'strided' needs). Reported: wall-clock frames/s of ``ProTracker.track``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointtrack_cli.io.video import ArrayVideo  # noqa: E402
from pointtrack_cli.trackers.protracker import ProTracker  # noqa: E402

VARIANTS = {
    "full": {},
    "no-keypoints": {"keypoints": False},
    "flow-only": {"keypoints": False, "feature_filter": False},
    "dis-fast": {"flow": "dis-fast"},
}


def make_clip(frames: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = size * 2
    img = np.zeros((big, big, 3), np.float32)
    for sigma, amp in ((1.0, 0.5), (2.5, 1.0), (6.0, 1.0)):
        n = cv2.GaussianBlur(rng.standard_normal((big, big, 3)).astype(np.float32), (0, 0), sigma)
        img += amp * n / n.std()
    tex = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    out = np.zeros((frames, size, size, 3), np.uint8)
    for k in range(frames):
        m = cv2.getRotationMatrix2D((big / 2, big / 2), 0.3 * k, 1.0)
        m[:, 2] += (-size / 2 + 1.2 * k, -size / 2 + 0.6 * k)
        out[k] = cv2.warpAffine(tex, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        x0 = int(-size / 4 + k * size / frames * 1.5)
        out[k, size // 3: size // 2, max(x0, 0): max(x0 + size // 6, 0)] = (90, 140, 120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["full", "no-keypoints", "dis-fast"], choices=list(VARIANTS))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    clip = make_clip(args.frames, args.size)
    g = int(np.ceil(np.sqrt(args.points)))
    lin = np.linspace(4, args.size - 5, g)
    xy = np.stack(np.meshgrid(lin, lin), -1).reshape(-1, 2)[: args.points]
    print(f"{args.frames} frames at {args.size}x{args.size}, {len(xy)} points, {args.threads} threads")
    print(f"{'variant':<14}{'queries':<10}{'fps':>8}{'seconds':>9}")
    for name in args.variants:
        for label, t in (("frame 0", 0), ("middle", args.frames // 2)):
            q = np.concatenate([np.full((len(xy), 1), float(t)), xy], 1)
            tr = ProTracker.from_options(**VARIANTS[name])
            start = time.perf_counter()
            tr.track(ArrayVideo(clip), q)
            sec = time.perf_counter() - start
            print(f"{name:<14}{label:<10}{args.frames / sec:>8.2f}{sec:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
