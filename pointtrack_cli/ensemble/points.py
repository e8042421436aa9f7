"""Named points and anchors in an ensemble run: :func:`plan_ensemble_points` plans
:func:`~pointtrack_cli.ensemble.run.plan_ensemble` with one query per anchor, and :class:`PointsEnsembleJob` merges
the run back to one column per point (as :func:`~pointtrack_cli.queries.attach_points` merges a single tracker's).

Used by :mod:`pointtrack_cli.api` (``ensemble``, ``ensemble_to``, ``track --model ensemble:...``), which re-exports
these names.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..io.identity import digest
from ..io.video import Video, open_video
from ..queries import QuerySet, attach_points, build_query_set, gather, validate_queries
from ..result import load_tracks
from ..trackers.base import ProgressFn
from .run import EnsembleJob, EnsembleResult, plan_ensemble
from .teachers import StageFn

__all__ = ["PointsEnsembleJob", "merge_ensemble_points", "plan_ensemble_points", "points_identity"]


def points_identity(points: QuerySet) -> str:
    """The job key's part for named points: their names and which anchor belongs to which (rows: ``queries``)."""
    return digest({"names": list(points.names), "point": points.point.tolist()})


@dataclass
class PointsEnsembleJob(EnsembleJob):
    """An :class:`EnsembleJob` whose queries are named points with anchors (one query per anchor), merged after
    the run as :func:`~pointtrack_cli.queries.attach_points` merges them; without ``points`` (queries from a grid or
    from the candidate files) the first candidate file's point names are kept."""

    points: QuerySet | None = None

    def run(self, progress: ProgressFn | None = None, stage: StageFn | None = None) -> EnsembleResult:
        out = super().run(progress, stage)
        if self.points is not None:
            return merge_ensemble_points(out, self.points)
        if self.cand_paths and self.queries is None and not self.args["points"] and self.args["grid"] is None \
                and self.args["mask"] is None:
            names = load_tracks(self.cand_paths[0]).point_names
            if len(names) == out.result.num_points:
                out.result.point_names = names
        return out


def merge_ensemble_points(out: EnsembleResult, points: QuerySet) -> EnsembleResult:
    """An ensemble run on one query per anchor -> one column per point: the result merged by
    :func:`~pointtrack_cli.queries.attach_points`, the selection arrays (candidates, scores, chosen) taken from the
    same anchor per frame, ``selection.npz`` and ``chosen_counts`` made again from them."""
    result = attach_points(out.result, points)
    if points.num_anchors == points.num_points:
        return out
    which, first = result.anchor, points.first
    merged = EnsembleResult(
        result, out.teachers, gather(out.candidates, which, first), gather(out.candidate_visibility, which, first),
        gather(out.scores, which, first), gather(out.chosen, which, first), out.select,
        None if out.logits is None else gather(out.logits, which, first), out.seconds, out.video,
    )
    result.meta["chosen_counts"] = merged.counts()
    result.extra_files["selection.npz"] = merged.selection_arrays()
    return merged


def plan_ensemble_points(video: str | Path | Video, queries: str | Path | np.ndarray | None = None,
                         **options: Any) -> PointsEnsembleJob:
    """:func:`~pointtrack_cli.ensemble.run.plan_ensemble` (same arguments) with named points and anchors.

    With a query file or ``points``, the queries (and any grid or mask points) are read here into named points,
    every anchor becomes a query of the ensemble, and the run merges them back to one column per point.
    """
    if queries is None and not options.get("points"):
        job = plan_ensemble(video, None, **options)
        return PointsEnsembleJob(**{f.name: getattr(job, f.name) for f in fields(job)})
    selection = {k: options[k] for k in ("start", "end", "stride", "max_size", "strict_decode") if k in options}
    reader = video if isinstance(video, Video) else open_video(video, **selection)
    sources = {k: options.pop(k) for k in ("grid", "grid_frame", "mask", "points") if k in options}
    qs = build_query_set(reader, queries=queries, **sources)
    validate_queries(qs.rows, reader, qs.row_names)
    job = plan_ensemble(reader, qs.rows, **options)
    job.inputs["points"] = points_identity(qs)
    return PointsEnsembleJob(**{f.name: getattr(job, f.name) for f in fields(job)}, points=qs)
