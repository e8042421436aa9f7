"""Building blocks of RealTracker (:mod:`pointtrack_cli.models.realtracker`): local correlation and the update transformer.

* :func:`sample_patches` / :func:`local_correlation`: the 7x7 bilinear samples around a point (border padding,
  pixel centres at integers, as ``grid_sample(align_corners=True, padding_mode="border")``) and their dot
  products with a query's 7x7 support patch. The 49 samples sit at integer offsets from the point, so they share
  one pair of bilinear weights: both functions gather the 8x8 integer pixels that cover the patch (indices
  clamped to the map = border padding, exactly) and interpolate once. The correlation interpolates the 8x8x49
  dot products instead of the 8x8x128 features (same value, fewer operations), straight in the point-major
  order the transformer wants: no ``grid_sample``, no permuted copies.
* The transformer blocks with the official parameter names (``attn`` / ``cross_attn`` / ``norm_context`` /
  ``mlp.fc1`` / ``mlp.fc2``) and :class:`UpdateFormer` (the official ``EfficientUpdateFormer``).

Feature maps here are channels-last: ``[S, h, w, C]`` per batch element (the gathers read whole 128-channel
vectors). Patch axes are ``[x offset][y offset]`` (the official order, transposed w.r.t. image layout).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CORR_RADIUS = 3
PATCH = 2 * CORR_RADIUS + 1  # 7
HIDDEN = 384
HEADS = 8
NUM_VIRTUAL = 64
INPUT_DIM = 2 + 4 * 256 + 84  # vis, conf, 4 levels of correlation embeddings, displacement encoding = 1110


def posenc(x: torch.Tensor, min_deg: int = 0, max_deg: int = 10) -> torch.Tensor:
    """Fourier encoding ``[..., D] -> [..., D + 2 * D * (max_deg - min_deg)]``: ``[x | sin(u) | sin(u + pi/2)]``.

    ``u[4k + j] = x[j] * 2**k`` (scale-major); cosines are computed as shifted sines, like the official code.
    """
    scales = torch.tensor([2.0**i for i in range(min_deg, max_deg)], dtype=x.dtype, device=x.device)
    xb = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    four_feat = torch.sin(torch.cat([xb, xb + 0.5 * torch.pi], dim=-1))
    return torch.cat([x, four_feat], dim=-1)


# --------------------------------------------------------------------------------------------------
# Local sampling and correlation (channels-last maps)


def _patch_gather(fmap: torch.Tensor, frame: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``fmap.reshape(-1, C)`` for the 8x8 pixels covering each 7x7 patch, and the bilinear weights.

    fmap ``[S, h, w, C]``; frame: int64 frame index into ``S`` for each point, shape ``xy.shape[:-1]`` (or
    broadcastable); xy ``[..., 2]`` pixel (x, y) of the patch centres. Returns the flat row indices
    ``[..., 8 (x), 8 (y)]`` and the fractional parts ``[..., 2]`` (the weights of the +1 neighbours).
    Clamping each integer index to the map reproduces border padding exactly: a sample left of column 0 reads
    column 0 through both of its neighbours, whatever its weights.
    """
    _, h, w, _ = fmap.shape
    base = torch.floor(xy)
    frac = xy - base
    # Far-away (or non-finite) positions: clamp before the integer cast, the result is the border either way.
    base = base.clamp(-2.0 * PATCH, float(max(h, w) + 2 * PATCH)).long()
    d = torch.arange(-CORR_RADIUS, CORR_RADIUS + 2, device=xy.device)  # 8 integer offsets
    ix = (base[..., 0, None] + d).clamp_(0, w - 1)  # [..., 8]
    iy = (base[..., 1, None] + d).clamp_(0, h - 1)
    rows = frame[..., None] * h + iy  # (frame, y) row of the map
    return (rows[..., None, :] * w + ix[..., :, None]), frac  # [..., 8 (x), 8 (y)]


def sample_patches(fmap: torch.Tensor, frame: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear 7x7 patches ``[K, 7, 7, C]`` (axes [x offset][y offset]) of ``fmap [S, h, w, C]``.

    frame ``[K]`` int64 frame of each patch; xy ``[K, 2]`` pixel (x, y) of its centre.
    """
    k, c = xy.shape[0], fmap.shape[-1]
    idx, frac = _patch_gather(fmap, frame, xy)
    p = fmap.reshape(-1, c).index_select(0, idx.reshape(-1)).view(k, PATCH + 1, PATCH + 1, c)
    fx, fy = frac[:, 0, None, None, None].to(p.dtype), frac[:, 1, None, None, None].to(p.dtype)
    p = torch.lerp(p[:, :PATCH], p[:, 1:], fx)  # along x: [K, 7, 8, C]
    return torch.lerp(p[:, :, :PATCH], p[:, :, 1:], fy)


def local_correlation(fmap: torch.Tensor, support: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Correlation volumes ``[N, S, 2401]`` of N points over S frames at one pyramid level.

    fmap ``[S, h, w, C]``; support ``[N, 7, 7, C]`` query patches; xy ``[N, S, 2]`` pixel positions at this level.
    ``out[n, s, (a, b, i, j)] = <sample(fmap[s], xy[n, s] + (a - 3, b - 3)), support[n, i, j]>`` (no scaling),
    the order the official ``corr_mlp`` weights expect.
    """
    n, s = xy.shape[:2]
    c = fmap.shape[-1]
    frames = torch.arange(s, device=xy.device)[None, :].expand(n, s)
    idx, frac = _patch_gather(fmap, frames, xy)
    p = fmap.reshape(-1, c).index_select(0, idx.reshape(-1)).view(n, s * (PATCH + 1) ** 2, c)
    dots = torch.bmm(p, support.reshape(n, PATCH * PATCH, c).transpose(1, 2).to(p.dtype))  # [N, S*64, 49]
    dots = dots.view(n, s, PATCH + 1, PATCH + 1, PATCH * PATCH)
    fx, fy = frac[..., 0, None, None, None].to(dots.dtype), frac[..., 1, None, None, None].to(dots.dtype)
    dots = torch.lerp(dots[:, :, :PATCH], dots[:, :, 1:], fx)  # [N, S, 7, 8, 49]
    return torch.lerp(dots[:, :, :, :PATCH], dots[:, :, :, 1:], fy).reshape(n, s, PATCH**4)


# --------------------------------------------------------------------------------------------------
# Transformer blocks


def balanced(n: int, size: int) -> int:
    """Chunk size for ``n`` items in chunks of at most ``size``, as equal as possible (no 1-item tail chunk)."""
    chunks = -(-n // max(1, size))
    return max(1, -(-n // max(1, chunks)))


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int) -> torch.Tensor:
    """``fn`` applied to slices of ``x`` along dim 0 (at most ``rows`` at a time), results stacked (memory bound)."""
    n = x.shape[0]
    if n <= rows:
        return fn(x)
    rows = balanced(n, rows)
    out: torch.Tensor | None = None
    for i in range(0, n, rows):
        y = fn(x[i : i + rows])
        if out is None:
            out = y.new_empty((n,) + tuple(y.shape[1:]))
        out[i : i + rows] = y
    assert out is not None
    return out


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
        self.token_chunk = 16384  # tokens per chunk (memory only; results do not depend on it)
        # Training memory: recompute each block's activations in the backward pass (see RealTracker.checkpointing).
        self.checkpointing = False

    def _block(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``fn``, or ``fn`` recomputed in the backward pass instead of stored when checkpointing with gradients."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return fn
        return lambda *args: checkpoint(fn, *args, use_reentrant=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, T, 1110]`` -> ``[B, N, T, 4]`` (dx, dy in feature units, d vis logit, d conf logit)."""
        return self.forward_tokens(self.input_transform(x))

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward` for already transformed tokens ``[B, N, T, 384]``."""
        b, n, t, c = tokens.shape
        nt = n + NUM_VIRTUAL
        # The virtual tracks enter the first time block as one learned token repeated over time: attention over
        # identical tokens returns that token's value for every frame, so the block runs on one frame and the
        # result is repeated (the same numbers as running it on all T frames, T times less work).
        # The official concatenation promotes the tokens to the parameters' dtype (float32 under autocast): the
        # residual stream stays float32, so promote here as well.
        tokens = tokens.to(torch.promote_types(tokens.dtype, self.virual_tracks.dtype))
        pts = map_rows(self._block(self.time_blocks[0]), tokens.reshape(b * n, t, c), max(1, self.token_chunk // t))
        virtual = self._block(self.time_blocks[0])(self.virual_tracks[0])  # [64, 1, C]
        virtual = virtual.to(pts.dtype)[None].expand(b, NUM_VIRTUAL, t, c)
        tokens = torch.cat([pts.view(b, n, t, c), virtual], dim=1)  # points first, virtual last
        for i in range(len(self.time_blocks)):
            if i > 0:
                seq = tokens.reshape(b * nt, t, c)
                seq = map_rows(self._block(self.time_blocks[i]), seq, max(1, self.token_chunk // t))
                tokens = seq.view(b, nt, t, c)
            frames = tokens.transpose(1, 2).reshape(b * t, nt, c)  # per-frame token sets

            def space(fr: torch.Tensor, i: int = i) -> torch.Tensor:
                pts, virt = fr[:, :n], fr[:, n:]
                virt = self.space_virtual2point_blocks[i](virt, pts)
                virt = self.space_virtual_blocks[i](virt)
                pts = self.space_point2virtual_blocks[i](pts, virt)
                return torch.cat([pts, virt], dim=1)

            frames = map_rows(self._block(space), frames, max(1, self.token_chunk // nt))
            tokens = frames.view(b, t, nt, c).transpose(1, 2)
        tokens = tokens[:, :n]
        return torch.cat([self.flow_head(tokens), self.vis_conf_head(tokens)], dim=-1)
