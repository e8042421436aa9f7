"""Fill-rule checkpoints of every ported teacher, written in each official file layout (for integration tests).

``teacher_checkpoint(id, folder)`` writes the file a user would pass with ``--weights`` (or ``ID=PATH``) and
returns its path; ``SMALL`` is a resolution each teacher accepts that keeps CPU tests fast (ids take it as
``ID@HxW``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tests.helpers import alltracker_weights, locotrack_weights, tapir_weights, tapnext_weights


def _locotrack(folder: Path) -> Path:
    path = folder / "locotrack_fill.ckpt"
    torch.save(locotrack_weights.lightning_checkpoint(locotrack_weights.fill_state_dict()), path)
    return path


def _alltracker(folder: Path) -> Path:
    path = folder / "alltracker_fill.pth"  # the released file's layout: {"model": state_dict}
    torch.save({"model": alltracker_weights.fill_state_dict("released")}, path)
    return path


def _tapir(variant: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / f"{variant}_fill.pt"  # the official .pt files are plain state dicts
        torch.save(tapir_weights.fill_state_dict(variant), path)
        return path
    return write


def _bootstapnext(folder: Path) -> Path:
    # TAPNext-B (the CLI builds the registry's configuration) as a torch state dict, a layout every TAPNext id
    # accepts: it reads in 0.6 s where the released JAX .npz takes 3 s (that path: tests/trackers/test_tapnext.py)
    path = folder / "bootstapnext_fill.pt"
    torch.save(tapnext_weights.fill_state_dict(tapnext_weights.FULL), path)
    return path


WRITERS: dict[str, Callable[[Path], Path]] = {
    "locotrack": _locotrack,  # anthro-locotrack: the same architecture and file layout
    # tapir differs from bootstapir only by its registry config; its end-to-end run is tests/trackers/test_tapir.py.
    # Both compute the initial features at 256x256 whatever ID@HxW says, so one TAPIR teacher keeps CI short.
    "bootstapir": _tapir("bootstapir"),
    "alltracker": _alltracker,
    "bootstapnext": _bootstapnext,  # tapnext, tapnextpp, tapnextpp-512: the same network
}
SMALL = {"locotrack": "64x64", "bootstapir": "64x64", "alltracker": "200x200", "bootstapnext": "16x16"}


def teacher_checkpoint(model_id: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[model_id](folder)


def small_id(model_id: str) -> str:
    return f"{model_id}@{SMALL[model_id]}"
