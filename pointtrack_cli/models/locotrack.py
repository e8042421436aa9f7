"""LocoTrack ("Local All-Pair Correspondence for Point Tracking", Cho et al., ECCV 2024) in plain PyTorch.

The network of cvlab-kaist/locotrack ``locotrack_pytorch/models`` (identical in gorkaydemir/track_on
``ensemble/locotrack/``), written from scratch with the same arithmetic and the official state-dict names
(``resnet_torch.*``, ``torch_pips_mixer.*``, ``cmdtop.{0,1,2}.*``, ``cost_conv.*``, ``occ_linear.*``).
Sizes: ``base`` (LocoTrack-B, the released teachers) and ``small`` (LocoTrack-S).

How it tracks (one clip, batch 1, all frames at once; points are independent of each other):

1. Features: every frame (``[-1, 1]`` RGB at the working resolution ``h x w``, multiples of 8) through a
   ResNet, L2-normalised per pixel: "highest" ``[T, h/2, w/2, 64]``, "hires" ``[T, h/4, w/4, 128]``,
   "lowres" ``[T, h/8, w/8, 256]``. These are kept for the whole clip.
2. Query features: bilinear samples of each level at the query's frame in a 7x7 neighbourhood (support).
3. Initialisation: the correlation of the query feature with every pixel of every frame (lowres upsampled to
   hires, stacked with hires, a 3x3 conv), a softmax (temperature 20) and a soft-argmax within 5 hires pixels
   of the peak; occlusion / uncertainty logits from the mean / max / min of the correlations.
4. Refinement (``num_pips_iter`` times): around the current estimate, 7x7 neighbourhoods of each level are
   correlated with the 7x7 query support (a 4-D correlation per frame), embedded by CMDTop, concatenated with
   the logits and a Fourier encoding of the motion to the neighbouring frames, and a transformer over time
   (ALiBi attention) predicts updates of position, logits and a 384-channel state.

Coordinates: points are (x, y) pixels in tapnet's corner convention (pixel i covers [i, i + 1)), so a feature
map of ``g`` cells over ``s`` pixels samples position ``p`` at cell ``p * g / s - 0.5``. Internally the network
works in the frame of ``initial_resolution`` (256x256 for the released models) whatever the working
resolution; outputs are in pixels of the working resolution.

Shapes: video ``[T, h, w, 3]``; query points ``[N, 3]`` rows ``(t, y, x)`` (working-resolution pixels);
outputs ``tracks [N, T, 2]`` (x, y), ``occlusion`` and ``expected_dist`` logits ``[N, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PtrackError
from ..weights.state_dict import check_state_dict
from .locotrack_blocks import CMDTop, PipsTransformer, ResNet, SameConv2d

SIZES = {
    "base": {"dim": 384, "heads": 6, "layers": 3, "cmd_channels": (64, 128, 128), "cmd_kernels": (3, 3, 2), "cmd_strides": (2, 2, 2)},
    "small": {"dim": 256, "heads": 4, "layers": 3, "cmd_channels": (64, 128), "cmd_kernels": (5, 2), "cmd_strides": (4, 2)},
}
HIRES_DIM, LOWRES_DIM = 128, 256
SUPPORT = 7  # support / neighbourhood side
SOFTMAX_TEMPERATURE = 20.0
ARGMAX_RADIUS = 5.0  # soft-argmax window, hires cells
MIXER_IN = 2 + 3 * 256 + 84  # occlusion, expected_dist, 3 CMDTop embeddings, motion encoding


@dataclass
class Features:
    """L2-normalised feature maps of the whole clip, channels last: ``[T, h/2, w/2, 64]``, ``[T, h/4, w/4, 128]``,
    ``[T, h/8, w/8, 256]`` for working resolution ``hw``."""

    highest: torch.Tensor
    hires: torch.Tensor
    lowres: torch.Tensor
    hw: tuple[int, int]


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(torch.clamp(torch.sum(x * x, dim=-1, keepdim=True), min=1e-12))


def _scale(xy: torch.Tensor, to_wh: tuple[int, int], from_wh: tuple[int, int]) -> torch.Tensor:
    """``xy * to / from`` per axis (the official ``convert_grid_coordinates``; multiply first, then divide)."""
    to = torch.tensor(to_wh, device=xy.device)
    frm = torch.tensor(from_wh, device=xy.device)
    return xy * to / frm


def posenc(x: torch.Tensor, max_deg: int = 10) -> torch.Tensor:
    """``[..., D] -> [..., D + 2 D max_deg]``: ``[x | sin(u) | sin(u + pi/2)]``, ``u[D k + j] = x[j] 2^k``."""
    scales = torch.tensor([2.0**i for i in range(max_deg)], dtype=x.dtype, device=x.device)
    xb = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    return torch.cat([x, torch.sin(torch.cat([xb, xb + 0.5 * torch.pi], dim=-1))], dim=-1)


def sample_frames(grid: torch.Tensor, tyx: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``grid [T, h, w, C]`` at ``tyx [M, 3]`` (frame, cell-corner y, x) -> ``[M, C]``.

    Frame ``t`` is read at index ``t`` (integer query frames hit one frame), ``y, x`` at cell ``y - 0.5``,
    ``x - 0.5``; positions outside the map read the border cells.
    """
    t, h, w, _ = grid.shape
    vol = grid.permute(3, 0, 1, 2)[None]  # [1, C, T, h, w]
    p = tyx.to(grid.dtype).clone()
    p[:, 0] = p[:, 0] + 0.5
    p = 2 * (p / torch.tensor([t, h, w], device=p.device)) - 1
    p = torch.flip(p, dims=(-1,))[None, :, None, None, :]  # [1, M, 1, 1, (x, y, t)]
    out = F.grid_sample(vol, p, mode="bilinear", align_corners=False, padding_mode="border")
    return out[0, :, :, 0, 0].transpose(0, 1)


def sample_neighbourhoods(grid: torch.Tensor, yx: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of each frame of ``grid [T, h, w, C]`` at ``yx [N, T, S, 2]`` -> ``[N, T, S, C]``.

    Cell-corner convention as :func:`sample_frames`; positions outside the map read zeros.
    """
    t, h, w, c = grid.shape
    n, _, s, _ = yx.shape
    maps = grid.permute(0, 3, 1, 2)  # [T, C, h, w]
    p = 2 * (yx.permute(1, 0, 2, 3) / torch.tensor([h, w], device=yx.device)) - 1
    p = torch.flip(p, dims=(-1,)).to(grid.dtype)  # [T, N, S, (x, y)]
    out = F.grid_sample(maps, p, mode="bilinear", align_corners=False, padding_mode="zeros")  # [T, C, N, S]
    return out.permute(2, 0, 3, 1)


def _offsets(device: torch.device) -> torch.Tensor:
    """``[49, 2]`` (dy, dx) of the 7x7 support, dy-major: row ``k = 7 (dy + 3) + (dx + 3)``."""
    d = torch.arange(-(SUPPORT // 2), SUPPORT // 2 + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dy, dx], dim=-1).reshape(-1, 2)


class LocoTrack(nn.Module):
    """LocoTrack network (see the module docstring); :meth:`forward` tracks one clip.

    ``initial_resolution`` (h, w): the internal coordinate frame (256x256 for the released weights);
    ``frame_chunk``: frames per ResNet call (instance norm is per frame, so it does not change results).
    """

    def __init__(self, model_size: str = "base", num_pips_iter: int = 4, initial_resolution: tuple[int, int] = (256, 256),
                 frame_chunk: int = 8) -> None:
        super().__init__()
        if model_size not in SIZES:
            raise ValueError(f"unknown LocoTrack size {model_size!r} (base or small)")
        cfg = SIZES[model_size]
        self.model_size = model_size
        self.num_pips_iter = num_pips_iter
        self.initial_resolution = tuple(initial_resolution)
        self.frame_chunk = frame_chunk
        self.resnet_torch = ResNet()
        self.torch_pips_mixer = PipsTransformer(MIXER_IN, 4 + HIRES_DIM + LOWRES_DIM, cfg["dim"], cfg["heads"], cfg["layers"])
        self.cmdtop = nn.ModuleList([CMDTop(cfg["cmd_channels"], cfg["cmd_kernels"], cfg["cmd_strides"]) for _ in range(3)])
        self.cost_conv = SameConv2d(2, 1, 3, 1)
        self.occ_linear = nn.Linear(6, 2)

    # ---------------------------------------------------------------------------------------- features

    def features(self, video: torch.Tensor, progress: Callable[[int], None] | None = None) -> Features:
        """``video [T, h, w, 3]`` in [-1, 1] (h, w multiples of 8) -> :class:`Features`."""
        t, h, w, _ = video.shape
        if h % 8 or w % 8:
            raise ValueError(f"LocoTrack needs a resolution that is a multiple of 8, got {h}x{w}")
        levels: list[list[torch.Tensor]] = [[], [], []]
        for s in range(0, t, self.frame_chunk):
            chunk = video[s : s + self.frame_chunk].permute(0, 3, 1, 2)
            for out, fmap in zip(levels, self.resnet_torch(chunk)):
                out.append(_l2_normalise(fmap.permute(0, 2, 3, 1)))
            if progress is not None:
                progress(chunk.shape[0])
        highest, hires, lowres = (torch.cat(x, dim=0) for x in levels)
        return Features(highest, hires, lowres, (h, w))

    def query_support(self, feats: Features, queries: torch.Tensor, num_frames: int) -> list[torch.Tensor]:
        """Support features ``[N, 7, 7, C]`` (dy, dx) of levels hires, lowres, highest around ``queries [N, 3]`` (t, y, x)."""
        h, w = feats.hw
        offsets = torch.cat([torch.zeros(SUPPORT * SUPPORT, 1, dtype=torch.long, device=queries.device), _offsets(queries.device)], dim=1)
        out = []
        for grid in (feats.hires, feats.lowres, feats.highest):
            pos = queries * torch.tensor(grid.shape[:3], device=queries.device) / torch.tensor([num_frames, h, w], device=queries.device)
            pts = (pos[:, None, :] + offsets[None]).reshape(-1, 3)
            out.append(sample_frames(grid, pts).reshape(len(queries), SUPPORT, SUPPORT, -1))
        return out

    # ------------------------------------------------------------------------------- initial estimate

    def initial_estimate(self, q_lowres: torch.Tensor, q_hires: torch.Tensor, feats: Features,
                         queries_init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cost-volume estimate from query features ``[N, 256]``, ``[N, 128]``.

        ``queries_init [N, 3]`` (t, y, x) in ``initial_resolution`` pixels: the point is put exactly on the
        query at its own frame. Returns points ``[N, T, 2]`` (x, y, initial-resolution pixels), occlusion and
        expected_dist logits ``[N, T]``.
        """
        t = feats.lowres.shape[0]
        n = q_lowres.shape[0]
        cost_lo = torch.einsum("nc,thwc->tnhw", q_lowres, feats.lowres)
        cost_hi = torch.einsum("nc,thwc->tnhw", q_hires, feats.hires)
        gh, gw = cost_hi.shape[-2:]
        up = F.interpolate(cost_lo.reshape(t * n, 1, *cost_lo.shape[-2:]), size=(gh, gw), mode="bilinear", align_corners=False)
        stack = torch.stack([up.reshape(t, n, gh, gw), cost_hi], dim=-1)  # [T, N, gh, gw, 2]
        logits = self.cost_conv(stack.reshape(t * n, gh, gw, 2).permute(0, 3, 1, 2))  # [T*N, 1, gh, gw]
        logits = logits.reshape(t, n, gh * gw).transpose(0, 1)  # [N, T, gh*gw]
        heat = F.softmax(logits * SOFTMAX_TEMPERATURE, dim=-1).reshape(n, t, gh, gw)
        points = _scale(self._soft_argmax(heat), self.initial_resolution[::-1], (gw, gh))
        # the query frame holds the query itself
        frame = torch.round((queries_init[:, 0:1] * t / t))  # [N, 1]
        on_query = (frame == torch.arange(t, device=frame.device)[None, :])[..., None]
        points = points * ~on_query + torch.flip(queries_init[:, None, :], dims=(-1,))[..., 0:2] * on_query
        stats = torch.cat([stack.mean(dim=(-2, -3)), stack.amax(dim=(-2, -3)), stack.amin(dim=(-2, -3))], dim=-1)
        logit = self.occ_linear(stats)  # [T, N, 2]
        return points, logit[..., 0].transpose(0, 1), logit[..., 1].transpose(0, 1)

    @staticmethod
    def _soft_argmax(heat: torch.Tensor) -> torch.Tensor:
        """``heat [N, T, gh, gw]`` -> ``[N, T, 2]`` (x, y cell corners): mean of the cell centres within
        ``ARGMAX_RADIUS`` cells of the peak, weighted by the heatmap."""
        n, t, gh, gw = heat.shape
        yy, xx = torch.meshgrid(torch.arange(gh, device=heat.device), torch.arange(gw, device=heat.device), indexing="ij")
        centres = torch.stack([xx + 0.5, yy + 0.5], dim=-1)  # [gh, gw, 2]
        peak = centres.reshape(-1, 2)[torch.argmax(heat.reshape(n, t, -1), dim=-1)]  # [N, T, 2]
        near = torch.sum(torch.square(centres[None, None] - peak[:, :, None, None, :]), dim=-1, keepdim=True) < ARGMAX_RADIUS**2
        weighted = torch.sum(centres[None, None] * near * heat[..., None], dim=(2, 3))
        total = torch.clamp(torch.sum(near * heat[..., None], dim=(2, 3)), min=1e-12)
        return weighted / total

    # ------------------------------------------------------------------------------------- refinement

    def refine(self, points: torch.Tensor, occ: torch.Tensor, expd: torch.Tensor, state: torch.Tensor | None,
               q_feats: list[torch.Tensor], support: list[torch.Tensor], feats: Features
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One PIPs iteration. ``points [N, T, 2]`` (x, y, initial-resolution pixels), ``occ``, ``expd [N, T]``,
        ``state [N, T, 384]`` (None on the first iteration: the query's hires and lowres features are used).
        ``q_feats`` / ``support``: hires, lowres, highest query features ``[N, C]`` / ``[N, 7, 7, C]``.
        Returns the updated points, occ, expd and state."""
        ih, iw = self.initial_resolution
        rh, rw = feats.hw
        n, t, _ = points.shape
        embeddings = []
        for level, (grid, supp) in enumerate(zip((feats.hires, feats.lowres, feats.highest), support)):
            yx = torch.flip(_scale(points, (grid.shape[2], grid.shape[1]), (iw, ih)), dims=(-1,))
            around = yx[:, :, None, :] + _offsets(points.device)[None, None]  # [N, T, 49, 2]
            hood = sample_neighbourhoods(grid, around)  # [N, T, 49, C]
            corr = torch.einsum("ntsc,nqc->ntsq", hood, supp.reshape(n, SUPPORT * SUPPORT, -1))
            corr = corr.reshape(n * t, SUPPORT, SUPPORT, SUPPORT, SUPPORT)
            embeddings.append(self.cmdtop[level](corr).reshape(n, t, -1))
        if state is None:
            state = torch.cat([q_feats[0], q_feats[1]], dim=-1)[:, None, :].expand(n, t, -1)
        fwd = F.pad(points[:, :-1] - points[:, 1:], (0, 0, 0, 1))  # p_t - p_{t+1}, 0 at the last frame
        bwd = F.pad(points[:, 1:] - points[:, :-1], (0, 0, 1, 0))  # p_t - p_{t-1}, 0 at the first frame
        dt = points.dtype
        scale = (torch.tensor([rw / iw, rh / ih], dtype=dt) / torch.tensor([iw, ih], dtype=dt)).to(points.device)
        motion = posenc(torch.cat([fwd * scale, bwd * scale], dim=-1))
        x = torch.cat([occ[..., None], expd[..., None], *embeddings, motion], dim=-1)
        res = self.torch_pips_mixer(x)
        step = _scale(res[..., :2], (iw, ih), (rw, rh))
        return step + points, res[..., 2] + occ, res[..., 3] + expd, res[..., 4:] + state

    # ---------------------------------------------------------------------------------------- forward

    def track(self, feats: Features, queries: torch.Tensor, iters: int | None = None) -> dict[str, torch.Tensor]:
        """Track ``queries [N, 3]`` (t, y, x working-resolution pixels) through precomputed ``feats``.

        ``iters`` refinement iterations (default ``num_pips_iter``; the official model runs ``num_pips_iter``).
        Returns ``tracks [N, T, 2]`` (x, y working-resolution pixels), ``occlusion``, ``expected_dist`` ``[N, T]``
        (logits of the last iteration: the official output averages iterations ``p, 2p, ...`` of its
        ``p = num_pips_iter`` iterations, which is the last one).
        """
        iters = self.num_pips_iter if iters is None else iters
        t = feats.lowres.shape[0]
        h, w = feats.hw
        ih, iw = self.initial_resolution
        queries = queries.to(feats.lowres.dtype)
        support = self.query_support(feats, queries, t)
        q_feats = [s[:, SUPPORT // 2, SUPPORT // 2] for s in support]
        queries_init = queries * torch.tensor([t, ih, iw], device=queries.device) / torch.tensor([t, h, w], device=queries.device)
        points, occ, expd = self.initial_estimate(q_feats[1], q_feats[0], feats, queries_init)
        state = None
        for _ in range(iters):
            points, occ, expd, state = self.refine(points, occ, expd, state, q_feats, support, feats)
        return {"tracks": _scale(points, (w, h), (iw, ih)), "occlusion": occ, "expected_dist": expd}

    def forward(self, video: torch.Tensor, queries: torch.Tensor, iters: int | None = None) -> dict[str, torch.Tensor]:
        """``video [T, h, w, 3]`` in [-1, 1], ``queries [N, 3]`` (t, y, x) -> :meth:`track` outputs."""
        return self.track(self.features(video), queries, iters)


def expected_shapes(model_size: str = "base") -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the official LocoTrack state dict (without the Lightning ``model.`` prefix)."""
    with torch.device("meta"):
        model = LocoTrack(model_size)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the Lightning module's ``model.`` prefix when every key has it."""
    if state_dict and all(k.startswith("model.") for k in state_dict):
        return {k[len("model."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_locotrack(state_dict: Mapping[str, torch.Tensor], source: str, model_size: str = "base", num_pips_iter: int = 4,
                   initial_resolution: tuple[int, int] = (256, 256), frame_chunk: int = 8) -> LocoTrack:
    """A :class:`LocoTrack` (eval mode, float32) with ``state_dict`` (official layout, ``model.`` prefix optional).

    Raises :class:`PtrackError` naming ``source`` when keys or shapes do not match ``model_size``.
    """
    if model_size not in SIZES:
        raise PtrackError(f"unknown LocoTrack size {model_size!r} in the registry config (base or small)")
    sd = strip_prefix(state_dict)
    check_state_dict(sd, expected_shapes(model_size), source, f"LocoTrack ({model_size})")
    model = LocoTrack(model_size, num_pips_iter, initial_resolution, frame_chunk)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()
