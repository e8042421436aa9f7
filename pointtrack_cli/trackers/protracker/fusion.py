"""Fusing the flow chains' Gaussian estimates of a point into one (ProTracker's probabilistic core).

Units: pixels of the working frames, x before y; variances are per axis (an isotropic 2-D
Gaussian ``N(mu, var * I)``), in px^2. Each chain ``k`` is one estimate ``N(mu_k, var_k I)`` of
the point in the current frame (``run.py`` builds them from the optical flow).

Rules:

* **Consensus** (outlier rejection before fusion, :func:`consensus`): chains whose means disagree
  beyond a chi^2 gate are split into groups and only the largest group is fused. A long-range
  flow can be wrong yet forward-backward consistent, and with its small variance it would
  dominate the product.
* **Fusion** of the surviving chains (:func:`fuse_gaussians`): the best linear unbiased estimate
  of K Gaussians whose errors share one correlation coefficient ``rho`` (chains overlap in
  history, so they are not independent). With ``u_k = 1 / sigma_k`` and ``S = sum u_k``, the
  covariance ``D R D`` (``R = (1 - rho) I + rho 11^T``) has the closed-form inverse giving
  weights ``w_k ∝ u_k (u_k - c S)``, ``c = rho / (1 + (K - 1) rho)``, and fused variance
  ``(1 - rho) / (sum u_k^2 - c S^2)``. ``rho = 0`` is the plain product of Gaussians
  (inverse-variance weights, variance ``1 / sum 1/var_k``); with ``rho > 0`` weak chains can get
  a negative weight, which we clip to 0 (dropping them) and re-solve, so the mean stays a convex
  combination. K equal chains give ``var (1 + (K - 1) rho) / K`` instead of ``var / K``, so the
  variance does not collapse when many overlapping chains agree.
* **Ablation** (``fusion=False``, :func:`lowest_variance`): take the lowest-variance chain instead.

The fusion weights are returned too: the chains' similarity transforms (local rotation + scale)
are averaged with them.
"""
from __future__ import annotations

import numpy as np



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

