"""Model registry and weights: local files or the official checkpoints from the Hugging Face Hub.

The registry is data (``weights/registry.json`` in the repo, installed as ``pointtrack_cli.registry``).
Downloads go through huggingface_hub into its normal cache, so HF_HOME, HF_HUB_CACHE and
HF_HUB_OFFLINE behave as in every other HF tool; a pinned ``revision`` in the registry is respected.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from importlib import resources
from pathlib import Path

import torch

from .checkpoints import read_state_dict
from .errors import PtrackError


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """``{model_id: entry}`` from registry.json (keys starting with ``_`` are comments)."""
    try:
        text = resources.files("pointtrack_cli.registry").joinpath("registry.json").read_text()
    except ModuleNotFoundError:
        # Imported from a source checkout (e.g. pytest from the repo root): the installed alias
        # ``pointtrack_cli.registry`` only exists in site-packages, the data sits in ``weights/``.
        text = (Path(__file__).resolve().parent.parent / "weights" / "registry.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def entry(model_id: str) -> dict:
    reg = registry()
    if model_id not in reg:
        raise PtrackError(f"unknown model {model_id!r} (see `ptrack models` for the list)")
    return reg[model_id]


def _fetch_hint(e: dict, model_id: str) -> str:
    rev = f" --revision {e['revision']}" if e.get("revision") else ""
    hint = (
        f"on a machine with internet run `ptrack models download {model_id}` (or "
        f"`hf download {e['repo_id']} {e['filename']}{rev}`), copy the file here and pass --weights PATH"
    )
    if e.get("kind") == "tracker":
        hint += "; or track without weights: --model protracker (or lk)"
    return hint


def cached_path(model_id: str) -> Path | None:
    """Path of the checkpoint in the HF cache, or None when it has not been downloaded."""
    from huggingface_hub import try_to_load_from_cache

    e = entry(model_id)
    found = try_to_load_from_cache(e["repo_id"], e["filename"], revision=e.get("revision") or None)
    return Path(found) if isinstance(found, (str, os.PathLike)) else None


def download(model_id: str, quiet: bool = False) -> Path:
    """Checkpoint of ``model_id`` from the cache, else downloaded from the Hub (with a progress bar).

    Raises :class:`PtrackError` (one line: repo, file, how to fetch elsewhere) when the Hub cannot be
    reached and nothing is cached, or when HF_HUB_OFFLINE is set and the file is not cached.
    """
    e = entry(model_id)
    hit = cached_path(model_id)
    if hit is not None:
        return hit
    from huggingface_hub import constants, hf_hub_download

    where = f"{e['filename']} from the Hugging Face Hub repo {e['repo_id']}"
    if constants.HF_HUB_OFFLINE:
        raise PtrackError(f"{where} is not in the local cache and HF_HUB_OFFLINE is set: {_fetch_hint(e, model_id)}")
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)  # its retry warnings would bury our one-line error
    try:
        if quiet:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        path = hf_hub_download(e["repo_id"], e["filename"], revision=e.get("revision") or None, etag_timeout=10)
    except Exception as exc:  # network down, DNS, 404, gated repo, disk full ...
        reason = type(exc).__name__
        raise PtrackError(f"cannot download {where} ({reason}: Hub unreachable or file unavailable); {_fetch_hint(e, model_id)}") from None
    finally:
        hub_log.setLevel(level)
    return Path(path)


def load_weights(model_id: str, weights: str | Path | None = None, quiet: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict for ``model_id`` (from ``weights`` if given, else the Hub) and a description of its source."""
    e = entry(model_id)
    if weights is not None:
        sd = read_state_dict(weights)
        return sd, {"source": "local file", "path": str(Path(weights).resolve())}
    path = download(model_id, quiet=quiet)
    sd = read_state_dict(path)
    return sd, {
        "source": "huggingface_hub", "repo_id": e["repo_id"], "filename": e["filename"],
        "revision": e.get("revision") or "main", "path": str(path), "licence": e.get("licence"),
    }
