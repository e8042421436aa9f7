"""Verifier-guided ensemble (Track-On-R): run several trackers, let the verifier pick per frame.

Data path: video decoded once into memory -> each teacher in turn (memory freed in between) ->
candidates ``[T, N, M, 2]`` (+ any ``--candidates`` files) -> selection (``selection.py``):
verifier arg-max with majority-vote visibility, or a weight-free baseline -> a
:class:`~pointtrack_cli.result.TrackResult` plus the selection arrays.

Coordinates: the verifier sees the candidates exactly as the teachers output them, in pixels of
the frames the teachers were given (ptrack's convention, (0, 0) = centre of the top-left pixel),
with no half-pixel re-centring; the official ensemble does the same with its teachers' output.
With ``max_size`` the teachers and the verifier see the downsized frames; results are mapped back
to original pixels afterwards.
"""
from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, Union

import numpy as np

from . import selection as S
from .errors import PtrackError
from .result import COORDINATES, TrackResult, load_tracks
from .trackers.base import ArrayVideo, FrameSource, ProgressFn, Tracker, blank_before_query

DEFAULT_TEACHERS = ("realtracker-offline", "realtracker-online", "realtracker-offline-kubric", "realtracker-online-kubric", "lk")
if TYPE_CHECKING:  # torch is imported lazily (the weight-free paths do not need it)
    from .models.verifier import Verifier

VerifierArg = Union[tuple, "Verifier"]
"""``(state dict, info)`` from :func:`load_verifier_weights`, or a model from :func:`build_verifier`."""
StageFn = Callable[[str, int], None]
"""Called when a stage starts: (description, number of frames it will report through ``progress``)."""


@dataclass
class EnsembleResult:
    """The chosen tracks (``result``, original pixels) and how they were chosen.

    candidates: ``[T, N, M, 2]`` original pixels (NaN = no estimate); candidate_visibility ``[T, N, M]``;
    scores ``[T, N, M]`` (verifier: softmax over candidates; random: one-hot; median: uniform over the
    candidates that entered the median); chosen ``[T, N]`` candidate index (-1: none);
    teachers: the M candidate names; logits: raw verifier scores (``select="verifier"`` only).
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

    def counts(self) -> dict[str, int]:
        """How many (frame, point) pairs from each candidate's query frame on took that candidate."""
        c = S.chosen_counts(self.chosen, len(self.teachers), self._query_index())
        return {name: int(n) for name, n in zip(self.teachers, c)}

    def _query_index(self) -> np.ndarray:
        q = self.result.queries.copy()
        q[:, 0] = np.searchsorted(self.result.frame_indices, q[:, 0].astype(np.int64))
        return q

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


class DecodedVideo(ArrayVideo):
    """A video decoded once into memory that still knows its source (frame numbers, original size).

    Teachers iterate it like any :class:`FrameSource`; ``to_source``/``from_source``/``source_frames``
    delegate to the reader it came from, so it can stand in for a ``VideoReader``.
    """

    def __init__(self, video: FrameSource | np.ndarray, progress: ProgressFn | None = None) -> None:
        if isinstance(video, np.ndarray):
            frames = video
        elif isinstance(video, ArrayVideo):
            frames = video.read_all()  # already in memory: no copy
        else:
            frames = []
            for f in video:
                frames.append(f)
                if progress is not None:
                    progress(1)
            frames = np.stack(frames) if frames else np.zeros((0, video.height, video.width, 3), np.uint8)
        super().__init__(np.asarray(frames), fps=float(getattr(video, "fps", 30.0)))
        self._reader = video if hasattr(video, "to_source") else None
        self.frame_indices = np.asarray(getattr(video, "frame_indices", np.arange(self.num_frames)), np.int64)
        self.frame_indices = self.frame_indices[: self.num_frames]
        self.source_size = tuple(getattr(video, "source_size", (self.width, self.height)))
        self.source_num_frames = int(getattr(video, "source_num_frames", self.num_frames))
        self.path = Path(getattr(video, "path", "<frames in memory>"))
        self.scale = float(getattr(video, "scale", 1.0))

    def to_source(self, xy: np.ndarray) -> np.ndarray:
        return self._reader.to_source(xy) if self._reader is not None else np.asarray(xy, np.float64)

    def from_source(self, xy: np.ndarray) -> np.ndarray:
        return self._reader.from_source(xy) if self._reader is not None else np.asarray(xy, np.float64)

    def source_frames(self) -> Iterator[np.ndarray]:
        if self._reader is not None and self.scale != 1.0:
            return self._reader.source_frames()
        return iter(self.frames)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _unique(names: Sequence[str]) -> list[str]:
    """Names made distinct by suffixing repeats (``lk``, ``lk#2``), so counts and files stay unambiguous."""
    out: list[str] = []
    for name in names:
        cand, k = name, 2
        while cand in out:
            cand, k = f"{name}#{k}", k + 1
        out.append(cand)
    return out


def load_candidate_files(paths: Sequence[str | Path], video: DecodedVideo) -> tuple[list, np.ndarray | None]:
    """Read ``--candidates`` files (ptrack's ``tracks.npz`` schema) and check they fit ``video``.

    Returns ``([(tracks [T, N, 2] original px, visibility [T, N])...], their queries [N, 3] or None)``.
    """
    out, queries = [], None
    for p in paths:
        r = load_tracks(p)
        if r.num_frames != video.num_frames or (len(r.frame_indices) and not np.array_equal(r.frame_indices, video.frame_indices)):
            raise PtrackError(
                f"candidates {p}: frames {int(r.frame_indices[0])}..{int(r.frame_indices[-1])} ({r.num_frames}) do not match "
                f"the video selection {int(video.frame_indices[0])}..{int(video.frame_indices[-1])} ({video.num_frames}) "
                "(use the same --start/--end/--stride as when they were made)"
            )
        if r.size != (0, 0) and tuple(r.size) != tuple(video.source_size):
            raise PtrackError(f"candidates {p}: made on a {r.size[0]}x{r.size[1]} video, this one is "
                              f"{video.source_size[0]}x{video.source_size[1]} (pass tracks of this video)")
        if queries is None:
            queries = r.queries
        elif r.queries.shape != queries.shape or not np.allclose(r.queries, queries, atol=1e-3):
            raise PtrackError(f"candidates {p}: its query points differ from those of {paths[0]} "
                              "(all candidate files must track the same queries)")
        out.append((r.tracks, r.visibility))
    return out, queries


def _query_rows(q: np.ndarray, video: DecodedVideo) -> np.ndarray:
    """Frame index (into the selected frames) of each query, for queries taken from candidate files."""
    if not np.isfinite(q).all():
        raise PtrackError("the candidate files' queries contain NaN (they are not valid ptrack tracks)")
    t = q[:, 0].astype(np.int64)
    pos = np.clip(np.searchsorted(video.frame_indices, t), 0, video.num_frames - 1)
    bad = np.nonzero(video.frame_indices[pos] != t)[0]
    if len(bad):
        raise PtrackError(f"query {int(bad[0])}: frame {int(t[bad[0]])} is not among the tracked frames")
    return pos


def _resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA (the official verifier runs under fp16 autocast), fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise PtrackError(f"--precision {precision!r} is not one of auto, fp32, bf16, fp16")
    if not device.startswith("cuda"):
        return "fp32"
    return "fp16" if precision == "auto" else precision


def load_verifier_weights(weights: str | Path | None, quiet: bool = True):
    """(state dict, source info) of the verifier; the error suggests ``--select median`` when unavailable."""
    from .weights import load_weights

    try:
        return load_weights("verifier", weights, quiet=quiet)
    except PtrackError as exc:
        # The generic hint names --weights; the commands take the verifier's file as --verifier-weights.
        msg = re.sub(r"--weights\b", "--verifier-weights", str(exc))
        raise PtrackError(f"verifier weights unavailable: {msg}; or choose a weight-free selection with --select median") from None


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------------------------
# The ensemble
# ---------------------------------------------------------------------------------------------
def build_verifier(sd_and_info: tuple, device: str) -> "Verifier":
    """A :class:`~pointtrack_cli.models.verifier.Verifier` in eval mode on ``device`` from ``(state dict, info)``."""
    from .models.verifier import load_verifier

    sd, info = sd_and_info
    return load_verifier(sd, str(info.get("path") or info.get("repo_id") or "verifier weights")).to(device)


def run_verifier(
    frames: np.ndarray,
    candidates: np.ndarray,
    queries: np.ndarray,
    absent: np.ndarray,
    verifier: VerifierArg,
    device: str,
    precision: str,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Verifier logits ``[T, N, M]`` for finite candidates in pixels of ``frames [T, H, W, 3]``; queries (t index, x, y).

    verifier: ``(state dict, info)`` as :func:`load_verifier_weights` returns (the model is built for this
    call and freed after it), or a model from :func:`build_verifier` (kept, for callers that score many
    videos with one model, e.g. ``ptrack eval tapvid --model ensemble:...``).
    """
    import contextlib

    import torch

    own = isinstance(verifier, tuple)
    model = build_verifier(verifier, device) if own else verifier
    ctx = contextlib.nullcontext()
    if device.startswith("cuda") and precision != "fp32":
        ctx = torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    with torch.inference_mode(), ctx:
        logits = model(frames, torch.from_numpy(candidates), torch.from_numpy(queries.astype(np.float32)),
                       torch.from_numpy(absent) if absent.any() else None, progress=progress)
    out = logits.float().cpu().numpy()
    if own:
        del model
        _free_memory()
    return out


@dataclass
class TeacherRun:
    """What the teachers said, in pixels of the frames they were given.

    tracks: per teacher ``[T, N, 2]`` float32 (NaN = no estimate: frames before the query frame of a
    teacher that does not track backward); visibility: per teacher ``[T, N]`` bool (its own flags);
    settings: per teacher ``{"teacher", "settings", "weights"}`` for metadata; seconds: per teacher.
    """

    names: list[str]
    tracks: list[np.ndarray]
    visibility: list[np.ndarray]
    settings: list[dict]
    seconds: dict[str, float]


def run_teachers(
    teachers: Sequence[str | Tracker],
    video: FrameSource,
    queries: np.ndarray,
    *,
    build: Callable[[str], Tracker] | None = None,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
) -> TeacherRun:
    """Run each teacher on ``video`` for ``queries [N, 3]`` (t = frame index into ``video``, x, y its pixels).

    Teachers given as ids are built with ``build(id)`` and freed before the next one loads (so only one
    model is in memory at a time); :class:`Tracker` objects are used as they are and kept (the caller
    owns them, e.g. to reuse them on the next video). Queries are not validated here.
    """
    num_frames = video.num_frames
    q_index = np.asarray(queries)[:, 0].astype(np.int64)
    run = TeacherRun([], [], [], [], {})
    for t in teachers:
        name = t if isinstance(t, str) else t.name
        if isinstance(t, str) and build is None:
            raise ValueError(f"teacher {t!r} given by id but no build function")
        tracker = build(t) if isinstance(t, str) else t
        if stage is not None:
            stage(f"teacher {name}", num_frames)
        t1 = time.perf_counter()
        out = tracker.track(video, queries, progress=progress)
        tracks, vis = out.tracks[:num_frames].copy(), out.visibility[:num_frames].copy()
        if not tracker.backward:
            blank_before_query(tracks, vis, q_index)
        run.seconds[f"teacher {name}"] = time.perf_counter() - t1
        run.settings.append({"teacher": name, "settings": tracker.settings(),
                             "weights": tracker.weights_info or "none (weight-free tracker)"})
        run.names.append(name)
        run.tracks.append(tracks.astype(np.float32))
        run.visibility.append(vis)
        if isinstance(t, str):
            del tracker  # free the teacher before the next one loads
            _free_memory()
    return run


@dataclass
class Choice:
    """One track per point chosen among candidates, in the candidates' pixels.

    selection: the :class:`~pointtrack_cli.selection.Selection` (tracks ``[T, N, 2]``, visibility, chosen,
    scores ``[T, N, M]``); logits: raw verifier scores ``[T, N, M]`` (``select="verifier"`` only);
    visibility_prob ``[T, N]``: fraction of candidates with an estimate that say visible;
    confidence ``[T, N]``: score of the chosen candidate (0 where none was chosen).
    """

    selection: S.Selection
    logits: np.ndarray | None
    visibility_prob: np.ndarray
    confidence: np.ndarray
    seconds: dict[str, float]


def choose(
    frames: np.ndarray,
    candidates: np.ndarray,
    candidate_visibility: np.ndarray,
    queries: np.ndarray,
    select: str,
    *,
    seed: int = 0,
    verifier: VerifierArg | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
) -> Choice:
    """Select among ``candidates [T, N, M, 2]`` (pixels of ``frames [T, H, W, 3]``, NaN = absent).

    queries: ``[N, 3]`` (t frame index, x, y) in the same pixels. verifier: weights or a model (see
    :func:`run_verifier`), needed only for ``select="verifier"``.
    """
    seconds: dict[str, float] = {}
    logits = None
    if select == "verifier":
        if verifier is None:
            raise PtrackError("select=verifier needs the verifier weights (or choose --select median)")
        filled, absent = S.fill_for_verifier(candidates, queries)
        if stage is not None:
            stage("verifier", len(frames))
        t1 = time.perf_counter()
        logits = run_verifier(frames, filled, queries, absent, verifier, device, precision, progress)
        seconds["verifier"] = time.perf_counter() - t1
        sel = S.select_verifier(candidates, candidate_visibility, logits, absent)
    elif select == "random":
        sel = S.select_random(candidates, candidate_visibility, seed)
    elif select == "median":
        sel = S.select_median(candidates, candidate_visibility)
    else:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(S.STRATEGIES)}")
    has = sel.chosen >= 0
    present = ~S.absent_candidates(candidates)
    voters = present.sum(-1)
    vis_prob = np.divide((candidate_visibility & present).sum(-1), voters, out=np.zeros(voters.shape), where=voters > 0)
    conf = np.where(has, np.take_along_axis(sel.scores, np.clip(sel.chosen, 0, None)[..., None], -1)[..., 0], 0.0)
    return Choice(sel, logits, vis_prob, conf, seconds)


@dataclass
class FrameEnsemble:
    """:func:`ensemble_frames` output: candidates ``[T, N, M, 2]`` / ``candidate_visibility [T, N, M]`` in
    the frames' pixels, the teacher names (made unique) and settings, and the :class:`Choice`."""

    names: list[str]
    candidates: np.ndarray
    candidate_visibility: np.ndarray
    settings: list[dict]
    choice: Choice
    seconds: dict[str, float]


def ensemble_frames(
    video: FrameSource,
    queries: np.ndarray,
    teachers: Sequence[Tracker],
    select: str,
    *,
    seed: int = 0,
    verifier: VerifierArg | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    progress: ProgressFn | None = None,
) -> FrameEnsemble:
    """The ensemble on frames already in memory, with tracker-frame queries (the :class:`Tracker` path).

    queries ``[N, 3]``: (t frame index, x, y pixels of ``video``), passed to the teachers unchecked, as a
    tracker's caller would. Same teacher loop and selection as :func:`ensemble`, without decoding,
    query parsing or source-pixel mapping.
    """
    q = np.asarray(queries, np.float64)
    run = run_teachers(teachers, video, q, progress=progress)
    cand = np.stack(run.tracks, axis=2).astype(np.float32)
    cand_vis = np.stack(run.visibility, axis=2).astype(bool) & ~S.absent_candidates(cand)
    choice = choose(video.read_all(), cand, cand_vis, q, select, seed=seed, verifier=verifier, device=device,
                    precision=precision, progress=progress)
    return FrameEnsemble(_unique(run.names), cand, cand_vis, run.settings, choice, {**run.seconds, **choice.seconds})


def ensemble(
    video: str | Path | FrameSource,
    queries: str | Path | np.ndarray | None = None,
    *,
    teachers: Sequence[str | Tracker] = (),
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
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    max_size: int | None = None,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    quiet: bool = True,
) -> EnsembleResult:
    """Run ``teachers`` (tracker ids or :class:`Tracker` objects) on ``video``, add ``candidates`` files, select.

    video: a file, an image folder, a ``VideoReader`` or any :class:`FrameSource` (e.g. ``ArrayVideo``).
    queries: ``[N, 3]`` (t, x, y) array or file, t a source frame number, x, y original pixels; with none
        (and no grid/mask/points) the queries of the candidate files, else a 10x10 grid.
    select: ``verifier`` (default; needs the verifier weights: ``verifier_weights`` or the Hub),
        ``random`` (one teacher for the whole video, from ``seed``) or ``median``.
    backward: ask teachers to track before the query frame too (otherwise those frames are NaN).
    progress(n) / stage(description, total): progress reporting, one stage per teacher and the verifier.

    Returns an :class:`EnsembleResult` (``.result`` is the ``TrackResult``; ``.selection_arrays()``).
    """
    from .api import build_queries, validate_queries
    from .io.video import open_video
    from .trackers import build_tracker, resolve_device, tracker_ids

    if select not in S.STRATEGIES:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(S.STRATEGIES)}")
    teachers = list(teachers)
    cand_paths = [Path(p) for p in candidates]
    if not teachers and not cand_paths:
        raise PtrackError("no candidates: give --teachers (tracker ids) and/or --candidates (tracks.npz files)")
    known = None
    for t in teachers:
        if isinstance(t, str):
            known = known or tracker_ids()
            if t not in known:
                raise PtrackError(f"unknown teacher {t!r} (choose from: {', '.join(known)}; see `ptrack models`)")
    dev = resolve_device(device)
    prec = _resolve_precision(precision, dev)
    # Everything that can fail cheaply (weights, files, queries) is checked before any tracking.
    vweights = load_verifier_weights(verifier_weights, quiet) if select == "verifier" else None
    from .weights import download, registry

    for t in teachers:
        if isinstance(t, str) and t in registry():
            download(t, quiet=quiet)  # cached after the first time; fail now, not after other teachers ran

    t0 = time.perf_counter()
    reader = open_video(video, start=start, end=end, stride=stride, max_size=max_size) if isinstance(video, (str, Path)) else video
    dec = reader if isinstance(reader, DecodedVideo) else DecodedVideo(reader)
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
    q_index = _query_rows(q, dec)

    if teachers:
        validate_queries(q, dec)  # teachers get checked queries (candidate files keep their own)
    q_model = np.concatenate([q_index[:, None].astype(np.float64), dec.from_source(q[:, 1:3])], axis=1)

    def build(t: str) -> Tracker:
        return build_tracker(t, device=dev, backward=backward, precision=precision, quiet=quiet, support_grid=explicit)

    run = run_teachers(teachers, dec, q_model, build=build, progress=progress, stage=stage)
    seconds.update(run.seconds)
    settings = run.settings
    names = _unique(run.names + [p.name for p in cand_paths])
    tracks_all = [dec.to_source(tr.astype(np.float64)).astype(np.float32) for tr in run.tracks]
    vis_all = list(run.visibility)
    for tr, vis in files:
        tracks_all.append(tr)
        vis_all.append(vis)

    cand_src = np.stack(tracks_all, axis=2).astype(np.float32)  # [T, N, M, 2] original pixels
    cand_vis = np.stack(vis_all, axis=2).astype(bool)
    cand_vis &= ~S.absent_candidates(cand_src)
    # Selection happens in the frames the teachers saw (identical to original pixels without max_size).
    cand = dec.from_source(cand_src.astype(np.float64)).astype(np.float32)
    choice = choose(dec.frames, cand, cand_vis, q_model, select, seed=seed, verifier=vweights, device=dev,
                    precision=prec, progress=progress, stage=stage)
    seconds.update(choice.seconds)
    sel, logits = choice.selection, choice.logits

    tracks = dec.to_source(sel.tracks.astype(np.float64)).astype(np.float32)
    vis_prob, conf = choice.visibility_prob, choice.confidence
    meta = {
        "video": str(dec.path.resolve()) if dec.path.exists() else str(dec.path),
        "coordinates": COORDINATES,
        "queries_t": "source frame number (see frame_indices)",
        "model": "ensemble",
        "select": select,
        "teachers": names,
        "candidate_files": [str(p.resolve()) for p in cand_paths],
        "teacher_settings": settings,
        "verifier_weights": None if vweights is None else {k: v for k, v in vweights[1].items()},
        "verifier_precision": prec if select == "verifier" else None,
        "device": dev,
        "seed": seed if select == "random" else None,
        "visibility": "strict majority vote of the candidates' own flags (mean > 0.5)" if select != "random"
        else "the chosen teacher's own flag",
        "visibility_prob": "fraction of candidates (with an estimate) saying visible",
        "confidence": "score of the chosen candidate (see selection.npz scores)",
        "start": start, "end": end, "stride": stride, "max_size": max_size,
        "tracked_size": [dec.width, dec.height],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    result = TrackResult(
        tracks=tracks, visibility=sel.visibility, visibility_prob=vis_prob, confidence=conf, queries=q,
        frame_indices=dec.frame_indices, fps=dec.fps, size=dec.source_size, model="ensemble", meta=meta,
    )
    out = EnsembleResult(result, names, cand_src, cand_vis, sel.scores, sel.chosen, select, logits, seconds)
    meta["chosen_counts"] = out.counts()
    return out
