"""``ptrack eval tapvid`` sharded over processes: each rank predicts its videos into the shared
``--save-predictions`` folder (one output set per video, as an unsharded run saves them), and rank 0 merges the
metrics from those files once every rank has ended (see :mod:`.shard`; no collective operations).

The merged numbers are those of an unsharded run: every video is scored from its saved prediction, which holds
the tracker's arrays as computed (an unsharded run that resumes scores the same files).
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import PtrackError
from ..eval.datasets import TapVidDataset, sample_queries
from ..eval.oracle import compare_candidates
from ..eval.predictions import load_prediction, manifest_name, prediction_filename
from ..eval.runner import VideoResult, score, video_job
from ..io.identity import digest
from ..io.outputs import read_manifest, verify
from .shard import Shard


def check_ranks(statuses: dict[int, dict | None], timeout: float) -> None:
    """Refuse to merge when a rank did not finish its share, naming it and the way on (the same command resumes)."""
    for rank, status in sorted(statuses.items()):
        state = (status or {}).get("state")
        if state == "done":
            continue
        why = (f"failed: {status.get('error')}" if state == "failed" else "was stopped" if state == "stopped"
               else f"did not report within {timeout:g} s")
        raise PtrackError(f"rank {rank} {why}; its videos have no predictions yet: run the same command again "
                          "(finished videos are kept and not predicted again)")


def merged_results(dataset: TapVidDataset, mode: str, protocol: str, save_dir: Path, job: dict, *,
                   limit: int | None = None, oracle: bool = False,
                   teacher_names: Sequence[str] = ()) -> Iterator[VideoResult]:
    """Every video's :class:`~pointtrack_cli.eval.runner.VideoResult` (the first ``limit``, in dataset order) from
    its complete saved prediction of this evaluation ``job`` (its manifest's key), as an unsharded run scores it."""
    save_dir = Path(save_dir)
    for k, video in enumerate(islice(dataset.videos(load_frames=False), limit)):
        key = digest(video_job(job, video.name, k, mode, protocol))
        manifest = read_manifest(save_dir / manifest_name(video.name))
        why = ("none saved" if manifest is None else "saved by another job" if manifest.get("job_key") != key
               else verify(manifest, save_dir))
        if why is not None:
            raise PtrackError(f"video {video.name!r} has no complete prediction of this evaluation in {save_dir} "
                              f"({why}): run the same command again to predict it")
        queries = sample_queries(video, mode)
        pred = load_prediction(save_dir / prediction_filename(video.name), queries, video.num_frames)
        extra = {"comparison": compare_candidates(queries, pred, list(teacher_names))} if oracle else {}
        yield VideoResult(video.name, video.num_frames, len(queries), score(queries, pred), pred.seconds, extra)


def check_sharded_eval(shard: Shard, save_predictions: Path | None) -> None:
    """A sharded evaluation merges from saved predictions: ``--save-predictions`` is required."""
    if shard.sharded and save_predictions is None:
        raise PtrackError(f"a sharded evaluation (WORLD_SIZE={shard.world}) needs --save-predictions DIR, a folder "
                          "all ranks share: rank 0 merges the metrics from the per-video files there")
