"""``ptrack finetune``: adapt RealTracker to your own footage with pseudo-labels (no annotations).

Register with ``app.command("finetune")(finetune)``. Distributed: ``torchrun --nproc_per_node G -m pointtrack_cli
finetune ...`` or ``ptrack finetune --gpus G ...`` (which launches exactly that).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import MofNCompleteColumn, Progress, TextColumn

from ..errors import PtrackError
from ..finetune import FinetuneConfig, FinetuneSummary, Reporter, run_finetune
from ..finetune.config import validate
from ..finetune.distributed import check_local_gpus
from .common import progress_columns, console, key_value_table, parse_hw, split_list

_HELP = (
    "Fine-tune a RealTracker student on the videos under VIDEOS_DIR (every file ffmpeg reads and every folder of "
    "images, recursively; unreadable ones are listed and skipped) with pseudo-labels from frozen teachers.\n\n"
    "Recipes: random-teacher (CoTracker3: each step one teacher, drawn uniformly, labels the clip; the student's "
    "starting weights are always one of the teachers) or verifier (Track-On-R: the verifier picks, per frame and "
    "point, the best teacher's track; visibility = the teachers' majority vote). Queries: 384 SIFT points per clip "
    "from 8 early frames. Loss: Huber (6 px) on visible, L1 on occluded points, 0.8-discounted over iterations; the "
    "visibility/confidence head stays frozen. AdamW lr 5e-5, wd 1e-5, cosine decay, no warm-up, grad-norm clip 10, "
    "bf16 on CUDA.\n\n"
    "Writes RUN_DIR/last.safetensors (use with `ptrack track --model <student> --weights RUN_DIR/last.safetensors`), "
    "best.safetensors, checkpoints/, labels/ (cached pseudo-labels), metrics.jsonl, config.json and data.json. "
    "Multi-GPU: --gpus G, or `torchrun --nproc_per_node G -m pointtrack_cli finetune ...`."
)


class RichReporter(Reporter):
    """Progress bar on stderr: the common columns plus loss, lr and it/s of the latest step; messages printed above it."""

    def __init__(self) -> None:
        columns = progress_columns()
        after = next(i for i, c in enumerate(columns) if isinstance(c, MofNCompleteColumn)) + 1
        columns[after:after] = [TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                                TextColumn("{task.fields[speed]}")]
        self.progress = Progress(*columns, console=console)
        self.task = None
        self.t0 = 0.0
        self.first = 0

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("finetune", total=total, completed=done, loss="-", lr="-", speed="- it/s")
        self.t0, self.first = time.perf_counter(), done

    def step(self, record: dict) -> None:
        if self.task is None:
            return
        rate = (record["step"] - self.first) / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=record["step"], loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             speed=f"{rate:.2f} it/s")

    def message(self, text: str) -> None:
        console.print(text, highlight=False, markup=False)

    def stop(self) -> None:
        self.progress.stop()


def config_to_argv(cfg: FinetuneConfig) -> list[str]:
    """Command-line arguments that rebuild ``cfg`` (for the ``--gpus`` relaunch under torchrun)."""
    default = FinetuneConfig(cfg.videos_dir, cfg.out)
    argv = [str(cfg.videos_dir), "--out", str(cfg.out), "--steps", str(cfg.steps)]
    for name, value in cfg.to_json().items():
        if name in ("videos_dir", "out", "steps") or value == default.to_json()[name]:
            continue
        opt = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(opt)
        elif name == "resolution":
            argv += [opt, f"{value[0]}x{value[1]}"]
        elif name == "teachers":
            argv += [opt, ",".join(value) if value else "none"]
        else:
            argv += [opt, str(value)]
    return argv


def finetune(
    videos_dir: Path = typer.Argument(..., help="Folder of videos (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, labels, metrics)."),
    steps: int = typer.Option(..., "--steps", help="Optimiser steps (one clip per process per step)."),
    student: str = typer.Option("realtracker-online", "--student", help="realtracker-online or realtracker-offline (or their -kubric variants)."),
    student_weights: Optional[Path] = typer.Option(None, "--student-weights", help="Starting weights (.pth/.safetensors) instead of the student's Hub checkpoint."),
    teachers: List[str] = typer.Option([], "--teachers", "-t", help="Teacher tracker ids, comma-separated or repeated; ID=PATH gives local weights. The student's starting weights are always a teacher (`none`: it alone). Default: the other RealTracker checkpoints."),
    recipe: str = typer.Option("random-teacher", "--recipe", help="random-teacher (CoTracker3) or verifier (Track-On-R)."),
    resolution: str = typer.Option("384x512", "--resolution", help="Training frame size HxW (multiples of 4); frames are resized to it."),
    clip_len: Optional[int] = typer.Option(None, "--clip-len", help="Frames per clip (default 64 online, 80 offline)."),
    frame_stride: int = typer.Option(1, "--frame-stride", help="Use every k-th frame of the videos."),
    max_clips_per_video: Optional[int] = typer.Option(None, "--max-clips-per-video", help="Cap the clips cut from one video."),
    num_points: int = typer.Option(384, "--num-points", help="SIFT query points per clip."),
    iters: int = typer.Option(4, "--iters", help="Student refinement iterations in training."),
    teacher_iters: int = typer.Option(4, "--teacher-iters", help="RealTracker teachers' iterations (raw model call)."),
    lr: float = typer.Option(5e-5, "--lr", help="AdamW peak learning rate (cosine decay, no warm-up)."),
    weight_decay: float = typer.Option(1e-5, "--weight-decay", help="AdamW weight decay."),
    grad_clip: float = typer.Option(10.0, "--grad-clip", help="Gradient-norm clipping."),
    gamma: float = typer.Option(0.8, "--gamma", help="Discount of earlier iterations in the loss."),
    huber_delta: float = typer.Option(6.0, "--huber-delta", help="Huber threshold in pixels (visible points)."),
    visible_weight: float = typer.Option(0.05, "--visible-weight", help="Weight of the visible-point (Huber) term."),
    occluded_weight: float = typer.Option(0.01, "--occluded-weight", help="Weight of the occluded-point (L1) term."),
    train_only_visible: bool = typer.Option(False, "--train-only-visible", help="Drop the occluded-point term."),
    min_length_fraction: float = typer.Option(0.5, "--min-length-fraction", help="Offline student: clip lengths drawn between this fraction of the clip and all of it."),
    seed: int = typer.Option(0, "--seed", help="Seed of data order, teacher draws and queries."),
    save_every: int = typer.Option(500, "--save-every", help="Checkpoint every N steps (and at the end)."),
    keep_last: int = typer.Option(3, "--keep-last", help="Step checkpoints to keep (plus best and last)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="TAP-Vid file/folder (e.g. tapvid_davis.pkl) to report AJ, δ_avg, OA; best.safetensors keeps the best AJ."),
    eval_dataset: str = typer.Option("davis", "--eval-dataset", help="davis, rgb_stacking, kinetics or robotap (format of --eval-data)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N steps (0: only at the start)."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Evaluate on the first K videos only."),
    verifier_weights: Optional[Path] = typer.Option(None, "--verifier-weights", help="Verifier checkpoint for --recipe verifier (default: the Hub file)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="CUDA: auto (= bf16), bf16, fp16 or fp32. CPU always fp32."),
    relabel: bool = typer.Option(False, "--relabel", help="Recompute cached pseudo-labels."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (same options)."),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="Stop (and save) after this step; --resume continues the schedule of --steps."),
    gpus: int = typer.Option(1, "--gpus", help="Processes (one per GPU) launched through torch.distributed.run; gloo processes on CPU."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary."),
) -> None:
    hw = parse_hw(resolution)
    assert hw is not None
    teacher_list = split_list(teachers) if teachers else None
    if teacher_list is not None and [t.lower() for t in teacher_list] == ["none"]:
        teacher_list = []  # only the student's starting weights
    cfg = FinetuneConfig(
        videos_dir=str(videos_dir), out=str(out), student=student,
        student_weights=str(student_weights) if student_weights else None, teachers=teacher_list, recipe=recipe,
        resolution=hw, steps=steps, clip_len=clip_len, frame_stride=frame_stride, max_clips_per_video=max_clips_per_video,
        num_points=num_points, iters=iters, teacher_iters=teacher_iters, lr=lr, weight_decay=weight_decay,
        grad_clip=grad_clip, gamma=gamma, huber_delta=huber_delta, visible_weight=visible_weight,
        occluded_weight=occluded_weight, train_only_visible=train_only_visible, min_length_fraction=min_length_fraction,
        seed=seed, save_every=save_every, keep_last=keep_last, eval_data=str(eval_data) if eval_data else None,
        eval_dataset=eval_dataset, eval_every=eval_every, eval_limit=eval_limit,
        verifier_weights=str(verifier_weights) if verifier_weights else None, device=device, precision=precision,
        relabel=relabel, resume=resume, stop_at=stop_at, quiet=quiet,
    )
    if gpus < 1:
        raise PtrackError(f"--gpus must be >= 1, got {gpus}")
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        _launch(cfg, gpus)
        return
    validate(cfg)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    show = rank0 and not quiet
    summary = run_finetune(cfg, RichReporter() if show else None)
    if show:
        _print_summary(summary)


def _launch(cfg: FinetuneConfig, gpus: int) -> None:
    """Re-run this command under ``torch.distributed.run`` with ``gpus`` processes and wait for it."""
    check_local_gpus(cfg.device, gpus)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "pointtrack_cli", "finetune", *config_to_argv(cfg)]
    if not cfg.quiet:
        console.print(f"launching {gpus} processes: {' '.join(cmd[1:])}", highlight=False, markup=False)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise typer.Exit(rc)


def _print_summary(s: FinetuneSummary) -> None:
    rows = [
        ("run", s.run_dir),
        ("steps", f"{s.start_step + s.steps_done}/{s.total_steps} ({s.steps_done} this run, {s.seconds:.0f} s, "
                  f"{s.steps_done / max(s.seconds, 1e-9):.2f} it/s)"),
        ("data", f"{s.clips} clips from {s.videos} videos; {len(s.skipped)} path(s) skipped"),
        ("labels", f"{s.labels_computed} computed, {s.labels_reused} reused from the cache"),
    ]
    if s.final_loss is not None:
        rows.append(("loss", f"{s.final_loss:.4f} (mean of the last steps)"))
    for e in s.evals:
        rows.append((f"eval @ {e['step']}", f"AJ {100 * e['aj']:.2f}  δ_avg {100 * e['delta_avg']:.2f}  OA {100 * e['oa']:.2f}"))
    if s.best:
        what = (f"AJ {100 * s.best['aj']:.2f}" if "aj" in s.best else f"train loss {s.best.get('train_loss', float('nan')):.4f}")
        rows.append(("best", f"step {s.best['step']} ({what}) -> {Path(s.run_dir) / 'best.safetensors'}"))
    if s.last_weights:
        rows.append(("weights", f"{s.last_weights}"))
    console.print(key_value_table("ptrack finetune", rows))


finetune.__doc__ = _HELP  # typer shows the docstring as the command's help
