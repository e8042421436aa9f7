"""Online RealTracker memory does not grow with video length: peak RSS for a 300- and a 3,000-frame video.

    python benchmarks/online_memory.py [--weights scaled_online.pth] [--resolution 64x96] [--grid 3] [--iters 1]

Defaults keep the 3,000-frame run to minutes on a 2-core CPU (RealTracker costs ~80 GFLOP per window and
iteration at 100 points): memory per window does not depend on the iterations or the point count.

Both videos are generated (textured pan, 160x128 px) and tracked with `ptrack track --model
realtracker-online` in separate processes; peak RSS of each process is printed with the ratio. The online
tracker streams frames from disk, so the ratio should stay near 1 (acceptance: <= 1.2).

Without --weights the model's freshly initialised weights are saved to a temporary checkpoint:
memory and speed do not depend on the weight values (the tracks are then meaningless).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="scaled_online.pth (default: random init, see above)")
    ap.add_argument("--resolution", default="64x96")
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--iters", type=int, default=1, help="refinement iterations (memory does not depend on them)")
    ap.add_argument("--lengths", default="300,3000")
    ap.add_argument("--overlay", action="store_true", help="also write overlay.mp4 (streams too)")
    args = ap.parse_args()

    import torch

    from pointtrack_cli.models.realtracker import RealTracker
    from pointtrack_cli.synthetic import translating_frames, write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = tmp / "random_online.pth"
            torch.save(RealTracker(online=True).state_dict(), weights)
        rows = []
        for n in [int(v) for v in args.lengths.split(",")]:
            video = write_mp4(translating_frames(n, 128, 160, (0.4, 0.2), seed=1), tmp / f"pan_{n}.mp4", fps=30)
            cmd = [sys.executable, "-m", "pointtrack_cli", "track", str(video), "--model", "realtracker-online",
                   "--weights", str(weights), "--resolution", args.resolution, "--grid", str(args.grid), "--iters", str(args.iters),
                   "--out", str(tmp / f"out_{n}"), "--quiet", "--device", "cpu"]
            if not args.overlay:
                cmd.append("--no-overlay")
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
