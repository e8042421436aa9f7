"""Where the time of offline RealTracker goes, ptrack next to the official CoTracker3 predictor: seconds per stage.

    python benchmarks/realtracker_profile.py --official /path/to/co-tracker --video ../shared/videos/apple.mp4 \
        --grid 10 [--before /path/to/older/ptrack/checkout] [--threads 2] [--json profile.json]

Each side runs in its own child process on the same clip, grid, weights (the fixtures' fill-rule weights, written
in the official layout; speed does not depend on the values) and number of torch threads, the way a user runs it:
the official side as ``_official_runner.py`` does (``CoTrackerPredictor(video, grid_size=G)``), ptrack through
:func:`pointtrack_cli.api.track` (decoding included). ``--before`` adds a third column: ptrack from another checkout
(e.g. ``git worktree add /tmp/before <commit>``), so a change's effect per stage is measured in the same run.

Stages are timed by wrapping the modules and functions both implementations call by the same names (wall clock;
torch's CPU ops are synchronous): the feature network (``fnet``), the correlation sampling (official
``get_correlation_feat``; ptrack ``RealTracker._correlation`` less its ``corr_mlp`` calls), the correlation MLP (``corr_mlp``) and the update
transformer (official ``updateformer``; ptrack ``updateformer.forward_tokens`` + ``input_transform``, the same
layers). "other" is the rest of the run: decoding, resizing, weight loading, the remaining glue.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("fnet", "correlation", "corr_mlp", "transformer")


class Timers:
    """Accumulated wall seconds per stage; a stage nested in another (none here) would be counted twice."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
        return timed

    def hook_module(self, stage: str, module) -> None:
        start: list[float] = []
        module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

        def done(*_):
            self.seconds[stage] += time.perf_counter() - start.pop()
        module.register_forward_hook(done)


def child_official(args, timers: Timers) -> None:
    import numpy as np
    import torch
    from cotracker.predictor import CoTrackerPredictor  # the official code, from PYTHONPATH

    sys.path.insert(0, str(HERE))
    from _official_runner import frames

    video = torch.from_numpy(np.stack(list(frames(args.video)))).permute(0, 3, 1, 2)[None].float()
    predictor = CoTrackerPredictor(checkpoint=args.weights)
    net = predictor.model
    timers.hook_module("fnet", net.fnet)
    timers.hook_module("corr_mlp", net.corr_mlp)
    timers.hook_module("transformer", net.updateformer)
    net.get_correlation_feat = timers.wrap("correlation", net.get_correlation_feat)
    with torch.inference_mode():
        predictor(video, grid_size=args.grid)


def child_ptrack(args, timers: Timers) -> None:
    from pointtrack_cli import api
    from pointtrack_cli.models import realtracker as model_module
    from pointtrack_cli.trackers import realtracker as tracker_module

    # RealTracker._correlation (every ptrack version has it) = sampling + corr_mlp: the MLP is subtracted below.
    model_module.RealTracker._correlation = timers.wrap("correlation", model_module.RealTracker._correlation)
    load = tracker_module.load_realtracker

    def load_hooked(*a, **k):
        net = load(*a, **k)
        timers.hook_module("fnet", net.fnet)
        timers.hook_module("corr_mlp", net.corr_mlp)
        uf = net.updateformer
        uf.forward_tokens = timers.wrap("transformer", uf.forward_tokens)
        timers.hook_module("transformer", uf.input_transform)  # a Linear, called apart from forward_tokens
        return net

    tracker_module.load_realtracker = load_hooked
    api.track(args.video, model="realtracker-offline", grid=args.grid, weights=args.weights, device="cpu",
              precision="fp32")
    timers.seconds["correlation"] -= timers.seconds["corr_mlp"]


def run_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    timers = Timers()
    t0 = time.perf_counter()
    (child_official if args.side == "official" else child_ptrack)(args, timers)
    total = time.perf_counter() - t0
    print(json.dumps({"total": total, **timers.seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, help="local clone of facebookresearch/co-tracker")
    ap.add_argument("--before", type=Path, help="another ptrack checkout to profile next to this one")
    ap.add_argument("--video", required=True)
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--side", choices=["official", "ptrack"], help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        run_child(args)
        return
    if args.official is None:
        sys.exit("--official PATH (a co-tracker checkout) is required")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    sides = {"official": ("official", dict(env, PYTHONPATH=str(args.official.resolve()))),
             "ptrack": ("ptrack", dict(env, PYTHONPATH=str(ROOT)))}
    if args.before:
        sides = {"official": sides["official"], "ptrack before": ("ptrack", dict(env, PYTHONPATH=str(args.before.resolve()))),
                 "ptrack": sides["ptrack"]}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ptrack_profile_") as tmp:
        weights = Path(tmp) / "fill_offline.pth"
        sys.path.insert(0, str(ROOT))
        import torch

        from tests.helpers.realtracker_weights import fill_state_dict

        torch.save(fill_state_dict(False), weights)
        for name, (side, e) in sides.items():
            cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--video",
                   str(Path(args.video).resolve()), "--grid", str(args.grid), "--threads", str(args.threads),
                   "--weights", str(weights)]
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=tmp)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load1": load}
    print(f"offline RealTracker on {args.video}, grid {args.grid}, {args.threads} torch threads (seconds)")
    names = list(results)
    print(f"{'stage':12s}" + "".join(f"{n:>15s}" for n in names))
    for stage in (*STAGES, "other", "total"):
        row = []
        for n in names:
            r = results[n]
            v = r["total"] - sum(r[s] for s in STAGES) if stage == "other" else r[stage]
            row.append(f"{v:15.1f}")
        print(f"{stage:12s}" + "".join(row))
    print(f"{'load1':12s}" + "".join(f"{results[n]['load1']:15.1f}" for n in names))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
