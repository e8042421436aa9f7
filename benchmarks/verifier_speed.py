"""Seconds and peak memory of the Track-On-R verifier's forward pass alone (no teachers, no decoding).

Usage: python benchmarks/verifier_speed.py [--frames 24,48,100] [--points 256] [--candidates 6]
       [--size 384x512] [--device cpu|cuda] [--precision fp32|fp16|bf16] [--weights random|fill]
       [--query-frames first|spread]

Each case runs in a child process, so the peak resident memory (RSS) of one case is not inflated by the
previous ones; the child also reports its RSS just before the forward pass (Python + torch + model +
inputs), so the forward's own share is the difference. On CUDA the table adds
``torch.cuda.max_memory_allocated`` of the timed pass (after one untimed warm-up pass; on CPU the one
pass is timed, as the first pass is not measurably slower there and T=100 takes minutes).

Inputs are synthetic: random uint8 frames of ``--size`` (default 384x512, the verifier's own input size,
so its internal resize is a no-op), N query points (all on frame 0 like a grid, or ``spread`` over the
frames like TAP-Vid's strided queries, which makes pass 1 run the CNN on more frames) and M candidates
per point as random walks around the query. The weights do not change the amount of work: ``random``
is PyTorch's default initialisation (seed 0); ``fill`` is the tests' deterministic fill rule
(``tests/verifier_weights.py``). Neither is trained.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the source tree, not an installed copy
sys.path.insert(0, str(Path(__file__).parent))

from _measure import run_measured  # noqa: E402


def _rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def child(args: argparse.Namespace) -> None:
    """One case: build the model and inputs, time one forward pass, write a JSON result to ``args.result``."""
    import numpy as np
    import torch

    from pointtrack_cli.models.verifier import Verifier, load_verifier

    torch.manual_seed(0)
    if args.weights == "fill":
        from tests.helpers.verifier_weights import fill_state_dict

        model = load_verifier(fill_state_dict(), "fill rule")
    else:
        model = Verifier().eval()
    dev = torch.device(args.device)
    model = model.to(dev)
    t, n, m = args.frames, args.points, args.candidates
    h, w = args.hw
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    tq = np.zeros(n) if args.query_frames == "first" else rng.integers(0, t, n).astype(np.float64)
    q_xy = rng.uniform([0, 0], [w - 1, h - 1], (n, 2))
    # Random walks (3 px steps) from the query position, one per candidate, clipped to the frame.
    steps = rng.normal(0, 3.0, (t, n, m, 2)).cumsum(0)
    cand = np.clip(q_xy[None, :, None, :] + steps, [0, 0], [w - 1, h - 1]).astype(np.float32)
    queries = torch.from_numpy(np.concatenate([tq[:, None], q_xy], 1).astype(np.float32))
    cand_t = torch.from_numpy(cand)

    import contextlib

    ctx = contextlib.nullcontext()
    if dev.type == "cuda" and args.precision != "fp32":
        ctx = torch.autocast("cuda", dtype=torch.float16 if args.precision == "fp16" else torch.bfloat16)

    def forward() -> None:
        with torch.inference_mode(), ctx:
            model(video, cand_t, queries)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        forward()  # warm-up: CUDA context, cuDNN algorithm choice
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    forward()
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "rss_before_mib": rss_before,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    }
    Path(args.result).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="24,48,100", help="comma-separated T values")
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--size", default="384x512", help="frame HxW")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="CUDA autocast dtype")
    ap.add_argument("--weights", default="random", choices=["random", "fill"])
    ap.add_argument("--query-frames", default="first", choices=["first", "spread"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.hw = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        args.frames = int(args.frames)
        child(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA GPU here")
    rows = []
    for t in (int(v) for v in args.frames.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "r.json"
            cmd = [sys.executable, __file__, "--child", "--result", str(result), "--frames", str(t),
                   "--points", str(args.points), "--candidates", str(args.candidates), "--size", args.size,
                   "--device", args.device, "--precision", args.precision, "--weights", args.weights,
                   "--query-frames", args.query_frames]
            wall, peak, rc = run_measured(cmd)
            if rc != 0 or not result.is_file():
                rows.append((t, None, peak, rc))
                print(f"T={t}: child failed (exit {rc})", file=sys.stderr)
                continue
            rows.append((t, json.loads(result.read_text()), peak, rc))
    first = next((r[1] for r in rows if r[1]), {})
    print(f"Track-On-R verifier forward pass: N={args.points} points, M={args.candidates} candidates, frames "
          f"{args.hw[0]}x{args.hw[1]}, queries {args.query_frames}, {args.weights} weights (untrained), "
          f"device {first.get('device_name', args.device)}, {args.precision if args.device == 'cuda' else 'fp32'}, "
          f"torch threads {first.get('threads', '?')}")
    head = f"{'T':>5} {'forward s':>10} {'s/frame':>8} {'peak RSS MiB':>13} {'RSS before MiB':>15}"
    if args.device == "cuda":
        head += f" {'CUDA peak MiB':>14}"
    print(head)
    for t, r, peak, rc in rows:
        if r is None:
            print(f"{t:>5} {'failed (exit ' + str(rc) + ')':>10}")
            continue
        line = f"{t:>5} {r['seconds']:>10.2f} {r['seconds'] / t:>8.3f} {peak:>13.0f} {r['rss_before_mib']:>15.0f}"
        if args.device == "cuda":
            line += f" {r['cuda_peak_mib']:>14.0f}"
        print(line)


if __name__ == "__main__":
    main()
