"""The training loop end to end: a random-teacher run's files, the evaluation hook, exact resume, the verifier
recipe, two DDP processes (gloo), and weights checked before the first step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.finetune import launch_local, run_finetune
from pointtrack_cli.finetune import data as D
from pointtrack_cli.finetune.checkpoint import load_state, weights_metadata
from pointtrack_cli.finetune.student import FROZEN_PREFIX
from pointtrack_cli.weights.state_dict import read_state_dict
from tests.finetune.runs import copy_run, tiny_config


def test_random_teacher_run_outputs(run_a, weights, videos, tmp_path, cli):
    cfg, summary, _ = run_a
    run = Path(cfg.out)
    assert summary.steps_done == 2 and summary.clips == 5
    assert {s["path"] for s in summary.skipped} == {"broken.mp4", "notes.txt", "short.mp4"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "event" not in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["teacher"] in ("student-init", "lk") for r in records)
    assert all(2 <= r["frames"] <= 8 for r in records)  # offline: random lengths in [T/2, T]
    # Labels cached once per (clip, teacher), atomically (no temporary files left).
    label_files = sorted(run.glob("labels/*/*.npz"))
    assert label_files and not list(run.glob("labels/*/.*"))
    assert summary.labels_computed == len(label_files)
    with np.load(label_files[0]) as d:
        assert d["tracks"].shape == (8, 6, 2) and d["queries"].shape == (6, 3) and d["valid"].dtype == bool
    # Keep the last K step checkpoints, plus last and best.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002.safetensors", "step_0000002.state.pt"]
    assert weights_metadata(run / "last.safetensors")["step"] == "2"
    state = load_state(run / "last.state.pt")  # weights_only=True
    assert state["step"] == 2 and {"optimizer", "scheduler", "scaler", "rng"} <= set(state)
    # Frozen head bit-identical; the rest has moved.
    init, last = read_state_dict(weights["offline"]), read_state_dict(run / "last.safetensors")
    assert set(init) == set(last)
    for k in init:
        if k.startswith(FROZEN_PREFIX):
            assert torch.equal(init[k], last[k]), k
    assert not torch.equal(init["updateformer.flow_head.weight"], last["updateformer.flow_head.weight"])
    assert not torch.equal(init["fnet.conv1.weight"], last["fnet.conv1.weight"])
    # The weights load directly in `ptrack track`.
    out = tmp_path / "track"
    res = cli(["track", videos / "walk.mp4", "--model", "realtracker-offline", "--weights", run / "last.safetensors",
               "--resolution", "48x64", "--grid", "2", "--no-overlay", "--quiet", "--out", out])
    assert res.exit_code == 0, res.output
    with np.load(out / "tracks.npz") as d:
        assert d["tracks"].shape[:2] == (32, 4) and np.isfinite(d["tracks"]).all()


def test_eval_hook_keeps_the_best(run_a):
    cfg, summary, seen = run_a
    run = Path(cfg.out)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
    assert [(e["step"], e["aj"]) for e in evals] == [(0, 0.30), (1, 0.50), (2, 0.40)]
    assert summary.best["step"] == 1 and summary.best["aj"] == 0.5
    assert json.loads((run / "best.json").read_text())["step"] == 1
    best = read_state_dict(run / "best.safetensors")
    assert all(torch.equal(best[k], seen[1][k]) for k in best)  # the weights evaluated at step 1
    assert not torch.equal(best["fnet.conv1.weight"], seen[2]["fnet.conv1.weight"])


def test_resume_gives_the_same_weights(run_a, stopped_run, videos, weights, tmp_path):
    cfg_a, _, _ = run_a
    out = copy_run(stopped_run, tmp_path / "b")
    second = run_finetune(tiny_config(videos, out, weights, resume=True))
    assert second.start_step == 1 and second.steps_done == 1
    a = read_state_dict(Path(cfg_a.out) / "last.safetensors")
    b = read_state_dict(out / "last.safetensors")
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]
    rec_a = (Path(cfg_a.out) / "metrics.jsonl").read_text().splitlines()
    rec_b = (out / "metrics.jsonl").read_text().splitlines()

    def strip(lines: list[str]) -> list[dict]:
        recs = [json.loads(line) for line in lines]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in recs if "event" not in r]

    assert strip(rec_a) == strip(rec_b) and len(strip(rec_b)) == 2
    best = json.loads((out / "best.json").read_text())  # without --eval-data: lowest training loss between saves
    assert best["step"] in (1, 2) and "training loss" in best["criterion"]


def test_verifier_recipe(videos, weights, tmp_path):
    cfg = tiny_config(videos, tmp_path / "v", weights, recipe="verifier", verifier_weights=str(weights["verifier"]),
                      steps=1, max_clips_per_video=1)
    summary = run_finetune(cfg)
    assert summary.steps_done == 1
    rec = json.loads((tmp_path / "v" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["teacher"] == "verifier" and np.isfinite(rec["loss"])
    sel = next((tmp_path / "v").glob("labels/*/verifier.npz"))
    per = {n: np.load(sel.parent / f"{n}.npz") for n in ("student-init", "lk")}
    with np.load(sel) as d:
        assert list(d["teachers"]) == ["student-init", "lk"]
        chosen, tracks, vis, valid = d["chosen"], d["tracks"], d["visibility"], d["valid"]
    cand = np.stack([per["student-init"]["tracks"], per["lk"]["tracks"]], axis=2)
    cvis = np.stack([per["student-init"]["visibility"], per["lk"]["visibility"]], axis=2)
    present = np.stack([per["student-init"]["valid"], per["lk"]["valid"]], axis=2)
    ok = chosen >= 0
    assert ok.any()
    picked = np.take_along_axis(cand, np.clip(chosen, 0, None)[..., None, None], 2)[:, :, 0]
    assert np.allclose(picked[ok], tracks[ok])
    majority = (cvis & present).sum(-1) * 2 > present.sum(-1)  # strict; teachers without an estimate do not vote
    assert np.array_equal(vis[ok], majority[ok])
    assert np.array_equal(valid, ok)


def test_ddp_two_processes_gloo_online_student(videos, weights, tmp_path):
    cfg = tiny_config(videos, tmp_path / "ddp", weights, steps=2, save_every=2, student="realtracker-online",
                      student_weights=str(weights["online"]), clip_len=16)
    summaries = launch_local(cfg, 2)
    assert [s["steps_done"] for s in summaries] == [2, 2] and summaries[0]["clips"] == 2
    run = tmp_path / "ddp"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert weights_metadata(run / "last.safetensors")["step"] == "2"
    state = load_state(run / "last.state.pt")
    assert len(state["rng"]) == 2  # every rank's RNG state, for an exact resume
    # One clip per rank: each rank labelled (only) its own clip, every step.
    clips = [D.Clip(**c) for c in json.loads((run / "data.json").read_text())["clips"]]
    labelled = {p.parent.name for p in run.glob("labels/*/*.npz")}
    assert labelled == {c.clip_id for c in clips}
    assert all(r["frames"] == 16 for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))


def test_teacher_weights_are_checked_before_the_first_step(videos, weights, tmp_path):
    """A teacher whose checkpoint cannot be used stops the run before any training, whether or not the teacher
    would have been drawn early (here: online weights given for the offline architecture, and a damaged file)."""
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    for teacher, why in ((f"realtracker-offline={weights['online']}", "online checkpoint"),
                         (f"realtracker-online={damaged}", "cannot read weights file")):
        out = tmp_path / f"run_{len(why)}"
        cfg = tiny_config(videos, out, weights, student="realtracker-online", student_weights=str(weights["online"]),
                          clip_len=16, teachers=["lk", teacher], steps=50)
        with pytest.raises(PtrackError, match=f"teacher {teacher.split('=')[0]}: .*{why}"):
            run_finetune(cfg)
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
        assert not list(out.glob("labels/*/*.npz"))  # not even a label was computed
