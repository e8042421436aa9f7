"""The online RealTracker's window schedules around :meth:`RealTracker.refine` (spec sec. 11).

* :func:`forward_sliding` (sec. 11a): a whole video in windows of S=16 frames every 8 frames, each window
  initialised from the previous one's last 8 frames (:func:`carry_over`);
* :func:`step_pyramid` (sec. 11b): true streaming, one chunk of frames per call, with the explicit
  :class:`StreamingState` carried between calls.

``model`` is the :class:`~.realtracker.RealTracker` (online variant) whose ``refine``, ``support_features`` and
``window_len`` these schedules drive; shapes as in :mod:`.realtracker`: pyramids ``[B, T, 128, h, w]`` levels, ``qt [B, N]`` frame indices,
``qxy [B, N, 2]`` feature units; coordinates returned in pixels of the model's input.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from .realtracker_blocks import PATCH
from .realtracker_pyramid import STRIDE, mask_support, pad_time


@dataclass
class TrainData:
    """Per-window, per-iteration predictions (for training losses), gradients kept.

    coords[w][i]: ``[B, S_w, N, 2]`` pixels; vis[w][i], conf[w][i]: ``[B, S_w, N]`` probabilities;
    window ``w`` covers frames ``starts[w] .. starts[w] + S_w - 1`` (offline: one window = the clip).
    valid: ``[B, T, N]`` (online: ``t >= t_n``; offline: all ones, as the official code).
    """

    coords: list[list[torch.Tensor]]
    vis: list[list[torch.Tensor]]
    conf: list[list[torch.Tensor]]
    valid: torch.Tensor
    starts: list[int]


@dataclass
class StreamingState:
    """Explicit state of the online model between :meth:`RealTracker.step` calls (spec sec. 11b).

    ``online_ind``: first frame of the next chunk; ``support``: accumulated query support features per
    level ``[B, N, 7, 7, 128]``; ``tail_*``: predictions (feature units / logits) of frames
    ``online_ind .. online_ind + 7`` from the last window (they initialise the next window).
    """

    online_ind: int = 0
    support: list[torch.Tensor] | None = None
    tail_coords: torch.Tensor | None = None
    tail_vis: torch.Tensor | None = None
    tail_conf: torch.Tensor | None = None
    last_len: int = 0


def forward_sliding(
    model: nn.Module, pyramid: list[torch.Tensor], qt: torch.Tensor, qxy: torch.Tensor, t: int, iters: int, is_train: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TrainData | None]:
    """Online model over a whole video: windows of S=16 frames every 8 frames (sec. 11a)."""
    s, step = model.window_len, model.window_len // 2
    b, n = qt.shape
    t_pad = t + (s - t % s) % s
    pyramid = pad_time([p[:, :t] for p in pyramid], t_pad)
    support = model.support_features(pyramid, qt, qxy)
    coords_pred = qxy.new_zeros((b, t, n, 2))
    vis_pred = qxy.new_zeros((b, t, n))
    conf_pred = qxy.new_zeros((b, t, n))
    coords_init = qxy[:, None].expand(b, s, n, 2)
    vis_init = qxy.new_zeros((b, s, n))
    conf_init = qxy.new_zeros((b, s, n))
    num_windows = (t - s + step - 1) // step + 1  # quirk kept: 0 windows for t <= 8
    train_c, train_v, train_f, starts = [], [], [], []
    for ind in range(0, step * num_windows, step):
        if ind > 0:
            coords_init, vis_init, conf_init = carry_over(
                qt < ind + step,
                (coords_pred[:, ind : ind + step], vis_pred[:, ind : ind + step], conf_pred[:, ind : ind + step]),
                (coords_init, vis_init, conf_init),
            )
        cs, vs, fs = model.refine(
            [p[:, ind : ind + s] for p in pyramid],
            mask_support(support, qt < ind + s),
            coords_init,
            vis_init,
            conf_init,
            iters,
            keep_all=is_train,
        )
        tw = min(t - ind, s)
        coords_pred[:, ind : ind + tw] = cs[-1][:, :tw]
        vis_pred[:, ind : ind + tw] = vs[-1][:, :tw]
        conf_pred[:, ind : ind + tw] = fs[-1][:, :tw]
        if is_train:
            train_c.append([c[:, :tw] * STRIDE for c in cs])
            train_v.append([torch.sigmoid(v[:, :tw]) for v in vs])
            train_f.append([torch.sigmoid(f[:, :tw]) for f in fs])
            starts.append(ind)
    train = None
    if is_train:
        valid = qt[:, None, :] <= torch.arange(t, device=qt.device)[None, :, None]
        train = TrainData(train_c, train_v, train_f, valid, starts)
    return coords_pred * STRIDE, torch.sigmoid(vis_pred), torch.sigmoid(conf_pred), train

def carry_over(
    copy: torch.Tensor,
    prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Window initialisation for points with ``copy [B, N]``: the previous 8 frames, then frame 7 repeated."""
    out = []
    for p, i in zip(prev, init):
        half = p.shape[1]
        p = torch.cat([p, p[:, -1:].expand(-1, i.shape[1] - half, *p.shape[2:])], dim=1)
        c = copy[:, None, :, None] if p.dim() == 4 else copy[:, None, :]
        out.append(torch.where(c, p, i))
    return out[0], out[1], out[2]


def step_pyramid(
    model: nn.Module, state: StreamingState, pyramid: list[torch.Tensor], queries: torch.Tensor, iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`step` on the chunk's pyramid (``T_c`` real frames, padded here to 16)."""
    if not model.online:
        raise ValueError("streaming needs the online model")
    s, step = model.window_len, model.window_len // 2
    t_c = pyramid[0].shape[1]
    ind = state.online_ind
    if not 1 <= t_c <= s:
        raise ValueError(f"a streaming chunk must have 1..{s} frames, got {t_c}")
    if ind > 0 and (state.last_len != s or t_c <= step):
        raise ValueError(
            f"streaming chunks must be frames [k*{step}, k*{step}+16) with only the last one shorter "
            f"(> {step} frames); got {t_c} frames after a chunk of {state.last_len}"
        )
    pyramid = pad_time(pyramid, s)
    dtype = pyramid[0].dtype
    queries = queries.to(dtype)
    qt = queries[..., 0].long()
    qxy = queries[..., 1:3] / STRIDE
    b, n = qt.shape
    # Each query's patch is captured once, from the first chunk whose new half holds its frame.
    left = 0 if ind == 0 else ind + step
    new = (qt >= left) & (qt < ind + s)
    if state.support is None:
        c = pyramid[0].shape[2]
        state.support = [pyramid[0].new_zeros((b, n, PATCH, PATCH, c)) for _ in pyramid]
    for bi in range(b):
        idx = torch.nonzero(new[bi]).squeeze(1)
        if idx.numel():  # sample only the newly captured queries (0 + f: same values as the official sum)
            pyr_b = [p[bi : bi + 1] for p in pyramid]
            feats = model.support_features(pyr_b, qt[bi : bi + 1, idx] - ind, qxy[bi : bi + 1, idx])
            for acc, f in zip(state.support, feats):
                acc[bi, idx] = acc[bi, idx] + f[0]

    coords_init = qxy[:, None].expand(b, s, n, 2)
    vis_init = qxy.new_zeros((b, s, n))
    conf_init = qxy.new_zeros((b, s, n))
    if ind > 0:
        assert state.tail_coords is not None and state.tail_vis is not None and state.tail_conf is not None
        coords_init, vis_init, conf_init = carry_over(
            qt < ind + step, (state.tail_coords, state.tail_vis, state.tail_conf), (coords_init, vis_init, conf_init)
        )
    support = mask_support(state.support, qt < ind + s)
    cs, vs, fs = model.refine(pyramid, support, coords_init, vis_init, conf_init, iters)
    c, v, f = cs[-1], vs[-1], fs[-1]
    state.tail_coords, state.tail_vis, state.tail_conf = c[:, step:s], v[:, step:s], f[:, step:s]
    state.online_ind += step
    state.last_len = t_c
    return c[:, :t_c] * STRIDE, torch.sigmoid(v[:, :t_c]), torch.sigmoid(f[:, :t_c])


__all__ = ["StreamingState", "TrainData", "carry_over", "forward_sliding", "step_pyramid"]
