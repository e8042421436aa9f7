"""RealTracker: the CoTracker3 architecture (v2=False) in plain PyTorch, faithful to the official code.

One class, :class:`RealTracker`, covers both released variants (spec ``shared/specs/realtracker.md``):

* offline (``online=False``, time embedding of 60 frames): all frames of the clip are refined jointly
  in one window (spec sec. 10);
* online (``online=True``, window 16, step 8): sliding windows over a whole video (sec. 11a,
  :meth:`RealTracker.forward`) or true streaming with explicit state (sec. 11b,
  :meth:`RealTracker.init_streaming` / :meth:`RealTracker.step`); the window schedules live in
  :mod:`.realtracker_windows`, the pyramid storage helpers in :mod:`.realtracker_pyramid`, the transformer
  and correlation blocks in :mod:`.realtracker_blocks`.

Shapes: video ``[B, T, 3, H, W]`` float RGB in 0..255 (H, W multiples of 4); queries ``[B, N, 3]``
rows ``(t, x, y)`` in pixels of the video the model sees; outputs coords ``[B, T, N, 2]`` pixels (x, y),
vis / conf ``[B, T, N]`` probabilities. Internally coordinates are in *feature units* (pixels / 4).
Feature pyramids (:meth:`RealTracker.encode`) are ``[B, T, 128, h, w]`` tensors stored channels-last
(the memory of ``[B, T, h, w, 128]``): the correlation gathers whole 128-channel vectors
(:mod:`.realtracker_blocks`). Any layout is accepted; others are converted once per call.

The state-dict keys are the official ones (``fnet.*``, ``updateformer.*`` incl. the misspelt
``updateformer.virual_tracks``, ``corr_mlp.*`` and the ``time_emb`` buffer), so
``model.load_state_dict(official_sd)`` works with ``strict=True``.

Memory: the correlation (4 levels x 7x7 samples x 128 channels per point and frame) and the
transformer are evaluated in chunks of (point, frame) pairs / tokens, so a 10,000-point grid at
384x512 does not materialise multi-GB intermediates; chunking does not change the result.
Training memory: with ``checkpointing`` (activation checkpointing) the backward pass recomputes each
refinement iteration from its inputs, and within it each feature-network chunk, correlation chunk and transformer
block from its saved input, instead of keeping their activations (same values, same gradients; the transformer
runs up to three times per iteration).
Precision: works in float32 and float64 (``model.double()``); under ``torch.autocast`` the bilinear
sampling, correlation dot products, feature normalisation and coordinate updates stay in float32.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import PtrackError
from ..weights.state_dict import check_state_dict
from .cnn import BasicEncoder
from .realtracker_blocks import (
    INPUT_DIM,
    PATCH,
    Mlp,
    UpdateFormer,
    balanced,
    local_correlation,
    posenc,
    sample_patches,
)
from .realtracker_pyramid import STRIDE, nchw, nhwc, no_autocast, pad_time, sample_border
from .realtracker_windows import StreamingState, TrainData, forward_sliding, step_pyramid

CORR_LEVELS = 4
LATENT_DIM = 128
OFFLINE_WINDOW = 60
ONLINE_WINDOW = 16


# --------------------------------------------------------------------------------------------------
# State and outputs


# --------------------------------------------------------------------------------------------------
# The model


class RealTracker(nn.Module):
    """CoTracker3 (offline: window 60, online: window 16). See the module docstring for shapes."""

    def __init__(
        self,
        online: bool = False,
        model_resolution: tuple[int, int] = (384, 512),
        window_len: int | None = None,
    ) -> None:
        super().__init__()
        self.online = online
        self.window_len = window_len or (ONLINE_WINDOW if online else OFFLINE_WINDOW)
        # (h, w): only normalises displacements (sec. 8); the official predictor resizes to it.
        self.model_resolution = tuple(model_resolution)
        self.register_buffer("time_emb", _sincos_time_embed(self.window_len))
        self.fnet = BasicEncoder(input_dim=3, output_dim=LATENT_DIM)
        self.updateformer = UpdateFormer()
        self.corr_mlp = Mlp(PATCH**4, 384, 256, approximate="none")
        # Memory knobs (results do not depend on them).
        self.fnet_chunk = 8  # frames per feature-network call
        self.corr_chunk = 4096  # (point, frame) pairs per correlation/token chunk
        self._record: dict | None = None  # debugging: set to {} to collect intermediates

    @property
    def checkpointing(self) -> bool:
        """Activation checkpointing while gradients are enabled (training memory; see the module docstring)."""
        return self.updateformer.checkpointing

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        self.updateformer.checkpointing = bool(on)

    def _run(self, fn, *args):
        """``fn(*args)``, recomputed in the backward pass instead of stored when checkpointing."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # ---- features -------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Video ``[B, T, 3, H, W]`` (0..255) -> pyramid of 4 L2-normalised maps ``[B, T, 128, H/4/2^l, W/4/2^l]``.

        Float32 (float64 if the video is float64), also under autocast. Each frame is independent. The maps
        are stored channels-last (see the module docstring).
        """
        b, t, _, h, w = video.shape
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"frame size {h}x{w} must be a multiple of {STRIDE}")
        dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
        frames = video.reshape(b * t, 3, h, w)
        levels: list[torch.Tensor] | None = None
        for i in range(0, b * t, self.fnet_chunk):
            x = frames[i : i + self.fnet_chunk]
            raw = self._run(self._features, x, dtype)
            if i == 0 and self._record is not None:
                self._record["fnet_raw"] = raw.detach().clone()
            pyr = self._pyramid(raw.to(dtype))
            if levels is None:
                levels = [p.new_empty((b * t,) + tuple(p.shape[1:])) for p in pyr]
            for lvl, p in zip(levels, pyr):
                lvl[i : i + p.shape[0]] = p
        assert levels is not None
        return [nchw(lvl.view(b, t, *lvl.shape[1:])) for lvl in levels]

    def _features(self, frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """fnet on frames ``[M, 3, H, W]`` (0..255): ``[M, 128, H/4, W/4]``, not normalised."""
        return self.fnet(2 * (frames.to(dtype) / 255.0) - 1.0)

    @staticmethod
    def _pyramid(raw: torch.Tensor) -> list[torch.Tensor]:
        """Raw fnet output ``[M, 128, h, w]`` -> L2-normalised per pixel, then 3x 2x2 average pooling.

        Returns channels-last ``[M, h_l, w_l, 128]`` levels.
        """
        with no_autocast(raw.device):
            f = raw.permute(0, 2, 3, 1)
            f = f / torch.sqrt(torch.clamp(torch.sum(f * f, dim=-1, keepdim=True), min=1e-12))
            out = [f.contiguous()]
            for _ in range(CORR_LEVELS - 1):
                # avg_pool2d keeps the channels-last storage of its [M, C, h, w] view
                out.append(F.avg_pool2d(out[-1].permute(0, 3, 1, 2), 2, stride=2).permute(0, 2, 3, 1).contiguous())
        return out

    pad_time = staticmethod(pad_time)

    def support_features(self, pyramid: list[torch.Tensor], qt: torch.Tensor, qxy: torch.Tensor) -> list[torch.Tensor]:
        """7x7 query patches per level ``[B, N, 7, 7, 128]`` (patch axes [x offset][y offset], sec. 6).

        qt ``[B, N]`` int64 frame indices into ``pyramid`` (clamped to its range, like the border-clamped
        time axis of the official 5-D sampling); qxy ``[B, N, 2]`` feature units.
        """
        t_len = pyramid[0].shape[1]
        qt = qt.clamp(0, t_len - 1)
        out = []
        with no_autocast(qxy.device):
            for lvl, level in enumerate(pyramid):
                maps = nhwc(level)
                xy = (qxy / 2**lvl).to(maps.dtype)
                out.append(torch.stack([sample_patches(maps[bi], qt[bi], xy[bi]) for bi in range(qt.shape[0])]))
        return out

    # ---- one refinement window ------------------------------------------------------------------

    def time_embedding(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``[length, 1110]``: the ``time_emb`` buffer, linearly resampled (align_corners=False) if needed.

        The official code resamples in float32; a float64 model resamples in float64 (as the float64
        reference values do).
        """
        te = self.time_emb
        if te.shape[1] == length:
            return te[0].to(dtype)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        with no_autocast(te.device):
            res = F.interpolate(te.to(work).permute(0, 2, 1), size=length, mode="linear", align_corners=False)
        return res.permute(0, 2, 1)[0].to(dtype)

    def _correlation(self, maps: list[torch.Tensor], support: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Correlation embeddings ``[N', S', 1024]`` for one batch element and one chunk (point-major).

        maps: levels ``[S', h, w, 128]`` (channels-last); support: ``[N', 7, 7, 128]``; coords ``[N', S', 2]``
        feature units.
        """
        embs = []
        for lvl, (fmap, sup) in enumerate(zip(maps, support)):
            with no_autocast(coords.device):
                # corr[n, t, a, b, i, j] = <G[t, n, a, b], F[n, i, j]> (no 1/sqrt(C) scaling)
                corr = local_correlation(fmap, sup, (coords / 2**lvl).to(fmap.dtype))
            embs.append(self.corr_mlp(corr))
        return torch.cat(embs, dim=-1)

    def _tokens(
        self,
        maps: list[torch.Tensor],
        support: list[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        time_emb: torch.Tensor,
    ) -> torch.Tensor:
        """Transformer tokens ``[B, N, S, 384]`` = input_transform(x), x built chunk by chunk (sec. 7-8).

        maps: levels ``[B, S, h, w, 128]`` (channels-last, contiguous); coords ``[B, S, N, 2]``; vis / conf
        ``[B, S, N]``. Everything is computed point-major (``[N', S', ...]``), the transformer's order.
        """
        b, s, n, _ = coords.shape
        w_res = torch.tensor(
            [self.model_resolution[1] / STRIDE, self.model_resolution[0] / STRIDE], dtype=coords.dtype, device=coords.device
        )
        cn = coords.transpose(1, 2)  # [B, N, S, 2]
        zero = torch.zeros_like(cn[:, :, :1])
        rel = torch.cat(
            [
                torch.cat([cn[:, :, :-1] - cn[:, :, 1:], zero], dim=2) / w_res,  # forward displacement
                torch.cat([zero, cn[:, :, 1:] - cn[:, :, :-1]], dim=2) / w_res,  # backward displacement
            ],
            dim=-1,
        )  # [B, N, S, 4]
        vis_n, conf_n = vis.transpose(1, 2), conf.transpose(1, 2)
        tc = balanced(s, max(1, min(s, self.corr_chunk)))
        nc = balanced(n, max(1, min(n, self.corr_chunk // tc)))
        # Record the first call's inputs when debugging (intermediates fixture).
        rec = self._record if self._record is not None and "transformer_input_it1" not in self._record else None
        tokens: torch.Tensor | None = None
        for bi in range(b):
            for n0 in range(0, n, nc):
                n1 = min(n, n0 + nc)
                sup = [f[bi, n0:n1] for f in support]
                for t0 in range(0, s, tc):
                    t1 = min(s, t0 + tc)
                    args = (
                        [m[bi, t0:t1] for m in maps], sup, cn[bi, n0:n1, t0:t1], vis_n[bi, n0:n1, t0:t1],
                        conf_n[bi, n0:n1, t0:t1], rel[bi, n0:n1, t0:t1], time_emb[t0:t1],
                    )
                    if rec is None:
                        tok = self._run(self._chunk_tokens, *args)  # [N', S', 384]
                    else:
                        x, corr = self._chunk_input(*args)
                        rec.setdefault("_corr", corr.new_zeros((b, s, n, corr.shape[-1])))[bi, t0:t1, n0:n1] = (
                            corr.detach().transpose(0, 1)
                        )
                        rec.setdefault("_x", x.new_zeros((b, s, n, x.shape[-1])))[bi, t0:t1, n0:n1] = x.detach().transpose(0, 1)
                        tok = self.updateformer.input_transform(x)
                    if tokens is None:
                        tokens = tok.new_empty((b, n, s, tok.shape[-1]))
                    tokens[bi, n0:n1, t0:t1] = tok
        if rec is not None:
            rec["corr_emb_it1"] = rec.pop("_corr")
            rec["transformer_input_it1"] = rec.pop("_x")
        assert tokens is not None
        return tokens

    def _chunk_input(
        self,
        maps: list[torch.Tensor],
        support: list[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        rel: torch.Tensor,
        time_emb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer input ``x [N', S', 1110]`` of one chunk and its correlation embeddings ``[N', S', 1024]``.

        maps ``[S', h, w, 128]`` per level; support ``[N', 7, 7, 128]``; coords ``[N', S', 2]``; vis, conf
        ``[N', S']``; rel ``[N', S', 4]`` displacements; time_emb ``[S', 1110]``.
        """
        corr = self._correlation(maps, support, coords)
        # Concatenate at the wider dtype (float32 under autocast), as torch.cat promotes.
        xdt = torch.promote_types(corr.dtype, coords.dtype)
        x = torch.cat([vis[..., None].to(xdt), conf[..., None].to(xdt), corr.to(xdt), posenc(rel).to(xdt)], dim=-1)
        return x + time_emb[None].to(xdt), corr

    def _chunk_tokens(self, *args) -> torch.Tensor:
        """``input_transform`` of :meth:`_chunk_input` (one checkpointed unit in training)."""
        return self.updateformer.input_transform(self._chunk_input(*args)[0])

    def refine(
        self,
        pyramid: list[torch.Tensor],
        support: list[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        iters: int,
        keep_all: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Iterative refinement of one window (sec. 10).

        pyramid: levels ``[B, S, 128, h, w]``; support: ``[B, N, 7, 7, 128]`` per level; coords ``[B, S, N, 2]``
        feature units; vis / conf ``[B, S, N]`` logits. Returns per-iteration lists (only the last entry
        unless ``keep_all``) of coords (feature units), vis logits, conf logits.
        """
        s = coords.shape[1]
        time_emb = self.time_embedding(s, coords.dtype)
        if self._record is not None:
            self._record.setdefault("time_emb_used", time_emb.detach().clone())
        maps = [nhwc(p) for p in pyramid]  # once per window: every chunk of every iteration gathers from these
        out_c, out_v, out_f = [], [], []

        def iteration(coords: torch.Tensor, vis: torch.Tensor, conf: torch.Tensor):
            tokens = self._tokens(maps, support, coords, vis, conf, time_emb)
            delta = self.updateformer.forward_tokens(tokens).transpose(1, 2)  # [B, S, N, 4]
            if self._record is not None:
                self._record.setdefault("delta", []).append(delta.detach().clone())
            delta = delta.to(coords.dtype)  # accumulate in float32 under autocast
            return coords + delta[..., :2], vis + delta[..., 2], conf + delta[..., 3]

        for _ in range(iters):
            coords = coords.detach()  # official: no gradient through the coordinate input of an iteration
            # Checkpointed as a whole too (nested around the per-block checkpoints): the backward pass then keeps
            # only each iteration's inputs instead of every block's input for every iteration and window.
            coords, vis, conf = self._run(iteration, coords, vis, conf) if self._record is None else iteration(
                coords, vis, conf)
            if not keep_all:
                out_c, out_v, out_f = [], [], []
            out_c.append(coords)
            out_v.append(vis)
            out_f.append(conf)
        if iters == 0:
            out_c, out_v, out_f = [coords], [vis], [conf]
        return out_c, out_v, out_f

    # ---- whole-video forward (offline, or online with sliding windows) --------------------------

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor, iters: int = 4, is_train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TrainData | None]:
        """Track ``queries [B, N, 3]`` through ``video [B, T, 3, H, W]`` (0..255).

        Returns coords ``[B, T, N, 2]`` pixels, vis ``[B, T, N]``, conf ``[B, T, N]``, and
        :class:`TrainData` when ``is_train`` (else None). The online model slides windows of 16 (sec. 11a).
        """
        t = video.shape[1]
        pyramid = self.encode(video)
        return self.forward_pyramid(pyramid, queries, iters=iters, is_train=is_train, num_frames=t)

    def forward_pyramid(
        self,
        pyramid: list[torch.Tensor],
        queries: torch.Tensor,
        iters: int = 4,
        is_train: bool = False,
        num_frames: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TrainData | None]:
        """:meth:`forward` on a pyramid from :meth:`encode` (lets callers reuse features across point batches)."""
        t = pyramid[0].shape[1] if num_frames is None else num_frames
        dtype = pyramid[0].dtype
        queries = queries.to(dtype)
        qt = queries[..., 0].long()  # truncation toward zero, as the official int64 cast
        qxy = queries[..., 1:3] / STRIDE
        if self.online:
            return forward_sliding(self, pyramid, qt, qxy, t, iters, is_train)
        b, n = qt.shape
        support = self.support_features(pyramid, qt, qxy)
        coords = qxy[:, None].expand(b, t, n, 2).contiguous()
        zeros = coords.new_zeros((b, t, n))
        cs, vs, fs = self.refine(pyramid, support, coords, zeros, zeros, iters, keep_all=is_train)
        train = None
        if is_train:
            train = TrainData(
                coords=[[c * STRIDE for c in cs]],
                vis=[[torch.sigmoid(v) for v in vs]],
                conf=[[torch.sigmoid(f) for f in fs]],
                valid=torch.ones_like(vs[-1]),
                starts=[0],
            )
        return cs[-1] * STRIDE, torch.sigmoid(vs[-1]), torch.sigmoid(fs[-1]), train

    # ---- streaming (online model, sec. 11b) -------------------------------------------------------

    def init_streaming(self) -> StreamingState:
        """A fresh streaming state (the official ``init_video_online_processing``)."""
        return StreamingState()

    def step(
        self, state: StreamingState, chunk: torch.Tensor, queries: torch.Tensor, iters: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Process frames ``state.online_ind .. + T_c - 1`` given as ``chunk [B, T_c, 3, H, W]`` (T_c <= 16).

        ``queries [B, N, 3]`` use absolute frame indices (the full query list every call). Returns coords
        ``[B, T_c, N, 2]`` pixels, vis, conf ``[B, T_c, N]`` for the chunk's frames (they overwrite the
        overlapping 8 frames of the previous call's result, as the official accumulator does).
        """
        pyramid = self.encode(chunk)
        return self.step_pyramid(state, pyramid, queries, iters)

    def step_pyramid(
        self, state: StreamingState, pyramid: list[torch.Tensor], queries: torch.Tensor, iters: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`step` on the chunk's pyramid (``T_c`` real frames, padded to 16): :func:`.realtracker_windows.step_pyramid`."""
        return step_pyramid(self, state, pyramid, queries, iters)

# --------------------------------------------------------------------------------------------------
# Construction and loading


def _sincos_time_embed(length: int, dim: int = INPUT_DIM) -> torch.Tensor:
    """The official constructor's 1-D sin-cos table ``[1, length, dim]`` (float64 maths, stored float32).

    Always computed on the CPU: under ``torch.device("meta")`` (:func:`load_realtracker`) the meta kernels of
    sin/cos cost seconds of Python start-up, and the loader replaces the buffer anyway.
    """
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64, device="cpu") / half)
    ang = torch.arange(length, dtype=torch.float64, device="cpu")[:, None] * omega[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)[None].float()


def expected_shapes(online: bool) -> dict[str, tuple[int, ...]]:
    """Official state-dict key -> shape for the online (time_emb 16) or offline (60) model."""
    with torch.device("meta"):
        model = RealTracker(online=online)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_realtracker(
    sd: Mapping[str, torch.Tensor],
    online: bool,
    source: str,
    model_resolution: tuple[int, int] = (384, 512),
) -> RealTracker:
    """Build a :class:`RealTracker` from an official state dict (``scaled_offline.pth`` / ``scaled_online.pth``).

    The ``time_emb`` length tells the variants apart (16 online, 60 offline); a mismatch or any other
    layout problem raises :class:`PtrackError`. Returns the float32 model in eval mode on the CPU.
    """
    want = "online" if online else "offline"
    te = sd.get("time_emb")
    if isinstance(te, torch.Tensor) and te.dim() == 3:
        kinds = {ONLINE_WINDOW: "online", OFFLINE_WINDOW: "offline"}
        got = kinds.get(int(te.shape[1]))
        if got is not None and got != want:
            raise PtrackError(
                f"{source} is a RealTracker {got} checkpoint (time_emb has {te.shape[1]} frames) but the {want} "
                f"model was requested (use --model realtracker-{got}, or pass the {want} checkpoint)"
            )
    check_state_dict(sd, expected_shapes(online), source, f"RealTracker {want}")
    bad = [k for k, v in sd.items() if not torch.is_floating_point(v)]
    values = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in sd.items() if k not in bad}
    # The finiteness check runs in numpy (one thread, one pass, ~0.1 s for 25M values): torch's multi-threaded
    # isfinite + all over 188 tensors took seconds on a busy machine.
    bad += [k for k, v in values.items() if not np.isfinite(v.numpy()).all()]
    if bad:
        raise PtrackError(
            f"{source} holds non-finite or non-float values in {len(bad)} tensor(s), e.g. {bad[0]} (download it again)"
        )
    # Built on the meta device and then given the checkpoint tensors: skips the random initialisation.
    with torch.device("meta"):
        model = RealTracker(online=online, model_resolution=model_resolution)
    model.load_state_dict(values, strict=True, assign=True)
    return model.eval()


__all__ = [
    "RealTracker",
    "StreamingState",
    "TrainData",
    "expected_shapes",
    "load_realtracker",
    "posenc",
    "sample_border",
]
