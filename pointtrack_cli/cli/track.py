"""``ptrack track``: options -> :func:`pointtrack_cli.api.track_to` (plan, rerun rule, track, output set) -> a summary.

Several videos (or a folder of videos) run as a batch: :func:`pointtrack_cli.batch.track_batch`, shown by
:mod:`.batch` (one table for the batch; sharded under torchrun)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import api
from ..batch import DEFAULT_OUT, plan_inputs, track_batch
from ..device import check_precision
from .common import (
    FORMAT_HELP, OVERWRITE_HELP, POINT_HELP, QUERIES_HELP, STRICT_DECODE_HELP, check_vis_threshold, command_line, console, default_out, key_value_table, parse_hw,
    skipped_line, stages,
)
from .batch import BATCH_HELP, FAIL_FAST_HELP, RANK_TIMEOUT_HELP, other_rank, run_batch_command
from .ensemble import counts_table

_MODEL_HELP = (
    "Tracker id (see `ptrack models`), optionally @HxW; `lk` and `protracker` need no weights. "
    "`ensemble:ID[=WEIGHTS],...` runs the Track-On-R ensemble of those trackers exactly as `ptrack ensemble` "
    "(--select, --verifier-weights; also writes selection.npz)."
)


def track_command(
    videos: List[Path] = typer.Argument(..., help="Video file (mp4, mov, avi, mkv, webm, gif, ...) or a folder of numbered images; several, a folder of videos or a quoted glob: a batch.", metavar="VIDEOS", show_default=False),
    model: str = typer.Option("realtracker-offline", "--model", "-m", help=_MODEL_HELP),
    grid: Optional[int] = typer.Option(None, "--grid", "-g", help="Track a GRID x GRID lattice of points (official RealTracker placement)."),
    grid_frame: Optional[int] = typer.Option(None, "--grid-frame", help="Frame of the grid points (default: the first tracked frame)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Image; grid points only where it is non-zero."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help=QUERIES_HELP),
    point: List[str] = typer.Option([], "--point", "-p", help=POINT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: ./<video stem>_ptrack); for a batch the parent of one subfolder per video (default: ./ptrack_out)."),
    formats: str = typer.Option("npz,csv", "--format", help=FORMAT_HELP),
    no_overlay: bool = typer.Option(False, "--no-overlay", help="Do not write overlay.mp4."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    strict_decode: bool = typer.Option(False, "--strict-decode", help=STRICT_DECODE_HELP),
    start: int = typer.Option(0, "--start", help="First source frame to track."),
    end: Optional[int] = typer.Option(None, "--end", help="Stop before this source frame."),
    stride: int = typer.Option(1, "--stride", help="Track every STRIDE-th frame."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Downsize the longer side to this many pixels before tracking (outputs stay in original pixels)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Local checkpoint (.pth/.safetensors, official key layout) instead of the download."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Model input HxW (multiples of 4), default: the model's own (RealTracker 384x512)."),
    backward: bool = typer.Option(False, "--backward", help="Also track points before their query frame (RealTracker and causal teachers; lk, protracker and bidirectional teachers always do)."),
    no_support_grid: bool = typer.Option(False, "--no-support-grid", help="Do not add RealTracker's 6x6 support grid to explicit queries."),
    vis_threshold: Optional[float] = typer.Option(None, "--vis-threshold", help="Visibility threshold (default: the model's official one)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="RealTracker refinement iterations (default 6, as the official predictors; fewer is faster and less accurate)."),
    features: Optional[str] = typer.Option(None, "--features", help="protracker: descriptors for the feature filter and keypoints: patch (default), sift, or realtracker (RealTracker's feature network; --weights or the Hub)."),
    flow: Optional[str] = typer.Option(None, "--flow", help="protracker: optical flow: dis (default, = dis-medium), dis-fast, dis-ultrafast or farneback."),
    mask_video: Optional[Path] = typer.Option(None, "--mask-video", help="protracker: folder of per-frame object masks (one image per video frame, numbered like the frames); points queried on the object are occluded off it."),
    select: str = typer.Option("verifier", "--select", help="With --model ensemble:...: verifier, random or median (see `ptrack ensemble`)."),
    verifier_weights: Optional[Path] = typer.Option(None, "--verifier-weights", help="With --model ensemble:...: local verifier checkpoint instead of the Hub download."),
    seed: int = typer.Option(0, "--seed", help="With --model ensemble:... --select random: the seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (CUDA; auto = fp32 for trackers, fp16 for the verifier)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help=FAIL_FAST_HELP),
    rank_timeout: float = typer.Option(600.0, "--rank-timeout", min=1.0, help=RANK_TIMEOUT_HELP),
) -> None:
    """Track points through VIDEOS and write tracks.npz, tracks.csv and overlay.mp4 (then ptrack.json, the manifest).

    A rerun of the same job into the same --out is skipped; another job's complete outputs there are refused
    unless --overwrite. A failed or stopped run leaves the previous outputs, or none: never a mix.
    """
    fmt = api.check_outputs(formats, not no_overlay)
    check_precision(precision)
    check_vis_threshold(vis_threshold)
    hw = parse_hw(resolution)
    options = {k: v for k, v in (("features", features), ("flow", flow), ("mask_video", mask_video)) if v is not None}
    job = dict(
        model=model, grid=grid, grid_frame=grid_frame, mask=mask, points=point, start=start, end=end, stride=stride,
        max_size=max_size, weights=weights, device=device, resolution=hw, backward=backward, precision=precision,
        vis_threshold=vis_threshold, support_grid=not no_support_grid, iters=iters, options=options or None,
        select=select, verifier_weights=verifier_weights, seed=seed, command=command_line(), strict_decode=strict_decode,
    )
    found = plan_inputs(videos, queries=queries, exclude=[out or DEFAULT_OUT])
    if found.batch:
        run_batch_command("ptrack track", out or DEFAULT_OUT, lambda events, shard: track_batch(
            found, out, formats=fmt, overlay=not no_overlay, overwrite=overwrite, fail_fast=fail_fast,
            timeout=rank_timeout, shard=shard, events=events, quiet=quiet or not shard.main, **job), quiet)
        return
    if other_rank():
        return
    video = videos[0] if len(videos) == 1 and videos[0].exists() else found.paths[0]
    out_dir = out or default_out(video, "ptrack")
    # The model is built (and its weights fetched) before the first bar appears: errors come first and alone.
    with stages(quiet) as (stage, advance):
        done = api.track_to(out_dir, video, formats=fmt, overlay=not no_overlay, overwrite=overwrite, progress=advance,
                            stage=stage, queries=queries, quiet=quiet, **job)
    if done.skipped:  # said even with --quiet: the one sign that nothing was computed
        skipped_line(done.folder)
        return
    if quiet:
        return
    result = done.result
    if "chosen_counts" in result.meta:
        console.print(counts_table(result.meta["chosen_counts"], f"ptrack track ({model}, {select})"))
    rows = list(api.summary(result).items()) + [("wrote", str(p)) for p in done.files]
    console.print(key_value_table("ptrack track", rows))


track_command.__doc__ = f"{track_command.__doc__.rstrip()}\n\n    {BATCH_HELP}\n"
