"""Pieces shared by the CLI commands: error handling, progress bars, option parsing."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typer.core import TyperGroup

from ..errors import PtrackError

console = Console(stderr=True)


class PtrackGroup(TyperGroup):
    """Click group that turns :class:`PtrackError` into one red line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PtrackError as exc:
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None


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


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, quiet: bool) -> Iterator:
    """A rich progress bar; yields ``advance(n)`` (a no-op when quiet)."""
    if quiet:
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def split_list(values: list[str]) -> list[str]:
    """Options given comma-separated and/or repeated (``-t a,b -t c``) -> ``["a", "b", "c"]``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def command_line() -> str:
    return " ".join(["ptrack", *sys.argv[1:]])
