"""Batch mode of ``ptrack track`` / ``ptrack ensemble``: progress over the videos, the summary table, the exit code.

The work is :mod:`pointtrack_cli.batch`'s; this module only shows it. Rank 0 (the only process of an unsharded
run) shows the progress and prints one table for the whole batch (every rank's videos, merged from their status
files and manifests); other ranks print one line. Exit code: 0 when every video was tracked or skipped, 1 when any
failed (or was not run, or its rank was lost); other ranks exit 0 once their share is done, so that a failed
video never makes torchrun stop the processes still working (rank 0 reports it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..batch import BatchEvents, BatchOutcome, Shard, VideoInput, VideoRow
from .common import console, progress_columns

BATCH_HELP = (
    "Inputs: video files, folders of numbered images, folders of videos (read recursively) or quoted globs. Several "
    "videos, or any folder of videos, run as a batch: each video into --out/<its path relative to the common "
    "parent>/ (default --out ./ptrack_out), with its own <stem>.csv/.json query file when one lies beside it "
    "(unless --queries gives one for all); finished videos of the same job are skipped, a failing video is "
    "reported and the others go on. Under `torchrun --nproc_per_node K -m pointtrack_cli ...` rank r takes every "
    "K-th video, one GPU each, and rank 0 prints the summary."
)
FAIL_FAST_HELP = "Batch: stop at the first video that fails (every rank, when sharded) instead of going on."
RANK_TIMEOUT_HELP = ("Sharded batch: seconds rank 0 waits for a rank that has gone silent (no file yet, no "
                     "heartbeat) before reporting its videos as missing.")

_STYLE = {"tracked": "green", "skipped": "cyan", "failed": "red", "not run": "yellow", "missing": "red"}


def other_rank() -> bool:
    """True in a process of rank > 0 under torchrun when there is one video only (rank 0 tracks it)."""
    shard = Shard.from_env()
    if shard.rank == 0:
        return False
    console.print(f"rank {shard.rank} of {shard.world}: one video only; rank 0 tracks it", highlight=False)
    return True


@contextlib.contextmanager
def batch_progress(show: bool) -> Iterator[BatchEvents]:
    """Two bars: the videos of this rank, and the current video's stage (decoding, tracking, overlay)."""
    if not show:
        yield BatchEvents()
        return
    with Progress(*progress_columns(), console=console, transient=False) as progress:
        videos = progress.add_task("videos", total=None)
        current = progress.add_task("", total=None, visible=False)
        name = [""]

        def begin(video: VideoInput, position: int, share: int) -> None:
            name[0] = video.name
            progress.update(videos, total=share, description=f"videos (now {escape(video.name)})")
            progress.reset(current, total=None, description=escape(video.name), visible=True)

        def stage(description: str, total: int | None = None) -> None:
            progress.reset(current, total=total, description=f"{escape(name[0])}: {description}", visible=True)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                progress.update(current, total=total)
            progress.advance(current, n)

        def end(row: VideoRow) -> None:
            progress.advance(videos, 1)
            progress.update(current, visible=False)

        def waiting(rank: int, status: dict | None) -> None:
            progress.update(videos, description=f"videos (rank {rank} ended)")

        yield BatchEvents(begin=begin, end=end, progress=advance, stage=stage, waiting=waiting)


def _seconds(v: float | None) -> str:
    return "" if v is None else f"{v:.1f} s"


def summary_table(outcome: BatchOutcome, title: str) -> Table:
    """One row per video (video, frames, points, time, status; the error of a failed one), totals last."""
    ranks = outcome.shard.world
    table = Table(title=title, title_justify="left")
    table.add_column("video", overflow="fold")
    table.add_column("frames", justify="right")
    table.add_column("points", justify="right")
    table.add_column("time", justify="right")
    table.add_column("status", overflow="fold")
    if ranks > 1:
        table.add_column("rank", justify="right")
    for r in outcome.rows:
        status = f"[{_STYLE.get(r.status, 'white')}]{r.status}[/]" + (f": {escape(r.error)}" if r.error else "")
        cells = [escape(r.video), "" if r.frames is None else str(r.frames), "" if r.points is None else str(r.points),
                 _seconds(r.seconds), status]
        table.add_row(*cells, *([str(r.rank)] if ranks > 1 else []))
    counts = ", ".join(f"{n} {s}" for s, n in outcome.counts.items() if n)
    total = sum(r.seconds or 0.0 for r in outcome.rows)
    table.add_row(f"{len(outcome.rows)} videos", str(sum(r.frames or 0 for r in outcome.rows)),
                  str(sum(r.points or 0 for r in outcome.rows)), _seconds(total), counts,
                  *([""] if ranks > 1 else []), style="bold", end_section=True)
    return table


def run_batch_command(command: str, out: Path, run: Callable[[BatchEvents, Shard], BatchOutcome], quiet: bool) -> None:
    """Run a batch (``run(events, shard)``) and report it (see the module docstring)."""
    shard = Shard.from_env()
    with batch_progress(not quiet and shard.main) as events:
        outcome = run(events, shard)
    counts = ", ".join(f"{n} {s}" for s, n in outcome.counts.items() if n) or "no videos"
    if not shard.main:
        if not quiet:
            console.print(f"rank {shard.rank} of {shard.world}: {counts}; rank 0 prints the summary", highlight=False)
        return
    if not quiet:
        where = f", {shard.world} ranks" if shard.sharded else ""
        console.print(summary_table(outcome, f"{command}: {len(outcome.rows)} videos into {out}{where}"))
    elif not outcome.ok:
        for r in outcome.rows:
            if r.error:
                console.print(f"[bold red]{r.status}:[/] {escape(r.video)}: {escape(r.error)}", highlight=False,
                              soft_wrap=True)
    if not outcome.ok:
        raise typer.Exit(1)
