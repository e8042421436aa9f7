"""Presentation shared by the commands: the error boundary, progress bars, tables and option parsing.

This is the only place that turns library events into terminal output: :class:`PtrackError` becomes one
red line and exit code 2 (:class:`PtrackGroup`), ``progress(n)`` / ``stage(description, total)`` callbacks
become rich progress bars (:func:`stages`), result dicts become tables (:func:`key_value_table`), Python
warnings become one yellow line each.

Every failure is one line (:class:`PtrackGroup`): a :class:`PtrackError` (exit 2); an ``OSError`` the library
did not convert (exit 2, naming the file); ``MemoryError`` (exit 2, with numpy's size); Ctrl-C (exit 130) and
SIGTERM (exit 143), which the handler here raises as :class:`~pointtrack_cli.errors.Terminated`, a
``KeyboardInterrupt``, so the library's ``finally`` blocks and context managers clean up as for Ctrl-C (an
output set's staging folder is removed, see :mod:`pointtrack_cli.io.outputs`).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from ..errors import PtrackError, Terminated

console = Console(stderr=True)  # progress, notes and summaries; result tables of `eval` go to stdout
stdout = Console()

Advance = Callable[..., None]

OVERWRITE_HELP = ("Replace another job's complete outputs in --out (refused otherwise); also recomputes a complete "
                  "set of the same job instead of skipping it.")
STRICT_DECODE_HELP = "Refuse a damaged video (ffmpeg decode errors) instead of tracking it with a warning."
FORMAT_HELP = ("Comma-separated files to write: npz, csv (the default), and exports for other tools: dlc (DeepLabCut "
               "CSV; also .h5 with the dlc extra), sleap (analysis HDF5; the sleap extra), napari (Points CSV), coco "
               "(keypoints JSON), nc (movement netCDF; the nc extra), tapvid (a TAP-Vid DAVIS pickle for `ptrack eval`). "
               "Extras: pip install \"ptrack\\[dlc,sleap,nc]\".")
POINT_HELP = ("A query point t,x,y, or NAME=t,x,y (repeatable). The same NAME on several frames is one point with "
              "several anchors: per frame the nearest anchor in time wins.")
QUERIES_HELP = ("Query file: CSV with header t,x,y (or frame,x,y) and an optional name column, .npy/.json of (t, x, y), "
                "or a COCO keypoints .json (each labelled keypoint is a named query on its image's frame).")
Stage = Callable[[str, int | None], None]


def _error_line(text: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(text)}", markup=True)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one yellow line, no source location."""
    text = " ".join(str(message).split())
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[yellow]warning:[/] {escape(text)}", markup=True)


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_and_warnings() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (main thread only; restored after); warnings print one line each, ptrack's
    own once per command (the added filter also resets what earlier commands in this process already showed)."""
    previous = None
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is not _raise_terminated:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("default", module=r"pointtrack_cli(\.|$)")
            warnings.showwarning = _warning_line
            yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class PtrackGroup(TyperGroup):
    """Click group that turns every failure into one line on stderr (see the module docstring for exit codes)."""

    def invoke(self, ctx: click.Context):
        try:
            with _signals_and_warnings():
                return super().invoke(ctx)
        except PtrackError as exc:
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except MemoryError as exc:
            size = str(exc).strip() or "an allocation failed"
            _error_line(f"out of memory: {size} (track fewer points or frames: --grid, --end, --stride; or --max-size)")
            raise typer.Exit(2) from None
        except OSError as exc:  # found late (a file vanished, a disk failed): name it, no traceback
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            _error_line(f"{exc.strerror or exc}{where}")
            raise typer.Exit(2) from None
        except Terminated as exc:
            Console(stderr=True).print(f"terminated (signal {exc.signum}); partial outputs removed")
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted; partial outputs removed")
            raise typer.Exit(130) from None


def progress_columns() -> list:
    return [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn()]


@contextlib.contextmanager
def stages(quiet: bool) -> Iterator[tuple[Stage, Advance]]:
    """Progress with one bar per stage; yields ``(stage(description, total), advance(n=1, total=None))``.

    ``stage`` starts a new bar (total None = unknown); ``advance`` moves the newest one (and sets its total
    when one becomes known, e.g. the videos of a dataset read shard by shard). No-ops when quiet.
    """
    if quiet:
        yield (lambda description, total=None: None), (lambda n=1, total=None: None)
        return
    current: list = [None]
    with Progress(*progress_columns(), console=console, transient=False) as progress:
        def stage(description: str, total: int | None = None) -> None:
            current[0] = progress.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if current[0] is not None:
                if total is not None:
                    progress.update(current[0], total=total)
                progress.advance(current[0], n)

        yield stage, advance


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, quiet: bool) -> Iterator[Advance]:
    """One progress bar; yields ``advance(n=1)``."""
    with stages(quiet) as (stage, advance):
        stage(description, total)
        yield advance


@contextlib.contextmanager
def download_bar(description: str, quiet: bool) -> Iterator[Callable[[int, int | None], None]]:
    """A byte-count bar for downloads; yields ``update(done, total)`` (the weights' ``DownloadProgress``)."""
    if quiet:
        yield lambda done, total: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def skipped_line(folder: Path) -> None:
    """The one line of a rerun that found its own complete outputs (exit 0)."""
    console.print(f"skipped: {folder} already holds the complete outputs of this job (ptrack.json); "
                  "--overwrite recomputes them", highlight=False, soft_wrap=True)


def key_value_table(title: str, rows: Mapping[str, str] | Sequence[tuple[str, str]]) -> Table:
    """A two-column summary table (the short summary every command ends with)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in (rows.items() if isinstance(rows, Mapping) else rows):
        table.add_row(name, str(value))
    return table


def parse_hw(text: str | None, option: str = "--resolution") -> tuple[int, int] | None:
    """``"384x512"`` -> (384, 512); height first, both multiples of 4 (the models' stride)."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PtrackError(f"{option} {text!r} is not HxW (e.g. {option} 384x512)") from None
    if h <= 0 or w <= 0 or h % 4 or w % 4:
        raise PtrackError(f"{option} {text}: height and width must be positive multiples of 4 (the model stride), e.g. 384x512")
    return h, w


def check_vis_threshold(value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):
        raise PtrackError(f"--vis-threshold {value} must be between 0 and 1")


def split_list(values: list[str]) -> list[str]:
    """Options given comma-separated and/or repeated (``-t a,b -t c``) -> ``["a", "b", "c"]``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def command_line() -> str:
    return " ".join(["ptrack", *sys.argv[1:]])


def default_out(video: Path, suffix: str) -> Path:
    """``./<video stem>_<suffix>``: the default output folder of a command."""
    return Path.cwd() / f"{video.stem}_{suffix}"
