"""``track`` and ``ensemble`` on many videos (what ``ptrack track`` / ``ptrack ensemble`` run in batch mode).

:func:`track_batch` and :func:`ensemble_batch` expand the inputs (:mod:`.inputs`), take this process's share
(:mod:`.shard`: one process, or one rank of ``torchrun``), and run the per-video loop (:mod:`.run`) into
``out/<name>/``, default ``./ptrack_out/``. Each video is planned exactly as a single run of
:func:`~pointtrack_cli.api.track_to` / :func:`~pointtrack_cli.api.ensemble_to` with the same options plans it
(same job key: a video tracked alone into the same folder is skipped by the batch, and the other way round),
with its own query file when it has one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..api import plan_track
from ..ensemble.points import plan_ensemble_points
from ..errors import PtrackError
from ..io.writers import FORMATS
from .inputs import Inputs, VideoInput, plan_inputs
from .run import BatchOutcome, Job, run_batch
from .shard import Shard

DEFAULT_OUT = Path("ptrack_out")
BATCH_OPTIONS = ("formats", "overlay", "overwrite", "fail_fast", "timeout", "shard", "events")


def _plan_track(video: VideoInput, options: dict[str, Any]) -> Job:
    return plan_track(video.path, queries=video.queries, **options)


def _plan_ensemble(video: VideoInput, options: dict[str, Any]) -> Job:
    return plan_ensemble_points(video.path, video.queries, **options)


def _run(planner: Callable[[VideoInput, dict], Job], inputs: Inputs | Sequence[str | Path], out: str | Path | None,
         queries: str | Path | None, options: dict[str, Any]) -> BatchOutcome:
    batch = {k: options.pop(k) for k in BATCH_OPTIONS if k in options}
    out = Path(out) if out is not None else DEFAULT_OUT
    shard = batch.pop("shard", None) or Shard.from_env()
    shard.pin_device(options.get("device", "auto"))
    found = inputs if isinstance(inputs, Inputs) else plan_inputs(inputs, queries=queries, exclude=[out])
    return run_batch(found.videos, out, lambda video: planner(video, options), shard=shard,
                     **{"formats": FORMATS, **batch})


def track_batch(inputs: Inputs | Sequence[str | Path], out: str | Path | None = None, *,
                queries: str | Path | None = None, **options: Any) -> BatchOutcome:
    """:func:`~pointtrack_cli.api.track_to` for every video ``inputs`` name (files, image folders, folders of
    videos, globs; or :func:`.inputs.plan_inputs`' result), each into ``out/<name>/`` (default ``./ptrack_out``).

    ``queries``: one query file for every video (default: each video's ``<stem>.csv``/``.json`` when present).
    ``options``: the batch's (:data:`BATCH_OPTIONS`, as :func:`.run.run_batch` takes them: ``formats`` (default
    npz, csv), ``overlay``, ``overwrite``, ``fail_fast``, ``timeout`` (how long rank 0 waits for a silent rank),
    ``shard`` (default: torchrun's environment), ``events``) and :func:`~pointtrack_cli.api.track`'s (one model,
    built once for the batch). Returns the rows (rank 0: merged over ranks); a failed video is a row, not an
    exception.
    """
    return _run(_plan_track, inputs, out, queries, dict(options))


def ensemble_batch(inputs: Inputs | Sequence[str | Path], out: str | Path | None = None, *,
                   queries: str | Path | None = None, **options: Any) -> BatchOutcome:
    """:func:`~pointtrack_cli.api.ensemble_to` for every video, as :func:`track_batch` (``options``: the batch's
    and :func:`~pointtrack_cli.api.ensemble`'s; candidate files belong to one video and are refused)."""
    if options.get("candidates"):
        raise PtrackError("--candidates belong to one video: run `ptrack ensemble VIDEO --candidates ...` per video, "
                          "or give teachers (--teachers) for a batch")
    return _run(_plan_ensemble, inputs, out, queries, dict(options))
