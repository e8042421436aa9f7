"""Python API, and all the command line calls for tracking: :func:`track`, :func:`ensemble`, :func:`write_outputs`,
and :func:`track_to` / :func:`ensemble_to` (plan, rerun rule, track, write the output set: what the CLI runs).

Data path: video (streamed from disk, or decoded once for an ensemble) -> queries (original pixels, source
frame numbers; ``queries.py``) -> tracker (pixels of the frames it is given; ``trackers/``) -> tracks mapped
back to original pixels -> writers (``io/``).

A model id is any tracker id (``ptrack models``), optionally ``@HxW``, or ``ensemble:ID[=WEIGHTS],...``: the
Track-On-R ensemble of those trackers, run exactly as :func:`ensemble` runs it.

Jobs: :func:`plan_track` / :func:`plan_ensemble` do the cheap part of a run (open the video, read and check the
queries, name model and weights) and return a job whose ``inputs`` identify everything that determines the
arrays: the video (path, size, modification time; frames in memory by checksum), the frame selection, the
queries (checksum after parsing), model ids and weights (local file: path, size, time; else the registry's
source), every option that changes the arrays, and the resolved device. Not ``--out``, not ``--quiet``. With
the files asked for, that is the job key of the output set (:mod:`pointtrack_cli.io.outputs`), compared with
the folder's before anything is tracked.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .device import OUTPUT_BYTES_PER_POINT_FRAME, check_memory, check_precision, resolve_device
from .ensemble.points import PointsEnsembleJob, plan_ensemble_points, points_identity
from .ensemble.run import EnsembleJob, EnsembleResult, plan_ensemble
from .ensemble.teachers import StageFn
from .ensemble.tracker import build_ensemble_tracker, is_ensemble_id, parse_spec
from .errors import PtrackError
from .geometry import MODEL_RESOLUTION
from .io.atomic import ensure_out_dir
from .io.formats import export_variant
from .io.identity import array_digest, digest, path_identity, video_identity, weights_identity
from .io.outputs import OutputSet
from .io.video import Video, decode_report, open_video, selection_meta
from .io.writers import FORMATS, OUTPUT_NAMES, check_outputs, write_result
from .queries import QuerySet, attach_points, build_query_set, validate_queries
from .result import COORDINATES, TrackResult
from .trackers.base import ProgressFn, Tracker, blank_before_query
from .trackers.registry import build_tracker as build_single_tracker

__all__ = ["EnsembleJob", "EnsembleResult", "FORMATS", "Outputs", "PointsEnsembleJob", "TrackJob", "build_tracker", "check_formats", "check_outputs",
           "ensemble", "ensemble_to", "plan_ensemble", "plan_ensemble_points", "plan_track", "prepare_out_dir", "run_to", "run_tracker", "summary",
           "track", "track_to", "write_outputs"]


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


@dataclass
class TrackJob:
    """One tracking run, planned by :func:`plan_track`: video opened, queries read and checked, nothing tracked.

    queries: ``[N, 3]`` (t, x, y) source pixels and frame numbers; explicit: any came from a file, ``--point`` or
    a mask. inputs: what determines the arrays (see the module docstring). :meth:`run` builds the tracker (or
    uses the one given), checks memory and tracks.
    """

    video: Video
    queries: np.ndarray
    explicit: bool
    inputs: dict
    build: Callable[[bool], Tracker]
    selection: dict
    command: str | None = None
    points: QuerySet | None = None  # named points and anchors: ``queries`` holds one row per anchor

    def run(self, progress: ProgressFn | None = None, stage: StageFn | None = None) -> TrackResult:
        tracker = self.build(self.explicit)
        reader, q = self.video, self.queries
        if self.points is not None:  # checked as run_tracker checks them, naming each anchor's point
            validate_queries(q, reader, self.points.row_names)
        own = getattr(tracker, "memory_bytes", None)  # duck-typed trackers may lack it
        need = ((own(reader.num_frames, len(q), (reader.height, reader.width)) if own else 0)
                + reader.num_frames * len(q) * OUTPUT_BYTES_PER_POINT_FRAME)
        check_memory(need, f"tracking {len(q):,} points over {reader.num_frames} frames with {tracker.name}",
                     "track fewer points (--grid, --queries) or frames (--end, --stride), or shrink the frames (--max-size)")
        if stage is not None:
            stage(f"tracking ({tracker.name})", reader.num_frames)
        t0 = time.perf_counter()
        tracks, vis, prob, conf = run_tracker(tracker, reader, q, progress)
        meta = {
            "command": self.command or " ".join(sys.argv),
            "video": str(reader.path.resolve()),
            "coordinates": COORDINATES,
            "queries_t": "source frame number (see frame_indices)",
            "model": tracker.name,
            "tracker_settings": tracker.settings(),
            "weights": tracker.weights_info or "none (weight-free tracker)",
            **self.selection,
            "device": str(getattr(tracker, "device", "cpu")),
            "seconds": round(time.perf_counter() - t0, 3),
            "job": self.inputs,
        }
        decode_report(reader, meta)
        result = TrackResult(
            tracks=tracks, visibility=vis, visibility_prob=prob, confidence=conf, queries=q,
            frame_indices=reader.frame_indices, fps=reader.fps, size=reader.source_size, model=tracker.name, meta=meta,
        )
        return result if self.points is None else attach_points(result, self.points)


def plan_track(
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
    quiet: bool = True,
    tracker: Tracker | None = None,
    command: str | None = None,
    strict_decode: bool = False,
) -> "TrackJob | EnsembleJob":
    """The cheap part of :func:`track` (same arguments): a :class:`TrackJob`, or for ``ensemble:...`` ids an
    :class:`EnsembleJob` (as :func:`ensemble` plans it). Errors in the inputs surface here, before any tracking."""
    if tracker is None and is_ensemble_id(model):
        _check_ensemble_arguments(weights, options)
        if iters is not None or vis_threshold is not None:
            raise PtrackError("--iters and --vis-threshold do not apply to an ensemble (its visibility is the "
                              "teachers' majority vote): drop them")
        return plan_ensemble_points(
            video, queries, teachers=parse_spec(model), select=select, verifier_weights=verifier_weights,
            device=device, precision=precision, seed=seed, grid=grid, grid_frame=grid_frame, mask=mask, points=points,
            backward=backward, resolution=resolution, start=start, end=end, stride=stride, max_size=max_size,
            quiet=quiet, command=command, strict_decode=strict_decode,
        )
    reader = video if isinstance(video, Video) else open_video(video, start=start, end=end, stride=stride,
                                                               max_size=max_size, strict_decode=strict_decode)
    qs = build_query_set(
        reader, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=points,
        model_hw=tuple(resolution) if resolution else MODEL_RESOLUTION,
    )
    q, explicit = qs.rows, qs.explicit
    dev = resolve_device(device)
    check_precision(precision)
    if tracker is not None:
        model_id: dict = {"model": tracker.name, "tracker_settings": tracker.settings(), "weights": tracker.weights_info}
    else:
        if select != "verifier" or verifier_weights is not None:
            raise PtrackError("--select and --verifier-weights need an ensemble model, e.g. --model ensemble:lk,protracker")
        opts = {k: (path_identity(v) if k == "mask_video" else v) for k, v in sorted((options or {}).items())}
        model_id = {"model": model, "weights": weights_identity(model, weights), "options": opts, "iters": iters,
                    "vis_threshold": vis_threshold}
    inputs = {
        "kind": "track", "video": video_identity(reader), "queries": array_digest(q), "points": points_identity(qs),
        **model_id, "device": dev,
        "precision": precision, "resolution": list(resolution) if resolution else None, "backward": backward,
        "support_grid": bool(support_grid and explicit),
    }

    def build(explicit: bool) -> Tracker:
        return tracker if tracker is not None else build_tracker(
            model, weights=weights, device=device, resolution=resolution, backward=backward, precision=precision,
            quiet=quiet, vis_threshold=vis_threshold, support_grid=support_grid and explicit, iters=iters,
            options=options,
        )

    return TrackJob(reader, q, explicit, inputs, build, selection_meta(start, end, stride, max_size, reader), command, qs)


def ensemble(
    video: str | Path | Video,
    queries: str | Path | np.ndarray | None = None,
    *,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    **options: Any,
) -> EnsembleResult:
    """:func:`pointtrack_cli.ensemble.run.ensemble` (same arguments), with named points and anchors as in
    :func:`track` (see :func:`plan_ensemble_points`)."""
    return plan_ensemble_points(video, queries, **options).run(progress, stage)


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
    strict_decode: bool = False,
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
    ``tracker``: an already built tracker (then the model arguments are ignored). ``strict_decode``: ffmpeg
    decode errors (a damaged file) are an error; otherwise they are counted in ``meta["decode_errors"]`` and
    warned about.

    Returns a :class:`TrackResult` with tracks ``[T, N, 2]`` in original pixels (an ensemble's also carries
    ``selection.npz`` in ``extra_files``); ``meta["job"]`` identifies the inputs (see :func:`plan_track`).
    """
    job = plan_track(
        video, model=model, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=points, start=start,
        end=end, stride=stride, max_size=max_size, weights=weights, device=device, resolution=resolution,
        backward=backward, precision=precision, vis_threshold=vis_threshold, support_grid=support_grid, iters=iters,
        options=options, select=select, verifier_weights=verifier_weights, seed=seed, quiet=quiet, tracker=tracker,
        command=command, strict_decode=strict_decode,
    )
    out = job.run(progress, stage)
    return out.result if isinstance(out, EnsembleResult) else out


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """``"npz,csv"`` or a sequence -> checked tuple of output formats (see :func:`~.io.writers.check_outputs`)."""
    return check_outputs(formats, True)


def prepare_out_dir(out_dir: str | Path, video: str | Path) -> Path:
    """The output folder, created now (so a bad ``--out`` fails before the long work), never the input itself."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(video).resolve():
        raise PtrackError(f"--out {out_dir} is the input video: choose another output folder")
    return ensure_out_dir(out_dir)


def _files_asked(formats: Sequence[str], overlay: bool) -> dict:
    return {"formats": sorted(formats), "overlay": bool(overlay), **export_variant(tuple(formats))}


def write_outputs(
    result: TrackResult,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    overlay: bool = True,
    video: Video | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``tracks.npz`` / ``tracks.csv`` / the result's ``extra_files`` / ``overlay.mp4`` into ``out_dir`` as
    one output set (:mod:`pointtrack_cli.io.outputs`: the manifest ``ptrack.json`` last), returning its files.

    The rerun rule applies: the same job's complete set (``meta["job"]`` and the files asked for) is left as it
    is; another job's is refused unless ``overwrite``. The overlay draws on ``video`` (the same selection as the
    result); without one, the video the result was made from is opened again (path and selection in ``meta``).
    """
    fmt = check_outputs(formats, overlay)
    inputs = result.meta.get("job") or {"result": array_digest(result.tracks), "queries": array_digest(result.queries)}
    job = {**inputs, "files": _files_asked(fmt, overlay)}
    key = digest(job)
    with OutputSet(out_dir, names=OUTPUT_NAMES, overwrite=overwrite) as outs:
        if outs.decide(key, job):
            return outs.files
        write_result(result, outs, formats=fmt, overlay=overlay, video=video, progress=progress)
        return outs.commit(key, job, {"command": result.meta.get("command")})


@dataclass
class Outputs:
    """What :func:`track_to` / :func:`ensemble_to` did: the folder, its files, whether the run was skipped (the
    same job's complete set was there), the job key, and the result (None when skipped)."""

    folder: Path
    files: list[Path]
    skipped: bool
    key: str
    result: TrackResult | None = None
    ensemble: EnsembleResult | None = None


def run_to(job: TrackJob | EnsembleJob, source: str | Path | Video, out_dir: str | Path, formats: Sequence[str] | str,
           overlay: bool, overwrite: bool, progress: ProgressFn | None = None, stage: StageFn | None = None) -> Outputs:
    """A planned job into the output set ``out_dir``: the rerun rule, then run, write, commit (see :func:`track_to`).

    One call per video and folder: a batch gives each video its own subfolder (its own set and manifest).
    ``source``: the job's input as given (``out_dir`` may not be it).
    """
    fmt = check_outputs(formats, overlay)
    if not isinstance(source, Video) and Path(out_dir).resolve() == Path(source).resolve():
        raise PtrackError(f"--out {out_dir} is the input video: choose another output folder")
    files_job = {**job.inputs, "files": _files_asked(fmt, overlay)}
    key = digest(files_job)
    # The set is opened after planning (bad inputs fail without touching --out) and before tracking (a bad --out
    # or another job's outputs fail before the long work; a failed run removes the folder it created).
    with OutputSet(out_dir, names=OUTPUT_NAMES, overwrite=overwrite) as outs:
        if outs.decide(key, files_job):
            return Outputs(outs.folder, outs.files, True, key)
        out = job.run(progress, stage)
        result, ens = (out.result, out) if isinstance(out, EnsembleResult) else (out, None)
        if overlay and stage is not None:
            stage("writing overlay", result.num_frames)
        write_result(result, outs, formats=fmt, overlay=overlay, video=ens.video if ens else None, progress=progress)
        files = outs.commit(key, files_job, {"command": result.meta.get("command"), "frames": result.num_frames,
                                             "points": result.num_points})  # what a batch's summary shows when skipped
    return Outputs(outs.folder, files, False, key, result, ens)


def track_to(
    out_dir: str | Path,
    video: str | Path | Video,
    *,
    formats: Sequence[str] | str = FORMATS,
    overlay: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    **options: Any,
) -> Outputs:
    """:func:`track` (``options``: its arguments) into the output set ``out_dir`` (what ``ptrack track`` runs).

    Planned first; then the rerun rule decides before any tracking: the same job's complete set is skipped
    (``Outputs.skipped``), another job's is refused unless ``overwrite``. On any failure (an exception, Ctrl-C,
    SIGTERM) the folder is left as :mod:`pointtrack_cli.io.outputs` describes.
    """
    job = plan_track(video, **options)
    return run_to(job, video, out_dir, formats, overlay, overwrite, progress, stage)


def ensemble_to(
    out_dir: str | Path,
    video: str | Path | Video,
    queries: str | Path | np.ndarray | None = None,
    *,
    formats: Sequence[str] | str = FORMATS,
    overlay: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    **options: Any,
) -> Outputs:
    """:func:`ensemble` (``options``: its arguments) into the output set ``out_dir``, as :func:`track_to`."""
    job = plan_ensemble_points(video, queries, **options)
    return run_to(job, video, out_dir, formats, overlay, overwrite, progress, stage)


def summary(result: TrackResult) -> dict[str, str]:
    """The few numbers a run ends with (the CLI prints them as a table)."""
    fi = result.frame_indices
    vis = 100 * float(result.visibility.mean()) if result.visibility.size else 0.0
    secs = result.meta.get("seconds")
    rows = {
        "frames": f"{result.num_frames} (source {int(fi[0])}..{int(fi[-1])})" if len(fi) else "0",
        "points": str(result.num_points),
        **({"anchors": f"{len(result.anchors)} (merged per frame: nearest in time)"}
           if len(result.anchors) > result.num_points else {}),
        "model": result.model,
        "device": str(result.meta.get("device", "cpu")),
        "visible": f"{vis:.1f}% of point-frames",
    }
    if isinstance(secs, (int, float)):
        rows["time"] = f"{secs:.1f} s tracking"
        rows["frames/s"] = f"{result.num_frames / max(float(secs), 1e-9):.1f}"
    elif isinstance(secs, dict):
        rows["time"] = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items())
    if result.meta.get("decode_errors"):
        rows["decode errors"] = f"{result.meta['decode_errors']} (the video is damaged; see meta decode_messages)"
    return rows

