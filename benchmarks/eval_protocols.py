"""Seconds per video for ``ptrack eval tapvid --protocol joint`` vs ``single`` on the mini DAVIS set.

Usage: python benchmarks/eval_protocols.py [--model lk] [--select median] [--data tests/fixtures/tapvid/mini_davis.pkl]
       [--dataset davis] [--mode first] [--limit K]

``joint`` tracks all queries of a video in one call (+ the 5x5 support grid); ``single`` makes one call
per query with the 8x8 local + 5x5 global support grids (CoTracker3 paper protocol). Only the tracker
time is counted (reading and resizing the videos is the same for both).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointtrack_cli.api import build_tracker  # noqa: E402
from pointtrack_cli.eval.datasets import open_dataset  # noqa: E402
from pointtrack_cli.eval.metrics import mean_over_videos  # noqa: E402
from pointtrack_cli.eval.runner import evaluate_tracker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lk", help="any model id, ensemble:... included (--select median: no weights)")
    ap.add_argument("--select", default="verifier", help="with --model ensemble:...: verifier, random or median")
    ap.add_argument("--dataset", default="davis")
    ap.add_argument("--data", default=str(ROOT / "tests" / "fixtures" / "tapvid" / "mini_davis.pkl"))
    ap.add_argument("--mode", default="first", choices=["first", "strided"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    # No support grid of the tracker's own: evaluate_tracker adds the protocol's support points.
    tracker = build_tracker(args.model, device=args.device, backward=args.mode == "strided", quiet=True,
                            support_grid=False, select=args.select)
    rows = {}
    for protocol in ("joint", "single"):
        ds = open_dataset(args.dataset, args.data)
        rows[protocol] = list(evaluate_tracker(tracker, ds, args.mode, protocol, limit=args.limit))

    print(f"model {tracker.name}, {args.dataset} ({args.data}), mode {args.mode}")
    print(f"{'video':<24}{'queries':>8}{'joint s':>10}{'single s':>10}{'ratio':>8}")
    for j, s in zip(rows["joint"], rows["single"]):
        print(f"{j.name:<24}{j.num_queries:>8}{j.seconds:>10.3f}{s.seconds:>10.3f}{s.seconds / max(j.seconds, 1e-9):>8.1f}")
    mj = float(np.mean([r.seconds for r in rows["joint"]]))
    ms = float(np.mean([r.seconds for r in rows["single"]]))
    print(f"{'seconds per video':<32}{mj:>10.3f}{ms:>10.3f}{ms / max(mj, 1e-9):>8.1f}")
    for protocol, res in rows.items():
        m = mean_over_videos([r.metrics for r in res])
        print(f"{protocol:>6}: AJ {100 * m['average_jaccard']:.1f}  <delta_avg {100 * m['average_pts_within_thresh']:.1f}"
              f"  OA {100 * m['occlusion_accuracy']:.1f}")


if __name__ == "__main__":
    main()
