"""TAPNext streams: peak RSS for a 3,000-frame video over that for a 300-frame one (acceptance: <= 1.2).

    python benchmarks/tapnext_memory.py [--config reduced|full] [--resolution 64x64] [--grid 4] [--lengths 300,3000]

Both videos are generated mp4 files (textured pan, 160x128 px), read by ptrack's streaming reader, resized and
fed to the network one frame at a time by the ``tapnext`` tracker (``trackers/tapnext.py``), each length in its
own process; the peak RSS of each process and the ratio are printed.

The default is a REDUCED configuration so that 3,000 frames take minutes on a 2-core CPU: width 64, 2 layers,
4 heads (TAPNext-B: 768, 12, 12) and 64x64 frames (64 image tokens instead of 1,024). The streaming code path
(reader, resize, per-frame network call, recurrent state, output buffers) is the same as for TAPNext-B; what
grows with the video is only the ``[T, N]`` output arrays (a few bytes per frame and point). ``--config full``
runs TAPNext-B (~3.6 s per frame at 256x256 with 400 points on 2 idle cores: hours for 3,000 frames).
Weights are the module's fresh initialisation (memory and speed do not depend on their values).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import run_measured  # noqa: E402

CONFIGS = {
    "reduced": {"width": 64, "depth": 2, "num_heads": 4, "lru_width": 64, "image_size": [256, 256]},
    "full": {"width": 768, "depth": 12, "num_heads": 12, "lru_width": 768, "image_size": [256, 256]},
}


def child(args) -> None:
    import numpy as np
    import torch

    from pointtrack_cli.io.video import open_video
    from pointtrack_cli.trackers import tapnext
    from pointtrack_cli.trackers.base import BuildOptions

    torch.set_num_threads(args.threads)
    config = json.loads(args.config_json)
    h, w = (int(v) for v in args.resolution.split("x"))
    entry = {"id": "tapnext", "architecture": "tapnext", "config": {**config, "model_resolution": [h, w]}}
    tracker = tapnext.build(entry, tapnext.read_weights(Path(args.weights)), {"path": args.weights}, BuildOptions())
    video = open_video(args.video)
    g = np.linspace(0.1, 0.9, args.grid)
    xs, ys = np.meshgrid(g * (video.width - 1), g * (video.height - 1))
    queries = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], axis=1)
    t0 = time.perf_counter()
    out = tracker.track(video, queries)
    secs = time.perf_counter() - t0
    print(json.dumps({"frames": int(out.tracks.shape[0]), "track_seconds": secs}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="reduced")
    ap.add_argument("--resolution", default="64x64", help="frames fed to the network (multiples of 8)")
    ap.add_argument("--grid", type=int, default=4, help="grid x grid query points on frame 0")
    ap.add_argument("--lengths", default="300,3000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--config-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from pointtrack_cli.models.tapnext import TAPNext
    from pointtrack_cli.synthetic import translating_frames, write_mp4

    config = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "tapnext_init.pt"
        torch.manual_seed(0)
        torch.save(TAPNext(**config).state_dict(), weights)
        print(f"config {args.config} ({json.dumps(config)}), frames at {args.resolution}, {args.grid ** 2} points")
        rows = []
        for n in [int(v) for v in args.lengths.split(",")]:
            video = write_mp4(translating_frames(n, 128, 160, (0.4, 0.2), seed=1), tmp / f"pan_{n}.mp4", fps=30)
            cmd = [sys.executable, __file__, "--child", "--video", str(video), "--weights", str(weights),
                   "--config-json", json.dumps(config), "--resolution", args.resolution, "--grid", str(args.grid),
                   "--threads", str(args.threads)]
            secs, rss, rc = run_measured(cmd)
            if rc != 0:
                sys.exit(f"run on {n} frames failed with exit code {rc}")
            rows.append((n, secs, rss))
            print(f"{n:6d} frames: {secs:7.1f} s wall, {n / secs:6.1f} frames/s, peak RSS {rss:7.1f} MiB", flush=True)
        base = rows[0][2]
        for n, _, rss in rows[1:]:
            print(f"peak RSS ratio {n} / {rows[0][0]} frames: {rss / base:.3f} (acceptance <= 1.2)")


if __name__ == "__main__":
    main()
