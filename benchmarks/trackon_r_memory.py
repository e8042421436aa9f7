"""Peak RSS of ``ptrack ensemble --teachers trackon-r`` next to that of its largest teacher run alone (issue 14).

    python benchmarks/trackon_r_memory.py [--frames 100] [--size 480x854] [--grid 20] [--threads 1] [--work DIR]
                                          [--alone IDS|none] [--no-ensemble]

Generates a clip (``synthetic.translating_frames``, written as mp4) and fill-rule weights for every teacher of
the preset in its official file layout (``tests/helpers``: the checkpoints the tests use, at each teacher's
registry configuration) and the verifier, then runs in child processes, each measured with ``wait4``:

* ``ptrack ensemble CLIP --teachers trackon-r,ID=PATH,... --verifier-weights V --grid G`` (every teacher at
  its default resolution, one after another, freed in between; the verifier at 384x512);
* unless ``--alone none``: ``ptrack track CLIP --model ID --weights PATH --grid G`` for each teacher (RealTracker
  with ``--no-support-grid``, as the preset runs it), then the verifier stage alone: ``ptrack ensemble CLIP
  --candidates`` (the teachers' ``tracks.npz``) ``--verifier-weights V``.

``--no-ensemble`` skips the first run (e.g. to measure a teacher alone in a second process, in parallel).
It prints one JSON line per run (seconds, CPU seconds, peak RSS MiB) and a summary: the ensemble's peak RSS, the
largest single teacher's, and the size of the candidate arrays the ensemble holds on top (``[T, N, M]``
tracks, visibility, verifier scores). Weight values do not change memory or time (fill rule: speed and memory
only). ``ptrack`` runs as ``python -m pointtrack_cli`` from this checkout. Hours on a loaded 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _measure import run_measured_cpu  # noqa: E402

# preset teacher -> the writer of tests/helpers/teachers.py that makes its file (same architecture and layout)
WRITER_OF = {"bootstapnext": "bootstapnext", "bootstapir": "bootstapir", "anthro-locotrack": "locotrack",
             "alltracker": "alltracker"}


def write_weights(folder: Path) -> dict[str, Path]:
    """Fill-rule checkpoints of the preset's teachers (``trackon-r`` order) and the verifier (key ``verifier``)."""
    import torch

    from pointtrack_cli.ensemble.teachers import PRESETS
    from tests.helpers import realtracker_weights, verifier_weights
    from tests.helpers.teachers import teacher_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for tid in PRESETS["trackon-r"]:
        if tid == "realtracker-online":
            out[tid] = folder / "realtracker_online_fill.pth"
            torch.save(realtracker_weights.fill_state_dict(True), out[tid])
        else:
            out[tid] = teacher_checkpoint(WRITER_OF[tid], folder / tid)
    out["verifier"] = folder / "verifier_fill.pt"
    torch.save(verifier_weights.fill_state_dict(), out["verifier"])
    return out


def measure(label: str, args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    wall, rss, cpu, rc = run_measured_cpu([sys.executable, "-m", "pointtrack_cli", *args], env=env)
    row = {"run": label, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mib": round(rss, 1),
           "exit_code": rc}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", default="480x854", help="HxW of the generated clip")
    ap.add_argument("--grid", type=int, default=20, help="GRID x GRID points on frame 0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the child processes")
    ap.add_argument("--work", default=None, help="folder for the clip, weights and outputs (default: temporary)")
    ap.add_argument("--alone", default=None, help="comma-separated teachers to run alone, in this order (default: "
                    "every teacher of the preset; 'none': only the ensemble)")
    ap.add_argument("--no-ensemble", action="store_true", help="only the runs alone (and the verifier stage)")
    args = ap.parse_args()
    from pointtrack_cli.ensemble.teachers import PRESETS
    from pointtrack_cli.synthetic import translating_frames, write_mp4

    h, w = (int(v) for v in args.size.split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="trackon_r_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    clip = work / f"clip_{args.frames}x{h}x{w}.mp4"
    if not clip.exists():
        write_mp4(translating_frames(args.frames, h, w, velocity=(1.5, 0.5), seed=7), clip)
    weights = write_weights(work / "weights")
    common = ["--grid", str(args.grid), "--no-overlay", "--format", "npz", "--quiet", "--device", "cpu", "--overwrite"]
    teachers = ",".join(["trackon-r"] + [f"{t}={weights[t]}" for t in PRESETS["trackon-r"]])
    rows = [] if args.no_ensemble else [
        measure("ensemble trackon-r", ["ensemble", str(clip), "--teachers", teachers, "--verifier-weights",
                                       str(weights["verifier"]), "--out", str(work / "ensemble"), *common], args.threads)]
    alone_ids = list(PRESETS["trackon-r"]) if args.alone is None else [t for t in args.alone.split(",") if t != "none"]
    for t in alone_ids:
        extra = ["--no-support-grid"] if t.startswith("realtracker") else []
        rows.append(measure(f"track {t}", ["track", str(clip), "--model", t, "--weights", str(weights[t]),
                                           "--out", str(work / t), *extra, *common], args.threads))
    files = [str(work / t / "tracks.npz") for t in alone_ids if (work / t / "tracks.npz").exists()]
    if files:
        rows.append(measure("verifier alone (ensemble --candidates of the runs above)",
                            ["ensemble", str(clip), "--candidates", *files, "--verifier-weights", str(weights["verifier"]),
                             "--out", str(work / "verifier"), *common[2:]], args.threads))
    n, m = args.grid * args.grid, len(PRESETS["trackon-r"])
    candidates = args.frames * n * m * (2 * 4 + 1 + 4)  # float32 tracks, bool visibility, float32 scores
    alone = [r for r in rows if r["exit_code"] == 0 and r["run"].startswith("track ")]
    summary = {"candidate_arrays_mib": round(candidates / 2**20, 1), "clip": f"{args.frames}x{h}x{w}, grid {args.grid}",
               "threads": args.threads}
    if not args.no_ensemble:
        summary.update(ensemble_peak_rss_mib=rows[0]["peak_rss_mib"], ensemble_exit_code=rows[0]["exit_code"])
    if alone:
        top = max(alone, key=lambda r: r["peak_rss_mib"])
        summary.update(largest_teacher=top["run"], largest_teacher_peak_rss_mib=top["peak_rss_mib"])
        if not args.no_ensemble:
            summary["ensemble_minus_largest_mib"] = round(rows[0]["peak_rss_mib"] - top["peak_rss_mib"], 1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
