"""``ptrack finetune``: data discovery, SIFT queries, the spec's loss, both recipes, checkpoints, resume, DDP.

Everything runs on CPU at a tiny training size (48x64, clips of 8 frames, 6 points, 1 iteration) with the
fixture fill-rule weights (RealTracker and verifier), on generated videos with known motion.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli.finetune import FinetuneConfig, launch_local, run_finetune
from pointtrack_cli.finetune import data as D
from pointtrack_cli.finetune.checkpoint import load_state, weights_metadata
from pointtrack_cli.finetune.labels import ClipLabels
from pointtrack_cli.finetune.losses import huber, track_loss
from pointtrack_cli.finetune.sampling import sift_frames, sift_queries
from pointtrack_cli.finetune.trainer import (
    Batch, FROZEN_PREFIX, build_student, compute_loss, lr_factor, make_optimizer, optimizer_step,
)
from pointtrack_cli.synthetic import translating_frames, translation_gt, write_mp4, write_png_folder
from realtracker_weights import fill_state_dict

HW = (48, 64)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Fill-rule student weights as safetensors (offline and online) and the verifier as a DDP-style .pt."""
    from safetensors.torch import save_file

    from verifier_weights import fill_state_dict as fill_verifier

    d = tmp_path_factory.mktemp("weights")
    out = {}
    for online in (False, True):
        path = d / f"student_{'online' if online else 'offline'}.safetensors"
        save_file({k: v.contiguous() for k, v in fill_state_dict(online).items()}, str(path))
        out["online" if online else "offline"] = path
    out["verifier"] = d / "verifier.pt"
    torch.save({"model": {"module." + k: v for k, v in fill_verifier().items()}}, out["verifier"])
    return out


@pytest.fixture(scope="module")
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


def tiny_config(videos: Path, out: Path, weights: dict, **kw) -> FinetuneConfig:
    base = dict(student="realtracker-offline", student_weights=str(weights["offline"]), teachers=["lk"],
                resolution=HW, steps=2, clip_len=8, num_points=6, iters=1, teacher_iters=1, save_every=1,
                keep_last=1, seed=3, quiet=True)
    base.update(kw)
    return FinetuneConfig(str(videos), str(out), **base)


DAVIS = Path(__file__).parent / "fixtures" / "tapvid" / "mini_davis.pkl"
FAKE_AJ = {0: 0.30, 1: 0.50, 2: 0.40}


@pytest.fixture(scope="module")
def run_a(videos, weights, tmp_path_factory) -> tuple[FinetuneConfig, object, list]:
    """An uninterrupted 2-step random-teacher run (reference for resume, files, frozen head).

    Evaluation every step goes through a stand-in for ``evaluate_student`` (a real TAP-Vid run costs minutes on
    CPU) that returns the AJ of ``FAKE_AJ`` and records the weights it was shown.
    """
    import pointtrack_cli.finetune.trainer as T

    seen: list = []

    def fake_eval(model, cfg, online, device):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        aj = FAKE_AJ[len(seen) - 1]
        return {"aj": aj, "delta_avg": aj + 0.1, "oa": 0.8, "videos": 1}

    cfg = tiny_config(videos, tmp_path_factory.mktemp("run") / "a", weights, eval_data=str(DAVIS), eval_every=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "evaluate_student", fake_eval)
        summary = run_finetune(cfg)
    return cfg, summary, seen


# --------------------------------------------------------------------------------------------------
# Loss (pure)


def test_huber_matches_spec_piecewise():
    d = torch.tensor([-10.0, -6.0, -1.0, 0.0, 2.0, 6.0, 7.5])
    want = [6 * (10 - 3), 18.0, 0.5, 0.0, 2.0, 18.0, 6 * (7.5 - 3)]
    assert torch.allclose(huber(d), torch.tensor(want))


def test_track_loss_hand_computed_value():
    # One window, n = 2 iterations, one frame, point 0 visible, point 1 occluded.
    gt = torch.zeros(1, 1, 2, 2)
    p0 = torch.tensor([[[[2.0, 0.0], [4.0, 0.0]]]])
    p1 = torch.tensor([[[[10.0, 0.0], [1.0, 1.0]]]])
    vis = torch.tensor([[[True, False]]])
    valid = torch.ones(1, 1, 2)
    out = track_loss([[p0, p1]], [0], gt, vis, valid)
    # visible: it0 mean(Huber(2), Huber(0)) = 1, it1 mean(6*(10-3), 0) = 21 -> (0.8*1 + 21) / 2
    # occluded: it0 mean(|4|, 0) = 2, it1 mean(1, 1) = 1 -> (0.8*2 + 1) / 2; masked means divide by 1 + 1e-6.
    want = (0.05 * (0.8 * 1 + 21) / 2 + 0.01 * (0.8 * 2 + 1) / 2) / (1 + 1e-6)
    assert abs(float(out.total) - want) < 5e-7 * want  # float32
    assert abs(float(out.visible) - 10.9 / (1 + 1e-6)) < 1e-6 and abs(float(out.occluded) - 1.3 / (1 + 1e-6)) < 1e-6
    # NaN labels where valid is 0 do not leak; only-visible drops the occluded term.
    gt_nan = gt.clone()
    gt_nan[0, 0, 1] = float("nan")
    masked = track_loss([[p0, p1]], [0], gt_nan, vis, torch.tensor([[[1.0, 0.0]]]), occluded_term=False)
    assert abs(float(masked.total) - 0.05 * 10.9 / (1 + 1e-6)) < 5e-7


def reference_loss(windows, starts, gt, vis, valid, gamma=0.8):
    """The spec formula in float64 NumPy, written independently of losses.py."""
    v_terms, o_terms = [], []
    for preds, s0 in zip(windows, starts):
        n, s = len(preds), preds[0].shape[0]
        g, v, m = gt[s0:s0 + s], vis[s0:s0 + s].astype(np.float64), valid[s0:s0 + s].astype(np.float64)
        acc_v = acc_o = 0.0
        for i, p in enumerate(preds):
            d = p.astype(np.float64) - g
            hub = np.where(np.abs(d) <= 6, 0.5 * d * d, 6 * (np.abs(d) - 3)).mean(-1)
            acc_v += gamma ** (n - 1 - i) * (hub * m * v).sum() / (1e-6 + (m * v).sum())
            acc_o += gamma ** (n - 1 - i) * (np.abs(d).mean(-1) * m * (1 - v)).sum() / (1e-6 + (m * (1 - v)).sum())
        v_terms.append(acc_v / n)
        o_terms.append(acc_o / n)
    return 0.05 * np.mean(v_terms) + 0.01 * np.mean(o_terms)


def test_batch_loss_of_online_student_equals_formula():
    """Real model, 2 sliding windows, 2 iterations: compute_loss == the formula on its own predictions."""
    torch.manual_seed(0)
    model = build_student(fill_state_dict(True), True, HW, "fill rule", torch.device("cpu"))
    rng = np.random.default_rng(1)
    t, n = 20, 3
    frames = rng.integers(0, 256, (t, *HW, 3)).astype(np.uint8)
    queries = np.array([[0, 10, 20], [5, 40, 30], [12, 50, 10]], np.float32)
    gt = (queries[None, :, 1:] + rng.normal(0, 4, (t, n, 2))).astype(np.float32)
    vis = rng.random((t, n)) > 0.3
    valid = rng.random((t, n)) > 0.1
    cfg = FinetuneConfig("", "", iters=2)
    batch = Batch(frames, ClipLabels(queries, gt, vis, valid, "test"))
    with torch.no_grad():
        got = compute_loss(model, batch, cfg, torch.device("cpu"))
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None]
        _, _, _, train = model(video, torch.from_numpy(queries)[None], iters=2, is_train=True)
    assert train.starts == [0, 8]
    windows = [[c[0].numpy() for c in w] for w in train.coords]
    after_query = np.arange(t)[:, None] >= queries[None, :, 0]  # online: t >= t_query
    want = reference_loss(windows, train.starts, gt.astype(np.float64), vis, valid & after_query)
    assert abs(float(got.total) - want) <= 1e-5 * max(1.0, abs(want)), (float(got.total), want)


def test_cosine_schedule_without_warmup():
    assert lr_factor(0, 100) == 1.0
    assert abs(lr_factor(50, 100) - (0.5 + 0.5 / (25 * 1e4))) < 1e-12
    assert abs(lr_factor(100, 100) - 1 / (25 * 1e4)) < 1e-12
    assert all(lr_factor(s, 100) > lr_factor(s + 1, 100) for s in range(100))


# --------------------------------------------------------------------------------------------------
# Data and queries


def test_discovery_lists_and_skips_unreadable(videos):
    found, skipped = D.discover_videos(videos)
    assert [v.rel for v in found] == ["lab/cells", "short.mp4", "walk.mp4"]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"broken.mp4", "notes.txt"} and "cannot read video" in reasons["broken.mp4"]
    clips, short = D.make_clips(found, clip_len=8, min_frames=8)
    assert [c.describe() for c in clips] == ["lab/cells[0:8:1]"] + [f"walk.mp4[{s}:{s + 8}:1]" for s in (0, 8, 16, 24)]
    assert [s.path for s in short] == ["short.mp4"]
    assert len({c.clip_id for c in clips}) == 5
    frames = D.read_clip(clips[2], HW)
    assert frames.shape == (8, *HW, 3) and frames.dtype == np.uint8
    online, short = D.make_clips(found, clip_len=16, min_frames=16)
    assert [c.describe() for c in online] == ["walk.mp4[0:16:1]", "walk.mp4[16:32:1]"]
    assert sorted(s.path for s in short) == ["lab/cells", "short.mp4"]
    # Shards partition the clips; each epoch visits every clip of the shard once.
    assert D.shard(clips, 0, 2) + D.shard(clips, 1, 2) == [clips[i] for i in (0, 2, 4, 1, 3)]
    order = [D.clip_for_step(5, s, seed=0, rank=0) for s in range(10)]
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))


def test_sift_queries_follow_spec():
    frames = np.stack(list(translating_frames(40, 64, 96, (0.5, 0.2), seed=8)))
    q, enough = sift_queries(frames, 16, np.random.default_rng(0))
    assert enough and q.shape == (16, 3) and q.dtype == np.float32
    assert q[:, 0].max() <= int(0.25 * 40) and np.all(q == np.trunc(q))  # early frames, truncated pixels
    q2, _ = sift_queries(frames, 16, np.random.default_rng(0))
    assert np.array_equal(q, q2)
    assert sift_frames(40, np.random.default_rng(1)).shape == (8,)
    flat = np.full((40, 64, 96, 3), 128, np.uint8)  # no keypoints: random queries, sample masked
    q3, enough3 = sift_queries(flat, 16, np.random.default_rng(0))
    assert not enough3 and q3.shape == (16, 3) and q3[:, 0].max() <= 10


# --------------------------------------------------------------------------------------------------
# Training


def test_overfitting_a_fixed_batch_lowers_the_loss():
    model = build_student(fill_state_dict(False), False, HW, "fill rule", torch.device("cpu"))
    cfg = FinetuneConfig("", "", iters=1, lr=1e-5, steps=1000)
    opt, sched = make_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    frames = np.stack(list(translating_frames(8, *HW, (1.0, 0.5), seed=4)))
    xy = np.stack([rng.uniform(8, 56, 6), rng.uniform(8, 40, 6)], 1)
    queries = np.concatenate([np.zeros((6, 1)), xy], 1).astype(np.float32)
    gt = translation_gt(xy, 8, (1.0, 0.5)).astype(np.float32)
    batch = Batch(frames, ClipLabels(queries, gt, np.ones((8, 6), bool), np.ones((8, 6), bool), "gt"))
    losses = []
    for _ in range(4):
        parts = compute_loss(model, batch, cfg, torch.device("cpu"))
        optimizer_step(model, opt, sched, parts.total, cfg)
        losses.append(float(parts.total.detach()))
    print("losses", losses)
    assert np.mean(losses[1:]) < 0.5 * losses[0]


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
    from pointtrack_cli.checkpoints import read_state_dict

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
    from pointtrack_cli.checkpoints import read_state_dict

    best = read_state_dict(run / "best.safetensors")
    assert all(torch.equal(best[k], seen[1][k]) for k in best)  # the weights evaluated at step 1
    assert not torch.equal(best["fnet.conv1.weight"], seen[2]["fnet.conv1.weight"])


@pytest.fixture(scope="module")
def stopped_run(videos, weights, tmp_path_factory) -> Path:
    """A run of ``tiny_config`` stopped after its first step (``--stop-at 1``); tests resume copies of it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    first = run_finetune(tiny_config(videos, out, weights, stop_at=1))
    assert first.steps_done == 1 and weights_metadata(out / "last.safetensors")["step"] == "1"
    return out


def copy_run(run: Path, out: Path) -> Path:
    """A copy of a run folder (``--out`` may change on resume; hard links become plain copies)."""
    import shutil

    shutil.copytree(run, out)
    return out


def test_resume_gives_the_same_weights(run_a, stopped_run, videos, weights, tmp_path):
    cfg_a, _, _ = run_a
    out = copy_run(stopped_run, tmp_path / "b")
    second = run_finetune(tiny_config(videos, out, weights, resume=True))
    assert second.start_step == 1 and second.steps_done == 1
    from pointtrack_cli.checkpoints import read_state_dict

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


# --------------------------------------------------------------------------------------------------
# Interrupted checkpoint saves


ROOT = Path(__file__).resolve().parents[1]


def _checkpoint_files(run: Path) -> list[Path]:
    """Every file of ``run`` that carries a checkpoint's name (``last.*``, ``best.*``, ``checkpoints/step_*``)."""
    return sorted([p for p in run.iterdir() if p.is_file() and p.name.split(".")[0] in ("last", "best")]
                  + (sorted(p for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
                     if (run / "checkpoints").is_dir() else []))


def _digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _checkpoint_files(run)}


def _assert_complete(run: Path) -> None:
    """No file under a checkpoint's name is partial: each one reads in full."""
    from safetensors.torch import load_file

    for p in _checkpoint_files(run):
        if p.suffix == ".safetensors":
            load_file(str(p))  # checks that the data covers every tensor of the header
        elif p.name.endswith(".state.pt"):
            load_state(p)
        else:
            json.loads(p.read_text())


def _tiny_checkpoint(shift: float) -> tuple[dict, dict]:
    weights = {"fnet.conv1.weight": torch.arange(24.0).reshape(2, 3, 2, 2) + shift, "fnet.conv1.bias": torch.full((2,), shift)}
    state = {"optimizer": {"state": {0: {"exp_avg": torch.ones(3) * shift}}, "param_groups": [{"lr": 1e-5}]},
             "rng": [{"torch": torch.zeros(4, dtype=torch.uint8)}], "best": None}
    return weights, state


class Interrupted(Exception):
    """Stands for whatever stops a save half-way (a full disk, a signal turned into an exception)."""


def _interrupt(monkeypatch, ckpt, where: str) -> None:
    """Make the next ``ckpt.save`` stop at ``where``: half-way through writing the weights / the state file,
    or just before re-pointing ``last.safetensors`` / ``last.state.pt``."""
    import safetensors.torch

    import pointtrack_cli.finetune.checkpoint as C

    def half_then_fail(data: bytes, path) -> None:
        Path(path).write_bytes(data[: len(data) // 2])
        raise Interrupted(where)

    if where == "weights":
        serialize = safetensors.torch.save
        monkeypatch.setattr(safetensors.torch, "save_file",
                            lambda tensors, filename, metadata=None: half_then_fail(serialize(tensors, metadata=metadata), filename))
    elif where == "state":
        real_save = torch.save

        def save(obj, f) -> None:
            buf = io.BytesIO()
            real_save(obj, buf)
            half_then_fail(buf.getvalue(), f)

        monkeypatch.setattr(torch, "save", save)
    else:
        real_link = C._link_or_copy
        stop = ckpt.last[0] if where == "before-last" else ckpt.last[1]

        def link(src: Path, dst: Path) -> None:
            if dst == stop:
                raise Interrupted(where)
            real_link(src, dst)

        monkeypatch.setattr(C, "_link_or_copy", link)


@pytest.mark.parametrize("where", ["weights", "state", "before-last", "between-last"])
def test_save_interrupted_by_an_error_leaves_a_resumable_checkpoint(tmp_path, monkeypatch, where):
    from pointtrack_cli.checkpoints import read_state_dict
    from pointtrack_cli.finetune.checkpoint import CheckpointManager

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    w1, s1 = _tiny_checkpoint(1.0)
    w2, s2 = _tiny_checkpoint(2.0)
    ckpt.save(1, w1, {"student": "x"}, s1)
    before = _digests(tmp_path)
    with monkeypatch.context() as mp:
        _interrupt(mp, ckpt, where)
        with pytest.raises(Interrupted):
            ckpt.save(2, w2, {"student": "x"}, s2)
    after = _digests(tmp_path)
    # Only a re-link that completed may have changed a file; nothing partial carries a checkpoint's name.
    assert {k for k in before if after.get(k) != before[k]} == ({"last.safetensors"} if where == "between-last" else set())
    assert not [p.name for p in tmp_path.rglob(".*")]  # the error path removed its temporary file
    _assert_complete(tmp_path)
    w, s, step = ckpt.find_resumable()
    if where in ("weights", "state"):
        assert (w, s, step) == (*ckpt.last, 1)
    else:  # step 2 was fully written before the interruption: resume from it (last.* stale or mismatched)
        assert (w, s, step) == (*ckpt.step_paths(2), 2)
    want = w1 if step == 1 else w2
    assert all(torch.equal(v, want[k]) for k, v in read_state_dict(w).items())
    assert load_state(s)["optimizer"]["state"][0]["exp_avg"][0] == step
    ckpt.save(2, w2, {"student": "x"}, s2)  # the next save repairs last.*
    assert ckpt.find_resumable() == (*ckpt.last, 2)


def test_resume_refuses_a_pair_mixed_from_two_saves_of_one_step(tmp_path, monkeypatch):
    """Two saves of step 2 (e.g. a step redone after a resume), the second stopped between the two last.* links:
    both files say step 2, but they come from different saves."""
    from pointtrack_cli.checkpoints import read_state_dict
    from pointtrack_cli.finetune.checkpoint import CheckpointManager

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    (wa, sa), (wb, sb) = _tiny_checkpoint(1.0), _tiny_checkpoint(5.0)
    ckpt.save(2, wa, {}, sa)
    with monkeypatch.context() as mp:
        _interrupt(mp, ckpt, "between-last")
        with pytest.raises(Interrupted):
            ckpt.save(2, wb, {}, sb)
    assert weights_metadata(ckpt.last[0])["step"] == "2" and load_state(ckpt.last[1])["step"] == 2
    w, s, step = ckpt.find_resumable()
    assert (w, s, step) == (*ckpt.step_paths(2), 2)
    assert torch.equal(read_state_dict(w)["fnet.conv1.bias"], wb["fnet.conv1.bias"])
    assert load_state(s)["optimizer"]["state"][0]["exp_avg"][0] == 5.0


# A process that saves step STEP of RUN_DIR (new weights, same layout) and stops half-way through writing each
# file: it writes the first half and fsyncs it, tells the parent through MARKER.<n> (n = 1: the weights, 2: the
# state), then waits: after the weights for the parent's go-ahead (MARKER.go), after the state until the parent
# kills it with SIGKILL (no Python cleanup runs, as in a real crash).
_SAVE_THEN_HANG = r"""
import io, itertools, json, os, sys, time
from pathlib import Path

import safetensors.torch
import torch

from pointtrack_cli.checkpoints import read_state_dict
from pointtrack_cli.finetune.checkpoint import CheckpointManager, load_state, weights_metadata

run, marker, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ckpt = CheckpointManager(run, keep_last=1)
weights = {k: v + 0.5 for k, v in read_state_dict(ckpt.last[0]).items()}
meta = {k: v for k, v in weights_metadata(ckpt.last[0]).items() if k not in ("format", "step", "save_id")}
state = {k: v for k, v in load_state(ckpt.last[1]).items() if k not in ("step", "save_id")}
pauses = itertools.count(1)


def write_in_two_halves(data, path):
    n = next(pauses)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        part = Path(f"{marker}.{n}.part")
        part.write_text(json.dumps({"path": str(path), "written": len(data) // 2, "size": len(data)}))
        os.replace(part, f"{marker}.{n}")
        while n == 2 or not os.path.exists(f"{marker}.go"):
            time.sleep(0.01)
        f.write(data[len(data) // 2:])


serialize, real_save = safetensors.torch.save, torch.save
safetensors.torch.save_file = lambda t, f, metadata=None: write_in_two_halves(serialize(t, metadata=metadata), f)


def save(obj, f):
    buf = io.BytesIO()
    real_save(obj, buf)
    write_in_two_halves(buf.getvalue(), f)


torch.save = save
ckpt.save(step, weights, meta, state)
sys.exit(3)
"""


class SavingProcess:
    """:data:`_SAVE_THEN_HANG` in a child process, driven pause by pause."""

    def __init__(self, run: Path, step: int, work: Path) -> None:
        self.marker, self.err = work / "paused", work / "child.err"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.err, "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", _SAVE_THEN_HANG, str(run), str(self.marker), str(step)],
                                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def wait_for_pause(self, n: int) -> dict:
        """Block until the child is half-way through its ``n``-th file; returns what it wrote."""
        path, deadline = Path(f"{self.marker}.{n}"), time.monotonic() + 120
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the saving process ended ({self.proc.returncode}) before pause {n}:\n"
                            f"{self.err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the saving process did not reach pause {n} within 120 s")
            time.sleep(0.01)
        return json.loads(path.read_text())

    def resume(self) -> None:
        Path(f"{self.marker}.go").touch()

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=60)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_run_killed_mid_checkpoint_write_keeps_last_checkpoint_and_resumes(stopped_run, videos, weights, tmp_path):
    """A real process saving step 2 is SIGKILLed half-way through writing the state file (after its weights file,
    itself checked while half-written): step 1's files stay byte-identical, nothing partial takes a checkpoint's
    name, and --resume starts from step 1 and cleans up.

    The resume trains no step (``--stop-at 1``) to keep this test short: the files it resumes from are asserted
    byte-identical to ``stopped_run``'s, from which test_resume_gives_the_same_weights continues exactly.
    """
    from pointtrack_cli.finetune.checkpoint import CheckpointManager

    out = copy_run(stopped_run, tmp_path / "k")
    ckpt = CheckpointManager(out)
    before = _digests(out)
    assert set(before) == {"last.safetensors", "last.state.pt", "best.safetensors", "best.json",
                           "checkpoints/step_0000001.safetensors", "checkpoints/step_0000001.state.pt"}

    def check(info: dict, new_files: set[str]) -> None:
        partial = Path(info["path"])
        # The write goes to a temporary name next to its target, and has really stopped half-way.
        assert partial.name.startswith(".step_0000002.") and partial in ckpt.temporaries()
        assert partial.stat().st_size == info["written"] < info["size"]
        after = _digests(out)
        assert {k: after.get(k) for k in before} == before  # step 1 untouched, byte for byte
        assert set(after) - set(before) == new_files
        _assert_complete(out)
        assert not ckpt.step_paths(2)[1].exists()
        assert ckpt.find_resumable() == (*ckpt.last, 1)

    child = SavingProcess(out, 2, tmp_path)
    try:
        check(child.wait_for_pause(1), set())  # the same files a kill at this point would leave
        child.resume()
        info = child.wait_for_pause(2)
        assert child.kill() == -signal.SIGKILL  # killed mid-write, not finished
    finally:
        child.kill()
    # The step-2 weights were complete (and renamed) but have no state to pair with.
    check(info, {"checkpoints/step_0000002.safetensors"})
    assert weights_metadata(ckpt.step_paths(2)[0])["step"] == "2"
    after_kill = _digests(out)

    resumed = run_finetune(tiny_config(videos, out, weights, resume=True, stop_at=1))  # loads weights, optimizer, RNG
    assert resumed.start_step == 1 and resumed.steps_done == 0
    assert not ckpt.temporaries()  # resume removed what the killed save left
    assert _digests(out) == after_kill  # and touched no checkpoint


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


# --------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture
def finetune_cli():
    """The finetune command in a throwaway group (the real CLI registration belongs to cli.py)."""
    import typer
    from typer.testing import CliRunner

    from pointtrack_cli.commands.common import PtrackGroup
    from pointtrack_cli.commands.finetune import finetune

    app = typer.Typer(cls=PtrackGroup)
    app.command("finetune")(finetune)
    app.command("noop")(lambda: None)
    return lambda args: CliRunner().invoke(app, ["finetune", *[str(a) for a in args]])


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
    import subprocess

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
    import pointtrack_cli.finetune.trainer as T
    from pointtrack_cli.commands.finetune import config_to_argv

    cfg = tiny_config(videos, tmp_path / "x", weights, teachers=[], recipe="verifier", lr=1e-4, stop_at=1,
                      verifier_weights=str(weights["verifier"]), train_only_visible=True)
    seen = []
    monkeypatch.setattr(T, "run_finetune", lambda c, reporter=None: seen.append(c))
    res = finetune_cli(config_to_argv(cfg))
    assert res.exit_code == 0, res.output
    assert seen == [cfg]
