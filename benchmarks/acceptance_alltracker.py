"""Acceptance check of the AllTracker port (``shared/specs/teachers.md``): official wrapper vs ``ptrack track``.

    python benchmarks/acceptance_alltracker.py TRACK_ON_CHECKOUT --official-python VENV/bin/python [--work DIR]

Weights: the official module's own PyTorch initialisation (``Net(16)`` of ``ensemble/alltracker/alltracker.py``
after ``torch.manual_seed(SEED)``, its ConvNeXt built with ``init_weights=False``: the official default
downloads ImageNet ConvNeXt-Tiny weights, which cannot be fetched here), saved in the released layout
(``{"model": state_dict}``). Clips: generated here, unseen by the fixtures (a textured background panning
under a textured square moving the other way, so points get occluded), random queries. The official side
(gorkaydemir/track_on ``ensemble/alltracker/alltracker_predictor.py``) runs in a subprocess with
``--official-python`` (an environment with torch, einops and torchvision's ``ops``), from a temporary copy of
the package whose only edit removes the final ``visibility > 0.6`` line so the visibility product it thresholds
is returned too (the threshold is then applied here in float32, as that line does); ``torch.Tensor.cuda`` is the
identity there (the official code calls ``.cuda()``). ptrack runs as a user would:
``ptrack track FRAMES/ --model alltracker --weights W --queries Q.csv [--resolution HxW]``.

AllTracker is causal, so the comparison covers frames ``t >= t_n`` of each point, minus the documented
deviations (a query on the last or second-to-last frame: ptrack reports the query point itself on its own
frame; those cells are counted and listed separately). Passes when median < 0.05 px, p95 < 0.5 px, visibility
agreement >= 98 % and max |visibility_prob difference| <= 1e-3.

Clips (CPU cost: the official side and ptrack each take minutes per clip on 2 cores):
* 18 frames 360x480 at the native 384x512, query frames 0, 4, 16 and 17 (runs of 18, 14, 2 and 0 frames);
* 130 frames 240x320 at 256x256 (``--resolution`` / ``interp_shape``), all points on frame 0: the 130-frame
  run takes the ``forward_sliding`` branch (more than 128 frames).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pointtrack_cli.synthetic import texture, write_png_folder

SEED = 20250901
CLIPS = [  # (frames, height, width, points, query frames, resolution, seed)
    (18, 360, 480, 40, (0, 4, 16, 17), (384, 512), 21),
    (130, 240, 320, 24, (0,), (256, 256), 22),
]

OFFICIAL = r'''
import shutil, sys, tempfile
from pathlib import Path
import numpy as np, torch
checkout, mode, path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.Tensor.cuda = lambda self, *a, **k: self
tmp = Path(tempfile.mkdtemp())
pkg = tmp / "ensemble" / "alltracker"
shutil.copytree(checkout / "ensemble" / "alltracker", pkg)
(tmp / "ensemble" / "__init__.py").write_text("")
(pkg / "__init__.py").write_text("")
p = pkg / "alltracker_predictor.py"
text = p.read_text()
old = "visibility = (visibility > vis_thr).float()"
assert text.count(old) == 1
p.write_text(text.replace(old, "pass"))
sys.path.insert(0, str(tmp))
import ensemble.alltracker.blocks as blocks
init = blocks.ConvNeXt.__init__
def no_download(self, *a, **k):
    k["init_weights"] = False
    init(self, *a, **k)
blocks.ConvNeXt.__init__ = no_download
from ensemble.alltracker.alltracker import Net
from ensemble.alltracker.alltracker_predictor import AllTrackerPredictor
if mode == "init":
    torch.manual_seed(int(sys.argv[4]))
    torch.save({"model": Net(16).state_dict()}, path)
    sys.exit(0)
data = np.load(path)
pred = AllTrackerPredictor(checkpoint_path=sys.argv[4]).eval()
pred.interp_shape = tuple(int(v) for v in data["resolution"])
video = torch.from_numpy(data["video"]).permute(0, 3, 1, 2).float()[None]
with torch.no_grad():
    tracks, prob = pred(video, torch.from_numpy(data["queries"]).float()[None])
prob = prob[0].float()
np.savez(sys.argv[5], tracks=tracks[0].numpy(), visibility=(prob > 0.6).numpy(), visibility_prob=prob.numpy())
'''


def make_clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: background panning right/down, a 0.4-size textured square moving left/up over it."""
    rng = np.random.default_rng(seed)
    bg = texture(h + 3 * t, w + 3 * t, seed=seed)
    fg = texture(int(0.4 * h), int(0.4 * h), seed=seed + 100, blur=1.5)
    v_bg, v_fg = rng.uniform(0.5, 1.5, 2), -rng.uniform(0.5, 2.0, 2)
    start = np.array([w * 0.6, h * 0.55])
    frames = []
    for i in range(t):
        ox, oy = (v_bg * i).round().astype(int)
        frame = bg[oy : oy + h, ox : ox + w].copy()
        x0, y0 = (start + v_fg * i).round().astype(int) % np.array([w, h])
        s = fg.shape[0]
        xs, ys = slice(max(x0, 0), min(x0 + s, w)), slice(max(y0, 0), min(y0 + s, h))
        frame[ys, xs] = fg[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        frames.append(frame)
    return np.stack(frames)


def compare(ours: dict, official: dict, queries: np.ndarray) -> dict:
    t = len(ours["tracks"])
    qt = queries[:, 0].astype(int)
    frames = np.arange(t)[:, None]
    own = (frames == qt[None]) & (qt[None] >= t - 2)  # documented deviation: the query point itself
    est = (frames >= qt[None]) & ~own
    err = np.linalg.norm(ours["tracks"].astype(np.float64) - official["tracks"], axis=-1)[est]
    own_err = np.linalg.norm(ours["tracks"].astype(np.float64) - queries[None, :, 1:], axis=-1)[own]
    return {
        "cells": int(est.sum()),
        "median_px": float(np.median(err)), "p95_px": float(np.percentile(err, 95)), "max_px": float(err.max()),
        "visibility_agreement": float(np.mean(ours["visibility"][est] == official["visibility"][est])),
        "visibility_prob_max_diff": float(np.abs(ours["visibility_prob"][est] - official["visibility_prob"][est]).max()),
        "visible_share": float(np.mean(official["visibility"][est])),
        "official_prob_range": [float(official["visibility_prob"][est].min()), float(official["visibility_prob"][est].max())],
        # The default initialisation keeps visibility_prob far below 0.6, so the threshold never bites: also
        # compare both thresholded at the official median probability (a diagnostic, not the spec).
        "agreement_at_median_prob": float(np.mean((ours["visibility_prob"][est] > np.median(official["visibility_prob"][est]))
                                                  == (official["visibility_prob"][est] > np.median(official["visibility_prob"][est])))),
        "deviation_cells": int(own.sum()),
        "deviation_cells_are_query_points": bool(own_err.size == 0 or own_err.max() < 1e-3),
        "ptrack_nan_before_query": bool(np.isnan(ours["tracks"][frames < qt[None]]).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkout", help="gorkaydemir/track_on checkout (its ensemble/alltracker package is imported)")
    ap.add_argument("--official-python", required=True, help="python of an environment with torch, einops, torchvision")
    ap.add_argument("--work", default=None, help="keep inputs and outputs here (default: a temporary folder)")
    ap.add_argument("--ptrack", default=f"{sys.executable} -m pointtrack_cli", help="command that runs ptrack")
    ap.add_argument("--clips", default=None, help="comma-separated clip numbers to run (default: all)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="alltracker_acceptance_"))
    work.mkdir(parents=True, exist_ok=True)
    script = work / "official.py"
    script.write_text(OFFICIAL)
    weights = work / "alltracker_official_init.pth"
    if not weights.exists():
        subprocess.run([args.official_python, str(script), args.checkout, "init", str(weights), str(SEED)], check=True)
    chosen = range(len(CLIPS)) if args.clips is None else [int(c) for c in args.clips.split(",")]
    results = []
    for k in chosen:
        t, h, w, n, qframes, res, seed = CLIPS[k]
        rng = np.random.default_rng(seed + 1000)
        video = make_clip(t, h, w, seed)
        queries = np.stack([rng.choice(qframes, n), rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)
        queries = np.round(queries * 100) / 100  # what the CSV carries exactly
        case = work / f"clip{k}"
        case.mkdir(exist_ok=True)
        np.savez(case / "inputs.npz", video=video, queries=queries.astype(np.float32), resolution=np.array(res))
        t0 = time.time()
        if not (case / "official.npz").exists():
            subprocess.run([args.official_python, str(script), args.checkout, "run", str(case / "inputs.npz"),
                            str(weights), str(case / "official.npz")], check=True)
        t1 = time.time()
        frames = write_png_folder(video, case / "frames")
        np.savetxt(case / "q.csv", queries, delimiter=",", header="t,x,y", comments="", fmt="%.2f")
        subprocess.run([*args.ptrack.split(), "track", str(frames), "--model", "alltracker", "--weights", str(weights),
                        "--queries", str(case / "q.csv"), "--resolution", f"{res[0]}x{res[1]}", "--out",
                        str(case / "ptrack"), "--no-overlay", "--format", "npz", "--quiet"], check=True)
        t2 = time.time()
        with np.load(case / "ptrack" / "tracks.npz", allow_pickle=False) as z:
            ours = {key: z[key] for key in ("tracks", "visibility", "visibility_prob")}
        with np.load(case / "official.npz") as z:
            official = {key: z[key] for key in ("tracks", "visibility", "visibility_prob")}
        r = {"clip": f"{t}x{h}x{w} at {res[0]}x{res[1]}, {n} points, query frames {list(qframes)}",
             **compare(ours, official, queries), "official_s": round(t1 - t0, 1), "ptrack_s": round(t2 - t1, 1)}
        results.append(r)
        print(json.dumps(r), flush=True)
    worst = {
        "median_px": max(r["median_px"] for r in results), "p95_px": max(r["p95_px"] for r in results),
        "agreement": min(r["visibility_agreement"] for r in results),
        "prob": max(r["visibility_prob_max_diff"] for r in results),
    }
    ok = (worst["median_px"] < 0.05 and worst["p95_px"] < 0.5 and worst["agreement"] >= 0.98 and worst["prob"] <= 1e-3
          and all(r["deviation_cells_are_query_points"] and r["ptrack_nan_before_query"] for r in results))
    print(f"{'PASS' if ok else 'FAIL'}: worst median {worst['median_px']:.2e} px, worst p95 {worst['p95_px']:.2e} px, "
          f"worst visibility agreement {worst['agreement']:.4f}, worst visibility_prob diff {worst['prob']:.2e} "
          f"(work dir {work})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
