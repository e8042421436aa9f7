"""Seconds and peak memory per ``ptrack finetune`` optimisation step, and the pseudo-labelling time kept out of it.

Usage: python benchmarks/finetune_step.py [--device cpu|cuda|auto] [--resolution HxW] [--preset small|issue|default]
       [--students offline,online] [--recipes random-teacher,verifier] [--steps 3] [--warmup 1]
       [--no-checkpointing] [--estimate-default]

Speed only: the student, the RealTracker teacher and the verifier carry deterministic fill-rule weights (the
tests' ``tests/helpers/realtracker_weights.py`` / ``tests/helpers/verifier_weights.py``: the real architectures and
parameter counts, meaningless values), and the videos are generated (a translating texture). Presets:

* ``small`` (default on CPU): the tests' configuration - 48x64 frames, clips of 8 frames (16 for the online
  student, one full window), 6 query points, 1 student and 1 teacher iteration.
* ``issue``: the run of ptrack issue 15 - two 24-frame 96x64 clips, ``--resolution 64x96``, ``ptrack finetune``'s
  384 points and 4 iterations (the online student held ~18 GB there before activation checkpointing).
* ``default`` (default on CUDA, or with ``--resolution 384x512``): ``ptrack finetune``'s defaults - 384x512,
  clips of 80 (offline) / 64 (online) frames, 384 points, 4 iterations, bf16 autocast on CUDA.

For each student and recipe the script (1) computes every pseudo-label the run can ask for through the
project's :class:`~pointtrack_cli.finetune.labels.LabelStore`, timing each labeller per clip, into the run's
label cache, then (2) runs :func:`pointtrack_cli.finetune.run_finetune` for ``warmup + steps`` steps, which
finds every label cached, and reports the per-step ``seconds`` of its ``metrics.jsonl`` after the warm-up. A step
is what the training loop does per step: read the clip, load its cached labels, forward, loss, backward,
gradient clipping, AdamW (checkpoint saves are not in it). The peak GPU memory is that of the whole run, which
loads its teachers (and the verifier) before the first step, as a real run holds them. ``peak RSS GiB`` is the
process's resident-memory peak over the steps only (Linux: the peak is reset after labelling, freed memory handed
back first), what a run needs on the CPU. ``--no-checkpointing`` trains the student without activation
checkpointing (``FinetuneConfig.checkpointing``), the behaviour before issue 15. ``--estimate-default`` estimates the
memory of one step at ``ptrack finetune``'s defaults on this device without running it (see
:func:`estimate_default`). The ``CPU s`` column is the process CPU time per
step: far above ``mean s x threads`` means the machine was busy. On a shared machine compare runs with
``--threads 1``: torch's threads wait for each other whenever the OS deschedules one of them, which made
2-thread CPU steps 5-20x slower (and very noisy) on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package and tests.helpers (the fill-rule weights), run from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every weight is local: never reach for the Hub

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from pointtrack_cli.device import resolve_device, resolve_precision  # noqa: E402
from pointtrack_cli.finetune import FinetuneConfig, Reporter, run_finetune  # noqa: E402
from pointtrack_cli.finetune import data as D  # noqa: E402
from pointtrack_cli.finetune.config import DEFAULT_CLIP_LEN  # noqa: E402
from pointtrack_cli.finetune.labels import LabelStore, weights_stamp  # noqa: E402
from pointtrack_cli.finetune.trainer import teacher_specs  # noqa: E402
from pointtrack_cli.models.allocator import release_freed_memory  # noqa: E402
from pointtrack_cli.synthetic import translating_frames, write_mp4  # noqa: E402
from pointtrack_cli.weights.hub import load_weights  # noqa: E402
from tests.helpers.realtracker_weights import fill_state_dict  # noqa: E402
from tests.helpers.verifier_weights import fill_state_dict as fill_verifier  # noqa: E402

STUDENTS = {"offline": "realtracker-offline", "online": "realtracker-online"}
PRESETS = {
    # name: (resolution, clip length {online: frames}, points, student iters, teacher iters, video size)
    "small": ((48, 64), {True: 16, False: 8}, 6, 1, 1, (64, 96)),
    "issue": ((64, 96), {True: 24, False: 24}, 384, 4, 4, (64, 96)),
    "default": ((384, 512), dict(DEFAULT_CLIP_LEN), 384, 4, 4, (480, 640)),
}


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock intervals measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(cfg: FinetuneConfig) -> torch.device:
    """The device a run of ``cfg`` trains on (``cuda`` = the current GPU, as :func:`run_finetune` picks it)."""
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def write_weights(folder: Path) -> dict[str, Path]:
    """Fill-rule RealTracker weights (both architectures, safetensors) and verifier weights (DDP-style .pt)."""
    out = {}
    for kind, online in (("offline", False), ("online", True)):
        out[kind] = folder / f"realtracker_{kind}_fill.safetensors"
        save_file({k: v.contiguous() for k, v in fill_state_dict(online).items()}, str(out[kind]))
    out["verifier"] = folder / "verifier_fill.pt"
    torch.save({"model": {"module." + k: v for k, v in fill_verifier().items()}}, out["verifier"])
    return out


def make_config(args, student: str, recipe: str, videos: Path, out: Path, weights: dict[str, Path]) -> FinetuneConfig:
    """The run's configuration: the preset, the student's fill weights, teachers = the other architecture + lk."""
    resolution, clip_len, points, iters, teacher_iters, _ = PRESETS[args.preset]
    online = student == "online"
    other = "offline" if online else "online"
    total = args.warmup + args.steps
    return FinetuneConfig(
        str(videos), str(out), student=STUDENTS[student], student_weights=str(weights[student]),
        teachers=[f"{STUDENTS[other]}={weights[other]}", "lk"], recipe=recipe, resolution=args.resolution or resolution,
        steps=total, clip_len=clip_len[online], num_points=points, iters=iters, teacher_iters=teacher_iters,
        save_every=total, keep_last=1, seed=0, verifier_weights=str(weights["verifier"]), device=args.device,
        precision=args.precision, quiet=True, checkpointing=not args.no_checkpointing,
    )


# --------------------------------------------------------------------------------------------------
# Host memory (Linux /proc): the peak of resident memory over a stretch of the run


def release_and_reset_peak() -> None:
    """Hand freed heap memory back to the OS (as the trainer does between stages), then restart the RSS peak."""
    gc.collect()
    release_freed_memory()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def peak_rss_gib() -> float | None:
    """VmHWM of this process in GiB (None where /proc is missing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return None


def peak_bytes(device: torch.device, fn) -> float:
    """Peak memory (GiB) while ``fn()`` runs: ``max_memory_allocated`` on CUDA, resident memory on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    release_and_reset_peak()
    fn()
    return peak_rss_gib() or float("nan")


def estimate_default(device: torch.device, students: list[str], checkpointing: bool, precision: str) -> list[list[str]]:
    """Memory of one student step (forward, loss, backward, AdamW) at ``ptrack finetune``'s defaults, from two shorter clips.

    Measures one step at 384x512, 384 points, 4 iterations with clips of 16 and 24 frames (fill-rule weights, generated
    frames, synthetic labels: memory does not depend on the values), then extrapolates linearly to the default clip
    length (80 frames offline, 64 online): the online student keeps per window, the offline one per frame, a fixed
    amount for the backward pass. Teachers and the verifier are not loaded (add their weights: ~0.1 GB each).
    """
    from pointtrack_cli.finetune.labels import ClipLabels  # noqa: E402 - only this estimate needs them
    from pointtrack_cli.finetune.student import Batch, build_student, compute_loss, make_optimizer, optimizer_step

    resolution, clip_len, points, iters, _, _ = PRESETS["default"]
    rows = []
    for student in students:
        online = student == "online"
        peaks = {}
        for t in (16, 24):
            model = build_student(fill_state_dict(online), online, resolution, "fill rule", device, checkpointing)
            cfg = FinetuneConfig("", "", iters=iters, steps=10, precision=precision)
            opt, sched = make_optimizer(model, cfg)
            rng = np.random.default_rng(0)
            frames = rng.integers(0, 256, (t, *resolution, 3)).astype(np.uint8)
            q = np.stack([rng.integers(0, t // 2, points), rng.uniform(0, resolution[1] - 1, points),
                          rng.uniform(0, resolution[0] - 1, points)], 1).astype(np.float32)
            gt = (q[None, :, 1:] + rng.normal(0, 3, (t, points, 2))).astype(np.float32)
            labels = ClipLabels(q, gt, rng.random((t, points)) > 0.2, np.ones((t, points), bool), "synthetic")
            batch = Batch(frames, labels)

            def step() -> None:
                loss = compute_loss(model, batch, cfg, device, precision)
                optimizer_step(model, opt, sched, loss.total, cfg)

            peaks[t] = peak_bytes(device, step)
            print(f"  {student} student, {t} frames at {resolution[0]}x{resolution[1]}: peak {peaks[t]:.2f} GiB", flush=True)
            del model, opt, sched
        per_frame = (peaks[24] - peaks[16]) / 8
        full = clip_len[online]
        rows.append([student, f"{resolution[0]}x{resolution[1]}", str(full), str(points), str(iters),
                     f"{peaks[16]:.2f}", f"{peaks[24]:.2f}", f"{peaks[24] + per_frame * (full - 24):.2f}"])
    return rows


def label_everything(cfg: FinetuneConfig) -> dict[str, list[float]]:
    """Compute (and cache in ``OUT/labels``) every label the run may draw; seconds per clip, by labeller.

    The store is built with the arguments :func:`run_finetune` gives its own, so the run finds them all cached.
    Models are loaded before the clock starts: labelling time is per clip, loading happens once per run.
    """
    device = bench_device(cfg)
    online, hw = cfg.online, tuple(cfg.resolution)
    videos, _ = D.discover_videos(cfg.videos_dir)
    clips, _ = D.make_clips(videos, cfg.clip_length, cfg.frame_stride, cfg.max_clips_per_video, D.MIN_CLIP_FRAMES[online])
    sd0, _ = load_weights(cfg.student, cfg.student_weights, quiet=True)
    specs = teacher_specs(cfg, lambda text: None)  # as run_finetune: the student's own weights listed once
    store = LabelStore(Path(cfg.out) / "labels", specs, (sd0, online, weights_stamp(cfg.student, cfg.student_weights)),
                       recipe=cfg.recipe, hw=hw, num_points=cfg.num_points, seed=cfg.seed, device=device,
                       precision=resolve_precision(cfg.precision, str(device), "finetune"),
                       teacher_iters=cfg.teacher_iters, verifier_weights=cfg.verifier_weights)
    store.load_models()
    times: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        done = store.computed
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if store.computed > done:  # reused from the cache (copied from another recipe's run): not a labelling time
            times.setdefault(name, []).append(time.perf_counter() - t0)

    for clip in clips:
        frames = D.read_clip(clip, hw)
        for i, spec in enumerate(store.specs):
            timed(spec.name, lambda: store.teacher_labels(clip, i, lambda: frames))
        if cfg.recipe == "verifier":  # the teachers' labels are cached by now: this is the verifier's own work
            timed("verifier selection", lambda: store.verifier_labels(clip, lambda: frames))
    return times


class CpuClock(Reporter):
    """Process CPU seconds (all threads) per step: next to the wall seconds, it shows how busy the machine was."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.last = 0.0

    def start(self, total: int, done: int) -> None:
        self.last = time.process_time()

    def step(self, record: dict) -> None:
        now = time.process_time()
        self.cpu.append(now - self.last)
        self.last = now


def run_steps(cfg: FinetuneConfig, warmup: int) -> dict:
    """Run the configured steps; per-step wall and CPU seconds after ``warmup`` steps, frames, peak GPU memory."""
    device = bench_device(cfg)
    gc.collect()  # the labelling models are gone: keep them out of the peak below
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        release_and_reset_peak()  # the peak below is that of the steps, not of the labelling before them
    clock = CpuClock()
    summary = run_finetune(cfg, clock)
    if summary.labels_computed:
        raise RuntimeError(f"{summary.labels_computed} label(s) were computed inside the timed run (cache miss): "
                           "the step times would include pseudo-labelling")
    records = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "event" not in r][warmup:]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_gib()
    return {"seconds": [r["seconds"] for r in records], "frames": [r["frames"] for r in records],
            "cpu": clock.cpu[warmup:], "peak_gib": peak}


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    print(fmt_row(header, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(fmt_row(r, widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--resolution", default=None, help="HxW; 384x512 selects the default preset")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="small (tests' config) or default (ptrack finetune's); default: small on CPU, default on CUDA")
    ap.add_argument("--students", default="offline,online", help="offline, online or both")
    ap.add_argument("--recipes", default="random-teacher,verifier", help="random-teacher, verifier or both")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, kernels, caches)")
    ap.add_argument("--precision", default="auto", help="CUDA: auto (= bf16), bf16, fp16, fp32; CPU is always fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs (weights, videos, labels) in this folder")
    ap.add_argument("--no-checkpointing", action="store_true",
                    help="train without activation checkpointing (the memory before issue 15)")
    ap.add_argument("--estimate-default", action="store_true",
                    help="also estimate one step's memory at ptrack finetune's defaults (384x512, 64/80 frames, 384 points)")
    args = ap.parse_args()
    if args.resolution:
        h, w = (int(v) for v in args.resolution.lower().split("x"))
        args.resolution = (h, w)
    if args.preset is None:
        on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        args.preset = "default" if on_gpu or args.resolution == (384, 512) else "small"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not set(students) <= set(STUDENTS) or not set(recipes) <= {"random-teacher", "verifier"} or args.steps < 1:
        sys.exit("--students takes offline/online, --recipes random-teacher/verifier, --steps >= 1")

    resolution, clip_len, points, iters, teacher_iters, video_hw = PRESETS[args.preset]
    resolution = args.resolution or resolution
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(args.device if args.device.startswith("cuda") else None) if on_gpu else (
        platform.processor() or "cpu")
    print(f"ptrack finetune step benchmark - device {args.device} ({device_name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"preset {args.preset}: {resolution[0]}x{resolution[1]}, clips of {clip_len[False]} (offline) / "
          f"{clip_len[True]} (online) frames, {points} points, {iters} student / {teacher_iters} teacher iteration(s); "
          f"warm-up {args.warmup} step(s), then {args.steps} timed")
    print("weights: deterministic fill-rule weights (real architectures and sizes, meaningless values): "
          "these numbers measure speed only; videos are generated")

    work = args.keep or Path(tempfile.mkdtemp(prefix="ptrack_ft_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        weights = write_weights(work)
        # Two clips for the longer (online or offline) clip length of the preset.
        n = 2 * max(clip_len[s == "online"] for s in students)
        videos = work / f"videos_{video_hw[0]}x{video_hw[1]}_{n}"
        if not videos.is_dir():
            videos.mkdir()
            write_mp4(translating_frames(n, *video_hw, (0.8, 0.3), seed=5), videos / "walk.mp4")
        step_rows, label_rows = [], []
        for student in students:
            for recipe in recipes:
                cfg = make_config(args, student, recipe, videos, work / f"run_{student}_{recipe}", weights)
                shutil.rmtree(cfg.out, ignore_errors=True)
                other = work / f"run_{student}_random-teacher" / "labels"
                if recipe == "verifier" and other.is_dir():  # the teachers' labels are the same: reuse them
                    shutil.copytree(other, Path(cfg.out) / "labels")
                print(f"\n{student} student, {recipe}: labelling ...", flush=True)
                for name, secs in label_everything(cfg).items():
                    label_rows.append([student, recipe, name, str(len(secs)), f"{statistics.mean(secs):.3f}"])
                print(f"{student} student, {recipe}: {args.warmup + args.steps} steps ...", flush=True)
                res = run_steps(cfg, args.warmup)
                s = res["seconds"]
                row = [student, recipe, str(len(s)), f"{statistics.mean(s):.3f}",
                       f"{statistics.stdev(s):.3f}" if len(s) > 1 else "-", f"{min(s):.3f}", f"{max(s):.3f}",
                       f"{statistics.mean(res['cpu']):.3f}", f"{np.mean(res['frames']):.1f}"]
                if res["peak_gib"] is not None:
                    row.append(f"{res['peak_gib']:.2f}")
                step_rows.append(row)
        print(f"\nseconds per optimisation step (labels cached; read clip + forward + loss + backward + AdamW), "
              f"{args.device}, {resolution[0]}x{resolution[1]}; wall-clock, CPU s = process CPU time per step:")
        header = ["student", "recipe", "steps", "mean s", "std s", "min s", "max s", "CPU s", "frames/step"]
        if any(len(r) > len(header) for r in step_rows):
            header.append("peak GPU GiB" if on_gpu else "peak RSS GiB")
        print_table(header, step_rows)
        print(f"activation checkpointing {'off' if args.no_checkpointing else 'on'}")
        print("\npseudo-labelling, once per clip and labeller, then cached (not in the step times):")
        print_table(["student", "recipe", "labeller", "clips", "s/clip"], label_rows)
        if args.estimate_default:
            print(f"\none step at ptrack finetune's defaults on {args.device} (estimate, see estimate_default):", flush=True)
            dev = bench_device(make_config(args, students[0], recipes[0], videos, work / "estimate", weights))
            prec = resolve_precision(args.precision, str(dev), "finetune")
            est = estimate_default(dev, students, not args.no_checkpointing, prec)
            print_table(["student", "resolution", "clip frames", "points", "iters", "peak GiB 16 fr", "peak GiB 24 fr",
                         "estimate GiB"], est)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
