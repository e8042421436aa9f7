"""The verifier-guided ensemble as a :class:`~pointtrack_cli.trackers.base.Tracker` (``ensemble:<t1>,<t2>,...``).

Data path per :meth:`EnsembleTracker.track` call: frames + queries ``(t, x, y)`` in the frames' pixels ->
every teacher (built once, kept for all calls) -> candidates ``[T, N, M, 2]`` -> selection (verifier
arg-max with majority-vote visibility, or ``random`` / ``median``) -> :class:`EnsembleTrackOutput`.
The teacher loop and the selection are :func:`pointtrack_cli.ensemble.teachers.ensemble_frames`, the same
code ``ptrack ensemble`` runs; this module only adds "build once, track many videos" (what ``ptrack eval``
needs) and hands the candidates to the caller (for the oracle of ``ptrack eval tapvid --oracle``).

Model id syntax: ``ensemble:ID[=WEIGHTS],ID[=WEIGHTS],...`` with ``ID`` any id of
:func:`~pointtrack_cli.trackers.registry.tracker_ids` and optional local weights per teacher (e.g.
``ensemble:lk,realtracker-online=ckpt/online.pth``). A repeated id is a separate candidate (``lk#2``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..device import resolve_device, resolve_precision
from ..errors import PtrackError
from ..models.verifier import Verifier
from ..trackers.base import FrameSource, ProgressFn, Tracker, TrackOutput
from ..trackers.registry import split_model_id, tracker_ids
from .selection import STRATEGIES
from .teachers import PRESETS, TeacherSpec, ensemble_frames, fetch_teacher_weights, parse_teachers, unique_names
from .verifier import build_verifier, load_verifier_weights

PREFIX = "ensemble:"


@dataclass
class EnsembleTrackOutput(TrackOutput):
    """A :class:`TrackOutput` plus per-point arrays the ensemble's callers may want, frames first.

    extras: ``candidates [T, N, M, 2]`` float32 (x, y; NaN = the teacher gave no estimate) and
    ``candidate_visibility [T, N, M]`` bool (each teacher's own flag), in the same pixels as ``tracks``.
    """

    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        t, n = self.tracks.shape[:2]
        for name, arr in self.extras.items():
            if arr.shape[:2] != (t, n):
                raise ValueError(f"extras[{name!r}] has shape {arr.shape}, expected ({t}, {n}, ...)")


def is_ensemble_id(model: str) -> bool:
    """True for ``ensemble:...`` (and the bare ``ensemble``, which :func:`parse_spec` rejects with a hint)."""
    return model == "ensemble" or model.startswith(PREFIX)


def parse_spec(model: str) -> list[TeacherSpec]:
    """``"ensemble:lk,realtracker-online=w.pth"`` -> ``[TeacherSpec("lk"), TeacherSpec("realtracker-online", "w.pth")]``.

    Every id must be one :func:`~pointtrack_cli.trackers.registry.tracker_ids` lists, optionally with
    ``@HxW``, or a preset (``trackon-r``, ``trackon-r-eval``); nested ensembles are not.
    """
    if not model.startswith(PREFIX) or not model[len(PREFIX):].strip(" ,"):
        raise PtrackError(f"--model {model!r}: name the teachers, e.g. --model ensemble:lk,protracker "
                          "(comma-separated tracker ids or a preset, see `ptrack models`)")
    specs = parse_teachers([item for item in model[len(PREFIX):].split(",") if item.strip()])
    check_teachers(specs, f" in --model {model}")
    return specs


def check_teachers(specs: list[TeacherSpec], where: str = "") -> None:
    """One line naming the first unknown teacher id and the choices."""
    known = tracker_ids()
    for spec in specs:
        if split_model_id(spec.id)[0] not in known:
            raise PtrackError(f"unknown teacher {spec.id!r}{where} (choose from: {', '.join(known)}, or a preset: "
                              f"{', '.join(PRESETS)}; see `ptrack models`)")


class EnsembleTracker(Tracker):
    """Several teachers, one selection per frame and point; teachers and verifier are loaded once.

    teachers: built trackers (kept in memory together for the tracker's lifetime, so a multi-video
    evaluation loads each model once; ``ptrack ensemble`` instead loads one teacher at a time).
    verifier: a model from :func:`pointtrack_cli.ensemble.verifier.build_verifier` (``select="verifier"`` only).
    seed: ``select="random"`` draws its teacher with ``seed + k`` on the k-th :meth:`track` call, so the
    videos of an evaluation do not all take the same teacher (the official baseline also varies it per video).
    """

    streaming = False

    def __init__(
        self,
        teachers: list[Tracker],
        *,
        select: str = "verifier",
        verifier: Verifier | None = None,
        verifier_info: dict | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if not teachers:
            raise PtrackError("an ensemble needs at least one teacher")
        if select not in STRATEGIES:
            raise PtrackError(f"--select {select!r} is not one of {', '.join(STRATEGIES)}")
        if select == "verifier" and verifier is None:
            raise PtrackError("--select verifier needs the verifier (weights); or choose --select median")
        self.teachers = list(teachers)
        self.teacher_names = unique_names([t.name for t in self.teachers])
        self.select = select
        self.verifier = verifier
        self.device = device
        self.precision = precision
        self.seed = int(seed)
        self.calls = 0
        self.name = name or PREFIX + ",".join(t.name for t in self.teachers)
        # Points exist before their query frame as soon as one teacher tracks backward.
        self.backward = any(t.backward for t in self.teachers)
        self.weights_info = {
            "verifier": verifier_info if select == "verifier" else None,
            "teachers": {n: (t.weights_info or "none (weight-free tracker)") for n, t in zip(self.teacher_names, self.teachers)},
        }

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> EnsembleTrackOutput:
        """Track ``queries [N, 3]`` (t frame index, x, y pixels of ``video``); arrays ``[T, N, ...]`` in those pixels."""
        res = ensemble_frames(
            video, queries, self.teachers, self.select, seed=self.seed + self.calls, verifier=self.verifier,
            device=self.device, precision=self.precision, progress=progress,
        )
        self.calls += 1
        sel = res.choice.selection
        return EnsembleTrackOutput(
            sel.tracks, sel.visibility, res.choice.visibility_prob, res.choice.confidence,
            extras={"candidates": res.candidates, "candidate_visibility": res.candidate_visibility},
        )

    def settings(self) -> dict:
        return {
            "select": self.select,
            "teachers": [{"teacher": n, "settings": t.settings()} for n, t in zip(self.teacher_names, self.teachers)],
            "visibility": "strict majority vote of the teachers' own flags" if self.select != "random"
            else "the chosen teacher's own flag",
            "verifier_precision": self.precision if self.select == "verifier" else None,
            "seed": self.seed if self.select == "random" else None,
        }


def build_ensemble_tracker(
    model: str,
    build: Callable[..., Tracker],
    *,
    select: str = "verifier",
    verifier_weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    quiet: bool = True,
) -> EnsembleTracker:
    """Build ``ensemble:...`` once: verifier weights first (the cheap check that fails most often offline),
    then every teacher with ``build(id, weights=path_or_None)`` (the caller binds device, backward, ...).

    precision: the verifier's (``auto`` = fp16 on CUDA as the official pipeline, fp32 on CPU).
    """
    spec = parse_spec(model)
    if select not in STRATEGIES:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(STRATEGIES)}")
    if verifier_weights is not None and select != "verifier":
        raise PtrackError(f"--verifier-weights is only used with --select verifier (not {select})")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, "verifier")
    verifier = info = None
    if select == "verifier":
        sd_info = load_verifier_weights(verifier_weights, quiet)  # one-line error suggesting --select median
        verifier, info = build_verifier(sd_info, dev), dict(sd_info[1])
        del sd_info
    fetch_teacher_weights(spec, quiet)
    teachers = []
    for t in spec:
        tid = t.id
        try:
            teachers.append(build(tid, weights=t.weights))
        except PtrackError as exc:
            # The generic hints name --weights, which an ensemble refuses: point to ID=PATH instead.
            msg = re.sub(r"--weights( PATH)?\b", f"{tid}=PATH in --model ensemble:...", str(exc))
            raise PtrackError(f"teacher {tid}: {msg}") from None
    return EnsembleTracker(teachers, select=select, verifier=verifier, verifier_info=info, device=dev,
                           precision=prec, seed=seed, name=model)
