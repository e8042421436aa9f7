"""The per-video loop of a batch: plan, rerun rule, track, write, one row per video; rank 0 merges every rank's rows.

Each video is one :func:`pointtrack_cli.api.run_to` call into its own subfolder ``<out>/<name>/`` (its own output
set and manifest), so the rules of :mod:`pointtrack_cli.io.outputs` hold per video: a finished video of the same
job is skipped, a stopped one is redone, another job's outputs are refused unless ``overwrite``. A video that
fails (bad file, bad query file, out of memory, a full disk, a tracker error) gets its row with the error's one
line and the loop goes on; ``fail_fast`` stops at the first (and, sharded, asks every rank to stop). A failure
to build the model ends the batch (every video would fail the same way). Ctrl-C and SIGTERM end it too, after
the video in progress has removed its partial outputs.

The model is built once per process for the whole batch (:class:`TrackerCache`: the first video that needs it
builds it, every later one reuses it). Ensembles (``ensemble:...``, ``ptrack ensemble``) keep their own memory
rule: teachers are built one after another per video, each freed before the next.

Sharded (see :mod:`.shard`): this process runs its share, writes its rows to its status file after each video,
and rank 0 merges the rows of all ranks, checking each finished video against its manifest (present, complete,
of the job key the rank reported).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from ..api import TrackJob, run_to
from ..ensemble.run import EnsembleJob
from ..ensemble.teachers import StageFn
from ..errors import PtrackError
from ..io.identity import digest
from ..io.outputs import read_manifest, verify
from ..io.writers import check_outputs
from ..result import MANIFEST
from ..trackers.base import ProgressFn, Tracker
from .inputs import VideoInput
from .shard import RankStatus, Shard, wait_for_ranks

Job = TrackJob | EnsembleJob
STATUSES = ("tracked", "skipped", "failed", "not run", "missing")
PROBLEMS = ("failed", "not run", "missing")


@dataclass
class VideoRow:
    """One video's line of the summary. status: tracked, skipped (the same job's outputs were complete), failed
    (``error`` says why), not run (a failure stopped the batch first: ``--fail-fast``), missing (its rank never
    reported it). seconds: wall time of the video (plan, track, write). key: the job key of its outputs."""

    index: int
    video: str
    path: str
    rank: int = 0
    status: str = "pending"
    frames: int | None = None
    points: int | None = None
    seconds: float | None = None
    error: str | None = None
    key: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VideoRow":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class BatchEvents:
    """Callbacks for a front end: ``begin(video, position, share)`` before each of this rank's videos, ``end(row)``
    after it, ``progress``/``stage`` passed to the tracking (see :func:`~pointtrack_cli.api.run_to`), and
    ``waiting(rank, status)`` as rank 0 hears that another rank ended."""

    begin: Callable[[VideoInput, int, int], None] | None = None
    end: Callable[[VideoRow], None] | None = None
    progress: ProgressFn | None = None
    stage: StageFn | None = None
    waiting: Callable[[int, dict | None], None] | None = None


@dataclass
class BatchOutcome:
    """What a batch did: ``rows`` in the sorted order (every rank's on rank 0, else this rank's), the output
    folder, this process's shard, and whether ``rows`` are merged from all ranks."""

    rows: list[VideoRow]
    out: Path
    shard: Shard
    merged: bool = True
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    @property
    def ok(self) -> bool:
        """Every video tracked or skipped."""
        return not any(r.status in PROBLEMS for r in self.rows)


class TrackerCache:
    """The tracker built once per process for the whole batch, reused by every later video.

    :meth:`attach` makes a planned :class:`~pointtrack_cli.api.TrackJob` build through the cache (one tracker per
    support-grid setting: explicit queries may get RealTracker's support grid, grids never do). A build that fails
    is remembered in ``error``: the batch stops there instead of failing every video the same way.
    """

    def __init__(self) -> None:
        self.trackers: dict[bool, Tracker] = {}
        self.error: BaseException | None = None

    def attach(self, job: Job) -> Job:
        if not isinstance(job, TrackJob):
            return job  # ensembles build their teachers per video, one at a time (their memory rule)
        build = job.build

        def cached(explicit: bool) -> Tracker:
            if explicit not in self.trackers:
                try:
                    self.trackers[explicit] = build(explicit)
                except Exception as exc:
                    self.error = exc
                    raise
            return self.trackers[explicit]

        job.build = cached
        return job


def job_size(job: Job) -> tuple[int, int | None]:
    """(frames, points) a planned job will track (points: named points, else query rows; None if not read yet)."""
    points = getattr(job, "points", None)
    if points is not None:
        return job.video.num_frames, int(points.num_points)
    rows = job.queries if isinstance(job, TrackJob) else (job.planned[0] if job.planned is not None else None)
    return job.video.num_frames, None if rows is None else len(rows)


def error_line(exc: BaseException) -> str:
    """One line for a video's failure, as the CLI words a command's."""
    if isinstance(exc, PtrackError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = f"out of memory: {str(exc).strip() or 'an allocation failed'} (track fewer points or frames)"
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def recorded_size(folder: Path, frames: int | None, points: int | None) -> tuple[int | None, int | None]:
    """(frames, points) a complete set's manifest records (sets of older ptracks: the planned ones given)."""
    try:
        manifest = read_manifest(folder / MANIFEST) or {}
    except PtrackError:
        manifest = {}
    got = [manifest.get(k) for k in ("frames", "points")]
    whole = [isinstance(v, int) and not isinstance(v, bool) for v in got]
    return (got[0] if whole[0] else frames, got[1] if whole[1] else points)


def listing(videos: Sequence[VideoInput]) -> str:
    """A digest of the sorted list by output names (the same on every node, wherever the folder is mounted)."""
    return digest([v.name for v in videos])


def manifest_problem(folder: Path, key: str | None) -> str | None:
    """Why ``folder`` does not hold the complete outputs of job ``key`` (None: it does)."""
    try:
        manifest = read_manifest(folder / MANIFEST)
    except PtrackError as exc:
        return str(exc)
    if manifest is None:
        return f"no {MANIFEST} in {folder} (the outputs are missing)"
    if key is not None and manifest.get("job_key") != key:
        return f"{folder} holds the outputs of another job"
    why = verify(manifest, folder)
    return None if why is None else f"{folder}: {why}"


def run_batch(
    videos: Sequence[VideoInput],
    out: str | Path,
    plan: Callable[[VideoInput], Job],
    *,
    formats: Sequence[str] | str,
    overlay: bool = True,
    overwrite: bool = False,
    fail_fast: bool = False,
    shard: Shard | None = None,
    timeout: float = 600.0,
    events: BatchEvents | None = None,
) -> BatchOutcome:
    """Run this process's share of ``videos`` into ``out/<name>/``, each planned by ``plan(video)`` (see the module
    docstring); on rank 0 of a sharded run, then wait (at most ``timeout`` s of silence) and merge all ranks' rows.

    Raises only for what ends the whole batch: a model that cannot be built, Ctrl-C / SIGTERM.
    """
    shard = shard or Shard.from_env()
    events = events or BatchEvents()
    fmt = check_outputs(formats, overlay)
    out = Path(out)
    mine = shard.take(list(videos))
    rows = [VideoRow(v.index, v.name, str(v.path), shard.rank) for v in mine]
    cache = TrackerCache()
    with RankStatus(out, shard, len(mine), listing(videos)) as status:
        for i, (video, row) in enumerate(zip(mine, rows)):
            if status.stop_requested() or (fail_fast and any(r.status == "failed" for r in rows)):
                for rest in rows[i:]:
                    rest.status, rest.error = "not run", "stopped after a failure (--fail-fast)"
                status.update([r.as_dict() for r in rows])
                break
            if events.begin is not None:
                events.begin(video, i, len(mine))
            t0 = time.perf_counter()
            try:
                job = cache.attach(plan(video))
                row.frames, row.points = job_size(job)
                done = run_to(job, video.path, out / video.name, fmt, overlay, overwrite, events.progress, events.stage)
                row.status, row.key = ("skipped" if done.skipped else "tracked"), done.key
                if done.result is not None:
                    row.frames, row.points = done.result.num_frames, done.result.num_points
                else:  # what was tracked (a stream may be shorter than its header says), when the manifest has it
                    row.frames, row.points = recorded_size(done.folder, row.frames, row.points)
            except Exception as exc:
                if cache.error is not None:
                    raise
                row.status, row.error = "failed", error_line(exc)
                if fail_fast:
                    status.request_stop()
            finally:
                row.seconds = round(time.perf_counter() - t0, 3)
            status.update([r.as_dict() for r in rows])
            if events.end is not None:
                events.end(row)
    if not (shard.sharded and shard.main):
        return BatchOutcome(rows, out, shard, merged=not shard.sharded)
    statuses = wait_for_ranks(out, shard, timeout, on_done=events.waiting)
    return BatchOutcome(merge_rows(videos, out, shard, rows, statuses, timeout), out, shard, merged=True)


def merge_rows(videos: Sequence[VideoInput], out: Path, shard: Shard, own: Sequence[VideoRow],
               statuses: dict[int, dict | None], timeout: float) -> list[VideoRow]:
    """Rank 0's summary: every video's row from its rank (own rows, the others' status files), finished videos
    checked against their manifests, videos no rank reported marked missing with the reason."""
    reported = {r.index: r for r in own}
    other_list = {rank for rank, status in statuses.items() if status is not None
                  and status.get("listing") != listing(videos)}
    for rank, status in statuses.items():
        for data in (status or {}).get("rows", []) if rank not in other_list else []:
            row = VideoRow.from_dict(data)
            if row.status != "pending":
                reported[row.index] = row
    merged = []
    for video in videos:
        row = reported.get(video.index)
        if row is None:
            owner = shard.owner(video.index)
            status = statuses.get(owner)
            state = (status or {}).get("state")
            why = ("expanded the inputs to other videos (they must read alike on every node)" if owner in other_list
                   else f"failed: {status.get('error')}" if state == "failed" else "was stopped" if state == "stopped"
                   else f"did not report within {timeout:g} s")
            row = VideoRow(video.index, video.name, str(video.path), owner, "missing", error=f"rank {owner} {why}")
        elif row.status in ("tracked", "skipped"):
            problem = manifest_problem(out / video.name, row.key)
            if problem is not None:
                row.status, row.error = "failed", problem
        merged.append(row)
    return merged

