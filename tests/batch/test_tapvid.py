"""`eval tapvid` sharded: rank r predicts every K-th video into --save-predictions, rank 0 merges the metrics from
the files, equal to an unsharded run's; a sharded run without the folder, or with a lost rank, is refused."""
from __future__ import annotations

import json

import numpy as np

from tests.helpers import FIXTURES, run_cli

MINI = FIXTURES / "tapvid" / "mini_davis.pkl"  # 3 videos
BASE = ["eval", "tapvid", "--dataset", "davis", "--data", MINI, "--model", "lk", "--quiet"]


def test_sharded_metrics_equal_the_unsharded_ones(tmp_path, monkeypatch):
    assert run_cli(BASE + ["--json", tmp_path / "whole.json"]).exit_code == 0
    preds = tmp_path / "preds"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("PTRACK_RUN_ID", "eval-1")
    monkeypatch.setenv("RANK", "1")  # the processes never wait on each other: rank 1 may even finish first
    res = run_cli(BASE + ["--save-predictions", preds])
    assert res.exit_code == 0 and not res.output.strip(), res.output  # --quiet: rank 1 prints nothing
    assert sorted(p.name for p in preds.glob("*.npz")) == ["synth-bramble.npz"]  # video 1 of 0, 1, 2
    monkeypatch.setenv("RANK", "0")
    res = run_cli(BASE + ["--save-predictions", preds, "--json", tmp_path / "merged.json"])
    assert res.exit_code == 0, res.output
    whole, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "merged"))
    assert [v["name"] for v in merged["videos"]] == [v["name"] for v in whole["videos"]]
    for a, b in zip(whole["videos"], merged["videos"]):
        assert a["metrics"] == b["metrics"]
    assert merged["mean"] == whole["mean"]
    assert np.isfinite(list(merged["mean"].values())).all()

    monkeypatch.setenv("PTRACK_RUN_ID", "eval-2")  # a new run whose rank 1 never starts
    res = run_cli(BASE + ["--save-predictions", preds, "--rank-timeout", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "rank 1 did not report within 1 s" in text and "run the same command again" in text
    res = run_cli(BASE)
    assert res.exit_code == 2 and "needs --save-predictions" in " ".join(res.output.split())
