"""CoTracker3 feature network (`fnet`), shared by RealTracker and the Track-On-R verifier.

Key names follow the official state dict (``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``conv2``, ``conv3``), so ``load_state_dict`` takes the checkpoint's ``fnet.*`` tensors directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    # No affine parameters and no running statistics: identical in train and eval. (group_norm with one group per
    # channel is faster on the CPU but moved the verifier's fixture intermediates past their 1e-4 tolerance.)
    return F.instance_norm(x, eps=1e-5)


def _norm_relu(x: torch.Tensor) -> torch.Tensor:
    # relu in place on the fresh normalised map: one allocation fewer (group_norm's backward needs its input only).
    return F.relu_(_instance_norm(x))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm; 1x1 strided shortcut when downsampling."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)
        # Keep the official index "downsample.0" for the shortcut conv; index 1 is the stateless norm.
        self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride)) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _norm_relu(self.conv1(x))
        y = _norm_relu(self.conv2(y))
        shortcut = x if self.downsample is None else _instance_norm(self.downsample(x))
        return F.relu_(shortcut + y)


class BasicEncoder(nn.Module):
    """Images ``[B, 3, H, W]`` (normalised to [-1, 1]) -> features ``[B, 128, H/4, W/4]``.

    The output is NOT L2-normalised; callers that need unit features normalise per pixel.
    """

    def __init__(self, input_dim: int = 3, output_dim: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, 64, 7, stride=2, padding=3)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, 1), ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, 2), ResidualBlock(96, 96, 1))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, 2), ResidualBlock(128, 128, 1))
        self.layer4 = nn.Sequential(ResidualBlock(128, 128, 2), ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(64 + 96 + 128 + 128, 256, 3, padding=1)
        self.conv3 = nn.Conv2d(256, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 4, x.shape[-1] // 4
        x = _norm_relu(self.conv1(x))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        # a is bilinearly *down*-sampled (align_corners=True), not pooled, as the official code does; b already has
        # the size (the official resize of b is the identity, exactly: skipped).
        feats = [f if tuple(f.shape[-2:]) == (h, w) else F.interpolate(f, size=(h, w), mode="bilinear", align_corners=True)
                 for f in (a, b, c, d)]
        x = _norm_relu(self.conv2(torch.cat(feats, dim=1)))
        return self.conv3(x)
