"""Frames/s and peak memory of `ptrack track` on a video, for one or more models.

    python benchmarks/track_speed.py VIDEO --grid 20 --models lk,realtracker-offline [--weights-for ID=PATH ...]

Each model runs in its own process (so peak RSS is per run). Tracking time comes from the run's
tracks.npz metadata (excluding start-up and the overlay); wall time and peak RSS cover the process.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video")
    ap.add_argument("--grid", type=int, default=20)
    ap.add_argument("--models", default="lk")
    ap.add_argument("--weights-for", action="append", default=[], help="ID=PATH local weights for a model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--extra", default="", help="extra ptrack track arguments, e.g. '--max-size 512'")
    args = ap.parse_args()
    weights = dict(w.split("=", 1) for w in args.weights_for)
    print(f"video {args.video}, grid {args.grid}x{args.grid}, device {args.device}")
    print(f"{'model':28s} {'frames':>6s} {'track s':>8s} {'frames/s':>9s} {'wall s':>7s} {'peak RSS MiB':>13s}")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "pointtrack_cli", "track", args.video, "--model", model, "--grid", str(args.grid),
                   "--out", out, "--no-overlay", "--format", "npz", "--quiet", "--device", args.device,
                   "--precision", args.precision, *args.extra.split()]
            if model in weights:
                cmd += ["--weights", weights[model]]
            wall, rss, rc = run_measured(cmd)
            if rc != 0:
                print(f"{model:28s} failed (exit {rc})")
                continue
            with np.load(Path(out) / "tracks.npz", allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                frames = int(z["tracks"].shape[0])
            secs = float(meta["seconds"])
            print(f"{model:28s} {frames:6d} {secs:8.2f} {frames / secs:9.1f} {wall:7.1f} {rss:13.0f}")


if __name__ == "__main__":
    main()
