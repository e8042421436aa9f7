"""The ``trackon-r`` preset end to end through the CLI: ``ptrack ensemble VIDEO --teachers trackon-r,ID=PATH,...
--verifier-weights V`` with fill-rule checkpoints of every teacher (official file layouts) at a small resolution.

Fidelity of each teacher is tested in tests/models and tests/trackers; here: the preset expands to its five
teachers in order, each takes its local file, causal teachers leave the frames before the query empty, the
verifier picks one candidate per frame, and missing checkpoints fail before any tracking.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.ensemble.teachers import PRESETS, parse_teachers, run_order, run_teachers
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.trackers.base import Tracker, TrackOutput
from tests.helpers import realtracker_weights, verifier_weights
from tests.helpers.teachers import teacher_checkpoint

PRESET = PRESETS["trackon-r"]
# preset teacher -> the writer of tests/helpers/teachers.py that makes its file (same architecture and layout)
WRITER_OF = {"bootstapnext": "bootstapnext", "bootstapir": "bootstapir", "anthro-locotrack": "locotrack",
             "alltracker": "alltracker"}
CAUSAL = ("bootstapnext", "alltracker")  # no estimate before the query frame (without --backward)
BIDIRECTIONAL = ("bootstapir", "anthro-locotrack")
# One size every teacher takes (AllTracker needs 193+ pixels a side; TAPNext a multiple of 8), set for all of them
# by --resolution (a preset teacher may also take its own, ID@HxW=PATH: test_preset_teacher_takes_its_own_size...).
RESOLUTION = "200x200"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trackon_r_weights")
    out = {}
    for tid in PRESET:
        if tid == "realtracker-online":
            out[tid] = folder / "scaled_online_fill.pth"  # the official .pth is a plain state dict
            torch.save(realtracker_weights.fill_state_dict(True), out[tid])
        else:
            out[tid] = teacher_checkpoint(WRITER_OF[tid], folder / tid)
    out["verifier"] = verifier_file(folder)
    return out


def verifier_file(folder: Path) -> Path:
    path = folder / "verifier_fill.pt"  # the released file's layout: DDP-prefixed keys under "model"
    torch.save({"model": {"module." + k: v for k, v in verifier_weights.fill_state_dict().items()}}, path)
    return path


@pytest.mark.slow  # five full-size networks and the verifier on CPU: ~1-2 CPU-min (BootsTAPNext-B, AllTracker's window)
def test_trackon_r_runs_every_teacher_with_local_weights(tmp_path, cli, mp4_video, weights):
    """Four frames, a 2x2 grid on frame 1 (so causal teachers have a frame before the query)."""
    teachers = ",".join(["trackon-r"] + [f"{t}={weights[t]}" for t in PRESET])
    out = tmp_path / "out"
    res = cli(["ensemble", mp4_video, "--teachers", teachers, "--verifier-weights", weights["verifier"],
               "--resolution", RESOLUTION, "--grid", 2, "--grid-frame", 1, "--end", 4, "--device", "cpu",
               "--out", out, "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output

    with np.load(out / "selection.npz") as z:
        names, cand, cvis, chosen = z["teachers"].tolist(), z["candidates"], z["candidate_visibility"], z["chosen"]
        scores = z["scores"]
    assert names == list(PRESET)
    assert cand.shape == (4, 4, 5, 2) and scores.shape == (4, 4, 5)
    col = {t: i for i, t in enumerate(names)}
    for t in CAUSAL:
        assert np.isnan(cand[0, :, col[t]]).all() and not cvis[0, :, col[t]].any(), t
        assert np.isfinite(cand[1:, :, col[t]]).all(), t
    for t in BIDIRECTIONAL:
        assert np.isfinite(cand[:, :, col[t]]).all(), t

    r = load_tracks(out)
    assert r.model == "ensemble" and r.tracks.shape == (4, 4, 2)
    picked = chosen >= 0
    assert picked[1:].all()  # every frame from the query frame on has candidates to choose from
    t_idx, n_idx = np.nonzero(picked)
    np.testing.assert_allclose(r.tracks[t_idx, n_idx], cand[t_idx, n_idx, chosen[picked]], atol=1e-3)

    # each preset teacher ran with the file it was given, none with a support grid of its own
    job = json.loads((out / "ptrack.json").read_text())["job"]
    assert [(t["id"], t["weights"]["path"], t["official"]) for t in job["teachers"]] == [
        (t, str(weights[t]), True) for t in PRESET]
    used = {s["teacher"]: s for s in r.meta["teacher_settings"]}
    assert all(weights[t].name in json.dumps(used[t]["weights"]) for t in PRESET)
    assert used["realtracker-online"]["settings"]["support_grid"] is False  # explicit grid, yet no support points


def test_trackon_r_with_missing_weights_fails_before_tracking(tmp_path, cli, mp4_video):
    """One line naming every missing checkpoint (offline, empty cache), and no output written."""
    given = teacher_checkpoint("bootstapir", tmp_path / "w")
    res = cli(["ensemble", mp4_video, "--teachers", f"trackon-r,bootstapir={given}", "--verifier-weights",
               verifier_file(tmp_path), "--grid", 2, "--end", 6, "--out", tmp_path / "out", "--quiet"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "4 teacher checkpoint(s) missing" in lines[0], res.output
    for t in ("bootstapnext", "realtracker-online", "anthro-locotrack", "alltracker"):
        assert f"{t}:" in lines[0]
    assert "bootstapir:" not in lines[0]
    assert not (tmp_path / "out").exists()


def test_preset_teacher_takes_its_own_size_and_file():
    """``trackon-r,bootstapir@64x64=b.pt`` fills the preset's bootstapir slot (size and file) instead of adding a
    sixth teacher."""
    specs = parse_teachers(["trackon-r", "bootstapir@64x64=b.pt", "lk"])
    assert [s.id for s in specs] == [*(("bootstapir@64x64" if t == "bootstapir" else t) for t in PRESET), "lk"]
    slot = next(s for s in specs if s.id == "bootstapir@64x64")
    assert slot.weights == "b.pt" and slot.official


class Constant(Tracker):
    """A teacher that reports its own number everywhere, so results can be told apart; records when it ran."""

    def __init__(self, value: float, ran: list):
        self.value, self.ran = value, ran

    def track(self, video, queries, progress=None):
        self.ran.append(self.value)
        t, n = video.num_frames, len(queries)
        return TrackOutput(np.full((t, n, 2), self.value, np.float32), np.ones((t, n), bool),
                           np.ones((t, n), np.float32), np.ones((t, n), np.float32))


def test_heaviest_teacher_runs_first_results_stay_in_the_given_order():
    """AllTracker (the preset's largest peak alone) runs while the process is fresh; the candidates keep the
    preset's order, which the verifier's columns and ``selection.npz`` follow."""
    specs = parse_teachers(["trackon-r", "lk"])
    assert [specs[i].id for i in run_order(specs)] == ["alltracker", "anthro-locotrack", "bootstapnext",
                                                      "realtracker-online", "bootstapir", "lk"]
    ran: list = []
    builds = {s.id: Constant(float(k), ran) for k, s in enumerate(specs)}
    video = ArrayVideo(np.zeros((3, 8, 8, 3), np.uint8))
    out = run_teachers(specs, video, np.array([[0, 1.0, 1.0]]), build=lambda s: builds[s.id])
    assert ran == [4.0, 3.0, 0.0, 2.0, 1.0, 5.0]
    assert out.names == [s.id for s in specs]
    assert [float(tr[0, 0, 0]) for tr in out.tracks] == [float(k) for k in range(6)]
    assert [s["teacher"] for s in out.settings] == out.names
