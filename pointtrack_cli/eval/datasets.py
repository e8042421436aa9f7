"""TAP-Vid readers: DAVIS, RGB-Stacking, Kinetics shards and RoboTAP splits, as the official code reads them.

Each video becomes a :class:`TapVidVideo`: frames resized to 256x256 with PIL's Lanczos filter (reproduced
exactly in NumPy, see :func:`lanczos_resize`), ground truth ``points [N, T, 2]`` (x, y) scaled from
normalised coordinates to 256-pixel coordinates by a pure x256 scale, and ``occluded [N, T]``
(True = not visible). :func:`sample_queries` then builds the 'first' or 'strided' query set.

The annotation files are Python pickles. They are read only from the path the user gives, with an
unpickler that accepts nothing but dicts, lists and NumPy arrays, so a crafted file cannot run code. Arrays are
built only the way NumPy pickles them (an empty array from ``_reconstruct``, then its bytes from the file), and
no array may be larger than :data:`ARRAY_BUDGET` times the file: a 43-byte pickle cannot allocate a gigabyte.
"""
from __future__ import annotations

import _codecs
import math
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ..errors import PtrackError

# The array reconstructors a pickle names live in numpy._core from NumPy 2 on, in numpy.core before.
try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray
# numpy.dtypes appeared in NumPy 1.25 (pyproject allows 1.24); without it no pickle can name its classes.
try:
    import numpy.dtypes as _np_dtypes
except ImportError:  # pragma: no cover - NumPy 1.24
    _np_dtypes = None

DATASETS: tuple[str, ...] = ("davis", "rgb_stacking", "kinetics", "robotap")
EVAL_SIZE = 256
"""TAP-Vid scores in a 256x256 pixel space: frames are resized to it and GT is scaled by 256."""
QUERY_STRIDE = 5
"""The official readers always use stride 5 for 'strided' queries."""

_OFFICIAL_FILE = {"davis": "tapvid_davis.pkl", "rgb_stacking": "tapvid_rgb_stacking.pkl"}
_KINETICS_GLOB = "*_of_0010.pkl"  # the official glob
_KINETICS_ANY = re.compile(r".*_of_\d{4}\.pkl$")  # shards generated with another --num_shards
_ROBOTAP_GLOB = "robotap_split*.pkl"

# ---------------------------------------------------------------------------------------------
# Safe pickle loading


ARRAY_BUDGET = 2
"""An array in a pickle may hold at most this many times the file's size (+ 64 KiB) in bytes. NumPy's own pickles
carry every array's bytes in the file, so real datasets stay far below; only a crafted shape can exceed it."""


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: only :meth:`_ArrayUnpickler.reconstruct` may use it (calling
    ``numpy.ndarray(shape)`` directly would allocate any size the file names)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray directly (not how NumPy pickles arrays)")


def _numpy_global(module: str, name: str) -> Any:
    """The NumPy globals an array pickle needs, or None.

    Pickles written by NumPy 1.x name ``numpy.core``, those by NumPy 2.x ``numpy._core``; both work
    with either installed version.
    """
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(_np_dtypes, name, None)
    if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles store bytes through it
        return _codecs.encode
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only containers and NumPy arrays: any other global is refused (no code execution), and arrays
    come only through :meth:`reconstruct`, capped at ``max_bytes``."""

    def __init__(self, file, max_bytes: int = 1 << 20) -> None:
        super().__init__(file)
        self.max_bytes = max_bytes

    def reconstruct(self, cls: Any, shape: Any, dtype: Any) -> np.ndarray:
        """NumPy's ``_reconstruct(ndarray, shape, typecode)``, refusing sizes beyond the budget."""
        if cls is not _NdarrayToken:
            raise pickle.UnpicklingError("refusing to reconstruct an array subclass")
        try:
            n = math.prod(int(v) for v in shape) * np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            raise pickle.UnpicklingError("refusing an array with a malformed shape or dtype") from None
        if n > self.max_bytes:
            raise pickle.UnpicklingError(f"refusing an array of {n:,} bytes in a pickle that allows {self.max_bytes:,}")
        return _multiarray._reconstruct(np.ndarray, shape, dtype)

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name == "ndarray":
            return _NdarrayToken
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return self.reconstruct
        obj = _numpy_global(module, name)
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return obj


def load_pickle(path: Path) -> Any:
    """Load a TAP-Vid pickle (dicts/lists of NumPy arrays only); PtrackError if it is anything else."""
    try:
        with open(path, "rb") as f:
            budget = ARRAY_BUDGET * os.fstat(f.fileno()).st_size + (64 << 10)
            return _ArrayUnpickler(f, budget).load()
    except OSError as exc:
        raise PtrackError(f"cannot read {path}: {exc.strerror} (check the path given to --data)") from None
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refusing"):
            raise PtrackError(
                f"{path} is not a TAP-Vid pickle ({exc}); give the official .pkl file (only NumPy arrays are loaded)"
            ) from None
        raise PtrackError(f"{path} is not a readable TAP-Vid pickle ({exc}); re-download or regenerate it") from None
    except Exception as exc:  # truncated files raise EOFError, garbage ValueError/KeyError/...
        raise PtrackError(
            f"{path} is not a readable TAP-Vid pickle ({type(exc).__name__}: {exc}); re-download or regenerate it"
        ) from None


# ---------------------------------------------------------------------------------------------
# Frames: JPEG decoding and PIL-exact Lanczos resize

_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point precision for 8-bit images


def _lanczos(x: float) -> float:
    """Lanczos-3 kernel as PIL defines it (sinc(x) * sinc(x / 3) on [-3, 3))."""

    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


def _resample_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's fixed-point Lanczos taps: source indices ``[out_size, K]`` and integer weights ``[out_size, K]``.

    Follows PIL ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: the kernel is widened by the
    downscale factor, normalised to sum 1 over the taps inside the image, then rounded to integers
    with 22 fractional bits (rounding half away from zero). Unused taps have weight 0.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), dtype=np.int64)
    weight = np.zeros((out_size, ksize), dtype=np.int32)
    inv = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = [_lanczos((x - center + 0.5) * inv) for x in range(xmin, xmax)]
        total = 0.0
        for w in taps:  # summed in order, as PIL does
            total += w
        for i, w in enumerate(taps):
            k = w / total if total != 0.0 else w
            index[xx, i] = xmin + i
            weight[xx, i] = int((-0.5 if k < 0 else 0.5) + k * (1 << _PRECISION_BITS))
    return index, weight


def _resample_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """One PIL pass along ``axis`` of uint8-valued ``x``: integer sum over the taps, then PIL ``clip8``."""
    shape = [1] * x.ndim
    shape[axis] = -1
    acc = np.full(1, 1 << (_PRECISION_BITS - 1), dtype=np.int32)  # int32 as in PIL: sums stay below 2**31
    for k in range(index.shape[1]):
        if weight[:, k].any():
            acc = acc + np.take(x, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    # clip8: shift out the fraction (floor), clamp to 0..255
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def lanczos_resize(frames: np.ndarray, out_hw: tuple[int, int] = (EVAL_SIZE, EVAL_SIZE), chunk: int = 16) -> np.ndarray:
    """Resize ``[T, H, W, 3]`` uint8 RGB frames to ``out_hw`` exactly as PIL ``Image.resize(LANCZOS)`` does.

    PIL resamples horizontally first (rounding to uint8), then vertically, in integer arithmetic;
    this does the same, so the output is bit-identical. (Pillow >= 13 resamples vertically first
    when the height shrinks much more than the width; TAP-Vid's landscape videos are unaffected.)
    """
    t, h, w, _ = frames.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return np.ascontiguousarray(frames, dtype=np.uint8)
    taps_x = _resample_taps(w, ow) if w != ow else None
    taps_y = _resample_taps(h, oh) if h != oh else None
    out = np.empty((t, oh, ow, 3), dtype=np.uint8)
    for s in range(0, t, chunk):
        x = np.asarray(frames[s : s + chunk], dtype=np.uint8)  # [c, H, W, 3]
        if taps_x is not None:
            x = _resample_axis(x.astype(np.int32), 2, *taps_x)
        if taps_y is not None:
            x = _resample_axis(x.astype(np.int32), 1, *taps_y)
        out[s : s + len(x)] = x
    return out


def decode_frames(video: Any, where: str) -> np.ndarray:
    """A record's ``video`` as ``[T, H, W, 3]`` uint8 RGB: raw frames as they are, JPEG bytes decoded."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
            raise PtrackError(f"{where}: 'video' has shape {video.shape}, expected [T, H, W, 3] RGB frames")
        return video
    try:
        n = len(video)
    except TypeError:
        n = 0
    if n and isinstance(video[0], (bytes, np.bytes_)):
        frames = []
        for i in range(n):
            buf = np.frombuffer(bytes(video[i]), dtype=np.uint8)
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
            if img is None:
                raise PtrackError(f"{where}: frame {i} is not a decodable JPEG image (the file may be damaged)")
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in frames}) != 1:
            raise PtrackError(f"{where}: the JPEG frames do not all have the same size")
        return np.stack(frames)
    kind = f"{video.dtype} array of shape {video.shape}" if isinstance(video, np.ndarray) else type(video).__name__
    raise PtrackError(f"{where}: 'video' is a {kind}; expected uint8 [T, H, W, 3] frames or a list of JPEG bytes")


# ---------------------------------------------------------------------------------------------
# Videos and queries


@dataclass
class TapVidVideo:
    """One evaluation video at 256x256.

    frames: ``[T, 256, 256, 3]`` uint8 RGB. points: ``[N, T, 2]`` float64 (x, y) in 256-pixel
    coordinates. occluded: ``[N, T]`` bool, True = not visible. source_hw: stored frame size.
    """

    name: str
    frames: np.ndarray
    points: np.ndarray
    occluded: np.ndarray
    source_hw: tuple[int, int] = (EVAL_SIZE, EVAL_SIZE)

    @property
    def num_frames(self) -> int:
        return int(self.occluded.shape[1])


@dataclass
class Queries:
    """The query set of one video (no batch axis).

    query_points: ``[Q, 3]`` float64 (t, y, x) -- y before x, as in TAP-Vid.
    target_points: ``[Q, T, 2]`` float64 (x, y). occluded: ``[Q, T]`` bool.
    trackgroup: ``[Q]`` int64 index of each query's source track.
    """

    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    trackgroup: np.ndarray
    mode: str = "first"

    def __len__(self) -> int:
        return int(self.query_points.shape[0])


def sample_queries_first(occluded: np.ndarray, points: np.ndarray) -> Queries:
    """'first': one query per track at its first visible frame; tracks never visible are dropped."""
    occ = np.asarray(occluded, dtype=bool)
    keep = np.nonzero((~occ).any(axis=1))[0]
    occ, pts = occ[keep], points[keep]
    t0 = np.argmax(~occ, axis=1)
    rows = np.arange(len(keep))
    xy = pts[rows, t0]
    qp = np.stack([t0.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1).astype(np.float64)
    return Queries(qp.reshape(-1, 3), pts, occ, keep.astype(np.int64), "first")


def sample_queries_strided(occluded: np.ndarray, points: np.ndarray, stride: int = QUERY_STRIDE) -> Queries:
    """'strided': for frames 0, stride, 2*stride, ... one query per track visible there (frame-major order)."""
    occ = np.asarray(occluded, dtype=bool)
    n, t = occ.shape
    groups = [np.nonzero(~occ[:, s])[0] for s in range(0, t, stride)]
    frames = np.concatenate([np.full(len(g), s, np.float64) for g, s in zip(groups, range(0, t, stride))] or [[]])
    idx = np.concatenate(groups or [np.zeros(0, np.int64)]).astype(np.int64)
    xy = points[idx, frames.astype(np.int64)] if len(idx) else np.zeros((0, 2), points.dtype)
    qp = np.stack([frames, xy[:, 1].astype(np.float64), xy[:, 0].astype(np.float64)], axis=-1)
    return Queries(qp.reshape(-1, 3), points[idx], occ[idx], idx, "strided")


def sample_queries(video: TapVidVideo, mode: str) -> Queries:
    """The official query set of ``video`` for ``mode`` ('first' or 'strided')."""
    if mode == "first":
        return sample_queries_first(video.occluded, video.points)
    if mode == "strided":
        return sample_queries_strided(video.occluded, video.points)
    raise PtrackError(f"unknown query mode {mode!r} (use first or strided)")


def _check_record(rec: Any, where: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """Validate one per-video record; returns (video, points [N, T, 2], occluded [N, T] bool)."""
    if not isinstance(rec, dict):
        raise PtrackError(f"{where}: expected a dict with 'video', 'points', 'occluded', got {type(rec).__name__}")
    missing = [k for k in ("video", "points", "occluded") if k not in rec]
    if missing:
        raise PtrackError(f"{where}: missing key(s) {', '.join(missing)} (not a TAP-Vid record; check --dataset/--data)")
    points, occluded = rec["points"], rec["occluded"]
    if not isinstance(points, np.ndarray) or points.ndim != 3 or points.shape[-1] != 2 or points.dtype.kind != "f":
        desc = f"{points.dtype} {points.shape}" if isinstance(points, np.ndarray) else type(points).__name__
        raise PtrackError(f"{where}: 'points' is {desc}, expected float [N, T, 2] (x, y) normalised")
    if not isinstance(occluded, np.ndarray) or occluded.shape != points.shape[:2] or occluded.dtype.kind not in "bui":
        desc = f"{occluded.dtype} {occluded.shape}" if isinstance(occluded, np.ndarray) else type(occluded).__name__
        raise PtrackError(f"{where}: 'occluded' is {desc}, expected bool {list(points.shape[:2])} like 'points'")
    occ = occluded.astype(bool)
    vis = points[~occ]
    if vis.size and not (np.isfinite(vis).all() and np.abs(vis).max() <= 4.0):
        raise PtrackError(
            f"{where}: visible 'points' are not normalised coordinates in [0, 1] (max |value| "
            f"{np.nanmax(np.abs(vis)):g}); the file is not in the TAP-Vid format"
        )
    return rec["video"], points, occ


def scale_points(points: np.ndarray, gt_scale: int) -> np.ndarray:
    """Normalised (x, y) -> 256-pixel coordinates, float64.

    256 (official, tapnet): a pure x256 scale (0 -> 0, 1 -> 256), exact in float64.
    255 (CoTracker3's reader): x255 in the file's own dtype (float32 for DAVIS), as it scales in place.
    """
    if gt_scale == EVAL_SIZE:
        return points.astype(np.float64) * float(EVAL_SIZE)
    if gt_scale == EVAL_SIZE - 1:
        return np.multiply(points, float(gt_scale)).astype(points.dtype).astype(np.float64)
    raise PtrackError(f"--gt-scale must be 256 (official) or 255 (CoTracker3 reader), got {gt_scale}")


def make_video(name: str, rec: Any, where: str, gt_scale: int = EVAL_SIZE, load_frames: bool = True) -> TapVidVideo:
    """Decode, resize and scale one record into a :class:`TapVidVideo`.

    ``load_frames=False`` skips decoding and resizing (for scoring saved predictions): ``frames`` is then
    an empty ``[T, 0, 0, 3]`` array and ``source_hw`` is (0, 0).
    """
    video, points, occ = _check_record(rec, where)
    if not load_frames:
        empty = np.zeros((points.shape[1], 0, 0, 3), np.uint8)
        return TapVidVideo(name, empty, scale_points(points, gt_scale), occ, (0, 0))
    frames = decode_frames(video, where)
    if frames.shape[0] != points.shape[1]:
        raise PtrackError(
            f"{where}: the video has {frames.shape[0]} frames but 'points' cover {points.shape[1]} "
            "(the record is inconsistent; regenerate the file)"
        )
    src_hw = (int(frames.shape[1]), int(frames.shape[2]))
    frames = lanczos_resize(frames)
    return TapVidVideo(name, frames, scale_points(points, gt_scale), occ, src_hw)


# ---------------------------------------------------------------------------------------------
# Datasets


def _looks_like(path: Path) -> str | None:
    """Which dataset a file name says it belongs to, from the official names (None if unclear)."""
    name = path.name.lower()
    if "davis" in name:
        return "davis"
    if "stacking" in name:
        return "rgb_stacking"
    if "robotap" in name:
        return "robotap"
    if _KINETICS_ANY.match(name) or "kinetics" in name:
        return "kinetics"
    return None


def _wrong_dataset(path: Path, dataset: str) -> None:
    other = _looks_like(path)
    if other is not None and other != dataset:
        raise PtrackError(
            f"{path} looks like a TAP-Vid-{other} file, not {dataset} (use --dataset {other}, or the right --data)"
        )


def resolve_files(dataset: str, path: str | Path) -> list[Path]:
    """The annotation files for ``dataset`` at ``path`` (a file, or a folder holding the official names)."""
    if dataset not in DATASETS:
        raise PtrackError(f"unknown dataset {dataset!r} (use one of: {', '.join(DATASETS)})")
    p = Path(path).expanduser()
    if not p.exists():
        raise PtrackError(f"--data {p} does not exist (give the TAP-Vid .pkl file or folder)")
    if p.is_file():
        _wrong_dataset(p, dataset)
        return [p]
    if dataset in _OFFICIAL_FILE:
        official = _OFFICIAL_FILE[dataset]
        for cand in (p / official, p / f"tapvid_{dataset}" / official):
            if cand.is_file():
                return [cand]
        raise PtrackError(f"{p} is a folder without {official} (give the path of {official})")
    if dataset == "kinetics":
        files = sorted(p.glob(_KINETICS_GLOB)) or sorted(f for f in p.glob("*.pkl") if _KINETICS_ANY.match(f.name))
        if not files:
            hint = " (it holds robotap_split*.pkl: use --dataset robotap)" if any(p.glob(_ROBOTAP_GLOB)) else ""
            raise PtrackError(
                f"no Kinetics shards ({_KINETICS_GLOB}) in {p}{hint}; build them with tapnet's generate_tapvid.py"
            )
        return files
    files = sorted(p.glob(_ROBOTAP_GLOB))
    if not files:
        hint = " (it holds Kinetics shards: use --dataset kinetics)" if any(p.glob("*_of_*.pkl")) else ""
        raise PtrackError(f"no RoboTAP split files ({_ROBOTAP_GLOB}) in {p}{hint}")
    return files


def _top_level_records(obj: Any, dataset: str, path: Path, start: int) -> list[tuple[str, Any]]:
    """``(name, record)`` pairs of one loaded file; list records are named by their running index."""
    if isinstance(obj, dict):
        if "video" in obj and "points" in obj:
            raise PtrackError(f"{path} holds a single record, not a dataset (expected a dict or list of videos)")
        if dataset == "rgb_stacking":
            raise PtrackError(
                f"{path} is a dict of named videos (the DAVIS/RoboTAP layout); TAP-Vid-RGB-Stacking is a list "
                "(use --dataset davis or robotap)"
            )
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        if dataset in ("davis", "robotap"):
            raise PtrackError(
                f"{path} is a list of videos (the RGB-Stacking/Kinetics layout); TAP-Vid-{dataset} is a dict of "
                "named videos (use --dataset rgb_stacking or kinetics)"
            )
        return [(str(start + i), v) for i, v in enumerate(obj)]
    raise PtrackError(f"{path} holds a {type(obj).__name__}, not a TAP-Vid dataset (a dict or list of videos)")


@dataclass
class TapVidDataset:
    """A TAP-Vid dataset on disk, read lazily file by file (Kinetics shards can be large).

    Iterating yields :class:`TapVidVideo` objects in reader order; frames are decoded and resized
    only when a video is reached, so ``limit`` skips the work for the rest.
    """

    dataset: str
    path: Path
    gt_scale: int = EVAL_SIZE
    files: list[Path] = field(default_factory=list)
    estimated_total: int | None = None
    """Number of videos: exact once every file is loaded, an estimate while shards are still unread."""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.files = resolve_files(self.dataset, self.path)
        if self.gt_scale not in (EVAL_SIZE, EVAL_SIZE - 1):
            raise PtrackError(f"--gt-scale must be 256 (official) or 255 (CoTracker3 reader), got {self.gt_scale}")

    def records(self) -> Iterator[tuple[str, Any, str]]:
        """``(name, raw record, where)`` in reader order; ``where`` names the file and video for errors."""
        seen = 0
        names: set[str] = set()
        for i, f in enumerate(self.files):
            pairs = _top_level_records(load_pickle(f), self.dataset, f, seen)
            remaining = len(self.files) - i - 1
            self.estimated_total = seen + len(pairs) + remaining * len(pairs)
            for name, rec in pairs:
                if name in names:  # RoboTAP splits are merged; keep both copies under distinct names
                    name = f"{name}@{f.stem}"
                names.add(name)
                seen += 1
                yield name, rec, f"{f.name}[{name!r}]"
        self.estimated_total = seen
        if seen == 0:
            raise PtrackError(f"{self.path} holds no videos (check --data)")

    def videos(self, load_frames: bool = True) -> Iterator[TapVidVideo]:
        """The videos in reader order; ``load_frames=False`` gives GT only (see :func:`make_video`)."""
        for name, rec, where in self.records():
            yield make_video(name, rec, where, self.gt_scale, load_frames)

    def __iter__(self) -> Iterator[TapVidVideo]:
        return self.videos()


def open_dataset(dataset: str, path: str | Path, gt_scale: int = EVAL_SIZE) -> TapVidDataset:
    """Resolve and check the files of ``dataset`` at ``path`` (nothing is unpickled yet)."""
    return TapVidDataset(dataset, Path(path), gt_scale)
