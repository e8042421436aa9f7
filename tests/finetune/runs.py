"""Shared pieces of the fine-tuning tests: the tiny training configuration and run-folder helpers.

Everything runs on CPU at a tiny training size (48x64, clips of 8 frames, 6 points, 1 iteration) with the
fixture fill-rule weights (RealTracker and verifier), on generated videos with known motion (``conftest.py``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pointtrack_cli.finetune import FinetuneConfig
from tests.helpers import FIXTURES

HW = (48, 64)
DAVIS = FIXTURES / "tapvid" / "mini_davis.pkl"
FAKE_AJ = {0: 0.30, 1: 0.50, 2: 0.40}


def tiny_config(videos: Path, out: Path, weights: dict, **kw) -> FinetuneConfig:
    base = dict(student="realtracker-offline", student_weights=str(weights["offline"]), teachers=["lk"],
                resolution=HW, steps=2, clip_len=8, num_points=6, iters=1, teacher_iters=1, save_every=1,
                keep_last=1, seed=3, quiet=True)
    base.update(kw)
    return FinetuneConfig(str(videos), str(out), **base)


def copy_run(run: Path, out: Path) -> Path:
    """A copy of a run folder (``--out`` may change on resume; hard links become plain copies)."""
    shutil.copytree(run, out)
    return out
