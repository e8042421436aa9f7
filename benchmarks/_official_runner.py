"""Child process of ``vs_official.py``: the official CoTracker3 predictor on one video (never imported by ptrack).

    PYTHONPATH=/path/to/co-tracker python benchmarks/_official_runner.py --mode offline|online
        --video V --weights W.pth --grid G --threads 2 --out result.npz

Runs the official code as its README / ``online_demo.py`` use it: decode the whole clip (offline:
``CoTrackerPredictor(video, grid_size=G)``) or iterate the frames and call ``CoTrackerOnlinePredictor`` every
8 frames (online). Decoding uses imageio-ffmpeg's ``read_frames`` (the reader behind the demos'
``imageio`` calls), RGB uint8. Writes ``tracks [T, N, 2]`` and ``visibility [T, N]`` to ``--out``.
"""
from __future__ import annotations

import argparse

import imageio_ffmpeg
import numpy as np
import torch


def frames(path: str):
    gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    meta = next(gen)
    w, h = meta["size"]
    for buf in gen:
        yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)


def run_offline(args) -> tuple[np.ndarray, np.ndarray]:
    from cotracker.predictor import CoTrackerPredictor  # the official code, from PYTHONPATH

    video = torch.from_numpy(np.stack(list(frames(args.video)))).permute(0, 3, 1, 2)[None].float()
    model = CoTrackerPredictor(checkpoint=args.weights)
    tracks, vis = model(video, grid_size=args.grid)
    return tracks[0].numpy(), vis[0].numpy()


def run_online(args) -> tuple[np.ndarray, np.ndarray]:
    from cotracker.predictor import CoTrackerOnlinePredictor  # the official code, from PYTHONPATH

    model = CoTrackerOnlinePredictor(checkpoint=args.weights)
    window: list[np.ndarray] = []
    out = (None, None)

    def step(chunk: list[np.ndarray], first: bool):
        x = torch.tensor(np.stack(chunk[-model.step * 2 :])).float().permute(0, 3, 1, 2)[None]
        return model(x, is_first_step=first, grid_size=args.grid, grid_query_frame=0)

    first = True
    i = -1
    for i, frame in enumerate(frames(args.video)):  # online_demo.py's loop
        if i % model.step == 0 and i != 0:
            out = step(window, first)
            first = False
        window.append(frame)
    out = step(window[-(i % model.step) - model.step - 1 :], first)
    return out[0][0].numpy(), out[1][0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["offline", "online"], required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        tracks, vis = run_offline(args) if args.mode == "offline" else run_online(args)
    np.savez(args.out, tracks=tracks, visibility=vis)


if __name__ == "__main__":
    main()
