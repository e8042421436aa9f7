"""RealTracker: the CoTracker3 architecture (v2=False) in plain PyTorch, faithful to the official code.

One class, :class:`RealTracker`, covers both released variants (spec ``shared/specs/realtracker.md``):

* offline (``online=False``, time embedding of 60 frames): all frames of the clip are refined jointly
  in one window (spec sec. 10);
* online (``online=True``, window 16, step 8): sliding windows over a whole video (sec. 11a,
  :meth:`RealTracker.forward`) or true streaming with explicit state (sec. 11b,
  :meth:`RealTracker.init_streaming` / :meth:`RealTracker.step`).

Shapes: video ``[B, T, 3, H, W]`` float RGB in 0..255 (H, W multiples of 4); queries ``[B, N, 3]``
rows ``(t, x, y)`` in pixels of the video the model sees; outputs coords ``[B, T, N, 2]`` pixels (x, y),
vis / conf ``[B, T, N]`` probabilities. Internally coordinates are in *feature units* (pixels / 4).

The state-dict keys are the official ones (``fnet.*``, ``updateformer.*`` incl. the misspelt
``updateformer.virual_tracks``, ``corr_mlp.*`` and the ``time_emb`` buffer), so
``model.load_state_dict(official_sd)`` works with ``strict=True``.

Memory: the correlation (4 levels x 7x7 samples x 128 channels per point and frame) and the
transformer are evaluated in chunks of (frame, point) pairs / tokens, so a 10,000-point grid at
384x512 does not materialise multi-GB intermediates; chunking does not change the result.
Precision: works in float32 and float64 (``model.double()``); under ``torch.autocast`` the bilinear
sampling, correlation dot products, feature normalisation and coordinate updates stay in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..weights.state_dict import check_state_dict
from ..errors import PtrackError
from .cnn import BasicEncoder

STRIDE = 4
CORR_RADIUS = 3
CORR_LEVELS = 4
LATENT_DIM = 128
HIDDEN = 384
HEADS = 8
NUM_VIRTUAL = 64
PATCH = 2 * CORR_RADIUS + 1  # 7
INPUT_DIM = 2 + CORR_LEVELS * 256 + 84  # vis, conf, correlation embeddings, displacement encoding = 1110
OFFLINE_WINDOW = 60
ONLINE_WINDOW = 16


# --------------------------------------------------------------------------------------------------
# Small helpers


def posenc(x: torch.Tensor, min_deg: int = 0, max_deg: int = 10) -> torch.Tensor:
    """Fourier encoding ``[..., D] -> [..., D + 2 * D * (max_deg - min_deg)]``: ``[x | sin(u) | sin(u + pi/2)]``.

    ``u[4k + j] = x[j] * 2**k`` (scale-major); cosines are computed as shifted sines, like the official code.
    """
    scales = torch.tensor([2.0**i for i in range(min_deg, max_deg)], dtype=x.dtype, device=x.device)
    xb = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    four_feat = torch.sin(torch.cat([xb, xb + 0.5 * torch.pi], dim=-1))
    return torch.cat([x, four_feat], dim=-1)


def sample_border(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``fmap [M, C, h, w]`` at pixel positions ``xy [M, P, Q, 2]`` -> ``[M, C, P, Q]``.

    Pixel centres at integers (align_corners=True); positions outside the map read the border pixels.
    """
    h, w = fmap.shape[-2:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=xy.dtype, device=xy.device)
    grid = xy * scale - 1
    return F.grid_sample(fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _patch_offsets(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[7, 7, 2]`` offsets; element ``[a, b]`` is ``(dx, dy) = (a - 3, b - 3)``.

    The official patch is stored [x offset][y offset] (transposed w.r.t. image layout); this fixes the
    order of the 2401 correlation values the ``corr_mlp`` weights expect.
    """
    d = torch.arange(-CORR_RADIUS, CORR_RADIUS + 1, device=device, dtype=dtype)
    dx, dy = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dx, dy], dim=-1)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int) -> torch.Tensor:
    """``fn`` applied to slices of ``x`` along dim 0 (``rows`` at a time), results stacked (memory bound)."""
    n = x.shape[0]
    if n <= rows:
        return fn(x)
    out: torch.Tensor | None = None
    for i in range(0, n, rows):
        y = fn(x[i : i + rows])
        if out is None:
            out = y.new_empty((n,) + tuple(y.shape[1:]))
        out[i : i + rows] = y
    assert out is not None
    return out


def _mask_support(support: list[torch.Tensor], active: torch.Tensor) -> list[torch.Tensor]:
    """Zero the query patches of points not yet started in this window (``active [B, N]`` bool).

    Their correlation is then all zeros (they still take part in attention), as the official code.
    """
    if bool(active.all()):
        return support  # no copy (large point sets)
    w = active.to(support[0].dtype)[:, :, None, None, None]
    return [f * w for f in support]


# --------------------------------------------------------------------------------------------------
# Transformer blocks (official names: attn / cross_attn / norm_context / mlp.fc1 / mlp.fc2)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. ``approximate="tanh"`` in the transformer, exact GELU in ``corr_mlp``."""

    def __init__(self, in_features: int, hidden: int, out_features: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    """Multi-head attention, 8 heads of 48 channels; ``to_kv`` gives [k | v]. No masks (CoTracker3 uses none)."""

    def __init__(self, dim: int = HIDDEN, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x [M, N1, C]``, ``context [M, N2, C]`` (default ``x``) -> ``[M, N1, C]``."""
        context = x if context is None else context
        m, n1, c = x.shape
        n2 = context.shape[1]
        h = self.heads
        q = self.to_q(x).reshape(m, n1, h, c // h).transpose(1, 2)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k = k.reshape(m, n2, h, c // h).transpose(1, 2)
        v = v.reshape(m, n2, h, c // h).transpose(1, 2)
        # softmax(q k^T / sqrt(48)) v; SDPA avoids materialising the weights on GPU and keeps a float32
        # softmax accumulator under autocast.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(m, n1, c))


def _ln(x: torch.Tensor) -> torch.Tensor:
    # The non-affine LayerNorms of the official blocks (eps 1e-6).
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


class AttnBlock(nn.Module):
    """Pre-norm self-attention block: ``x += Attn(LN(x)); x += MLP(LN(x))``."""

    def __init__(self, dim: int = HIDDEN) -> None:
        super().__init__()
        self.attn = Attention(dim)
        self.mlp = Mlp(dim, 4 * dim, dim, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(_ln(x))
        return x + self.mlp(_ln(x))


class CrossAttnBlock(nn.Module):
    """``x += Attn(LN(x), LNc(context)); x += MLP(LN(x))``; ``norm_context`` is affine with eps 1e-5."""

    def __init__(self, dim: int = HIDDEN) -> None:
        super().__init__()
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim)
        self.mlp = Mlp(dim, 4 * dim, dim, approximate="tanh")

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(_ln(x), self.norm_context(context))
        return x + self.mlp(_ln(x))


class UpdateFormer(nn.Module):
    """The official ``EfficientUpdateFormer`` (3 time blocks, 3 space steps through 64 virtual tracks)."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.virual_tracks = nn.Parameter(torch.zeros(1, NUM_VIRTUAL, 1, HIDDEN))  # (sic) official name
        self.input_transform = nn.Linear(INPUT_DIM, HIDDEN)
        self.flow_head = nn.Linear(HIDDEN, 2)
        self.vis_conf_head = nn.Linear(HIDDEN, 2)
        self.time_blocks = nn.ModuleList([AttnBlock() for _ in range(depth)])
        self.space_virtual_blocks = nn.ModuleList([AttnBlock() for _ in range(depth)])
        self.space_point2virtual_blocks = nn.ModuleList([CrossAttnBlock() for _ in range(depth)])
        self.space_virtual2point_blocks = nn.ModuleList([CrossAttnBlock() for _ in range(depth)])
        self.token_chunk = 8192  # tokens per chunk (memory only; results do not depend on it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, T, 1110]`` -> ``[B, N, T, 4]`` (dx, dy in feature units, d vis logit, d conf logit)."""
        return self.forward_tokens(self.input_transform(x))

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward` for already transformed tokens ``[B, N, T, 384]``."""
        b, n, t, c = tokens.shape
        virtual = self.virual_tracks.expand(b, NUM_VIRTUAL, t, c)
        tokens = torch.cat([tokens, virtual], dim=1)  # points first, virtual last (cat promotes dtypes)
        nt = n + NUM_VIRTUAL
        for i in range(len(self.time_blocks)):
            seq = tokens.reshape(b * nt, t, c)
            seq = _map_rows(self.time_blocks[i], seq, max(1, self.token_chunk // t))
            frames = seq.view(b, nt, t, c).transpose(1, 2).reshape(b * t, nt, c)  # per-frame token sets

            def space(fr: torch.Tensor, i: int = i) -> torch.Tensor:
                pts, virt = fr[:, :n], fr[:, n:]
                virt = self.space_virtual2point_blocks[i](virt, pts)
                virt = self.space_virtual_blocks[i](virt)
                pts = self.space_point2virtual_blocks[i](pts, virt)
                return torch.cat([pts, virt], dim=1)

            frames = _map_rows(space, frames, max(1, self.token_chunk // nt))
            tokens = frames.view(b, t, nt, c).transpose(1, 2)
        tokens = tokens[:, :n]
        return torch.cat([self.flow_head(tokens), self.vis_conf_head(tokens)], dim=-1)


# --------------------------------------------------------------------------------------------------
# State and outputs


@dataclass
class TrainData:
    """Per-window, per-iteration predictions (for training losses), gradients kept.

    coords[w][i]: ``[B, S_w, N, 2]`` pixels; vis[w][i], conf[w][i]: ``[B, S_w, N]`` probabilities;
    window ``w`` covers frames ``starts[w] .. starts[w] + S_w - 1`` (offline: one window = the clip).
    valid: ``[B, T, N]`` (online: ``t >= t_n``; offline: all ones, as the official code).
    """

    coords: list[list[torch.Tensor]]
    vis: list[list[torch.Tensor]]
    conf: list[list[torch.Tensor]]
    valid: torch.Tensor
    starts: list[int]


@dataclass
class StreamingState:
    """Explicit state of the online model between :meth:`RealTracker.step` calls (spec sec. 11b).

    ``online_ind``: first frame of the next chunk; ``support``: accumulated query support features per
    level ``[B, N, 7, 7, 128]``; ``tail_*``: predictions (feature units / logits) of frames
    ``online_ind .. online_ind + 7`` from the last window (they initialise the next window).
    """

    online_ind: int = 0
    support: list[torch.Tensor] | None = None
    tail_coords: torch.Tensor | None = None
    tail_vis: torch.Tensor | None = None
    tail_conf: torch.Tensor | None = None
    last_len: int = 0


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
        self.corr_chunk = 4096  # (frame, point) pairs per correlation/token chunk
        self._record: dict | None = None  # debugging: set to {} to collect intermediates

    # ---- features -------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Video ``[B, T, 3, H, W]`` (0..255) -> pyramid of 4 L2-normalised maps ``[B, T, 128, H/4/2^l, W/4/2^l]``.

        Float32 (float64 if the video is float64), also under autocast. Each frame is independent.
        """
        b, t, _, h, w = video.shape
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"frame size {h}x{w} must be a multiple of {STRIDE}")
        dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
        frames = video.reshape(b * t, 3, h, w)
        levels: list[torch.Tensor] | None = None
        for i in range(0, b * t, self.fnet_chunk):
            x = 2 * (frames[i : i + self.fnet_chunk].to(dtype) / 255.0) - 1.0
            raw = self.fnet(x)
            if i == 0 and self._record is not None:
                self._record["fnet_raw"] = raw.detach().clone()
            pyr = self._pyramid(raw.to(dtype))
            if levels is None:
                levels = [p.new_empty((b * t,) + tuple(p.shape[1:])) for p in pyr]
            for lvl, p in zip(levels, pyr):
                lvl[i : i + p.shape[0]] = p
        assert levels is not None
        return [lvl.view(b, t, *lvl.shape[1:]) for lvl in levels]

    @staticmethod
    def _pyramid(raw: torch.Tensor) -> list[torch.Tensor]:
        """Raw fnet output ``[M, 128, h, w]`` -> L2-normalised per pixel, then 3x 2x2 average pooling."""
        with _no_autocast(raw.device):
            f = raw / torch.sqrt(torch.clamp(torch.sum(raw * raw, dim=1, keepdim=True), min=1e-12))
            out = [f]
            for _ in range(CORR_LEVELS - 1):
                out.append(F.avg_pool2d(out[-1], 2, stride=2))
        return out

    @staticmethod
    def pad_time(pyramid: list[torch.Tensor], length: int) -> list[torch.Tensor]:
        """Repeat the last frame of every level until ``length`` frames (= padding the video, fnet is per frame)."""
        t = pyramid[0].shape[1]
        if t >= length:
            return pyramid
        return [torch.cat([p, p[:, -1:].expand(-1, length - t, -1, -1, -1)], dim=1) for p in pyramid]

    def support_features(self, pyramid: list[torch.Tensor], qt: torch.Tensor, qxy: torch.Tensor) -> list[torch.Tensor]:
        """7x7 query patches per level ``[B, N, 7, 7, 128]`` (patch axes [x offset][y offset], sec. 6).

        qt ``[B, N]`` int64 frame indices into ``pyramid`` (clamped to its range, like the border-clamped
        time axis of the official 5-D sampling); qxy ``[B, N, 2]`` feature units.
        """
        b, n = qt.shape
        t_len = pyramid[0].shape[1]
        qt = qt.clamp(0, t_len - 1)
        offsets = _patch_offsets(qxy.device, qxy.dtype)
        out = []
        with _no_autocast(qxy.device):
            for lvl, fmap in enumerate(pyramid):
                xy = (qxy / 2**lvl)[:, :, None, None, :] + offsets  # [B, N, 7, 7, 2]
                feats = fmap.new_zeros((b, n, PATCH, PATCH, fmap.shape[2]))
                for bi in range(b):
                    for t in torch.unique(qt[bi]).tolist():
                        idx = torch.nonzero(qt[bi] == t).squeeze(1)
                        grid = xy[bi, idx].reshape(1, -1, PATCH, 2)
                        g = sample_border(fmap[bi, t][None], grid)  # [1, C, k*7, 7]
                        feats[bi, idx] = g[0].view(fmap.shape[2], -1, PATCH, PATCH).permute(1, 2, 3, 0)
                out.append(feats)
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
        with _no_autocast(te.device):
            res = F.interpolate(te.to(work).permute(0, 2, 1), size=length, mode="linear", align_corners=False)
        return res.permute(0, 2, 1)[0].to(dtype)

    def _correlation(
        self, pyramid: list[torch.Tensor], support: list[torch.Tensor], coords: torch.Tensor
    ) -> torch.Tensor:
        """Correlation embeddings ``[S', N', 1024]`` for one batch element and one chunk.

        pyramid: levels ``[S', 128, h, w]``; support: ``[N', 7, 7, 128]``; coords ``[S', N', 2]`` feature units.
        """
        s, n = coords.shape[:2]
        embs = []
        for lvl, (fmap, sup) in enumerate(zip(pyramid, support)):
            with _no_autocast(coords.device):
                xy = (coords / 2**lvl)[:, :, None, None, :] + _patch_offsets(coords.device, coords.dtype)
                g = sample_border(fmap, xy.reshape(s, n * PATCH, PATCH, 2))  # [S', C, N'*7, 7]
                g = g.view(s, fmap.shape[1], n, PATCH, PATCH)
                # corr[t, n, h, w, i, j] = <G[t, n, h, w], F[n, i, j]> (no 1/sqrt(C) scaling)
                corr = torch.einsum("tcnhw,nijc->tnhwij", g, sup.to(g.dtype)).reshape(s, n, PATCH**4)
            embs.append(self.corr_mlp(corr))
        return torch.cat(embs, dim=-1)

    def _tokens(
        self,
        pyramid: list[torch.Tensor],
        support: list[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        time_emb: torch.Tensor,
    ) -> torch.Tensor:
        """Transformer tokens ``[B, N, S, 384]`` = input_transform(x), x built chunk by chunk (sec. 7-8)."""
        b, s, n, _ = coords.shape
        w_res = torch.tensor(
            [self.model_resolution[1] / STRIDE, self.model_resolution[0] / STRIDE], dtype=coords.dtype, device=coords.device
        )
        zero = torch.zeros_like(coords[:, :1])
        rel = torch.cat(
            [
                torch.cat([coords[:, :-1] - coords[:, 1:], zero], dim=1) / w_res,  # forward displacement
                torch.cat([zero, coords[:, 1:] - coords[:, :-1]], dim=1) / w_res,  # backward displacement
            ],
            dim=-1,
        )  # [B, S, N, 4]
        nc = max(1, min(n, self.corr_chunk))
        tc = max(1, min(s, self.corr_chunk // nc))
        # Record the first call's inputs when debugging (intermediates fixture).
        rec = self._record if self._record is not None and "transformer_input_it1" not in self._record else None
        tokens: torch.Tensor | None = None
        for bi in range(b):
            for t0 in range(0, s, tc):
                t1 = min(s, t0 + tc)
                pyr = [p[bi, t0:t1] for p in pyramid]
                for n0 in range(0, n, nc):
                    n1 = min(n, n0 + nc)
                    corr = self._correlation(pyr, [f[bi, n0:n1] for f in support], coords[bi, t0:t1, n0:n1])
                    # Concatenate at the wider dtype (float32 under autocast), as torch.cat promotes.
                    xdt = torch.promote_types(corr.dtype, coords.dtype)
                    x = torch.cat(
                        [
                            vis[bi, t0:t1, n0:n1, None].to(xdt),
                            conf[bi, t0:t1, n0:n1, None].to(xdt),
                            corr.to(xdt),
                            posenc(rel[bi, t0:t1, n0:n1]).to(xdt),
                        ],
                        dim=-1,
                    )
                    x = x + time_emb[t0:t1, None, :].to(xdt)
                    if rec is not None:
                        rec.setdefault("_corr", corr.new_zeros((b, s, n, corr.shape[-1])))[bi, t0:t1, n0:n1] = corr.detach()
                        rec.setdefault("_x", x.new_zeros((b, s, n, x.shape[-1])))[bi, t0:t1, n0:n1] = x.detach()
                    tok = self.updateformer.input_transform(x).transpose(0, 1)  # [N', S', 384]
                    if tokens is None:
                        tokens = tok.new_empty((b, n, s, tok.shape[-1]))
                    tokens[bi, n0:n1, t0:t1] = tok
        if rec is not None:
            rec["corr_emb_it1"] = rec.pop("_corr")
            rec["transformer_input_it1"] = rec.pop("_x")
        assert tokens is not None
        return tokens

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
        out_c, out_v, out_f = [], [], []
        for _ in range(iters):
            coords = coords.detach()  # official: no gradient through the coordinate input of an iteration
            tokens = self._tokens(pyramid, support, coords, vis, conf, time_emb)
            delta = self.updateformer.forward_tokens(tokens).transpose(1, 2)  # [B, S, N, 4]
            if self._record is not None:
                self._record.setdefault("delta", []).append(delta.detach().clone())
            delta = delta.to(coords.dtype)  # accumulate in float32 under autocast
            coords = coords + delta[..., :2]
            vis = vis + delta[..., 2]
            conf = conf + delta[..., 3]
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
            return self._forward_sliding(pyramid, qt, qxy, t, iters, is_train)
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

    def _forward_sliding(
        self, pyramid: list[torch.Tensor], qt: torch.Tensor, qxy: torch.Tensor, t: int, iters: int, is_train: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TrainData | None]:
        """Online model over a whole video: windows of S=16 frames every 8 frames (sec. 11a)."""
        s, step = self.window_len, self.window_len // 2
        b, n = qt.shape
        t_pad = t + (s - t % s) % s
        pyramid = self.pad_time([p[:, :t] for p in pyramid], t_pad)
        support = self.support_features(pyramid, qt, qxy)
        coords_pred = qxy.new_zeros((b, t, n, 2))
        vis_pred = qxy.new_zeros((b, t, n))
        conf_pred = qxy.new_zeros((b, t, n))
        coords_init = qxy[:, None].expand(b, s, n, 2)
        vis_init = qxy.new_zeros((b, s, n))
        conf_init = qxy.new_zeros((b, s, n))
        num_windows = (t - s + step - 1) // step + 1  # quirk kept: 0 windows for t <= 8
        train_c, train_v, train_f, starts = [], [], [], []
        for ind in range(0, step * num_windows, step):
            if ind > 0:
                coords_init, vis_init, conf_init = self._carry_over(
                    qt < ind + step,
                    (coords_pred[:, ind : ind + step], vis_pred[:, ind : ind + step], conf_pred[:, ind : ind + step]),
                    (coords_init, vis_init, conf_init),
                )
            cs, vs, fs = self.refine(
                [p[:, ind : ind + s] for p in pyramid],
                _mask_support(support, qt < ind + s),
                coords_init,
                vis_init,
                conf_init,
                iters,
                keep_all=is_train,
            )
            tw = min(t - ind, s)
            coords_pred[:, ind : ind + tw] = cs[-1][:, :tw]
            vis_pred[:, ind : ind + tw] = vs[-1][:, :tw]
            conf_pred[:, ind : ind + tw] = fs[-1][:, :tw]
            if is_train:
                train_c.append([c[:, :tw] * STRIDE for c in cs])
                train_v.append([torch.sigmoid(v[:, :tw]) for v in vs])
                train_f.append([torch.sigmoid(f[:, :tw]) for f in fs])
                starts.append(ind)
        train = None
        if is_train:
            valid = qt[:, None, :] <= torch.arange(t, device=qt.device)[None, :, None]
            train = TrainData(train_c, train_v, train_f, valid, starts)
        return coords_pred * STRIDE, torch.sigmoid(vis_pred), torch.sigmoid(conf_pred), train

    @staticmethod
    def _carry_over(
        copy: torch.Tensor,
        prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        init: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window initialisation for points with ``copy [B, N]``: the previous 8 frames, then frame 7 repeated."""
        out = []
        for p, i in zip(prev, init):
            half = p.shape[1]
            p = torch.cat([p, p[:, -1:].expand(-1, i.shape[1] - half, *p.shape[2:])], dim=1)
            c = copy[:, None, :, None] if p.dim() == 4 else copy[:, None, :]
            out.append(torch.where(c, p, i))
        return out[0], out[1], out[2]

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
        """:meth:`step` on the chunk's pyramid (``T_c`` real frames, padded here to 16)."""
        if not self.online:
            raise ValueError("streaming needs the online model")
        s, step = self.window_len, self.window_len // 2
        t_c = pyramid[0].shape[1]
        ind = state.online_ind
        if not 1 <= t_c <= s:
            raise ValueError(f"a streaming chunk must have 1..{s} frames, got {t_c}")
        if ind > 0 and (state.last_len != s or t_c <= step):
            raise ValueError(
                f"streaming chunks must be frames [k*{step}, k*{step}+16) with only the last one shorter "
                f"(> {step} frames); got {t_c} frames after a chunk of {state.last_len}"
            )
        pyramid = self.pad_time(pyramid, s)
        dtype = pyramid[0].dtype
        queries = queries.to(dtype)
        qt = queries[..., 0].long()
        qxy = queries[..., 1:3] / STRIDE
        b, n = qt.shape
        # Each query's patch is captured once, from the first chunk whose new half holds its frame.
        left = 0 if ind == 0 else ind + step
        new = (qt >= left) & (qt < ind + s)
        if state.support is None:
            c = pyramid[0].shape[2]
            state.support = [pyramid[0].new_zeros((b, n, PATCH, PATCH, c)) for _ in pyramid]
        for bi in range(b):
            idx = torch.nonzero(new[bi]).squeeze(1)
            if idx.numel():  # sample only the newly captured queries (0 + f: same values as the official sum)
                pyr_b = [p[bi : bi + 1] for p in pyramid]
                feats = self.support_features(pyr_b, qt[bi : bi + 1, idx] - ind, qxy[bi : bi + 1, idx])
                for acc, f in zip(state.support, feats):
                    acc[bi, idx] = acc[bi, idx] + f[0]

        coords_init = qxy[:, None].expand(b, s, n, 2)
        vis_init = qxy.new_zeros((b, s, n))
        conf_init = qxy.new_zeros((b, s, n))
        if ind > 0:
            assert state.tail_coords is not None and state.tail_vis is not None and state.tail_conf is not None
            coords_init, vis_init, conf_init = self._carry_over(
                qt < ind + step, (state.tail_coords, state.tail_vis, state.tail_conf), (coords_init, vis_init, conf_init)
            )
        support = _mask_support(state.support, qt < ind + s)
        cs, vs, fs = self.refine(pyramid, support, coords_init, vis_init, conf_init, iters)
        c, v, f = cs[-1], vs[-1], fs[-1]
        state.tail_coords, state.tail_vis, state.tail_conf = c[:, step:s], v[:, step:s], f[:, step:s]
        state.online_ind += step
        state.last_len = t_c
        return c[:, :t_c] * STRIDE, torch.sigmoid(v[:, :t_c]), torch.sigmoid(f[:, :t_c])


# --------------------------------------------------------------------------------------------------
# Construction and loading


def _sincos_time_embed(length: int, dim: int = INPUT_DIM) -> torch.Tensor:
    """The official constructor's 1-D sin-cos table ``[1, length, dim]`` (float64 maths, stored float32)."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
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
    bad = [k for k, v in sd.items() if not torch.is_floating_point(v) or not bool(torch.isfinite(v).all())]
    if bad:
        raise PtrackError(
            f"{source} holds non-finite or non-float values in {len(bad)} tensor(s), e.g. {bad[0]} (download it again)"
        )
    # Built on the meta device and then given the checkpoint tensors: skips the random initialisation.
    with torch.device("meta"):
        model = RealTracker(online=online, model_resolution=model_resolution)
    model.load_state_dict({k: v.detach().to(torch.float32, copy=True) for k, v in sd.items()}, strict=True, assign=True)
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
