"""Building blocks of TAPNext: the TRecViT block (a Griffin/Hawk recurrent block over time, then a ViT
block over the tokens of one frame), in plain PyTorch.

Reference: google-deepmind/tapnet ``tapnet/tapnext/tapnext_lru_modules.py`` and ``tapnext_torch.py``
(the recurrent block there follows recurrentgemma's PyTorch code; the ViT block is torchvision's
``EncoderBlock``). Parameter names are the official ones so that the official state dict loads with
``strict=True``. Shapes: ``B'`` independent sequences (one per token position), ``L`` frames, ``D`` channels.

Recurrent state (one per layer): the RG-LRU hidden state ``[B', lru_width]`` and the last
``temporal_width - 1`` inputs of the causal convolution ``[B', temporal_width - 1, lru_width]``. The
RG-LRU state is accumulated in float32 (float64 when the model runs in float64), as the official code
accumulates in float32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (JAX's default, used by the recurrent block)."""
    return F.gelu(x, approximate="tanh")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype of the linear recurrence: float32, or float64 for a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LayerCache(NamedTuple):
    """Recurrent state of one TRecViT layer for ``B'`` token positions."""

    lru: torch.Tensor  # [B', lru_width], float32 (float64 in a float64 model)
    conv: torch.Tensor  # [B', temporal_width - 1, lru_width], model dtype


# --------------------------------------------------------------------------------------------------
# Linear recurrences


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + x_t`` step by step. a, x ``[B', L, D]``, h0 ``[B', D]`` (accumulator dtype).

    Returns every ``h_t`` ``[B', L, D]`` in the accumulator dtype.
    """
    out = torch.empty(x.shape, dtype=h0.dtype, device=x.device)
    h = h0
    for t in range(x.shape[1]):
        h = a[:, t].to(h0.dtype) * h + x[:, t].to(h0.dtype)
        out[:, t] = h
    return out


def parallel_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The same recurrence as :func:`linear_scan` in ``ceil(log2 L)`` vectorised rounds (Hillis-Steele).

    After round ``k`` every position holds the affine map ``h -> A h + X`` that composes the last ``2^k``
    steps ending there; applying the composed maps to ``h0`` gives every ``h_t`` at once. Same result as
    the sequential scan up to rounding (the products are associated differently). ``[B', L, D]`` in,
    ``[B', L, D]`` out (accumulator dtype).
    """
    big_a, big_x = a.to(h0.dtype).clone(), x.to(h0.dtype).clone()
    length, shift = x.shape[1], 1
    while shift < length:
        # compose position t with the map ending at t - shift: (A_t, X_t) o (A_s, X_s) = (A_t A_s, A_t X_s + X_t)
        prev_a, prev_x = big_a[:, :-shift], big_x[:, :-shift]
        new_x = big_x.clone()
        new_a = big_a.clone()
        new_x[:, shift:] = big_a[:, shift:] * prev_x + big_x[:, shift:]
        new_a[:, shift:] = big_a[:, shift:] * prev_a
        big_a, big_x = new_a, new_x
        shift *= 2
    return big_a * h0[:, None] + big_x


# --------------------------------------------------------------------------------------------------
# Recurrent (temporal) block


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * (1 + scale)`` over the last axis (``scale`` stored as an offset from 1)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)
        return x * inv * (self.scale + 1)


class BlockDiagonalLinear(nn.Module):
    """A linear map per block of channels: ``[..., H * i] -> [..., H * j]`` with ``w [H, i, j]``, ``b [H, j]``."""

    def __init__(self, width: int, num_blocks: int) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        size = width // num_blocks
        self.w = nn.Parameter(torch.zeros(num_blocks, size, size))
        self.b = nn.Parameter(torch.zeros(num_blocks, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.unflatten(-1, (self.num_blocks, -1))  # [..., H, i]
        y = torch.einsum("...hi,hij->...hj", xb, self.w) + self.b
        return y.flatten(-2)


class RGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit.

    Per channel: ``a = exp(-8 * sigmoid(a_gate(x)) * softplus(a_param))``, input
    ``u = x * sigmoid(input_gate(x)) * sqrt(1 - a^2)`` (the factor is 1 on the first frame of a sequence
    that starts without state), and ``h_t = a_t h_{t-1} + u_t``; the output is ``h``.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.a_param = nn.Parameter(torch.zeros(width))
        self.input_gate = BlockDiagonalLinear(width, num_heads)
        self.a_gate = BlockDiagonalLinear(width, num_heads)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None, parallel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B', L, D]``, h0 ``[B', D]`` or None -> (y ``[B', L, D]``, last state ``[B', D]``)."""
        gate_x = torch.sigmoid(self.input_gate(x))
        gate_a = torch.sigmoid(self.a_gate(x))
        log_a = -8.0 * gate_a * F.softplus(self.a_param)
        a = torch.exp(log_a)
        norm = torch.sqrt(1 - torch.exp(2 * log_a))
        if h0 is None:  # a fresh sequence: its first input is not rescaled
            first = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            first[0] = True
            norm = torch.where(first[:, None], torch.ones_like(norm), norm)
        u = (x * gate_x) * norm.to(x.dtype)
        acc = _acc_dtype(x.dtype)
        if x.shape[1] == 1:  # one frame (streaming)
            if h0 is None:
                return u, u[:, 0].to(acc)
            h = a.to(acc) * h0[:, None] + u.to(acc)
            return h.to(x.dtype), h[:, -1]
        h0 = torch.zeros(x[:, 0].shape, dtype=acc, device=x.device) if h0 is None else h0
        h = (parallel_scan if parallel else linear_scan)(a, u, h0)
        return h.to(x.dtype), h[:, -1]


class CausalConv1D(nn.Module):
    """Depthwise causal convolution over time: ``y_t = b + sum_k w[k] * x_{t - (K-1) + k}`` (``w [K, D]``)."""

    def __init__(self, width: int, temporal_width: int = 4) -> None:
        super().__init__()
        self.temporal_width = temporal_width
        self.w = nn.Parameter(torch.zeros(temporal_width, width))
        self.b = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B', L, D]``, cache ``[B', K-1, D]`` (previous inputs; zeros if None) -> (y, new cache)."""
        k = self.temporal_width
        if cache is None:
            cache = x.new_zeros((x.shape[0], k - 1, x.shape[2]))
        xs = torch.cat([cache, x], dim=1)  # [B', K-1+L, D]
        if xs.shape[1] == k:  # one frame
            y = (xs * self.w[None]).sum(dim=1, keepdim=True) + self.b
        else:
            y = F.conv1d(xs.transpose(1, 2), self.w.t()[:, None, :], self.b, groups=xs.shape[2]).transpose(1, 2)
        return y, xs[:, xs.shape[1] - (k - 1):]


class RecurrentBlock(nn.Module):
    """Two branches: ``gelu(linear_y(x))`` and ``rg_lru(conv_1d(linear_x(x)))``, multiplied, then ``linear_out``."""

    def __init__(self, width: int, num_heads: int, lru_width: int, temporal_width: int = 4) -> None:
        super().__init__()
        self.linear_y = nn.Linear(width, lru_width)
        self.linear_x = nn.Linear(width, lru_width)
        self.linear_out = nn.Linear(lru_width, width)
        self.conv_1d = CausalConv1D(lru_width, temporal_width)
        self.rg_lru = RGLRU(lru_width, num_heads)

    def forward(self, x: torch.Tensor, cache: LayerCache | None, parallel: bool = False) -> tuple[torch.Tensor, LayerCache]:
        gate = gelu_tanh(self.linear_y(x))
        h, conv_state = self.conv_1d(self.linear_x(x), None if cache is None else cache.conv)
        h, lru_state = self.rg_lru(h, None if cache is None else cache.lru, parallel)
        return self.linear_out(h * gate), LayerCache(lru=lru_state, conv=conv_state)


class GatedMLP(nn.Module):
    """``ffw_down(gelu(x @ w[0] + b[0]) * (x @ w[1] + b[1]))`` with ``ffw_up.w [2, D, E]``, ``ffw_up.b [2, 1, 1, E]``."""

    def __init__(self, width: int, expanded: int) -> None:
        super().__init__()
        self.ffw_up = nn.Module()
        self.ffw_up.w = nn.Parameter(torch.zeros(2, width, expanded))
        self.ffw_up.b = nn.Parameter(torch.zeros(2, 1, 1, expanded))
        self.ffw_down = nn.Linear(expanded, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.ffw_up.w, self.ffw_up.b
        gate = torch.matmul(x, w[0]) + b[0, 0, 0]
        value = torch.matmul(x, w[1]) + b[1, 0, 0]
        return self.ffw_down(gelu_tanh(gate) * value)


class SSMBlock(nn.Module):
    """Griffin's residual block over time: ``x + rec(norm(x))``, then ``+ mlp(norm(.))``. Module name: ``ssm_block``."""

    def __init__(self, width: int, num_heads: int, lru_width: int) -> None:
        super().__init__()
        self.temporal_pre_norm = RMSNorm(width)
        self.recurrent_block = RecurrentBlock(width, num_heads, lru_width)
        self.channel_pre_norm = RMSNorm(width)
        self.mlp_block = GatedMLP(width, 4 * width)

    def forward(self, x: torch.Tensor, cache: LayerCache | None, parallel: bool = False) -> tuple[torch.Tensor, LayerCache]:
        """x ``[B', L, D]`` (one sequence per token position) -> same shape, new state."""
        h, cache = self.recurrent_block(self.temporal_pre_norm(x), cache, parallel)
        x = x + h
        return x + self.mlp_block(self.channel_pre_norm(x)), cache


# --------------------------------------------------------------------------------------------------
# ViT (spatial) block


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed input projection (``in_proj_weight [3D, D]``), as ``nn.MultiheadAttention``."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B', N, D]`` -> ``[B', N, D]`` (every token attends to every token)."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B', heads, N, head_dim]
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-norm transformer block (torchvision ``EncoderBlock`` layout: ``ln_1``, ``self_attention``, ``ln_2``, ``mlp.0/3``)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = SelfAttention(width, num_heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Identity(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TRecViTBlock(nn.Module):
    """One TAPNext layer on tokens ``[B, L, N, D]``: the recurrent block along time for every token position,
    then attention among the ``N`` tokens of each frame (image patches and point tokens together)."""

    def __init__(self, width: int, num_heads: int, lru_width: int) -> None:
        super().__init__()
        self.ssm_block = SSMBlock(width, num_heads, lru_width)
        self.vit_block = ViTBlock(width, num_heads)

    def forward(self, x: torch.Tensor, cache: LayerCache | None, parallel: bool = False) -> tuple[torch.Tensor, LayerCache]:
        b, length, n, d = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b * n, length, d)  # [(B N), L, D]
        seq, cache = self.ssm_block(seq, cache, parallel)
        frames = seq.view(b, n, length, d).permute(0, 2, 1, 3).reshape(b * length, n, d)  # [(B L), N, D]
        return self.vit_block(frames).view(b, length, n, d), cache


__all__ = [
    "BlockDiagonalLinear",
    "CausalConv1D",
    "GatedMLP",
    "LayerCache",
    "RGLRU",
    "RMSNorm",
    "RecurrentBlock",
    "SSMBlock",
    "TRecViTBlock",
    "ViTBlock",
    "gelu_tanh",
    "linear_scan",
    "parallel_scan",
]
