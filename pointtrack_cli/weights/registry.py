"""The model registry: which checkpoint each model id uses, where it is published and how to build it.

The registry is data (``registry.json`` next to this file; keys starting with ``_`` are comments). An entry
names its source in one of three ways: a Hugging Face Hub repo (``repo_id`` + ``filename``, optional
``repo_type`` and pinned ``revision``), a direct ``url`` (files the authors publish outside the Hub), or
``manual`` (how to get a file that cannot be downloaded by a program, e.g. from Google Drive).
"""
from __future__ import annotations

import functools
import json
from importlib import resources

from ..errors import PtrackError


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """``{model_id: entry}``; every entry also carries its own ``id``."""
    text = resources.files(__package__).joinpath("registry.json").read_text()
    return {k: {**v, "id": k} for k, v in json.loads(text).items() if not k.startswith("_")}


def entry(model_id: str) -> dict:
    """The registry entry of ``model_id``; one-line error naming ``ptrack models`` otherwise."""
    reg = registry()
    if model_id not in reg:
        raise PtrackError(f"unknown model {model_id!r} (see `ptrack models` for the list)")
    return reg[model_id]


def source_text(e: dict) -> str:
    """Where the entry's file comes from, for listings and messages."""
    if e.get("repo_id"):
        rev = f"@{e['revision'][:8]}" if e.get("revision") else ""
        kind = "dataset " if e.get("repo_type") == "dataset" else ""
        return f"Hugging Face Hub {kind}{e['repo_id']}/{e['filename']}{rev}"
    if e.get("url"):
        return e["url"]
    return f"manual: {e.get('manual') or 'not published'}"
