"""The fine-tuning loop: pseudo-labelled clips -> RealTracker student -> checkpoints, metrics, evaluation.

One step = one clip per process (batch size 1 per GPU, as both official recipes):

1. the clip of this step (a seeded permutation of the rank's shard per epoch, :mod:`.data`);
2. its pseudo-labels (:mod:`.labels`; random-teacher: one teacher drawn uniformly with python's ``random``;
   verifier: the verifier's selection among all teachers), cached on disk;
3. offline student: the first ``L`` frames, ``L`` uniform in ``[ceil(T * min_length_fraction), T]`` (the model
   then resamples its time embedding); online student: the whole clip, windows of 16 every 8;
4. the student's per-iteration predictions -> :func:`.losses.track_loss` -> backward (DDP averages the
   gradients) -> clip the gradient norm -> AdamW -> learning rate of the next step.

Schedule: ``lr(s) = lr * (f + (1 - f) * (1 + cos(pi * s / K)) / 2)`` for ``s`` completed steps of ``K``, ``f =
1 / (25 * 1e4)`` (OneCycleLR's final floor; pct_start 0 = no warm-up), through ``LambdaLR``.
The student's ``vis_conf_head`` is frozen (not given to the optimizer, ``requires_grad=False``).

Precision: CUDA runs the student under bf16 autocast by default (``--precision``: bf16, fp16 with a gradient
scaler, or fp32); CPU runs fp32. Distributed: under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the process
group is initialised from the environment (NCCL on CUDA, gloo on CPU), the model wrapped in DDP, the clips
sharded by rank; rank 0 writes checkpoints, metrics and evaluations. ``metrics.jsonl`` holds one record per
step: losses averaged over the processes, lr, gradient norm, and rank 0's clip and teacher.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import PtrackError
from ..io.atomic import atomic_path
from . import data as D
from .checkpoint import CheckpointManager, load_state, rng_state, set_rng_state
from .labels import RECIPES, ClipLabels, LabelStore, parse_teachers, weights_stamp
from .losses import GAMMA, HUBER_DELTA, OCCLUDED_WEIGHT, VISIBLE_WEIGHT, TrackLoss, track_loss

FINAL_LR_FRACTION = 1.0 / (25 * 1e4)
DEFAULT_CLIP_LEN = {True: 64, False: 80}  # online / offline (official launch scripts)


@dataclass
class FinetuneConfig:
    """Every option of ``ptrack finetune`` (see the command's help for each)."""

    videos_dir: str
    out: str
    student: str = "realtracker-online"
    student_weights: str | None = None
    teachers: list[str] | None = None
    recipe: str = "random-teacher"
    resolution: tuple[int, int] = (384, 512)
    steps: int = 1000
    clip_len: int | None = None
    frame_stride: int = 1
    max_clips_per_video: int | None = None
    num_points: int = 384
    iters: int = 4
    teacher_iters: int = 4
    lr: float = 5e-5
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    gamma: float = GAMMA
    huber_delta: float = HUBER_DELTA
    visible_weight: float = VISIBLE_WEIGHT
    occluded_weight: float = OCCLUDED_WEIGHT
    train_only_visible: bool = False
    min_length_fraction: float = 0.5
    seed: int = 0
    save_every: int = 500
    keep_last: int = 3
    eval_data: str | None = None
    eval_dataset: str = "davis"
    eval_every: int = 0
    eval_limit: int | None = None
    verifier_weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    relabel: bool = False
    resume: bool = False
    stop_at: int | None = None
    quiet: bool = False

    # Options that may change between a run and its --resume (the others must match).
    RESUMABLE_CHANGES = ("out", "save_every", "keep_last", "eval_data", "eval_dataset", "eval_every", "eval_limit",
                         "device", "relabel", "resume", "stop_at", "quiet", "videos_dir", "verifier_weights")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["resolution"] = list(self.resolution)
        return d

    @property
    def online(self) -> bool:
        from ..weights import registry

        return registry()[self.student]["architecture"] == "realtracker-online"


def default_teachers(student: str) -> list[str]:
    """Every RealTracker checkpoint of the registry except the student's own id (its weights are ``student-init``)."""
    from ..weights import registry

    return [k for k, v in registry().items()
            if v.get("kind") == "tracker" and str(v.get("architecture", "")).startswith("realtracker-") and k != student]


def validate(cfg: FinetuneConfig) -> None:
    """Fail fast, with one clear line, on options that cannot work."""
    from ..weights import registry

    reg = registry()
    if not Path(cfg.videos_dir).is_dir():
        raise PtrackError(f"VIDEOS_DIR {cfg.videos_dir} is not a folder (give the folder that holds your videos)")
    if cfg.student not in reg or not str(reg[cfg.student].get("architecture", "")).startswith("realtracker-"):
        ids = [k for k, v in reg.items() if str(v.get("architecture", "")).startswith("realtracker-")]
        raise PtrackError(f"--student {cfg.student!r} is not a RealTracker model (choose one of: {', '.join(ids)})")
    if cfg.recipe not in RECIPES:
        raise PtrackError(f"--recipe {cfg.recipe!r} is not one of {', '.join(RECIPES)}")
    h, w = cfg.resolution
    if h % 4 or w % 4 or h < 32 or w < 32:
        raise PtrackError(f"--resolution {h}x{w}: height and width must be multiples of 4 and at least 32")
    for name, value, low in (("--steps", cfg.steps, 1), ("--num-points", cfg.num_points, 1), ("--iters", cfg.iters, 1),
                             ("--teacher-iters", cfg.teacher_iters, 1), ("--save-every", cfg.save_every, 1),
                             ("--keep-last", cfg.keep_last, 1), ("--eval-every", cfg.eval_every, 0)):
        if value < low:
            raise PtrackError(f"{name} must be >= {low}, got {value}")
    if not 0 < cfg.min_length_fraction <= 1:
        raise PtrackError(f"--min-length-fraction must be in (0, 1], got {cfg.min_length_fraction}")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.grad_clip <= 0:
        raise PtrackError("--lr and --grad-clip must be > 0 and --weight-decay >= 0")
    if cfg.stop_at is not None and not 0 < cfg.stop_at <= cfg.steps:
        raise PtrackError(f"--stop-at {cfg.stop_at} must lie in 1..--steps ({cfg.steps})")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise PtrackError(f"--precision {cfg.precision!r} is not one of auto, fp32, bf16, fp16")
    if cfg.student_weights and not Path(cfg.student_weights).is_file():
        raise PtrackError(f"--student-weights {cfg.student_weights} not found (give a .pth/.safetensors file)")
    if cfg.eval_data and not Path(cfg.eval_data).exists():
        raise PtrackError(f"--eval-data {cfg.eval_data} not found (give tapvid_davis.pkl or the dataset folder)")
    if cfg.eval_every and not cfg.eval_data:
        raise PtrackError("--eval-every needs --eval-data (a TAP-Vid dataset file)")


# --------------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``), and the device."""
    from ..trackers import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev_name = resolve_device(device_pref)
    if dev_name.startswith("cuda"):
        if world > 1 or dev_name == "cuda":
            if local >= torch.cuda.device_count():
                raise PtrackError(f"process {rank} needs GPU {local} but only {torch.cuda.device_count()} are visible "
                                  "(use --gpus/--nproc_per_node <= the number of GPUs)")
            dev_name = f"cuda:{local}"
        torch.cuda.set_device(torch.device(dev_name))
    device = torch.device(dev_name)
    info = DistInfo(rank, world, local, False)
    if world > 1:
        if not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=2))
        info.initialised = True
    return info, device


def _all_mean(values: list[float], dist: DistInfo, device: torch.device) -> list[float]:
    if not dist.initialised:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / dist.world_size).tolist()


def _broadcast_object(obj, dist: DistInfo):
    if not dist.initialised:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather_object(obj, dist: DistInfo) -> list:
    if not dist.initialised:
        return [obj]
    out: list = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------------
# Model, optimiser, schedule


FROZEN_PREFIX = "updateformer.vis_conf_head."


def build_student(sd: dict, online: bool, hw: tuple[int, int], source: str, device: torch.device):
    """The student in train mode with ``vis_conf_head`` frozen; ``model_resolution`` = the training size."""
    from ..models.realtracker import load_realtracker

    model = load_realtracker(sd, online=online, source=source, model_resolution=hw).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN_PREFIX))
    return model.train()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lr_factor(step: int, total: int) -> float:
    """Cosine decay without warm-up from 1 to ``FINAL_LR_FRACTION`` over ``total`` steps (see the module docstring)."""
    s = min(max(step, 0), total)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * s / max(total, 1)))


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig):
    """AdamW over the trainable parameters and its LambdaLR cosine schedule."""
    opt = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total))
    return opt, sched


def autocast_dtype(cfg: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA by default; None = fp32 (always on CPU)."""
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    return torch.float16 if cfg.precision == "fp16" else torch.bfloat16


# --------------------------------------------------------------------------------------------------
# One step


@dataclass
class Batch:
    """One training sample: frames ``[T, H, W, 3]`` uint8 and its labels (pixels of those frames)."""

    frames: np.ndarray
    labels: ClipLabels
    clip: str = ""
    teacher: str = ""


def compute_loss(model, batch: Batch, cfg: FinetuneConfig, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> TrackLoss:
    """The student's loss on ``batch`` (differentiable). ``model`` may be wrapped in DDP."""
    lab = batch.labels
    video = torch.from_numpy(np.ascontiguousarray(batch.frames)).to(device).permute(0, 3, 1, 2).float()[None]
    queries = torch.from_numpy(np.asarray(lab.queries, np.float32)).to(device)[None]
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with ctx:
        _, _, _, train = model(video, queries, iters=cfg.iters, is_train=True)
    gt = torch.from_numpy(np.asarray(lab.tracks, np.float32)).to(device)[None]
    vis = torch.from_numpy(np.asarray(lab.visibility, bool)).to(device)[None]
    valid = torch.from_numpy(np.asarray(lab.valid, bool)).to(device)[None] & train.valid.bool()
    return track_loss(
        train.coords, train.starts, gt, vis, valid, gamma=cfg.gamma, huber_delta=cfg.huber_delta,
        visible_weight=cfg.visible_weight, occluded_weight=cfg.occluded_weight, occluded_term=not cfg.train_only_visible,
    )


def optimizer_step(model, opt, sched, loss: torch.Tensor, cfg: FinetuneConfig, scaler=None) -> float:
    """Backward, clip, step; returns the gradient norm before clipping."""
    params = trainable_parameters(model)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return float(norm)


def sample_length(num_frames: int, cfg: FinetuneConfig, online: bool) -> int:
    """Clip length used this step: all frames online; uniform in ``[ceil(T * fraction), T]`` offline (python ``random``)."""
    if online:
        return num_frames
    low = max(1, min(num_frames, math.ceil(num_frames * cfg.min_length_fraction)))
    return random.randint(low, num_frames)


# --------------------------------------------------------------------------------------------------
# Reporting


class Reporter:
    """Quiet reporter: the command line passes a rich one (progress bar with loss, lr, it/s, ETA)."""

    def start(self, total: int, done: int) -> None: ...

    def step(self, record: dict) -> None: ...

    def message(self, text: str) -> None: ...

    def stop(self) -> None: ...


class RichReporter(Reporter):
    """Rich progress bar on stderr: step, loss, lr, it/s, elapsed and ETA; messages printed above it."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ..commands.common import console

        self.console = console
        self.progress = Progress(
            TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
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
        self.console.print(text, highlight=False, markup=False)

    def stop(self) -> None:
        self.progress.stop()


# --------------------------------------------------------------------------------------------------
# Evaluation hook


def evaluate_student(model, cfg: FinetuneConfig, online: bool, device: torch.device) -> dict[str, float]:
    """TAP-Vid metrics (fractions) of the current weights through the ``eval`` code (``ptrack eval`` defaults:
    queried-first, joint protocol with the 5x5 support grid, CoTracker3's occlusion rule)."""
    from ..eval import evaluate_tracker, mean_over_videos, open_dataset
    from ..models.realtracker import load_realtracker
    from ..trackers.realtracker import RealTrackerTracker

    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    net = load_realtracker(sd, online=online, source="finetune student", model_resolution=tuple(cfg.resolution))
    prec = "fp32" if device.type != "cuda" or cfg.precision == "fp32" else ("fp16" if cfg.precision == "fp16" else "bf16")
    tracker = RealTrackerTracker(net, online=online, resolution=tuple(cfg.resolution), support_grid=False,
                                 device=device, precision=prec)
    ds = open_dataset(cfg.eval_dataset, cfg.eval_data)
    results = list(evaluate_tracker(tracker, ds, "first", "joint", limit=cfg.eval_limit,
                                    model_hw=tuple(cfg.resolution), occlusion_rule="cotracker3"))
    m = mean_over_videos([r.metrics for r in results])
    return {"aj": m["average_jaccard"], "delta_avg": m["average_pts_within_thresh"], "oa": m["occlusion_accuracy"],
            "videos": len(results)}


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class FinetuneSummary:
    """What a run did (returned on every rank; files are written by rank 0)."""

    run_dir: str
    steps_done: int
    start_step: int
    total_steps: int
    seconds: float
    final_loss: float | None
    best: dict | None
    last_weights: str | None
    clips: int
    videos: int
    skipped: list[dict] = field(default_factory=list)
    labels_computed: int = 0
    labels_reused: int = 0
    evals: list[dict] = field(default_factory=list)


def _prepare_run_dir(cfg: FinetuneConfig, dist: DistInfo) -> Path:
    """Create/check RUN_DIR and its config.json (rank 0); the resume rules live here."""
    from ..io.atomic import ensure_out_dir

    run = Path(cfg.out)
    error = None
    if dist.main:
        try:
            ensure_out_dir(run)
            cfg_path = run / "config.json"
            has_run = (run / "last.state.pt").exists() or (run / "checkpoints").is_dir()
            if cfg.resume:
                if not cfg_path.is_file():
                    raise PtrackError(f"--resume: {run} holds no fine-tuning run (config.json missing); drop --resume to start one")
                old = json.loads(cfg_path.read_text())
                new = cfg.to_json()
                diff = [k for k in new if k not in FinetuneConfig.RESUMABLE_CHANGES and old.get(k) != new[k]]
                if diff:
                    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff[:4])
                    raise PtrackError(f"--resume with different options ({shown}); use the original options or a new --out")
            else:
                if has_run:
                    raise PtrackError(f"{run} already holds a fine-tuning run: pass --resume to continue it, or choose another --out")
                with atomic_path(cfg_path) as tmp:
                    tmp.write_text(json.dumps(cfg.to_json(), indent=2))
        except PtrackError as exc:
            error = str(exc)
    error = _broadcast_object(error, dist)
    if error:
        raise PtrackError(error)
    return run


def _prepare_data(cfg: FinetuneConfig, run: Path, dist: DistInfo, online: bool, log: Callable[[str], None]) -> tuple[list, list, int]:
    """All clips (fixed at the run's start: data.json) and the skipped paths; rank 0 scans, the others read."""
    manifest = run / "data.json"
    payload = None
    if dist.main:
        try:
            if cfg.resume and manifest.is_file():
                payload = json.loads(manifest.read_text())
            else:
                log(f"scanning {cfg.videos_dir} for videos ...")
                videos, skipped = D.discover_videos(cfg.videos_dir, exclude=[run])
                clip_len = cfg.clip_len or DEFAULT_CLIP_LEN[online]
                clips, short = D.make_clips(videos, clip_len, cfg.frame_stride, cfg.max_clips_per_video,
                                            D.MIN_CLIP_FRAMES[online])
                payload = D.clips_manifest(clips, skipped + short)
                payload["videos"] = len(videos)
                with atomic_path(manifest) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1))
        except PtrackError as exc:
            payload = {"error": str(exc)}
    payload = _broadcast_object(payload, dist)
    if "error" in payload:
        raise PtrackError(payload["error"])
    clips = [D.Clip(**c) for c in payload["clips"]]
    skipped = payload["skipped"]
    if not clips:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise PtrackError(f"no usable videos under {cfg.videos_dir} ({why or 'the folder is empty'}); "
                          f"videos need at least {D.MIN_CLIP_FRAMES[online]} frames")
    if len(clips) < dist.world_size:
        raise PtrackError(f"only {len(clips)} clip(s) for {dist.world_size} processes: use fewer GPUs or more/longer videos")
    return clips, skipped, int(payload.get("videos", 0))


def _write_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in keep))


def run_finetune(cfg: FinetuneConfig, reporter: Reporter | None = None) -> FinetuneSummary:
    """Run (or resume) a fine-tuning run; see the module docstring. Returns a :class:`FinetuneSummary`."""
    from ..weights import download, load_weights, registry

    validate(cfg)
    reporter = reporter or Reporter()
    dist, device = init_distributed(cfg.device)
    if not dist.main:
        reporter = Reporter()
    log = reporter.message
    try:
        online = cfg.online
        hw = (int(cfg.resolution[0]), int(cfg.resolution[1]))
        teacher_ids = cfg.teachers if cfg.teachers is not None else default_teachers(cfg.student)
        specs = []
        for spec in parse_teachers(list(teacher_ids)):
            if spec.model_id == cfg.student and spec.weights == cfg.student_weights:
                log(f"teacher {spec.name} = the student's starting weights (student-init): listed once")
                continue
            specs.append(spec)
        # Fetch/check every checkpoint before any long work.
        if cfg.student_weights is None:
            try:
                download(cfg.student, quiet=True)
            except PtrackError as exc:
                raise PtrackError(f"student weights unavailable: {exc}; or pass --student-weights PATH") from None
        for s in specs:
            if s.weights is None and s.model_id in registry():
                try:
                    download(s.model_id, quiet=True)
                except PtrackError as exc:
                    raise PtrackError(f"teacher {s.model_id} unavailable: {exc}; or give it local weights with "
                                      f"--teachers {s.model_id}=PATH, or choose other teachers (--teachers none: "
                                      "the student's starting weights only)") from None
        if cfg.recipe == "verifier":
            if cfg.verifier_weights is None:
                try:
                    download("verifier", quiet=True)
                except PtrackError as exc:
                    raise PtrackError(f"verifier weights unavailable: {exc}; or pass --verifier-weights PATH") from None
            elif not Path(cfg.verifier_weights).is_file():
                raise PtrackError(f"--verifier-weights {cfg.verifier_weights} not found")
        run = _prepare_run_dir(cfg, dist)
        clips, skipped, n_videos = _prepare_data(cfg, run, dist, online, log)
        for s in skipped:
            log(f"skipped {s['path']}: {s['reason']}")
        my_clips = D.shard(clips, dist.rank, dist.world_size)

        # Student and its frozen starting copy (a teacher).
        sd0, info = load_weights(cfg.student, cfg.student_weights, quiet=True)
        source = str(info.get("path", cfg.student))
        model = build_student(sd0, online, hw, source, device)
        init_stamp = weights_stamp(cfg.student, cfg.student_weights)
        amp = autocast_dtype(cfg, device)
        store = LabelStore(run / "labels", specs, (sd0, online, init_stamp), recipe=cfg.recipe, hw=hw,
                           num_points=cfg.num_points, seed=cfg.seed, device=device, autocast_dtype=amp,
                           teacher_iters=cfg.teacher_iters, verifier_weights=cfg.verifier_weights, relabel=cfg.relabel,
                           log=log)
        opt, sched = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == torch.float16)
        ckpt = CheckpointManager(run, cfg.keep_last)

        # Fresh start or resume.
        random.seed(cfg.seed + dist.rank)
        np.random.seed((cfg.seed + dist.rank) % 2**32)
        torch.manual_seed(cfg.seed + dist.rank)
        start_step, best = 0, None
        if cfg.resume:
            if dist.main:
                removed = ckpt.remove_temporaries()
                if removed:
                    log(f"removed {removed} partial checkpoint file(s) left by an interrupted save")
            found = ckpt.find_resumable()
            found = _broadcast_object(None if found is None else [str(found[0]), str(found[1]), found[2]], dist)
            if found is None:
                raise PtrackError(f"--resume: no checkpoint in {run} yet (the run stopped before its first save); start again without --resume")
            w_path, s_path, start_step = found
            from ..checkpoints import read_state_dict

            model.load_state_dict({k: v.to(device) for k, v in read_state_dict(w_path).items()}, strict=True)
            state = load_state(s_path)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            rngs = state["rng"]
            if len(rngs) != dist.world_size:
                raise PtrackError(f"--resume: the run used {len(rngs)} process(es), now {dist.world_size}; resume with the same number")
            set_rng_state(rngs[dist.rank])
            best = state.get("best")
            log(f"resumed from step {start_step} ({w_path})")
        metrics_path = run / "metrics.jsonl"
        if dist.main:
            if cfg.resume:
                _truncate_metrics(metrics_path, start_step)
            else:
                metrics_path.unlink(missing_ok=True)  # left by a run that stopped before its first checkpoint

        net = model
        if dist.initialised:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

        end_step = cfg.stop_at or cfg.steps
        evals: list[dict] = []
        bad: set[int] = set()
        losses_since_save: list[float] = []
        recent: list[float] = []

        def save(step: int) -> None:
            nonlocal best
            states = _gather_object(rng_state(), dist)
            if not dist.main:
                return
            improved = False
            if not cfg.eval_data and losses_since_save:
                mean = float(np.mean(losses_since_save))
                if best is None or mean < best.get("train_loss", math.inf):
                    best = {"step": step, "train_loss": mean, "criterion": "lowest mean training loss since the previous save"}
                    improved = True
            losses_since_save.clear()
            meta = {"student": cfg.student, "architecture": "realtracker-online" if online else "realtracker-offline",
                    "resolution": f"{hw[0]}x{hw[1]}", "recipe": cfg.recipe, "base_weights": json.dumps(init_stamp)}
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": states, "best": best, "config": json.dumps(cfg.to_json())}
            ckpt.save(step, model.state_dict(), meta, state)
            if improved:
                ckpt.mark_best(step, best)

        def evaluate(step: int) -> None:
            nonlocal best
            if dist.main:
                log(f"evaluating on {cfg.eval_data} (step {step}) ...")
                m = evaluate_student(model, cfg, online, device)
                rec = {"event": "eval", "step": step, **m}
                evals.append(rec)
                _write_metrics(metrics_path, rec)
                log(f"step {step}: AJ {100 * m['aj']:.2f}  δ_avg {100 * m['delta_avg']:.2f}  OA {100 * m['oa']:.2f}")
                if best is None or m["aj"] > best.get("aj", -math.inf):
                    best = {"step": step, **m, "criterion": "highest AJ on --eval-data"}
                    from .checkpoint import save_weights

                    save_weights(ckpt.best[0], model.state_dict(), {"student": cfg.student, "step": str(step)})
                    with atomic_path(ckpt.best[1]) as tmp:
                        tmp.write_text(json.dumps(best, indent=2))
            best = _broadcast_object(best, dist)
            dist.barrier()

        if cfg.eval_data and start_step == 0:
            evaluate(0)  # the starting point, so "best" only moves on a real improvement

        reporter.start(cfg.steps, start_step)
        t_start = time.perf_counter()
        step = start_step
        while step < end_step:
            t0 = time.perf_counter()
            # The clip of this step (unreadable clips are skipped deterministically).
            idx = D.clip_for_step(len(my_clips), step, cfg.seed, dist.rank)
            for _ in range(len(my_clips)):
                if idx not in bad:
                    break
                idx = (idx + 1) % len(my_clips)
            else:
                raise PtrackError("every clip of this process became unreadable")
            teacher_index = random.randrange(len(store.specs)) if cfg.recipe == "random-teacher" else None
            while True:
                clip = my_clips[idx]
                cache: list[np.ndarray] = []

                def frames() -> np.ndarray:
                    if not cache:
                        cache.append(D.read_clip(clip, hw))
                    return cache[0]

                try:
                    labels = store.labels(clip, frames, teacher_index)
                    video = frames()
                    break
                except PtrackError as exc:
                    log(f"skipping clip {clip.describe()}: {exc}")
                    bad.add(idx)
                    if len(bad) >= len(my_clips):
                        raise PtrackError("every clip of this process became unreadable") from None
                    while idx in bad:
                        idx = (idx + 1) % len(my_clips)
            length = sample_length(min(len(video), labels.tracks.shape[0]), cfg, online)
            batch = Batch(video[:length], labels.truncate(length), clip.clip_id,
                          store.specs[teacher_index].name if teacher_index is not None else "verifier")
            parts = compute_loss(net, batch, cfg, device, amp)
            lr = opt.param_groups[0]["lr"]
            norm = optimizer_step(net, opt, sched, parts.total, cfg, scaler)
            step += 1
            loss, vis_l, occ_l = _all_mean([float(parts.total.detach()), float(parts.visible), float(parts.occluded)], dist, device)
            losses_since_save.append(loss)
            recent = (recent + [loss])[-50:]
            record = {"step": step, "loss": loss, "loss_visible": vis_l, "loss_occluded": occ_l, "lr": lr,
                      "grad_norm": norm, "teacher": batch.teacher, "clip": clip.describe(), "frames": int(length),
                      "labelled": int(batch.labels.valid.sum()), "seconds": time.perf_counter() - t0}
            if dist.main:
                _write_metrics(metrics_path, record)
            reporter.step(record)
            if cfg.eval_every and step % cfg.eval_every == 0:
                evaluate(step)  # before saving, so the saved state knows this step's result
            if step % cfg.save_every == 0 or step == end_step:
                save(step)
        reporter.stop()
        seconds = time.perf_counter() - t_start
        computed, reused = (int(round(v * dist.world_size)) for v in _all_mean([store.computed, store.reused], dist, device))
        dist.barrier()
        return FinetuneSummary(
            run_dir=str(run), steps_done=step - start_step, start_step=start_step, total_steps=cfg.steps,
            seconds=seconds, final_loss=float(np.mean(recent)) if recent else None, best=best,
            last_weights=str(ckpt.last[0]) if ckpt.last[0].exists() else None, clips=len(clips), videos=n_videos,
            skipped=skipped, labels_computed=computed, labels_reused=reused, evals=evals,
        )
    finally:
        reporter.stop()
        if dist.initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Local multi-process launch (tests, CPU): the same code path torchrun drives


def _local_worker(rank: int, cfg: FinetuneConfig, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    summary = run_finetune(cfg)
    Path(out, f"summary_rank{rank}.json").write_text(json.dumps(dataclasses.asdict(summary)))


def launch_local(cfg: FinetuneConfig, nprocs: int) -> list[dict]:
    """Run ``nprocs`` processes on this machine (gloo on CPU) like ``torchrun --nproc_per_node``; returns their summaries."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="ptrack_ddp_") as out:
        mp.start_processes(_local_worker, args=(cfg, nprocs, port, out), nprocs=nprocs, join=True, start_method="spawn")
        return [json.loads(Path(out, f"summary_rank{r}.json").read_text()) for r in range(nprocs)]
