"""Fixtures of the fine-tuning tests: fill-rule weights, generated videos, and two reference runs.

The runs are package-scoped: several test modules read the same uninterrupted run (``run_a``) and resume copies
of the same stopped one (``stopped_run``), so each is trained once.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pointtrack_cli.finetune.trainer as T
from pointtrack_cli.finetune import FinetuneConfig, run_finetune
from pointtrack_cli.finetune.checkpoint import weights_metadata
from pointtrack_cli.synthetic import translating_frames, write_mp4, write_png_folder
from tests.finetune.runs import DAVIS, FAKE_AJ, tiny_config
from tests.helpers.realtracker_weights import fill_state_dict
from tests.helpers.verifier_weights import fill_state_dict as fill_verifier


@pytest.fixture(scope="package")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Fill-rule student weights as safetensors (offline and online) and the verifier as a DDP-style .pt."""
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for online in (False, True):
        path = d / f"student_{'online' if online else 'offline'}.safetensors"
        save_file({k: v.contiguous() for k, v in fill_state_dict(online).items()}, str(path))
        out["online" if online else "offline"] = path
    out["verifier"] = d / "verifier.pt"
    torch.save({"model": {"module." + k: v for k, v in fill_verifier().items()}}, out["verifier"])
    return out


@pytest.fixture(scope="package")
def videos(tmp_path_factory) -> Path:
    """An mp4 (32 frames: 4 offline / 2 online clips), a PNG sequence in a sub-folder (12 frames: 1 offline clip,
    too short online), and junk."""
    root = tmp_path_factory.mktemp("videos")
    write_mp4(translating_frames(32, 64, 96, (0.8, 0.3), seed=5), root / "walk.mp4")
    write_png_folder(translating_frames(12, 64, 96, (-0.6, 0.5), seed=6), root / "lab" / "cells")
    (root / "broken.mp4").write_bytes(b"\x00not a video at all")
    (root / "notes.txt").write_text("shot on a phone")
    write_mp4(translating_frames(5, 64, 96, (0.5, 0.5), seed=7), root / "short.mp4")
    return root


@pytest.fixture(scope="package")
def run_a(videos, weights, tmp_path_factory) -> tuple[FinetuneConfig, object, list]:
    """An uninterrupted 2-step random-teacher run (reference for resume, files, frozen head).

    Evaluation every step goes through a stand-in for ``evaluate_student`` (a real TAP-Vid run costs minutes on
    CPU) that returns the AJ of ``FAKE_AJ`` and records the weights it was shown.
    """
    seen: list = []

    def fake_eval(model, cfg, online, device):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        aj = FAKE_AJ[len(seen) - 1]
        return {"aj": aj, "delta_avg": aj + 0.1, "oa": 0.8, "videos": 1}

    cfg = tiny_config(videos, tmp_path_factory.mktemp("run") / "a", weights, eval_data=str(DAVIS), eval_every=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "evaluate_student", fake_eval)  # the name the trainer calls
        summary = run_finetune(cfg)
    return cfg, summary, seen


@pytest.fixture(scope="package")
def stopped_run(videos, weights, tmp_path_factory) -> Path:
    """A run of ``tiny_config`` stopped after its first step (``--stop-at 1``); tests resume copies of it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    first = run_finetune(tiny_config(videos, out, weights, stop_at=1))
    assert first.steps_done == 1 and weights_metadata(out / "last.safetensors")["step"] == "1"
    return out
