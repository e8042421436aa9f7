"""The ``ptrack`` command line: a thin layer over the Python API in :mod:`pointtrack_cli.api`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import __version__
from .commands.common import PtrackGroup, command_line, console, parse_hw, progress_bar
from .commands.ensemble import ensemble_command
from .commands.eval import app as eval_app
from .commands.finetune import finetune as finetune_command
from .commands.models import app as models_app
from .errors import PtrackError

app = typer.Typer(
    cls=PtrackGroup,
    help="Track any point through a video. Coordinates are pixels of the original video, x then y, "
    "(0, 0) = centre of the top-left pixel.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.command("ensemble")(ensemble_command)
app.command("finetune")(finetune_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ptrack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """ptrack: point tracking from the command line."""


FORMATS = ("npz", "csv")


@app.command()
def track(
    video: Path = typer.Argument(..., help="Video file (mp4, mov, avi, mkv, webm, gif, ...) or a folder of numbered images."),
    model: str = typer.Option("realtracker-offline", "--model", "-m", help="Tracker id (see `ptrack models`); `lk` needs no weights."),
    grid: Optional[int] = typer.Option(None, "--grid", "-g", help="Track a GRID x GRID lattice of points (official RealTracker placement)."),
    grid_frame: Optional[int] = typer.Option(None, "--grid-frame", help="Frame of the grid points (default: the first tracked frame)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Image; grid points only where it is non-zero."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help="CSV with header t,x,y (or frame,x,y), or .npy/.json of (t, x, y)."),
    point: List[str] = typer.Option([], "--point", "-p", help="A query point t,x,y (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: ./<video stem>_ptrack)."),
    formats: str = typer.Option("npz,csv", "--format", help="Comma-separated subset of npz,csv."),
    no_overlay: bool = typer.Option(False, "--no-overlay", help="Do not write overlay.mp4."),
    start: int = typer.Option(0, "--start", help="First source frame to track."),
    end: Optional[int] = typer.Option(None, "--end", help="Stop before this source frame."),
    stride: int = typer.Option(1, "--stride", help="Track every STRIDE-th frame."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Downsize the longer side to this many pixels before tracking (outputs stay in original pixels)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Local checkpoint (.pth/.safetensors, official key layout) instead of the Hub download."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Model input HxW (multiples of 4), default 384x512."),
    backward: bool = typer.Option(False, "--backward", help="Also track points before their query frame (RealTracker; lk always does)."),
    no_support_grid: bool = typer.Option(False, "--no-support-grid", help="Do not add RealTracker's 6x6 support grid to explicit queries."),
    vis_threshold: Optional[float] = typer.Option(None, "--vis-threshold", help="Visibility threshold (default: the model's official one)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="RealTracker refinement iterations (default 6, as the official predictors; fewer is faster and less accurate)."),
    features: Optional[str] = typer.Option(None, "--features", help="protracker: descriptors for the feature filter and keypoints: patch (default), sift, or realtracker (RealTracker's feature network; --weights or the Hub)."),
    flow: Optional[str] = typer.Option(None, "--flow", help="protracker: optical flow: dis (default, = dis-medium), dis-fast, dis-ultrafast or farneback."),
    mask_video: Optional[Path] = typer.Option(None, "--mask-video", help="protracker: folder of per-frame object masks (one image per video frame, name order); points queried on the object are occluded off it."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="CUDA only: auto, fp32, bf16 or fp16 (CPU always fp32)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary."),
) -> None:
    """Track points through VIDEO and write tracks.npz, tracks.csv and overlay.mp4."""
    from .api import track as run_track, write_outputs
    from .io.video import open_video
    from .trackers import build_tracker

    fmt = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmt if f not in FORMATS]
    if bad:
        raise PtrackError(f"--format {formats!r}: unknown format {bad[0]!r} (choose from npz,csv)")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise PtrackError(f"--precision {precision!r} is not one of auto, fp32, bf16, fp16")
    if vis_threshold is not None and not (0.0 <= vis_threshold <= 1.0):
        raise PtrackError(f"--vis-threshold {vis_threshold} must be between 0 and 1")
    hw = parse_hw(resolution)
    out_dir = out or Path.cwd() / f"{video.stem}_ptrack"
    if out_dir.resolve() == video.resolve():
        raise PtrackError(f"--out {out_dir} is the input video: choose another output folder")
    from .io.atomic import ensure_out_dir

    ensure_out_dir(out_dir)  # fail before the long work, not after
    reader = open_video(video, start=start, end=end, stride=stride, max_size=max_size)
    options = {k: v for k, v in (("features", features), ("flow", flow), ("mask_video", mask_video)) if v is not None}
    # Build the model (and fetch its weights) before any progress bar, so errors come first and alone.
    tracker = build_tracker(
        model, weights=str(weights) if weights else None, device=device, resolution=hw, backward=backward,
        precision=precision, quiet=quiet, vis_threshold=vis_threshold, iters=iters,
        support_grid=not no_support_grid and (queries is not None or bool(point) or mask is not None),
        options=options or None,
    )
    t0 = time.perf_counter()
    with progress_bar(f"tracking ({model})", reader.num_frames, quiet) as advance:
        result = run_track(
            reader, tracker=tracker, grid=grid, grid_frame=grid_frame, mask=mask, queries=queries, points=point,
            resolution=hw, progress=advance,
        )
    result.meta["command"] = command_line()
    track_seconds = time.perf_counter() - t0
    with progress_bar("writing overlay", reader.num_frames if not no_overlay else 0, quiet or no_overlay) as advance:
        written = write_outputs(result, out_dir, formats=fmt, overlay=not no_overlay, video=reader, progress=advance)
    if quiet:
        return
    table = Table(title="ptrack track", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    vis_frac = float(result.visibility.mean()) if result.visibility.size else 0.0
    rows = [
        ("frames", f"{result.num_frames} (source {int(result.frame_indices[0])}..{int(result.frame_indices[-1])})"),
        ("points", str(result.num_points)),
        ("model", result.model),
        ("device", str(getattr(tracker, "device", "cpu"))),
        ("time", f"{track_seconds:.1f} s tracking"),
        ("frames/s", f"{result.num_frames / max(track_seconds, 1e-9):.1f}"),
        ("visible", f"{100 * vis_frac:.1f}% of point-frames"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for p in written:
        table.add_row("wrote", str(p))
    console.print(table)


def main() -> None:
    """Entry point of the ``ptrack`` executable."""
    app(prog_name="ptrack")


if __name__ == "__main__":
    main()
