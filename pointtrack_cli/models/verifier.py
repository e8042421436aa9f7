"""Track-On-R verifier (Aydemir et al., CVPR 2026): scores candidate tracks from several teachers.

Spec: ``specs/verifier.md`` (official ``gorkaydemir/track_on``, ``verifier/verifier.py:Verifier``).
Parameter names follow the official state dict, so a released checkpoint loads strictly.

Data path (shapes for one video; the official batch size is always 1, so there is no batch axis):

* video ``[T, H, W, 3]`` RGB, values 0..255 (uint8 or float), any size;
* candidates ``[T, N, M, 2]`` (x, y) pixels of that video, **used exactly as given**: the
  verifier maps ``x -> 2x/W - 1`` (pixel ``i`` covering ``[i, i+1)``). ptrack's trackers put
  (0, 0) at the centre of the top-left pixel; like the official ensemble we pass teacher output
  through unchanged (no half-pixel re-centring), so a released checkpoint sees what it saw in
  training/evaluation;
* queries ``[N, 3]`` rows (t, x, y), same pixel frame;
* output ``rank_logits [T, N, M]``: cosine similarity x learned scale, higher = more trustworthy.

Steps: frames -> CoTracker3 ``fnet`` at 384x512 -> 1x1 projection ``F1 [256, 96, 128]`` ->
4-level average-pool pyramid -> 3 deformable-attention layers that describe the query and every
candidate -> 6 layers of (cross-attention over candidates, temporal self-attention, FFN) on a
per-frame "verifier token" -> cosine score against each candidate.

Deformable attention is written with ``grid_sample`` (no mmcv). Points never interact and the
candidate axis has no positional code, so the model is permutation-equivariant over candidates.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..weights.state_dict import check_state_dict
from .cnn import BasicEncoder

INPUT_HW = (384, 512)  # (h, w) every frame is stretched to (no letter-boxing)
STRIDE = 4
DIM = 256
HEADS = 4
LEVELS = 4
POINTS = 4
MODEL_T = 24  # length of the learned time embedding
POS_DIM = 32  # candidate/query type embedding
DISP_BANDS, DISP_MAX_FREQ = 8, 32.0
DESC_DIM = DIM + 4 * DISP_BANDS + 2 + POS_DIM  # 322
LEVEL_HW = tuple((INPUT_HW[0] // STRIDE >> l, INPUT_HW[1] // STRIDE >> l) for l in range(LEVELS))
# = ((96, 128), (48, 64), (24, 32), (12, 16)); tokens flattened row-major, levels concatenated.

SAMPLE_FIRST_MAX_TOKENS = 160  # per frame; above it projecting the whole pyramid first is cheaper
TOKEN_CHUNK = 8192  # deformable-encoder tokens per call (about 0.5 GB of samples in float32)


# ---------------------------------------------------------------------------------------------
# Deformable local encoder
# ---------------------------------------------------------------------------------------------
class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (mmcv ``MultiScaleDeformableAttention`` semantics).

    Returns ``output_proj(attn) + tokens``: mmcv adds the identity itself (the caller adds it
    again, see :class:`DeformLayer`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sampling_offsets = nn.Linear(DIM, HEADS * LEVELS * POINTS * 2)
        self.attention_weights = nn.Linear(DIM, HEADS * LEVELS * POINTS)
        self.value_proj = nn.Linear(DIM, DIM)
        self.output_proj = nn.Linear(DIM, DIM)

    def forward(self, tokens: torch.Tensor, ref: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """tokens ``[B, L, 256]``, ref ``[B, L, 2]`` (x, y) in [0, 1], pyramid from :meth:`Verifier.pyramid`.

        Official order: ``value_proj`` on all 16320 pyramid tokens, split into 4 heads of 64
        channels, bilinear samples (align_corners=False, zero padding) at 4 points per level and
        head, weighted by a softmax over the 16 (level, point) pairs, heads concatenated.
        """
        b, l, _ = tokens.shape
        offsets = self.sampling_offsets(tokens).view(b, l, HEADS, LEVELS, POINTS, 2)
        weights = self.attention_weights(tokens).view(b, l, HEADS, LEVELS * POINTS).softmax(-1)
        weights = weights.view(b, l, HEADS, LEVELS, POINTS)
        # Offsets are in pixels of each level: divide x by the level width, y by its height.
        norm = torch.tensor([[w, h] for h, w in LEVEL_HW], dtype=offsets.dtype, device=offsets.device)
        loc = ref[:, :, None, None, None, :] + offsets / norm[:, None, :]
        grid = 2 * loc - 1  # grid_sample's [-1, 1] (align_corners=False)
        if l <= SAMPLE_FIRST_MAX_TOKENS:
            out = self._sample_then_project(grid, weights, pyramid)
        else:
            out = self._project_then_sample(grid, weights, pyramid)
        return self.output_proj(out.to(tokens.dtype)) + tokens

    def _project_then_sample(self, grid: torch.Tensor, weights: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """The official order. ``value_proj`` is applied to F1 and then pooled: pooling is a mean, so this
        equals projecting every pyramid token (up to rounding) at 3/4 of the cost."""
        b, l = grid.shape[:2]
        hd = DIM // HEADS
        v0 = F.conv2d(pyramid[0][:, :DIM], self.value_proj.weight[:, :, None, None], self.value_proj.bias)
        values = [v0] + [F.avg_pool2d(v0, k) for k in (2, 4, 8)]
        g = grid.permute(0, 2, 1, 3, 4, 5).flatten(0, 1)  # [B*heads, L, levels, points, 2]
        w_ = weights.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*heads, L, levels, points]
        acc = None
        for lvl, v in enumerate(values):
            h, w = v.shape[-2:]
            s = F.grid_sample(v.reshape(b * HEADS, hd, h, w), g[:, :, lvl].to(v.dtype), mode="bilinear",
                              padding_mode="zeros", align_corners=False)  # [B*heads, 64, L, points]
            s = (s * w_[:, None, :, lvl].to(s.dtype)).sum(-1)
            acc = s if acc is None else acc + s
        return acc.view(b, DIM, l).transpose(1, 2)  # heads concatenated head-major

    def _sample_then_project(self, grid: torch.Tensor, weights: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """Sampling and weighting are linear, so sample the *raw* 256 channels and apply each head's rows of
        ``value_proj`` afterwards: the same function (up to rounding), costing per asked token rather than
        per pyramid token. The pyramid's extra all-ones channel measures how much of each bilinear footprint
        lies inside the map (zero padding), which is how much of the bias the sample gets."""
        b, l = grid.shape[:2]
        hd = DIM // HEADS
        g = grid.reshape(b, l * HEADS, LEVELS, POINTS, 2)  # rows ordered (token, head)
        w_ = weights.reshape(b, l * HEADS, LEVELS, POINTS)
        acc = None
        for lvl, level in enumerate(pyramid):
            s = F.grid_sample(level, g[:, :, lvl].to(level.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, 257, L*heads, points]
            s = (s * w_[:, None, :, lvl].to(s.dtype)).sum(-1)
            acc = s if acc is None else acc + s
        acc = acc.view(b, DIM + 1, l, HEADS).permute(0, 2, 3, 1)  # [B, L, heads, 257]
        w_v = self.value_proj.weight.view(HEADS, hd, DIM)
        b_v = self.value_proj.bias.view(HEADS, hd)
        out = torch.einsum("blkc,kdc->blkd", acc[..., :DIM].to(w_v.dtype), w_v) + acc[..., DIM:].to(b_v.dtype) * b_v
        return out.reshape(b, l, DIM)


class DeformLayer(nn.Module):
    """Official ``DMSMHA_Block``: ``h <- LN1(h + MSDA(h))`` where MSDA already includes ``+h``, then FFN."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = MSDeformAttn()
        self.linear1 = nn.Linear(DIM, 4 * DIM)
        self.linear2 = nn.Linear(4 * DIM, DIM)
        self.norm1 = nn.LayerNorm(DIM)
        self.norm2 = nn.LayerNorm(DIM)

    def forward(self, h: torch.Tensor, ref: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        h = self.norm1(h + self.mha(h, ref, pyramid))  # = LN1(2h + attn): the official double residual
        return self.norm2(h + self.linear2(F.relu(self.linear1(h))))


# ---------------------------------------------------------------------------------------------
# Candidate transformer
# ---------------------------------------------------------------------------------------------
class PackedMHA(nn.Module):
    """``nn.MultiheadAttention`` parameters (packed q/k/v rows) with an explicit, dtype-agnostic forward."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * DIM, DIM))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * DIM))
        self.out_proj = nn.Linear(DIM, DIM)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention (checkpoints overwrite it)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q ``[B, Lq, 256]``, k/v ``[B, Lk, 256]``, key_mask ``[B, Lk]`` True = ignore that key."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        b, lq, lk, hd = q.shape[0], q.shape[1], k.shape[1], DIM // HEADS
        qh = F.linear(q, wq, bq).view(b, lq, HEADS, hd).transpose(1, 2)
        kh = F.linear(k, wk, bk).view(b, lk, HEADS, hd).transpose(1, 2)
        vh = F.linear(v, wv, bv).view(b, lk, HEADS, hd).transpose(1, 2)
        scores = (qh / math.sqrt(hd)) @ kh.transpose(-1, -2)  # [B, heads, Lq, Lk]
        if key_mask is not None:
            scores = scores.masked_fill(key_mask[:, None, None, :], float("-inf"))
        attn = scores.softmax(-1).to(vh.dtype) @ vh
        return self.out_proj(attn.transpose(1, 2).reshape(b, lq, DIM))


class VerifierLayer(nn.Module):
    """Official ``Transformer_Decoder_Layer``: candidate cross-attention, temporal attention, FFN."""

    def __init__(self) -> None:
        super().__init__()
        self.mha1 = PackedMHA()
        self.mha2 = PackedMHA()
        self.norm1 = nn.LayerNorm(DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.norm3 = nn.LayerNorm(DIM)
        self.linear1 = nn.Linear(DIM, 4 * DIM)
        self.linear2 = nn.Linear(4 * DIM, DIM)

    def forward(
        self, q: torch.Tensor, f: torch.Tensor, time_emb: torch.Tensor, before_query: torch.Tensor,
        cand_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """q ``[T, n, 256]`` tokens, f ``[T, n, M, 256]`` candidates (fixed), time_emb ``[T, 256]``,
        before_query ``[n, T]`` (True: frame before the point's query frame, hidden as a key),
        cand_mask ``[T, n, M]`` (True: candidate hidden) or None."""
        t, n, m, _ = f.shape
        flat = None if cand_mask is None else cand_mask.reshape(t * n, m)
        a = self.mha1(q.reshape(t * n, 1, DIM), f.reshape(t * n, m, DIM), f.reshape(t * n, m, DIM), flat)
        if flat is not None:  # a (t, n) whose candidates are all hidden gets no update (instead of NaN)
            a = a.masked_fill(flat.all(-1)[:, None, None], 0.0)
        q = self.norm1(q + a.view(t, n, DIM))
        qt = q.transpose(0, 1)  # [n, T, 256]: one temporal sequence per point
        qk = qt + time_emb[None]
        q = self.norm2(q + self.mha2(qk, qk, qt, before_query).transpose(0, 1))
        return self.norm3(q + self.linear2(F.gelu(self.linear1(q), approximate="tanh")))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def disp_embedding(e: torch.Tensor) -> torch.Tensor:
    """Sin/cos displacement code ``[..., 2] -> [..., 34]``: ``[sin x (8), cos x (8), sin y (8), cos y (8), e_x, e_y]``.

    ``e`` is the *scaled* displacement (normalised units x ``displacement_scale``); frequencies
    ``32**(k/7)``, k = 0..7, angles ``pi * f * e``.
    """
    freqs = DISP_MAX_FREQ ** torch.linspace(0.0, 1.0, DISP_BANDS, dtype=e.dtype, device=e.device)
    ang = math.pi * freqs * e[..., None]  # [..., 2, 8]
    x, y = ang[..., 0, :], ang[..., 1, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos(), e], dim=-1)


def interpolate_time_embedding(table: torch.Tensor, t: int) -> torch.Tensor:
    """``[24, 256] -> [t, 256]``: linear, align_corners=False (identity for t = 24)."""
    if t == table.shape[0]:
        return table
    return F.interpolate(table.T[None], size=t, mode="linear", align_corners=False)[0].T


def _as_frames(video: np.ndarray | torch.Tensor) -> torch.Tensor | np.ndarray:
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [T, H, W, 3], got {tuple(video.shape)}")
    return video


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class Verifier(nn.Module):
    """The Track-On-R verifier; see the module docstring for inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.time_emb = nn.Parameter(torch.zeros(1, MODEL_T, DIM))
        self.displacement_scale = nn.Parameter(torch.tensor(16.0))
        self.sim_scale_raw = nn.Parameter(torch.tensor(10.0))
        self.cnn_encoder = BasicEncoder(input_dim=3, output_dim=128)
        self.backbone_projection = nn.Conv2d(128, DIM, 1)
        self.local_encoder = nn.ModuleList(DeformLayer() for _ in range(3))
        self.candidate_emb = nn.Embedding(2, POS_DIM)  # row 0: the query token, row 1: any candidate
        self.local_projection = nn.Sequential(nn.LayerNorm(DESC_DIM), nn.Linear(DESC_DIM, DIM))
        self.layers = nn.ModuleList(VerifierLayer() for _ in range(6))
        self.q_projection = nn.Linear(DIM, DIM, bias=False)
        self.f_projection = nn.Linear(DIM, DIM, bias=False)

    # -- per-frame features -------------------------------------------------------------------
    @property
    def sim_scale(self) -> torch.Tensor:
        """``clamp(softplus(sim_scale_raw) + 1, 1, 20)`` (about 11 at the official init)."""
        return (F.softplus(self.sim_scale_raw) + 1).clamp(1.0, 20.0)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB ``[B, 3, H, W]`` in 0..255 -> ``F1 [B, 256, 96, 128]``.

        Normalise to [-1, 1] *before* the bilinear resize to 384x512 (align_corners=False, no
        antialiasing, aspect ratio not preserved), as the official code does.
        """
        x = frames / 255.0 * 2 - 1
        x = F.interpolate(x, size=INPUT_HW, mode="bilinear", align_corners=False)
        return self.backbone_projection(self.cnn_encoder(x))

    @staticmethod
    def pyramid(f1: torch.Tensor) -> list[torch.Tensor]:
        """``F1 [B, 256, 96, 128]`` -> 4 levels ``[B, 257, h_l, w_l]``: F1 and its 2x2, 4x4, 8x8 mean pools.

        The official code flattens these row-major into 16320 value tokens (levels concatenated);
        we keep them as maps for ``grid_sample``. Channel 256 is all ones (see :class:`MSDeformAttn`).
        """
        f1 = torch.cat([f1, torch.ones_like(f1[:, :1])], dim=1)
        return [f1] + [F.avg_pool2d(f1, k) for k in (2, 4, 8)]

    def local_encode(self, tokens: torch.Tensor, ref: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """3 deformable layers: tokens ``[B, L, 256]`` at ref ``[B, L, 2]`` in [0, 1] over one frame's pyramid each."""
        out = []
        step = max(1, TOKEN_CHUNK // tokens.shape[0])
        for i in range(0, tokens.shape[1], step):  # tokens never interact: chunking only bounds memory
            h, r = tokens[:, i : i + step], ref[:, i : i + step]
            for layer in self.local_encoder:
                h = layer(h, r, pyramid)
            out.append(h)
        return torch.cat(out, dim=1)

    # -- full forward ---------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """All of :meth:`steps` at once: ``rank_logits [T, N, M]`` (and intermediates if asked)."""
        run = self.steps(*args, **kwargs)
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    def steps(
        self,
        video: np.ndarray | torch.Tensor,
        candidates: torch.Tensor,
        queries: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        *,
        features: torch.Tensor | None = None,
        frames_per_pass: int = 4,
        point_chunk: int | None = None,
        return_intermediates: bool = False,
    ) -> Iterator[int]:
        """Score every candidate, as a generator: yields the number of frames just described (T in all) and
        returns ``rank_logits [T, N, M]`` (float, model dtype), so a caller can show progress.

        video: ``[T, H, W, 3]`` RGB 0..255 (numpy or tensor; moved to the model's device and dtype
            ``frames_per_pass`` frames at a time, so a long uint8 video is never copied as floats).
        candidates: ``[T, N, M, 2]`` pixels (x, y) of the video; must be finite.
        queries: ``[N, 3]`` (t, x, y); t truncated to an integer, must lie in [0, T).
        candidate_mask: ``[T, N, M]`` True = candidate absent (ptrack extension, e.g. a teacher with no
            estimate): hidden from the cross-attention, logit -inf. ``None`` = official behaviour.
        features: optional precomputed ``F1 [T, 256, 96, 128]`` (skips the CNN; for tests/benchmarks).
        point_chunk: points per transformer pass (bounds the temporal-attention memory, N*T^2).
        return_intermediates: also return a dict (q_init, q_local, f_local, q_out, time_emb_used, fvis_probe).

        Memory: the candidate tokens take ``T*N*M*256`` values (1 KiB each in float32), plus one
        ``frames_per_pass`` chunk of CNN activations (~0.5 GB fp32 for 4 frames) and up to
        ``2*frames_per_pass`` cached query-frame feature maps (12.6 MB each). All T frames form one
        temporal sequence (no windowing); its attention is computed ``point_chunk`` points at a time.
        """
        video = _as_frames(video)
        p = self.time_emb
        dev, dt = p.device, p.dtype
        T, H, W = int(video.shape[0]), int(video.shape[1]), int(video.shape[2])
        cand = torch.as_tensor(candidates).to(dev, dt)
        qs = torch.as_tensor(queries).to(dev, dt)
        if cand.ndim != 4 or cand.shape[0] != T or cand.shape[-1] != 2:
            raise ValueError(f"candidates must be [T={T}, N, M, 2], got {tuple(cand.shape)}")
        _, N, M, _ = cand.shape
        if qs.shape != (N, 3):
            raise ValueError(f"queries must be [N={N}, 3], got {tuple(qs.shape)}")
        if not torch.isfinite(cand).all():
            raise ValueError("candidate coordinates must be finite (fill or mask missing estimates first)")
        tq = qs[:, 0].long()  # truncation, as the official `.long()`
        if N and (tq.min() < 0 or tq.max() >= T):
            raise ValueError(f"query frames must lie in [0, {T}) for the verifier (got {int(tq.min())}..{int(tq.max())})")
        mask = None if candidate_mask is None else torch.as_tensor(candidate_mask, device=dev).bool()

        def to_unit(xy: torch.Tensor) -> torch.Tensor:  # pixels -> [-1, 1], pixel i covers [i, i+1)
            return torch.stack([2 * xy[..., 0] / W - 1, 2 * xy[..., 1] / H - 1], dim=-1)

        cand_n = to_unit(cand)  # [T, N, M, 2]
        q_n = to_unit(qs[:, 1:])  # [N, 2]

        # CNN features; the F1 of a few query frames is kept from pass 1 for pass 2.
        keep: dict[int, torch.Tensor] = {}

        def feats(ts: list[int]) -> torch.Tensor:
            """F1 of frames ``ts`` -> ``[len(ts), 256, 96, 128]``."""
            if features is not None:
                return features[ts].to(dev, dt)
            todo = [t for t in ts if t not in keep]
            if todo:
                chunk = video[todo] if torch.is_tensor(video) else torch.from_numpy(np.ascontiguousarray(video[todo]))
                new = self.frame_features(chunk.to(dev, dt).permute(0, 3, 1, 2))
                got = dict(zip(todo, new))
            else:
                got = {}
            return torch.stack([keep[t] if t in keep else got[t] for t in ts])

        qframes = sorted(set(tq.tolist()))
        q_init = torch.zeros(N, DIM, device=dev, dtype=dt)
        h_q = torch.zeros(N, DIM, device=dev, dtype=dt)

        # Pass 1: query descriptors (feature at the query, border padding; then the local encoder).
        for i in range(0, len(qframes), frames_per_pass):
            group = qframes[i : i + frames_per_pass]
            f1s = feats(group)
            for t, f1 in zip(group, f1s):
                f1 = f1[None]
                sel = (tq == t).nonzero()[:, 0]
                grid = q_n[sel].view(1, 1, -1, 2)
                qi = F.grid_sample(f1, grid, mode="bilinear", padding_mode="border", align_corners=False)
                q_init[sel] = qi[0, :, 0].T.to(dt)
                ref = ((q_n[sel] + 1) / 2).clamp(0, 1)[None]
                h_q[sel] = self.local_encode(q_init[sel][None], ref, self.pyramid(f1))[0].to(dt)
                if len(keep) < 2 * frames_per_pass:  # reused by pass 2: saves CNN runs
                    keep[t] = f1[0]
            del f1s

        zero = torch.zeros(N, 2, device=dev, dtype=dt)
        q_desc = torch.cat([h_q, disp_embedding(zero), self.candidate_emb.weight[0].expand(N, POS_DIM)], -1)
        q_tok = self.local_projection(q_desc)  # [N, 256]

        # Pass 2: candidate descriptors, frame by frame; the token starts as the *query's* q_init.
        s = self.displacement_scale
        f_tok = torch.empty(T, N, M, DIM, device=dev, dtype=dt)
        f_local = torch.empty(T, N, M, DESC_DIM, device=dev, dtype=dt) if return_intermediates else None
        cand_code = self.candidate_emb.weight[1].expand(N, M, POS_DIM)
        fvis = None
        per_pass = max(1, frames_per_pass)
        t0 = 0
        while t0 < T:
            t1 = min(T, t0 + per_pass)
            f1 = feats(list(range(t0, t1)))
            if t0 == 0:
                fvis = f1[0, :8].clone()
            b = t1 - t0
            ref = ((cand_n[t0:t1] + 1) / 2).clamp(0, 1).reshape(b, N * M, 2)  # reference points clamped
            tokens = q_init[None, :, None, :].expand(b, N, M, DIM).reshape(b, N * M, DIM)
            h = self.local_encode(tokens, ref, self.pyramid(f1)).view(b, N, M, DIM).to(dt)
            disp = disp_embedding(s * (cand_n[t0:t1] - q_n[None, :, None, :]))  # displacement NOT clamped
            desc = torch.cat([h, disp, cand_code.expand(b, N, M, POS_DIM)], -1)
            f_tok[t0:t1] = self.local_projection(desc).to(dt)
            if f_local is not None:
                f_local[t0:t1] = desc
            for t in range(t0, t1):
                keep.pop(t, None)
            yield b
            t0 = t1
        keep.clear()

        # Candidate transformer, points in chunks (points never interact).
        time_emb = interpolate_time_embedding(self.time_emb[0], T)
        before = torch.arange(T, device=dev)[None, :] < tq[:, None]  # [N, T]
        if point_chunk is None:
            point_chunk = max(1, min(N, (1 << 22) // max(1, T * T)))
        logits = torch.empty(T, N, M, device=dev, dtype=dt)
        q_out = torch.empty(T, N, DIM, device=dev, dtype=dt) if return_intermediates else None
        sigma = self.sim_scale
        for n0 in range(0, N, point_chunk):
            n1 = min(N, n0 + point_chunk)
            f = f_tok[:, n0:n1]
            cm = None if mask is None else mask[:, n0:n1]
            q = q_tok[None, n0:n1].expand(T, -1, -1)
            for layer in self.layers:
                q = layer(q, f, time_emb, before[n0:n1], cm)
            if q_out is not None:
                q_out[:, n0:n1] = q
            qp = F.normalize(self.q_projection(q), dim=-1, eps=1e-12)
            fp = F.normalize(self.f_projection(f), dim=-1, eps=1e-12)
            lg = (qp[:, :, None, :] * fp).sum(-1) * sigma
            if cm is not None:
                lg = lg.masked_fill(cm, float("-inf"))
            logits[:, n0:n1] = lg.to(dt)
        if not return_intermediates:
            return logits
        inter = {
            "q_init": q_init, "q_local": q_desc, "f_local": f_local, "q_out": q_out,
            "time_emb_used": time_emb, "fvis_probe": fvis,
        }
        return logits, {k: v.detach() for k, v in inter.items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Official key -> shape of the verifier state dict (212 keys).

    Built on the CPU (0.15 s): the first model built under ``torch.device("meta")`` imports torch's meta
    kernels (~6 s and memory that stays, under an ensemble's teachers when the file is checked first).
    """
    return {k: tuple(v.shape) for k, v in Verifier().state_dict().items()}


def load_verifier(sd: Mapping[str, torch.Tensor], source: str) -> Verifier:
    """Build a :class:`Verifier` from an (unwrapped, ``module.``-stripped) state dict, strictly, in eval mode.

    ``source`` names where ``sd`` came from for the error message (a path or Hub file).
    """
    check_state_dict(sd, expected_shapes(), source, "Track-On-R verifier")
    model = Verifier()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.eval()
