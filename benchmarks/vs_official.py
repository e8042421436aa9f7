"""`ptrack track` against the official CoTracker3 predictor, side by side: wall time, peak RSS and their ratios.

    python benchmarks/vs_official.py --official /path/to/co-tracker --video ../shared/videos/apple.mp4 --grid 10
        [--model realtracker-offline|realtracker-online] [--runs 3] [--threads 2] [--weights W.pth]
        [--precision fp32|bf16] [--json result.json]

The official code is a local clone given by path (``git clone https://github.com/facebookresearch/co-tracker``),
never a dependency: it runs in a child process with ``PYTHONPATH`` pointing at the clone
(``_official_runner.py``). Both sides run as whole processes (start-up, weight loading, decoding, tracking,
writing the result), on the CPU with the same number of torch threads (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
and ``torch.set_num_threads``), the same clip, grid and weights; ptrack with ``--no-overlay``. Runs alternate
(ptrack, official, official, ptrack, ...) so that a change in machine load hits both sides alike; the table gives
every run with the 1-minute load average before it, wall and CPU seconds (user + system of the process: less
sensitive to other processes' load than the wall time) and peak RSS, then the medians and the ratios.

Weights: without ``--weights`` the fixtures' deterministic fill-rule weights (``tests/helpers/realtracker_weights``)
are saved as an official-layout ``.pth`` that both sides load (speed does not depend on the values). The script
also reports how far ptrack's tracks are from the official ones (same weights, so they should agree to float32
rounding, amplified by the random weights' drift).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _measure import run_measured_cpu  # noqa: E402


def official_commit(path: Path) -> str:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.strip()
    marker = path / "OFFICIAL_COMMIT"  # a checkout made with `git archive` has no .git: write the commit here
    return marker.read_text().strip() if marker.is_file() else "unknown (not a git checkout)"


def fill_weights(path: Path, online: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import torch  # only the weight writer needs torch in this process

    from tests.helpers.realtracker_weights import fill_state_dict

    torch.save(fill_state_dict(online), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="local clone of facebookresearch/co-tracker")
    ap.add_argument("--video", required=True)
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--model", default="realtracker-offline", choices=["realtracker-offline", "realtracker-online"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, help="official-layout .pth (default: fill-rule weights)")
    ap.add_argument("--precision", default="fp32", help="ptrack's --precision (the official side runs fp32)")
    ap.add_argument("--extra", default="", help="extra `ptrack track` arguments")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    online = args.model.endswith("online")
    if not (args.official / "cotracker" / "predictor.py").is_file():
        sys.exit(f"{args.official} is not a co-tracker checkout (no cotracker/predictor.py)")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    env_official = dict(env, PYTHONPATH=str(args.official.resolve()))
    with tempfile.TemporaryDirectory(prefix="ptrack_vs_official_") as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = tmp / f"fill_{'online' if online else 'offline'}.pth"
            fill_weights(weights, online)
        ptrack_cmd = [sys.executable, "-m", "pointtrack_cli", "track", args.video, "--model", args.model,
                      "--weights", str(weights), "--grid", str(args.grid), "--no-overlay", "--quiet",
                      "--device", "cpu", "--precision", args.precision, "--out", str(tmp / "ptrack"),
                      "--overwrite", *args.extra.split()]  # every run recomputes (no resume)
        official_cmd = [sys.executable, str(HERE / "_official_runner.py"), "--mode", "online" if online else "offline",
                        "--video", args.video, "--weights", str(weights), "--grid", str(args.grid),
                        "--threads", str(args.threads), "--out", str(tmp / "official.npz")]
        sides = {"ptrack": (ptrack_cmd, env), "official": (official_cmd, env_official)}
        runs: dict[str, list[dict]] = {"ptrack": [], "official": []}
        order = ["ptrack", "official"]
        print(f"{args.model} on {args.video}, grid {args.grid}, {args.threads} torch threads, ptrack precision "
              f"{args.precision}; official commit {official_commit(args.official)}", flush=True)
        print(f"{'run':>3s}  {'side':8s}  {'load1':>5s}  {'wall s':>7s}  {'CPU s':>6s}  {'peak RSS MiB':>12s}", flush=True)
        for i in range(args.runs):
            for side in order if i % 2 == 0 else order[::-1]:  # ABBA: drifts in load hit both sides
                cmd, e = sides[side]
                load = os.getloadavg()[0]
                wall, rss, cpu, rc = run_measured_cpu(cmd, env=e)
                if rc != 0:
                    sys.exit(f"{side} run failed with exit code {rc}: {' '.join(cmd)}")
                runs[side].append({"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "load1": load})
                print(f"{i + 1:3d}  {side:8s}  {load:5.1f}  {wall:7.1f}  {cpu:6.1f}  {rss:12.0f}", flush=True)
        med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in ("wall_s", "cpu_s", "rss_mib")} for s in runs}
        ratio_t = med["ptrack"]["wall_s"] / med["official"]["wall_s"]
        ratio_m = med["ptrack"]["rss_mib"] / med["official"]["rss_mib"]
        ratio_c = med["ptrack"]["cpu_s"] / med["official"]["cpu_s"]
        print(f"median    ptrack {med['ptrack']['wall_s']:.1f} s, {med['ptrack']['rss_mib']:.0f} MiB; "
              f"official {med['official']['wall_s']:.1f} s, {med['official']['rss_mib']:.0f} MiB")
        print(f"ratio ptrack / official: time {ratio_t:.3f} (target <= 0.75), peak RSS {ratio_m:.3f} (target <= 0.5); "
              f"CPU time {ratio_c:.3f}")
        with np.load(tmp / "ptrack" / "tracks.npz", allow_pickle=False) as z:
            pt, pv = z["tracks"], z["visibility"]
        with np.load(tmp / "official.npz") as z:
            ot, ov = z["tracks"], z["visibility"]
        diff = np.abs(pt - ot)
        agree = float((pv == ov).mean())
        print(f"tracks vs official: max |d| {np.nanmax(diff):.4f} px, median {np.nanmedian(diff):.2e} px; "
              f"visibility agrees on {100 * agree:.2f}% of (frame, point)")
        if args.json:
            args.json.write_text(json.dumps({
                "model": args.model, "video": args.video, "grid": args.grid, "threads": args.threads,
                "precision": args.precision, "official_commit": official_commit(args.official), "runs": runs,
                "median": med, "ratio_time": ratio_t, "ratio_rss": ratio_m, "ratio_cpu": ratio_c, "max_track_diff_px": float(np.nanmax(diff)),
                "visibility_agreement": agree}, indent=2))


if __name__ == "__main__":
    main()
