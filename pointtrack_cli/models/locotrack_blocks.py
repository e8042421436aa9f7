"""Building blocks of LocoTrack (cvlab-kaist/locotrack ``locotrack_pytorch``, as copied by gorkaydemir/track_on
``ensemble/locotrack/``): the TAPIR-style ResNet feature network, the CMDTop correlation encoder and the PIPs
transformer with ALiBi attention. Plain PyTorch; parameter names follow the official state dict.

Conventions: images channels-first ``[M, C, H, W]``; token sequences ``[M, L, C]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (computed from the input size; the extra pixel goes right/bottom).

    Along one axis of size ``i``: ``pad = max((ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)``, ``pad // 2``
    before and the rest after, so the output has ``ceil(i / s)`` samples. The constructor's ``padding`` is ignored.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


# --------------------------------------------------------------------------------------------------
# Feature network: ResNet v2 with instance normalisation (names: resnet_torch.*)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x -> IN -> ReLU -> conv3x3(stride) -> IN -> ReLU -> conv3x3`` plus shortcut.

    With a projection the shortcut is a 1x1 conv (stride) of the *activated* input, as the official BlockV2.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.projection = projection
        if projection:
            self.proj_conv = SameConv2d(c_in, c_out, 1, stride, bias=False)
        self.bn_0 = nn.InstanceNorm2d(c_in, eps=1e-5, affine=True, track_running_stats=False)
        self.conv_0 = SameConv2d(c_in, c_out, 3, stride, bias=False)
        self.conv_1 = SameConv2d(c_out, c_out, 3, 1, bias=False)
        self.bn_1 = nn.InstanceNorm2d(c_out, eps=1e-5, affine=True, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = torch.relu(self.bn_0(x))
        if self.projection:
            shortcut = self.proj_conv(x)
        x = self.conv_0(x)
        x = self.conv_1(torch.relu(self.bn_1(x)))
        return x + shortcut


class BlockGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_blocks: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [ResBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, projection=i == 0) for i in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ResNet(nn.Module):
    """7x7/2 stem and four groups of two blocks: channels (64, 128, 256, 256), strides (1, 2, 2, 1).

    ``forward(images [M, 3, H, W])`` returns the outputs of groups 0, 1 and 3:
    ``[M, 64, H/2, W/2]`` ("highest"), ``[M, 128, H/4, W/4]`` ("hires"), ``[M, 256, H/8, W/8]`` ("lowres").
    """

    CHANNELS = (64, 128, 256, 256)
    STRIDES = (1, 2, 2, 1)

    def __init__(self) -> None:
        super().__init__()
        self.initial_conv = SameConv2d(3, 64, 7, 2, bias=False)
        c_in = (64,) + self.CHANNELS[:-1]
        self.block_groups = nn.ModuleList([BlockGroup(ci, co, 2, s) for ci, co, s in zip(c_in, self.CHANNELS, self.STRIDES)])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.initial_conv(images)
        units = []
        for group in self.block_groups:
            x = group(x)
            units.append(x)
        return units[0], units[1], units[3]


# --------------------------------------------------------------------------------------------------
# CMDTop: embeds a 4-D local correlation (names: cmdtop.{level}.conv.{i}.{0: conv, 1: GroupNorm})


class CMDTop(nn.Module):
    """Encodes local 4-D correlations ``[M, 7, 7, 7, 7]`` (target dy, dx, query dy, dx) into ``[M, 2 * C_last]``.

    The same conv stack (SAME conv -> GroupNorm(C / 16) -> ReLU, per stage) runs twice: once with the query
    offsets as channels over the 7x7 target grid, once with the target offsets as channels over the query
    grid; each result is averaged over its spatial grid and the two are concatenated (first the former).
    """

    def __init__(self, out_channels: tuple[int, ...], kernels: tuple[int, ...], strides: tuple[int, ...], in_channels: int = 49) -> None:
        super().__init__()
        ins = (in_channels,) + tuple(out_channels[:-1])
        self.conv = nn.ModuleList(
            [
                nn.Sequential(SameConv2d(ci, co, k, s), nn.GroupNorm(co // 16, co), nn.ReLU())
                for ci, co, k, s in zip(ins, out_channels, kernels, strides)
            ]
        )

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.conv:
            x = stage(x)
        return x.mean(dim=(2, 3))

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        m, h, w, i, j = corr.shape
        query_channels = corr.permute(0, 3, 4, 1, 2).reshape(m, i * j, h, w)
        target_channels = corr.reshape(m, h * w, i, j)
        return torch.cat([self._stack(query_channels), self._stack(target_channels)], dim=-1)


# --------------------------------------------------------------------------------------------------
# PIPs transformer over time, one sequence per point (names: torch_pips_mixer.*)


def alibi_bias(length: int, heads: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias ``[heads, L, L]`` (query i, key j): half the heads look back, half look ahead.

    Head ``h < heads/2`` has slope ``s_h = 24 ** (-(h + 1) / (heads/2))`` (computed as ``1 / x ** (h + 1)``
    with ``x = 24 ** (1 / (heads/2))``) and bias ``s_h (j - i)`` for ``j <= i``, ``-1e9`` for ``j > i``; the
    other half mirrors it: ``s_h (i - j)`` for ``j >= i``, ``-1e9`` for ``j < i``.
    """
    half = heads // 2
    x = 24 ** (1 / half)
    slopes = torch.tensor([1 / x ** (h + 1) for h in range(half)], device=device, dtype=dtype)[:, None, None]
    idx = torch.arange(length, device=device)
    j_minus_i = (idx[None, :] - idx[:, None]).to(dtype)
    i_minus_j = (idx[:, None] - idx[None, :]).to(dtype)
    masked = torch.full_like(j_minus_i, -1e9)
    back = torch.where(j_minus_i <= 0, slopes * j_minus_i, masked)
    ahead = torch.where(i_minus_j <= 0, slopes * i_minus_j, masked)
    return torch.cat([back, ahead], dim=0)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and the ALiBi bias."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        dim = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.value_proj = nn.Linear(dim, dim)
        self.final_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x [M, L, D]``, ``bias [heads, L, L]`` -> ``[M, L, D]``."""
        m, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(m, length, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(self.query_proj(x)), split(self.key_proj(x)), split(self.value_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1 / math.sqrt(self.head_dim))
        return self.final_proj(out.permute(0, 2, 1, 3).reshape(m, length, -1))


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x += Attn(LN1(x)); x += Dense(LN2(x))`` with Dense = Linear -> GELU (exact) -> Linear."""

    def __init__(self, heads: int, head_dim: int, widening: int = 4) -> None:
        super().__init__()
        dim = heads * head_dim
        self.attn = Attention(heads, head_dim)
        self.dense = nn.Sequential(nn.Linear(dim, widening * dim), nn.GELU(), nn.Linear(widening * dim, dim))
        self.layer_norm1 = nn.LayerNorm(dim)
        self.layer_norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.layer_norm1(x), bias)
        return x + self.dense(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, heads: int, head_dim: int, num_layers: int) -> None:
        super().__init__()
        self.heads = heads
        self.layers = nn.ModuleList([TransformerLayer(heads, head_dim) for _ in range(num_layers)])
        self.ln_out = nn.LayerNorm(heads * head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = alibi_bias(x.shape[1], self.heads, x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return self.ln_out(x)


class PipsTransformer(nn.Module):
    """``[M, T, C_in] -> Linear(dim) -> Transformer -> Linear(C_out)``, one sequence of frames per point."""

    def __init__(self, in_channels: int, out_channels: int, dim: int, heads: int, num_layers: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(in_channels, dim)
        self.transformer = Transformer(heads, dim // heads, num_layers)
        self.output_proj = nn.Linear(dim, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.transformer(self.input_proj(x)))
