"""``ptrack models``: list the trackers and the registry, and fetch weights ahead of time."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..ensemble.teachers import PRESET_NOTE, PRESETS
from ..trackers.registry import WEIGHT_FREE
from ..weights.hub import cached_path, copy_into_cache, download as fetch
from ..weights.registry import registry, source_text
from .common import PtrackGroup, console, download_bar

app = typer.Typer(cls=PtrackGroup, help="List models and download their weights.", invoke_without_command=True)


@app.callback()
def list_models(ctx: typer.Context) -> None:
    """List every model id with its weights source, licence and whether it is cached."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="ptrack models")
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("weights", overflow="fold")
    table.add_column("licence")
    table.add_column("cached", no_wrap=True)
    for mid in WEIGHT_FREE:
        table.add_row(mid, "tracker", "none needed", "-", "-")
    for mid, e in registry().items():
        try:
            cached = "yes" if cached_path(mid) else "no"
        except Exception:  # an unreadable cache must not break the listing
            cached = "?"
        table.add_row(mid, e["kind"], source_text(e), e.get("licence", "?"), cached)
    for name, members in PRESETS.items():
        table.add_row(name, "preset", ", ".join(members), "each teacher's", "-")
    console.print(table)
    console.print(f"Teacher {PRESET_NOTE}. Use them as `ptrack ensemble --teachers trackon-r` or "
                  "`--model ensemble:trackon-r`.")


@app.command()
def download(
    model_id: str = typer.Argument(..., help="Model id from `ptrack models`."),
    file: Optional[Path] = typer.Option(None, "--file", help="A file you fetched by hand (models published outside the Hub): copy it into the cache."),
) -> None:
    """Download MODEL_ID's official checkpoint into the cache (HF_HOME), or place a file fetched by hand there."""
    if file is not None:
        path = copy_into_cache(model_id, file)
    else:
        with download_bar(f"downloading {model_id}", quiet=False) as update:
            path = fetch(model_id, progress=update)
    console.print(f"{model_id}: {path}")
