"""The ``ptrack`` application: the commands and their registration."""
from __future__ import annotations

import typer

from ..version import __version__
from .common import PtrackGroup
from .ensemble import ensemble_command
from .eval import app as eval_app
from .finetune import finetune as finetune_command
from .models import app as models_app
from .track import track_command

app = typer.Typer(
    cls=PtrackGroup,
    help="Track any point through a video. Coordinates are pixels of the original video, x then y, "
    "(0, 0) = centre of the top-left pixel.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("track")(track_command)
app.command("ensemble")(ensemble_command)
app.add_typer(eval_app, name="eval")
app.command("finetune")(finetune_command)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ptrack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """ptrack: point tracking from the command line."""


def main() -> None:
    """Entry point of the ``ptrack`` executable."""
    app(prog_name="ptrack")
