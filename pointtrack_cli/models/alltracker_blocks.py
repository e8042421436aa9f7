"""Building blocks of AllTracker (:mod:`pointtrack_cli.models.alltracker`), written in plain PyTorch.

* the ConvNeXt feature encoder (the first three stages of ConvNeXt-Tiny, the second downsampling
  replaced by a dilated 3x3 convolution so the output stays at stride 8);
* the refinement blocks of the update network: a ConvNeXt block over space (:class:`SpaceBlock`) and a
  transformer block over time at every pixel (:class:`TimeBlock`);
* the motion encoder and the update block that combine them.

Attribute names follow the official state-dict layout (``cnn.features.*``, ``update_block.*``), so the
released checkpoint loads with ``strict=True``. Stochastic depth is the identity at inference (the
official model is built with probability 0), so it has no module here. Nothing is downloaded: the
official constructor may fetch ImageNet ConvNeXt weights to initialise ``cnn``; ptrack always loads a
full AllTracker state dict instead.

Shapes: images ``[N, C, H, W]``; ``S`` is the number of frames of a window, and tensors of a window are
``[B * S, C, h, w]`` (frame-major within a batch element).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


class ChannelsLast(nn.Module):
    """``[N, C, H, W] -> [N, H, W, C]`` (a parameter-free slot of the official ``Sequential``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ChannelsFirst(nn.Module):
    """``[N, H, W, C] -> [N, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``[N, C, H, W]`` (eps 1e-6, affine)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class SpaceBlock(nn.Module):
    """ConvNeXt block ``[N, C, H, W] -> [N, C, H, W]``.

    ``x + layer_scale * Linear(GELU(Linear(LN(dwconv7x7(x)))))``, the linears acting on channels
    (``block`` = 0 depthwise conv, 1 to channels-last, 2 LayerNorm, 3 Linear C->4C, 4 GELU, 5 Linear
    4C->C, 6 back to channels-first). ``layer_scale`` has shape ``[C, 1, 1]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            ChannelsLast(),
            nn.LayerNorm(dim, eps=LN_EPS),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            ChannelsFirst(),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        return self.layer_scale * self.block(x) + x


class ConvNeXtEncoder(nn.Module):
    """Images ``[N, 3, H, W]`` (normalised) -> features ``[N, 384, H/8, W/8]``.

    ``features``: 0 stem (4x4 conv stride 4 + LayerNorm2d, 96 channels), 1 three blocks at 96,
    2 LayerNorm2d + 2x2 conv stride 2 (192 channels), 3 three blocks at 192, 4 LayerNorm2d + 3x3 conv with
    dilation 2 and padding 2 (384 channels, stride stays 8), 5 nine blocks at 384.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 96, kernel_size=4, stride=4), LayerNorm2d(96)),
            nn.Sequential(*[SpaceBlock(96) for _ in range(3)]),
            nn.Sequential(LayerNorm2d(96), nn.Conv2d(96, 192, kernel_size=2, stride=2)),
            nn.Sequential(*[SpaceBlock(192) for _ in range(3)]),
            nn.Sequential(LayerNorm2d(192), nn.Conv2d(192, 384, kernel_size=3, padding=2, dilation=2)),
            nn.Sequential(*[SpaceBlock(384) for _ in range(9)]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Attention(nn.Module):
    """Multi-head self-attention over ``[N, L, C]`` (``heads`` heads of ``C / heads`` channels, qkv bias)."""

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        k, v = self.to_kv(x).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # [N, L, C] -> [N, heads, L, C / heads]
            return t.reshape(n, length, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(n, length, c))


class Mlp(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))`` with hidden width ``4 * dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on ``[N, L, C]`` (LayerNorms without affine parameters, eps 1e-6)."""

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[-1:]
        x = x + self.attn(F.layer_norm(x, shape, eps=LN_EPS))
        return x + self.mlp(F.layer_norm(x, shape, eps=LN_EPS))


class TimeBlock(nn.Module):
    """Attention along time at every pixel: ``[B * S, C, h, w] -> [B * S, C, h, w]``.

    Each pixel's ``S`` feature vectors form a sequence; ``x + layer_scale * TransformerBlock(x)``,
    ``layer_scale`` of shape ``[C, 1]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = TransformerBlock(dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1), 1e-6))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bs, c, h, w = x.shape
        b = bs // frames
        seq = x.reshape(b, frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, frames, c)
        out = seq + self.layer_scale[:, 0] * self.block(seq)
        return out.reshape(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(bs, c, h, w)


class MotionEncoder(nn.Module):
    """Correlation ``[N, corr_channels, h, w]`` and flow ``[N, 2, h, w]`` -> motion features ``[N, dim, h, w]``.

    The last two output channels are the flow itself (``dim - 2`` learned channels, then the flow).
    """

    def __init__(self, corr_channels: int, dim: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 4 * dim, 1)
        self.convc2 = nn.Conv2d(4 * dim, dim + dim // 2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 2 * dim, 5, padding=2)
        self.convf2 = nn.Conv2d(2 * dim, dim // 2, 3, padding=1)
        self.conv = nn.Conv2d(2 * dim, dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([c, f], dim=1)))
        return torch.cat([out, flow], dim=1)


class UpdateBlock(nn.Module):
    """One refinement step's feature update: ``[B * S, dim, h, w]`` flow features -> new flow features.

    Inputs are concatenated (flow features, context features, motion features, vis/conf logits),
    compressed by a 1x1 convolution, refined by ``num_blocks`` pairs (time attention, space ConvNeXt
    block) and projected by a final 1x1 convolution.
    """

    def __init__(self, corr_channels: int, num_blocks: int, dim: int) -> None:
        super().__init__()
        self.motion_encoder = MotionEncoder(corr_channels, dim)
        self.compressor = nn.Conv2d(3 * dim + 2, dim, 1)
        blocks: list[nn.Module] = []
        for _ in range(num_blocks):
            blocks += [TimeBlock(dim), SpaceBlock(dim)]
        self.refine = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(dim, dim, 1)

    def forward(
        self,
        flowfeat: torch.Tensor,
        ctxfeat: torch.Tensor,
        visconf: torch.Tensor,
        corr: torch.Tensor,
        flow: torch.Tensor,
        frames: int,
    ) -> torch.Tensor:
        motion = self.motion_encoder(flow, corr)
        x = self.compressor(torch.cat([flowfeat, ctxfeat, motion, visconf], dim=1))
        for blk in self.refine:
            x = blk(x, frames)
        return self.final_conv(x)
