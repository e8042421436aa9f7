"""TAPNext, BootsTAPNext and TAPNext++ as a streaming :class:`Tracker`: the Track-On-R wrapper, gorkaydemir/track_on
``ensemble/tapnext/tapnext_predictor.py`` (``TAPNextPredictor``), around :mod:`..models.tapnext` (the network of
tapnet's own ``tapnet/tapnext/tapnext_torch.py``, which interpolates the position embedding).

What the official wrapper does, reproduced exactly (``shared/specs/teachers.md``):

* frames as float 0..255 resized to 256x256 with ``F.interpolate(mode="bilinear")`` (align_corners=False), then
  ``/ 255 * 2 - 1``; query x scaled by ``256 / W`` and y by ``256 / H`` (tapnet's corner convention, no
  half-pixel shift) and passed as (t, y, x);
* the network is called on frame 0 with the queries, then frame by frame with its recurrent state (online);
* outputs (y, x) scaled back by ``H / 256``, ``W / 256``; ``visibility = visible_logits > 0``.

Outputs: ``visibility_prob = sigmoid(visible_logits)`` (visible exactly where > 0.5), ``confidence`` =
``tracker_certainty`` of tapnet's utils (the mass of the coordinate distributions within 8 bins of the
prediction). The network is causal: frames before a point's query frame hold the official *unknown-token*
outputs, which are not estimates, so they are NaN / not visible / 0 unless ``backward`` (a second pass over
the time-reversed video, merged with :func:`.teacher.merge_before_query`).

Deviations and extensions (documented choices):

* Streaming: frames are read, resized and fed one at a time (the official wrapper resizes the whole clip
  first); memory does not grow with the video (only the ``[T, N]`` outputs do). With ``backward`` the resized
  frames are spilled as float32 to a temporary file (``S_h * S_w * 12`` bytes per frame, 786 KB at 256x256,
  so the reversed pass sees exactly the same inputs) and read back newest first.
* Points interact (every point token attends to every other token of the frame), so results depend on which
  points are tracked together. The official wrapper tracks all points in one call; ptrack does the same up to
  :func:`default_max_points` points (a memory estimate: 7,168 points at 256x256) and splits larger sets into
  consecutive batches, each a separate run of the network with its own copy of the image tokens and state.
* ``--resolution HxW`` (or ``tapnext@HxW``; ``tapnextpp-512`` is 512x512 by default) resizes the frames to
  ``HxW`` (multiples of the 8-pixel patch; the image position embedding is interpolated bicubically as tapnet
  main does) while queries and tracks stay in the network's 256x256 coordinate frame, as tapnet's TAPNext++
  wrapper does.
* Query frames are checked against the video length (the official wrapper silently treats a query after
  the last frame as never queried).
* Precision: fp32 (the Track-On-R wrapper's). On CUDA ``bf16`` / ``fp16`` run the network under autocast, as
  tapnet's TAPNext++ wrapper does with fp16; the recurrent state is accumulated in fp32 and the certainty is
  computed in fp32 (not measured against fp32 here: no GPU was available).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import PtrackError
from ..models.tapnext import PATCH, TAPNext, convert_jax_checkpoint, load_tapnext, tracker_certainty
from ..weights.state_dict import read_state_dict
from .base import BuildOptions, FrameSource, PassProgress, ProgressFn, TrackOutput, Tracker
from .teacher import check_queries, merge_before_query, resize_frames, reverse_time, scale_xy

RESOLUTION = (256, 256)
MAX_BATCH_TOKENS = 8192  # image + point tokens in one network call (see default_max_points)
WORK_FLOATS_PER_TOKEN_WIDTH = 96  # peak activations + allocator slack per token, in multiples of the width (measured)
MEMORY_MARGIN = 0.9
OUTPUT_BLOCK = 256  # frames per block of the output arrays


# --------------------------------------------------------------------------------------------------
# Weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A TAPNext checkpoint as a state dict in the module layout.

    * ``.npz``: the official JAX checkpoints (``tapnext_ckpt.npz``, ``bootstapnext_ckpt.npz``), converted as
      tapnet's ``restore_model_from_jax_checkpoint`` does (read with ``allow_pickle=False``);
    * ``.pt`` / ``.pth`` / ``.ckpt``: ``torch.load(weights_only=True)`` (as tapnet's TAPNext++ loader), an optional
      ``state_dict`` wrapper and an optional ``tapnext.`` key prefix (``tapnextpp_ckpt.pt``, ``tapnextpp_512.ckpt``);
    * ``.safetensors``: the same layout.
    """
    path = Path(path)
    if path.suffix != ".npz":
        sd = read_state_dict(path)  # safetensors / weights_only, wrappers, Python objects refused in one line
        return {k.removeprefix("tapnext."): v for k, v in sd.items()}
    if not path.is_file():
        raise PtrackError(f"weights file not found: {path} (check the path given to --weights)")
    try:
        with np.load(str(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # truncated or corrupt archive, or pickled (object) arrays
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtrackError(
            f"cannot read weights file {path}: {first[:200]} (the file is truncated, corrupt or not a TAPNext "
            "checkpoint; download it again)"
        ) from None
    return convert_jax_checkpoint(arrays)


# --------------------------------------------------------------------------------------------------
# Memory


def image_tokens(resolution: tuple[int, int]) -> int:
    return (resolution[0] // PATCH) * (resolution[1] // PATCH)


def state_bytes_per_token(model: TAPNext) -> int:
    """Recurrent state kept between frames per token: per layer the RG-LRU state and 3 conv inputs (float32)."""
    lru_width = model.blocks[0].ssm_block.recurrent_block.linear_x.out_features if len(model.blocks) else 0
    return len(model.blocks) * 4 * lru_width * 4


def default_max_points(resolution: tuple[int, int]) -> int:
    """Points per network call: ``MAX_BATCH_TOKENS`` (8,192) tokens minus the image tokens, at least 256.

    Memory per call at TAPNext-B width: the recurrent state, 147 KB per token (12 layers x 4 x 768 float32),
    held for the whole video, plus the peak of one layer's activations; attention runs in memory-efficient
    kernels (linear in the tokens) on CPU and CUDA. Measured on CPU (bear.mp4, 256x256, one thread): peak RSS
    1.74 GiB with 400 points and 2.22 GiB with 1,600, i.e. ~0.4 MiB per extra point (state +
    ``WORK_FLOATS_PER_TOKEN_WIDTH`` x width floats). 8,192 tokens is then ~3.5 GB. 256x256: 7,168 points per
    call; 512x512: 4,096.
    """
    return max(256, MAX_BATCH_TOKENS - image_tokens(resolution))


def split_points(n: int, max_points: int) -> list[slice]:
    """Consecutive point batches of at most ``max_points``."""
    size = max(1, int(max_points))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def estimate_bytes(model: TAPNext, resolution: tuple[int, int], num_points: int, max_points: int, backward: bool) -> int:
    """Peak memory of one streaming pass: weights, every batch's recurrent state, one call's activations (the
    reversed pass of ``backward`` runs after the forward one has released its state)."""
    hw = image_tokens(resolution)
    batches = max(1, len(split_points(num_points, max_points)))
    tokens = batches * hw + num_points
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    work = (hw + min(num_points, max_points)) * WORK_FLOATS_PER_TOKEN_WIDTH * model.width * 4
    return weights + tokens * state_bytes_per_token(model) + work


def available_bytes(device: torch.device) -> int | None:
    """CUDA free memory, else the system's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


# --------------------------------------------------------------------------------------------------
# The Tracker


class _Spill:
    """Resized float32 frames ``[S_h, S_w, 3]`` written to a temporary file, read back newest first."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="ptrack_tapnext_", suffix=".f32")
        self.file = os.fdopen(fd, "wb")
        self.count, self.shape = 0, None

    def write(self, frame: torch.Tensor) -> None:
        arr = frame.detach().to("cpu", torch.float32).numpy()
        self.shape = arr.shape
        self.file.write(np.ascontiguousarray(arr).tobytes())
        self.count += 1

    def reversed_frames(self) -> Iterator[torch.Tensor]:
        self.file.close()
        if self.count == 0:
            return
        mm = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count,) + tuple(self.shape))
        for i in range(self.count - 1, -1, -1):
            yield torch.from_numpy(np.array(mm[i]))
        del mm

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class TAPNextTracker(Tracker):
    """The ``TAPNextPredictor`` wrapper as a streaming :class:`Tracker` (see the module docstring).

    Args:
        model: a :class:`TAPNext` (``load_tapnext``).
        resolution: (h, w) the frames are resized to (multiples of 8; default 256x256).
        backward: also estimate frames before each query frame (reversed pass).
        vis_threshold: threshold on ``sigmoid(visible_logits)``; None = the official ``logits > 0``.
        device, precision: torch device; "fp32" | "bf16" | "fp16" (autocast on CUDA only).
        max_points: points per network call (default :func:`default_max_points`).
    """

    streaming = True

    def __init__(
        self,
        model: TAPNext,
        resolution: tuple[int, int] = RESOLUTION,
        backward: bool = False,
        vis_threshold: float | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        max_points: int | None = None,
    ) -> None:
        h, w = int(resolution[0]), int(resolution[1])
        if h % PATCH or w % PATCH or h < PATCH or w < PATCH:
            raise PtrackError(
                f"TAPNext needs a resolution that is a multiple of its {PATCH}-pixel patch, got {h}x{w} (e.g. --resolution 256x256)"
            )
        if precision not in ("fp32", "bf16", "fp16"):
            raise PtrackError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.resolution = (h, w)
        self.backward = bool(backward)
        self.vis_threshold = None if vis_threshold is None else float(vis_threshold)
        self.precision = precision if self.device.type == "cuda" else "fp32"
        self.max_points = int(max_points) if max_points else default_max_points(self.resolution)
        self.name = "tapnext"
        self.last_memory_estimate: int | None = None

    def settings(self) -> dict:
        return {
            "model": self.name,
            "resolution": list(self.resolution),
            "coordinate_frame": list(self.model.image_size),
            "backward": self.backward,
            "visibility_rule": "visible_logits > 0" if self.vis_threshold is None else f"sigmoid(visible_logits) > {self.vis_threshold}",
            "vis_threshold": 0.5 if self.vis_threshold is None else self.vis_threshold,
            "max_points": self.max_points,
            "precision": self.precision,
            "coordinates": "official wrapper arithmetic: x * 256 / W, y * 256 / H, no half-pixel shift",
            "visibility_prob": "sigmoid(visible_logits)",
            "confidence": "tracker_certainty (coordinate mass within 8 bins of the prediction)",
        }

    # ---- helpers ------------------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def _frame(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> float32 ``[S_h, S_w, 3]`` in [-1, 1] (the official resize and scaling)."""
        x = resize_frames(np.asarray(frame)[None], self.resolution, self.device)
        return ((x / 255.0) * 2 - 1).permute(0, 2, 3, 1)[0]

    def _model_queries(self, queries: np.ndarray, input_hw: tuple[int, int]) -> torch.Tensor:
        """(t, x, y) input pixels -> float32 ``[1, N, 3]`` (t, y, x) in the network's coordinate frame."""
        xy = scale_xy(queries[:, 1:], input_hw, self.model.image_size)
        rows = np.stack([queries[:, 0], xy[:, 1], xy[:, 0]], axis=1)
        return torch.tensor(rows, dtype=torch.float32, device=self.device)[None]

    def check_memory(self, num_points: int) -> int:
        """The memory estimate in bytes; raises :class:`PtrackError` with it and the way out when it does not fit."""
        need = estimate_bytes(self.model, self.resolution, num_points, self.max_points, self.backward)
        loaded = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])
        avail = available_bytes(self.device)
        if avail is not None and need - loaded > MEMORY_MARGIN * avail:
            per_point = state_bytes_per_token(self.model) + WORK_FLOATS_PER_TOKEN_WIDTH * self.model.width * 4
            fit = max(0, int((MEMORY_MARGIN * avail - (need - loaded)) // per_point) + num_points)
            raise PtrackError(
                f"{self.name} keeps a recurrent state per point and image patch: {num_points} points at "
                f"{self.resolution[0]}x{self.resolution[1]} need about {need / 2**30:.1f} GiB but "
                f"{avail / 2**30:.1f} GiB are available; track at most ~{fit} points per run (fewer --grid points)"
            )
        return need

    def _run(self, frames: Iterator[torch.Tensor], batches: list[torch.Tensor], num_points: int,
             on_frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One causal pass over resized frames; returns tracks ``[T, N, 2]`` (x, y in the network frame, float64),
        visible logits and certainty ``[T, N]``. Outputs go into blocks of ``OUTPUT_BLOCK`` frames (the video's
        length may be unknown), joined at the end."""
        model = self.model
        states = [model.init_state(q) for q in batches]
        blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        t = 0
        for frame in frames:
            row = t % OUTPUT_BLOCK
            if row == 0:
                blocks.append((np.zeros((OUTPUT_BLOCK, num_points, 2)), np.zeros((OUTPUT_BLOCK, num_points)),
                               np.zeros((OUTPUT_BLOCK, num_points))))
            xy, logits, cert = blocks[-1]
            tokens = model.embed_frames(frame[None, None]) if states else None
            col = 0
            for i, state in enumerate(states):
                yx, track_logits, vis_logits, states[i] = model.step(tokens, state)
                c = tracker_certainty(yx.float(), track_logits.float())
                k = yx.shape[2]
                xy[row, col : col + k] = yx[0, 0].flip(-1).double().cpu().numpy()
                logits[row, col : col + k] = vis_logits[0, 0, :, 0].double().cpu().numpy()
                cert[row, col : col + k] = c[0, 0, :, 0].double().cpu().numpy()
                col += k
            t += 1
            on_frame(1)
        if not blocks:
            return np.zeros((0, num_points, 2)), np.zeros((0, num_points)), np.zeros((0, num_points))
        return tuple(np.concatenate([b[k] for b in blocks])[:t] for k in range(3))

    # ---- tracking -----------------------------------------------------------------------------

    @torch.inference_mode()
    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        hint = int(getattr(video, "num_frames", 0) or 0)
        queries = check_queries(queries, hint)
        h, w = int(video.height), int(video.width)
        n = len(queries)
        self.last_memory_estimate = self.check_memory(n)
        mq = self._model_queries(queries, (h, w))
        batches = [mq[:, b] for b in split_points(n, self.max_points)]
        prog = PassProgress(progress, 2 if self.backward else 1)
        spill = _Spill() if self.backward else None
        try:

            def forward_frames() -> Iterator[torch.Tensor]:
                for frame in video:
                    x = self._frame(frame)
                    if spill is not None:
                        spill.write(x)
                    yield x

            with self._autocast():
                tracks, logits, cert = self._run(forward_frames(), batches, n, prog)
                t = len(tracks)
                check_queries(queries, t)  # the true length is known only now
                if self.backward and spill is not None and n:
                    rev = self._model_queries(reverse_time(queries, t), (h, w))
                    rev_batches = [rev[:, b] for b in split_points(n, self.max_points)]
                    frames = (f.to(self.device) for f in spill.reversed_frames())
                    bw = self._run(frames, rev_batches, n, prog)
                    tracks, logits, cert = merge_before_query((tracks, logits, cert), bw, queries[:, 0])
                elif self.backward:
                    prog(t)
        finally:
            if spill is not None:
                spill.close()
        tracks = scale_xy(tracks, self.model.image_size, (h, w))
        prob = 0.5 * (1.0 + np.tanh(0.5 * logits))  # sigmoid
        visibility = logits > 0 if self.vis_threshold is None else prob > self.vis_threshold
        cert = np.array(cert, copy=True)
        if not self.backward and n:
            before = np.arange(t)[:, None] < queries[None, :, 0]
            tracks[before] = np.nan
            visibility[before] = False
            prob[before] = 0.0
            cert[before] = 0.0
        return TrackOutput(tracks=tracks, visibility=visibility, visibility_prob=prob, confidence=cert)


def build(entry: dict, state_dict: dict[str, torch.Tensor], info: dict, opts: BuildOptions) -> Tracker:
    """The tracker for registry ``entry`` (``config``: ``width``, ``depth``, ``num_heads``, ``lru_width``,
    ``image_size``, ``model_resolution``) with a state dict in the TAPNext module layout."""
    config = dict(entry.get("config") or {})
    resolution = tuple(opts.resolution or config.get("model_resolution") or RESOLUTION)
    model_kw = {k: config[k] for k in ("width", "depth", "num_heads", "lru_width", "image_size") if k in config}
    h, w = int(resolution[0]), int(resolution[1])
    if h % PATCH or w % PATCH or h < PATCH or w < PATCH:  # before the 780 MB model is built
        raise PtrackError(
            f"TAPNext needs a resolution that is a multiple of its {PATCH}-pixel patch, got {h}x{w} (e.g. --resolution 256x256)"
        )
    net = load_tapnext(state_dict, source=str(info.get("path", entry["id"])), **model_kw)
    tracker = TAPNextTracker(
        net, resolution=(h, w), backward=opts.backward, vis_threshold=opts.vis_threshold,
        device=opts.device, precision=opts.precision,
    )
    tracker.name = entry["id"]
    tracker.weights_info = info
    return tracker


__all__ = [
    "TAPNextTracker",
    "build",
    "default_max_points",
    "estimate_bytes",
    "read_weights",
    "split_points",
]
