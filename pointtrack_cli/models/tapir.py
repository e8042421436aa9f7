"""TAPIR and BootsTAPIR in plain PyTorch, faithful to google-deepmind/tapnet ``tapnet/torch/``.

TAPIR ("Tracking Any Point with per-frame Initialization and temporal Refinement", Doersch et al. 2023) tracks
each query point independently in two stages:

1. **Initialisation** (TAP-Net style): the query's feature is correlated with every frame's coarse feature
   map (stride 8, 256 channels); a small conv head turns each frame's cost map into a position (soft-argmax
   around the arg-max, radius 5 cells) and into occlusion / uncertainty logits.
2. **Refinement** (PIPs style): 4 iterations per resolution level. Each iteration correlates a 7x7
   neighbourhood around the current estimate in the fine map (stride 4, 128 channels) and the coarse map
   (plus ``pyramid_level`` average-pooled copies of it) with the query's feature (later: with a per-frame
   feature the mixer keeps updating), and a depthwise-temporal-conv MLP-Mixer over the whole clip predicts
   updates of position, occlusion logit, uncertainty logit and that feature.

Variants (the official constructor arguments that differ between the released checkpoints):

* ``tapir_checkpoint_panning.pt``: ``pyramid_level=0, extra_convs=False``;
* ``bootstapir_checkpoint_v2.pt``: ``pyramid_level=1, extra_convs=True`` (5 residual conv blocks on the
  coarse features; BootsTAPIR, Doersch et al. 2024).

Resolutions: features for the initialisation are always computed at ``initial_resolution`` (256x256). A
video of another size ``S`` gets refinement levels :func:`refinement_resolutions` ``(S)``: 256x256 alone for
S <= 256, 256x256 then 512x512 for S = 512 (8 iterations, the result is the mean of the last iteration of
each level). Positions inside the network are pixels of ``initial_resolution`` (tapnet's corner convention:
(0, 0) is the top-left corner of the top-left pixel); inputs and outputs are pixels of the video given.

Shapes (one video, ``T`` frames, ``N`` queries): video ``[T, S_h, S_w, 3]`` floats in [-1, 1]; queries
``[N, 3]`` rows ``(t, y, x)`` in video pixels. :meth:`TAPIR.forward` takes the official batched layout
``[B, T, S_h, S_w, 3]`` / ``[B, N, 3]`` and returns ``tracks [B, N, T, 2]`` (x, y), ``occlusion`` and
``expected_dist`` ``[B, N, T]`` logits (higher = more likely occluded / far from the truth).

Memory: the video's feature grids are held for the whole clip (about 3.4 MB per frame at 256x256, 17 MB
with a 512x512 level; :func:`feature_bytes_per_frame`); everything else is evaluated in bounded chunks of
points and frames, which does not change the result (points never interact; chunks only change float
rounding). The official code's random query permutation only reorders that work and is not reproduced.

The state-dict keys are the official ones (``resnet_torch.*``, ``torch_cost_volume_track_mods.*``,
``torch_pips_mixer.*``, ``extra_convs.*``), so official checkpoints load with ``strict=True``.
Reproduced quirk of the official PyTorch port: the refinement's neighbourhood sampling normalises x by the
feature grid's *height* (harmless for the square resolutions every released model uses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PtrackError
from ..weights.state_dict import check_state_dict
from .tapir_blocks import HIRES_DIM, LOWRES_DIM, MIXER_HIDDEN, MIXER_OUT, Encoder, ExtraConvs, Mixer

INITIAL_RESOLUTION = (256, 256)
NUM_PIPS_ITER = 4
SOFTMAX_TEMPERATURE = 20.0
ARGMAX_RADIUS = 5.0  # soft-argmax keeps cells closer than this (in feature cells) to the arg-max
PATCH_RADIUS = 3  # 7x7 neighbourhood in the refinement
ENCODER_CHUNK = 10  # frames per feature-network call (the official feature_extractor_chunk_size)
WORK_BYTES = 256 << 20  # target size of the temporary tensors of one chunk of the tracking stage


# --------------------------------------------------------------------------------------------------
# Geometry helpers (tapnet conventions: pixel centres at +0.5, grid_sample with align_corners=False)


def refinement_resolutions(size: tuple[int, int], initial: tuple[int, int] = INITIAL_RESOLUTION) -> list[tuple[int, int]]:
    """Refinement levels for a video of ``size`` (h, w): log-spaced from ``initial`` to ``size``, multiples of 8.

    One level (``initial``) when ``size`` is not larger; otherwise ``ceil(log2(max ratio)) + 1`` levels, the
    last one ``size`` rounded down to a multiple of 8 (``generate_default_resolutions`` of tapnet).
    """
    if tuple(size) == tuple(initial):
        return [tuple(initial)]
    ratio = max(math.log2(size[0] / initial[0]), math.log2(size[1] / initial[1]))
    levels = int(math.ceil(ratio)) + 1
    if levels <= 1:
        return [tuple(initial)]
    out = []
    for i in range(levels):
        frac = i / (levels - 1)
        out.append(tuple(int((b * (s / b) ** frac) // 8) * 8 for s, b in zip(size, initial)))
    return out


def l2_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / torch.sqrt(torch.clamp(x.square().sum(dim=dim, keepdim=True), min=1e-12))


def _sample_frames(grid: torch.Tensor, frame: torch.Tensor, yx: torch.Tensor) -> torch.Tensor:
    """Bilinear features of ``grid [T, C, h, w]`` at ``yx [n, 2]`` (cells, centres at +0.5) of frame ``frame [n]``
    (may be fractional: linear blend of the two nearest frames). Border padding in space and time -> ``[n, C]``.
    """
    t_count, c, h, w = grid.shape
    out = grid.new_zeros((yx.shape[0], c))
    t = frame.clamp(0, t_count - 1)
    t0 = torch.floor(t)
    frac = (t - t0).to(grid.dtype)
    t0 = t0.long()
    t1 = (t0 + 1).clamp(max=t_count - 1)
    norm = torch.stack([2 * yx[:, 1] / w - 1, 2 * yx[:, 0] / h - 1], dim=-1).to(grid.dtype)  # (x, y) in [-1, 1]
    for f in torch.unique(torch.cat([t0, t1])).tolist():
        for idx, weight in ((t0 == f, 1 - frac), (t1 == f, frac)):
            sel = torch.nonzero(idx & (weight != 0)).flatten()
            if len(sel) == 0:
                continue
            s = F.grid_sample(grid[f : f + 1], norm[sel][None, None], mode="bilinear", padding_mode="border",
                              align_corners=False)
            out[sel] += s[0, :, 0].T * weight[sel, None]
    return out


def soft_argmax(prob: torch.Tensor) -> torch.Tensor:
    """Soft-argmax of heat maps ``[R, h, w]`` (probabilities) around each map's arg-max -> ``[R, 2]`` (x, y) cells.

    Cells whose centre lies closer than :data:`ARGMAX_RADIUS` to the arg-max cell's centre are averaged with
    their probabilities as weights (cell centres at +0.5).
    """
    r, h, w = prob.shape
    best = prob.reshape(r, -1).argmax(dim=1)
    cx = (best % w).to(prob.dtype) + 0.5
    cy = torch.div(best, w, rounding_mode="floor").to(prob.dtype) + 0.5
    xs = torch.arange(w, device=prob.device, dtype=prob.dtype) + 0.5
    ys = torch.arange(h, device=prob.device, dtype=prob.dtype) + 0.5
    near = ((xs[None, None, :] - cx[:, None, None]) ** 2 + (ys[None, :, None] - cy[:, None, None]) ** 2) < ARGMAX_RADIUS**2
    weights = prob * near
    total = torch.clamp(weights.sum(dim=(1, 2)), min=1e-12)
    x = (weights * xs[None, None, :]).sum(dim=(1, 2)) / total
    y = (weights * ys[None, :, None]).sum(dim=(1, 2)) / total
    return torch.stack([x, y], dim=-1)


def _neighbourhood_offsets(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[49, 2]`` (dy, dx), dy the slow index: sample ``s = (dy + 3) * 7 + (dx + 3)``."""
    d = torch.arange(-PATCH_RADIUS, PATCH_RADIUS + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dy, dx], dim=-1).reshape(-1, 2)


def _rows_per_chunk(bytes_per_row: float, budget: int = WORK_BYTES) -> int:
    return max(1, int(budget // max(1.0, bytes_per_row)))


# --------------------------------------------------------------------------------------------------
# Feature grids of a video


@dataclass
class VideoFeatures:
    """L2-normalised feature grids of one video, channels first, for every distinct resolution it needs.

    ``levels[0]`` is the initialisation's resolution, ``levels[1:]`` the refinement levels (a resolution may
    repeat). ``fine[r]`` ``[T, 128, r_h/4, r_w/4]``; ``coarse[r]`` list: the coarse map ``[T, 256, r_h/8,
    r_w/8]`` then ``pyramid_level`` 2x2 average-pooled copies.
    """

    video_hw: tuple[int, int]
    num_frames: int
    levels: list[tuple[int, int]]
    fine: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    coarse: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict)


def feature_bytes_per_frame(video_hw: tuple[int, int], pyramid_level: int, initial: tuple[int, int] = INITIAL_RESOLUTION,
                            element_size: int = 4) -> int:
    """Bytes of :class:`VideoFeatures` per frame for a video of ``video_hw`` (the part that grows with the clip)."""
    total = 0
    for h, w in set([tuple(initial)] + refinement_resolutions(video_hw, initial)):
        total += HIRES_DIM * (h // 4) * (w // 4)
        ch, cw = h // 8, w // 8
        for _ in range(pyramid_level + 1):
            total += LOWRES_DIM * ch * cw
            ch, cw = ch // 2, cw // 2
    return total * element_size


# --------------------------------------------------------------------------------------------------
# The model


class TAPIR(nn.Module):
    """TAPIR / BootsTAPIR (see the module docstring). Official attribute names, so official state dicts load."""

    def __init__(
        self,
        pyramid_level: int = 1,
        extra_convs: bool = True,
        num_pips_iter: int = NUM_PIPS_ITER,
        initial_resolution: tuple[int, int] = INITIAL_RESOLUTION,
    ) -> None:
        super().__init__()
        if num_pips_iter < 1 or pyramid_level < 0:
            raise ValueError(f"num_pips_iter must be >= 1 and pyramid_level >= 0, got {num_pips_iter}, {pyramid_level}")
        self.pyramid_level = int(pyramid_level)
        self.num_pips_iter = int(num_pips_iter)
        self.initial_resolution = tuple(int(v) for v in initial_resolution)
        self.resnet_torch = Encoder()
        self.torch_cost_volume_track_mods = nn.ModuleDict(
            {
                "hid1": nn.Conv2d(1, 16, 3, padding=1),
                "hid2": nn.Conv2d(16, 1, 3, padding=1),
                "hid3": nn.Conv2d(16, 32, 3, stride=2, padding=0),
                "hid4": nn.Linear(32, 16),
                "occ_out": nn.Linear(16, 2),
            }
        )
        corr_dim = (self.pyramid_level + 2) * (2 * PATCH_RADIUS + 1) ** 2
        self.torch_pips_mixer = Mixer(MIXER_OUT + corr_dim)
        self.extra_convs = ExtraConvs() if extra_convs else None

    # ---- features ---------------------------------------------------------------------------------

    def levels_for(self, video_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Resolutions of the initialisation and of each refinement level for a video of ``video_hw``."""
        return [self.initial_resolution] + refinement_resolutions(video_hw, self.initial_resolution)

    def encode(self, frames: torch.Tensor, resolution: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``[k, 3, h, w]`` in [-1, 1] -> L2-normalised fine ``[k, 128, ...]`` and coarse ``[k, 256, ...]``
        features at ``resolution`` (the frames are resized bilinearly, align_corners=False, when needed)."""
        if tuple(frames.shape[-2:]) != tuple(resolution):
            frames = F.interpolate(frames, size=tuple(resolution), mode="bilinear", align_corners=False)
        fine, coarse = self.resnet_torch(frames)
        if self.extra_convs is not None:
            coarse = self.extra_convs(coarse.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return l2_normalise(fine, 1), l2_normalise(coarse, 1)

    def new_features(self, num_frames: int, video_hw: tuple[int, int]) -> VideoFeatures:
        """Empty :class:`VideoFeatures` to fill chunk by chunk with :meth:`add_frames`."""
        return VideoFeatures(video_hw=tuple(video_hw), num_frames=int(num_frames), levels=self.levels_for(video_hw))

    def add_frames(self, feats: VideoFeatures, start: int, frames: torch.Tensor) -> None:
        """Encode frames ``[k, 3, S_h, S_w]`` (in [-1, 1]) as frames ``start .. start + k`` of ``feats``."""
        k = frames.shape[0]
        for res in dict.fromkeys(feats.levels):
            for i in range(0, k, ENCODER_CHUNK):
                fine, coarse = self.encode(frames[i : i + ENCODER_CHUNK], res)
                pyr = [coarse]
                for _ in range(self.pyramid_level):
                    pyr.append(F.avg_pool2d(pyr[-1], 2))
                if res not in feats.fine:
                    feats.fine[res] = fine.new_empty((feats.num_frames,) + tuple(fine.shape[1:]))
                    feats.coarse[res] = [p.new_empty((feats.num_frames,) + tuple(p.shape[1:])) for p in pyr]
                s = start + i
                feats.fine[res][s : s + fine.shape[0]] = fine
                for dst, src in zip(feats.coarse[res], pyr):
                    dst[s : s + src.shape[0]] = src

    def features(self, video: torch.Tensor) -> VideoFeatures:
        """Feature grids of a whole video ``[T, S_h, S_w, 3]`` in [-1, 1]."""
        t, h, w, _ = video.shape
        feats = self.new_features(t, (h, w))
        frames = video.permute(0, 3, 1, 2)
        for i in range(0, t, ENCODER_CHUNK):
            self.add_frames(feats, i, frames[i : i + ENCODER_CHUNK])
        return feats

    # ---- tracking ---------------------------------------------------------------------------------

    def query_features(self, feats: VideoFeatures, queries: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level ``(fine [N, 128], coarse [N, 256])`` sampled at queries ``[N, 3]`` (t, y, x video pixels)."""
        out = []
        s_h, s_w = feats.video_hw
        for res in feats.levels:
            pair = []
            for grid in (feats.fine[res], feats.coarse[res][0]):
                h, w = grid.shape[-2:]
                yx = torch.stack([queries[:, 1] * h / s_h, queries[:, 2] * w / s_w], dim=-1)
                pair.append(_sample_frames(grid, queries[:, 0], yx))
            out.append((pair[0], pair[1]))
        return out

    def initial_estimate(
        self, coarse: torch.Tensor, query_coarse: torch.Tensor, queries_init: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cost-volume initialisation for ``n`` points.

        coarse ``[T, 256, h, w]`` (the initial resolution's map), query_coarse ``[n, 256]``, queries_init
        ``[n, 3]`` (t, y, x) in initial-resolution pixels. Returns positions ``[n, T, 2]`` (x, y, initial
        pixels; the query's own frame holds the query point), occlusion and expected-distance logits ``[n, T]``.
        """
        mods = self.torch_cost_volume_track_mods
        t_count, c, h, w = coarse.shape
        n = query_coarse.shape[0]
        init_h, init_w = self.initial_resolution
        points = coarse.new_empty((t_count, n, 2))
        logits = coarse.new_empty((t_count, n, 2))
        frames = _rows_per_chunk(n * h * w * 4 * 40)  # the 16-channel hidden map and its padded copy dominate
        for t0 in range(0, t_count, frames):
            grid = coarse[t0 : t0 + frames]
            k = grid.shape[0]
            cost = torch.matmul(query_coarse, grid.reshape(k, c, h * w))  # [k, n, h*w]
            hidden = torch.relu(mods["hid1"](cost.reshape(k * n, 1, h, w)))
            heat = mods["hid2"](hidden).reshape(k * n, h * w)
            prob = torch.softmax(heat * SOFTMAX_TEMPERATURE, dim=-1).reshape(k * n, h, w)
            xy = soft_argmax(prob)
            xy = torch.stack([xy[:, 0] * init_w / w, xy[:, 1] * init_h / h], dim=-1)
            points[t0 : t0 + k] = xy.reshape(k, n, 2)
            occ = torch.relu(mods["hid3"](F.pad(hidden, (0, 2, 0, 2)))).mean(dim=(-1, -2))
            logits[t0 : t0 + k] = mods["occ_out"](torch.relu(mods["hid4"](occ))).reshape(k, n, 2)
        points = points.transpose(0, 1).contiguous()
        on_query_frame = torch.round(queries_init[:, 0])[:, None] == torch.arange(t_count, device=coarse.device)[None]
        query_xy = torch.stack([queries_init[:, 2], queries_init[:, 1]], dim=-1).to(points.dtype)
        points = torch.where(on_query_frame[..., None], query_xy[:, None, :], points)
        return points, logits[..., 0].T.contiguous(), logits[..., 1].T.contiguous()

    def local_correlation(self, grid: torch.Tensor, points: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Correlation of the 7x7 neighbourhood of ``points [n, T, 2]`` (x, y initial pixels) in ``grid
        [T, C, h, w]`` with ``query`` ``[n, C]`` or per frame ``[n, T, C]`` -> ``[n, T, 49]``.

        Bilinear samples, zero outside the grid; the neighbourhood's centre is the point in grid cells.
        """
        t_count, c, h, w = grid.shape
        n = points.shape[0]
        init_h, init_w = self.initial_resolution
        centre = torch.stack([points[..., 1] * h / init_h, points[..., 0] * w / init_w], dim=-1)  # (y, x) cells
        where = centre[:, :, None, :] + _neighbourhood_offsets(points.device, points.dtype)  # [n, T, 49, 2]
        # Both axes are normalised by the grid height, as the official port does (square grids: exact).
        norm = (2 * where / h - 1).flip(-1).to(grid.dtype)
        out = grid.new_empty((n, t_count, where.shape[2]))
        frames = _rows_per_chunk(n * where.shape[2] * c * 4 * 2)
        for t0 in range(0, t_count, frames):
            g = norm[:, t0 : t0 + frames].transpose(0, 1)  # [k, n, 49, 2]
            patch = F.grid_sample(grid[t0 : t0 + frames], g, mode="bilinear", padding_mode="zeros", align_corners=False)
            q = query if query.dim() == 2 else query[:, t0 : t0 + frames].transpose(0, 1)  # [n, C] or [k, n, C]
            eq = "kcns,nc->nks" if q.dim() == 2 else "kcns,knc->nks"
            out[:, t0 : t0 + patch.shape[0]] = torch.einsum(eq, patch, q)
        return out

    def refine(
        self,
        level_grids: list[torch.Tensor],
        level_queries: list[torch.Tensor],
        points: torch.Tensor,
        occlusion: torch.Tensor,
        expected_dist: torch.Tensor,
        carried: torch.Tensor | None,
        level_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One refinement iteration for ``n`` points over the whole clip.

        level_grids: fine map then ``1 + pyramid_level`` coarse maps ``[T, C, h, w]``; level_queries: the
        matching query features ``[n, C]``; points ``[n, T, 2]`` (initial pixels); occlusion / expected_dist
        ``[n, T]``; carried: the mixer's per-frame feature ``[n, T, 384]`` of the previous iteration, None on
        a level's first iteration. Returns updated points, occlusion, expected_dist and carried feature.
        """
        n, t_count = points.shape[:2]
        if carried is None:
            track_feat = torch.cat(level_queries[:2], dim=-1)[:, None, :].expand(n, t_count, HIRES_DIM + LOWRES_DIM)
            corr_queries = level_queries
        else:
            track_feat = carried
            fine_q, coarse_q = carried[..., :HIRES_DIM], carried[..., HIRES_DIM:]
            corr_queries = [fine_q] + [coarse_q] * (len(level_grids) - 1)
        corrs = [self.local_correlation(g, points, q) for g, q in zip(level_grids, corr_queries)]
        mixer_in = torch.cat(
            [points.new_zeros((n, t_count, 2)), occlusion[..., None], expected_dist[..., None], track_feat] + corrs, dim=-1
        )
        delta = self.torch_pips_mixer(mixer_in)
        init_h, init_w = self.initial_resolution
        step = torch.stack([delta[..., 0] * init_w / level_hw[1], delta[..., 1] * init_h / level_hw[0]], dim=-1)
        return points + step, occlusion + delta[..., 2], expected_dist + delta[..., 3], track_feat + delta[..., 4:]

    def track_points(self, feats: VideoFeatures, queries: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Initialisation and every refinement iteration for queries ``[n, 3]`` (t, y, x video pixels).

        Returns lists (one entry per iteration, the initialisation first) of ``tracks [n, T, 2]`` (x, y video
        pixels), ``occlusion`` and ``expected_dist`` ``[n, T]`` logits.
        """
        s_h, s_w = feats.video_hw
        init_h, init_w = self.initial_resolution
        qfeats = self.query_features(feats, queries)
        queries_init = torch.stack([queries[:, 0], queries[:, 1] * init_h / s_h, queries[:, 2] * init_w / s_w], dim=-1)
        init = feats.levels[0]
        points, occ0, expd0 = self.initial_estimate(feats.coarse[init][0], qfeats[0][1], queries_init)

        def to_video(p: torch.Tensor) -> torch.Tensor:
            return torch.stack([p[..., 0] * s_w / init_w, p[..., 1] * s_h / init_h], dim=-1)

        out = {"tracks": [to_video(points)], "occlusion": [occ0], "expected_dist": [expd0]}
        for level, res in enumerate(feats.levels[1:], start=1):
            grids = [feats.fine[res]] + feats.coarse[res]
            fine_q, coarse_q = qfeats[level]
            level_queries = [fine_q] + [coarse_q] * (1 + self.pyramid_level)
            occ, expd, carried = occ0, expd0, None
            for _ in range(self.num_pips_iter):
                points, occ, expd, carried = self.refine(grids, level_queries, points, occ, expd, carried, res)
                out["tracks"].append(to_video(points))
                out["occlusion"].append(occ)
                out["expected_dist"].append(expd)
        return out

    def point_chunk(self, num_frames: int) -> int:
        """Points refined together: bounded so the mixer's activations stay near :data:`WORK_BYTES`."""
        return max(1, min(256, _rows_per_chunk(num_frames * 4 * MIXER_HIDDEN * 4 * 4)))

    def track(self, feats: VideoFeatures, queries: torch.Tensor, keep_iterations: bool = False,
              progress: Callable[[int], None] | None = None) -> dict:
        """All queries ``[N, 3]`` (t, y, x video pixels), in chunks of :meth:`point_chunk` points.

        Returns ``tracks [N, T, 2]``, ``occlusion`` and ``expected_dist`` ``[N, T]``: the mean over refinement
        levels of each level's last iteration (the official output); with ``keep_iterations`` also
        ``iterations``: the per-iteration lists of :meth:`track_points`, concatenated over chunks.
        ``progress(points_done)`` is called after each chunk.
        """
        chunk = self.point_chunk(feats.num_frames)
        parts = []
        for i in range(0, queries.shape[0], chunk):
            parts.append(self.track_points(feats, queries[i : i + chunk]))
            if progress is not None:
                progress(min(queries.shape[0], i + chunk))
        if not parts:
            empty = queries.new_zeros((0, feats.num_frames))
            tracks = queries.new_zeros((0, feats.num_frames, 2))
            return {"tracks": tracks, "occlusion": empty, "expected_dist": empty.clone()}
        iters = {k: [torch.cat([p[k][i] for p in parts]) for i in range(len(parts[0][k]))] for k in parts[0]}
        p = self.num_pips_iter
        out = {k: torch.stack(v[p::p]).mean(dim=0) if len(v) > 1 else v[0] for k, v in iters.items()}
        if keep_iterations:
            out["iterations"] = iters
        return out

    def forward(self, video: torch.Tensor, query_points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Official layout: video ``[B, T, S_h, S_w, 3]`` in [-1, 1], query_points ``[B, N, 3]`` (t, y, x).

        Returns ``tracks [B, N, T, 2]`` (x, y video pixels), ``occlusion`` / ``expected_dist`` ``[B, N, T]`` logits.
        """
        outs = [self.track(self.features(v), q) for v, q in zip(video, query_points)]
        return {k: torch.stack([o[k] for o in outs]) for k in ("tracks", "occlusion", "expected_dist")}


# --------------------------------------------------------------------------------------------------
# Loading


VARIANTS = {"tapir": (0, False), "bootstapir": (1, True)}


def expected_shapes(pyramid_level: int = 1, extra_convs: bool = True) -> dict[str, tuple[int, ...]]:
    """Official state-dict key -> shape (218 keys for BootsTAPIR, 188 for TAPIR)."""
    with torch.device("meta"):
        model = TAPIR(pyramid_level=pyramid_level, extra_convs=extra_convs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def detect_variant(sd: Mapping[str, torch.Tensor]) -> tuple[int, bool] | None:
    """``(pyramid_level, extra_convs)`` a state dict was trained with, or None when it is not TAPIR-shaped."""
    w = sd.get("torch_pips_mixer.linear.weight")
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    corr = int(w.shape[1]) - MIXER_OUT
    if corr <= 0 or corr % 49:
        return None
    return corr // 49 - 2, any(k.startswith("extra_convs.") for k in sd)


def load_tapir(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    pyramid_level: int = 1,
    extra_convs: bool = True,
    initial_resolution: tuple[int, int] = INITIAL_RESOLUTION,
    num_pips_iter: int = NUM_PIPS_ITER,
) -> TAPIR:
    """Build :class:`TAPIR` from an official state dict; a layout that does not match raises :class:`PtrackError`.

    Returns the float32 model in eval mode on the CPU.
    """
    want = (int(pyramid_level), bool(extra_convs))
    got = detect_variant(state_dict)
    if got is not None and got != want:
        names = {v: k for k, v in VARIANTS.items()}
        got_name, want_name = names.get(got, f"pyramid_level={got[0]}, extra_convs={got[1]}"), names.get(want, str(want))
        raise PtrackError(
            f"{source} holds a {got_name} checkpoint but the {want_name} model was asked for "
            f"(use --model {got_name} or pass the {want_name} checkpoint)"
        )
    check_state_dict(state_dict, expected_shapes(*want), source, "TAPIR" if not want[1] else "BootsTAPIR")
    bad = [k for k, v in state_dict.items() if not torch.is_floating_point(v) or not bool(torch.isfinite(v).all())]
    if bad:
        raise PtrackError(
            f"{source} holds non-finite or non-float values in {len(bad)} tensor(s), e.g. {bad[0]} (download it again)"
        )
    with torch.device("meta"):
        model = TAPIR(pyramid_level=want[0], extra_convs=want[1], initial_resolution=initial_resolution,
                      num_pips_iter=num_pips_iter)
    weights = {k: v.detach().to(torch.float32, copy=True) for k, v in state_dict.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


__all__ = [
    "INITIAL_RESOLUTION",
    "TAPIR",
    "VARIANTS",
    "VideoFeatures",
    "detect_variant",
    "expected_shapes",
    "feature_bytes_per_frame",
    "l2_normalise",
    "load_tapir",
    "refinement_resolutions",
    "soft_argmax",
]
