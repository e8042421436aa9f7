"""The result of a tracking run and its on-disk form (``tracks.npz``)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PtrackError
from .version import __version__

NAME_PATTERN = re.compile(r"^\w[\w.+-]{0,99}$")
"""A point name: a letter, digit or underscore, then those or ``. + -`` (100 characters at most). Spaces, commas
and quotes are refused so that every export (CSV headers, HDF5 node names, COCO) holds the name unchanged."""
COORDINATES = "pixels of the original video, x then y; (0, 0) is the centre of the top-left pixel (OpenCV convention)"


@dataclass
class TrackResult:
    """Tracks of N points over T frames, in original-video pixels.

    tracks: ``[T, N, 2]`` float32 (x, y); NaN where there is no estimate (before a point's query frame
        for trackers that do not track backward).
    visibility: ``[T, N]`` bool; visibility_prob, confidence: ``[T, N]`` float32 in [0, 1].
    queries: ``[N, 3]`` float32 rows (t, x, y); t is the SOURCE frame number (as in ``frame_indices``).
    frame_indices: ``[T]`` int64 source frame numbers of the tracked frames (after --start/--stride).
    fps: frame rate of the source video; size: (w, h) of the source video.
    model: model id; meta: JSON-able dict (command, video, thresholds, weights source, ...).
    extra_files: further arrays written beside ``tracks.npz``, ``{file name: {array name: array}}`` (an
        ensemble's ``selection.npz``).
    point_names: the N point names (default ``p0, p1, ...``).
    anchors: ``[A, 4]`` float32 rows (point index, t, x, y), every place a point was given, sorted by point and
        frame (default: each point's query); ``queries`` holds each point's first anchor.
    anchor: ``[T, N]`` int32, which anchor (row of ``anchors``) each frame's estimate comes from, -1 where there is
        none (default: the point's only anchor wherever its track has a position).
    """

    tracks: np.ndarray
    visibility: np.ndarray
    visibility_prob: np.ndarray
    confidence: np.ndarray
    queries: np.ndarray
    frame_indices: np.ndarray
    fps: float
    size: tuple[int, int]
    model: str
    meta: dict = field(default_factory=dict)
    ptrack_version: str = ""
    extra_files: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    point_names: list[str] | None = None
    anchors: np.ndarray | None = None
    anchor: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.tracks = np.asarray(self.tracks, np.float32)
        self.visibility = np.asarray(self.visibility, bool)
        self.visibility_prob = np.asarray(self.visibility_prob, np.float32)
        self.confidence = np.asarray(self.confidence, np.float32)
        self.queries = np.asarray(self.queries, np.float32).reshape(-1, 3)
        self.frame_indices = np.asarray(self.frame_indices, np.int64)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.ptrack_version = self.ptrack_version or __version__
        n = self.tracks.shape[1] if self.tracks.ndim == 3 else len(self.queries)
        self.point_names = [f"p{i}" for i in range(n)] if self.point_names is None else [str(v) for v in self.point_names]
        if self.anchors is None:
            self.anchors = np.concatenate([np.arange(n, dtype=np.float32)[:, None], self.queries], axis=1)
        self.anchors = np.asarray(self.anchors, np.float32).reshape(-1, 4)
        if self.anchor is None:  # one anchor per point: the point's own, wherever it has a position
            has = np.isfinite(self.tracks).all(axis=-1) if self.tracks.ndim == 3 else np.zeros((0, n), bool)
            self.anchor = np.where(has, np.arange(n, dtype=np.int32)[None, :], np.int32(-1))
        self.anchor = np.asarray(self.anchor, np.int32)

    @property
    def num_frames(self) -> int:
        return int(self.tracks.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.tracks.shape[1])

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays as stored in ``tracks.npz`` (no object arrays: loads with allow_pickle=False)."""
        return {
            "tracks": self.tracks,
            "visibility": self.visibility,
            "visibility_prob": self.visibility_prob,
            "confidence": self.confidence,
            "queries": self.queries,
            "frame_indices": self.frame_indices,
            "fps": np.float64(self.fps),
            "size": np.asarray(self.size, np.int64),
            "model": np.str_(self.model),
            "ptrack_version": np.str_(self.ptrack_version),
            "meta": np.str_(json.dumps(self.meta, default=str)),
            "point_names": np.array(self.point_names, dtype=str).reshape(-1),
            "anchors": self.anchors,
            "anchor": self.anchor,
        }


# --------------------------------------------------------------------------------------------------
# Reading: every array of a foreign file is checked, and a file of an incomplete output set is refused

TRACK_MARGIN = 10.0
"""How far outside the frame track coordinates may lie, in frame sizes: x in [-10W, 11W], y in [-10H, 11H].
Points legitimately leave the frame and trackers extrapolate them (TAP-Vid's noisy baseline reaches 6 frame
widths), but a coordinate beyond this is no position (a file with 1e30 is broken)."""
UNKNOWN_SIZE_LIMIT = 1e6
"""Largest |x| or |y| accepted when neither the file nor the caller says the frame size."""
MANIFEST = "ptrack.json"
"""The manifest of an output set (written last; see :mod:`pointtrack_cli.io.outputs`, the writing side)."""


def staging_prefix(manifest: str = MANIFEST) -> str:
    """Name prefix of the staging folders of the set with manifest ``manifest`` (present while it is written)."""
    return f".{manifest}.staging-"


def check_set_member(path: str | Path, manifest: str = MANIFEST) -> None:
    """One line when ``path`` belongs to an output set that is incomplete, or differs from what its manifest says.

    Incomplete: no manifest but a staging folder beside it (a run stopped while writing). A folder with neither
    is no output set (another tool's files, or an older ptrack's): its files pass.
    """
    path = Path(path)
    folder = path.parent
    mpath = folder / manifest
    if not mpath.is_file():
        if folder.is_dir() and any(p.name.startswith(staging_prefix(manifest)) for p in folder.iterdir()):
            raise PtrackError(f"{path} belongs to an incomplete output set (no {manifest}: the run writing {folder} "
                              "stopped before it finished); run the command again")
        return
    try:
        files = json.loads(mpath.read_text(encoding="utf-8"))["files"]
        entry = next((f for f in files if isinstance(f, dict) and f.get("name") == path.name), None)
    except (OSError, ValueError, KeyError, TypeError):
        raise PtrackError(f"{mpath} is not a readable ptrack manifest (damaged): run the command again") from None
    if entry is not None and path.stat().st_size != entry.get("size"):
        raise PtrackError(f"{path} has {path.stat().st_size} bytes, {mpath.name} says {entry.get('size')} (modified or "
                          "truncated since ptrack wrote it); run the command again")


def check_array(path: Path, name: str, a: np.ndarray, shape: tuple, kinds: str, *, nan: bool = False) -> np.ndarray:
    """``a`` with the expected ``shape`` (ints fixed, None free) and dtype kind, finite (NaN too with ``nan``).

    kinds: numpy kind letters accepted (``f`` floating, ``iu`` integer, ``b`` bool): complex, string and
    object arrays never pass. One line naming the file and the array otherwise.
    """
    a = np.asarray(a)
    if a.dtype.kind not in kinds:
        what = {"c": "complex", "U": "string", "S": "bytes", "O": "object", "V": "structured"}.get(a.dtype.kind, str(a.dtype))
        want = {"f": "floating point", "b": "bool"}.get(kinds, "numeric")
        raise PtrackError(f"{path}: array {name!r} holds {what} values ({a.dtype}); it must be {want}")
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        dims = ", ".join("?" if d is None else str(d) for d in shape)
        raise PtrackError(f"{path}: array {name!r} has shape {list(a.shape)}, expected [{dims}]")
    if a.dtype.kind == "f":
        bad = np.isinf(a) if nan else ~np.isfinite(a)
        if bad.any():
            raise PtrackError(f"{path}: array {name!r} holds {'infinite' if nan else 'NaN or infinite'} values "
                              f"(at index {tuple(int(i) for i in np.argwhere(bad)[0])})")
    return a


def check_coordinates(path: Path, name: str, xy: np.ndarray, size: tuple[int, int] | None) -> None:
    """Coordinates ``[..., 2]`` (x, y) finite or NaN within :data:`TRACK_MARGIN` of a ``size`` (w, h) frame."""
    with np.errstate(invalid="ignore"):
        if size and size[0] > 0 and size[1] > 0:
            w, h = size
            lo, hi = np.array([-TRACK_MARGIN * w, -TRACK_MARGIN * h]), np.array([(1 + TRACK_MARGIN) * w, (1 + TRACK_MARGIN) * h])
            where = f"more than {TRACK_MARGIN:g} frame sizes outside the {w}x{h} frame"
        else:
            lo, hi = np.full(2, -UNKNOWN_SIZE_LIMIT), np.full(2, UNKNOWN_SIZE_LIMIT)
            where = f"beyond +-{UNKNOWN_SIZE_LIMIT:g} px (the file gives no frame size)"
        bad = (xy < lo) | (xy > hi)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise PtrackError(f"{path}: array {name!r} has a coordinate {float(xy[idx]):g} at {idx}, {where}")


def load_tracks(path: str | Path, frame_size: tuple[int, int] | None = None) -> TrackResult:
    """Read a ``tracks.npz`` written by ptrack or another tool (or the output folder that holds it).

    Every array is checked (one line naming the file and the array): ``tracks [T, N, 2]`` floating point,
    finite or NaN, within :data:`TRACK_MARGIN` of the frame (``size`` in the file, else ``frame_size`` (w, h),
    else :data:`UNKNOWN_SIZE_LIMIT`); ``visibility [T, N]``; optional ``visibility_prob``, ``confidence``
    ``[T, N]``, ``queries [N, 3]``, ``frame_indices [T]``, numeric ``fps``, ``size`` (w, h), ``meta`` (a JSON
    object). Complex, string and object arrays are refused. Without ``queries`` the result's queries are NaN
    (callers that need them say so). A file of an incomplete output set is refused (:func:`check_set_member`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tracks.npz"
    if not path.is_file():
        raise PtrackError(f"tracks file not found: {path} (pass a tracks.npz or the output folder)")
    check_set_member(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise PtrackError(f"cannot read {path}: {exc} (not a ptrack tracks.npz)") from None
    missing = [k for k in ("tracks", "visibility") if k not in data]
    if missing:
        raise PtrackError(f"{path} is not a ptrack tracks file: missing {', '.join(missing)}")
    tracks = check_array(path, "tracks", data["tracks"], (None, None, 2), "f", nan=True)
    T, N = tracks.shape[:2]
    vis = check_array(path, "visibility", data["visibility"], (T, N), "biuf").astype(bool)
    opt = {k: check_array(path, k, data[k], (T, N), "biuf").astype(np.float32)
           for k in ("visibility_prob", "confidence") if k in data}
    queries = check_array(path, "queries", data["queries"], (N, 3), "biuf") if "queries" in data else np.full((N, 3), np.nan)
    names, anchors, anchor = check_points(path, data, T, N)
    frames = check_array(path, "frame_indices", data["frame_indices"], (T,), "iu") if "frame_indices" in data else np.arange(T)
    fps = float(check_array(path, "fps", data["fps"], (), "iuf")) if "fps" in data else 30.0
    if not fps > 0:
        raise PtrackError(f"{path}: array 'fps' is {fps:g}, expected a positive frame rate")
    size = tuple(int(v) for v in check_array(path, "size", data["size"], (2,), "iu")) if "size" in data else (0, 0)
    if min(size) < 0:
        raise PtrackError(f"{path}: array 'size' is {list(size)}, expected (width, height) >= 0")
    check_coordinates(path, "tracks", tracks, size if size != (0, 0) else frame_size)
    texts = {}
    for k in ("model", "ptrack_version", "meta"):
        if k in data:
            if data[k].dtype.kind != "U" or data[k].ndim != 0:
                raise PtrackError(f"{path}: array {k!r} must be a string, got {data[k].dtype} {list(data[k].shape)}")
            texts[k] = str(data[k])
    meta = {}
    if "meta" in texts:
        try:
            meta = json.loads(texts["meta"])
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise PtrackError(f"{path}: array 'meta' is not a JSON object (ptrack writes its metadata as JSON)")
    return TrackResult(
        tracks=tracks, visibility=vis, visibility_prob=opt.get("visibility_prob", vis.astype(np.float32)),
        confidence=opt.get("confidence", np.ones((T, N), np.float32)), queries=queries, frame_indices=frames,
        fps=fps, size=size, model=texts.get("model", "unknown"), meta=meta, ptrack_version=texts.get("ptrack_version", ""),
        point_names=names, anchors=anchors, anchor=anchor,
    )


def check_points(path: Path, data: dict, T: int, N: int) -> tuple[list[str] | None, np.ndarray | None, np.ndarray | None]:
    """The optional ``point_names [N]``, ``anchors [A, 4]`` and ``anchor [T, N]`` of a tracks file, checked (None
    when absent: the defaults of :class:`TrackResult`)."""
    names = anchors = anchor = None
    if "point_names" in data:
        a = data["point_names"]
        if a.dtype.kind != "U" or a.shape != (N,):
            raise PtrackError(f"{path}: array 'point_names' must be {N} strings, got {a.dtype} {list(a.shape)}")
        names = [str(v) for v in a]
        bad = next((v for v in names if not NAME_PATTERN.match(v)), None)
        if bad is not None or len(set(names)) != N:
            what = f"the name {bad!r} (letters, digits, _ . + - only)" if bad is not None else "a name twice"
            raise PtrackError(f"{path}: array 'point_names' holds {what}")
    if "anchors" in data:
        anchors = check_array(path, "anchors", data["anchors"], (None, 4), "biuf").astype(np.float64)
        point = anchors[:, 0]
        if (point != np.round(point)).any() or (point < 0).any() or (point >= N).any() or \
                len(np.unique(point)) != N:
            raise PtrackError(f"{path}: array 'anchors' must give every point 0..{N - 1} at least one anchor "
                              "(rows: point index, t, x, y)")
    if "anchor" in data:
        anchor = check_array(path, "anchor", data["anchor"], (T, N), "iu")
        A = len(anchors) if anchors is not None else N
        if anchor.size and (anchor.min() < -1 or anchor.max() >= A):
            raise PtrackError(f"{path}: array 'anchor' names anchors outside -1..{A - 1}")
    return names, anchors, anchor
