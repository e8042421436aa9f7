"""Acceptance check of ``tapir`` / ``bootstapir`` against the official wrapper (shared/specs/teachers.md).

    python benchmarks/acceptance_tapir.py --official-python /path/to/venv/bin/python \
        --tapnet /path/to/tapnet --track-on /path/to/track_on [--ids tapir,bootstapir,bootstapir@512x512]

For each id: the official ``TAPIR`` module is built with its own PyTorch initialisation (seeded) in the
official environment and saved in the official layout; unseen generated clips (pointtrack_cli.synthetic,
sizes and seeds used nowhere else) and random queries on random frames are tracked by the official
Track-On-R wrapper (``TAPIRPredictor``; ``interp_shape`` set for an ``@HxW`` id) in that environment and by
``ptrack track FRAMES --model ID --weights W --queries Q.csv`` in this one. Every frame of every point is
compared (TAPIR estimates all frames). Pass: median error < 0.05 px, 95th percentile < 0.5 px, visibility
agreement >= 98 %, ``visibility_prob`` within 1e-3.

``--registry-json`` (e.g. a notes file with the ``tapir`` / ``bootstapir`` entries) injects entries that the
package registry does not have yet; without it ``ptrack`` must already know the ids.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from pointtrack_cli.synthetic import translating_frames, write_png_folder

CLIPS = [  # (frames, height, width, velocity, seed): none of these is used by the tests or the fixtures
    (20, 180, 240, (1.3, -0.6), 901),
    (16, 224, 160, (-0.8, 1.1), 902),
    (24, 120, 300, (2.1, 0.4), 903),
]
POINTS = 24

OFFICIAL = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    args = json.loads(sys.argv[1])
    sys.path[:0] = [args["tapnet"], args["track_on"]]
    torch.set_num_threads(args["threads"])
    from tapnet.torch import tapir_model
    from ensemble.bootstapir.bootstapir_predictor import TAPIRPredictor
    torch.manual_seed(args["seed"])
    net = tapir_model.TAPIR(pyramid_level=args["pyramid_level"], extra_convs=args["extra_convs"])
    torch.save(net.state_dict(), args["weights"])
    pred = TAPIRPredictor(args["weights"])
    pred.interp_shape = tuple(args["resolution"])
    raw = {}
    inner = pred.model.forward
    def spy(video, query_points, **kw):
        out = inner(video=video, query_points=query_points, **kw)
        raw["occ"], raw["ed"] = out["occlusion"][0], out["expected_dist"][0]
        return out
    pred.model.forward = spy
    for clip in args["clips"]:
        z = np.load(clip["inputs"])
        rgbs = torch.from_numpy(z["video"]).permute(0, 3, 1, 2)[None].float()
        q = torch.from_numpy(z["queries"]).float()[None]
        with torch.no_grad():
            tracks, vis = pred(rgbs, q)
        prob = ((1 - torch.sigmoid(raw["occ"])) * (1 - torch.sigmoid(raw["ed"]))).T
        np.savez(clip["official"], tracks=tracks[0].numpy(), visibility=vis[0].numpy(), visibility_prob=prob.numpy())
    """
)

SHIM = textwrap.dedent(
    """
    import json, sys
    from pointtrack_cli.weights.registry import registry
    from pointtrack_cli.trackers import registry as trackers_registry, tapir
    extra = json.load(open(sys.argv.pop(1)))
    reg = registry()
    for k, v in extra.items():
        reg.setdefault(k, {**v, "id": k})
    trackers_registry.ARCHITECTURES.setdefault("tapir", tapir)
    from pointtrack_cli.cli import main
    sys.argv[0] = "ptrack"
    main()
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-python", required=True, help="python of the environment with the official code's deps")
    ap.add_argument("--tapnet", required=True, type=Path)
    ap.add_argument("--track-on", required=True, type=Path)
    ap.add_argument("--ids", default="tapir,bootstapir")
    ap.add_argument("--registry-json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="acceptance_tapir_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4242)
    clips = []
    for i, (t, h, w, vel, seed) in enumerate(CLIPS):
        video = np.stack(list(translating_frames(t, h, w, vel, seed=seed)))
        queries = np.stack([rng.integers(0, t, POINTS), rng.uniform(0, w - 1, POINTS), rng.uniform(0, h - 1, POINTS)], 1)
        folder = write_png_folder(video, work / f"clip{i}")
        np.savetxt(work / f"clip{i}.csv", queries, delimiter=",", header="t,x,y", comments="", fmt="%.6f")
        np.savez(work / f"clip{i}_inputs.npz", video=video, queries=queries.astype(np.float32))
        clips.append({"folder": folder, "csv": work / f"clip{i}.csv", "inputs": work / f"clip{i}_inputs.npz"})
    print(f"work dir {work}; {len(CLIPS)} clips, {POINTS} queries each")
    print(f"{'id':22s} {'clip':>4s} {'median px':>10s} {'p95 px':>8s} {'max px':>8s} {'vis agree':>10s} {'max dprob':>10s}")
    failed = False
    for model in args.ids.split(","):
        base, _, res = model.partition("@")
        resolution = [int(v) for v in res.split("x")] if res else [256, 256]
        pyramid_level, extra_convs = (1, True) if base == "bootstapir" else (0, False)
        tag = model.replace("@", "_")
        weights = work / f"{tag}_official_init_{'bootstapir' if extra_convs else 'tapir'}.pt"
        spec = {
            "tapnet": str(args.tapnet), "track_on": str(args.track_on), "threads": args.threads, "seed": 7,
            "pyramid_level": pyramid_level, "extra_convs": extra_convs, "weights": str(weights), "resolution": resolution,
            "clips": [{"inputs": str(c["inputs"]), "official": str(work / f"{tag}_clip{i}_official.npz")} for i, c in enumerate(clips)],
        }
        subprocess.run([args.official_python, "-c", OFFICIAL, json.dumps(spec)], check=True)
        errs, agree, dprob = [], [], []
        for i, c in enumerate(clips):
            out = work / f"{tag}_clip{i}_ptrack"
            cli = [sys.executable, "-c", SHIM, str(args.registry_json)] if args.registry_json else [sys.executable, "-m", "pointtrack_cli"]
            subprocess.run(cli + ["track", str(c["folder"]), "--model", model, "--weights", str(weights), "--queries", str(c["csv"]),
                                  "--out", str(out), "--no-overlay", "--quiet", "--device", "cpu", "--format", "npz"], check=True)
            off = np.load(work / f"{tag}_clip{i}_official.npz")
            with np.load(out / "tracks.npz", allow_pickle=False) as z:
                e = np.linalg.norm(z["tracks"].astype(np.float64) - off["tracks"], axis=-1).ravel()
                a = float(np.mean(z["visibility"] == off["visibility"]))
                d = float(np.max(np.abs(z["visibility_prob"].astype(np.float64) - off["visibility_prob"])))
            errs.append(e)
            agree.append(a)
            dprob.append(d)
            print(f"{model:22s} {i:4d} {np.median(e):10.2e} {np.percentile(e, 95):8.2e} {e.max():8.2e} {100 * a:9.2f}% {d:10.2e}")
        e = np.concatenate(errs)
        med, p95, vis, dp = float(np.median(e)), float(np.percentile(e, 95)), float(np.mean(agree)), max(dprob)
        ok = med < 0.05 and p95 < 0.5 and vis >= 0.98 and dp <= 1e-3
        failed |= not ok
        print(f"{model:22s} {'all':>4s} {med:10.2e} {p95:8.2e} {e.max():8.2e} {100 * vis:9.2f}% {dp:10.2e}  {'PASS' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
