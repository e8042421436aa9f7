"""ProTracker: probabilistic integration of optical-flow chains and long-term keypoints.

After Zhang et al., "ProTracker: Probabilistic Integration for Robust and Accurate Point Tracking"
(2025), rebuilt without learned parts by default. Units: pixels of the working frames, x before y;
variances are per axis (an isotropic 2-D Gaussian ``N(mu, var * I)``), in px^2.

* **Flow chains.** For frame ``i`` the estimate of each earlier frame ``j`` in
  ``{i-1, i-2, i-4, i-8, i-16, i-32, query frame}`` is carried to ``i`` through the flow ``j -> i``
  (MFT-style intervals): ``mu_i = mu_j + F_{j->i}(mu_j)``, ``var_i = var_j + var_flow``. Flows
  come from a pluggable source (``flow.py``; default OpenCV DIS, no weights).
* **Flow uncertainty** (the paper learns it; here it comes from forward-backward consistency).
  With ``e = |F_{j->i}(mu_j) + F_{i->j}(mu_i)|`` the forward-backward residual,
  ``var_flow = flow_var0 + fb_var_gain * e^2``. Why: if the forward and backward vectors have
  independent errors of variance ``s^2`` per axis, ``E[e^2] = 4 s^2``, so ``e^2 / 4`` estimates
  the per-axis variance of one vector (``fb_var_gain = 0.25``); we use a larger gain (0.5) because
  errors that are consistent in both directions are not seen by the check at all. ``flow_var0``
  (0.25 px^2) is DIS's sub-pixel floor. A chain whose source is occluded, whose residual exceeds
  ``fb_threshold + 0.05 |flow|``, or which lands outside the object mask is dropped. Chains that
  land outside the frame are kept (they vote that the point has left); the fused estimate outside
  the frame makes the point occluded.
* **Consensus** (outlier rejection before fusion): chains whose means disagree beyond a chi^2
  gate are split into groups and only the largest group is fused. A long-range flow can be wrong
  yet forward-backward consistent, and with its small variance it would dominate the product.
* **Fusion** of the surviving chains: the best linear unbiased estimate of K Gaussians whose
  errors share one correlation coefficient ``rho`` (chains overlap in history, so they are not
  independent). With ``u_k = 1 / sigma_k`` and ``S = sum u_k``, the covariance ``D R D``
  (``R = (1 - rho) I + rho 11^T``) has the closed-form inverse giving weights
  ``w_k ∝ u_k (u_k - c S)``, ``c = rho / (1 + (K - 1) rho)``, and fused variance
  ``(1 - rho) / (sum u_k^2 - c S^2)``. ``rho = 0`` is the plain product of Gaussians
  (inverse-variance weights, variance ``1 / sum 1/var_k``); with ``rho > 0`` weak chains can get
  a negative weight, which we clip to 0 (dropping them) and re-solve, so the mean stays a convex
  combination. K equal chains give ``var (1 + (K - 1) rho) / K`` instead of ``var / K``, so the
  variance does not collapse when many overlapping chains agree. ``fusion=False`` (ablation)
  takes the lowest-variance chain instead.
* **Geometry.** Each chain also carries the rotation + scale part of the flow's Jacobian at the
  point (a similarity ``(a, b)``, composed along the chain and fused with the same weights), so
  the query patch can be resampled as it should look in frame ``i``: descriptors are compared
  geometry-aware, and rotating or zooming content is not mistaken for an occlusion.
* **Long-term keypoints.** The (warped) query descriptor is searched in a window around the
  estimate; when the flow lost the point the window is larger and grows with the time lost. A
  soft-argmax over the 5x5 cells around the best cell of the cosine heatmap gives a keypoint,
  accepted when its similarity is at least ``kp_threshold`` and beats the best match outside that
  neighbourhood by ``kp_margin`` (repeated patterns are ambiguous). An accepted keypoint is fused
  as one more Gaussian (variance ``kp_var``) when it agrees with the flow (Mahalanobis gate);
  when it disagrees the one whose descriptor matches the query better wins; with no valid chain
  it re-localises the point (after an occlusion, or to stop drift).
* **Feature filter.** Cosine similarity of the descriptor at the estimate with the query's below
  ``filter_threshold`` (0.5) marks the point occluded. Default descriptor (``patch``, no weights):
  the low-frequency DCT coefficients of a 9x9 colour patch (17 px wide), i.e. normalised
  cross-correlation of blurred colour patches. ``sift`` (RootSIFT on a grid) and ``realtracker``
  (the CoTracker3 ``fnet``, given a loaded module) are alternatives. Points whose query patch has
  no texture (``min_contrast``) cannot be verified and skip the filter and the keypoints.
* **Object masks** (optional; the paper uses SAM): ``mask_video`` is a folder of per-frame masks;
  for points queried inside the mask, estimates and keypoints outside it count as occluded.
* **Backward pass.** After the forward pass, a pass from the last frame back to the query frame
  revisits the points the forward pass left occluded, chaining from later frames' final
  (visible) estimates; the backward estimate is adopted where it comes out visible.

Frames before a point's query frame are tracked by the same forward/backward passes run in
reversed time (``Tracker.backward`` is True).

Memory: the tracker needs the whole clip (``streaming=False``, ``read_all``), but flows are not
kept per frame: the ``<= 2 x (6 + max_query_flows)`` flow fields frame ``i`` needs are computed
when ``i`` is processed and go into an LRU cache with a byte budget (``flow_cache_mb``, default
256 MiB = 512 flows at 256x256, 128 at 512x512). The backward pass needs the same pairs as the
forward pass, latest first, so on short clips it finds them in the cache and on long clips it
recomputes the evicted ones (it only visits frames where some point is occluded). Kept for the
whole clip are only the per-point estimates (mean, variance, flags, similarity, similarity
transform: 27 bytes per point and frame), the query patches (13 KB per point) and the frames (at
the working resolution, ``work_size``). A 1000-frame 512x512 clip with 1000 points: 786 MB of
frames + 27 MB of estimates + 13 MB of query patches + the 256 MB cache + ~100 MB of per-frame
work buffers.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.trackers.base import FrameSource, ProgressFn, Tracker, TrackOutput
from pointtrack_cli.trackers.flow import FlowSource, make_flow_source, sample_bilinear

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------
# Gaussian fusion
# --------------------------------------------------------------------------------------------


def fuse_gaussians(
    means: np.ndarray, var: np.ndarray, valid: np.ndarray, rho: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fuse K isotropic 2-D Gaussians per point, errors with pairwise correlation ``rho``.

    Args:
        means: ``[K, N, 2]`` chain means (pixels); ignored where not ``valid``.
        var: ``[K, N]`` chain variances (pixels^2, > 0).
        valid: ``[K, N]`` bool, which chains take part.
        rho: correlation coefficient in ``[0, 1)``.
    Returns:
        ``(mean [N, 2], var [N], any_valid [N], weights [K, N])``; mean NaN and var inf where no
        chain is valid; the weights sum to 1 over the chains (0 for dropped ones).
    """
    valid = valid & np.isfinite(var) & np.isfinite(means).all(-1)
    u = np.where(valid, 1.0 / np.sqrt(np.maximum(np.where(valid, var, 1.0), 1e-12)), 0.0)
    for _ in range(2):  # second round drops chains that got a negative weight
        k = valid.sum(0)
        c = rho / (1.0 + np.maximum(k - 1, 0) * rho)
        s = u.sum(0)
        w = u * (u - c * s)
        neg = valid & (w <= 0)
        if not neg.any():
            break
        valid = valid & ~neg
        u = np.where(valid, u, 0.0)
    w = np.where(valid, np.maximum(w, 0.0), 0.0)
    wsum = w.sum(0)
    any_valid = valid.any(0) & (wsum > 0)
    safe = np.where(any_valid, wsum, 1.0)
    m = np.where(valid[..., None], np.nan_to_num(means), 0.0)
    mean = (w[..., None] * m).sum(0) / safe[:, None]
    q = (u**2).sum(0)
    k = valid.sum(0)
    c = rho / (1.0 + np.maximum(k - 1, 0) * rho)
    s = u.sum(0)
    denom = q - c * s**2
    fvar = np.where(any_valid, (1.0 - rho) / np.maximum(denom, 1e-12), np.inf)
    mean = np.where(any_valid[:, None], mean, np.nan)
    return mean.astype(np.float32), fvar.astype(np.float32), any_valid, w / safe


def consensus(means: np.ndarray, var: np.ndarray, valid: np.ndarray, tie: np.ndarray | None = None,
              floor: float = 1.0) -> np.ndarray:
    """Outlier rejection before fusion: keep the largest group of chains that agree.

    Two chains agree when their means are within the 99 % chi^2 (2 dof) gate of their summed
    variances (+ ``floor`` px^2). The chain agreeing with most others wins (ties: higher ``tie``
    score ``[K, N]``, e.g. descriptor similarity, then lower variance); chains that disagree with
    it are dropped. Why: a long-range flow can be wrong yet forward-backward consistent, and with
    its small variance it would dominate the product of Gaussians.
    Returns the new ``valid`` ``[K, N]``.
    """
    if means.shape[0] < 2:
        return valid
    d2 = ((means[:, None] - means[None]) ** 2).sum(-1)  # [K, K, N]
    gate = 9.21 * (var[:, None] + var[None]) + floor
    agree = valid[:, None] & valid[None] & (d2 <= gate)
    support = agree.sum(1).astype(np.float64)  # [K, N]
    tb = np.zeros_like(support) if tie is None else np.clip(np.nan_to_num(tie, nan=-1.0), -1, 1) + 1.0
    vr = np.where(np.isfinite(var), var, 1e9)
    score = np.where(valid, support * 1e3 + tb * 10.0 - np.minimum(vr, 9.0), -np.inf)
    best = score.argmax(0)
    keep = agree[best, :, np.arange(means.shape[1])].T  # [K, N]
    return valid & keep


def lowest_variance(
    means: np.ndarray, var: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ablation of :func:`fuse_gaussians`: take the valid chain with the smallest variance."""
    valid = valid & np.isfinite(var) & np.isfinite(means).all(-1)
    v = np.where(valid, var, np.inf)
    best = v.argmin(0)
    idx = np.arange(means.shape[1])
    any_valid = valid.any(0)
    mean = np.where(any_valid[:, None], means[best, idx], np.nan)
    w = np.zeros(var.shape, np.float64)
    w[best, idx] = any_valid
    return mean.astype(np.float32), v[best, idx].astype(np.float32), any_valid, w


# --------------------------------------------------------------------------------------------
# Dense descriptors
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureMap:
    """Dense descriptors of one frame.

    feats: ``[D, h, w]`` float32, unit length per cell (zero where undefined); cell ``(u, v)``
        describes pixel ``(u * stride, v * stride)``.
    strength: ``[h, w]`` texture strength (grey levels), or None when every cell is usable.
    """

    feats: torch.Tensor
    stride: int
    strength: torch.Tensor | None = None
    image: torch.Tensor | None = None
    """``[3, H, W]`` the (blurred) image the patches were cut from, for warped query patches."""


def _sample_image(image: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` ``[C, H, W]`` at pixels ``px, py`` ``[N, A, B]`` -> ``[N, C, A, B]``.

    Positions outside the image are clamped to the border.
    """
    c, h, w = image.shape
    g = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], -1)  # [N, A, B, 2]
    n, a, b = px.shape
    out = F.grid_sample(image[None], g.reshape(1, n * a, b, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out[0].reshape(c, n, a, b).permute(1, 0, 2, 3).contiguous()


class _MapQueries:
    """Query descriptors for extractors without warping: sampled once from the query frame's map."""

    def query_state(self, fmap: FeatureMap, xy: np.ndarray) -> torch.Tensor:
        return sample_descriptors(fmap, xy)

    def query_descriptors(self, state: torch.Tensor, geo: np.ndarray) -> torch.Tensor:
        return state


def _dct_basis(k: int, max_freq: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis functions ``[M, k, k]`` with ``0 < p + q <= max_freq``."""
    i = torch.arange(k, dtype=torch.float64)
    rows = []
    for p in range(max_freq + 1):
        for q in range(max_freq + 1 - p):
            if p == q == 0:
                continue  # the DC term: dropping it removes the patch mean (brightness)
            b = torch.outer(torch.cos(torch.pi * (i + 0.5) * p / k), torch.cos(torch.pi * (i + 0.5) * q / k))
            rows.append(b / b.norm())
    return torch.stack(rows).float()


class PatchFeatures:
    """Normalised colour patches, compressed: the low-frequency 2-D DCT coefficients (DC dropped,
    ``0 < p + q <= max_freq``) of each RGB channel of a ``k x k`` grid (step ``dilation`` px) of the
    blurred image, L2-normalised. No weights.

    The cosine of two such vectors is the normalised cross-correlation of the low-passed colour
    patches (brightness-invariant; colour matters, grey would lose chromatic texture). The
    blurred patch's energy sits almost entirely in these few coefficients (42 dims instead of
    ``3 k^2 = 243``, ~98 % of the energy), which makes the keypoint search 6x cheaper.
    ``strength`` is the patch's RMS contrast in grey levels.
    """

    name = "patch"

    def __init__(self, k: int = 9, dilation: int = 2, blur: float = 1.0, stride: int = 2, max_freq: int = 4) -> None:
        self.k, self.dilation, self.blur, self.stride = k, dilation, blur, stride
        basis = _dct_basis(k, max_freq)
        self.weight = basis[:, None].repeat(3, 1, 1, 1)  # [3 M, 1, k, k], grouped per channel

    def __call__(self, frame: np.ndarray) -> FeatureMap:
        img = frame.astype(np.float32)
        if self.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        pad = (self.k - 1) * self.dilation // 2
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        with torch.no_grad():
            coef = F.conv2d(x, self.weight, stride=self.stride, dilation=self.dilation, groups=3)[0]
        norm = coef.norm(dim=0)
        feats = coef / norm.clamp_min(1e-6)
        strength = norm / (self.k * 3**0.5)
        return FeatureMap(feats.contiguous(), self.stride, strength, image=x[0, :, pad:-pad or None, pad:-pad or None])

    def query_state(self, fmap: FeatureMap, xy: np.ndarray) -> torch.Tensor:
        """Blurred query patches ``[N, 3, S, S]`` on a 1-px grid, wide enough to be resampled at half scale."""
        r = (self.k - 1) * self.dilation  # twice the sampling radius
        off = torch.arange(-r, r + 1, dtype=torch.float32)
        gy, gx = torch.meshgrid(off, off, indexing="ij")
        c = torch.from_numpy(np.asarray(xy, np.float32))
        px = c[:, 0, None, None] + gx[None]
        py = c[:, 1, None, None] + gy[None]
        return _sample_image(fmap.image, px, py)  # [N, 3, S, S]

    def query_descriptors(self, state: torch.Tensor, geo: np.ndarray) -> torch.Tensor:
        """Query descriptors ``[N, D]`` as they should look in a frame where the point's neighbourhood
        went through the similarity ``geo`` ``[N, 2]`` = (a, b) (``x' = [[a, -b], [b, a]] x``).

        The frame's patch grid offsets ``o`` map back to ``T^-1 o`` in the query patch, so the query
        patch is resampled there: rotation and scale are compensated (the geometry-aware filter).
        """
        n, _, size, _ = state.shape
        half = (size - 1) / 2
        g = torch.from_numpy(np.asarray(geo, np.float64))
        a, b = g[:, 0], g[:, 1]
        den = (a * a + b * b).clamp_min(1e-6)
        ia, ib = (a / den).float(), (-b / den).float()  # inverse similarity
        o = (torch.arange(self.k, dtype=torch.float32) - (self.k - 1) / 2) * self.dilation
        oy, ox = torch.meshgrid(o, o, indexing="ij")
        qx = ia[:, None, None] * ox - ib[:, None, None] * oy
        qy = ib[:, None, None] * ox + ia[:, None, None] * oy
        grid = torch.stack([qx / half, qy / half], -1)  # [N, k, k, 2] in [-1, 1] over the stored patch
        smp = F.grid_sample(state, grid, mode="bilinear", padding_mode="border", align_corners=True)  # [N, 3, k, k]
        basis = self.weight[: self.weight.shape[0] // 3, 0].reshape(-1, self.k * self.k)  # [M, k*k]
        coef = torch.einsum("ncp,mp->ncm", smp.reshape(n, 3, -1), basis).reshape(n, -1)
        return F.normalize(coef, dim=1)


class SiftFeatures(_MapQueries):
    """RootSIFT descriptors on a regular grid (every ``stride`` px, patch ``size`` px). No weights."""

    name = "sift"

    def __init__(self, stride: int = 4, size: float = 12.0) -> None:
        self.stride, self.size = stride, size
        self._sift = cv2.SIFT_create()

    def __call__(self, frame: np.ndarray) -> FeatureMap:
        g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        h = (g.shape[0] - 1) // self.stride + 1
        w = (g.shape[1] - 1) // self.stride + 1
        vs, us = np.mgrid[0:h, 0:w]
        kps = [cv2.KeyPoint(float(u * self.stride), float(v * self.stride), self.size)
               for v, u in zip(vs.ravel(), us.ravel())]
        kps, desc = self._sift.compute(g, kps)
        feats = np.zeros((h, w, 128), np.float32)
        if desc is not None and len(kps):
            # RootSIFT: Hellinger kernel, so that the cosine compares histograms sensibly.
            d = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-6))
            # SIFT vectors are non-negative, so any two have a cosine of ~0.6; centring on the
            # frame's mean descriptor brings unrelated patches to ~0, as the filter expects.
            d -= d.mean(0, keepdims=True)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
            pts = np.array([k.pt for k in kps], np.float32)
            uu = np.clip(np.round(pts[:, 0] / self.stride).astype(int), 0, w - 1)
            vv = np.clip(np.round(pts[:, 1] / self.stride).astype(int), 0, h - 1)
            feats[vv, uu] = d
        return FeatureMap(torch.from_numpy(feats).permute(2, 0, 1).contiguous(), self.stride, None)


class FnetFeatures(_MapQueries):
    """Features of a CNN such as RealTracker's ``fnet`` (:class:`pointtrack_cli.models.cnn.BasicEncoder`).

    The image goes in as ``[1, 3, H, W]`` in [-1, 1]; the output ``[1, D, H/4, W/4]`` is
    L2-normalised per cell (the encoder's own output is not).
    """

    name = "realtracker"

    def __init__(self, fnet: nn.Module, stride: int = 4, device: str | torch.device = "cpu") -> None:
        self.fnet = fnet.eval().to(device)
        self.stride, self.device = stride, torch.device(device)

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> FeatureMap:
        x = torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        f = self.fnet(x)[0].float().cpu()
        return FeatureMap(F.normalize(f, dim=0), self.stride, None)


def fnet_from_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """A :class:`~pointtrack_cli.models.cnn.BasicEncoder` loaded from a RealTracker (CoTracker3) state dict.

    Takes the ``fnet.*`` tensors (a bare fnet state dict works too); raises a :class:`PtrackError`
    naming missing / mis-shaped keys.
    """
    from pointtrack_cli.checkpoints import check_state_dict
    from pointtrack_cli.models.cnn import BasicEncoder

    sub = {k[len("fnet."):]: v for k, v in sd.items() if k.startswith("fnet.")} or dict(sd)
    net = BasicEncoder()
    check_state_dict(sub, {k: tuple(v.shape) for k, v in net.state_dict().items()}, source, "RealTracker fnet")
    net.load_state_dict(sub)
    return net.eval()


def sample_descriptors(fmap: FeatureMap, xy: np.ndarray) -> torch.Tensor:
    """Bilinear descriptors at pixels ``xy`` ``[N, 2]`` -> ``[N, D]`` unit vectors (zero outside the map)."""
    d, h, w = fmap.feats.shape
    u = torch.from_numpy(np.asarray(xy, np.float32)) / fmap.stride
    g = torch.stack([2 * u[:, 0] / max(w - 1, 1) - 1, 2 * u[:, 1] / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(fmap.feats[None], g[None, None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return F.normalize(out[0, :, 0].T, dim=1)


def sample_strength(fmap: FeatureMap, xy: np.ndarray) -> np.ndarray:
    """Texture strength at ``xy`` ``[N, 2]`` -> ``[N]`` (inf when the extractor has none)."""
    if fmap.strength is None:
        return np.full(len(xy), np.inf, np.float32)
    s = fmap.strength.numpy()[..., None]
    return sample_bilinear(s, np.asarray(xy, np.float32) / fmap.stride)[:, 0]


def search_keypoints(
    fmap: FeatureMap,
    qdesc: torch.Tensor,
    centre: np.ndarray,
    radius: float,
    temperature: float = 0.05,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best match of each query descriptor in a square window around ``centre``.

    Args:
        qdesc: ``[N, D]`` unit query descriptors.
        centre: ``[N, 2]`` window centres (pixels).
        radius: half-size of the window (pixels).
        allowed: optional ``[h, w]`` bool map of cells that may match (object mask).
    Returns:
        ``(xy [N, 2], sim [N], second [N])``: soft-argmax over the 5x5 cells around the best
        cell of the cosine-similarity heatmap (temperature ``temperature``), the best similarity
        (-1 where the whole window is outside the frame) and the best similarity outside that
        5x5 neighbourhood (a repeated pattern gives a second peak as high as the first).
    """
    n = len(centre)
    d, h, w = fmap.feats.shape
    s = fmap.stride
    r = max(2, int(round(radius / s)))
    side = 2 * r + 1
    off = np.arange(-r, r + 1)
    c = np.round(np.clip(np.nan_to_num(centre, nan=-1e6), -1e6, 1e6) / s).astype(np.int64)
    flat = fmap.feats.reshape(d, -1).T  # [h*w, D]
    allowed_flat = None if allowed is None else np.asarray(allowed, bool).reshape(-1)
    sims = np.full((n, side, side), -2.0, np.float32)
    chunk = max(1, int(4e6 // (side * side * d)))
    for a in range(0, n, chunk):
        cc = c[a : a + chunk]
        uu = cc[:, 0, None, None] + off[None, None, :]
        vv = cc[:, 1, None, None] + off[None, :, None]
        uu, vv = np.broadcast_arrays(uu, vv)
        ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        idx = np.clip(vv, 0, h - 1) * w + np.clip(uu, 0, w - 1)  # [n, side, side]
        if allowed_flat is not None:
            ok &= allowed_flat[idx]
        g = flat[torch.from_numpy(idx.reshape(-1))].reshape(len(cc), side * side, d)
        sim = torch.bmm(g, qdesc[a : a + chunk, :, None])[..., 0].numpy().reshape(-1, side, side)
        sims[a : a + chunk] = np.where(ok, sim, -2.0)
    best = sims.reshape(n, -1).argmax(1)
    bv, bu = best // side, best % side
    rows = np.arange(n)
    best_sim = sims[rows, bv, bu]
    # Soft-argmax over the 5x5 neighbourhood of the peak: sub-cell precision without averaging
    # in distant secondary modes.
    nb = np.arange(-2, 3)
    nv = bv[:, None, None] + nb[None, :, None]
    nu = bu[:, None, None] + nb[None, None, :]
    nv, nu = np.broadcast_arrays(nv, nu)
    nok = (nv >= 0) & (nv < side) & (nu >= 0) & (nu < side)
    ns = sims[rows[:, None, None], np.clip(nv, 0, side - 1), np.clip(nu, 0, side - 1)]
    logit = np.where(nok & (ns > -1.5), ns / temperature, -np.inf).reshape(n, -1)
    # A window wholly outside the frame has no finite logit: give it uniform weights.
    logit = np.where(np.isfinite(logit).any(1, keepdims=True), logit, 0.0)
    logit -= logit.max(1, keepdims=True)
    p = np.exp(logit)
    p /= p.sum(1, keepdims=True)
    eu = (p * nu.reshape(n, -1)).sum(1)
    ev = (p * nv.reshape(n, -1)).sum(1)
    xy = np.stack([(c[:, 0] - r + eu) * s, (c[:, 1] - r + ev) * s], -1).astype(np.float32)
    # Second-best match outside the peak's 5x5 neighbourhood (for the uniqueness test).
    gv = np.arange(side)[None, :, None]
    gu = np.arange(side)[None, None, :]
    far = (np.abs(gv - bv[:, None, None]) > 2) | (np.abs(gu - bu[:, None, None]) > 2)
    second = np.where(far, sims, -2.0).reshape(n, -1).max(1)
    best_sim = np.where(best_sim < -1.5, -1.0, best_sim).astype(np.float32)
    second = np.where(second < -1.5, -1.0, second).astype(np.float32)
    return xy, best_sim, second


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


class MaskVideo:
    """Per-frame object masks from a folder of images (sorted by name, one per frame; non-zero = object).

    ``frame_indices`` ``[T]``: the source frame number of each tracked frame (after --start/--stride);
    the k-th image (in name order) is the mask of source frame k.
    """

    def __init__(self, folder: str | Path, frame_indices: np.ndarray, size_hw: tuple[int, int]) -> None:
        p = Path(folder)
        if not p.is_dir():
            raise PtrackError(f"mask folder not found: {p} (give a folder of per-frame mask images)")
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in MASK_SUFFIXES)
        need = int(np.max(frame_indices)) + 1 if len(frame_indices) else 0
        if len(files) < need:
            raise PtrackError(
                f"mask folder {p} has {len(files)} images but frame {need - 1} of the video is tracked "
                "(give one mask image per video frame, in name order)"
            )
        self.files = [files[int(k)] for k in frame_indices]
        self.size_hw = size_hw
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, t: int) -> np.ndarray:
        """Mask ``[h, w]`` bool at the working resolution."""
        if t in self._cache:
            return self._cache[t]
        m = cv2.imread(str(self.files[t]), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise PtrackError(f"cannot read mask image {self.files[t]} (use PNG/JPEG)")
        h, w = self.size_hw
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        self._cache[t] = m > 0
        while len(self._cache) > 40:
            self._cache.popitem(last=False)
        return self._cache[t]


def _inside_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    u = np.round(np.nan_to_num(xy[:, 0], nan=-1)).astype(np.int64)
    v = np.round(np.nan_to_num(xy[:, 1], nan=-1)).astype(np.int64)
    ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.zeros(len(xy), bool)
    out[ok] = mask[v[ok], u[ok]]
    return out


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------


class ProTracker(Tracker):
    """Flow-chain + keypoint probabilistic tracker (see the module docstring). Weight-free by default.

    Args:
        flow: flow source: ``"dis"`` (= ``"dis-medium"``), ``"dis-fast"``, ``"dis-ultrafast"``,
            ``"farneback"`` or an object with ``__call__(src, dst) -> [H, W, 2]`` (see ``flow.py``).
        features: ``"patch"`` (default), ``"sift"`` or ``"realtracker"`` (needs ``fnet``).
        fnet: feature CNN for ``features="realtracker"`` (a loaded ``BasicEncoder``).
        intervals: chain intervals besides the query frame.
        rho: correlation coefficient between chain errors, in ``[0, 1)``.
        fusion / keypoints / backward_pass / feature_filter: ablation switches.
        filter_threshold: cosine below which the feature filter marks a point occluded.
        backward_min_sim: cosine a backward-pass estimate needs to replace an occlusion.
        reacquire_sim, reacquire_frames: cosine a point needs to count as visible again after
            ``reacquire_frames`` or more occluded frames; after fewer, the bar rises linearly from
            ``filter_threshold``. Why: the longer the gap, the longer the only chains left, and
            long-range flows land on wrong but forward-backward-consistent places, where a chance
            match of 0.5 is common.
        kp_threshold: similarity a keypoint needs to be accepted (default per feature type).
        kp_margin: uniqueness test: the best match must beat the best one outside its 5x5-cell
            neighbourhood by this much (repeated patterns give equal peaks); default per type.
        kp_radius / kp_radius_lost: keypoint search half-window in pixels (at ``work_size``),
            around a flow estimate / when the flow lost the point.
        kp_var: variance of a keypoint observation (px^2).
        fb_threshold: forward-backward residual (px) above which a chain is dropped (plus 5 % of
            the flow length).
        flow_var0, fb_var_gain: ``var_flow = flow_var0 + fb_var_gain * residual^2``.
        min_contrast: patch features only: query patches with a lower std (grey levels) are not
            verified by the filter nor searched as keypoints.
        mask_video: folder of per-frame object masks (optional).
        work_size: frames whose longer side exceeds this are downscaled to it (None: never).
        max_query_flows: at most this many distinct query frames get a direct chain per frame.
        flow_cache_mb: memory for reusing flow fields between passes (0: always recompute).
        device: torch device for ``fnet``.
    """

    name = "protracker"
    streaming = False
    backward = True

    def __init__(
        self,
        flow: str | FlowSource = "dis",
        features: str = "patch",
        fnet: nn.Module | None = None,
        intervals: Sequence[int] = (1, 2, 4, 8, 16, 32),
        rho: float = 0.8,
        fusion: bool = True,
        keypoints: bool = True,
        backward_pass: bool = True,
        feature_filter: bool = True,
        filter_threshold: float = 0.5,
        backward_min_sim: float = 0.5,
        reacquire_sim: float = 0.7,
        reacquire_frames: int = 8,
        kp_threshold: float | None = None,
        kp_margin: float | None = None,
        kp_radius: float = 12.0,
        kp_radius_lost: float = 32.0,
        kp_var: float = 0.5,
        fb_threshold: float = 1.0,
        flow_var0: float = 0.25,
        fb_var_gain: float = 0.5,
        min_contrast: float = 3.0,
        mask_video: str | Path | None = None,
        work_size: int | None = 512,
        max_query_flows: int = 2,
        flow_cache_mb: float = 256.0,
        device: str = "cpu",
    ) -> None:
        if not 0.0 <= rho < 1.0:
            raise PtrackError(f"rho must be in [0, 1), got {rho}")
        if features not in ("patch", "sift", "realtracker"):
            raise PtrackError(f"unknown features {features!r} (use patch, sift or realtracker)")
        if features == "realtracker" and fnet is None:
            raise PtrackError(
                "features=realtracker needs the RealTracker weights (give --weights or use --features patch)"
            )
        if not intervals or min(intervals) < 1:
            raise PtrackError("intervals must be positive frame offsets, e.g. 1,2,4,8,16,32")
        self.flow = make_flow_source(flow)
        self.features = features
        if features == "patch":
            self.extractor: Callable[[np.ndarray], FeatureMap] = PatchFeatures()
        elif features == "sift":
            self.extractor = SiftFeatures()
        else:
            self.extractor = FnetFeatures(fnet, device=device)  # type: ignore[arg-type]
        # Acceptance (similarity, uniqueness margin) per descriptor, chosen on TAP-Vid-style
        # synthetic clips (most accepted patch keypoints lie within 2 px). realtracker: a guess.
        default_kp, default_margin = {"patch": (0.85, 0.1), "sift": (0.9, 0.2), "realtracker": (0.8, 0.1)}[features]
        self.kp_margin = float(default_margin if kp_margin is None else kp_margin)
        self.intervals = tuple(sorted(set(int(k) for k in intervals)))
        self.rho = float(rho)
        self.fusion, self.keypoints = fusion, keypoints
        self.backward_pass, self.feature_filter = backward_pass, feature_filter
        self.filter_threshold = float(filter_threshold)
        self.backward_min_sim = float(backward_min_sim)
        self.reacquire_sim = float(reacquire_sim)
        self.reacquire_frames = max(1, int(reacquire_frames))
        self.kp_threshold = float(default_kp if kp_threshold is None else kp_threshold)
        self.kp_radius, self.kp_radius_lost, self.kp_var = float(kp_radius), float(kp_radius_lost), float(kp_var)
        self.fb_threshold, self.flow_var0, self.fb_var_gain = float(fb_threshold), float(flow_var0), float(fb_var_gain)
        self.min_contrast = float(min_contrast)
        self.mask_video = mask_video
        self.work_size = work_size
        self.max_query_flows = int(max_query_flows)
        self.flow_cache_mb = float(flow_cache_mb)
        self.debug = False  # True: keep the last run's state (``last_run``) with decision codes
        self.last_run: _Run | None = None

    def settings(self) -> dict:
        return {
            "flow": getattr(self.flow, "name", type(self.flow).__name__),
            "features": self.features,
            "intervals": list(self.intervals),
            "rho": self.rho,
            "fusion": self.fusion,
            "keypoints": self.keypoints,
            "backward_pass": self.backward_pass,
            "feature_filter": self.feature_filter,
            "filter_threshold": self.filter_threshold,
            "backward_min_sim": self.backward_min_sim,
            "reacquire_sim": self.reacquire_sim,
            "reacquire_frames": self.reacquire_frames,
            "kp_threshold": self.kp_threshold,
            "kp_margin": self.kp_margin,
            "kp_radius": self.kp_radius,
            "kp_radius_lost": self.kp_radius_lost,
            "kp_var": self.kp_var,
            "fb_threshold": self.fb_threshold,
            "flow_var0": self.flow_var0,
            "fb_var_gain": self.fb_var_gain,
            "min_contrast": self.min_contrast,
            "mask_video": None if self.mask_video is None else str(self.mask_video),
            "work_size": self.work_size,
        }

    def track(self, video: FrameSource, queries: np.ndarray, progress: ProgressFn | None = None) -> TrackOutput:
        frames = np.asarray(video.read_all())
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise PtrackError(f"expected RGB frames [T, H, W, 3], got {frames.shape}")
        t_all, H, W = frames.shape[:3]
        q = np.asarray(queries, np.float64).reshape(-1, 3)
        n = len(q)
        qt = np.round(q[:, 0]).astype(np.int64)
        if n and (qt.min() < 0 or qt.max() >= t_all):
            raise PtrackError(f"query frame out of range: the video has {t_all} frames (0..{t_all - 1})")
        # Working resolution: thresholds are in working pixels, so large videos are downscaled.
        s = 1.0
        if self.work_size is not None and max(H, W) > self.work_size:
            s = self.work_size / max(H, W)
        h, w = (max(1, round(H * s)), max(1, round(W * s))) if s != 1.0 else (H, W)
        sx, sy = w / W, h / H
        if (h, w) != (H, W):
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        qxy = np.stack([(q[:, 1] + 0.5) * sx - 0.5, (q[:, 2] + 0.5) * sy - 0.5], -1).astype(np.float32)
        masks = None
        if self.mask_video is not None:
            indices = np.asarray(getattr(video, "frame_indices", np.arange(t_all)), np.int64)[:t_all]
            masks = MaskVideo(self.mask_video, indices, (h, w))
        run = _Run(self, frames, qt, qxy, masks, progress)
        run.execute()
        if self.debug:
            self.last_run = run
        tracks = run.est.copy()
        tracks[..., 0] = (tracks[..., 0] + 0.5) / sx - 0.5
        tracks[..., 1] = (tracks[..., 1] + 0.5) / sy - 0.5
        vis = run.vis
        sim = np.nan_to_num(run.sim, nan=1.0)
        thr = self.filter_threshold
        # visibility_prob >= 0.5 exactly where visible; it grows with the descriptor match.
        span = max(1.0 - thr, 1e-6)
        p_vis = 0.5 + 0.5 * np.clip((sim - thr) / span, 0.0, 1.0)
        p_occ = 0.49 * np.clip(sim / max(thr, 1e-6), 0.0, 1.0) * run.had_chain
        vis_prob = np.where(vis, p_vis, p_occ)
        # Confidence: how tight the fused Gaussian is (1 at the query, 0.5 at 4 px^2 variance).
        conf = np.where(np.isfinite(run.var), 1.0 / (1.0 + np.nan_to_num(run.var, posinf=1e6) / 4.0), 0.0)
        conf = np.where(vis, conf, 0.5 * conf)
        return TrackOutput(tracks=tracks, visibility=vis, visibility_prob=vis_prob, confidence=conf)


class _Run:
    """State of one :meth:`ProTracker.track` call, at the working resolution.

    est ``[T, N, 2]``, var ``[T, N]`` (px^2, per axis), vis/known/had_chain ``[T, N]`` bool,
    sim ``[T, N]`` (descriptor cosine with the query), geo ``[T, N, 2]`` (local rotation/scale).
    """

    def __init__(self, cfg: ProTracker, frames: np.ndarray, qt: np.ndarray, qxy: np.ndarray,
                 masks: MaskVideo | None, progress: ProgressFn | None) -> None:
        self.cfg, self.frames, self.qt, self.qxy, self.masks = cfg, frames, qt, qxy, masks
        self.T, self.h, self.w = frames.shape[:3]
        n = len(qt)
        self.N = n
        self.est = np.full((self.T, n, 2), np.nan, np.float32)
        self.var = np.full((self.T, n), np.inf, np.float32)
        self.vis = np.zeros((self.T, n), bool)
        self.known = np.zeros((self.T, n), bool)
        self.had_chain = np.zeros((self.T, n), bool)
        self.sim = np.full((self.T, n), np.nan, np.float32)
        # Local similarity transform (a, b) from the query neighbourhood to frame t: the flow's
        # rotation and scale, chained like the means (complex product), so descriptors can be
        # compared geometry-aware.
        self.geo = np.zeros((self.T, n, 2), np.float32)
        self.geo[..., 0] = 1.0
        idx = np.arange(n)
        self.est[qt, idx] = qxy
        self.var[qt, idx] = 0.0
        self.vis[qt, idx] = True
        self.known[qt, idx] = True
        self.had_chain[qt, idx] = True
        self.sim[qt, idx] = 1.0
        self._fcache: OrderedDict[int, FeatureMap] = OrderedDict()
        self._flows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._flow_bytes = 0
        self._flow_budget = int(cfg.flow_cache_mb * 2**20)
        # Decision codes per entry for diagnosis (``ProTracker.debug``): tens digit = keypoint
        # (1 fused, 2 replaced the flow, 3 re-localised), ones = 1 no valid chain, 2 filtered out.
        self.debug: np.ndarray | None = np.zeros((self.T, n), np.int8) if cfg.debug else None
        self.debug_ksim = np.full((self.T, n), np.nan, np.float32) if cfg.debug else None
        self.use_features = cfg.keypoints or cfg.feature_filter
        self.qstate: torch.Tensor | None = None
        self.lost_for = np.zeros(n, np.int64)  # frames since the last valid chain, in the current pass
        self.occluded_for = np.zeros(n, np.int64)  # frames since the last visible one, in the current pass
        self.verifiable = np.zeros(n, bool)
        self.obj = np.zeros(n, bool)
        self.progress = progress
        self._done = 0
        self._reported = 0
        self._total = 1

    # ---- helpers -------------------------------------------------------------------------

    def fmap(self, t: int) -> FeatureMap:
        if t not in self._fcache:
            self._fcache[t] = self.cfg.extractor(self.frames[t])
            while len(self._fcache) > 3:
                self._fcache.popitem(last=False)
        self._fcache.move_to_end(t)
        return self._fcache[t]

    def flow(self, a: int, b: int) -> np.ndarray:
        """Dense flow ``[h, w, 2]`` from frame ``a`` to ``b``, through a byte-budgeted LRU cache.

        The backward pass needs exactly the pairs the forward pass computed (``F(i+k -> i)`` and
        ``F(i -> i+k)``), most recent first, so a cache of the last ``flow_cache_mb`` MiB of flows
        spares recomputing them on short clips, while long clips stay within the budget.
        """
        key = (a, b)
        f = self._flows.get(key)
        if f is not None:
            self._flows.move_to_end(key)
            return f
        f = np.ascontiguousarray(self.cfg.flow(self.frames[a], self.frames[b]), dtype=np.float32)
        self._flows[key] = f
        self._flow_bytes += f.nbytes
        while self._flow_bytes > self._flow_budget and len(self._flows) > 1:
            _, old = self._flows.popitem(last=False)
            self._flow_bytes -= old.nbytes
        return f

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            target = min(self.T, int(self.T * self._done / self._total))
            if target > self._reported:
                self.progress(target - self._reported)
                self._reported = target

    def _inside(self, xy: np.ndarray) -> np.ndarray:
        return (xy[:, 0] >= 0) & (xy[:, 0] <= self.w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= self.h - 1)

    def _mask_ok(self, t: int, pts: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """False where an object point lies outside the object mask of frame ``t``."""
        if self.masks is None or not self.obj[pts].any():
            return np.ones(len(pts), bool)
        return ~self.obj[pts] | _inside_mask(self.masks[t], xy)

    # ---- setup ----------------------------------------------------------------------------

    def _init_queries(self) -> None:
        cfg = self.cfg
        if self.masks is not None:
            for t in np.unique(self.qt):
                sel = np.nonzero(self.qt == t)[0]
                self.obj[sel] = _inside_mask(self.masks[int(t)], self.qxy[sel])
        if not self.use_features or self.N == 0:
            return
        state = None
        ident = np.tile([1.0, 0.0], (self.N, 1))
        for t in np.unique(self.qt):
            sel = np.nonzero(self.qt == t)[0]
            fm = self.fmap(int(t))
            st = cfg.extractor.query_state(fm, self.qxy[sel])
            if state is None:
                state = torch.zeros((self.N,) + tuple(st.shape[1:]))
            state[sel] = st
            d = cfg.extractor.query_descriptors(st, ident[sel])
            textured = sample_strength(fm, self.qxy[sel]) >= cfg.min_contrast
            self.verifiable[sel] = textured & (d.norm(dim=1).numpy() > 0.5)
        self.qstate = state

    def qdesc(self, pts: np.ndarray, geo: np.ndarray) -> torch.Tensor:
        """Query descriptors ``[n, D]`` of points ``pts`` warped by their similarity ``geo`` ``[n, 2]``."""
        return self.cfg.extractor.query_descriptors(self.qstate[pts], geo)  # type: ignore[index]

    # ---- passes ---------------------------------------------------------------------------

    def execute(self) -> None:
        if self.N == 0 or self.T == 1:
            if self.progress is not None:
                self.progress(self.T)
            return
        self._init_queries()
        T, qt = self.T, self.qt
        fwd_frames = range(int(qt.min()) + 1, T)
        rev_frames = range(int(qt.max()) - 1, -1, -1)
        n_refine = (len(fwd_frames) + len(rev_frames)) if self.cfg.backward_pass else 0
        self._total = max(1, len(fwd_frames) + len(rev_frames) + n_refine)
        # Forward in time from each query frame, then the backward pass over what it left occluded.
        after = np.arange(T)[:, None] > qt[None, :]  # [T, N]
        self._sweep(fwd_frames, +1, after, refine=False)
        if self.cfg.backward_pass:
            self._sweep(range(T - 1, int(qt.min()), -1), -1, after & ~self.vis, refine=True)
        # Frames before the query frame: the same two passes in reversed time.
        before = np.arange(T)[:, None] < qt[None, :]
        if before.any():
            self._sweep(rev_frames, -1, before, refine=False)
            if self.cfg.backward_pass:
                self._sweep(range(0, int(qt.max())), +1, before & ~self.vis, refine=True)
        if self.progress is not None and self._reported < T:
            self.progress(T - self._reported)

    def _sweep(self, order: range, d: int, update: np.ndarray, refine: bool) -> None:
        """Visit frames in ``order`` (time step ``d``: chains come from frames ``i - d * k``).

        ``update`` ``[T, N]``: which points to estimate at each frame. In a refine (backward)
        pass only visible sources are chained and only visible results are adopted.
        """
        self.lost_for[:] = 0
        self.occluded_for[:] = 0
        for i in order:
            pts = np.nonzero(update[i])[0]
            if len(pts):
                self._step(i, d, pts, refine)
            self._tick()

    def _step(self, i: int, d: int, pts: np.ndarray, refine: bool) -> None:
        cfg = self.cfg
        n = len(pts)
        sources: list[tuple[int, np.ndarray]] = []  # (source frame, indices into pts)
        used = set()
        for k in cfg.intervals:
            j = i - d * k
            if 0 <= j < self.T:
                ok = self.known[j, pts] & (self.vis[j, pts] if refine else True)
                if ok.any():
                    sources.append((j, np.nonzero(ok)[0]))
                    used.add(j)
        if not refine:
            # Direct chain from the query frame (anchors the track against drift).
            qs, counts = np.unique(self.qt[pts], return_counts=True)
            order = np.argsort(-counts, kind="stable")
            taken = 0
            for q in qs[order]:
                if q in used or q == i or taken >= cfg.max_query_flows:
                    continue
                sources.append((int(q), np.nonzero(self.qt[pts] == q)[0]))
                taken += 1
        k_ch = len(sources)
        means = np.full((max(k_ch, 1), n, 2), np.nan, np.float32)
        var = np.full((max(k_ch, 1), n), np.inf, np.float32)
        valid = np.zeros((max(k_ch, 1), n), bool)
        computed = np.zeros((max(k_ch, 1), n), bool)
        from_visible = np.zeros((max(k_ch, 1), n), bool)
        geos = np.zeros((max(k_ch, 1), n, 2), np.float64)
        geos[..., 0] = 1.0
        r = 3.0  # finite-difference step for the flow's Jacobian (px)
        for c, (j, sel) in enumerate(sources):
            p = pts[sel]
            x_j = self.est[j, p]
            f_ji = self.flow(j, i)
            fwd = sample_bilinear(f_ji, x_j)
            x_i = x_j + fwd
            means[c, sel] = x_i
            computed[c, sel] = True
            # Rotation + scale part of the flow's Jacobian, composed with the source's transform.
            dx = (sample_bilinear(f_ji, x_j + [r, 0]) - sample_bilinear(f_ji, x_j - [r, 0])) / (2 * r)
            dy = (sample_bilinear(f_ji, x_j + [0, r]) - sample_bilinear(f_ji, x_j - [0, r])) / (2 * r)
            ja = 1.0 + 0.5 * (dx[:, 0] + dy[:, 1])
            jb = 0.5 * (dx[:, 1] - dy[:, 0])
            mag = np.hypot(ja, jb)
            clip = np.clip(mag, 0.7, 1.4) / np.maximum(mag, 1e-6)  # a flow-boundary Jacobian is junk
            ja, jb = ja * clip, jb * clip
            ga, gb = self.geo[j, p, 0], self.geo[j, p, 1]
            geos[c, sel, 0] = ja * ga - jb * gb
            geos[c, sel, 1] = ja * gb + jb * ga
            src_vis = self.vis[j, p]
            from_visible[c, sel] = src_vis
            if not src_vis.any():
                var[c, sel] = self.var[j, p] + cfg.flow_var0
                continue
            f_ij = self.flow(i, j)
            bwd = sample_bilinear(f_ij, x_i)
            e = np.linalg.norm(fwd + bwd, axis=1)
            var[c, sel] = self.var[j, p] + cfg.flow_var0 + cfg.fb_var_gain * e**2
            # A chain landing outside the frame stays valid: it says the point left, and it must
            # outvote a lone long-range chain that lands inside on the wrong content.
            ok = src_vis & (e <= cfg.fb_threshold + 0.05 * np.linalg.norm(fwd, axis=1))
            ok &= self._mask_ok(i, p, x_i)
            valid[c, sel] = ok
        tie = None
        if self.use_features and k_ch > 1 and self.verifiable[pts].any():
            fm = self.fmap(i)
            qd = self.qdesc(pts, geos[0])
            tie = np.stack([(sample_descriptors(fm, np.nan_to_num(m, nan=-1e4)) * qd).sum(1).numpy() for m in means])
        valid = consensus(means, var, valid, tie)
        fuse = fuse_gaussians if cfg.fusion else (lambda m, v, ok, rho: lowest_variance(m, v, ok))
        mean, fvar, has, wts = fuse(means, var, valid, cfg.rho)
        # Fallback position for points no valid chain reaches: the chains from frames where the
        # point was visible (the flow there is filled in from the surroundings, which usually move
        # with the hidden point), else all computed chains (these may follow an occluder).
        fb_set = np.where(from_visible.any(0)[None], from_visible, computed)
        fb_mean, fb_var, fb_has, fb_wts = fuse_gaussians(means, var, fb_set, cfg.rho)
        mean = np.where(has[:, None], mean, fb_mean)
        fvar = np.where(has, fvar, fb_var)
        wts = np.where(has[None], wts, fb_wts)
        geo = (wts[..., None] * geos).sum(0)
        if not fb_has.all():  # no chain at all (cannot happen in the main pass); keep previous
            prev = np.clip(i - d, 0, self.T - 1)
            miss = ~has & ~fb_has
            mean[miss] = self.est[prev, pts[miss]]
            geo[miss] = self.geo[prev, pts[miss]]
            fvar[miss] = np.inf
        sim = np.full(n, np.nan, np.float32)
        ver = self.verifiable[pts] if self.use_features else np.zeros(n, bool)
        if self.use_features and ver.any():
            fm = self.fmap(i)
            qd = self.qdesc(pts, geo)
            sim_mean = (sample_descriptors(fm, np.nan_to_num(mean, nan=-1e4)) * qd).sum(1).numpy()
            if cfg.keypoints:
                mean, fvar, has, sim_mean = self._keypoints(i, fm, pts, qd, ver, mean, fvar, has, sim_mean)
            sim = np.where(ver, sim_mean, np.nan).astype(np.float32)
        vis = has & self._inside(mean) & self._mask_ok(i, pts, mean)
        if cfg.feature_filter:
            vis &= ~(ver & ~(sim >= cfg.filter_threshold))
            if not refine:
                # Coming back from an occlusion needs a clearer match than staying visible does.
                gap = np.minimum(self.occluded_for[pts] / cfg.reacquire_frames, 1.0)
                bar = cfg.filter_threshold + (cfg.reacquire_sim - cfg.filter_threshold) * gap
                vis &= ~(ver & ~(sim >= bar))
        if self.debug is not None and not refine:
            ones = np.where(~has, 1, np.where(~vis, 2, 0))
            self.debug[i, pts] = self.debug[i, pts] // 10 * 10 + ones
        if refine:
            # The backward pass overrides an occlusion decision of the forward pass, so it asks
            # for a clearer descriptor match than the filter does.
            adopt = vis & ~(ver & ~(sim >= cfg.backward_min_sim))
            p = pts[adopt]
            self.est[i, p], self.var[i, p], self.vis[i, p] = mean[adopt], fvar[adopt], True
            self.sim[i, p], self.had_chain[i, p], self.geo[i, p] = sim[adopt], True, geo[adopt]
            return
        self.est[i, pts], self.var[i, pts], self.vis[i, pts] = mean, fvar, vis
        self.sim[i, pts], self.known[i, pts], self.had_chain[i, pts] = sim, True, has
        self.geo[i, pts] = geo
        self.lost_for[pts] = np.where(has, 0, self.lost_for[pts] + 1)
        self.occluded_for[pts] = np.where(vis, 0, self.occluded_for[pts] + 1)

    def _keypoints(self, i: int, fm: FeatureMap, pts: np.ndarray, qd: torch.Tensor, ver: np.ndarray,
                   mean: np.ndarray, fvar: np.ndarray, has: np.ndarray, sim_mean: np.ndarray):
        """Search the query descriptors near the estimate and fuse accepted keypoints."""
        cfg = self.cfg
        mean, fvar, has, sim_mean = mean.copy(), fvar.copy(), has.copy(), sim_mean.copy()
        kp = np.full((len(pts), 2), np.nan, np.float32)
        ksim = np.full(len(pts), -1.0, np.float32)
        kmargin = np.zeros(len(pts), np.float32)
        allowed = None
        if self.masks is not None and self.obj[pts].any():
            hh, ww = fm.feats.shape[1:]
            # Cell (u, v) is pixel (u * stride, v * stride): sample the mask there.
            vv = np.clip(np.arange(hh) * fm.stride, 0, self.h - 1)
            uu = np.clip(np.arange(ww) * fm.stride, 0, self.w - 1)
            allowed = np.ascontiguousarray(self.masks[i][vv[:, None], uu[None, :]])
        # Lost points: the window grows with the time since the last valid chain (the fallback
        # position drifts), up to twice kp_radius_lost; grouped by radius to keep calls few.
        lost_for = self.lost_for[pts]
        lost_r = np.minimum(cfg.kp_radius_lost * (1.0 + lost_for / 8.0), 2 * cfg.kp_radius_lost)
        lost_r = np.round(lost_r / 8.0) * 8.0
        groups = [(ver & has, cfg.kp_radius)]
        for rad in np.unique(lost_r[ver & ~has]):
            groups.append((ver & ~has & (lost_r == rad), float(rad)))
        for sel_mask, radius in groups:
            sel = np.nonzero(sel_mask)[0]
            if not len(sel):
                continue
            # Object points only match inside the mask; background points anywhere.
            for obj_flag in (False, True):
                s2 = sel[self.obj[pts[sel]] == obj_flag]
                if not len(s2):
                    continue
                xy, sm, sec = search_keypoints(fm, qd[s2], np.nan_to_num(mean[s2], nan=-1e4), radius,
                                               allowed=allowed if obj_flag else None)
                kp[s2], ksim[s2], kmargin[s2] = xy, sm, sm - sec
        acc = ver & (ksim >= cfg.kp_threshold) & (kmargin >= cfg.kp_margin)
        if not acc.any():
            return mean, fvar, has, sim_mean
        kv = cfg.kp_var
        # Flow and keypoint agree (Mahalanobis gate, chi^2 2-dof 99 %): product of two Gaussians.
        d2 = ((kp - mean) ** 2).sum(1)
        agree = acc & has & (d2 <= 9.21 * (fvar + kv))
        wf = 1.0 / np.maximum(fvar, 1e-6)
        wk = 1.0 / kv
        fused = (mean * wf[:, None] + kp * wk) / (wf + wk)[:, None]
        # They disagree: the keypoint wins only if its descriptor matches clearly better.
        replace = acc & has & ~agree & (ksim > sim_mean + 0.1)
        relocate = acc & ~has
        new_mean = np.where(agree[:, None], fused, mean)
        new_mean = np.where((replace | relocate)[:, None], kp, new_mean)
        fvar = np.where(agree, 1.0 / (wf + wk), fvar)
        fvar = np.where(replace | relocate, kv, fvar).astype(np.float32)
        changed = agree | replace | relocate
        if changed.any():
            idx = np.nonzero(changed)[0]
            sim_mean[idx] = (sample_descriptors(fm, new_mean[idx]) * qd[idx]).sum(1).numpy()
        has = has | relocate
        if self.debug is not None:
            code = np.where(agree, 1, np.where(replace, 2, np.where(relocate, 3, 0)))
            self.debug[i, pts] = np.maximum(self.debug[i, pts], code * 10)  # ones digit set in _step
            self.debug_ksim[i, pts] = ksim
        return new_mean.astype(np.float32), fvar, has, sim_mean
