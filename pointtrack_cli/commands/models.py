"""``ptrack models``: list the registry and fetch weights ahead of time."""
from __future__ import annotations

import typer
from rich.table import Table

from .common import PtrackGroup, console

app = typer.Typer(cls=PtrackGroup, help="List models and download their weights.", invoke_without_command=True)


@app.callback()
def list_models(ctx: typer.Context) -> None:
    """List every model id with its weights source, licence and whether it is cached."""
    if ctx.invoked_subcommand is not None:
        return
    from ..trackers import WEIGHT_FREE
    from ..weights import cached_path, registry

    table = Table(title="ptrack models")
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("weights (Hugging Face Hub)", overflow="fold")
    table.add_column("licence")
    table.add_column("cached", no_wrap=True)
    for mid, desc in WEIGHT_FREE.items():
        table.add_row(mid, "tracker", "none needed", "-", "-")
    for mid, e in registry().items():
        rev = f"@{e['revision'][:8]}" if e.get("revision") else ""
        try:
            cached = "yes" if cached_path(mid) else "no"
        except Exception:  # an unreadable cache must not break the listing
            cached = "?"
        table.add_row(mid, e["kind"], f"{e['repo_id']}/{e['filename']}{rev}", e.get("licence", "?"), cached)
    console.print(table)


@app.command()
def download(model_id: str = typer.Argument(..., help="Model id from `ptrack models`.")) -> None:
    """Download MODEL_ID's official checkpoint into the Hugging Face cache (HF_HOME)."""
    from ..weights import download as fetch

    path = fetch(model_id)
    console.print(f"{model_id}: {path}")
