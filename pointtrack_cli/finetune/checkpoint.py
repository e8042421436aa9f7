"""Fine-tuning checkpoints: student weights as safetensors + a training-state file, both written atomically.

Layout of a run folder::

    RUN_DIR/last.safetensors        weights after the latest saved step (official RealTracker keys:
                                    ``ptrack track --model realtracker-online --weights RUN_DIR/last.safetensors``)
    RUN_DIR/last.state.pt           optimizer, scheduler, AMP scaler, step, RNG states (torch.load weights_only=True)
    RUN_DIR/best.safetensors        weights of the best evaluation (or lowest training loss without --eval-data)
    RUN_DIR/best.json               which step, and its numbers
    RUN_DIR/checkpoints/step_0000500.{safetensors,state.pt}   the last K saved steps

``last.*`` and ``best.*`` are hard links to the step files when the filesystem allows (no extra disk), else
copies. Each file is first written under a temporary name in the same folder, fsynced and renamed
(:func:`~pointtrack_cli.io.atomic.atomic_path`), so a process killed mid-write leaves the previous file
intact (plus a ``.<name>.<random>.tmp.<ext>`` file, removed by the next resume or save), never a partial
file under a checkpoint's name. A save writes several files one after the other, so a crash between them
can leave a pair from two different saves: weights and state both carry the step and a per-save
``save_id``, and :meth:`CheckpointManager.find_resumable` only accepts a pair whose step and id agree (the
newest such pair).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import PtrackError
from ..io.atomic import atomic_path
from ..weights.state_dict import python_objects_refused

WEIGHTS_FORMAT = "ptrack-realtracker-finetune-v1"


# --------------------------------------------------------------------------------------------------
# RNG states (plain containers and tensors only, so weights_only loading accepts them)


def rng_state() -> dict:
    """Python, NumPy (global) and torch (CPU and every CUDA device) random states."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------------
# Single files


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``state_dict`` (official keys, float32) as safetensors, atomically; metadata values are strings."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": WEIGHTS_FORMAT, **{k: str(v) for k, v in metadata.items()}}
    path = Path(path)
    with atomic_path(path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata block of a safetensors file (empty dict if none)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_state(path: str | Path, state: dict) -> Path:
    """``torch.save`` of the training state (tensors and plain containers only), atomically."""
    path = Path(path)
    with atomic_path(path, durable=True) as tmp:
        torch.save(state, str(tmp))
    return path


def load_state(path: str | Path) -> dict:
    """Training state written by :func:`save_state`, read with ``torch.load(weights_only=True)``: torch's restricted
    unpickler rebuilds tensors and plain containers only, so a tampered file cannot run code; it is refused
    with a message saying so (never torch's advice to turn ``weights_only`` off)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = python_objects_refused(exc)
        if refused:
            raise PtrackError(f"training state {path} was not written by ptrack finetune or was altered: {refused} "
                              "(resume from another file in RUN_DIR/checkpoints/ or start a new run)") from None
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise PtrackError(f"cannot read training state {path}: {first} (the file is damaged; "
                          "resume from a file in RUN_DIR/checkpoints/ or start a new run)") from None
    if not isinstance(state, dict):
        raise PtrackError(f"training state {path} holds a {type(state).__name__}, not ptrack finetune's dict (altered "
                          "or another program's file; resume from another file in RUN_DIR/checkpoints/)")
    return state


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically (hard link if possible, else a copy)."""
    with atomic_path(dst, durable=True) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------------------------------
# The run folder


# Temporary names atomic_path gives the files below (".<stem>.<random>.tmp<suffix>"); a killed save leaves one.
_TEMPORARY = re.compile(r"^\.(?:last|best|step_\d{7})(?:\.state)?\.[A-Za-z0-9_]+\.tmp\.(?:safetensors|pt|json)$")


class CheckpointManager:
    """Saves steps, keeps the last ``keep_last`` and the best; finds what to resume from."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = max(1, int(keep_last))

    def step_paths(self, step: int) -> tuple[Path, Path]:
        stem = f"step_{step:07d}"
        return self.dir / f"{stem}.safetensors", self.dir / f"{stem}.state.pt"

    @property
    def last(self) -> tuple[Path, Path]:
        return self.run_dir / "last.safetensors", self.run_dir / "last.state.pt"

    @property
    def best(self) -> tuple[Path, Path]:
        return self.run_dir / "best.safetensors", self.run_dir / "best.json"

    def save(self, step: int, weights: dict[str, torch.Tensor], metadata: dict, state: dict) -> Path:
        """Write step ``step`` (weights + state), point ``last.*`` at it, prune old steps. Returns the weights path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        w_path, s_path = self.step_paths(step)
        # One id for both files: a pair mixed from two saves of the same step is then still detected.
        save_id = uuid.uuid4().hex
        save_weights(w_path, weights, {**metadata, "step": str(step), "save_id": save_id})
        save_state(s_path, {**state, "step": int(step), "save_id": save_id})
        # Crash here: last.* still agree (previous step); the new step pair is complete and newer.
        _link_or_copy(w_path, self.last[0])
        # Crash here: last.* disagree (refused by find_resumable); the step pair is still complete.
        _link_or_copy(s_path, self.last[1])
        self._prune()
        return w_path

    def mark_best(self, step: int, info: dict) -> None:
        """Copy/link the weights of a saved ``step`` to ``best.safetensors`` and write ``best.json``."""
        w_path, _ = self.step_paths(step)
        _link_or_copy(w_path, self.best[0])
        with atomic_path(self.best[1], durable=True) as tmp:
            tmp.write_text(json.dumps({"step": int(step), **info}, indent=2))

    def saved_steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        steps = []
        for p in self.dir.glob("step_*.safetensors"):
            try:
                steps.append(int(p.name[5:12]))
            except ValueError:
                continue
        return sorted(steps)

    def _prune(self) -> None:
        for step in self.saved_steps()[: -self.keep_last]:
            # State first: saved_steps() lists steps by their weights file, so a crash between the two
            # unlinks leaves a step that the next prune still sees (not an orphan state file).
            w_path, s_path = self.step_paths(step)
            s_path.unlink(missing_ok=True)
            w_path.unlink(missing_ok=True)

    def temporaries(self) -> list[Path]:
        """Temporary files of checkpoint writes that never finished (the writing process was killed)."""
        found = []
        for folder in (self.run_dir, self.dir):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if _TEMPORARY.match(p.name)]
        return sorted(found)

    def remove_temporaries(self) -> int:
        """Delete :meth:`temporaries` (only one process writes a run folder's checkpoints); returns how many."""
        paths = self.temporaries()
        for p in paths:
            p.unlink(missing_ok=True)
        return len(paths)

    def find_resumable(self) -> tuple[Path, Path, int] | None:
        """``(weights, state, step)`` of the newest consistent pair (``last.*`` or a step pair), or None.

        A pair is consistent when both files read and carry the same step and ``save_id`` (files written
        before ``save_id`` existed have none and are matched by step). The highest step wins, ``last.*`` on a tie:
        a save killed before it re-linked ``last.*`` still left a complete, newer step pair.

        Raises the reading error when no pair qualifies and some state file could not be read: atomic saves never
        leave such a file, so it was damaged or altered later, and "nothing to resume" would be wrong.
        """
        # Order by the step in the weights' header (cheap), then read states (large) only until one matches.
        headers = []
        for w, s in [self.last] + [self.step_paths(k) for k in reversed(self.saved_steps())]:
            if not (w.is_file() and s.is_file()):
                continue
            try:
                meta = weights_metadata(w)
                headers.append((int(meta.get("step", "-1")), meta.get("save_id"), w, s))
            except Exception:  # damaged or foreign safetensors header
                continue
        headers.sort(key=lambda h: -h[0])  # stable: last.* stays first among equal steps
        unreadable: PtrackError | None = None
        for step_w, save_id, w, s in headers:
            try:
                state = load_state(s)
                step_s = int(state.get("step", -2))
            except PtrackError as exc:
                unreadable = unreadable or exc  # the newest such file's reason
                continue
            except (ValueError, TypeError, AttributeError):
                continue
            if step_w == step_s and save_id == state.get("save_id"):
                return w, s, step_s
        if unreadable is not None:
            raise unreadable
        return None
