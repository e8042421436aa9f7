"""Python API, and all the command line calls for tracking: :func:`track`, :func:`ensemble`, :func:`write_outputs`.

Data path: video (streamed from disk, or decoded once for an ensemble) -> queries (original pixels, source
frame numbers; ``queries.py``) -> tracker (pixels of the frames it is given; ``trackers/``) -> tracks mapped
back to original pixels -> writers (``io/``).

A model id is any tracker id (``ptrack models``), optionally ``@HxW``, or ``ensemble:ID[=WEIGHTS],...``: the
Track-On-R ensemble of those trackers, run exactly as :func:`ensemble` runs it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .device import check_precision, resolve_device, resolve_precision
from .ensemble import selection as S
from .ensemble.teachers import (
    DEFAULT_TEACHERS, StageFn, TeacherSpec, choose, fetch_teacher_weights, load_candidate_files, parse_teachers,
    query_rows, run_teachers, unique_names,
)
from .ensemble.tracker import build_ensemble_tracker, check_teachers, is_ensemble_id, parse_spec
from .ensemble.verifier import load_verifier_weights
from .errors import PtrackError
from .geometry import MODEL_RESOLUTION
from .io.atomic import ensure_out_dir
from .io.overlay import write_overlay
from .io.video import ArrayVideo, Video, open_video
from .io.writers import save_arrays, save_csv, save_npz
from .queries import build_queries, validate_queries
from .result import COORDINATES, TrackResult
from .trackers.base import ProgressFn, Tracker, blank_before_query
from .trackers.registry import build_tracker as build_single_tracker

FORMATS = ("npz", "csv")
__all__ = ["EnsembleResult", "FORMATS", "build_tracker", "check_formats", "ensemble", "prepare_out_dir", "run_tracker",
           "summary", "track", "write_outputs"]


def _check_ensemble_arguments(weights: str | Path | None, options: dict | None) -> None:
    if weights is not None:
        raise PtrackError("--weights is ambiguous with an ensemble: give each teacher its weights as "
                          "--model ensemble:ID=PATH,ID=PATH")
    if options:
        raise PtrackError(f"options {', '.join(sorted(options))} do not apply to an ensemble (give them to a single tracker)")


def build_tracker(
    model: str,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    resolution: tuple[int, int] | None = None,
    backward: bool = False,
    precision: str = "auto",
    quiet: bool = True,
    vis_threshold: float | None = None,
    support_grid: bool = True,
    iters: int | None = None,
    options: dict | None = None,
    select: str = "verifier",
    verifier_weights: str | Path | None = None,
    seed: int = 0,
) -> Tracker:
    """Any model id -> a :class:`Tracker`, built once (weights read, networks on ``device``).

    ``ensemble:...`` builds every teacher with the same settings (no support grid of their own) plus the
    verifier (``select="verifier"``); ``weights`` is refused there (give ``ID=PATH`` per teacher). The other
    arguments: see :func:`track`.
    """
    if not is_ensemble_id(model):
        if select != "verifier" or verifier_weights is not None:
            raise PtrackError("--select and --verifier-weights need an ensemble model, e.g. --model ensemble:lk,protracker")
        return build_single_tracker(
            model, weights=None if weights is None else str(weights), device=device, resolution=resolution,
            backward=backward, precision=precision, quiet=quiet, vis_threshold=vis_threshold,
            support_grid=support_grid, iters=iters, options=options,
        )
    _check_ensemble_arguments(weights, options)

    def teacher(tid: str, weights: str | None = None) -> Tracker:
        return build_single_tracker(tid, weights=weights, device=device, resolution=resolution, backward=backward,
                                    precision=precision, quiet=quiet, vis_threshold=vis_threshold,
                                    support_grid=False, iters=iters)

    return build_ensemble_tracker(
        model, teacher, select=select, verifier_weights=None if verifier_weights is None else str(verifier_weights),
        device=device, precision=precision, seed=seed, quiet=quiet,
    )


def run_tracker(tracker: Tracker, video: Video, q: np.ndarray, progress: ProgressFn | None = None) -> tuple[np.ndarray, ...]:
    """Run ``tracker`` on ``video`` for source-pixel queries ``q [N, 3]``; returns source-pixel arrays.

    Returns (tracks [T, N, 2], visibility, visibility_prob, confidence) after mapping back to the original
    pixels and blanking frames before each query when the tracker does not go backward.
    """
    t_index = validate_queries(q, video)
    model_q = np.concatenate([t_index[:, None].astype(np.float64), video.from_source(q[:, 1:3])], axis=1)
    out = tracker.track(video, model_q, progress=progress)
    T = video.num_frames
    tracks = video.to_source(out.tracks.astype(np.float64))[:T]
    vis, prob, conf = out.visibility[:T].copy(), out.visibility_prob[:T], out.confidence[:T]
    if not tracker.backward:
        blank_before_query(tracks, vis, t_index)
    return tracks.astype(np.float32), vis, prob, conf


def _selection_meta(start: int, end: int | None, stride: int, max_size: int | None, video: Video) -> dict:
    return {"start": start, "end": end, "stride": stride, "max_size": max_size, "tracked_size": [video.width, video.height]}


def track(
    video: str | Path | Video,
    *,
    model: str = "lk",
    grid: int | None = None,
    grid_frame: int | None = None,
    mask: str | Path | None = None,
    queries: str | Path | np.ndarray | None = None,
    points: Sequence[str] = (),
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    max_size: int | None = None,
    weights: str | Path | None = None,
    device: str = "auto",
    resolution: tuple[int, int] | None = None,
    backward: bool = False,
    precision: str = "auto",
    vis_threshold: float | None = None,
    support_grid: bool = True,
    iters: int | None = None,
    options: dict | None = None,
    select: str = "verifier",
    verifier_weights: str | Path | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    quiet: bool = True,
    tracker: Tracker | None = None,
    command: str | None = None,
) -> TrackResult:
    """Track points through ``video`` (a file ffmpeg reads, a folder of numbered images, or a :class:`Video`).

    Queries: any mix of ``grid`` (N x N points on ``grid_frame``, official RealTracker placement), ``mask``
    (grid points where the mask image is non-zero), ``queries`` (CSV/NPY/JSON file or an array ``[N, 3]`` of
    (t, x, y)) and ``points`` (``"t,x,y"`` strings); t is a source frame number, x, y are pixels of the
    original video. With none given, a 10x10 grid on the first frame.

    Frames: ``start``/``end``/``stride`` select source frames, ``max_size`` shrinks the longer side (ignored
    when ``video`` is already a :class:`Video`). Model: ``model`` (see the module docstring), ``weights``
    (local checkpoint), ``resolution`` (model input h, w), ``backward``, ``precision``, ``vis_threshold``,
    ``iters``, ``options`` (protracker: features, flow, mask_video); ``support_grid``: RealTracker's support
    grid for explicit queries (grids never get one). ``select``/``verifier_weights``/``seed``: ensembles.
    ``tracker``: an already built tracker (then the model arguments are ignored).

    Returns a :class:`TrackResult` with tracks ``[T, N, 2]`` in original pixels (an ensemble's also carries
    ``selection.npz`` in ``extra_files``).
    """
    if tracker is None and is_ensemble_id(model):
        _check_ensemble_arguments(weights, options)
        if iters is not None or vis_threshold is not None:
            raise PtrackError("--iters and --vis-threshold do not apply to an ensemble (its visibility is the "
                              "teachers' majority vote): drop them")
        return ensemble(
            video, queries, teachers=parse_spec(model), select=select, verifier_weights=verifier_weights,
            device=device, precision=precision, seed=seed, grid=grid, grid_frame=grid_frame, mask=mask, points=points,
            backward=backward, resolution=resolution, start=start, end=end, stride=stride, max_size=max_size,
            progress=progress, stage=stage, quiet=quiet, command=command,
        ).result
    reader = video if isinstance(video, Video) else open_video(video, start=start, end=end, stride=stride, max_size=max_size)
    q, explicit = build_queries(
        reader, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=points,
        model_hw=tuple(resolution) if resolution else MODEL_RESOLUTION,
    )
    if tracker is None:
        tracker = build_tracker(
            model, weights=weights, device=device, resolution=resolution, backward=backward, precision=precision,
            quiet=quiet, vis_threshold=vis_threshold, support_grid=support_grid and explicit, iters=iters,
            options=options, select=select, verifier_weights=verifier_weights,
        )
    if stage is not None:
        stage(f"tracking ({tracker.name})", reader.num_frames)
    t0 = time.perf_counter()
    tracks, vis, prob, conf = run_tracker(tracker, reader, q, progress)
    meta = {
        "command": command or " ".join(sys.argv),
        "video": str(reader.path.resolve()),
        "coordinates": COORDINATES,
        "queries_t": "source frame number (see frame_indices)",
        "model": tracker.name,
        "tracker_settings": tracker.settings(),
        "weights": tracker.weights_info or "none (weight-free tracker)",
        **_selection_meta(start, end, stride, max_size, reader),
        "device": str(getattr(tracker, "device", "cpu")),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return TrackResult(
        tracks=tracks, visibility=vis, visibility_prob=prob, confidence=conf, queries=q,
        frame_indices=reader.frame_indices, fps=reader.fps, size=reader.source_size, model=tracker.name, meta=meta,
    )


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

    Returns an :class:`EnsembleResult`; ``.result`` is the ``TrackResult`` (with ``selection.npz`` in its
    ``extra_files``).
    """
    if select not in S.STRATEGIES:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(S.STRATEGIES)}")
    if verifier_weights is not None and select != "verifier":
        raise PtrackError(f"--verifier-weights is only used with --select verifier (not {select})")
    cand_paths = [Path(p) for p in candidates]
    order: list[TeacherSpec | Tracker] = []  # as given: candidate m is the m-th teacher
    for item in (teachers if teachers or cand_paths else DEFAULT_TEACHERS):
        order.extend([item] if isinstance(item, (Tracker, TeacherSpec)) else parse_teachers([item]))
    specs = [t for t in order if isinstance(t, TeacherSpec)]
    check_teachers(specs)
    dev = resolve_device(device)
    prec = resolve_precision(check_precision(precision), dev, "verifier")
    # Everything that can fail cheaply (weights, files, queries) is checked before any tracking.
    vweights = load_verifier_weights(verifier_weights, quiet) if select == "verifier" else None
    fetch_teacher_weights(specs, quiet)  # cached after the first time; fail now, not after other teachers ran

    t0 = time.perf_counter()
    if isinstance(video, ArrayVideo):
        dec = video
    else:
        reader = video if isinstance(video, Video) else open_video(video, start=start, end=end, stride=stride, max_size=max_size)
        if stage is not None:
            stage("decoding", reader.num_frames)
        dec = reader.decode(progress)  # every teacher, the verifier and the overlay see these frames
    seconds = {"decode": time.perf_counter() - t0}
    files, file_q = load_candidate_files(cand_paths, dec)
    explicit_source = queries is not None or grid is not None or mask is not None or bool(points)
    if explicit_source or file_q is None:
        q, explicit = build_queries(dec, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=points)
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
        "verifier_weights": None if vweights is None else dict(vweights[1]),
        "verifier_precision": prec if select == "verifier" else None,
        "device": dev,
        "seed": seed if select == "random" else None,
        "visibility": "strict majority vote of the candidates' own flags (mean > 0.5)" if select != "random"
        else "the chosen teacher's own flag",
        "visibility_prob": "fraction of candidates (with an estimate) saying visible",
        "confidence": "score of the chosen candidate (see selection.npz scores)",
        **_selection_meta(start, end, stride, max_size, dec),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    result = TrackResult(
        tracks=dec.to_source(sel.tracks.astype(np.float64)).astype(np.float32), visibility=sel.visibility,
        visibility_prob=choice.visibility_prob, confidence=choice.confidence, queries=q,
        frame_indices=dec.frame_indices, fps=dec.fps, size=dec.source_size, model="ensemble", meta=meta,
    )
    out = EnsembleResult(result, names, cand_src, cand_vis, sel.scores, sel.chosen, select, choice.logits, seconds, dec)
    meta["chosen_counts"] = out.counts()
    result.extra_files["selection.npz"] = out.selection_arrays()
    return out


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """``"npz,csv"`` or a sequence -> checked tuple of output formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    fmt = tuple(f.strip() for f in items if f.strip())
    bad = [f for f in fmt if f not in FORMATS]
    if bad:
        raise PtrackError(f"--format {','.join(fmt)!r}: unknown format {bad[0]!r} (choose from {','.join(FORMATS)})")
    return fmt


def prepare_out_dir(out_dir: str | Path, video: str | Path) -> Path:
    """The output folder, created now (so a bad ``--out`` fails before the long work), never the input itself."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(video).resolve():
        raise PtrackError(f"--out {out_dir} is the input video: choose another output folder")
    return ensure_out_dir(out_dir)


def write_outputs(
    result: TrackResult,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    overlay: bool = True,
    video: Video | None = None,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Write ``tracks.npz`` / ``tracks.csv`` / the result's ``extra_files`` / ``overlay.mp4`` into ``out_dir``.

    Every file is written atomically. The overlay draws on ``video`` (the same selection as the result);
    without one, the video the result was made from is opened again (its path and selection are in ``meta``).
    """
    out = ensure_out_dir(out_dir)
    written: list[Path] = []
    formats = check_formats(formats)
    if "npz" in formats:
        written.append(save_npz(result, out / "tracks.npz"))
    if "csv" in formats:
        written.append(save_csv(result, out / "tracks.csv"))
    for name, arrays in result.extra_files.items():
        written.append(save_arrays(arrays, out / name))
    if overlay:
        if video is None:
            video = _reopen(result)
        q_index = np.searchsorted(result.frame_indices, result.queries[:, 0].astype(np.int64))
        step = int(video.frame_indices[1] - video.frame_indices[0]) if len(video.frame_indices) > 1 else 1
        written.append(
            write_overlay(video.source_frames(), result.tracks, result.visibility, q_index, result.queries[:, 2],
                          result.fps / max(1, step), out / "overlay.mp4", progress)
        )
    return written


def _reopen(result: TrackResult) -> Video:
    """The frames a result was tracked on, from its metadata (for the overlay)."""
    m = result.meta
    path = Path(str(m.get("video", "")))
    if not path.exists():
        raise PtrackError(f"the overlay needs the video, and {path} is gone: pass video=... or overlay=False")
    return open_video(path, start=int(m.get("start") or 0), end=m.get("end"), stride=int(m.get("stride") or 1),
                      max_size=m.get("max_size"))


def summary(result: TrackResult) -> dict[str, str]:
    """The few numbers a run ends with (the CLI prints them as a table)."""
    fi = result.frame_indices
    vis = 100 * float(result.visibility.mean()) if result.visibility.size else 0.0
    secs = result.meta.get("seconds")
    rows = {
        "frames": f"{result.num_frames} (source {int(fi[0])}..{int(fi[-1])})" if len(fi) else "0",
        "points": str(result.num_points),
        "model": result.model,
        "device": str(result.meta.get("device", "cpu")),
        "visible": f"{vis:.1f}% of point-frames",
    }
    if isinstance(secs, (int, float)):
        rows["time"] = f"{secs:.1f} s tracking"
        rows["frames/s"] = f"{result.num_frames / max(float(secs), 1e-9):.1f}"
    elif isinstance(secs, dict):
        rows["time"] = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items())
    return rows

