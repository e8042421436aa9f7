"""Every ported teacher labels clips for `ptrack finetune --teachers` (fill-rule weights, small resolution)."""
from __future__ import annotations

import math

import pytest

from pointtrack_cli.finetune import run_finetune
from tests.finetune.runs import tiny_config
from tests.helpers.teachers import WRITERS, small_id, teacher_checkpoint


@pytest.mark.parametrize("model_id", sorted(WRITERS))
def test_teacher_labels_a_finetune_run(videos, weights, tmp_path, model_id):
    w = teacher_checkpoint(model_id, tmp_path / "w")
    cfg = tiny_config(videos, tmp_path / "run", weights, teachers=[f"{small_id(model_id)}={w}"], steps=1)
    summary = run_finetune(cfg)  # the only teacher: the step trains on its labels (a failing teacher raises)
    assert summary.steps_done == 1
    assert summary.final_loss is not None and math.isfinite(summary.final_loss)
