"""The options of a fine-tuning run (:class:`FinetuneConfig`), their defaults and their validation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..device import check_precision
from ..errors import PtrackError
from ..weights.registry import registry
from .labels import RECIPES
from .losses import GAMMA, HUBER_DELTA, OCCLUDED_WEIGHT, VISIBLE_WEIGHT

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
    checkpointing: bool = True  # activation checkpointing of the student (memory; same gradients)

    # Options that may change between a run and its --resume (the others must match).
    RESUMABLE_CHANGES = ("out", "save_every", "keep_last", "eval_data", "eval_dataset", "eval_every", "eval_limit",
                         "device", "relabel", "resume", "stop_at", "quiet", "videos_dir", "verifier_weights",
                         "checkpointing")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["resolution"] = list(self.resolution)
        return d

    @property
    def online(self) -> bool:
        return registry()[self.student]["architecture"] == "realtracker-online"

    @property
    def clip_length(self) -> int:
        """Frames per clip: ``clip_len``, else the official default of the student (64 online, 80 offline)."""
        return self.clip_len or DEFAULT_CLIP_LEN[self.online]


def default_teachers(student: str) -> list[str]:
    """Every RealTracker checkpoint of the registry except the student's own id (its weights are ``student-init``)."""
    return [k for k, v in registry().items()
            if v.get("kind") == "tracker" and str(v.get("architecture", "")).startswith("realtracker-") and k != student]


def validate(cfg: FinetuneConfig) -> None:
    """Fail fast, with one clear line, on options that cannot work."""
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
    check_precision(cfg.precision)  # "--precision 'x' is not one of auto, fp32, bf16, fp16"
    if cfg.student_weights and not Path(cfg.student_weights).is_file():
        raise PtrackError(f"--student-weights {cfg.student_weights} not found (give a .pth/.safetensors file)")
    if cfg.eval_data and not Path(cfg.eval_data).exists():
        raise PtrackError(f"--eval-data {cfg.eval_data} not found (give tapvid_davis.pkl or the dataset folder)")
    if cfg.eval_every and not cfg.eval_data:
        raise PtrackError("--eval-every needs --eval-data (a TAP-Vid dataset file)")
