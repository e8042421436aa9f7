"""Pseudo-labels for fine-tuning: teachers, the two recipes, and the on-disk cache ``RUN_DIR/labels/``.

Everything is in pixels of the training-size clip (``[T, H, W, 3]`` uint8), frames first.

Teachers (spec ``realtracker.md`` sec. 14):

* RealTracker checkpoints (``realtracker-*`` ids, and the student's own starting weights, named
  ``student-init``) are called as the raw model: ``forward(video, queries, iters=4)`` on the clip, with the
  official teacher-only extra queries (online: 5x5 grid at frame 0; offline: 100 uniform random
  ``(t, x, y)``), dropped afterwards. Pseudo-visibility = ``vis > 0.9`` (confidence ignored).
* Any other ptrack tracker (``lk``, ...) goes through its :class:`~pointtrack_cli.trackers.base.Tracker`
  at the training size, tracking both ways (``backward=True``); its own visibility flags are used, and
  frames where it gives no estimate (NaN) carry no label.

Recipes:

* ``random-teacher``: one teacher's labels (the trainer draws the teacher per batch).
* ``verifier`` (Track-On-R): every teacher's tracks become candidates; per (frame, point) the verifier's
  arg-max candidate is the pseudo-track, the strict majority of the teachers' flags the pseudo-visibility
  (:mod:`pointtrack_cli.ensemble.selection`), scored by :func:`pointtrack_cli.ensemble.verifier.run_verifier`
  (fp16 autocast on CUDA as the official pipeline, fp32 on CPU: the ``verifier`` default of
  :mod:`pointtrack_cli.device`).

Cache: one NPZ per (clip, teacher) and per (clip, verifier selection), written atomically under
``labels/<clip_id>/``. Each file stores a JSON ``key`` describing everything that determines it (clip,
video file size and time, resolution, points, seed, teacher weights, iterations); a file whose key
differs, or that cannot be read, is recomputed. Clips are sharded by rank, so every file has one writer.
The random draws of labelling use generators seeded by (seed, clip, teacher), never the training RNG, so
a resumed run that finds labels on disk continues exactly like one that computed them.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..device import autocast, resolve_precision
from ..ensemble.selection import fill_for_verifier, select_verifier
from ..ensemble.teachers import PRESETS
from ..ensemble.verifier import build_verifier, load_verifier_weights, run_verifier
from ..errors import PtrackError
from ..geometry import official_grid
from ..io.atomic import atomic_path
from ..io.video import ArrayVideo
from ..models.realtracker import load_realtracker
from ..trackers.registry import build_tracker, split_model_id, tracker_ids
from ..weights.hub import load_weights
from ..weights.registry import registry
from .data import Clip
from .sampling import random_queries, sift_queries

LABEL_VERSION = 1
TEACHER_ITERS = 4
TEACHER_VIS_THRESHOLD = 0.9
ONLINE_EXTRA_GRID = 5
OFFLINE_EXTRA_RANDOM = 100
MAX_ABS_QUERY = 1500.0
RECIPES = ("random-teacher", "verifier")
STUDENT_INIT = "student-init"


# --------------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing the python / numpy / torch global random states (exact resume)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def clip_rng(seed: int, clip: Clip, salt: str = "") -> np.random.Generator:
    """Generator for the random choices of one clip (queries) or (clip, teacher) (extra teacher queries)."""
    return np.random.default_rng([int(seed), _crc(clip.clip_id), _crc(salt)])


def file_stamp(path: str | Path) -> list:
    """(size, mtime) of a file, or (number of files, newest mtime) of an image folder: detects replaced inputs."""
    p = Path(path)
    try:
        if p.is_dir():
            entries = [e.stat() for e in os.scandir(p) if e.is_file()]
            return [len(entries), max((e.st_mtime_ns for e in entries), default=0)]
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def weights_stamp(model_id: str, weights: str | None) -> dict:
    """Identity of a teacher's weights for the cache key (local file with size/time, or the registry entry)."""
    if weights:
        return {"file": str(Path(weights).resolve()), "stamp": file_stamp(weights)}
    e = registry().get(model_id, {})
    return {"hub": f"{e.get('repo_id')}/{e.get('filename')}@{e.get('revision') or 'main'}"} if e else {"id": model_id}


def clip_queries(frames: np.ndarray, clip: Clip, num_points: int, seed: int) -> tuple[np.ndarray, bool]:
    """The clip's queries ``[N, 3]`` (SIFT, deterministic per clip) and whether SIFT found enough points."""
    return sift_queries(frames, num_points, clip_rng(seed, clip, "queries"))


# --------------------------------------------------------------------------------------------------
# Teachers


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as the user names it: ``name`` (unique), ``model_id`` (tracker id) and optional local ``weights``."""

    name: str
    model_id: str
    weights: str | None = None


def parse_teachers(items: list[str]) -> list[TeacherSpec]:
    """``["realtracker-offline", "lk", "realtracker-online=ft.safetensors"]`` -> specs (names made unique).

    A preset name (``trackon-r``, ``trackon-r-eval``) stands for its teachers; ids may carry ``@HxW``.
    """
    known = tracker_ids()
    out: list[TeacherSpec] = []
    names: set[str] = {STUDENT_INIT}
    expanded = [t for item in items for t in (PRESETS[item.strip()] if item.strip() in PRESETS else (item,))]
    for item in expanded:
        model_id, _, path = item.partition("=")
        model_id, path = model_id.strip(), path.strip()
        if split_model_id(model_id)[0] not in known:
            raise PtrackError(f"unknown teacher {model_id!r} in --teachers (choose from: {', '.join(known)}, or a "
                              f"preset: {', '.join(PRESETS)}; ID=PATH gives local weights)")
        if path and not Path(path).is_file():
            raise PtrackError(f"teacher weights not found: {path} (in --teachers {item})")
        name, k = model_id, 2
        while name in names:
            name, k = f"{model_id}#{k}", k + 1
        names.add(name)
        out.append(TeacherSpec(name, model_id, path or None))
    return out


def is_realtracker(model_id: str) -> bool:
    """True when ``model_id`` is a RealTracker checkpoint (called as the raw model)."""
    return str(registry().get(model_id, {}).get("architecture", "")).startswith("realtracker-")


def realtracker_online(model_id: str) -> bool:
    return registry()[model_id]["architecture"] == "realtracker-online"


class Teacher:
    """A frozen pseudo-labeller. ``predict`` returns tracks ``[T, N, 2]`` (NaN = no estimate) and visibility ``[T, N]``."""

    name: str
    key: dict

    def predict(self, frames: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class RealTrackerTeacher(Teacher):
    """Raw RealTracker forward (spec sec. 14): teacher-only extra queries, ``iters`` iterations, ``vis > 0.9``."""

    def __init__(self, name: str, model, key: dict, device: torch.device, precision: str = "fp32",
                 iters: int = TEACHER_ITERS, vis_threshold: float = TEACHER_VIS_THRESHOLD) -> None:
        self.name, self.key = name, dict(key, iters=iters, vis_threshold=vis_threshold, online=bool(model.online))
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.precision = device, precision  # resolved: fp32, bf16 or fp16
        self.iters, self.vis_threshold = iters, vis_threshold

    def extra_queries(self, num_frames: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Online: the official 5x5 grid at frame 0; offline: 100 uniform random ``(t, x, y)``."""
        h, w = hw
        if self.model.online:
            g = official_grid(ONLINE_EXTRA_GRID, float(h), float(w))
            return np.concatenate([np.zeros((len(g), 1)), g], axis=1).astype(np.float32)
        return random_queries(OFFLINE_EXTRA_RANDOM, num_frames, hw, rng, early=False)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t, h, w = frames.shape[:3]
        n = len(queries)
        self.model.model_resolution = (h, w)  # displacements normalised by the size the model sees
        q = np.concatenate([np.asarray(queries, np.float32), self.extra_queries(t, (h, w), rng)], axis=0)
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()[None]
        with autocast(str(self.device), self.precision):
            coords, vis, _, _ = self.model(video, torch.from_numpy(q).to(self.device)[None], iters=self.iters)
        tracks = coords[0, :, :n].float().cpu().numpy()
        visible = (vis[0, :, :n].float() > self.vis_threshold).cpu().numpy()
        if not np.isfinite(tracks).all():  # official NaN guard: the whole sample carries no label
            tracks[:] = np.nan
        return tracks, visible


class TrackerTeacher(Teacher):
    """Any ptrack :class:`Tracker` (built at the training size, tracking both ways)."""

    def __init__(self, name: str, tracker, key: dict) -> None:
        self.name, self.tracker = name, tracker
        self.key = dict(key, settings=json.loads(json.dumps(tracker.settings(), default=str)))

    def predict(self, frames: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        out = self.tracker.track(ArrayVideo(frames), np.asarray(queries, np.float64))
        return out.tracks.astype(np.float32), out.visibility.astype(bool)


def load_realtracker_model(sd: dict, online: bool, source: str, hw: tuple[int, int]):
    return load_realtracker(sd, online=online, source=source, model_resolution=hw)


def build_teacher(spec: TeacherSpec, hw: tuple[int, int], device: torch.device, precision: str = "fp32",
                  iters: int = TEACHER_ITERS) -> Teacher:
    """Load one teacher (weights from ``spec.weights`` or the Hub cache); ``precision`` (resolved) of RealTrackers."""
    key = {"teacher": spec.name, "model_id": spec.model_id, "weights": weights_stamp(spec.model_id, spec.weights)}
    if is_realtracker(spec.model_id):
        sd, info = load_weights(spec.model_id, spec.weights, quiet=True)
        model = load_realtracker_model(sd, realtracker_online(spec.model_id), str(info.get("path", spec.model_id)), hw)
        return RealTrackerTeacher(spec.name, model, key, device, precision, iters)
    # Other teachers run at their own native resolution (or the id's @HxW), whatever the student's.
    tracker = build_tracker(spec.model_id, weights=spec.weights, device=str(device), backward=True,
                            quiet=True, support_grid=True)
    return TrackerTeacher(spec.name, tracker, key)


# --------------------------------------------------------------------------------------------------
# Labels and their cache


@dataclass
class ClipLabels:
    """Pseudo-labels of one clip: queries ``[N, 3]``, tracks ``[T, N, 2]``, visibility / valid ``[T, N]`` bool.

    ``valid`` False = no supervision there (no estimate, NaN guard, or too few SIFT points: whole clip).
    ``source``: teacher name or ``verifier``; ``chosen [T, N]`` (verifier only): index into ``teachers``.
    """

    queries: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray
    valid: np.ndarray
    source: str
    enough_points: bool = True
    chosen: np.ndarray | None = None
    teachers: tuple[str, ...] = ()

    def arrays(self, key: dict) -> dict[str, np.ndarray]:
        out = {
            "queries": self.queries.astype(np.float32), "tracks": self.tracks.astype(np.float32),
            "visibility": self.visibility.astype(bool), "valid": self.valid.astype(bool),
            "source": np.str_(self.source), "enough_points": np.bool_(self.enough_points),
            "teachers": np.array(list(self.teachers), dtype=str), "key": np.str_(json.dumps(key, sort_keys=True)),
        }
        if self.chosen is not None:
            out["chosen"] = self.chosen.astype(np.int64)
        return out

    @classmethod
    def from_npz(cls, d) -> "ClipLabels":
        return cls(
            d["queries"], d["tracks"], d["visibility"], d["valid"], str(d["source"]), bool(d["enough_points"]),
            d["chosen"] if "chosen" in d.files else None, tuple(str(x) for x in d["teachers"]),
        )

    def truncate(self, length: int) -> "ClipLabels":
        """Labels of the first ``length`` frames (queries beyond them lose their labels)."""
        valid = self.valid[:length] & (self.queries[:, 0] < length)[None]
        chosen = None if self.chosen is None else self.chosen[:length]
        return ClipLabels(self.queries, self.tracks[:length], self.visibility[:length], valid, self.source,
                          self.enough_points, chosen, self.teachers)


def guard(queries: np.ndarray, tracks: np.ndarray, visibility: np.ndarray, enough: bool) -> tuple[np.ndarray, np.ndarray]:
    """Official NaN guard and sample mask: ``(queries, valid [T, N])``.

    Non-finite entries carry no label; non-finite queries or ``|query| > 1500`` set the queries to 1 and the
    whole sample invalid; too few SIFT points invalidate the whole sample.
    """
    valid = np.isfinite(tracks).all(-1)
    q = np.asarray(queries, np.float32)
    if not np.isfinite(q).all() or float(np.abs(q).max(initial=0.0)) > MAX_ABS_QUERY:
        q = np.ones_like(q)
        valid[:] = False
    if not enough:
        valid[:] = False
    return q, valid


class LabelStore:
    """Computes pseudo-labels on demand and caches them under ``root`` (see the module docstring).

    teachers: specs in candidate order (the student's starting weights first, as ``student-init``);
    student_init: ``(state_dict, online, source_key)`` of the student's starting weights.
    precision: resolved precision of the RealTracker teachers (``fp32``, ``bf16``, ``fp16``; the trainer's).
    verifier_weights: path or None (Hub) for the verifier recipe.
    """

    def __init__(
        self,
        root: str | Path,
        teachers: list[TeacherSpec],
        student_init: tuple[dict, bool, dict],
        *,
        recipe: str,
        hw: tuple[int, int],
        num_points: int,
        seed: int,
        device: torch.device,
        precision: str = "fp32",
        teacher_iters: int = TEACHER_ITERS,
        verifier_weights: str | None = None,
        relabel: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if recipe not in RECIPES:
            raise PtrackError(f"unknown --recipe {recipe!r} (use random-teacher or verifier)")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.specs = [TeacherSpec(STUDENT_INIT, "student", None)] + list(teachers)
        self.student_init = student_init
        self.recipe, self.hw, self.num_points, self.seed = recipe, tuple(hw), num_points, seed
        self.device, self.precision, self.teacher_iters = device, precision, teacher_iters
        self.verifier_weights, self.relabel = verifier_weights, relabel
        self.log = log or (lambda s: None)
        self._teachers: dict[str, Teacher] = {}
        self._verifier = None
        self._fresh: set[Path] = set()  # files written in this run (--relabel recomputes the others once)
        self.computed = 0
        self.reused = 0

    @property
    def teacher_names(self) -> list[str]:
        return [s.name for s in self.specs]

    # ---- models (loaded on first use, or all at once by load_models) -------------------------------

    def load_models(self) -> None:
        """Load every teacher (and the verifier for its recipe) now: a missing, damaged or mismatched checkpoint
        then stops the run before its first step, not when the teacher is first drawn."""
        for i, spec in enumerate(self.specs):
            try:
                self.teacher(i)
            except PtrackError as exc:
                raise PtrackError(f"teacher {spec.name}: {exc}") from None
        if self.recipe == "verifier":
            self.verifier()

    def teacher(self, index: int) -> Teacher:
        spec = self.specs[index]
        if spec.name not in self._teachers:
            with preserved_rng():
                if spec.name == STUDENT_INIT:
                    sd, online, stamp = self.student_init
                    model = load_realtracker_model(sd, online, "student starting weights", self.hw)
                    key = {"teacher": STUDENT_INIT, "model_id": "student", "weights": stamp}
                    self._teachers[spec.name] = RealTrackerTeacher(STUDENT_INIT, model, key, self.device,
                                                                   self.precision, self.teacher_iters)
                else:
                    self._teachers[spec.name] = build_teacher(spec, self.hw, self.device, self.precision,
                                                              self.teacher_iters)
            self.log(f"loaded teacher {spec.name}")
        return self._teachers[spec.name]

    def verifier(self):
        if self._verifier is None:
            with preserved_rng():
                self._verifier = build_verifier(load_verifier_weights(self.verifier_weights, hint="or use --recipe random-teacher"), self.device)
            self.log("loaded verifier")
        return self._verifier

    # ---- cache files --------------------------------------------------------------------------------

    def _clip_key(self, clip: Clip) -> dict:
        return {
            "version": LABEL_VERSION, "clip": {k: v for k, v in asdict(clip).items() if k != "path"},
            "video_stamp": file_stamp(clip.path), "resolution": list(self.hw), "num_points": self.num_points,
            "seed": self.seed,
        }

    def _teacher_key(self, clip: Clip, index: int) -> dict:
        spec = self.specs[index]
        if spec.name == STUDENT_INIT:
            t = {"teacher": STUDENT_INIT, "weights": self.student_init[2], "online": self.student_init[1]}
        else:
            t = {"teacher": spec.name, "model_id": spec.model_id, "weights": weights_stamp(spec.model_id, spec.weights)}
        t["iters"] = self.teacher_iters
        return dict(self._clip_key(clip), teacher=t)

    def path(self, clip: Clip, name: str) -> Path:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.root / clip.clip_id / f"{slug}.npz"

    def _load(self, path: Path, key: dict) -> ClipLabels | None:
        if not path.is_file() or (self.relabel and path not in self._fresh):
            return None
        try:
            with np.load(path, allow_pickle=False) as d:
                if json.loads(str(d["key"])) != json.loads(json.dumps(key, sort_keys=True)):
                    return None
                return ClipLabels.from_npz(d)
        except Exception:  # truncated or foreign file: recompute
            return None

    def _save(self, path: Path, labels: ClipLabels, key: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.savez(tmp, **labels.arrays(key))
        self._fresh.add(path)

    # ---- labels -----------------------------------------------------------------------------------

    def teacher_labels(self, clip: Clip, index: int, frames: Callable[[], np.ndarray]) -> ClipLabels:
        """Labels of teacher ``index`` (0 = student-init) for ``clip``; ``frames()`` reads the clip when needed."""
        key = self._teacher_key(clip, index)
        path = self.path(clip, self.specs[index].name)
        got = self._load(path, key)
        if got is not None:
            self.reused += 1
            return got
        with preserved_rng():
            video = frames()
            queries, enough = clip_queries(video, clip, self.num_points, self.seed)
            tracks, vis = self.teacher(index).predict(video, queries, clip_rng(self.seed, clip, self.specs[index].name))
        q, valid = guard(queries, tracks, vis, enough)
        labels = ClipLabels(q, np.nan_to_num(tracks, nan=0.0), vis & valid, valid, self.specs[index].name, enough)
        self._save(path, labels, key)
        self.computed += 1
        return labels

    def verifier_labels(self, clip: Clip, frames: Callable[[], np.ndarray]) -> ClipLabels:
        """Track-On-R labels: verifier arg-max among all teachers, majority-vote visibility."""
        key = dict(self._clip_key(clip), verifier=weights_stamp("verifier", self.verifier_weights),
                   teachers=[self._teacher_key(clip, i)["teacher"] for i in range(len(self.specs))])
        path = self.path(clip, "verifier")
        got = self._load(path, key)
        if got is not None:
            self.reused += 1
            return got
        cache: list[np.ndarray] = []

        def read() -> np.ndarray:
            if not cache:
                cache.append(frames())
            return cache[0]

        per = [self.teacher_labels(clip, i, read) for i in range(len(self.specs))]
        queries = per[0].queries
        enough = all(p.enough_points for p in per)
        # Entries a teacher could not estimate are absent candidates (never chosen, do not vote).
        cand = np.stack([np.where(p.valid[..., None], p.tracks, np.nan) for p in per], axis=2)  # [T, N, M, 2]
        vis = np.stack([p.visibility for p in per], axis=2)
        t, n = cand.shape[:2]
        if not enough or not np.isfinite(cand).any():
            labels = ClipLabels(queries, np.zeros((t, n, 2), np.float32), np.zeros((t, n), bool), np.zeros((t, n), bool),
                                "verifier", enough, np.full((t, n), -1, np.int64), tuple(self.teacher_names))
        else:
            filled, absent = fill_for_verifier(cand, queries)
            video = read()
            model = self.verifier()
            precision = resolve_precision("auto", str(self.device), "verifier")  # the official pipeline's
            with preserved_rng():
                logits = run_verifier(video, filled, queries, absent, model, self.device, precision)
            sel = select_verifier(cand, vis, logits, absent)
            valid = sel.chosen >= 0
            labels = ClipLabels(queries, np.nan_to_num(sel.tracks, nan=0.0), sel.visibility & valid, valid, "verifier",
                                enough, sel.chosen, tuple(self.teacher_names))
        self._save(path, labels, key)
        self.computed += 1
        return labels

    def labels(self, clip: Clip, frames: Callable[[], np.ndarray], teacher_index: int | None = None) -> ClipLabels:
        """Labels for a training step: ``teacher_index`` for random-teacher, ignored (None) for verifier."""
        if self.recipe == "verifier":
            return self.verifier_labels(clip, frames)
        if teacher_index is None:
            raise ValueError("random-teacher labels need a teacher index")
        return self.teacher_labels(clip, teacher_index, frames)
