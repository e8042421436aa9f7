"""AllTracker in plain PyTorch: dense long-range point tracking as multi-frame optical flow.

The network of aharley/alltracker (``nets/alltracker.py``, released configuration ``Net(16)``: ConvNeXt
features, correlation over 5 levels with radius 4, 3 time/space refinement pairs, 128 channels),
as copied into gorkaydemir/track_on ``ensemble/alltracker/``. Blocks: :mod:`.alltracker_blocks`.

What it computes. Every frame of a clip is compared with its first frame (the *anchor*): for every
pixel of the anchor the model predicts where it is in each frame (a flow ``[2, H, W]`` in pixels) and
two logits, visibility and confidence (``visconf``). The clip is processed in windows of ``S = 16``
frames with step 8; each window refines the flows at 1/8 resolution ``iters`` times (correlation
lookup around the current estimate, motion encoder, time attention at every pixel, space ConvNeXt
blocks, flow / visconf heads) and upsamples them to full resolution with learned convex 3x3 weights
(the visconf logits go through the same upsampling, including its factor 8, then a sigmoid). A window
starts from the previous window's 1/8 estimates (the frames they share; the newer frames start from
the last shared one).

Two ways of walking the windows, both from the official code:

* :meth:`AllTracker.forward` (official ``Net.forward``): a frame's output comes from the **last** window
  that contains it; the features of the whole (padded) clip are the official's, computed per window here.
* ``sliding=True`` (official ``Net.forward_sliding``, used by the wrapper beyond 128 frames): a frame's
  output comes from the **first** window that contains it.

Both pad the clip to ``start + S`` frames by repeating its last frame, and the images to multiples of 64
pixels (replicate padding, split evenly as the official ``InputPadder``); outputs are cropped back. A clip
of 2 frames is a single flow computation (``S = 1``, time embedding row 1), as in the official code.

Shapes: video ``[T, 3, H, W]`` float RGB 0..255 at the model resolution; flows ``[T, 2, H, W]`` pixels
(x, y) relative to each pixel's anchor position; visconf ``[T, 2, H, W]`` probabilities (visibility,
confidence). State-dict keys are the official ones (``cnn.features.*``, ``dot_conv``, ``update_block.*``,
``flow_head``, ``visconf_head``, ``upsample_weight``, buffer ``time_emb``).

Resolutions: the correlation pyramid halves the padded 1/8 feature map ``corr_levels`` times, so the
padded image must be at least ``8 * 2**corr_levels`` pixels on each side (256 for the released model,
i.e. frames of 193 pixels or more are padded to 256); smaller ones raise :class:`PtrackError`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PtrackError
from ..weights.state_dict import check_state_dict
from .alltracker_blocks import ConvNeXtEncoder, UpdateBlock

SEQLEN = 16
CORR_LEVELS = 5
CORR_RADIUS = 4
NUM_BLOCKS = 3
DIM = 128
PAD_MULTIPLE = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Geometry helpers


def input_padding(h: int, w: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding to the next multiple of 64, split evenly."""
    ph = (-h) % PAD_MULTIPLE
    pw = (-w) % PAD_MULTIPLE
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def window_starts(num_frames: int, seqlen: int) -> list[int]:
    """Start frames of the windows over a clip of ``num_frames`` > 2 frames (step ``seqlen // 2``).

    The last window may run past the clip; the clip is padded to ``starts[-1] + seqlen`` frames.
    """
    step = seqlen // 2
    starts, start = [], 0
    while start + seqlen < num_frames:
        starts.append(start)
        start += step
    starts.append(start)
    return starts


def check_resolution(h: int, w: int, corr_levels: int = CORR_LEVELS) -> None:
    """Raise :class:`PtrackError` if frames ``h x w`` are too small: the padded 1/8 feature map must survive
    ``corr_levels`` halvings (the official code pools once per level, the last result unused)."""
    l, r, t, b = input_padding(h, w)
    if min((h + t + b) // 8 >> corr_levels, (w + l + r) // 8 >> corr_levels) < 1:
        side = 8 * 2**corr_levels
        raise PtrackError(
            f"AllTracker cannot run at {h}x{w}: frames are padded to multiples of 64 and need at least {side} pixels "
            f"a side after padding, i.e. {side - PAD_MULTIPLE + 1} or more (use --resolution 384x512, the default)"
        )


def coords_grid(n: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[n, 2, h, w]`` pixel coordinates (x, y)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys])[None].repeat(n, 1, 1, 1)


def sincos_time_embedding(dim: int, length: int) -> torch.Tensor:
    """``[1, length, dim]`` float32: ``[sin(t w_k) | cos(t w_k)]``, ``w_k = 10000^(-2k/dim)`` (float64, then cast)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[None].float()


# --------------------------------------------------------------------------------------------------
# Correlation


class CorrelationPyramid:
    """All-pairs correlation of an anchor feature map with each frame of a window, at several scales.

    Level ``i`` correlates the anchor's features ``[M, C, h, w]`` with the frame features average-pooled
    ``i`` times by 2 (floor sizes): volumes ``[M * h * w, 1, h_i, w_i]``, scaled by ``1 / sqrt(C)``.
    """

    def __init__(self, anchor: torch.Tensor, frames: torch.Tensor, levels: int, radius: int) -> None:
        m, c, h, w = anchor.shape
        self.radius = radius
        self.volumes = []
        scale = torch.sqrt(torch.tensor(c).float())
        a = anchor.reshape(m, c, h * w).transpose(1, 2)  # [M, h*w, C]
        f = frames
        for i in range(levels):
            if i > 0:
                f = F.adaptive_avg_pool2d(f, (f.shape[-2] // 2, f.shape[-1] // 2))
            hi, wi = f.shape[-2:]
            corr = (a @ f.reshape(m, c, hi * wi)) / scale  # [M, h*w, h_i*w_i]
            self.volumes.append(corr.reshape(m * h * w, 1, hi, wi))

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlations around ``coords`` ``[M, 2, h, w]`` (x, y at level 0) -> ``[M, levels * (2r+1)^2, h, w]``.

        Each level samples a ``(2r+1) x (2r+1)`` window around ``coords / 2**i`` (bilinear, pixel centres
        at integers, border values outside). Channel order within a level: x offset major, y offset minor
        (the official window is transposed with respect to image layout).
        """
        r = self.radius
        m, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(m * h * w, 1, 1, 2)
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        # offset[a, b] = (dx, dy) = (d[a], d[b]): the first window axis moves x
        offset = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)[None]
        out = []
        for i, vol in enumerate(self.volumes):
            hi, wi = vol.shape[-2:]
            pos = centre / 2**i + offset
            norm = torch.tensor([2 / max(wi - 1, 1), 2 / max(hi - 1, 1)], device=coords.device)
            grid = pos * norm - 1
            sampled = F.grid_sample(vol, grid.to(vol.dtype), mode="bilinear", padding_mode="border", align_corners=True)
            out.append(sampled.reshape(m, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def convex_upsample(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[N, 2, h, w]`` at 1/8 resolution -> ``[N, 2, 8h, 8w]``: each full-resolution pixel is a softmax-
    weighted combination of ``8 * x`` over the 3x3 neighbourhood (zero outside) of its coarse pixel.

    ``weights`` ``[N, 9 * 64, h, w]`` (neighbour-major, then the 8x8 sub-pixel position, row-major).
    """
    n, c, h, w = x.shape
    mask = torch.softmax(weights.reshape(n, 1, 9, 8, 8, h, w), dim=2)
    patches = F.unfold(8 * x, [3, 3], padding=1).reshape(n, c, 9, 1, 1, h, w)
    up = (mask * patches).sum(dim=2)  # [N, C, 8, 8, h, w]
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, c, 8 * h, 8 * w).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# The network


class AllTracker(nn.Module):
    """The AllTracker network (official ``Net`` with ``use_attn=True``, ConvNeXt features).

    Args:
        seqlen: window length ``S`` (released: 16); the ``time_emb`` buffer has ``S`` rows.
        corr_levels, corr_radius: correlation pyramid (released: 5 levels, radius 4).
        num_blocks: (time attention, space block) pairs in the update block (released: 3).
        dim: feature width (released: 128); the feature encoder outputs ``2 * dim`` channels, split into
            the flow features (updated every iteration) and the context features.
    """

    def __init__(
        self,
        seqlen: int = SEQLEN,
        corr_levels: int = CORR_LEVELS,
        corr_radius: int = CORR_RADIUS,
        num_blocks: int = NUM_BLOCKS,
        dim: int = DIM,
    ) -> None:
        super().__init__()
        self.seqlen, self.corr_levels, self.corr_radius, self.dim = seqlen, corr_levels, corr_radius, dim
        corr_channels = corr_levels * (2 * corr_radius + 1) ** 2
        self.cnn = ConvNeXtEncoder()
        self.dot_conv = nn.Conv2d(384, 2 * dim, 1)
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2 * dim, 64 * 9, 1)
        )
        self.flow_head = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2 * dim, 2, 3, padding=1)
        )
        self.visconf_head = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2 * dim, 2, 3, padding=1)
        )
        self.update_block = UpdateBlock(corr_channels, num_blocks, dim)
        self.register_buffer("time_emb", sincos_time_embedding(dim, seqlen))

    # ---- pieces -----------------------------------------------------------------------------------

    def check_resolution(self, h: int, w: int) -> None:
        """Raise :class:`PtrackError` if frames ``h x w`` are too small for the correlation pyramid."""
        check_resolution(h, w, self.corr_levels)

    def normalise(self, video: torch.Tensor) -> torch.Tensor:
        """``[T, 3, H, W]`` 0..255 -> ImageNet-normalised and padded ``[T, 3, H_pad, W_pad]``."""
        mean = torch.tensor(IMAGENET_MEAN, device=video.device).reshape(1, 3, 1, 1).to(video.dtype)
        std = torch.tensor(IMAGENET_STD, device=video.device).reshape(1, 3, 1, 1).to(video.dtype)
        x = (video / 255.0 - mean) / std
        return F.pad(x, list(input_padding(*x.shape[-2:])), mode="replicate")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised padded images ``[N, 3, H_pad, W_pad]`` -> features ``[N, 2 * dim, H_pad/8, W_pad/8]``."""
        return self.dot_conv(self.cnn(images))

    def time_embedding(self, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """``[frames, dim]``: the ``time_emb`` rows (the official 2-frame mode uses row 1)."""
        if frames == self.time_emb.shape[1]:
            return self.time_emb[0].to(dtype)
        if frames == 1:
            return self.time_emb[0, 1:2].to(dtype)
        raise ValueError(f"windows have {self.time_emb.shape[1]} frames (or 1), got {frames}")

    def refine_window(
        self,
        anchor: torch.Tensor,
        frames: torch.Tensor,
        flows8: torch.Tensor,
        visconf8: torch.Tensor,
        iters: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refine one window (official ``forward_window``).

        anchor ``[2 * dim, h, w]``, frames ``[S, 2 * dim, h, w]`` features; flows8 / visconf8 ``[S, 2, h, w]``
        initial flows (in feature pixels, i.e. 1/8 resolution) and visconf logits.
        Returns the refined ``flows8``, ``visconf8`` and the full-resolution (padded) flow ``[S, 2, 8h, 8w]``
        in pixels and visconf logits ``[S, 2, 8h, 8w]`` of the last iteration.
        """
        s, _, h, w = frames.shape
        dtype = frames.dtype
        anchor_s = anchor[None].expand(s, -1, -1, -1).contiguous()
        corr = CorrelationPyramid(anchor_s, frames.contiguous(), self.corr_levels, self.corr_radius)
        coords0 = coords_grid(s, h, w, frames.device, dtype)
        flowfeat, ctxfeat = torch.split(anchor_s, [self.dim, self.dim], dim=1)
        ctxfeat = ctxfeat + self.time_embedding(s, ctxfeat.dtype)[:, :, None, None]
        weights = None
        for _ in range(iters):
            corr_feats = corr.lookup(coords0 + flows8).to(dtype)
            flowfeat = self.update_block(flowfeat, ctxfeat, visconf8, corr_feats, flows8, s)
            flows8 = flows8 + self.flow_head(flowfeat)
            visconf8 = visconf8 + self.visconf_head(flowfeat)
            weights = 0.25 * self.upsample_weight(flowfeat)
        assert weights is not None, "iters must be at least 1"
        return flows8, visconf8, convex_upsample(flows8, weights), convex_upsample(visconf8, weights)

    # ---- whole clips ------------------------------------------------------------------------------

    def forward(
        self,
        video: torch.Tensor,
        iters: int = 4,
        sliding: bool = False,
        pixels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Track every pixel of ``video[0]`` through ``video`` ``[T, 3, H, W]`` (0..255, T >= 2).

        ``sliding``: official ``forward_sliding`` (first window wins) instead of ``forward`` (last wins).
        ``pixels``: optional ``[K, 2]`` long (x, y) anchor pixels; then only those are returned.
        Returns flow ``[T', 2, H, W]`` (pixels) and visconf ``[T', 2, H, W]`` probabilities, or
        ``[T', K, 2]`` each with ``pixels``. ``T' = T`` for T > 2; for T = 2 the single flow to frame 1
        (``T' = 1``), as the official model returns it.
        """
        t, _, h, w = video.shape

        def encode(idx: list[int]) -> torch.Tensor:
            return self.encode(self.normalise(video[idx]))

        return self.track_clip(encode, t, (h, w), iters, sliding, pixels)

    def track_clip(
        self,
        encode: Callable[[list[int]], torch.Tensor],
        num_frames: int,
        hw: tuple[int, int],
        iters: int = 4,
        sliding: bool = False,
        pixels: torch.Tensor | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the frames given by ``encode(frame indices) -> features [n, 2 * dim, h8, w8]``
        (e.g. :meth:`encode` of :meth:`normalise` of the frames, computed lazily or cached by the caller).

        Each frame is encoded once; the temporal padding (the last frame repeated) is not re-encoded.
        ``progress(k)`` is called when ``k`` more frames of the clip are done (``num_frames`` in all).
        Flows and visconf logits are kept in float32 (float64 for float64 features), as the official
        code keeps them in the dtype of its input frames.
        """
        t, (h, w) = num_frames, hw
        if t < 2:
            raise ValueError("AllTracker needs at least 2 frames")
        if iters < 1:
            raise ValueError("iters must be at least 1")
        self.check_resolution(h, w)
        pad_l, _, pad_t, _ = input_padding(h, w)

        def read(maps: torch.Tensor) -> torch.Tensor:  # [n, 2, H_pad, W_pad] -> cropped maps or pixel values
            maps = maps[..., pad_t : pad_t + h, pad_l : pad_l + w]
            if pixels is None:
                return maps
            return maps[:, :, pixels[:, 1], pixels[:, 0]].transpose(1, 2)

        def features(idx: list[int]) -> torch.Tensor:  # frames past the clip repeat its last frame
            idx = [min(i, t - 1) for i in idx]
            unique = sorted(set(idx))
            feats = encode(unique)
            return feats[[unique.index(i) for i in idx]]

        anchor = features([0])[0]
        _, hh, ww = anchor.shape
        state = torch.promote_types(anchor.dtype, torch.float32)
        if t == 2:
            zeros = anchor.new_zeros((1, 2, hh, ww), dtype=state)
            _, _, flow, visconf = self.refine_window(anchor, features([1]), zeros, zeros, iters)
            if progress is not None:
                progress(2)
            return read(flow).to(state), read(torch.sigmoid(visconf)).to(state)

        s, step = self.seqlen, self.seqlen // 2
        out_shape = (t, 2, h, w) if pixels is None else (t, len(pixels), 2)
        flows_out = anchor.new_zeros(out_shape, dtype=state)
        visconf_out = anchor.new_zeros(out_shape, dtype=state)
        feats = anchor.new_zeros((0,))  # features of the current window's frames [S, 2*dim, h8, w8]
        flows8 = anchor.new_zeros((s, 2, hh, ww), dtype=state)
        visconf8 = anchor.new_zeros((s, 2, hh, ww), dtype=state)
        done = 0
        starts = window_starts(t, s)
        for k, start in enumerate(starts):
            if k == 0:  # frame 0 is the anchor
                feats = torch.cat([anchor[None], features(list(range(1, s)))])
            else:
                feats = torch.cat([feats[step:], features(list(range(start + s - step, start + s)))])
                # shared frames keep their estimates, new frames start from the last shared one
                flows8 = torch.cat([flows8[step:], flows8[-1:].expand(step, -1, -1, -1)])
                visconf8 = torch.cat([visconf8[step:], visconf8[-1:].expand(step, -1, -1, -1)])
            flows8, visconf8, flow, visconf = self.refine_window(anchor, feats, flows8, visconf8, iters)
            first = 0 if (k == 0 or not sliding) else s - step  # sliding: only frames no window wrote yet
            lo, hi = start + first, min(start + s, t)
            if hi > lo:
                flows_out[lo:hi] = read(flow[first : first + hi - lo])
                visconf_out[lo:hi] = read(torch.sigmoid(visconf[first : first + hi - lo]))
            # frames no later window touches are final (forward: before the next window's start)
            final = t if k == len(starts) - 1 else min(t, start + step)
            if progress is not None and final > done:
                progress(final - done)
                done = final
        return flows_out, visconf_out


# --------------------------------------------------------------------------------------------------
# Loading


def expected_shapes(
    seqlen: int = SEQLEN,
    corr_levels: int = CORR_LEVELS,
    corr_radius: int = CORR_RADIUS,
    num_blocks: int = NUM_BLOCKS,
    dim: int = DIM,
) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the official state dict for this configuration (released: 236 keys)."""
    model = AllTracker(seqlen, corr_levels, corr_radius, num_blocks, dim)  # ~0.2 s on CPU (meta is slower)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_alltracker(state_dict: Mapping[str, torch.Tensor], source: str, **config) -> AllTracker:
    """Build :class:`AllTracker` (``config``: the constructor's keywords) and load an official state dict.

    Accepts the released file's ``{"model": state_dict}`` wrapper. Raises :class:`PtrackError` naming the
    problem and the fix when the keys or shapes do not match.
    """
    sd = state_dict
    if "model" in sd and not isinstance(sd["model"], torch.Tensor):
        sd = sd["model"]
    sd = {str(k): v for k, v in sd.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model = AllTracker(**config)
    check_state_dict(sd, {k: tuple(v.shape) for k, v in model.state_dict().items()}, source, "AllTracker")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.eval()


__all__ = ["AllTracker", "check_resolution", "expected_shapes", "input_padding", "load_alltracker", "window_starts"]
