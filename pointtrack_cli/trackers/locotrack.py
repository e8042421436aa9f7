"""LocoTrack and Anthro-LocoTrack as a :class:`Tracker`: the Track-On-R wrapper, gorkaydemir/track_on
``ensemble/locotrack/locotrack_predictor.py`` (``LocoTrackPredictor``), around :mod:`..models.locotrack`.

What the official wrapper does, reproduced exactly (``shared/specs/teachers.md``):

* frames as float 0..255 resized to 256x256 with ``F.interpolate(mode="bilinear")`` (align_corners=False),
  then ``/ 255 * 2 - 1``; query x scaled by ``256 / W`` and y by ``256 / H`` (tapnet's corner convention, no
  half-pixel shift) and passed as (t, y, x);
* the base model with 4 PIPs iterations and ``refinement_resolutions=[(256, 256)]`` on the whole clip;
* outputs scaled back by ``W / 256``, ``H / 256``; ``visibility = (1 - sigmoid(occlusion)) *
  (1 - sigmoid(expected_dist)) > 0.5``.

Outputs: ``visibility_prob`` is that product, ``confidence`` is ``1 - sigmoid(expected_dist)``. The network is
bidirectional (its transformer attends to earlier and later frames), so every frame is estimated, before the
query frame too (``backward`` is always True). Points do not interact: results do not depend on which other
points are tracked with a point.

Deviations, none of which changes a number beyond float rounding:

* Frames go through the ResNet in chunks of 8 (the official code: 256) and points through the cost volume
  and refinement in chunks sized from a memory budget (official: 64); the ResNet normalises each frame on its
  own and points never meet, so chunking does not change results. Frames are resized in chunks too.
* ``--resolution HxW`` (or ``locotrack@HxW``) runs the wrapper at another size (multiples of 8), as the official
  wrapper does when its ``interp_shape`` is changed: the network keeps its internal 256x256 frame.
* Precision: always fp32. The official ensemble turns mixed precision off for LocoTrack (fp16 gives NaNs).
* Memory: the network holds features of the whole clip (~7.3 MB per frame at 256x256, plus the decoded
  frames); before tracking, :func:`estimate_bytes` is compared with the memory available and the run is
  refused with the estimate and the way out (fewer frames, ``--max-size``, a lower ``--resolution``).
* Weights: the released files are Lightning checkpoints; :func:`read_weights` reads them with
  ``torch.load(weights_only=True)`` (see there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import PtrackError
from ..models.locotrack import LocoTrack, load_locotrack, strip_prefix
from ..weights.state_dict import read_state_dict
from .base import BuildOptions, FrameSource, ProgressFn, TrackOutput, Tracker
from .teacher import resize_frames, scale_xy

RESOLUTION = (256, 256)
ITERS = 4
VIS_THRESHOLD = 0.5
FRAME_CHUNK = 8  # frames per ResNet call / resize call
WORK_BUDGET = 1 << 30  # bytes of working memory for one chunk of points (cost volume, refinement)
MAX_POINT_CHUNK = 64  # the official query_chunk_size
MEMORY_MARGIN = 0.9  # refuse when the estimate exceeds this share of the available memory

# Classes a released LocoTrack checkpoint needs beyond what weights_only=True already rebuilds. Measured on a
# checkpoint written by the official training setup (lightning 2.3.3 Trainer, LocoTrackModel without
# save_hyperparameters, AdamW + OneCycleLR, ModelCheckpoint; ``tests/fixtures/locotrack/README.md``): its
# loops, callbacks, optimizer and scheduler states are plain dicts, lists, numbers, strings and tensors, so
# nothing needs to be allowed. Any other object in a file is refused (see read_weights).
LIGHTNING_SAFE_GLOBALS: list = []


# --------------------------------------------------------------------------------------------------
# Weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The LocoTrack state dict of a released Lightning checkpoint (``state_dict`` with ``model.`` keys), or of
    a plain state dict / ``.safetensors`` file, without the ``model.`` prefix.

    Reads with ``torch.load(weights_only=True)`` inside ``torch.serialization.safe_globals``
    (:data:`LIGHTNING_SAFE_GLOBALS`); a file holding other Python objects is refused with a one-line error that
    says how to extract the state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise PtrackError(f"weights file not found: {path} (check the path given to --weights)")
    if path.suffix == ".safetensors":
        return strip_prefix(read_state_dict(path))
    try:
        with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects outside the allowed set, or a corrupt / truncated file
        text = str(exc)
        if "Unsupported global" in text or "weights_only" in text.lower():
            what = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "a Python object")
            raise PtrackError(
                f"{path} holds Python objects other than tensors and plain training metadata ({what[:160]}), and "
                "ptrack refuses such files (loading them could run code); use the released checkpoint, or a "
                "state dict saved from it as .safetensors, with --weights"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise PtrackError(f"cannot read weights file {path}: {first[:200]} (the file is truncated or corrupt; "
                          "download it again)") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping):
        raise PtrackError(f"weights file {path} does not hold a state dict (got {type(ckpt).__name__})")
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PtrackError(f"weights file {path} holds no tensors (not a LocoTrack checkpoint)")
    return strip_prefix(tensors)


# --------------------------------------------------------------------------------------------------
# Memory


def feature_bytes_per_frame(resolution: tuple[int, int]) -> int:
    """Bytes of the three float32 feature maps of one frame (64, 128, 256 channels at 1/2, 1/4, 1/8)."""
    h, w = resolution
    return 4 * (h // 2 * (w // 2) * 64 + h // 4 * (w // 4) * 128 + h // 8 * (w // 8) * 256)


def point_frame_bytes(resolution: tuple[int, int], num_frames: int) -> int:
    """Working bytes per (point, frame) of one point chunk: the cost volume (~16 hires-sized float32 maps live at
    once: correlations, their upsampled and stacked copies, softmax, soft-argmax temporaries), the refinement
    neighbourhoods and transformer tokens (~100 KB), and 3 copies of the 6-head attention row."""
    h, w = resolution
    return 16 * 4 * (h // 4) * (w // 4) + 100_000 + 3 * 6 * 4 * num_frames


def point_chunk(resolution: tuple[int, int], num_frames: int) -> int:
    """Points per chunk so that one chunk's working memory stays within :data:`WORK_BUDGET` (1..64)."""
    per_point = point_frame_bytes(resolution, num_frames) * max(1, num_frames)
    return int(max(1, min(MAX_POINT_CHUNK, WORK_BUDGET // per_point)))


def estimate_bytes(num_frames: int, input_hw: tuple[int, int], resolution: tuple[int, int], num_points: int) -> int:
    """Peak memory of one LocoTrack run: decoded frames (uint8), resized frames and features of the whole clip
    (float32), one ResNet chunk (~6 live stem-sized maps per frame) and one chunk of points."""
    t = num_frames
    h, w = resolution
    frames = t * input_hw[0] * input_hw[1] * 3 + t * h * w * 3 * 4
    resnet = FRAME_CHUNK * 6 * 4 * (h // 2) * (w // 2) * 64
    chunk = min(max(num_points, 1), point_chunk(resolution, t))
    work = chunk * t * point_frame_bytes(resolution, t)
    return frames + t * feature_bytes_per_frame(resolution) + resnet + work + (300 << 20)  # + weights, runtime


def available_bytes(device: str) -> int | None:
    """Free memory where the features live: CUDA free memory, else the system's MemAvailable (None if unknown)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(name: str, num_frames: int, input_hw: tuple[int, int], resolution: tuple[int, int], num_points: int,
                 available: int | None) -> int:
    """The estimate in bytes; raises :class:`PtrackError` with the estimate and the way out when it does not fit."""
    need = estimate_bytes(num_frames, input_hw, resolution, num_points)
    if available is not None and need > MEMORY_MARGIN * available:
        per_frame = feature_bytes_per_frame(resolution) + resolution[0] * resolution[1] * 12 + input_hw[0] * input_hw[1] * 3
        fit = max(0, int((MEMORY_MARGIN * available - need + num_frames * per_frame) // per_frame))
        raise PtrackError(
            f"{name} holds the features of the whole clip: {num_frames} frames at {resolution[0]}x{resolution[1]} need "
            f"about {need / 2**30:.1f} GiB but {available / 2**30:.1f} GiB are available; track at most ~{fit} frames "
            "at a time (--start/--end or --stride), shrink the decoded frames (--max-size), or use a lower --resolution"
        )
    return need


# --------------------------------------------------------------------------------------------------
# The Tracker


class LocoTrackTracker(Tracker):
    """The ``LocoTrackPredictor`` wrapper as a :class:`Tracker` (see the module docstring)."""

    streaming = False
    backward = True

    def __init__(self, model: LocoTrack, resolution: tuple[int, int] = RESOLUTION, device: str = "cpu",
                 iters: int | None = None, vis_threshold: float | None = None, max_points: int | None = None) -> None:
        h, w = resolution
        if h % 8 or w % 8 or h < 8 or w < 8:
            raise PtrackError(f"LocoTrack needs a resolution that is a multiple of 8, got {h}x{w} (e.g. --resolution 256x256)")
        self.model = model.to(device).eval()
        self.resolution = (int(h), int(w))
        self.device = device
        self.iters = ITERS if iters is None else int(iters)
        self.vis_threshold = VIS_THRESHOLD if vis_threshold is None else float(vis_threshold)
        self.max_points = max_points
        self.last_memory_estimate: int | None = None

    def settings(self) -> dict:
        return {
            "model_size": self.model.model_size, "resolution": list(self.resolution), "iters": self.iters,
            "vis_threshold": self.vis_threshold, "precision": "fp32",
            "coordinates": "official wrapper arithmetic: x * S_w / W, y * S_h / H, no half-pixel shift",
            "visibility_prob": "(1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist))",
            "confidence": "1 - sigmoid(expected_dist)",
        }

    def _resized(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[T, S_h, S_w, 3]`` in [-1, 1] (the official resize and scaling)."""
        out = torch.empty((len(frames), *self.resolution, 3), dtype=torch.float32, device=self.device)
        for s in range(0, len(frames), FRAME_CHUNK):
            x = resize_frames(frames[s : s + FRAME_CHUNK], self.resolution, self.device)
            out[s : s + FRAME_CHUNK] = ((x / 255.0) * 2 - 1).permute(0, 2, 3, 1)
        return out

    @torch.no_grad()
    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        queries = np.asarray(queries, np.float64).reshape(-1, 3)
        t, h, w = video.num_frames, video.height, video.width
        n = len(queries)
        chunk = self.max_points or point_chunk(self.resolution, t)
        self.last_memory_estimate = check_memory(self.name, t, (h, w), self.resolution, n, available_bytes(self.device))
        frames = video.read_all()
        t = len(frames)
        done = _Progress(progress, 2 * t)
        feats = self.model.features(self._resized(frames), done)
        del frames
        # (t, x, y) input pixels -> (t, y, x) model pixels: x * S_w / W, y * S_h / H
        xy = scale_xy(queries[:, 1:], (h, w), self.resolution)
        q = torch.tensor(np.stack([queries[:, 0], xy[:, 1], xy[:, 0]], axis=1), dtype=torch.float32, device=self.device)
        tracks = np.zeros((t, n, 2), np.float64)
        occ = np.zeros((t, n), np.float64)
        expd = np.zeros((t, n), np.float64)
        for s in range(0, n, chunk):
            out = self.model.track(feats, q[s : s + chunk], self.iters)
            tracks[:, s : s + chunk] = out["tracks"].transpose(0, 1).cpu().numpy()
            occ[:, s : s + chunk] = out["occlusion"].T.cpu().numpy()
            expd[:, s : s + chunk] = out["expected_dist"].T.cpu().numpy()
            done(t * (min(n, s + chunk) - s) // max(n, 1))
        done(2 * t)  # the rest (rounding, no points)
        tracks = scale_xy(tracks, self.resolution, (h, w))
        confidence = 1.0 - _sigmoid(expd)
        prob = (1.0 - _sigmoid(occ)) * confidence
        return TrackOutput(tracks=tracks, visibility=prob > self.vis_threshold, visibility_prob=prob, confidence=confidence)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Progress:
    """Work units (``total`` = 2 T: frames through the ResNet, then frames x point share) -> frames for ``progress``."""

    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn, self.total, self.units, self.reported = fn, total, 0, 0

    def __call__(self, units: int) -> None:
        self.units = min(self.total, self.units + units)
        frames = self.units // 2
        if self.fn is not None and frames > self.reported:
            self.fn(frames - self.reported)
        self.reported = max(self.reported, frames)


def build(entry: dict, state_dict: dict[str, torch.Tensor], info: dict, opts: BuildOptions) -> Tracker:
    """The tracker for registry ``entry`` (``config``: ``model_size``, ``model_resolution``, ``iters``,
    ``initial_resolution``) with the official-layout ``state_dict``."""
    cfg = entry.get("config", {})
    source = info.get("path") or entry["id"]
    model = load_locotrack(state_dict, str(source), model_size=cfg.get("model_size", "base"),
                           num_pips_iter=int(cfg.get("iters", ITERS)),
                           initial_resolution=tuple(cfg.get("initial_resolution", RESOLUTION)), frame_chunk=FRAME_CHUNK)
    resolution = tuple(opts.resolution or cfg.get("model_resolution", RESOLUTION))
    tracker = LocoTrackTracker(model, resolution, opts.device, opts.iters or cfg.get("iters"), opts.vis_threshold)
    tracker.name = entry["id"]
    tracker.weights_info = info
    return tracker
