"""The ensemble as one run: :func:`plan_ensemble` (checks, weights, the video opened) and :class:`EnsembleJob`
(decode once, teachers, candidates, selection) -> :class:`EnsembleResult`; :func:`ensemble` does both.

What ``ptrack ensemble``, ``ptrack track --model ensemble:...`` and :func:`pointtrack_cli.api.ensemble` run (the
API re-exports these names). Data path: :mod:`.teachers`; choice rules: :mod:`.selection`; verifier: :mod:`.verifier`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..device import check_precision, resolve_device, resolve_precision
from ..errors import PtrackError
from ..io.identity import array_digest, path_identity, video_identity, weights_identity
from ..io.video import ArrayVideo, Video, decode_report, open_video, selection_meta
from ..models.allocator import release_freed_memory
from ..queries import build_queries, validate_queries
from ..result import COORDINATES, TrackResult
from ..trackers.base import ProgressFn, Tracker
from ..trackers.registry import build_tracker as build_single_tracker
from . import selection as S
from .teachers import (
    DEFAULT_TEACHERS, StageFn, TeacherSpec, choose, fetch_teacher_weights, load_candidate_files, parse_teachers,
    query_rows, run_teachers, unique_names,
)
from .tracker import check_teachers
from .verifier import check_verifier_weights, reload_verifier_weights


@dataclass
class EnsembleResult:
    """The chosen tracks (``result``, original pixels) and how they were chosen.

    candidates: ``[T, N, M, 2]`` original pixels (NaN = no estimate); candidate_visibility ``[T, N, M]``;
    scores ``[T, N, M]`` (verifier: softmax over candidates; random: one-hot; median: uniform over the
    candidates that entered the median); chosen ``[T, N]`` candidate index (-1: none);
    teachers: the M candidate names; logits: raw verifier scores (``select="verifier"`` only);
    video: the decoded frames everything was computed on (for the overlay).
    """

    result: TrackResult
    teachers: list[str]
    candidates: np.ndarray
    candidate_visibility: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    select: str
    logits: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    video: ArrayVideo | None = None

    def counts(self) -> dict[str, int]:
        """How many (frame, point) pairs from each candidate's query frame on took that candidate."""
        q = self.result.queries.copy()
        q[:, 0] = np.searchsorted(self.result.frame_indices, q[:, 0].astype(np.int64))
        c = S.chosen_counts(self.chosen, len(self.teachers), q)
        return {name: int(n) for name, n in zip(self.teachers, c)}

    def selection_arrays(self) -> dict[str, np.ndarray]:
        """Arrays of ``selection.npz`` (plain dtypes: loads with allow_pickle=False)."""
        out = {
            "candidates": self.candidates.astype(np.float32),
            "candidate_visibility": self.candidate_visibility.astype(bool),
            "scores": self.scores.astype(np.float32),
            "chosen": self.chosen.astype(np.int64),
            "teachers": np.array(self.teachers, dtype=str),
            "select": np.str_(self.select),
            "frame_indices": self.result.frame_indices,
        }
        if self.logits is not None:
            out["rank_logits"] = self.logits.astype(np.float32)
        return out


def ensemble(
    video: str | Path | Video,
    queries: str | Path | np.ndarray | None = None,
    *,
    teachers: Sequence[str | tuple | TeacherSpec | Tracker] = (),
    candidates: Sequence[str | Path] = (),
    select: str = "verifier",
    verifier_weights: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    points: Sequence[str] = (),
    backward: bool = False,
    resolution: tuple[int, int] | None = None,
    support_grid: bool = True,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    max_size: int | None = None,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    quiet: bool = True,
    command: str | None = None,
    strict_decode: bool = False,
) -> EnsembleResult:
    """Run ``teachers`` on ``video``, add ``candidates`` files, choose per frame and point.

    video: a file, an image folder or a :class:`Video` (decoded once into memory here if it streams).
    teachers: tracker ids (``"ID"`` or ``"ID=WEIGHTS"``; each built, run and freed before the next loads),
        presets (``trackon-r``, ``trackon-r-eval``: the official Track-On-R teacher sets without Track-On2,
        run as its pipeline runs them, without support grids) or :class:`Tracker` objects (used as they are).
        With neither teachers nor candidates the default set.
    queries: ``[N, 3]`` (t, x, y) array or file, t a source frame number, x, y original pixels; with none
        (and no grid/mask/points) the queries of the candidate files, else a 10x10 grid.
    select: ``verifier`` (default; needs the verifier weights: ``verifier_weights`` or the Hub),
        ``random`` (one teacher for the whole video, from ``seed``) or ``median``.
    backward: ask teachers to track before the query frame too (otherwise those frames are NaN).
    resolution: every teacher's input (h, w), unless its id carries ``@HxW``; default: each its own.
    support_grid: RealTracker teachers add their support grid to explicit queries (as ``track`` does); presets
        never do.
    progress(n) / stage(description, total): progress reporting, one stage per teacher and the verifier.
    strict_decode: as in :func:`track`.

    Returns an :class:`EnsembleResult`; ``.result`` is the ``TrackResult`` (with ``selection.npz`` in its
    ``extra_files``).
    """
    return plan_ensemble(
        video, queries, teachers=teachers, candidates=candidates, select=select, verifier_weights=verifier_weights,
        device=device, precision=precision, seed=seed, grid=grid, grid_frame=grid_frame, mask=mask, points=points,
        backward=backward, resolution=resolution, support_grid=support_grid, start=start, end=end, stride=stride,
        max_size=max_size, quiet=quiet, command=command, strict_decode=strict_decode,
    ).run(progress, stage)


def _teacher_identity(t: TeacherSpec | Tracker) -> dict:
    if isinstance(t, Tracker):
        return {"tracker": t.name, "settings": t.settings(), "weights": t.weights_info}
    return {"id": t.id, "weights": weights_identity(t.id, t.weights), "official": t.official}


@dataclass
class EnsembleJob:
    """An ensemble run planned by :func:`plan_ensemble`: arguments checked, weights fetched, video opened, nothing
    decoded or tracked yet. ``inputs`` identify what determines the arrays (see the module docstring)."""

    video: Video
    queries: str | Path | np.ndarray | None
    order: list
    cand_paths: list[Path]
    verifier_info: dict | None  # checked by plan_ensemble, read again when the verifier runs
    inputs: dict
    args: dict
    planned: tuple[np.ndarray, bool] | None = None  # (queries [N, 3], explicit) read by plan_ensemble

    def run(self, progress: ProgressFn | None = None, stage: StageFn | None = None) -> EnsembleResult:
        a = self.args
        dev, prec, select, seed, command = a["dev"], a["prec"], a["select"], a["seed"], a["command"]
        grid, grid_frame, mask, points = a["grid"], a["grid_frame"], a["mask"], a["points"]
        backward, resolution, precision, quiet, support_grid = (a[k] for k in ("backward", "resolution", "precision",
                                                                              "quiet", "support_grid"))
        start, end, stride, max_size = a["start"], a["end"], a["stride"], a["max_size"]
        queries, order, cand_paths = self.queries, self.order, self.cand_paths
        t0 = time.perf_counter()
        if isinstance(self.video, ArrayVideo):
            dec = self.video
        else:
            if stage is not None:
                stage("decoding", self.video.num_frames)
            dec = self.video.decode(progress)  # every teacher, the verifier and the overlay see these frames
            release_freed_memory()  # the decoder's buffers and frame list, freed: not under the first teacher's peak
        seconds = {"decode": time.perf_counter() - t0}
        files, file_q = load_candidate_files(cand_paths, dec)
        explicit_source = queries is not None or grid is not None or mask is not None or bool(points)
        if explicit_source or file_q is None:
            q, explicit = self.planned or build_queries(dec, grid=grid, grid_frame=grid_frame, mask=mask,
                                                        queries=queries, points=points)
            if file_q is not None and (q.shape != file_q.shape or not np.allclose(q, file_q, atol=1e-3)):
                raise PtrackError("the queries differ from those stored in the --candidates files "
                                  "(omit --grid/--queries/--point to use the files' queries)")
        else:
            q, explicit = np.asarray(file_q, np.float64), True
        q_index = query_rows(q, dec)
        if order:
            validate_queries(q, dec)  # teachers get checked queries (candidate files keep their own)
        q_model = np.concatenate([q_index[:, None].astype(np.float64), dec.from_source(q[:, 1:3])], axis=1)

        def build(spec: TeacherSpec) -> Tracker:
            try:
                return build_single_tracker(spec.id, weights=spec.weights, device=dev, backward=backward,
                                            resolution=resolution, precision=precision, quiet=quiet,
                                            support_grid=explicit and support_grid and not spec.official)
            except PtrackError as exc:
                raise PtrackError(f"teacher {spec.id}: {exc}") from None

        run = run_teachers(order, dec, q_model, build=build, progress=progress, stage=stage)
        seconds.update(run.seconds)
        names = unique_names(run.names + [p.name for p in cand_paths])
        tracks_all = [dec.to_source(tr.astype(np.float64)).astype(np.float32) for tr in run.tracks]
        vis_all = list(run.visibility)
        for tr, vis in files:
            tracks_all.append(tr)
            vis_all.append(vis)

        cand_src = np.stack(tracks_all, axis=2).astype(np.float32)  # [T, N, M, 2] original pixels
        cand_vis = np.stack(vis_all, axis=2).astype(bool) & ~S.absent_candidates(cand_src)
        # Selection happens in the frames the teachers saw (identical to original pixels without max_size).
        cand = dec.from_source(cand_src.astype(np.float64)).astype(np.float32)
        vinfo = self.verifier_info
        vweights = None if vinfo is None else reload_verifier_weights(vinfo)  # after the teachers' peak memory
        choice = choose(dec.frames, cand, cand_vis, q_model, select, seed=seed, verifier=vweights, device=dev,
                        precision=prec, progress=progress, stage=stage)
        seconds.update(choice.seconds)
        sel = choice.selection
        meta = {
            "command": command or " ".join(sys.argv),
            "video": str(dec.path.resolve()) if dec.path.exists() else str(dec.path),
            "coordinates": COORDINATES,
            "queries_t": "source frame number (see frame_indices)",
            "model": "ensemble",
            "select": select,
            "teachers": names,
            "candidate_files": [str(p.resolve()) for p in cand_paths],
            "teacher_settings": run.settings,
            "verifier_weights": None if vinfo is None else dict(vinfo),
            "verifier_precision": prec if select == "verifier" else None,
            "device": dev,
            "seed": seed if select == "random" else None,
            "visibility": "strict majority vote of the candidates' own flags (mean > 0.5)" if select != "random"
            else "the chosen teacher's own flag",
            "visibility_prob": "fraction of candidates (with an estimate) saying visible",
            "confidence": "score of the chosen candidate (see selection.npz scores)",
            **selection_meta(start, end, stride, max_size, dec),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "job": self.inputs,
        }
        decode_report(self.video, meta)
        result = TrackResult(
            tracks=dec.to_source(sel.tracks.astype(np.float64)).astype(np.float32), visibility=sel.visibility,
            visibility_prob=choice.visibility_prob, confidence=choice.confidence, queries=q,
            frame_indices=dec.frame_indices, fps=dec.fps, size=dec.source_size, model="ensemble", meta=meta,
        )
        out = EnsembleResult(result, names, cand_src, cand_vis, sel.scores, sel.chosen, select, choice.logits, seconds, dec)
        meta["chosen_counts"] = out.counts()
        result.extra_files["selection.npz"] = out.selection_arrays()
        return out


def plan_ensemble(
    video: str | Path | Video,
    queries: str | Path | np.ndarray | None = None,
    *,
    teachers: Sequence[str | tuple | TeacherSpec | Tracker] = (),
    candidates: Sequence[str | Path] = (),
    select: str = "verifier",
    verifier_weights: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    points: Sequence[str] = (),
    backward: bool = False,
    resolution: tuple[int, int] | None = None,
    support_grid: bool = True,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    max_size: int | None = None,
    quiet: bool = True,
    command: str | None = None,
    strict_decode: bool = False,
) -> EnsembleJob:
    """The cheap part of :func:`ensemble` (same arguments): every argument, teacher id, weights file and the
    queries checked, the verifier's and teachers' weights fetched, the video opened (not decoded)."""
    if select not in S.STRATEGIES:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(S.STRATEGIES)}")
    if verifier_weights is not None and select != "verifier":
        raise PtrackError(f"--verifier-weights is only used with --select verifier (not {select})")
    cand_paths = [Path(p) for p in candidates]
    order: list[TeacherSpec | Tracker] = []  # as given: candidate m is the m-th teacher
    ids: list = []  # runs of ids are parsed together (ID=PATH may give a preset teacher its weights)
    for item in (*(teachers if teachers or cand_paths else DEFAULT_TEACHERS), None):
        if item is None or isinstance(item, (Tracker, TeacherSpec)):
            order.extend(parse_teachers(ids))
            ids = []
            order.extend([item] if item is not None else [])
        else:
            ids.append(item)
    specs = [t for t in order if isinstance(t, TeacherSpec)]
    check_teachers(specs)
    dev = resolve_device(device)
    prec = resolve_precision(check_precision(precision), dev, "verifier")
    # Everything that can fail cheaply (weights, files, queries) is checked before any tracking.
    vinfo = check_verifier_weights(verifier_weights, quiet) if select == "verifier" else None
    fetch_teacher_weights(specs, quiet)  # cached after the first time; fail now, not after other teachers ran
    reader = video if isinstance(video, Video) else open_video(video, start=start, end=end, stride=stride,
                                                               max_size=max_size, strict_decode=strict_decode)
    explicit_source = queries is not None or grid is not None or mask is not None or bool(points)
    # Queries are read here (their checksum is part of the key), unless they come from the candidate files.
    planned = build_queries(reader, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries,
                            points=points) if explicit_source or not cand_paths else None
    inputs = {
        "kind": "ensemble", "video": video_identity(reader), "queries": planned and array_digest(planned[0]),
        "candidates": [path_identity(p) for p in cand_paths], "teachers": [_teacher_identity(t) for t in order],
        "select": select, "seed": seed if select == "random" else None,
        "verifier_weights": (weights_identity("verifier", verifier_weights) if select == "verifier" else None),
        "device": dev, "precision": precision, "resolution": list(resolution) if resolution else None,
        "backward": backward, "support_grid": support_grid,
    }
    args = dict(dev=dev, prec=prec, select=select, seed=seed, grid=grid, grid_frame=grid_frame, mask=mask,
                points=points, backward=backward, resolution=resolution, precision=precision, quiet=quiet,
                support_grid=support_grid, command=command, start=start, end=end, stride=stride, max_size=max_size)
    return EnsembleJob(reader, queries, order, cand_paths, vinfo, inputs, args, planned)
