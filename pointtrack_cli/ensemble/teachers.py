"""The ensemble's middle: run the teachers, gather candidates, choose one per frame and point.

Data path: frames (in memory, decoded once) -> each teacher in turn (a teacher built here is freed before
the next loads) -> candidates ``[T, N, M, 2]`` (+ any ``--candidates`` files) -> :func:`choose`: verifier
arg-max with majority-vote visibility, or a weight-free baseline (``selection.py``).

Coordinates: the verifier sees the candidates exactly as the teachers output them, in pixels of the frames
the teachers were given (ptrack's convention, (0, 0) = centre of the top-left pixel), with no half-pixel
re-centring; the official ensemble does the same with its teachers' output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import PtrackError
from ..io.video import Video
from ..result import load_tracks
from ..trackers.base import FrameSource, ProgressFn, Tracker, blank_before_query
from ..trackers.registry import split_model_id
from ..weights.hub import download
from ..weights.registry import registry
from . import selection as S
from .verifier import VerifierArg, free_memory, run_verifier

DEFAULT_TEACHERS = ("realtracker-offline", "realtracker-online", "realtracker-offline-kubric", "realtracker-online-kubric", "lk")
# The official Track-On-R teacher sets, less Track-On2 (its DINOv3 weights sit behind a licence gate).
# CoTracker3 is the windowed online model, which realtracker-online reproduces chunk for chunk.
PRESETS = {
    "trackon-r": ("bootstapnext", "bootstapir", "realtracker-online", "anthro-locotrack", "alltracker"),
    "trackon-r-eval": ("tapnext", "bootstapnext", "tapir", "bootstapir", "realtracker-online", "locotrack",
                       "anthro-locotrack"),
}
PRESET_NOTE = ("presets: trackon-r = the Track-On-R fine-tuning teachers (main_real_world_ft.py), trackon-r-eval = "
               "its evaluation teachers (main_verifier.py), both without Track-On2 (licence-gated DINOv3 weights)")
StageFn = Callable[[str, int], None]
"""Called when a stage starts: (description, number of frames it will report through ``progress``)."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSpec:
    """One teacher to build: its model id (optionally ``@HxW``), local weights (None: the registry's), and
    whether it runs as the official Track-On-R pipeline runs its teachers (no support grid of its own)."""

    id: str
    weights: str | None = None
    official: bool = False


def parse_teachers(items: Sequence[str | tuple]) -> list[TeacherSpec]:
    """``["lk", "realtracker-online=w.pth", "trackon-r"]`` -> specs; a preset name expands to its teachers.

    Items are ``ID``, ``ID=WEIGHTS``, ``(ID, WEIGHTS)`` or a preset name (:data:`PRESETS`). ``ID=WEIGHTS``
    naming a teacher of a preset in the same list gives that teacher its local weights instead of adding
    one (``trackon-r,bootstapir=b.pt,...``), and its input size when the id carries one
    (``trackon-r,bootstapir@512x512=b.pt``).
    """
    pairs = []
    for item in items:
        tid, path = (str(item[0]), item[1]) if isinstance(item, tuple) else str(item).partition("=")[::2]
        pairs.append((tid.strip(), (str(path).strip() or None) if path else None))
    out: list[TeacherSpec] = []
    for tid, path in pairs:  # presets expand in place
        if tid in PRESETS:
            if path:
                raise PtrackError(f"preset {tid} takes no weights path; give its teachers theirs as ID=PATH")
            out.extend(TeacherSpec(t, None, True) for t in PRESETS[tid])
        elif tid:
            out.append(TeacherSpec(tid, path))
    for extra in [s for s in out if not s.official and s.weights is not None]:
        base = split_model_id(extra.id)[0]
        slot = next((i for i, s in enumerate(out) if s.official and s.id == base and s.weights is None), None)
        if slot is not None:
            out[slot] = TeacherSpec(extra.id, extra.weights, True)
            out.remove(extra)
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made distinct by suffixing repeats (``lk``, ``lk#2``), so counts and files stay unambiguous."""
    out: list[str] = []
    for name in names:
        cand, k = name, 2
        while cand in out:
            cand, k = f"{name}#{k}", k + 1
        out.append(cand)
    return out


def load_candidate_files(paths: Sequence[str | Path], video: Video) -> tuple[list, np.ndarray | None]:
    """Read ``--candidates`` files (ptrack's ``tracks.npz`` schema) and check they fit ``video``.

    Returns ``([(tracks [T, N, 2] original px, visibility [T, N])...], their queries [N, 3] or None)``.
    """
    out, queries = [], None
    for p in paths:
        r = load_tracks(p, frame_size=video.source_size)  # every array checked, coordinates near this frame
        if r.num_points and np.isnan(r.queries).all():
            raise PtrackError(f"candidates {p}: no 'queries' array (ptrack's tracks.npz schema stores the query "
                              "points [N, 3] (t, x, y); add them so the candidates can be matched to the queries)")
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


def query_rows(q: np.ndarray, video: Video) -> np.ndarray:
    """Frame index (into the selected frames) of each query, for queries taken from candidate files."""
    if not np.isfinite(q).all():
        raise PtrackError("the candidate files' queries contain NaN (they are not valid ptrack tracks)")
    t = q[:, 0].astype(np.int64)
    pos = np.clip(np.searchsorted(video.frame_indices, t), 0, video.num_frames - 1)
    bad = np.nonzero(video.frame_indices[pos] != t)[0]
    if len(bad):
        raise PtrackError(f"query {int(bad[0])}: frame {int(t[bad[0]])} is not among the tracked frames")
    return pos


# ---------------------------------------------------------------------------------------------
# The ensemble
# ---------------------------------------------------------------------------------------------
def fetch_teacher_weights(specs: Sequence[TeacherSpec], quiet: bool = True) -> None:
    """Every teacher's checkpoint from the cache or downloaded now, before any tracking; one line listing every
    file that is missing and how to get it (a preset would otherwise fail one teacher at a time, late)."""
    missing = []
    for spec in specs:
        base = split_model_id(spec.id)[0]
        if spec.weights is not None:
            if not Path(spec.weights).is_file():
                missing.append(f"{spec.id}: weights file not found: {spec.weights}")
            continue
        if base not in registry():
            continue  # weight-free
        try:
            download(base, quiet=quiet)
        except PtrackError as exc:
            missing.append(f"{spec.id}: {exc}")
    if missing:
        raise PtrackError(f"{len(missing)} teacher checkpoint(s) missing: " + " | ".join(missing))


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
    teachers: Sequence[TeacherSpec | Tracker],
    video: FrameSource,
    queries: np.ndarray,
    *,
    build: Callable[..., Tracker] | None = None,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
) -> TeacherRun:
    """Run each teacher on ``video`` for ``queries [N, 3]`` (t = frame index into ``video``, x, y its pixels).

    Teachers given as :class:`TeacherSpec` are built with ``build(spec)`` and freed before the next one loads
    (so only one model is in memory at a time); :class:`Tracker` objects are used as they are and kept (the
    caller owns them, e.g. to reuse them on the next video). Queries are not validated here.

    Results come in the order given; the teachers *run* in :func:`run_order` (the heaviest first).
    """
    num_frames = video.num_frames
    q_index = np.asarray(queries)[:, 0].astype(np.int64)
    done: dict[int, tuple] = {}
    seconds: dict[str, float] = {}
    for i in run_order(teachers):
        t = teachers[i]
        owned = not isinstance(t, Tracker)
        if owned and build is None:
            raise ValueError(f"teacher {t!r} given by id but no build function")
        tracker = build(t) if owned else t
        name = t.id if owned else t.name
        if owned:
            free_memory()  # the checkpoint's tensors, freed once copied into the model: not under the teacher's peak
        if stage is not None:
            stage(f"teacher {name}", num_frames)
        t1 = time.perf_counter()
        out = tracker.track(video, queries, progress=progress)
        tracks, vis = out.tracks[:num_frames].copy(), out.visibility[:num_frames].copy()
        if not tracker.backward:
            blank_before_query(tracks, vis, q_index)
        seconds[f"teacher {name}"] = time.perf_counter() - t1
        settings = {"teacher": name, "settings": tracker.settings(),
                    "weights": tracker.weights_info or "none (weight-free tracker)"}
        done[i] = (name, tracks.astype(np.float32), vis, settings)
        if owned:
            del tracker  # free the teacher before the next one loads
            free_memory()
    run = TeacherRun([], [], [], [], seconds)
    for i in range(len(teachers)):  # the order given
        name, tracks, vis, settings = done[i]
        run.names.append(name)
        run.tracks.append(tracks)
        run.visibility.append(vis)
        run.settings.append(settings)
    return run


def run_order(teachers: Sequence[TeacherSpec | Tracker]) -> list[int]:
    """Indices of ``teachers`` in the order they run: by the registry's ``cpu_peak_mib`` (each teacher's measured
    peak RSS alone, 100 frames of 480x854, grid 20), highest first; ties and teachers without it keep their order.

    A teacher's peak sits on top of what the earlier ones left in the process (imported machinery, allocator
    state, a fragmented heap: 200-300 MB measured for AllTracker), so the heaviest runs while the process is fresh
    and an ensemble peaks close to its largest teacher alone.
    """
    def peak(t: TeacherSpec | Tracker) -> int:
        if not isinstance(t, TeacherSpec):
            return 0
        return int(registry().get(split_model_id(t.id)[0], {}).get("cpu_peak_mib", 0))

    return sorted(range(len(teachers)), key=lambda i: -peak(teachers[i]))


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
    return FrameEnsemble(unique_names(run.names), cand, cand_vis, run.settings, choice, {**run.seconds, **choice.seconds})
