"""The fine-tuning loop: pseudo-labelled clips -> RealTracker student -> checkpoints, metrics, evaluation.

One step = one clip per process (batch size 1 per GPU, as both official recipes):

1. the clip of this step (a seeded permutation of the rank's shard per epoch, :mod:`.data`);
2. its pseudo-labels (:mod:`.labels`; random-teacher: one teacher drawn uniformly with python's ``random``;
   verifier: the verifier's selection among all teachers), cached on disk;
3. offline student: the first ``L`` frames, ``L`` uniform in ``[ceil(T * min_length_fraction), T]`` (the model
   then resamples its time embedding); online student: the whole clip, windows of 16 every 8;
4. the student's per-iteration predictions -> :func:`.losses.track_loss` -> backward (DDP averages the
   gradients) -> clip the gradient norm -> AdamW -> learning rate of the next step (:mod:`.student`).

Before the first step every checkpoint is fetched and every teacher (and the verifier) loaded, so a missing or
damaged file stops the run at once. Precision: CUDA runs the student under bf16 autocast by default
(``--precision``: bf16, fp16 with a gradient scaler, or fp32); CPU runs fp32. Distributed
(:mod:`.distributed`): under ``torchrun`` the model is wrapped in DDP and the clips sharded by rank; rank 0
writes checkpoints, metrics and evaluations (:mod:`.run_dir`, :mod:`.checkpoint`). ``metrics.jsonl`` holds one
record per step: losses averaged over the processes, lr, gradient norm, and rank 0's clip and teacher.
"""
from __future__ import annotations

import functools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_precision
from ..errors import PtrackError
from ..io.atomic import atomic_path
from ..models.allocator import release_freed_memory
from ..weights.hub import download, load_weights
from ..weights.registry import registry
from ..weights.state_dict import read_state_dict
from . import data as D
from .checkpoint import CheckpointManager, load_state, rng_state, save_weights, set_rng_state
from .config import FinetuneConfig, default_teachers, validate
from .distributed import (
    DistInfo, all_mean, broadcast_object, close_distributed, gather_object, init_distributed, spawn_local, wrap_model,
)
from .labels import ClipLabels, LabelStore, TeacherSpec, parse_teachers, weights_stamp
from .report import FinetuneSummary, Reporter
from .run_dir import MetricsLog, prepare_data, prepare_run_dir
from .student import (
    Batch, build_student, compute_loss, evaluate_student, make_optimizer, make_scaler, optimizer_step, sample_length,
)

RECENT_LOSSES = 50  # steps averaged into the summary's final loss


def teacher_specs(cfg: FinetuneConfig, log) -> list[TeacherSpec]:
    """The teachers besides ``student-init`` (``--teachers``, default :func:`default_teachers`); an entry equal to
    the student's starting weights is dropped (it already is ``student-init``)."""
    teacher_ids = cfg.teachers if cfg.teachers is not None else default_teachers(cfg.student)
    specs = []
    for spec in parse_teachers(list(teacher_ids)):
        if spec.model_id == cfg.student and spec.weights == cfg.student_weights:
            log(f"teacher {spec.name} = the student's starting weights (student-init): listed once")
            continue
        specs.append(spec)
    return specs


def fetch_weights(cfg: FinetuneConfig, specs: list[TeacherSpec]) -> None:
    """Download (or find cached) every checkpoint the run needs, before any long work; one-line errors."""
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


class Trainer:
    """One process's part of a run. :meth:`run` does everything; the state it builds is held here.

    Set up by :meth:`run`: ``run_dir``, ``clips`` (all) / ``my_clips`` (this rank's shard), ``model`` (the
    student) / ``net`` (the same, in DDP when distributed), ``store`` (labels), ``opt``, ``sched``, ``scaler``,
    ``ckpt``, ``metrics``; ``start_step``, ``best`` (the best-checkpoint record), ``evals``; ``bad`` (indices
    of unreadable clips of ``my_clips``), ``losses_since_save`` (for the best-by-training-loss rule), ``recent``.
    """

    def __init__(self, cfg: FinetuneConfig, dist: DistInfo, device: torch.device, reporter: Reporter) -> None:
        self.cfg, self.dist, self.device, self.reporter = cfg, dist, device, reporter
        self.log = reporter.message
        self.online = cfg.online
        self.hw = (int(cfg.resolution[0]), int(cfg.resolution[1]))
        self.precision = resolve_precision(cfg.precision, str(device), "finetune")
        self.start_step = 0
        self.best: dict | None = None
        self.evals: list[dict] = []
        self.bad: set[int] = set()
        self.losses_since_save: list[float] = []
        self.recent: list[float] = []

    # ---- set-up ----------------------------------------------------------------------------------

    def run(self) -> FinetuneSummary:
        cfg, dist = self.cfg, self.dist
        specs = teacher_specs(cfg, self.log)
        fetch_weights(cfg, specs)
        self.run_dir = prepare_run_dir(cfg, dist)
        self.clips, skipped, n_videos = prepare_data(cfg, self.run_dir, dist, self.online, self.log)
        for s in skipped:
            self.log(f"skipped {s['path']}: {s['reason']}")
        self.my_clips = D.shard(self.clips, dist.rank, dist.world_size)
        self.build(specs)
        self.seed()
        if cfg.resume:
            self.restore()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        if dist.main:
            if cfg.resume:
                self.metrics.truncate(self.start_step)
            else:
                self.metrics.clear()  # left by a run that stopped before its first checkpoint
        self.net = wrap_model(self.model, dist, self.device)
        if cfg.eval_data and self.start_step == 0:
            self.evaluate(0)  # the starting point, so "best" only moves on a real improvement

        self.reporter.start(cfg.steps, self.start_step)
        t_start = time.perf_counter()
        step = self.start_step
        while step < (cfg.stop_at or cfg.steps):
            self.train_step(step)
            step += 1
            if cfg.eval_every and step % cfg.eval_every == 0:
                self.evaluate(step)  # before saving, so the saved state knows this step's result
            if step % cfg.save_every == 0 or step == (cfg.stop_at or cfg.steps):
                self.save(step)
        self.reporter.stop()
        seconds = time.perf_counter() - t_start
        computed, reused = (int(round(v * dist.world_size))
                            for v in all_mean([self.store.computed, self.store.reused], dist, self.device))
        dist.barrier()
        return FinetuneSummary(
            run_dir=str(self.run_dir), steps_done=step - self.start_step, start_step=self.start_step,
            total_steps=cfg.steps, seconds=seconds, final_loss=float(np.mean(self.recent)) if self.recent else None,
            best=self.best, last_weights=str(self.ckpt.last[0]) if self.ckpt.last[0].exists() else None,
            clips=len(self.clips), videos=n_videos, skipped=skipped, labels_computed=computed, labels_reused=reused,
            evals=self.evals,
        )

    def build(self, specs: list[TeacherSpec]) -> None:
        """The student, its frozen starting copy (teacher ``student-init``), the other teachers, the optimiser."""
        cfg = self.cfg
        sd0, info = load_weights(cfg.student, cfg.student_weights, quiet=True)
        source = str(info.get("path", cfg.student))
        self.model = build_student(sd0, self.online, self.hw, source, self.device, checkpointing=cfg.checkpointing)
        self.init_stamp = weights_stamp(cfg.student, cfg.student_weights)
        self.store = LabelStore(
            self.run_dir / "labels", specs, (sd0, self.online, self.init_stamp), recipe=cfg.recipe, hw=self.hw,
            num_points=cfg.num_points, seed=cfg.seed, device=self.device, precision=self.precision,
            teacher_iters=cfg.teacher_iters, verifier_weights=cfg.verifier_weights, relabel=cfg.relabel, log=self.log,
        )
        self.store.load_models()
        self.opt, self.sched = make_optimizer(self.model, cfg)
        self.scaler = make_scaler(self.device, self.precision)
        self.ckpt = CheckpointManager(self.run_dir, cfg.keep_last)

    def seed(self) -> None:
        """Global RNGs of a fresh start, one stream per rank (a resume then restores the saved states)."""
        seed = self.cfg.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def restore(self) -> None:
        """``--resume``: weights, optimiser, schedule, scaler, RNG states and best record of the newest complete save."""
        dist, ckpt = self.dist, self.ckpt
        if dist.main:
            removed = ckpt.remove_temporaries()
            if removed:
                self.log(f"removed {removed} partial checkpoint file(s) left by an interrupted save")
        found = ckpt.find_resumable()
        found = broadcast_object(None if found is None else [str(found[0]), str(found[1]), found[2]], dist)
        if found is None:
            raise PtrackError(f"--resume: no checkpoint in {self.run_dir} yet (the run stopped before its first save); "
                              "start again without --resume")
        w_path, s_path, self.start_step = found
        self.model.load_state_dict({k: v.to(self.device) for k, v in read_state_dict(w_path).items()}, strict=True)
        state = load_state(s_path)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) != dist.world_size:
            raise PtrackError(f"--resume: the run used {len(rngs)} process(es), now {dist.world_size}; resume with the same number")
        set_rng_state(rngs[dist.rank])
        self.best = state.get("best")
        self.log(f"resumed from step {self.start_step} ({w_path})")

    # ---- one step ----------------------------------------------------------------------------------

    def labelled_clip(self, step: int, teacher_index: int | None) -> tuple[D.Clip, np.ndarray, ClipLabels]:
        """The clip of 0-based ``step``, its frames ``[T, H, W, 3]`` and labels; unreadable clips are skipped
        deterministically (the next readable one of the shard) and remembered in ``bad``."""
        n = len(self.my_clips)
        idx = D.clip_for_step(n, step, self.cfg.seed, self.dist.rank)
        while True:
            if len(self.bad) >= n:
                raise PtrackError("every clip of this process became unreadable")
            while idx in self.bad:
                idx = (idx + 1) % n
            clip = self.my_clips[idx]
            # Read on first use only: labels found in the cache need no decoding until the student's forward.
            frames = functools.cache(functools.partial(D.read_clip, clip, self.hw))
            try:
                labels = self.store.labels(clip, frames, teacher_index)
                return clip, frames(), labels
            except PtrackError as exc:
                self.log(f"skipping clip {clip.describe()}: {exc}")
                self.bad.add(idx)

    def _release_host_memory(self) -> None:
        """On the CPU, hand the heap freed by the last stage back to the OS (models/allocator.py)."""
        if self.device.type == "cpu":
            release_freed_memory()

    def train_step(self, step: int) -> dict:
        """Train 0-based ``step`` (see the module docstring); writes and reports its record (``step`` + 1)."""
        cfg, store = self.cfg, self.store
        t0 = time.perf_counter()
        teacher_index = random.randrange(len(store.specs)) if cfg.recipe == "random-teacher" else None
        clip, video, labels = self.labelled_clip(step, teacher_index)
        length = sample_length(min(len(video), labels.tracks.shape[0]), cfg, self.online)
        batch = Batch(video[:length], labels.truncate(length), clip.clip_id,
                      store.specs[teacher_index].name if teacher_index is not None else "verifier")
        self._release_host_memory()  # the labelling's free heap, so that it does not sit under the step's peak
        parts = compute_loss(self.net, batch, cfg, self.device, self.precision)
        self._release_host_memory()  # the forward's, likewise under the backward's (1.3 GB at the issue-15 config)
        lr = self.opt.param_groups[0]["lr"]
        norm = optimizer_step(self.net, self.opt, self.sched, parts.total, cfg, self.scaler)
        loss, vis_l, occ_l = all_mean([float(parts.total.detach()), float(parts.visible), float(parts.occluded)],
                                      self.dist, self.device)
        self.losses_since_save.append(loss)
        self.recent = (self.recent + [loss])[-RECENT_LOSSES:]
        record = {"step": step + 1, "loss": loss, "loss_visible": vis_l, "loss_occluded": occ_l, "lr": lr,
                  "grad_norm": norm, "teacher": batch.teacher, "clip": clip.describe(), "frames": int(length),
                  "labelled": int(batch.labels.valid.sum()), "seconds": time.perf_counter() - t0}
        if self.dist.main:
            self.metrics.write(record)
        self.reporter.step(record)
        return record

    # ---- checkpoints and evaluation ------------------------------------------------------------------

    def save(self, step: int) -> None:
        """Checkpoint after ``step`` (rank 0 writes; every rank's RNG state goes in); without --eval-data the save
        with the lowest mean training loss since the previous one becomes ``best``."""
        cfg = self.cfg
        states = gather_object(rng_state(), self.dist)
        if not self.dist.main:
            return
        improved = False
        if not cfg.eval_data and self.losses_since_save:
            mean = float(np.mean(self.losses_since_save))
            if self.best is None or mean < self.best.get("train_loss", math.inf):
                self.best = {"step": step, "train_loss": mean, "criterion": "lowest mean training loss since the previous save"}
                improved = True
        self.losses_since_save.clear()
        meta = {"student": cfg.student, "architecture": "realtracker-online" if self.online else "realtracker-offline",
                "resolution": f"{self.hw[0]}x{self.hw[1]}", "recipe": cfg.recipe, "base_weights": json.dumps(self.init_stamp)}
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": states, "best": self.best, "config": json.dumps(cfg.to_json())}
        self.ckpt.save(step, self.model.state_dict(), meta, state)
        if improved:
            self.ckpt.mark_best(step, self.best)

    def evaluate(self, step: int) -> None:
        """TAP-Vid metrics after ``step`` (rank 0); the highest AJ so far becomes ``best.safetensors``."""
        cfg = self.cfg
        if self.dist.main:
            self.log(f"evaluating on {cfg.eval_data} (step {step}) ...")
            m = evaluate_student(self.model, cfg, self.online, self.device)
            rec = {"event": "eval", "step": step, **m}
            self.evals.append(rec)
            self.metrics.write(rec)
            self.log(f"step {step}: AJ {100 * m['aj']:.2f}  δ_avg {100 * m['delta_avg']:.2f}  OA {100 * m['oa']:.2f}")
            if self.best is None or m["aj"] > self.best.get("aj", -math.inf):
                self.best = {"step": step, **m, "criterion": "highest AJ on --eval-data"}
                save_weights(self.ckpt.best[0], self.model.state_dict(), {"student": cfg.student, "step": str(step)})
                with atomic_path(self.ckpt.best[1]) as tmp:
                    tmp.write_text(json.dumps(self.best, indent=2))
        self.best = broadcast_object(self.best, self.dist)
        self.dist.barrier()


def run_finetune(cfg: FinetuneConfig, reporter: Reporter | None = None) -> FinetuneSummary:
    """Run (or resume) a fine-tuning run; see the module docstring. Returns a :class:`FinetuneSummary`."""
    validate(cfg)
    reporter = reporter or Reporter()
    dist, device = init_distributed(cfg.device)
    if not dist.main:
        reporter = Reporter()
    try:
        return Trainer(cfg, dist, device, reporter).run()
    finally:
        reporter.stop()
        close_distributed(dist)


def launch_local(cfg: FinetuneConfig, nprocs: int) -> list[dict]:
    """Run ``nprocs`` processes on this machine (gloo on CPU) like ``torchrun --nproc_per_node``; returns their summaries."""
    return spawn_local(run_finetune, cfg, nprocs)
