"""TAPIR's networks: the feature network (ResNet v2 with instance norm), BootsTAPIR's extra conv blocks and the
refinement's temporal MLP-Mixer (google-deepmind/tapnet ``tapnet/torch/nets.py``), in plain PyTorch.

:class:`~pointtrack_cli.models.tapir.TAPIR` assembles them; the module and attribute names give the official
state-dict keys. Shapes: frames ``[B, 3, H, W]`` -> fine ``[B, 128, H/4, W/4]`` and coarse ``[B, 256, H/8, W/8]``
features; the mixer maps ``[M, T, in_dim]`` (M point tracks of T frames) -> ``[M, T, 388]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIRES_DIM = 128  # fine features, stride 4
LOWRES_DIM = 256  # coarse features, stride 8
MIXER_HIDDEN = 512
MIXER_BLOCKS = 12
MIXER_OUT = 4 + HIRES_DIM + LOWRES_DIM  # d position (2), d occlusion, d uncertainty, d feature

# --------------------------------------------------------------------------------------------------
# Feature network: ResNet v2 (instance norm) and the optional BootsTAPIR conv blocks


class _PreActBlock(nn.Module):
    """ResNet v2 block: ``x + conv(relu(IN(conv(relu(IN(x))))))``, shortcut a 1x1 conv when ``project``.

    The strided 3x3 conv pads 0 before / 2 after (the official port of JAX's "SAME"); stride 1 pads 1.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool) -> None:
        super().__init__()
        self.stride = stride
        self.bn_0 = nn.InstanceNorm2d(c_in, affine=True)
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0, bias=False)
        self.bn_1 = nn.InstanceNorm2d(c_out, affine=True)
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.proj_conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn_0(x))
        skip = x if self.proj_conv is None else self.proj_conv(act)
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 2, 0, 2)
        h = self.conv_0(F.pad(act, pad))
        h = self.conv_1(torch.relu(self.bn_1(h)))
        return h + skip


class _BlockGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [_PreActBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, project=i == 0)
             for i in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Per-frame ResNet: ``[k, 3, h, w]`` -> fine ``[k, 128, h/4, w/4]`` and coarse ``[k, 256, h/8, w/8]``.

    A 7x7 stride-2 conv (padding 2 before / 4 after), then 4 groups of 2 blocks with strides 1, 2, 2, 1 and
    64, 128, 256, 256 channels; the fine map is group 1's output, the coarse map group 3's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.initial_conv = nn.Conv2d(3, 64, 7, stride=2, padding=0, bias=False)
        widths, strides = (64, HIRES_DIM, 256, LOWRES_DIM), (1, 2, 2, 1)
        c_ins = (64,) + widths[:-1]
        self.block_groups = nn.ModuleList([_BlockGroup(ci, co, s) for ci, co, s in zip(c_ins, widths, strides)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.initial_conv(F.pad(x, (2, 4, 2, 4)))
        outs = []
        for group in self.block_groups:
            x = group(x)
            outs.append(x)
        return outs[1], outs[3]


class _ConvRefineBlock(nn.Module):
    """BootsTAPIR block on channels-last maps: ``y = LN(x); y + conv(gelu(conv(y)))`` (the skip starts after the norm)."""

    def __init__(self, dim: int = LOWRES_DIM, mult: int = 4) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim * mult, 3, padding=1)
        self.conv_1 = nn.Conv2d(dim * mult, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer_norm(x).permute(0, 3, 1, 2)
        y = y + self.conv_1(F.gelu(self.conv(y), approximate="tanh"))
        return y.permute(0, 2, 3, 1)


class ExtraConvs(nn.Module):
    """Five :class:`_ConvRefineBlock` on the coarse features ``[k, h, w, 256]`` (channels last)."""

    def __init__(self, num_blocks: int = 5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_ConvRefineBlock() for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------------
# Refinement network: MLP-Mixer whose token mixing is a depthwise temporal convolution


class _ChannelMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp2_up = nn.Linear(dim, 4 * dim)
        self.mlp2_down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp2_down(F.gelu(self.mlp2_up(x), approximate="tanh"))


class _TemporalMixerBlock(nn.Module):
    """``[M, T, C] -> [M, T, C]``: temporal mixing then channel mixing, each pre-normed and residual.

    Temporal mixing: two depthwise convolutions over time (kernel 3, zero padding), the first expanding every
    channel into 4, GELU between them; the 4 outputs of each channel are summed back into it.
    """

    def __init__(self, dim: int = MIXER_HIDDEN, kernel: int = 3) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, bias=False)
        self.mlp1_up = nn.Conv1d(dim, 4 * dim, kernel, padding=kernel // 2, groups=dim)
        self.mlp1_up_1 = nn.Conv1d(4 * dim, 4 * dim, kernel, padding=kernel // 2, groups=4 * dim)
        self.layer_norm_1 = nn.LayerNorm(dim, bias=False)
        self.conv_channels_mixer = _ChannelMLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, t, c = x.shape
        y = self.layer_norm(x).transpose(1, 2)  # [M, C, T]
        y = self.mlp1_up_1(F.gelu(self.mlp1_up(y), approximate="tanh"))  # [M, 4C, T], channel 4c + j from c
        y = y.reshape(m, c, 4, t).sum(dim=2).transpose(1, 2)
        x = x + y
        return x + self.conv_channels_mixer(self.layer_norm_1(x))


class Mixer(nn.Module):
    """``[M, T, in_dim] -> [M, T, 388]``: linear to 512, 12 :class:`_TemporalMixerBlock`, norm, linear."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, MIXER_HIDDEN)
        self.blocks = nn.ModuleList([_TemporalMixerBlock() for _ in range(MIXER_BLOCKS)])
        self.layer_norm = nn.LayerNorm(MIXER_HIDDEN, bias=False)
        self.linear_1 = nn.Linear(MIXER_HIDDEN, MIXER_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        for block in self.blocks:
            x = block(x)
        return self.linear_1(self.layer_norm(x))


__all__ = ["Encoder", "ExtraConvs", "Mixer", "HIRES_DIM", "LOWRES_DIM", "MIXER_HIDDEN", "MIXER_OUT"]
