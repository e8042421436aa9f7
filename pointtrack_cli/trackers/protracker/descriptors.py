"""Dense descriptors for ProTracker's feature filter and long-term keypoints, and the keypoint search.

Rules:

* **Descriptors** are unit vectors on a grid of cells (:class:`FeatureMap`; cell ``(u, v)``
  describes pixel ``(u * stride, v * stride)``); two are compared by their cosine.
  Default (``patch``, no weights, :class:`PatchFeatures`): the low-frequency DCT coefficients of a
  9x9 colour patch (17 px wide), i.e. normalised cross-correlation of blurred colour patches.
  ``sift`` (RootSIFT on a grid, :class:`SiftFeatures`) and ``realtracker`` (the CoTracker3
  ``fnet``, given a loaded module, :class:`FnetFeatures`) are alternatives.
* **Geometry.** Each point carries the rotation + scale part of the flow's Jacobian (a
  similarity ``(a, b)``, see ``run.py``), so the query patch can be resampled as it should look in
  the current frame (:meth:`PatchFeatures.query_descriptors`): descriptors are compared
  geometry-aware, and rotating or zooming content is not mistaken for an occlusion. The other
  extractors sample the query descriptor once and do not warp it.
* **Texture.** Points whose query patch has no texture (``strength`` below ``min_contrast``)
  cannot be verified and skip the filter and the keypoints.
* **Long-term keypoints** (:func:`search_keypoints`): the (warped) query descriptor is searched in
  a window around the estimate. A soft-argmax over the 5x5 cells around the best cell of the
  cosine heatmap gives a keypoint; the best similarity outside that neighbourhood is returned too,
  for the uniqueness test (repeated patterns are ambiguous). How accepted keypoints are fused is
  in ``run.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.models.cnn import BasicEncoder
from pointtrack_cli.weights.state_dict import check_state_dict

from .flow import sample_bilinear

FEATURES = ("patch", "sift", "realtracker")
"""Descriptor names ``make_extractor`` accepts (``--features``)."""


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


class Extractor(Protocol):
    """What the tracker needs of a descriptor extractor (:class:`PatchFeatures`, :class:`SiftFeatures`, ...)."""

    name: str

    def __call__(self, frame: np.ndarray) -> FeatureMap:
        """Descriptors of one frame ``[H, W, 3]`` uint8 RGB."""
        ...

    def query_state(self, fmap: FeatureMap, xy: np.ndarray) -> torch.Tensor:
        """What is kept per query point ``xy`` ``[N, 2]`` of its query frame's map ``fmap``."""
        ...

    def query_descriptors(self, state: torch.Tensor, geo: np.ndarray) -> torch.Tensor:
        """Query descriptors ``[N, D]`` as seen through the similarity ``geo`` ``[N, 2]``."""
        ...


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
    sub = {k[len("fnet."):]: v for k, v in sd.items() if k.startswith("fnet.")} or dict(sd)
    net = BasicEncoder()
    check_state_dict(sub, {k: tuple(v.shape) for k, v in net.state_dict().items()}, source, "RealTracker fnet")
    net.load_state_dict(sub)
    return net.eval()


def check_feature_name(features: str) -> None:
    """Raise a :class:`PtrackError` unless ``features`` is one of :data:`FEATURES`."""
    if features not in FEATURES:
        raise PtrackError(f"unknown features {features!r} (use patch, sift or realtracker)")


def make_extractor(features: str, fnet: nn.Module | None = None, device: str = "cpu") -> Extractor:
    """The descriptor extractor named ``features`` (see :data:`FEATURES`); ``fnet``/``device`` for ``realtracker``."""
    check_feature_name(features)
    if features == "patch":
        return PatchFeatures()
    if features == "sift":
        return SiftFeatures()
    if fnet is None:
        raise PtrackError(
            "features=realtracker needs the RealTracker weights (give --weights or use --features patch)"
        )
    return FnetFeatures(fnet, device=device)


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

