"""Acceptance check for TAPNext (``shared/specs/teachers.md``): the official Track-On-R wrapper vs ``ptrack track``.

    python benchmarks/acceptance_tapnext.py --tapnet /path/to/tapnet --track-on /path/to/track_on \
        --python /path/to/throwaway/venv/bin/python [--model tapnextpp] [--frames 12] [--points 20] \
        [--clips teddy.mp4,paragliding-launch.mp4,street_sample.mp4] [--threads 1] [--workdir DIR]

Unseen clips (the first ``--frames`` frames of real videos from ``../shared/videos``, or generated textured pans
when that folder is absent) and seeded random queries with varied query frames. Weights: the official
``TAPNext`` module's own PyTorch initialisation (``torch.manual_seed(--seed)``); the parameters it creates with
``torch.empty`` (RMSNorm scales, RG-LRU gates and ``a_param``, the causal convolution, the gated MLP's
up-projection) are filled by a seeded rule following recurrentgemma's initialisers (see ``OFFICIAL`` below). They
are saved in the TAPNext++ layout (``{"state_dict": {"tapnext.<key>": tensor}}``).

Official side (a subprocess with the throwaway venv's python): tapnet's network, the weights loaded as tapnet's
TAPNext++ loader does, and track_on's ``TAPNextPredictor.forward`` unchanged; a forward hook records the visible
and coordinate logits (``visibility_prob = sigmoid(logits)``, ``confidence = tracker_certainty``).
ptrack side: ``python -m pointtrack_cli track FRAMES --model ID --weights W.pt --queries Q.csv`` (a subprocess).

Prints, over the frames the tracker estimates (t >= query frame): median and 95th percentile of the position
error (px), visibility agreement, max |visibility_prob difference|, max |confidence difference|.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointtrack_cli.io.video import open_video  # noqa: E402  (the checkout, not an installed copy)
from pointtrack_cli.synthetic import translating_frames, write_png_folder  # noqa: E402
from pointtrack_cli.weights.registry import entry as get_entry  # noqa: E402

OFFICIAL = textwrap.dedent(
    r'''
    import json, math, sys
    from pathlib import Path
    import cv2, numpy as np, torch
    from torch import nn
    args = json.loads(sys.argv[1])
    sys.path[:0] = [args["tapnet"], args["track_on"]]
    from tapnet.tapnext import tapnext_lru_modules as lru
    from tapnet.tapnext.tapnext_torch import TAPNext
    from tapnet.tapnext.tapnext_torch_utils import tracker_certainty
    from ensemble.tapnext.tapnext_predictor import TAPNextPredictor
    torch.set_num_threads(args["threads"])
    torch.manual_seed(args["seed"])
    cfg = args["config"]
    model = TAPNext(image_size=tuple(cfg["image_size"]), width=cfg["width"], num_heads=cfg["num_heads"],
                    lru_width=cfg["lru_width"], depth=cfg["depth"])
    g = torch.Generator().manual_seed(args["seed"] + 1)
    with torch.no_grad():  # the torch.empty parameters, recurrentgemma-style initialisers
        for mod in model.modules():
            if isinstance(mod, lru.RMSNorm):
                mod.scale.zero_()
            elif isinstance(mod, lru.BlockDiagonalLinear):
                mod.w.normal_(0, math.sqrt(mod.w_init_variance_scale / mod.block_width), generator=g)
                mod.b.zero_()
            elif isinstance(mod, lru.RGLRU):
                u = torch.rand(mod.a_param.shape, generator=g) * (0.999**2 - 0.9**2) + 0.9**2
                mod.a_param.copy_(torch.log(torch.expm1(-0.5 * torch.log(u))))
            elif isinstance(mod, lru.CausalConv1D):
                mod.w.normal_(0, math.sqrt(mod.w_init_variance_scale / mod.temporal_width), generator=g)
                mod.b.zero_()
            elif isinstance(mod, lru.Einsum):
                mod.w.normal_(0, math.sqrt(mod.w_init_variance_scale / mod.w_shape[1]), generator=g)
                mod.b.zero_()
    sd = model.state_dict()
    torch.save({"state_dict": {"tapnext." + k: v for k, v in sd.items()}}, args["weights"])
    # load as tapnet's TAPNext++ loader does
    ckpt = torch.load(args["weights"], map_location="cpu", weights_only=True)
    state_dict = {k.removeprefix("tapnext."): v for k, v in ckpt.get("state_dict", ckpt).items()}
    net = TAPNext(image_size=tuple(cfg["image_size"]), width=cfg["width"], num_heads=cfg["num_heads"],
                  lru_width=cfg["lru_width"], depth=cfg["depth"])
    net.load_state_dict(state_dict)
    net.eval()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append((o[0].detach(), o[1].detach(), o[2].detach())))
    pred = TAPNextPredictor.__new__(TAPNextPredictor)
    nn.Module.__init__(pred)
    pred.interp_shape = tuple(args["resolution"])
    pred.model = net
    for clip in args["clips"]:
        files = sorted(Path(clip["frames"]).glob("*.png"))
        frames = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files])
        rgbs = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()
        queries = torch.from_numpy(np.load(clip["queries"])).float()[None]
        calls.clear()
        t0 = __import__("time").time()
        with torch.no_grad():
            tracks, visibility = pred(rgbs, queries)
        secs = __import__("time").time() - t0
        yx = torch.cat([c[0] for c in calls], dim=1)  # [1, T, N, 2]
        logits = torch.cat([c[1] for c in calls], dim=1)
        vis_logits = torch.cat([c[2] for c in calls], dim=1)[0, ..., 0]
        cert = tracker_certainty(yx.transpose(1, 2), logits.transpose(1, 2))[0, ..., 0].transpose(0, 1)
        np.savez(clip["out"], tracks=tracks[0].numpy(), visibility=visibility[0].numpy(),
                 visible_logits=vis_logits.numpy(), certainty=cert.numpy(), seconds=secs)
        print(f"official {Path(clip['frames']).name}: {len(frames)} frames in {secs:.1f} s", flush=True)
    '''
)


def make_clips(tmp: Path, frames: int, points: int, seed: int, names: list[str]) -> list[dict]:
    rng = np.random.default_rng(seed)
    clips = []
    videos = ROOT.parent / "shared" / "videos"
    for i, name in enumerate(names):
        path = videos / name
        if path.is_file():
            reader = open_video(path, start=5, end=5 + frames)
            arr = np.stack([f for _, f in zip(range(frames), reader)])
        else:
            arr = np.stack(list(translating_frames(frames, 120, 160, (1.3, -0.6), seed=100 + i)))
            name = f"pan{i}"
        folder = write_png_folder(arr, tmp / f"clip_{Path(name).stem}")
        t, h, w = arr.shape[:3]
        q = np.stack([rng.integers(0, max(1, t - 2), points).astype(np.float64),
                      rng.uniform(0, w - 1, points), rng.uniform(0, h - 1, points)], axis=1)
        q = np.round(q * 4) / 4
        np.save(tmp / f"q_{i}.npy", q)
        csv = tmp / f"q_{i}.csv"
        csv.write_text("t,x,y\n" + "".join(f"{int(a)},{float(b)!r},{float(c)!r}\n" for a, b, c in q))
        clips.append({"frames": str(folder), "queries": str(tmp / f"q_{i}.npy"), "csv": str(csv),
                      "out": str(tmp / f"official_{i}.npz"), "name": Path(name).stem, "hw": [h, w]})
    return clips


def run_ptrack(args, clip: dict, weights: Path, out: Path) -> float:
    cmd = ["track", clip["frames"], "--model", args.model, "--weights", str(weights), "--queries", clip["csv"],
           "--out", str(out), "--no-overlay", "--quiet", "--format", "npz", "--device", "cpu"]
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([sys.executable, "-m", "pointtrack_cli", *cmd], check=True, cwd=ROOT, env=env)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tapnet", required=True)
    ap.add_argument("--track-on", required=True)
    ap.add_argument("--python", required=True, help="python of the throwaway venv with einops + torchvision")
    ap.add_argument("--model", default="tapnextpp")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--clips", default="teddy.mp4,paragliding-launch.mp4,street_sample.mp4")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", help="keep clips, weights and official outputs here (reused when the job is the same)")
    args = ap.parse_args()
    entry = get_entry(args.model)
    config = {k: entry["config"][k] for k in ("width", "depth", "num_heads", "lru_width", "image_size")}
    with tempfile.TemporaryDirectory(prefix="ptrack_acc_tapnext_") as tmp:
        tmp = Path(args.workdir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        clips = make_clips(tmp, args.frames, args.points, args.seed, args.clips.split(","))
        weights = tmp / "tapnext_init.pt"
        job = {"tapnet": args.tapnet, "track_on": args.track_on, "seed": args.seed, "config": config,
               "weights": str(weights), "clips": clips, "threads": args.threads,
               "resolution": entry["config"]["model_resolution"]}
        done = tmp / "official_job.json"
        if (done.is_file() and json.loads(done.read_text()) == job and weights.is_file()
                and all(Path(c["out"]).is_file() for c in clips)):
            print(f"official outputs reused from {tmp}", flush=True)
        else:
            script = tmp / "official.py"
            script.write_text(OFFICIAL)
            subprocess.run([args.python, str(script), json.dumps(job)], check=True)
            done.write_text(json.dumps(job))
        all_err, agree, dprob, dconf = [], [], [], []
        for i, clip in enumerate(clips):
            secs = run_ptrack(args, clip, weights, tmp / f"out_{i}")
            with np.load(clip["out"]) as f:
                off = {k: f[k] for k in f.files}
            with np.load(tmp / f"out_{i}" / "tracks.npz", allow_pickle=False) as f:
                mine = {k: f[k] for k in ("tracks", "visibility", "visibility_prob", "confidence")}
            q = np.load(clip["queries"])
            est = np.arange(len(off["tracks"]))[:, None] >= q[None, :, 0]
            err = np.linalg.norm(mine["tracks"] - off["tracks"], axis=-1)[est]
            prob = 1 / (1 + np.exp(-off["visible_logits"].astype(np.float64)))
            all_err.append(err)
            agree.append((mine["visibility"] == off["visibility"])[est])
            dprob.append(np.abs(mine["visibility_prob"] - prob)[est])
            dconf.append(np.abs(mine["confidence"] - off["certainty"])[est])
            print(f"{clip['name']} {clip['hw'][1]}x{clip['hw'][0]}, {len(off['tracks'])} frames, {len(q)} points: "
                  f"official {float(off['seconds']):.1f} s, ptrack track {secs:.1f} s (incl. loading); "
                  f"median err {np.median(err):.2e} px, max {err.max():.2e} px, "
                  f"visible official {off['visibility'][est].mean():.2f}", flush=True)
        err, agree = np.concatenate(all_err), np.concatenate(agree)
        dprob, dconf = np.concatenate(dprob), np.concatenate(dconf)
        print(f"model {args.model} ({config['width']} wide, {config['depth']} layers), {len(err)} (frame, point) pairs "
              f"with t >= query frame")
        print(f"position error: median {np.median(err):.2e} px (< 0.05), 95th pct {np.percentile(err, 95):.2e} px (< 0.5), "
              f"max {err.max():.2e} px")
        print(f"visibility agreement {100 * agree.mean():.2f} % (>= 98 %); visibility_prob max |diff| {dprob.max():.2e} "
              f"(< 1e-3); confidence max |diff| {dconf.max():.2e}")
        ok = np.median(err) < 0.05 and np.percentile(err, 95) < 0.5 and agree.mean() >= 0.98 and dprob.max() < 1e-3
        print("ACCEPTANCE", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
