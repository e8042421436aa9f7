"""Turning M candidate tracks per point into one track: verifier arg-max, random teacher, median.

Pure NumPy on arrays, frames first (spec ``verifier.md`` section 3):

* candidates ``[T, N, M, 2]`` pixels (x, y); NaN = that teacher has no estimate there (ptrack
  trackers that do not track backward give NaN before the query frame);
* visibility ``[T, N, M]`` bool, each teacher's own flag;
* logits ``[T, N, M]`` from the verifier (higher = better).

Every strategy returns a :class:`Selection`: ``chosen [T, N]`` candidate index (-1 where no
candidate has an estimate), ``scores [T, N, M]`` (a distribution over candidates; 0 for absent
ones), ``tracks [T, N, 2]`` and ``visibility [T, N]``.

Official behaviour is reproduced exactly when every candidate is finite: arg-max of the logits
(first index on exact ties) and visibility by *strict* majority of the teachers' flags
(``mean > 0.5``: a tie is "occluded"), the verifier playing no part in visibility. ptrack's
extension for missing estimates: an absent candidate cannot be chosen and does not vote.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("verifier", "random", "median")


@dataclass
class Selection:
    """One track per point chosen among candidates (shapes in the module docstring)."""

    chosen: np.ndarray
    scores: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray


def absent_candidates(candidates: np.ndarray) -> np.ndarray:
    """``[T, N, M]`` True where a candidate has no (finite) estimate."""
    return ~np.isfinite(np.asarray(candidates)).all(-1)


def before_query(queries: np.ndarray, num_frames: int) -> np.ndarray:
    """``[T, N]`` True for frames before each point's query frame (``t`` truncated like the official ``.long()``)."""
    tq = np.trunc(np.asarray(queries, dtype=np.float64)[:, 0]).astype(np.int64)
    return np.arange(num_frames)[:, None] < tq[None, :]


def fill_for_verifier(candidates: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make candidates finite for the verifier: ``(filled [T, N, M, 2], absent [T, N, M])``.

    Missing estimates take the point's query position (zero displacement); they are also passed
    to the verifier as absent (hidden from its cross-attention, never chosen). Frames before the
    query frame are hidden from the verifier's temporal attention anyway, so whatever is placed
    there cannot change the scores of later frames. Finite candidates are returned unchanged:
    no re-centring, exactly as teachers output them.
    """
    cand = np.asarray(candidates, dtype=np.float32)
    absent = absent_candidates(cand)
    q = np.asarray(queries, dtype=np.float32)[:, 1:3]
    filled = np.where(absent[..., None], q[None, :, None, :], cand)
    return filled.astype(np.float32), absent


def majority_visibility(visibility: np.ndarray, absent: np.ndarray | None = None) -> np.ndarray:
    """Strict majority of the teachers' flags ``[T, N, M] -> [T, N]`` (``mean > 0.5``), absent ones not voting."""
    vis = np.asarray(visibility, dtype=bool)
    present = np.ones_like(vis) if absent is None else ~np.asarray(absent, dtype=bool)
    votes = (vis & present).sum(-1)
    voters = present.sum(-1)
    return votes * 2 > voters  # == mean > 0.5 without a division; no voters -> False


def softmax(logits: np.ndarray, absent: np.ndarray | None = None) -> np.ndarray:
    """Softmax over candidates ``[T, N, M]`` (float64 inside); absent candidates get 0, all-absent rows 0."""
    x = np.asarray(logits, dtype=np.float64).copy()
    if absent is not None:
        x[absent] = -np.inf
    top = x.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(x - top)
    s = e.sum(-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0).astype(np.float32)


def _gather(candidates: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``candidates[t, n, chosen[t, n]]`` -> ``[T, N, 2]``; NaN where ``chosen == -1``."""
    idx = np.clip(chosen, 0, None)[..., None, None]
    out = np.take_along_axis(np.asarray(candidates, dtype=np.float32), np.broadcast_to(idx, chosen.shape + (1, 2)), 2)[:, :, 0]
    out[chosen < 0] = np.nan
    return out


def select_verifier(
    candidates: np.ndarray, visibility: np.ndarray, logits: np.ndarray, absent: np.ndarray | None = None
) -> Selection:
    """Official predictor: per (t, n) the candidate with the largest logit; visibility by majority vote."""
    absent = absent_candidates(candidates) if absent is None else np.asarray(absent, dtype=bool) | absent_candidates(candidates)
    x = np.where(absent, -np.inf, np.asarray(logits, dtype=np.float64))
    chosen = np.argmax(x, axis=-1).astype(np.int64)  # first index on exact ties, as torch.argmax on CPU
    chosen[absent.all(-1)] = -1
    tracks = _gather(candidates, chosen)
    vis = majority_visibility(visibility, absent) & (chosen >= 0)
    return Selection(chosen, softmax(logits, absent), tracks, vis)


def select_random(candidates: np.ndarray, visibility: np.ndarray, seed: int = 0) -> Selection:
    """Weight-free baseline: one teacher for the whole video (seeded), with its own visibility.

    Mirrors the official evaluator's *random* baseline (whole video from one teacher); scores are
    one-hot on that teacher.
    """
    cand = np.asarray(candidates, dtype=np.float32)
    t, n, m = cand.shape[:3]
    z = int(np.random.default_rng(seed).integers(m))
    absent = absent_candidates(cand)
    chosen = np.full((t, n), z, dtype=np.int64)
    chosen[absent[:, :, z]] = -1
    scores = np.zeros((t, n, m), dtype=np.float32)
    scores[:, :, z] = 1.0
    scores[chosen < 0] = 0.0
    vis = np.asarray(visibility, dtype=bool)[:, :, z] & (chosen >= 0)
    return Selection(chosen, scores, _gather(cand, chosen), vis)


def select_median(candidates: np.ndarray, visibility: np.ndarray) -> Selection:
    """Weight-free baseline: per-frame coordinate-wise median of the candidates that say "visible".

    Where no candidate says visible, the median of all candidates with an estimate is used (the
    point is then occluded by the majority vote anyway). ``scores`` spreads 1 uniformly over the
    candidates that entered the median; ``chosen`` is the one nearest to the median (for the
    summary table only; the track is the median itself).
    """
    cand = np.asarray(candidates, dtype=np.float64)
    absent = absent_candidates(cand)
    vis = np.asarray(visibility, dtype=bool) & ~absent
    use = np.where(vis.any(-1, keepdims=True), vis, ~absent)  # [T, N, M]
    masked = np.where(use[..., None], cand, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with no candidate at all are expected
        med = np.nanmedian(masked, axis=2)  # [T, N, 2]
    dist = np.where(use, np.linalg.norm(np.nan_to_num(cand) - np.nan_to_num(med)[:, :, None], axis=-1), np.inf)
    chosen = np.argmin(dist, axis=-1).astype(np.int64)
    none = ~use.any(-1)
    chosen[none] = -1
    k = use.sum(-1, keepdims=True)
    scores = np.divide(use.astype(np.float64), k, out=np.zeros(use.shape), where=k > 0).astype(np.float32)
    return Selection(chosen, scores, med.astype(np.float32), majority_visibility(visibility, absent) & ~none)


def chosen_counts(chosen: np.ndarray, num_candidates: int, queries: np.ndarray | None = None) -> np.ndarray:
    """How often each candidate was chosen ``[M]``, over (t, n) with a choice (and t >= query frame if given)."""
    ch = np.asarray(chosen)
    valid = ch >= 0
    if queries is not None:
        valid &= ~before_query(queries, ch.shape[0])
    return np.bincount(ch[valid], minlength=num_candidates)[:num_candidates]
