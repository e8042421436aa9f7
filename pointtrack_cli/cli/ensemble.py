"""``ptrack ensemble``: several trackers on one video, the Track-On-R verifier picks per frame.

Register with ``app.command("ensemble")(ensemble_command)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import api
from ..batch import DEFAULT_OUT, ensemble_batch, plan_inputs
from ..device import check_precision
from ..errors import PtrackError
from .batch import BATCH_HELP, FAIL_FAST_HELP, RANK_TIMEOUT_HELP, other_rank, run_batch_command
from .common import (
    FORMAT_HELP, OVERWRITE_HELP, POINT_HELP, QUERIES_HELP, STRICT_DECODE_HELP, command_line, console, default_out, key_value_table, parse_hw, skipped_line,
    split_list, stages,
)

_HELP = (
    "Run several trackers (teachers) on VIDEO and keep, per frame and point, the candidate the Track-On-R verifier "
    "scores highest (visibility: strict majority of the teachers). Writes tracks.npz, tracks.csv and overlay.mp4 like "
    "`track`, plus selection.npz (candidates, candidate_visibility, scores, chosen, teachers) and prints how often "
    "each teacher was chosen.\n\n"
    "Memory: the video is decoded once and kept (T*H*W*3 bytes); teachers run one after another, each freed before "
    "the next. The verifier treats the whole clip as one temporal sequence (no windowing, as the official code) and "
    "holds about T*N*M KiB of candidate tokens in fp32 (T frames, N points, M candidates), e.g. 250 frames x 400 "
    "points x 5 teachers = 0.5 GB, plus ~0.6 GB of working memory (its CNN runs on 4 frames at a time)."
)


def counts_table(counts: dict[str, int], title: str) -> Table:
    """How often each candidate was chosen (from its query frame on)."""
    total = max(1, sum(counts.values()))
    table = Table(title=title, title_justify="left")
    table.add_column("candidate", style="bold")
    table.add_column("chosen", justify="right")
    table.add_column("share", justify="right")
    for name, n in counts.items():
        table.add_row(name, str(n), f"{100 * n / total:.1f}%")
    return table


def ensemble_command(
    videos: List[Path] = typer.Argument(..., help="Video file or folder of numbered images; several, a folder of videos or a quoted glob: a batch (with --teachers, not --candidates). Further .npz files after --candidates are candidate files.", metavar="VIDEOS", show_default=False),
    teachers: Optional[str] = typer.Option(
        None, "--teachers", "-t",
        help="Comma-separated tracker ids (any `ptrack models` tracker, optionally ID=WEIGHTS) or presets: trackon-r "
        "(the Track-On-R fine-tuning teachers), trackon-r-eval (its evaluation teachers); both leave out Track-On2, "
        "whose DINOv3 weights are licence-gated. Default without --candidates: "
        "realtracker-offline,realtracker-online,realtracker-offline-kubric,realtracker-online-kubric,lk.",
    ),
    candidates: List[str] = typer.Option(
        [], "--candidates", "-c",
        help="tracks.npz files (ptrack's schema, same video and queries) added as candidates, or used alone: "
        "--candidates a.npz b.npz (also comma-separated or repeated).",
    ),
    select: str = typer.Option("verifier", "--select", help="verifier (arg-max of the verifier's scores), random (one teacher per video, --seed) or median (of visible candidates)."),
    verifier_weights: Optional[Path] = typer.Option(None, "--verifier-weights", help="Local verifier checkpoint instead of the Hub download (gorkaydemir/track_on_r, verifier.pt)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --select random."),
    grid: Optional[int] = typer.Option(None, "--grid", "-g", help="Track a GRID x GRID lattice of points."),
    grid_frame: Optional[int] = typer.Option(None, "--grid-frame", help="Frame of the grid points (default: the first tracked frame)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Image; grid points only where it is non-zero."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help=QUERIES_HELP),
    point: List[str] = typer.Option([], "--point", "-p", help=POINT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: ./<video stem>_ensemble); for a batch the parent of one subfolder per video (default: ./ptrack_out)."),
    formats: str = typer.Option("npz,csv", "--format", help=FORMAT_HELP),
    no_overlay: bool = typer.Option(False, "--no-overlay", help="Do not write overlay.mp4."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    strict_decode: bool = typer.Option(False, "--strict-decode", help=STRICT_DECODE_HELP),
    start: int = typer.Option(0, "--start", help="First source frame to track."),
    end: Optional[int] = typer.Option(None, "--end", help="Stop before this source frame."),
    stride: int = typer.Option(1, "--stride", help="Track every STRIDE-th frame."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Downsize the longer side before tracking (outputs stay in original pixels)."),
    backward: bool = typer.Option(False, "--backward", help="Ask teachers to track before the query frame too."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Input HxW of every teacher whose id carries no @HxW (default: each teacher's own)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="CUDA only: auto (fp16 for the verifier, as the official pipeline), fp32, bf16 or fp16."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help=FAIL_FAST_HELP),
    rank_timeout: float = typer.Option(600.0, "--rank-timeout", min=1.0, help=RANK_TIMEOUT_HELP),
) -> None:
    more_candidates = [v for v in videos[1:] if v.suffix.lower() == ".npz"] if candidates else []
    videos = [v for v in videos if v not in more_candidates]
    cand_files = split_list(candidates) + [str(p) for p in more_candidates]
    teacher_ids = split_list([teachers]) if teachers else []
    fmt = api.check_outputs(formats, not no_overlay)
    check_precision(precision)
    hw = parse_hw(resolution)
    job = dict(
        teachers=teacher_ids, select=select, verifier_weights=verifier_weights, device=device, precision=precision,
        seed=seed, grid=grid, grid_frame=grid_frame, mask=mask, points=point, backward=backward, resolution=hw,
        start=start, end=end, stride=stride, max_size=max_size, command=command_line(), strict_decode=strict_decode,
    )
    stray = [v for v in videos if v.suffix.lower() == ".npz"]
    if stray:
        raise PtrackError(f"unexpected argument {stray[0]} (a track file, not a video: candidate files follow --candidates)")
    found = plan_inputs(videos, queries=queries, exclude=[out or DEFAULT_OUT])
    if found.batch:
        run_batch_command("ptrack ensemble", out or DEFAULT_OUT, lambda events, shard: ensemble_batch(
            found, out, formats=fmt, overlay=not no_overlay, overwrite=overwrite, fail_fast=fail_fast,
            timeout=rank_timeout, shard=shard, events=events, candidates=cand_files, quiet=quiet or not shard.main,
            **job), quiet)
        return
    if other_rank():
        return
    video = videos[0] if len(videos) == 1 and videos[0].exists() else found.paths[0]
    out_dir = out or default_out(video, "ensemble")
    with stages(quiet) as (stage, advance):
        done = api.ensemble_to(
            out_dir, video, queries, formats=fmt, overlay=not no_overlay, overwrite=overwrite, progress=advance,
            stage=stage, candidates=cand_files, quiet=quiet, **job,
        )
    if done.skipped:  # said even with --quiet: the one sign that nothing was computed
        skipped_line(done.folder)
        return
    if quiet:
        return
    res = done.ensemble
    console.print(counts_table(res.counts(), f"ptrack ensemble ({res.select})"))
    rows = list(api.summary(res.result).items()) + [("wrote", str(p)) for p in done.files]
    console.print(key_value_table("ptrack ensemble", rows))


ensemble_command.__doc__ = f"{_HELP}\n\n{BATCH_HELP}"
