"""``ptrack finetune`` on the command line: one-line errors, the ``--gpus`` relaunch, options round-tripping."""
from __future__ import annotations

import subprocess

import pytest

import pointtrack_cli.cli.finetune as F
from pointtrack_cli.cli.finetune import config_to_argv
from tests.helpers import run_cli
from tests.finetune.runs import tiny_config


@pytest.fixture
def finetune_cli():
    """``ptrack finetune ARGS`` through the real application (its PtrackGroup is the error boundary)."""
    return lambda args: run_cli(["finetune", *args])


def test_cli_errors(finetune_cli, tmp_path, videos, weights):
    res = finetune_cli([tmp_path / "missing", "--out", tmp_path / "r", "--steps", "2"])
    assert res.exit_code == 2 and "not a folder" in res.output
    res = finetune_cli([videos, "--out", tmp_path / "r", "--steps", "2", "--student", "lk"])
    assert res.exit_code == 2 and "not a RealTracker model" in res.output
    res = finetune_cli([videos, "--out", tmp_path / "r", "--steps", "2", "--resolution", "50x64"])
    assert res.exit_code == 2 and "multiples of 4" in res.output
    res = finetune_cli([videos, "--out", tmp_path / "r2", "--steps", "2", "--resume", "--student-weights",
                        weights["offline"], "--student", "realtracker-offline", "--teachers", "none"])
    assert res.exit_code == 2 and "holds no fine-tuning run" in res.output


def test_gpus_relaunches_through_torchrun(finetune_cli, videos, weights, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    res = finetune_cli([videos, "--out", tmp_path / "g", "--steps", "3", "--gpus", "2", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:8] == ["-m", "pointtrack_cli", "finetune"] and "--gpus" not in cmd
    assert cmd[8] == str(videos) and cmd[cmd.index("--steps") + 1] == "3"


def test_config_round_trips_through_argv(videos, weights, tmp_path, finetune_cli, monkeypatch):
    """What --gpus hands to torchrun rebuilds the same configuration."""
    cfg = tiny_config(videos, tmp_path / "x", weights, teachers=[], recipe="verifier", lr=1e-4, stop_at=1,
                      verifier_weights=str(weights["verifier"]), train_only_visible=True)
    seen = []
    monkeypatch.setattr(F, "run_finetune", lambda c, reporter=None: seen.append(c))  # the name the command calls
    res = finetune_cli(config_to_argv(cfg))
    assert res.exit_code == 0, res.output
    assert seen == [cfg]
