"""One ProTracker run over a clip: the flow chains, their fusion, keypoints, the filter and the passes.

Units: pixels of the working frames (``work_size``), x before y; variances are per axis (an
isotropic 2-D Gaussian ``N(mu, var * I)``), in px^2. Every estimate of point ``n`` at frame ``t``
is such a Gaussian (``est``, ``var``), with a visibility flag, the descriptor cosine with the query
(``sim``) and a similarity transform (``geo``).

Rules, in the order :meth:`TrackingRun._step` applies them at frame ``i``:

* **Flow chains.** The estimate of each earlier frame ``j`` in
  ``{i-1, i-2, i-4, i-8, i-16, i-32, query frame}`` is carried to ``i`` through the flow ``j -> i``
  (MFT-style intervals): ``mu_i = mu_j + F_{j->i}(mu_j)``, ``var_i = var_j + var_flow``. Flows
  come from a pluggable source (``flow.py``; default OpenCV DIS, no weights). At most
  ``max_query_flows`` distinct query frames get a direct chain per frame (it anchors the track
  against drift).
* **Flow uncertainty** (the paper learns it; here it comes from forward-backward consistency).
  With ``e = |F_{j->i}(mu_j) + F_{i->j}(mu_i)|`` the forward-backward residual,
  ``var_flow = flow_var0 + fb_var_gain * e^2`` (why these values: ``config.py``). A chain whose
  source is occluded, whose residual exceeds ``fb_threshold + 0.05 |flow|``, or which lands
  outside the object mask is dropped. Chains that land outside the frame are kept (they vote that
  the point has left); the fused estimate outside the frame makes the point occluded.
* **Consensus, then fusion** of the surviving chains (``fusion.py``); ties in the consensus go to
  the chain whose descriptor matches the query better. A point no valid chain reaches takes the
  fused chains from frames where it was visible (the flow there is filled in from the
  surroundings, which usually move with the hidden point), else all computed chains.
* **Geometry.** Each chain also carries the rotation + scale part of the flow's Jacobian at the
  point (a similarity ``(a, b)``, composed along the chain and fused with the same weights; its
  magnitude is clipped to ``[0.7, 1.4]``, as a flow-boundary Jacobian is junk), so the query
  patch can be resampled as it should look in frame ``i`` (``descriptors.py``).
* **Long-term keypoints.** The (warped) query descriptor is searched in a window around the
  estimate (``kp_radius``); when the flow lost the point the window is larger
  (``kp_radius_lost``) and grows with the time lost, up to twice that. A keypoint is accepted when
  its similarity is at least ``kp_threshold`` and beats the best match outside its 5x5-cell
  neighbourhood by ``kp_margin`` (repeated patterns are ambiguous). An accepted keypoint is fused
  as one more Gaussian (variance ``kp_var``) when it agrees with the flow (Mahalanobis gate,
  chi^2 2-dof 99 %); when it disagrees the one whose descriptor matches the query better wins (by
  0.1); with no valid chain it re-localises the point (after an occlusion, or to stop drift).
  Object points only match inside the object mask.
* **Feature filter.** Cosine similarity of the descriptor at the estimate with the query's below
  ``filter_threshold`` (0.5) marks the point occluded. Coming back from an occlusion needs more:
  the bar rises linearly to ``reacquire_sim`` over ``reacquire_frames`` occluded frames. Points
  whose query patch has no texture (``min_contrast``) skip the filter and the keypoints.
* **Object masks** (``masks.py``): for points queried inside the mask, estimates outside it count
  as occluded.
* **Backward pass.** After the forward pass, a pass from the last frame back to the query frame
  revisits the points the forward pass left occluded, chaining from later frames' final
  (visible) estimates; the backward estimate is adopted where it comes out visible and its
  descriptor cosine is at least ``backward_min_sim`` (it overrides a decision of the forward pass,
  so it asks for a clearer match than the filter does).

Frames before a point's query frame are tracked by the same forward/backward passes run in
reversed time.

Memory: the run needs the whole clip, but flows are not kept per frame: the
``<= 2 x (6 + max_query_flows)`` flow fields frame ``i`` needs are computed when ``i`` is
processed and go into an LRU cache with a byte budget (``flow_cache_mb``, default 256 MiB = 512
flows at 256x256, 128 at 512x512). The backward pass needs the same pairs as the forward pass,
latest first, so on short clips it finds them in the cache and on long clips it recomputes the
evicted ones (it only visits frames where some point is occluded). Kept for the whole clip are
only the per-point estimates (mean, variance, flags, similarity, similarity transform: 27 bytes
per point and frame), the query patches (13 KB per point) and the frames (at the working
resolution, ``work_size``). A 1000-frame 512x512 clip with 1000 points: 786 MB of frames + 27 MB
of estimates + 13 MB of query patches + the 256 MB cache + ~100 MB of per-frame work buffers.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from pointtrack_cli.trackers.base import ProgressFn

from .config import ProTrackerConfig
from .descriptors import Extractor, FeatureMap, sample_descriptors, sample_strength, search_keypoints
from .flow import FlowSource, sample_bilinear
from .fusion import consensus, fuse_gaussians, lowest_variance
from .masks import MaskVideo, inside_mask


class TrackingRun:
    """State of one :meth:`ProTracker.track` call, at the working resolution, and its passes.

    est ``[T, N, 2]``, var ``[T, N]`` (px^2, per axis), vis/known/had_chain ``[T, N]`` bool,
    sim ``[T, N]`` (descriptor cosine with the query), geo ``[T, N, 2]`` (local rotation/scale).

    Args:
        cfg: the tuning knobs, with ``kp_threshold`` / ``kp_margin`` filled in for ``extractor``'s type.
        flow / extractor: the flow source and the descriptor extractor.
        frames: ``[T, h, w, 3]`` uint8 at the working resolution.
        qt / qxy: each query's frame ``[N]`` and position ``[N, 2]`` (working pixels).
        masks: object masks at the working resolution, or None.
        progress: called with the number of frames finished (``T`` in all).
        debug: keep decision codes (``debug``, ``debug_ksim``) for diagnosis.
    """

    def __init__(self, cfg: ProTrackerConfig, flow: FlowSource, extractor: Extractor, frames: np.ndarray,
                 qt: np.ndarray, qxy: np.ndarray, masks: MaskVideo | None, progress: ProgressFn | None,
                 debug: bool = False) -> None:
        self.cfg, self.flow_source, self.extractor = cfg, flow, extractor
        self.frames, self.qt, self.qxy, self.masks = frames, qt, qxy, masks
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
        self.debug: np.ndarray | None = np.zeros((self.T, n), np.int8) if debug else None
        self.debug_ksim = np.full((self.T, n), np.nan, np.float32) if debug else None
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
            self._fcache[t] = self.extractor(self.frames[t])
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
        f = np.ascontiguousarray(self.flow_source(self.frames[a], self.frames[b]), dtype=np.float32)
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
        return ~self.obj[pts] | inside_mask(self.masks[t], xy)

    # ---- setup ----------------------------------------------------------------------------

    def _init_queries(self) -> None:
        cfg = self.cfg
        if self.masks is not None:
            for t in np.unique(self.qt):
                sel = np.nonzero(self.qt == t)[0]
                self.obj[sel] = inside_mask(self.masks[int(t)], self.qxy[sel])
        if not self.use_features or self.N == 0:
            return
        state = None
        ident = np.tile([1.0, 0.0], (self.N, 1))
        for t in np.unique(self.qt):
            sel = np.nonzero(self.qt == t)[0]
            fm = self.fmap(int(t))
            st = self.extractor.query_state(fm, self.qxy[sel])
            if state is None:
                state = torch.zeros((self.N,) + tuple(st.shape[1:]))
            state[sel] = st
            d = self.extractor.query_descriptors(st, ident[sel])
            textured = sample_strength(fm, self.qxy[sel]) >= cfg.min_contrast
            self.verifiable[sel] = textured & (d.norm(dim=1).numpy() > 0.5)
        self.qstate = state

    def qdesc(self, pts: np.ndarray, geo: np.ndarray) -> torch.Tensor:
        """Query descriptors ``[n, D]`` of points ``pts`` warped by their similarity ``geo`` ``[n, 2]``."""
        return self.extractor.query_descriptors(self.qstate[pts], geo)  # type: ignore[index]

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
