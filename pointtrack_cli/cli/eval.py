"""``ptrack eval``: the official TAP-Vid protocol and metrics (``tapvid``), and scoring saved predictions (``score``).

The numbers come from :mod:`pointtrack_cli.eval` (readers, runner, metrics, JSON and plot); this module
checks the options, builds the tracker once (:func:`pointtrack_cli.api.build_tracker`, any model id including
``ensemble:...``), drives the per-video loop under a progress bar and prints the result tables (x100, as
papers print them; the JSON keeps the fractions).
"""
from __future__ import annotations

import contextlib
import math
import time
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import typer
from rich import box
from rich.table import Table

from ..api import build_tracker
from ..batch.shard import RankStatus, Shard, wait_for_ranks
from ..batch.tapvid import check_ranks, check_sharded_eval, merged_results
from ..device import check_precision
from ..ensemble.selection import STRATEGIES
from ..ensemble.tracker import is_ensemble_id, parse_spec
from ..errors import PtrackError
from ..eval.datasets import TapVidDataset, open_dataset
from ..eval.metrics import THRESHOLDS, mean_over_videos
from ..eval.report import comparison_rows, plot_bars, results_payload, write_json
from ..eval.runner import VideoResult, evaluate_tracker, score_directory
from ..geometry import MODEL_RESOLUTION
from ..device import resolve_device
from ..io.identity import path_identity, weights_identity
from ..io.outputs import output_folder
from ..trackers.base import Tracker
from .batch import RANK_TIMEOUT_HELP
from .common import PtrackGroup, check_vis_threshold, console, parse_hw, progress_bar, stdout

app = typer.Typer(
    cls=PtrackGroup,
    help="Evaluate trackers on the TAP-Vid benchmarks with the official protocol and metrics.",
    no_args_is_help=True,
    add_completion=False,
)

_PICKLE_NOTE = (
    "The TAP-Vid .pkl files are Python pickles: they are read only from the path you give, with a loader "
    "that accepts nothing but dicts, lists and NumPy arrays."
)


class Dataset(str, Enum):
    davis = "davis"
    rgb_stacking = "rgb_stacking"
    kinetics = "kinetics"
    robotap = "robotap"


class Mode(str, Enum):
    first = "first"
    strided = "strided"


class Protocol(str, Enum):
    joint = "joint"
    single = "single"


class OcclusionRule(str, Enum):
    auto = "auto"
    tracker = "tracker"
    cotracker3 = "cotracker3"


def _resolve_rule(rule: OcclusionRule, tracker: Tracker) -> str:
    """'auto': CoTracker3's evaluation rule for the RealTracker (CoTracker3) models, else the tracker's own."""
    if rule is OcclusionRule.auto:
        return "cotracker3" if str(tracker.name).startswith("realtracker") else "tracker"
    return rule.value


_DATA_HELP = (
    "tapvid_davis.pkl, tapvid_rgb_stacking.pkl, the folder of Kinetics shards (*_of_0010.pkl) or the folder of "
    "RoboTAP splits (robotap_split*.pkl). Pickles are loaded only from this path (NumPy arrays only)."
)
_GT_SCALE_HELP = "Scale of the normalised ground truth: 256 (official, tapnet) or 255 (CoTracker3's reader)."
_MODEL_HELP = (
    "Tracker id (see `ptrack models`); `lk` needs no weights. `ensemble:ID,ID,...` runs the Track-On-R ensemble "
    "of those trackers (each ID may carry local weights: ID=PATH), selected per frame by --select."
)
_ORACLE_HELP = (
    "With --model ensemble:...: add a table (and JSON 'comparison') of the mean AJ / <δ_avg / OA of each teacher "
    "alone (its own visibility flags), the ensemble, and the per-frame oracle: per query and frame the candidate "
    "closest to the ground truth, with the ground-truth visibility (as the official Track-On-R evaluator; its OA "
    "is 100 by construction). On GT-occluded frames the pick does not affect any metric; where no candidate has "
    "an estimate (before the query frame if no teacher tracks backward) the oracle has none either (a miss)."
)


# ---------------------------------------------------------------------------------------------
# Progress over videos (stderr)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise PtrackError(f"--limit {limit} must be at least 1")


def _check_out_file(path: Path | None, option: str, suffix: str | None = None) -> None:
    """Fail before the long work when an output file cannot be written."""
    if path is None:
        return
    if suffix and path.suffix.lower() != suffix:
        raise PtrackError(f"{option} {path}: the file name must end in {suffix}")
    if path.is_dir():
        raise PtrackError(f"{option} {path} is a folder (give a file name)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PtrackError(f"{option} {path}: folder {parent} does not exist (create it first)")


def _run_loop(
    results_iter: Iterator[VideoResult], dataset: TapVidDataset, limit: int | None, description: str, quiet: bool,
    world: int = 1,
) -> list[VideoResult]:
    """Drain a results generator under a progress bar whose total follows the dataset's (estimated) size (rank 0's
    share of it when ``world`` processes share the videos)."""
    results = []
    with progress_bar(description, limit, quiet) as advance:
        for r in results_iter:
            results.append(r)
            est = dataset.estimated_total  # known once a file is read; shards still unread are estimated
            total = est if limit is None else (limit if est is None else min(est, limit))
            advance(1, total=None if total is None else -(-total // world))
    return results


# ---------------------------------------------------------------------------------------------
# Result tables (stdout): numbers x100


def _pct(v: float | None) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{100.0 * v:.1f}"


_SUMMARY_KEYS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


def summary_table(results: Sequence[VideoResult], mean: dict[str, float], title: str) -> Table:
    """Per-video AJ, delta_avg and OA (x100) with the mean over videos as the last row."""
    timed = any(r.seconds is not None for r in results)
    table = Table(title=title, show_footer=False)
    table.add_column("video", overflow="fold")
    table.add_column("frames", justify="right")
    table.add_column("queries", justify="right")
    for head in ("AJ", "<δ_avg", "OA"):
        table.add_column(head, justify="right")
    if timed:
        table.add_column("s/video", justify="right")
    for r in results:
        row = [r.name, str(r.num_frames), str(r.num_queries), *(_pct(r.metrics[k]) for k in _SUMMARY_KEYS)]
        if timed:
            row.append(f"{r.seconds:.2f}" if r.seconds is not None else "")
        table.add_row(*row)
    times = [r.seconds for r in results if r.seconds is not None]
    mean_row = [
        f"mean ({len(results)} videos)",
        "",
        str(sum(r.num_queries for r in results)),
        *(_pct(mean[k]) for k in _SUMMARY_KEYS),
    ]
    if timed:
        mean_row.append(f"{np.mean(times):.2f}" if times else "")
    table.add_row(*mean_row, style="bold", end_section=True)
    return table


def threshold_table(results: Sequence[VideoResult], mean: dict[str, float], title: str) -> Table:
    """Per-threshold values (x100): pts_within and jaccard at 1, 2, 4, 8, 16 px, per video and mean."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    # Numbers never wrap; a long video name is cut first so the table fits 80 columns.
    table.add_column("video", overflow="ellipsis", no_wrap=True, min_width=6)
    for head in [f"<δ{d}" for d in THRESHOLDS] + [f"J{d}" for d in THRESHOLDS]:
        table.add_column(head, justify="right", no_wrap=True, min_width=5)
    cols = [f"pts_within_{d}" for d in THRESHOLDS] + [f"jaccard_{d}" for d in THRESHOLDS]
    for r in results:
        table.add_row(r.name, *(_pct(r.metrics[k]) for k in cols))
    table.add_row("mean", *(_pct(mean[k]) for k in cols), style="bold")
    return table


def comparison_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """AJ, <δ_avg and OA (x100, mean over videos) per row of :func:`~pointtrack_cli.eval.report.comparison_rows`."""
    table = Table(title=title)
    table.add_column("candidate", overflow="fold")
    table.add_column("role")
    for head in ("AJ", "<δ_avg", "OA"):
        table.add_column(head, justify="right")
    for row in rows:
        style = "bold" if row["role"] != "teacher" else None
        table.add_row(row["name"], row["role"], *(_pct(row["mean"][k]) for k in _SUMMARY_KEYS), style=style)
    return table


def _report(
    results: list[VideoResult], meta: dict, title: str, json_path: Path | None, plot_path: Path | None, quiet: bool,
    extra_tables: tuple = (),
) -> None:
    """Print the tables to stdout, then write the JSON and the plot when asked."""
    mean = mean_over_videos([r.metrics for r in results])
    stdout.print(summary_table(results, mean, title))
    stdout.print(threshold_table(results, mean, "per-threshold values (x100): <δ = points within, J = Jaccard"))
    for table in extra_tables:
        stdout.print(table)
    if json_path is not None:
        write_json(json_path, results_payload(results, meta))
        if not quiet:
            console.print(f"wrote {json_path}")
    if plot_path is not None:
        plot_bars(plot_path, results, title)
        if not quiet:
            console.print(f"wrote {plot_path}")


# ---------------------------------------------------------------------------------------------
# Options


def _model_hw(tracker: Tracker, resolution: tuple[int, int] | None) -> tuple[int, int]:
    """The tracker's input size (for placing support points): --resolution, its settings, else 384x512."""
    if resolution:
        return tuple(resolution)
    res = tracker.settings().get("resolution") if hasattr(tracker, "settings") else None
    if isinstance(res, (list, tuple)) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res):
        return int(res[0]), int(res[1])
    return MODEL_RESOLUTION


def _check_ensemble_options(
    model: str, select: str | None, verifier_weights: Path | None, oracle: bool, weights: Path | None,
    occlusion_rule: OcclusionRule,
) -> bool:
    """Reject option mixes that only make sense with (or not with) ``--model ensemble:...``; True for an ensemble."""
    if not is_ensemble_id(model):
        for flag, given in (("--oracle", oracle), ("--select", select is not None), ("--verifier-weights", verifier_weights is not None)):
            if given:
                raise PtrackError(f"{flag} needs an ensemble model, e.g. --model ensemble:lk,{model} "
                                  "(it compares or selects among several trackers' candidates)")
        return False
    parse_spec(model)  # unknown teachers fail here, before the dataset is read
    if select is not None and select not in STRATEGIES:
        raise PtrackError(f"--select {select!r} is not one of {', '.join(STRATEGIES)}")
    if weights is not None:
        raise PtrackError("--weights is ambiguous with an ensemble: give each teacher its weights as "
                          "--model ensemble:ID=PATH,ID=PATH")
    if occlusion_rule is OcclusionRule.cotracker3:
        raise PtrackError("--occlusion-rule cotracker3 does not apply to an ensemble (its visibility is the "
                          "teachers' majority vote): use --occlusion-rule auto or tracker")
    return True


@app.command("tapvid", epilog=_PICKLE_NOTE)
def tapvid(
    dataset: Dataset = typer.Option(..., "--dataset", "-d", help="Which TAP-Vid benchmark."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    mode: Mode = typer.Option(Mode.first, "--mode", help="Query sampling: first (CoTracker3 tables) or strided (every 5th frame, tracks both ways)."),
    protocol: Protocol = typer.Option(Protocol.joint, "--protocol", help="joint: all queries of a video at once + 5x5 support grid (fast). single: one query at a time with 8x8 local + 5x5 global support grids (CoTracker3 paper)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Local checkpoint instead of the Hub download."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Model input HxW (multiples of 4), default 384x512; the 256x256 frames are resized to it inside the tracker."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="CUDA only: auto, fp32, bf16 or fp16."),
    vis_threshold: Optional[float] = typer.Option(None, "--vis-threshold", help="The tracker's visibility threshold (default: the model's official one)."),
    occlusion_rule: OcclusionRule = typer.Option(OcclusionRule.auto, "--occlusion-rule", help="tracker: the tracker's own visibility. cotracker3: visible = visibility_prob x confidence > 0.6, the rule of CoTracker3's evaluation. auto: cotracker3 for RealTracker models, else tracker."),
    no_support: bool = typer.Option(False, "--no-support", help="Send the queries without support points (how CoTracker3 evaluates its online model)."),
    gt_scale: int = typer.Option(256, "--gt-scale", help=_GT_SCALE_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first K videos."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number (per video and mean, fractions) to this JSON file."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="Folder for one NPZ per video: tracks [T,Q,2] (x,y) and occluded [T,Q] at 256x256, plus the query points; each with its manifest <video>.ptrack.json, so a stopped run resumes from the videos it finished."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --save-predictions: replace predictions of another job (other model or options) in the folder instead of refusing, and recompute those of this job."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG bar plot of per-video AJ and <δ_avg."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or notes (the result tables are still printed)."),
    select: Optional[str] = typer.Option(None, "--select", help="With ensemble:...: verifier (default; arg-max of the Track-On-R verifier, needs its weights), random (one teacher per video) or median (per-frame median of the visible candidates, no weights)."),
    verifier_weights: Optional[Path] = typer.Option(None, "--verifier-weights", help="With ensemble:... and --select verifier: local verifier checkpoint instead of the Hub download (gorkaydemir/track_on_r, verifier.pt)."),
    seed: int = typer.Option(0, "--seed", help="With --select random: the k-th video (or query, with --protocol single) draws its teacher with seed + k."),
    oracle: bool = typer.Option(False, "--oracle", help=_ORACLE_HELP),
    rank_timeout: float = typer.Option(600.0, "--rank-timeout", min=1.0, help=RANK_TIMEOUT_HELP),
) -> None:
    """Run a tracker on a TAP-Vid dataset and print AJ, <δ_avg and OA per video and their mean.

    Frames are resized to 256x256 (PIL Lanczos) and ground truth scaled to 256x256 pixels, as the official
    protocol does; metrics are computed per video and averaged over videos.

    Under `torchrun --nproc_per_node K -m pointtrack_cli eval tapvid ... --save-predictions DIR` rank r predicts
    every K-th video into DIR (one GPU each) and rank 0 prints the metrics merged from the files there.
    """
    _check_limit(limit)
    _check_out_file(json_out, "--json", ".json")
    _check_out_file(plot, "--plot", ".png")
    check_precision(precision)
    check_vis_threshold(vis_threshold)
    hw = parse_hw(resolution)
    is_ensemble = _check_ensemble_options(model, select, verifier_weights, oracle, weights, occlusion_rule)
    shard = Shard.from_env()
    check_sharded_eval(shard, save_predictions)
    shard.pin_device(device)
    asked_quiet, quiet = quiet, quiet or not shard.main  # one process reports: rank 0
    ds = open_dataset(dataset.value, data, gt_scale)
    # 'first' never scores frames before the query, so backward tracking is only needed for 'strided'.
    backward = mode is Mode.strided
    # Built once for the whole run (an ensemble: every teacher and the verifier). No support grid of the
    # tracker's own: the runner adds the protocol's support points. Ensemble teachers get the same settings.
    tracker = build_tracker(
        model, weights=weights, device=device, resolution=hw, backward=backward, precision=precision, quiet=quiet,
        vis_threshold=vis_threshold, support_grid=False, select=select or "verifier",
        verifier_weights=verifier_weights if is_ensemble else None, seed=seed,
    )
    if backward and not getattr(tracker, "backward", False) and not quiet:
        console.print(f"[yellow]note:[/] {tracker.name} does not track backwards: in strided mode the frames before "
                      "each query count as misses")
    model_hw = _model_hw(tracker, hw)
    rule = _resolve_rule(occlusion_rule, tracker)
    meta = {
        "command": "ptrack eval tapvid",
        "dataset": dataset.value,
        "data": str(data),
        "query_mode": mode.value,
        "protocol": protocol.value,
        "model": tracker.name,
        "gt_scale": gt_scale,
        "occlusion_rule": rule,
        "support_points": not no_support,
        "model_resolution": list(model_hw),
    }
    npz_meta = {k: v for k, v in meta.items() if k in ("dataset", "protocol", "model", "gt_scale")}
    # What determines each video's predictions (its set's job key adds the video): not --limit, --json, --plot.
    teachers = parse_spec(model) if is_ensemble else []
    job = {
        **meta, "kind": "eval-tapvid", "data": path_identity(data), "model_id": model,
        "weights": [weights_identity(t.id, t.weights) for t in teachers] if is_ensemble else weights_identity(model, weights),
        "device": resolve_device(device), "precision": precision, "resolution": hw, "vis_threshold": vis_threshold,
        "select": select, "verifier_weights": weights_identity("verifier", verifier_weights) if is_ensemble else None,
        "seed": seed,
    }
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if save_predictions is not None:  # removed again if the run fails before a video's set is complete
            stack.enter_context(output_folder(save_predictions))
            stack.enter_context(RankStatus(save_predictions, shard, 0))  # sharded: tells rank 0 when this one ends
        results = _run_loop(
            evaluate_tracker(
                tracker, ds, mode.value, protocol.value, limit=limit, save_dir=save_predictions, model_hw=model_hw,
                occlusion_rule=rule, support=not no_support, meta=npz_meta, oracle=oracle, job=job, overwrite=overwrite,
                shard=(shard.rank, shard.world),
            ),
            ds, limit, f"{dataset.value} ({tracker.name}, {mode.value}, {protocol.value})", quiet, shard.world,
        )
    if shard.sharded:
        if not shard.main:
            if not asked_quiet:
                console.print(f"rank {shard.rank} of {shard.world}: {len(results)} video(s) predicted into "
                              f"{save_predictions}; rank 0 prints the metrics", highlight=False)
            return
        check_ranks(wait_for_ranks(save_predictions, shard, rank_timeout), rank_timeout)
        results = list(merged_results(ds, mode.value, protocol.value, save_predictions, job, limit=limit,
                                      oracle=oracle, teacher_names=getattr(tracker, "teacher_names", [])))
    resumed = sum(bool(r.extra.get("resumed")) for r in results)
    if resumed and not quiet:
        console.print(f"resumed: {resumed} video(s) scored from the complete predictions in {save_predictions}")
    meta.update(
        tracker_settings=tracker.settings(),
        weights=getattr(tracker, "weights_info", None) or "none",
        total_seconds=round(time.perf_counter() - t0, 3),
    )
    if save_predictions is not None:
        meta["predictions"] = str(save_predictions)
    title = f"TAP-Vid-{dataset.value} {mode.value} · {tracker.name} · {protocol.value}"
    tables: tuple = ()
    if oracle:
        rows = comparison_rows(results, f"ensemble ({tracker.select})")
        meta["comparison"] = {
            "rows": rows,
            "oracle": "per query and frame the candidate closest to the ground truth, with ground-truth visibility",
            "teacher_visibility": "each teacher's own visibility flags (those that vote in the ensemble)",
        }
        tables = (comparison_table(rows, f"teachers vs ensemble vs per-frame oracle (x100, mean over {len(results)} videos)"),)
    _report(results, meta, title, json_out, plot, quiet, tables)


@app.command("score", epilog=_PICKLE_NOTE)
def score(
    predictions: Path = typer.Option(..., "--predictions", "-p", help="Folder with one <video>.npz per video (as --save-predictions writes): tracks and occluded at 256x256."),
    dataset: Dataset = typer.Option(..., "--dataset", "-d", help="Which TAP-Vid benchmark."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    mode: Mode = typer.Option(Mode.first, "--mode", help="Query sampling the predictions were made for."),
    gt_scale: int = typer.Option(256, "--gt-scale", help=_GT_SCALE_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first K videos."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number (per video and mean, fractions) to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG bar plot of per-video AJ and <δ_avg."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or notes."),
) -> None:
    """Score saved predictions (from ptrack or any other tracker) with the official TAP-Vid metrics.

    Each <video>.npz holds `tracks` [T,Q,2] (x, y; or [Q,T,2] with layout='QT') and `occluded` [T,Q] in
    256x256 pixels, in the official query order of --mode. Video names are the dataset's keys (or 0, 1, ...
    for list datasets), with characters outside [A-Za-z0-9._-] replaced by '_'.
    """
    _check_limit(limit)
    _check_out_file(json_out, "--json", ".json")
    _check_out_file(plot, "--plot", ".png")
    if not predictions.is_dir():
        raise PtrackError(f"--predictions {predictions} is not a folder (give the folder of per-video .npz files)")
    ds = open_dataset(dataset.value, data, gt_scale)
    results = _run_loop(
        score_directory(predictions, ds, mode.value, limit=limit), ds, limit, f"scoring {dataset.value}", quiet
    )
    meta = {
        "command": "ptrack eval score",
        "dataset": dataset.value,
        "data": str(data),
        "query_mode": mode.value,
        "gt_scale": gt_scale,
        "predictions": str(predictions),
    }
    _report(results, meta, f"TAP-Vid-{dataset.value} {mode.value} · {predictions.name}", json_out, plot, quiet)
