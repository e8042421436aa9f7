"""TAP-Vid evaluation: official readers, query sampling, metrics, a runner for any tracker, and reports.

Typical use::

    from pointtrack_cli.eval import open_dataset, evaluate_tracker, mean_over_videos
    ds = open_dataset("davis", "tapvid_davis.pkl")
    results = list(evaluate_tracker(tracker, ds, "first", "joint"))
    print(mean_over_videos([r.metrics for r in results])["average_jaccard"])
"""
from __future__ import annotations

from .datasets import (
    DATASETS,
    EVAL_SIZE,
    Queries,
    TapVidDataset,
    TapVidVideo,
    lanczos_resize,
    open_dataset,
    sample_queries,
    sample_queries_first,
    sample_queries_strided,
)
from .metrics import METRIC_NAMES, THRESHOLDS, compute_tapvid_metrics, mean_over_videos, video_metrics
from .predictions import Prediction, load_prediction, save_prediction
from .runner import PROTOCOLS, VideoResult, evaluate_tracker, predict, score_directory

__all__ = [
    "DATASETS", "EVAL_SIZE", "METRIC_NAMES", "PROTOCOLS", "THRESHOLDS", "Prediction", "Queries", "TapVidDataset",
    "TapVidVideo", "VideoResult", "compute_tapvid_metrics", "evaluate_tracker", "lanczos_resize", "load_prediction",
    "mean_over_videos", "open_dataset", "predict", "sample_queries", "sample_queries_first", "sample_queries_strided",
    "save_prediction", "score_directory", "video_metrics",
]
