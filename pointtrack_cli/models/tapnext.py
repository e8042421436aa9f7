"""TAPNext: tracking any point as next-token prediction, in plain PyTorch (TAPNext, BootsTAPNext, TAPNext++).

Reference: google-deepmind/tapnet ``tapnet/tapnext/tapnext_torch.py`` (the copy with the position-embedding
interpolation), ``tapnext_lru_modules.py`` and ``tapnext_torch_utils.py`` (``tracker_certainty`` and the
JAX checkpoint conversion). Blocks are in :mod:`.tapnext_blocks`.

The network sees, per frame, ``h * w`` image tokens (8x8 patches, learned position embedding) and one
token per query point, and runs ``depth`` TRecViT layers: a recurrent block along time for every token,
then attention among all tokens of the frame. A point's token is the *unknown* token before its query
frame, the *point query* token (plus a sin-cos embedding of the query position) on its query frame, and
the *mask* token after it. Heads on the point tokens give 2 x 256 coordinate logits (a soft-argmax
within 20 bins of the argmax gives the position) and a visibility logit.

Shapes: video ``[B, T, H, W, 3]`` float in [-1, 1] (H, W multiples of the 8-pixel patch); queries
``[B, Q, 3]`` rows ``(t, y, x)`` with y, x in pixels of the ``image_size`` coordinate frame (256 x 256
for every released checkpoint, also when the frames are 512 x 512); outputs tracks ``[B, T, Q, 2]``
``(y, x)`` in that frame, track logits ``[B, T, Q, 512]`` (256 y bins, then 256 x bins), visible logits
``[B, T, Q, 1]``. Frames may be given one at a time with the returned :class:`TAPNextState` (streaming).

Cost: per frame and layer the recurrent block and MLPs are linear in ``h * w + Q`` tokens and the
attention is quadratic in it; the recurrent state is ``depth * 4 * lru_width`` floats per token
(147 KB for TAPNext-B). Points interact: every token attends to every other token of the frame.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PtrackError
from ..weights.state_dict import check_state_dict
from .tapnext_blocks import LayerCache, TRecViTBlock

PATCH = 8
COORD_BINS = 256  # per axis; the coordinate head has 2 * 256 outputs
SOFT_ARGMAX_RADIUS = 20
SOFT_ARGMAX_TEMPERATURE = 0.5
CERTAINTY_RADIUS = 8
BASE_CONFIG = {"width": 768, "depth": 12, "num_heads": 12, "lru_width": 768, "image_size": (256, 256)}


def sincos_posemb_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Sin-cos embedding of every pixel ``[1, h * w, width]`` (row-major): ``[sin x, cos x, sin y, cos y]``.

    Frequencies ``temperature ** -(k / (width/4 - 1))``; computed in float64 per column and per row (each value
    depends on x or on y only), cast to float32 once, then laid out per pixel (200 MB for 256x256x768).
    """
    if width % 4:
        raise PtrackError(f"TAPNext width {width} must be a multiple of 4 (sin-cos position embedding)")
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / (quarter - 1))
    ax = torch.arange(w, dtype=torch.float64)[:, None] * omega  # [w, quarter]
    ay = torch.arange(h, dtype=torch.float64)[:, None] * omega  # [h, quarter]
    by_x = torch.cat([ax.sin(), ax.cos()], dim=1).float()  # [w, width / 2]
    by_y = torch.cat([ay.sin(), ay.cos()], dim=1).float()  # [h, width / 2]
    table = torch.empty(h, w, width)
    table[:, :, : width // 2] = by_x[None]
    table[:, :, width // 2 :] = by_y[:, None]
    return table.reshape(1, h * w, width)


def _mlp_head(width: int, out: int) -> nn.Sequential:
    """``Linear(width, 256) LN GELU Linear(256, 256) LN GELU Linear(256, out)`` (official indices 0, 1, 3, 4, 6)."""
    return nn.Sequential(
        nn.Linear(width, 256), nn.LayerNorm(256), nn.GELU(),
        nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU(),
        nn.Linear(256, out),
    )  # fmt: skip


@dataclass
class TAPNextState:
    """Streaming state after ``step`` frames: the queries (frame indices relative to the first frame) and
    one :class:`LayerCache` per layer."""

    step: int
    queries: torch.Tensor  # [B, Q, 3] (t, y, x)
    caches: list[LayerCache]
    query_tokens: torch.Tensor | None = None  # [B, 1, Q, width], computed once (they do not change)


class TAPNext(nn.Module):
    """The TAPNext network (state-dict keys as the official module, incl. the ``query_pos_embed`` buffer).

    Args:
        image_size: (h, w) pixels of the coordinate frame the position embeddings were trained for
            (256, 256); frames of another size (multiples of 8) get the image position embedding
            interpolated bicubically.
        width, depth, num_heads, lru_width: TRecViT-B is 768, 12, 12, 768.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        lru_width: int = 768,
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.width = width
        self.lin_proj = nn.Conv2d(3, width, kernel_size=PATCH, stride=PATCH)
        self.blocks = nn.ModuleList([TRecViTBlock(width, num_heads, lru_width) for _ in range(depth)])
        self.encoder_norm = nn.LayerNorm(width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.unknown_token = nn.Parameter(torch.zeros(1, 1, width))
        self.point_query_token = nn.Parameter(torch.zeros(1, 1, 1, width))
        grid = (self.image_size[0] // PATCH) * (self.image_size[1] // PATCH)
        self.image_pos_emb = nn.Parameter(torch.zeros(1, grid, width))
        table = torch.empty(1, self.image_size[0] * self.image_size[1], width)
        if table.device.type != "meta":  # on "meta" (layout only) arange would import torch's decompositions (~2 s)
            table = sincos_posemb_2d(self.image_size[0], self.image_size[1], width)
        self.register_buffer("query_pos_embed", table)
        self.visible_head = _mlp_head(width, 1)
        self.coordinate_head = _mlp_head(width, 2 * COORD_BINS)

    # ---- embeddings ---------------------------------------------------------------------------

    def image_pos_emb_for(self, gh: int, gw: int) -> torch.Tensor:
        """Position embedding ``[1, gh * gw, width]`` for a ``gh x gw`` patch grid.

        Used as stored when the token count matches (as the official code, whatever the grid's aspect);
        otherwise the square native grid is resized bicubically (align_corners=False).
        """
        native = self.image_pos_emb.shape[1]
        if gh * gw == native:
            return self.image_pos_emb
        side = math.isqrt(native)
        if side * side != native:
            raise PtrackError(f"TAPNext position embedding has {native} tokens (not a square grid); cannot resize it to {gh}x{gw}")
        grid = self.image_pos_emb.reshape(1, side, side, self.width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, gh * gw, self.width).to(self.image_pos_emb.dtype)

    def embed_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Image tokens: video ``[B, T, H, W, 3]`` in [-1, 1] -> ``[B, T, (H/8) * (W/8), width]``."""
        b, t, h, w, _ = video.shape
        if h % PATCH or w % PATCH:
            raise PtrackError(f"TAPNext input {h}x{w} must be a multiple of the {PATCH}-pixel patch (e.g. 256x256)")
        x = self.lin_proj(video.reshape(b * t, h, w, 3).permute(0, 3, 1, 2))  # [(B T), C, h/8, w/8]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2).reshape(b, t, gh * gw, self.width)
        return x + self.image_pos_emb_for(gh, gw)[:, None]

    def query_tokens(self, queries: torch.Tensor) -> torch.Tensor:
        """Point query tokens ``[B, 1, Q, width]``: the point query token plus the sin-cos embedding at each
        query's (y, x), sampled bilinearly (``grid_sample``, align_corners=False, zeros outside the frame)."""
        b = queries.shape[0]
        hi, wi = self.image_size
        # query_pos_embed as [B, C, W, H]: grid_sample's x axis runs over y and its y axis over x
        table = self.query_pos_embed.view(1, hi, wi, self.width).permute(0, 3, 2, 1).expand(b, -1, -1, -1)
        size = torch.tensor(self.image_size, device=queries.device)
        grid = queries[:, None, :, 1:] / size * 2 - 1  # [B, 1, Q, 2] (y, x) normalised
        pos = F.grid_sample(table, grid.to(table.dtype), align_corners=False)  # [B, C, 1, Q]
        return self.point_query_token + pos.permute(0, 2, 3, 1)

    def embed_queries(self, num_frames: int, rel_queries: torch.Tensor, query_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Point tokens ``[B, T, Q, width]`` for ``num_frames`` frames; ``rel_queries [B, Q, 3]`` have the query
        frame relative to the first of these frames (``query_tokens``: :meth:`query_tokens` of the queries).

        Frame ``s`` holds the unknown token if ``s < t_q``, the point query token if ``s == t_q``, and the
        mask token otherwise.
        """
        if query_tokens is None:
            query_tokens = self.query_tokens(rel_queries)
        frame = torch.arange(num_frames, device=rel_queries.device, dtype=rel_queries.dtype)[None, :, None, None]
        tq = rel_queries[:, None, :, :1]  # [B, 1, Q, 1]
        tokens = torch.where(frame == tq, query_tokens, self.mask_token)
        return torch.where(frame < tq, self.unknown_token[:, :, None], tokens)

    # ---- heads --------------------------------------------------------------------------------

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Point tokens ``[..., width]`` -> tracks ``[..., 2]`` (y, x), track logits ``[..., 512]``, visible logits ``[..., 1]``.

        Soft-argmax per axis: softmax of ``0.5 * logits`` over the 256 bins, kept within 20 bins of the
        argmax, renormalised; the position is the expected bin index + 0.5 (bin centres).
        """
        logits = self.coordinate_head(x if x.dtype == torch.float64 else x.float())
        coords = []
        index = torch.arange(COORD_BINS, device=x.device)
        for axis_logits in logits.chunk(2, dim=-1):
            peak = axis_logits.argmax(dim=-1, keepdim=True)
            keep = ((peak - index).abs() <= SOFT_ARGMAX_RADIUS).to(axis_logits.dtype)
            p = F.softmax(axis_logits * SOFT_ARGMAX_TEMPERATURE, dim=-1) * keep
            p = p / p.sum(dim=-1, keepdim=True)
            coords.append((p * index).sum(dim=-1, keepdim=True))
        return torch.cat(coords, dim=-1) + 0.5, logits, self.visible_head(x)

    # ---- forward ------------------------------------------------------------------------------

    def init_state(self, queries: torch.Tensor) -> TAPNextState:
        """Empty state for queries ``[B, Q, 3]`` (t, y, x); feed it to :meth:`step`."""
        return TAPNextState(step=0, queries=queries, caches=[], query_tokens=self.query_tokens(queries))

    def step(self, image_tokens: torch.Tensor, state: TAPNextState, parallel: bool = False):
        """Advance by ``T`` frames of image tokens ``[B, T, h*w, width]`` (:meth:`embed_frames`).

        Returns (tracks, track_logits, visible_logits, new state); see the module docstring for shapes. The
        given ``state`` is consumed (its layer caches are released during the call): continue from the new one.
        ``parallel``: multi-frame calls use the parallel scan instead of the sequential one.
        """
        b, t, n_img, _ = image_tokens.shape
        rel = state.queries.clone()
        rel[..., 0] = rel[..., 0] - state.step
        points = self.embed_queries(t, rel, state.query_tokens)
        x = torch.cat([image_tokens, points.to(image_tokens.dtype)], dim=2)
        # The given state is consumed: each layer's old cache is released as soon as the layer has run, so
        # the old and new recurrent states (147 KB per token each) are not both held.
        caches, state.caches = (state.caches or [None] * len(self.blocks)), []
        new_caches = []
        for i, block in enumerate(self.blocks):
            cache, caches[i] = caches[i], None
            x, cache = block(x, cache, parallel)
            new_caches.append(cache)
            del cache
        x = self.encoder_norm(x)
        tracks, track_logits, visible_logits = self.heads(x[:, :, n_img:])
        return tracks, track_logits, visible_logits, TAPNextState(state.step + t, state.queries, new_caches, state.query_tokens)

    def forward(self, video: torch.Tensor, queries: torch.Tensor, parallel: bool = False):
        """Whole clip at once: video ``[B, T, H, W, 3]`` in [-1, 1], queries ``[B, Q, 3]`` (t, y, x)."""
        return self.step(self.embed_frames(video), self.init_state(queries), parallel)


# --------------------------------------------------------------------------------------------------
# Certainty (tracker_certainty of the official utils)


def _window(coord: torch.Tensor, probs: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``2 * radius + 1`` consecutive bins starting at ``floor(coord - radius - 0.5)`` (kept inside the bins).

    coord ``[M]``, probs ``[M, bins]`` -> (probabilities ``[M, K]``, bin centres ``[M, K]``).
    """
    bins = probs.shape[1]
    start = torch.floor(coord - radius - 0.5).to(torch.int64).clamp(min=0)
    idx = start[:, None] + torch.arange(2 * radius + 1, device=probs.device)
    idx = idx - (idx[:, -1] - (bins - 1)).clamp(min=0)[:, None]
    return probs.gather(1, idx), idx.to(coord.dtype) + 0.5


def tracker_certainty(coord_yx: torch.Tensor, track_logits: torch.Tensor, radius: int = CERTAINTY_RADIUS) -> torch.Tensor:
    """Probability mass of the coordinate distributions near the predicted position, ``[..., 1]``.

    coord_yx ``[..., 2]`` (model output), track_logits ``[..., 512]``. Per axis a plain softmax over the
    256 bins is cut to a 17-bin window around the coordinate; the outer product of the two windows is
    summed over bins within ``radius`` of the position. As in the official code the disc test pairs the
    i-th y-window bin with the i-th x-window *centre* index order swapped (``grid[i, j] = (y_j, x_i)``
    while the mass is ``p_y[i] p_x[j]``); reproduced as is.
    """
    shape = coord_yx.shape[:-1]
    c = coord_yx.reshape(-1, 2)
    logits_y, logits_x = track_logits.reshape(-1, track_logits.shape[-1]).chunk(2, dim=-1)
    p_y, cy = _window(c[:, 0], F.softmax(logits_y, dim=-1), radius)
    p_x, cx = _window(c[:, 1], F.softmax(logits_x, dim=-1), radius)
    mass = p_y[:, :, None] * p_x[:, None, :]  # [M, i (y bin), j (x bin)]
    dist2 = (cy[:, None, :] - c[:, 0, None, None]) ** 2 + (cx[:, :, None] - c[:, 1, None, None]) ** 2  # [M, i, j]
    inside = dist2 <= radius**2 + 1e-8
    return (mass * inside).sum(dim=(-1, -2)).reshape(*shape, 1)


# --------------------------------------------------------------------------------------------------
# Weights


def expected_shapes(
    width: int = 768, depth: int = 12, num_heads: int = 12, lru_width: int = 768, image_size: tuple[int, int] = (256, 256)
) -> dict[str, tuple[int, ...]]:
    """Official state-dict key -> shape (401 keys for TAPNext-B, incl. the ``query_pos_embed`` buffer)."""
    with torch.device("meta"):
        model = TAPNext(image_size=tuple(image_size), width=width, depth=depth, num_heads=num_heads, lru_width=lru_width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _jax_dense(kernel: np.ndarray) -> np.ndarray:
    """Flax Dense kernel ``[in, out]`` -> torch Linear weight ``[out, in]``."""
    return np.ascontiguousarray(kernel.T)


def convert_jax_checkpoint(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Official JAX ``.npz`` arrays (``backbone/...``, ``visible_head/...``, ``coordinate_head/...``) -> the
    TAPNext state dict, as ``restore_model_from_jax_checkpoint`` maps them (depth and width read from the
    arrays). The ``query_pos_embed`` buffer is not in the JAX file (it is computed)."""
    try:
        sd: dict[str, np.ndarray] = {}
        kernel = arrays["backbone/embedding/kernel"]  # [1, kh, kw, in, out]
        sd["lin_proj.weight"] = np.ascontiguousarray(kernel[0].transpose(3, 2, 0, 1))
        sd["lin_proj.bias"] = arrays["backbone/embedding/bias"]
        for name in ("mask_token", "point_query_token", "unknown_token"):
            sd[name] = arrays[f"backbone/{name}"]
        sd["image_pos_emb"] = arrays["backbone/pos_embedding"]
        sd["encoder_norm.weight"] = arrays["backbone/Transformer/encoder_norm/scale"]
        sd["encoder_norm.bias"] = arrays["backbone/Transformer/encoder_norm/bias"]
        layers = sorted({int(m.group(1)) for k in arrays if (m := re.match(r"backbone/Transformer/encoderblock_(\d+)/", k))})
        for i in layers:
            src = f"backbone/Transformer/encoderblock_{i}"
            dst = f"blocks.{i}"
            for key, value in arrays.items():
                if key.startswith(f"{src}/ssm_block/"):
                    path = key[len(f"{src}/ssm_block/"):]
                    name = path.replace("/", ".")
                    if name.endswith(".kernel"):  # Dense layers; every other ssm parameter keeps its layout
                        name, value = name[: -len("kernel")] + "weight", _jax_dense(value)
                    sd[f"{dst}.ssm_block.{name}"] = value
            vit = f"{src}/vit_block"
            attn = f"{vit}/MultiHeadDotProductAttention_0"
            for ln, tn in (("LayerNorm_0", "ln_1"), ("LayerNorm_1", "ln_2")):
                sd[f"{dst}.vit_block.{tn}.weight"] = arrays[f"{vit}/{ln}/scale"]
                sd[f"{dst}.vit_block.{tn}.bias"] = arrays[f"{vit}/{ln}/bias"]
            for dense, idx in (("Dense_0", 0), ("Dense_1", 3)):
                sd[f"{dst}.vit_block.mlp.{idx}.weight"] = _jax_dense(arrays[f"{vit}/MlpBlock_0/{dense}/kernel"])
                sd[f"{dst}.vit_block.mlp.{idx}.bias"] = arrays[f"{vit}/MlpBlock_0/{dense}/bias"]
            qkv = [arrays[f"{attn}/{p}/kernel"] for p in ("query", "key", "value")]  # [D, heads, head_dim]
            sd[f"{dst}.vit_block.self_attention.in_proj_weight"] = np.concatenate(
                [_jax_dense(k.reshape(k.shape[0], -1)) for k in qkv], axis=0
            )
            sd[f"{dst}.vit_block.self_attention.in_proj_bias"] = np.concatenate(
                [arrays[f"{attn}/{p}/bias"].reshape(-1) for p in ("query", "key", "value")]
            )
            out = arrays[f"{attn}/out/kernel"]  # [heads, head_dim, D]
            sd[f"{dst}.vit_block.self_attention.out_proj.weight"] = _jax_dense(out.reshape(-1, out.shape[-1]))
            sd[f"{dst}.vit_block.self_attention.out_proj.bias"] = arrays[f"{attn}/out/bias"].reshape(-1)
        for head in ("visible_head", "coordinate_head"):
            for idx in (0, 3, 6):
                sd[f"{head}.{idx}.weight"] = _jax_dense(arrays[f"{head}/layers_{idx}/kernel"])
                sd[f"{head}.{idx}.bias"] = arrays[f"{head}/layers_{idx}/bias"]
            for idx in (1, 4):
                sd[f"{head}.{idx}.weight"] = arrays[f"{head}/layers_{idx}/scale"]
                sd[f"{head}.{idx}.bias"] = arrays[f"{head}/layers_{idx}/bias"]
    except KeyError as exc:
        raise PtrackError(f"the JAX checkpoint lacks {exc.args[0]!r}: not a TAPNext .npz (use the official tapnext_ckpt.npz / bootstapnext_ckpt.npz)") from None
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def load_tapnext(
    sd: Mapping[str, torch.Tensor],
    source: str,
    width: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    lru_width: int = 768,
    image_size: tuple[int, int] = (256, 256),
    **_: object,
) -> TAPNext:
    """Build a float32 :class:`TAPNext` (eval mode, CPU) from a state dict in the official module layout.

    ``query_pos_embed`` may be absent (JAX checkpoints): it is then computed. Any other missing,
    unexpected or mis-shaped key raises :class:`PtrackError`. Extra keyword arguments (other registry
    config entries) are ignored. float32 tensors of ``sd`` become the model's parameters without a copy
    (780 MB for TAPNext-B): do not modify them afterwards.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    expected = expected_shapes(width, depth, num_heads, lru_width, image_size)
    sd = dict(sd)
    if "query_pos_embed" not in sd:
        sd["query_pos_embed"] = sincos_posemb_2d(image_size[0], image_size[1], width)
    check_state_dict(sd, expected, source, f"TAPNext (width {width}, depth {depth})")
    # a sum is NaN/inf when any value is (one pass, no 194 M-entry mask); only then the exact test (overflow)
    bad = [k for k, v in sd.items() if not torch.is_floating_point(v)
           or (not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all()))]
    if bad:
        raise PtrackError(f"{source} holds non-finite or non-float values in {len(bad)} tensor(s), e.g. {bad[0]} (download it again)")
    with torch.device("meta"):
        model = TAPNext(image_size=image_size, width=width, depth=depth, num_heads=num_heads, lru_width=lru_width)
    model.load_state_dict({k: v.detach().to(torch.float32) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()


__all__ = [
    "TAPNext",
    "TAPNextState",
    "convert_jax_checkpoint",
    "expected_shapes",
    "load_tapnext",
    "sincos_posemb_2d",
    "tracker_certainty",
]
