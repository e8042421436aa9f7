"""Many videos in one command, resumable, and sharded over processes (``torchrun``): the API-level batch layer.

``inputs`` (which videos the inputs name, their output subfolders and query files), ``shard`` (rank r of K takes
every K-th video; status files instead of collectives), ``run`` (the per-video loop, one output set per video,
rank 0's merged rows), ``commands`` (:func:`track_batch`, :func:`ensemble_batch`), ``tapvid`` (``eval tapvid``
sharded: metrics merged from the saved per-video predictions).

    from pointtrack_cli.batch import track_batch
    done = track_batch(["videos/"], "ptrack_out", model="lk", grid=10)
    for row in done.rows:
        print(row.video, row.status, row.frames, row.points, row.seconds)
"""
from .commands import DEFAULT_OUT, ensemble_batch, track_batch
from .inputs import Inputs, VideoInput, plan_inputs
from .run import BatchEvents, BatchOutcome, VideoRow, run_batch
from .shard import Shard

__all__ = ["BatchEvents", "BatchOutcome", "DEFAULT_OUT", "Inputs", "Shard", "VideoInput", "VideoRow", "ensemble_batch",
           "plan_inputs", "run_batch", "track_batch"]
