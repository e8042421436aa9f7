"""The prediction record of one video, and its NPZ file (``--save-predictions``, ``ptrack eval score``).

A :class:`Prediction` holds what a tracker answered for one video's TAP-Vid queries, in the 256x256 frame
pixels: tracks ``[Q, T, 2]`` (x, y) and occluded ``[Q, T]`` (TAP-Vid's order, queries first). On disk it is
frames first, as ``ptrack track`` writes arrays: ``<video>.npz`` with ``tracks [T, Q, 2]`` and
``occluded [T, Q]`` (``layout`` "TQ"); :func:`load_prediction` also reads TAP-Vid's own ``[Q, T, ...]`` order,
so predictions of any tracker can be scored.

This module sits below both the runner (which makes predictions) and the oracle (which reads their
candidates), so neither has to import the other for the record.

Each video's file is an output set of its own (:mod:`pointtrack_cli.io.outputs`): ``<video>.npz`` and, written
last, its manifest ``<video>.ptrack.json`` with the evaluation's job key, so a killed ``eval tapvid
--save-predictions`` resumes from the videos it finished (:func:`prediction_set`), and ``eval score`` refuses a
video whose set is incomplete. Files of other tools (no manifest, no staging folder) are read as they are;
:func:`load_prediction` checks every array (dtype, shape, finite or NaN, coordinates within
:data:`~pointtrack_cli.result.TRACK_MARGIN` frame sizes of the 256x256 frame).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PtrackError
from ..io.identity import digest
from ..io.outputs import OutputSet
from ..result import check_array, check_coordinates, check_set_member
from .datasets import EVAL_SIZE, Queries, TapVidVideo

PREDICTION_FORMAT = "ptrack-tapvid-predictions-v1"


@dataclass
class Prediction:
    """A tracker's answer for one video's queries: tracks ``[Q, T, 2]`` float32 (x, y) at 256x256, occluded ``[Q, T]``.

    extras: per-query arrays ``[Q, T, ...]`` some trackers add (the ensemble's ``candidates [Q, T, M, 2]`` and
    ``candidate_visibility [Q, T, M]``), taken from the same tracker calls and query slots as ``tracks``.
    """

    tracks: np.ndarray
    occluded: np.ndarray
    seconds: float = 0.0
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def to_tracker_queries(query_points: np.ndarray) -> np.ndarray:
    """TAP-Vid ``(t, y, x)`` ``[Q, 3]`` -> ptrack ``(t, x, y)`` ``[Q, 3]`` (t rounded to a frame number)."""
    qp = np.asarray(query_points, dtype=np.float64).reshape(-1, 3)
    return np.stack([np.round(qp[:, 0]), qp[:, 2], qp[:, 1]], axis=-1)


def prediction_filename(video_name: str) -> str:
    """``<name>.npz`` with characters outside ``[A-Za-z0-9._-]`` replaced, so any video name is a safe file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_name).lstrip(".") or "video"
    return f"{safe}.npz"


def manifest_name(video_name: str) -> str:
    """``<name>.ptrack.json``: the manifest of one video's prediction set."""
    return prediction_filename(video_name)[: -len(".npz")] + ".ptrack.json"


def prediction_set(out_dir: Path, video_name: str, overwrite: bool = False) -> OutputSet:
    """The output set of one video's predictions in ``out_dir`` (not opened yet: use it as a context manager)."""
    return OutputSet(out_dir, manifest=manifest_name(video_name), names=[prediction_filename(video_name)],
                     overwrite=overwrite)


def save_prediction(
    out_dir: Path, video: TapVidVideo, queries: Queries, pred: Prediction, meta: dict[str, str | int | float],
    *, job: dict | None = None, overwrite: bool = True,
) -> Path:
    """Write ``<out_dir>/<video>.npz`` as one output set (its manifest ``<video>.ptrack.json`` last).

    ``job``: what determines the predictions (the manifest's job; its digest is the key). The file: see
    :func:`write_prediction`. The runner uses :func:`prediction_set` itself, to resume before predicting.
    """
    job = job or {"video": video.name, "meta": meta}
    with prediction_set(Path(out_dir), video.name, overwrite) as outs:
        with outs.path(prediction_filename(video.name)) as p:
            write_prediction(p, video, queries, pred, meta)
        return outs.commit(digest(job), job)[0]


def write_prediction(path: Path, video: TapVidVideo, queries: Queries, pred: Prediction, meta: dict) -> Path:
    """Write one prediction NPZ at ``path``.

    Keys: ``tracks [T, Q, 2]`` float32 (x, y) and ``occluded [T, Q]`` bool, frames first as ``ptrack track``
    writes them, in 256x256 pixels; ``query_points [Q, 3]`` (t, y, x) as TAP-Vid orders them;
    ``queries [Q, 3]`` (t, x, y) as given to the tracker; ``trackgroup [Q]`` the source track of each
    query; ``video_name``, ``query_mode``, ``layout`` (= "TQ"), ``seconds`` (the tracker's time), the run's
    metadata strings, and the tracker's extra per-query arrays as ``extra__<name>`` (``[Q, T, ...]``, e.g. an
    ensemble's candidates, so ``--oracle`` works on a resumed run).
    """
    arrays = {
        "tracks": pred.tracks.transpose(1, 0, 2).astype(np.float32),
        "occluded": pred.occluded.T.astype(bool),
        "query_points": queries.query_points.astype(np.float64),
        "queries": to_tracker_queries(queries.query_points),
        "trackgroup": queries.trackgroup.astype(np.int64),
        "video_name": np.array(video.name),
        "query_mode": np.array(queries.mode),
        "layout": np.array("TQ"),
        "format": np.array(PREDICTION_FORMAT),
        "image_size": np.array([EVAL_SIZE, EVAL_SIZE]),
    }
    arrays["seconds"] = np.float64(pred.seconds)
    for k, v in meta.items():
        arrays[k] = np.array(v)
    for k, v in pred.extras.items():
        arrays[f"extra__{k}"] = np.asarray(v)
    with open(path, "wb") as f:  # inside the set's staging folder: whole or discarded
        np.savez_compressed(f, **arrays)
    return path


def _to_qt(arr: np.ndarray, q: int, t: int, key: str, layout: str | None, path: Path, trailing: tuple) -> np.ndarray:
    """Bring a prediction array to ``[Q, T, ...]`` from frames-first ``[T, Q, ...]`` or TAP-Vid ``[Q, T, ...]``."""
    arr = check_array(path, key, arr, (None,) * arr.ndim, "f" if trailing else "biuf", nan=bool(trailing))
    a = arr[0] if arr.ndim == 2 + len(trailing) + 1 and arr.shape[0] == 1 else arr  # drop a batch axis of 1
    if a.shape[2:] != trailing or a.ndim != 2 + len(trailing):
        raise PtrackError(f"{path}: '{key}' has shape {arr.shape}; expected [T, Q{', 2' if trailing else ''}]")
    # Without a layout key, [Q, T] is recognised by its shape; Q == T is ambiguous and read frames first.
    if layout == "QT" or (layout is None and a.shape[:2] == (q, t) and q != t):
        a = a.swapaxes(0, 1)
    if a.shape[:2] != (t, q):
        raise PtrackError(
            f"{path}: '{key}' has shape {arr.shape} but the video has {t} frames and {q} queries "
            "(were the predictions made with another --mode or dataset?)"
        )
    return a.swapaxes(0, 1)


def load_prediction(path: Path, queries: Queries, num_frames: int) -> Prediction:
    """Read one prediction NPZ and check it against the video's queries.

    Accepts ``tracks`` ``[T, Q, 2]`` (frames first, ``layout`` "TQ" or absent) or ``[Q, T, 2]`` (TAP-Vid
    order, ``layout`` "QT", or inferred when Q != T), with an optional leading batch axis of 1, and
    ``occluded`` (or ``visibility``, its negation) shaped alike. Coordinates are 256x256 pixels (x, y):
    floating point, finite or NaN, within :data:`~pointtrack_cli.result.TRACK_MARGIN` frame sizes of the frame;
    ``occluded`` bool or numbers (non-zero = occluded), never NaN; complex and string arrays are refused.
    Returns tracks ``[Q, T, 2]`` float64 and occluded ``[Q, T]`` bool (plus ``extra__*`` arrays ptrack saved).
    """
    path = Path(path)
    check_set_member(path, manifest_name(path.stem))
    try:
        z = np.load(path, allow_pickle=False)
        data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise PtrackError(f"cannot read predictions {path}: {exc} (expected an .npz file)") from None
    for k in ("layout", "query_mode"):
        if k in data and (data[k].dtype.kind != "U" or data[k].ndim != 0):
            raise PtrackError(f"{path}: array {k!r} must be a string, got {data[k].dtype} {list(data[k].shape)}")
    layout = str(data["layout"]).upper() if "layout" in data else None
    if layout not in (None, "TQ", "QT"):
        raise PtrackError(f"{path}: unknown layout {layout!r} (use 'TQ' for [T, Q, 2] or 'QT' for [Q, T, 2])")
    if "tracks" not in data:
        raise PtrackError(f"{path}: no 'tracks' array (expected keys tracks and occluded)")
    q, t = len(queries), num_frames
    if "query_mode" in data and str(data["query_mode"]) != queries.mode:
        raise PtrackError(f"{path} holds predictions for --mode {data['query_mode']}, not {queries.mode}")
    if "query_points" in data:
        qp = data["query_points"]
        qp = check_array(path, "query_points", qp, (None,) * qp.ndim, "biuf").astype(np.float64).reshape(-1, 3)
        if qp.shape != queries.query_points.shape or not np.allclose(qp, queries.query_points, atol=1e-3):
            raise PtrackError(
                f"{path}: its query_points differ from this dataset's {queries.mode} queries "
                "(another video, --mode or --gt-scale?)"
            )
    tracks = _to_qt(np.asarray(data["tracks"]), q, t, "tracks", layout, path, (2,)).astype(np.float64)
    check_coordinates(path, "tracks", tracks, (EVAL_SIZE, EVAL_SIZE))
    if "occluded" in data:
        occ = _to_qt(np.asarray(data["occluded"]), q, t, "occluded", layout, path, ()).astype(bool)
    elif "visibility" in data:
        occ = ~_to_qt(np.asarray(data["visibility"]), q, t, "visibility", layout, path, ()).astype(bool)
    else:
        raise PtrackError(f"{path}: no 'occluded' (or 'visibility') array")
    extras = {k[len("extra__"):]: v for k, v in data.items() if k.startswith("extra__")}
    seconds = float(data["seconds"]) if "seconds" in data and data["seconds"].dtype.kind == "f" else 0.0
    return Prediction(tracks, occ, seconds, extras)
